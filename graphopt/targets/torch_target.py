"""Targets `torch` and `torch-compile`: IR -> torch.fx GraphModule -> torch.export program (`.pt2`).

`torch` runs the exported module eagerly; `torch-compile` runs it under torch.compile (inductor,
CPU), the Torch rows of the authors' table, or, built with --aot-inductor, as an AOTInductor package
of the same program that the Stream compiles when it loads (into graphopt's cache, keyed by the
artifact's sha256 and the torch version; nothing compiled travels in the artifact): the same inductor
kernels without torch.compile's Python guards on every step. The state stays as torch tensors between
steps; only the output is converted to NumPy. The artifact loads with torch alone (torch.export.load).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from ..stream import Stream
from . import Capabilities, Target
from .torch_lowering import TABLE  # noqa: F401  (the target's lowering table)

SUFFIX = ".pt2"
TARGET = Target("torch", emits=".pt2 (torch.export)", backend="PyTorch eager (CPU)",
                caps=Capabilities(channels_first_convs=True), packages=("torch",))


def available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return False, f"{e.name} is not installed (pip install torch==2.13.0, the CPU build; see requirements.txt)"
    return True, ""


def emit(graph: Graph, out_dir: Path, options: dict | None = None, name: str = "torch") -> art.Artifact:
    import torch

    from .torch_lowering import to_graph_module
    options = options or {}
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_file = out_dir / f"{stem}{SUFFIX}"
    gm = to_graph_module(graph)
    example = tuple(torch.from_numpy(np.zeros(v.shape, v.dtype)) for v in graph.inputs) + \
        tuple(torch.from_numpy(np.asarray(s.init, order="C")) for s in graph.state)
    try:
        program = torch.export.export(gm, example)
    except Exception as e:
        raise art.ArtifactError(f"torch.export failed: {str(e).strip().splitlines()[0]}") from None
    torch.export.save(program, str(model_file))
    manifest = art.describe_graph(graph, model_file.name, name, options.get("precision", "float32"))
    manifest["sha256"] = art.sha256(model_file)
    manifest["torch"] = {"format": "torch.export (.pt2)", "fx_nodes": len(gm.graph.nodes),
                         "compiled": name == "torch-compile"}
    if name == "torch-compile" and options.get("aot_inductor"):
        manifest["torch"]["aot_inductor"] = True  # the Stream compiles an AOTInductor package at load
    manifest["tools"] = art.tool_versions("torch")
    return art.finish(graph, model_file, manifest)


class TorchStream(Stream):
    def __init__(self, model_file: Path, manifest: dict, initial_state, threads: int = 1, compiled: bool = False,
                 aot_inductor: bool = False):
        import torch
        super().__init__(manifest, initial_state)
        torch.set_num_threads(threads)
        try:
            program = torch.export.load(str(model_file))
            module = program.module()
        except Exception as e:
            raise art.ArtifactError(f"torch cannot load {model_file}: {e}") from None
        self._torch = torch
        if aot_inductor:
            self._fn = aot_inductor_runner(program, manifest.get("sha256") or art.sha256(model_file))
        else:
            self._fn = torch.compile(module, backend="inductor", dynamic=False) if compiled else module
        self._n_out = len(manifest["outputs"])
        self._reset()

    def _run(self, feeds, state):
        torch = self._torch
        with torch.inference_mode():
            out = self._fn(*(torch.from_numpy(np.asarray(x)) for x in feeds), *state)
        return [y.numpy() for y in out[:self._n_out]], list(out[self._n_out:])

    def _reset(self) -> None:
        self._state = [self._torch.from_numpy(np.array(s)) for s in self._initial_state]

    def _state_finite(self, state) -> bool:
        return all(np.isfinite(s.numpy()).all() for s in state)

    @property
    def native_state(self) -> list[np.ndarray]:
        with self._lock:
            return [s.numpy().copy() for s in self._state]


def aot_inductor_runner(program, sha256: str):
    """The program compiled ahead by AOTInductor (torch._inductor.aoti_compile_and_package), from graphopt's
    cache or compiled into it now (a minute or two for FacePhys), and loaded: a callable over the program's
    inputs. Measured 1.32x torch.compile per FacePhys step, the same outputs (tests/benchmarks/bench_levers.py)."""
    import os

    import torch

    from ..equivalence import cache_dir
    folder = cache_dir() / "aot-inductor"
    folder.mkdir(parents=True, exist_ok=True)
    package = folder / f"{sha256}-torch{torch.__version__.replace('+', '-')}.pt2"
    if not package.exists():
        partial = folder / f".{package.name}.{os.getpid()}.partial.pt2"
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
            os.replace(partial, package)  # whole packages only: a crash leaves no half-written cache entry
        except Exception as e:
            partial.unlink(missing_ok=True)
            raise art.ArtifactError(f"AOTInductor cannot compile the program: {str(e).strip().splitlines()[0]}; "
                                    "build without --aot-inductor (torch.compile)") from None
    try:
        return torch._inductor.aoti_load_package(str(package))
    except Exception as e:
        raise art.ArtifactError(f"torch cannot load the AOTInductor package {package}: "
                                f"{str(e).strip().splitlines()[0]}; remove it to compile it again") from None


def open_stream(model_file: Path, manifest: dict, initial_state, threads: int = 1) -> TorchStream:
    return TorchStream(model_file, manifest, initial_state, threads, compiled=manifest["target"] == "torch-compile",
                       aot_inductor=bool(manifest.get("torch", {}).get("aot_inductor")))


def card_snippet(c) -> list[str]:
    """The model card's code that runs the artifact (c: release.Snippet); the torch-compile module has
    none (its artifact is the same program)."""
    args = ", ".join(f"torch.from_numpy({n})" for n in c.inputs)
    return ["# PyTorch", "import torch", f"m = torch.export.load('{c.folder}/{c.model}.pt2').module()",
            f"bvp, *new_state = m({args}{', *map(torch.from_numpy, state.values())' if c.stateful else ''})"]
