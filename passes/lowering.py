"""Lowerings: rewrite IR forms a target has no op for into forms it has (run even without fusion).

- expand-lhs-dilation: a conv with input dilation (the transposed-convolution form JAX traces
  conv_transpose into) becomes zero insertion (reshape, pad, reshape) followed by a plain conv.
  The trailing zeros the insertion leaves are taken from the conv's own high padding where it
  has enough, so no slice is needed in the common case.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Value
from graphopt.ir.ops import lhs_dilations

from .rewrite import P, Rule


def _dilate_axis(g: Graph, x: Value, axis: int, factor: int, trailing: int) -> Value:
    """Insert factor-1 zeros after every element along `axis`, keeping `trailing` of the last ones."""
    shape = x.shape
    split = g.op("reshape", x, shape=shape[:axis + 1] + (1,) + shape[axis + 1:])
    zero = g.add_param(np.zeros((), dtype=x.dtype))
    pads = tuple((0, factor - 1) if i == axis + 1 else (0, 0) for i in range(len(shape) + 1))
    spread = g.op("pad", split, zero, pads=pads)
    merged = g.op("reshape", spread, shape=shape[:axis] + (shape[axis] * factor,) + shape[axis + 1:])
    keep = (shape[axis] - 1) * factor + 1 + trailing
    if keep == merged.shape[axis]:
        return merged
    limits = merged.shape[:axis] + (keep,) + merged.shape[axis + 1:]
    return g.op("slice", merged, starts=(0,) * len(shape), limits=limits, strides=(1,) * len(shape))


def _expand_lhs_dilation(g: Graph, b):
    node = b["_node"]
    x = node.inputs[0]
    nsp = len(x.shape) - 2
    factors = lhs_dilations(node.attrs, nsp)
    if all(f == 1 for f in factors):
        return None
    pads = [list(p) for p in node.attrs["pads"]]
    for i, f in enumerate(factors):
        if f == 1:
            continue
        trailing = min(pads[i][1], f - 1)  # zeros the insertion leaves at the end stand in for padding
        pads[i][1] -= trailing
        x = _dilate_axis(g, x, 2 + i, f, trailing)
    attrs = {**node.attrs, "pads": tuple(map(tuple, pads)), "lhs_dilations": ()}
    return g.add_node("conv", [x] + list(node.inputs[1:]), **attrs).outputs[0]


RULES = [Rule("expand-lhs-dilation", P("conv"), _expand_lhs_dilation)]
