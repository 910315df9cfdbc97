"""Target `litert-web`: the tflite target's artifact (in io state mode: the state is the step signature's
inputs and outputs, which LiteRT.js keeps in its own memory from step to step) as a folder a web page runs
with LiteRT.js (WASM with SIMD and XNNPACK, threads where the page is cross-origin isolated), and graphopt's
Stream contract in JavaScript (graphopt-stream.js). Verified, loaded and benchmarked in headless Chromium
(see graphopt/targets/web.py)."""
from __future__ import annotations

from pathlib import Path

from .. import artifact as art
from ..ir import Graph
from . import Target, tflite, web
from .tf_lowering import TABLE  # noqa: F401  (the target's lowering table: the tflite target's)

NAME = "litert-web"
TARGET = Target(NAME, emits="folder: .tflite (builtin ops, state as I/O), LiteRT.js (WASM) and graphopt-stream.js",
                backend="LiteRT.js (WASM + XNNPACK, Chromium)", caps=tflite.TARGET.caps,
                packages=("tensorflow-cpu", "ai-edge-litert", "playwright"),
                manifest_files=("web.module", "web.page", "web.demo", "web.state_file"))


def available() -> tuple[bool, str]:
    return web.available(web.LITERT_JS, tflite)


def runtime_available() -> tuple[bool, str]:
    """Loading checks the .tflite with LiteRT's flatbuffer schema (the trust check) and runs it in Chromium."""
    ok, reason = tflite.runtime_available()
    return (ok, reason) if not ok else web.web_browser.available()


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    return web.emit(tflite, NAME, web.LITERT_JS, graph, out_dir, dict(options or {}), {"state_mode": "io"})


open_stream = web.open_stream
bench_in_page = web.bench_in_page
card_snippet = web.card_snippet
release_extras = web.release_extras
card_lines = web.card_lines
inspect_summary = tflite.inspect_summary
inspect_lines = tflite.inspect_lines
