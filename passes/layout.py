"""Layout rewrites: transposes sunk through elementwise ops, absorbed by dots and reductions or
cancelled; biases folded into convolutions.

Traced NHWC models put a transpose on each side of every (channels-first) conv. Sinking the
transpose after a conv through its bias add and activation brings conv, bias and clamp together
(one fused kernel in most runtimes) and lets the next dot or reduction absorb the transpose.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import OPS, Graph, Value

from .algebra import _aligned, _single_use
from .rewrite import C, P, Rule, X

ELEMENTWISE = tuple(sorted(n for n, op in OPS.items() if op.elementwise))


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _transpose_as_reshape(g: Graph, b):
    """A transpose that keeps the order of the non-unit dimensions only moves unit dimensions."""
    x, perm = b["x"], b["_node"].attrs["perm"]
    if not _moves_unit_dims_only(x.shape, perm) or perm == tuple(range(len(perm))):
        return None
    return g.op("reshape", x, shape=b["_node"].outputs[0].shape)


def _sink_transpose(g: Graph, b):
    """op(transpose(a, p), c, ...) -> transpose(op(a, c'), p) for constants, size-1 values and like transposes."""
    node = b["_node"]
    out = node.outputs[0]
    rank = len(out.shape)
    perm = None
    for v in node.inputs:
        if v.producer is not None and v.producer.op == "transpose" and v.shape == out.shape:
            perm = v.producer.attrs["perm"]
            break
    if perm is None:
        return None
    inv = _inverse(perm)
    inputs = []
    for v in node.inputs:
        t = v.producer
        if t is not None and t.op == "transpose" and t.attrs["perm"] == perm:
            if not _single_use(b, v):
                return None
            inputs.append(t.inputs[0])
        elif v.type.size == 1 and len(v.shape) <= rank:
            inputs.append(v)
        elif v.is_param and len(v.shape) <= rank:
            inputs.append(g.add_param(np.ascontiguousarray(np.transpose(_aligned(v.const, rank), inv))))
        else:
            return None
    y = g.add_node(node.op, inputs, **node.attrs).outputs[0]
    return g.op("transpose", y, perm=perm)


def _moves_unit_dims_only(shape, perm) -> bool:
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _transpose_of_concat(g: Graph, b):
    """transpose(concat(xs)) -> concat(transpose(x) ...) when each transpose folds (constant) or only moves
    unit dimensions (a reshape)."""
    node, cat = b["_node"], b["cat"]
    perm = node.attrs["perm"]
    parts = cat.producer.inputs
    if not _single_use(b, cat) or not all(x.is_param or _moves_unit_dims_only(x.shape, perm) for x in parts):
        return None
    moved = [g.add_param(np.ascontiguousarray(np.transpose(x.const, perm))) if x.is_param
             else g.op("reshape", x, shape=tuple(x.shape[p] for p in perm)) for x in parts]
    return g.op("concat", *moved, axis=_inverse(perm)[cat.producer.attrs["axis"]])


def _absorb_into_dot(g: Graph, b):
    """dot(transpose(a, p), W) -> dot(a, W) when the output keeps its dimension order."""
    node, t = b["_node"], b["t"]
    a = node.attrs
    if a["lhs_batch"] or not _single_use(b, t):
        return None
    perm = t.producer.attrs["perm"]
    free = [perm[i] for i in range(len(perm)) if i not in a["lhs_contract"]]
    if free != sorted(free):
        return None
    attrs = dict(a, lhs_contract=tuple(perm[i] for i in a["lhs_contract"]))
    last = (len(perm) - 1,)
    if a["lhs_contract"] == last and attrs["lhs_contract"] != last:
        return None  # a matmul would become a general contraction, which runtimes do slowly
    return g.op("dot", t.producer.inputs[0], node.inputs[1], **attrs)


def _dot_as_conv1x1(g: Graph, b):
    """dot(transpose(x[N,C,*S], channels-last), W[C,O]) -> transpose(conv1x1(x, W^T)): the matmul over
    channels of a channels-first tensor stays channels-first, next to the conv that made it."""
    node, t = b["_node"], b["t"]
    x = t.producer.inputs[0]
    rank = len(x.shape)
    perm = (0,) + tuple(range(2, rank)) + (1,)
    a = node.attrs
    if rank < 3 or t.producer.attrs["perm"] != perm or not _single_use(b, t) or a["lhs_batch"] \
            or a["lhs_contract"] != (rank - 1,) or a["rhs_contract"] != (0,) or node.inputs[1].const.ndim != 2:
        return None
    W = node.inputs[1].const
    kernel = np.ascontiguousarray(W.T.reshape(W.shape[1], W.shape[0], *([1] * (rank - 2))))
    y = g.op("conv", x, g.add_param(kernel), strides=(1,) * (rank - 2), pads=((0, 0),) * (rank - 2),
             dilations=(1,) * (rank - 2), groups=1)
    return g.op("transpose", y, perm=perm)


def _absorb_into_reduce(g: Graph, b):
    """reduce(transpose(a, p), axes) -> reduce(a, p[axes]) when the kept dimensions stay in order."""
    node, t = b["_node"], b["t"]
    if not _single_use(b, t):
        return None
    perm = t.producer.attrs["perm"]
    kept = [perm[i] for i in range(len(perm)) if i not in node.attrs["axes"]]
    if kept != sorted(kept):
        return None
    return g.op(node.op, t.producer.inputs[0], axes=tuple(sorted(perm[i] for i in node.attrs["axes"])))


def _conv_bias(g: Graph, b):
    """add(conv(x, W), b) with b constant per output channel -> conv(x, W, b)."""
    conv, bias = b["conv"], b["b"]
    cn = conv.producer
    if not _single_use(b, conv):
        return None
    ba = _aligned(bias.const, len(conv.shape))
    cout = conv.shape[1]
    if ba.ndim != len(conv.shape) or any(d != 1 for i, d in enumerate(ba.shape) if i != 1):
        return None
    vec = np.broadcast_to(ba.reshape(-1), (cout,)).astype(conv.dtype)
    if len(cn.inputs) == 3:
        if not cn.inputs[2].is_param:
            return None
        vec = (cn.inputs[2].const + vec).astype(conv.dtype)
    return g.add_node("conv", [cn.inputs[0], cn.inputs[1], g.add_param(vec)], **cn.attrs).outputs[0]


RULES = [
    Rule("transpose-as-reshape", P("transpose", X("x")), _transpose_as_reshape),
    Rule("sink-transpose", P(ELEMENTWISE), _sink_transpose),
    Rule("transpose-of-concat", P("transpose", P("concat", name="cat")), _transpose_of_concat),
    Rule("dot-as-conv1x1", P("dot", P("transpose", X(), name="t"), C()), _dot_as_conv1x1),
    Rule("transpose-into-dot", P("dot", P("transpose", X(), name="t"), X()), _absorb_into_dot),
    Rule("transpose-into-reduce", P(("reduce_sum", "reduce_max", "reduce_min"), P("transpose", X(), name="t")),
         _absorb_into_reduce),
    Rule("conv-bias", P("add", P("conv", name="conv"), C("b"), commute=True), _conv_bias),
]
