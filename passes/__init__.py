"""The pass library and per-target pipelines (imports as graphopt.passes)."""
from __future__ import annotations

from graphopt.ir import Graph

# target -> pass names run by default. Empty until the fusion passes land: today every build is
# the honest unfused baseline.
PIPELINES: dict[str, list[str]] = {"onnx": []}


def pipeline_for(target: str, fuse: bool = True) -> list[str]:
    return list(PIPELINES.get(target, [])) if fuse else []


def run_pipeline(graph: Graph, names: list[str]) -> tuple[Graph, dict]:
    """Run the named passes in order; returns the graph and a report for the manifest."""
    if names:
        raise NotImplementedError(f"passes {names} are not implemented yet")
    return graph, {"name": "none", "passes": [], "exact": True}
