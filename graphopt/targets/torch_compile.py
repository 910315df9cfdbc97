"""Target `torch-compile`: the `torch` artifact (torch.export program) run under torch.compile
(inductor, CPU). See torch_target.py."""
from __future__ import annotations

import shutil
from pathlib import Path

from .. import artifact as art
from ..ir import Graph
from . import torch_target
from . import Option, Target
from .torch_target import open_stream  # noqa: F401  (the Stream compiles when the manifest says so)
from .torch_lowering import TABLE  # noqa: F401  (the target's lowering table)

TARGET = Target("torch-compile", emits=".pt2 (torch.export), run under torch.compile",
                backend="PyTorch torch.compile (inductor, CPU)", caps=torch_target.TARGET.caps,
                packages=torch_target.TARGET.packages,
                options=(Option("--aot-inductor", "run the program as an AOTInductor package that the Stream "
                                "compiles when it loads (cached per artifact and torch version) instead of under "
                                "torch.compile: no Python guards per step", switch=True),))


def available() -> tuple[bool, str]:
    ok, reason = torch_target.available()
    if not ok:
        return ok, reason
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return False, "torch.compile's inductor backend needs a C++ compiler (g++ or clang++) on PATH"
    return True, ""


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    return torch_target.emit(graph, out_dir, options, name="torch-compile")
