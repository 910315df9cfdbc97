"""Forms that lower to fewer or faster ops on ONNX runtimes (exact rewrites, targets onnx and tensorrt).

onnxruntime runs a dot with a 1-D operand as a product and a sum (its MatMul is slow on a 1-D
operand), a matrix-matrix MatMul as one kernel.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph

from . import algebra
from .rewrite import C, P, Rule, X
from .shapes import relaid, unit_reshape


def _vector_dot_as_matmul(g: Graph, b):
    """dot(x[..., k], v[k]) -> dot(x, v[k, 1]) with a trailing unit axis: a matrix product (one MatMul in
    onnxruntime) rather than a product and a sum."""
    node = b["_node"]
    x, v = node.inputs
    a = node.attrs
    if len(v.shape) != 1 or a["lhs_batch"] or a["rhs_contract"] != (0,) or a["lhs_contract"] != (len(x.shape) - 1,):
        return None
    col = g.op("reshape", v, shape=(v.shape[0], 1))
    y = g.op("dot", x, col, **a)
    return g.op("reshape", y, shape=node.outputs[0].shape)


def _global_mean(g: Graph, b):
    """reduce_sum(x[N, C, *S], spatial axes) -> reshape(pool_avg(x)) * prod(S): a global average pool, which
    onnxruntime runs in the blocked layout of the conv before it (no reorder of the whole image); the
    factor folds into the dots that read the sum."""
    node = b["_node"]
    x = node.inputs[0]
    rank = len(x.shape)
    if rank < 3 or tuple(node.attrs["axes"]) != tuple(range(2, rank)) or x.producer is None \
            or x.producer.op not in ("conv", "clamp") or x.dtype != "float32":
        return None
    window = (1, 1) + tuple(x.shape[2:])
    pooled = g.op("pool", x, mode="avg", window=window, strides=window, pads=((0, 0),) * rank)
    flat = g.op("reshape", pooled, shape=node.outputs[0].shape)
    return g.op("mul", flat, g.add_param(np.asarray(np.prod(x.shape[2:]), np.float32)))


def _bias_before_reshape(g: Graph, b):
    """add(reshape(x @ W), c) -> reshape(x @ W + c') for a unit reshape and a constant c: the bias next to its
    dot, where one Gemm takes both."""
    node, r, c = b["_node"], b["r"], b["c"]
    d = r.producer.inputs[0]
    if d.producer is None or d.producer.op != "dot" or b["_uses"].get(id(r), 0) != 1 \
            or node.outputs[0].shape != r.shape:
        return None
    if not unit_reshape(d.shape, r.shape):
        return None
    cc = relaid(c.const, r.shape, d.shape)
    if cc is None or any(k != 1 for k in cc.shape[:-1]):
        return None
    return g.op("reshape", g.op("add", d, g.add_param(cc)), shape=r.shape)


RULES = [
    Rule("vector-dot-as-matmul", P("dot", X(), X()), _vector_dot_as_matmul),
    Rule("global-mean", P("reduce_sum", X()), _global_mean),
    Rule("bias-before-reshape", P("add", P("reshape", X(), name="r"), C("c"), commute=True), _bias_before_reshape),
    *[r for r in algebra.RULES if r.name == "scale-into-dot"],  # the mean's factor into the dots reading it
]
