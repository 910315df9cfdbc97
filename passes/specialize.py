"""Input specialisation: bake graph inputs the user fixes at build time (e.g. dt = 1/fps) into constants.

The input stays in the graph's signature so the artifact keeps its interface, but nothing reads it;
the build passes the fixed values as an option and records them in the manifest, and the Stream
refuses a different value. Constant folding after this pass folds what follows from the input.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from graphopt.ir import Graph


def specialize_inputs(graph: Graph, fixed: Mapping[str, float]) -> bool:
    """Replace the readers of each input named in `fixed` by a constant of its value."""
    unknown = set(fixed) - {v.name for v in graph.inputs}
    if unknown:
        raise ValueError(f"cannot fix inputs {sorted(unknown)}: the graph's inputs are "
                         f"{[v.name for v in graph.inputs]}")
    changed = False
    for v in graph.inputs:
        if v.name in fixed:
            const = graph.add_param(np.full(v.shape, fixed[v.name], dtype=v.dtype), name=f"{v.name}_fixed")
            readers = graph.users().get(id(v), [])
            graph.replace_all_uses(v, const)
            changed |= bool(readers)
    return changed
