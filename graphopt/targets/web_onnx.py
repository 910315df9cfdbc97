"""Target `onnx-web`: the onnx target's artifact as a folder a web page runs with onnxruntime-web (WASM with
SIMD, threads where the page is cross-origin isolated; WebGPU optional, with --webgpu), and graphopt's
Stream contract in JavaScript (graphopt-stream.js). Verified, loaded and benchmarked in headless Chromium
(see graphopt/targets/web.py)."""
from __future__ import annotations

from pathlib import Path

from .. import artifact as art
from ..ir import Graph
from . import Option, Target, onnx, web
from .onnx import TABLE  # noqa: F401  (the target's lowering table: the onnx target's)

NAME = "onnx-web"
TARGET = Target(NAME, emits="folder: .onnx (opset 18), onnxruntime-web (WASM) and graphopt-stream.js",
                backend="onnxruntime-web (WASM, Chromium)", caps=onnx.TARGET.caps,
                options=(Option("--webgpu", "also copy onnxruntime-web's WebGPU build (28 MB) into the folder, so that "
                                "Stream.load(url, {webgpu: true}) runs on the GPU where the browser has one (WASM "
                                "otherwise)", switch=True),),
                packages=("onnx", "playwright"), manifest_files=("web.module", "web.page", "web.demo", "web.state_file"))


def available() -> tuple[bool, str]:
    return web.available(web.ONNXRUNTIME_WEB, onnx)


def runtime_available() -> tuple[bool, str]:
    """Loading reads the .onnx with onnx (the trust check) and runs it in Chromium."""
    try:
        import onnx as _onnx  # noqa: F401
    except ImportError:
        return False, "onnx is not installed (pip install onnx; see requirements.txt)"
    return web.web_browser.available()


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    return web.emit(onnx, NAME, web.ONNXRUNTIME_WEB, graph, out_dir, dict(options or {}))


open_stream = web.open_stream
bench_in_page = web.bench_in_page
card_snippet = web.card_snippet
release_extras = web.release_extras
card_lines = web.card_lines
