"""Numerics: rewrites that keep the math and make float32 rounding smaller.

- split-long-reduction: runtimes sum a reduction's elements one after another in float32 (onnxruntime,
  LiteRT, NumPy over several axes), so a sum of n terms carries an error growing with n; XLA sums in a
  tree. A reduce_sum over more than LONG elements becomes a chain of reductions over one axis each
  (innermost first), and an axis longer than BLOCK is cut into blocks first, so no partial sum adds
  more than BLOCK terms. PhysNet's per-chunk standardisation sums 131072 values per channel: summed
  in one pass, the error moves the waveform by ~30x the fp32 noise floor.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Value, is_float

from .rewrite import P, Rule

LONG = 8192  # reductions over more elements than this are split
BLOCK = 256  # the longest run of terms one partial sum adds


def _block(n: int) -> int | None:
    """The largest divisor of n that is at most BLOCK (None if only 1 divides)."""
    for k in range(min(BLOCK, n - 1), 1, -1):
        if n % k == 0:
            return k
    return None


def _reduce_axis(g: Graph, x: Value, axis: int) -> Value:
    """Sum x over one axis, in blocks of at most BLOCK terms when the axis is longer."""
    n = x.shape[axis]
    k = _block(n) if n > BLOCK else None
    if k is None:
        return g.op("reduce_sum", x, axes=(axis,))
    split = g.op("reshape", x, shape=x.shape[:axis] + (n // k, k) + x.shape[axis + 1:])
    inner = g.op("reduce_sum", split, axes=(axis + 1,))
    return _reduce_axis(g, inner, axis)


def _split_long_reduction(g: Graph, b):
    node = b["_node"]
    x, axes = node.inputs[0], node.attrs["axes"]
    if not is_float(x.dtype) or int(np.prod([x.shape[a] for a in axes], dtype=np.int64)) <= LONG:
        return None
    if len(axes) == 1 and _block(x.shape[axes[0]]) is None:
        return None  # a long prime-length axis: nothing to split on
    y = x
    for a in sorted(axes, reverse=True):  # innermost first; the axes before it keep their numbers
        y = _reduce_axis(g, y, a)
    return y


RULES = [Rule("split-long-reduction", P("reduce_sum"), _split_long_reduction)]
