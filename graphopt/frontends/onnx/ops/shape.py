"""Shape ONNX operators (shapes are static here: computed while importing)."""
from __future__ import annotations

import numpy as np

from ..registry import converter


@converter("Shape")
def shape(ctx, ins, attrs):
    s = np.array(ctx.shape(ins[0]), np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return s[start:end]


@converter("Reshape")
def reshape(ctx, ins, attrs):
    x, target = ins[0], ctx.const(ins[1], "Reshape's shape").astype(np.int64)
    shape_in = ctx.shape(x)
    out = []
    for i, d in enumerate(target):
        if d == 0 and not attrs.get("allowzero", 0):
            out.append(shape_in[i])
        else:
            out.append(int(d))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        out[out.index(-1)] = int(np.prod(shape_in, dtype=np.int64)) // max(known, 1)
    return ctx.op("reshape", x, shape=tuple(out))
