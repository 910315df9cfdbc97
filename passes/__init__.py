"""The pass library and per-target pipelines (imports as graphopt.passes)."""
from __future__ import annotations

from .manager import PASSES, Pass, PassError, format_report, get_pass, register, run_pipeline

# target -> passes run by default (all exact so far)
PIPELINES: dict[str, list[str]] = {
    "onnx": ["fold-constants", "simplify", "cse", "fold-constants", "simplify", "dce"],
}


def pipeline_for(target: str, fuse: bool = True) -> list[str]:
    return list(PIPELINES.get(target, [])) if fuse else []


__all__ = ["PASSES", "PIPELINES", "Pass", "PassError", "format_report", "get_pass", "pipeline_for",
           "register", "run_pipeline"]
