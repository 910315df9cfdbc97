"""Exact algebraic rewrites: clamps, scale chains, linear maps folded into one another, dots.

Every rule here is exact in real arithmetic and changes a float result by rounding only (it may
reassociate a product or a sum). Rules that would duplicate work fire only when the value they
consume has no other reader.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Value, dot_weight_axis, is_float

from .rewrite import C, P, Reject, Rule, X
from .shapes import aligned, relaid


def _scalar(v: Value) -> bool:
    return v.is_param and v.const.size == 1


def _unpadded(pads) -> bool:
    return all(tuple(p) == (0, 0) for p in pads)


def _ones(values) -> bool:
    return all(d == 1 for d in values)


def _single_use(b, v: Value) -> bool:
    return b["_uses"].get(id(v), 0) == 1


def _clamp(g: Graph, b):
    lo, hi, x = b["lo"].const.item(), b["hi"].const.item(), b["x"]
    out = b["_node"].outputs[0]
    if not is_float(x.dtype) or x.type != out.type or not lo <= hi:
        return None
    return g.op("clamp", x, lo=float(lo), hi=float(hi))


def _sub_of_sub(g: Graph, b):
    """a - (a - x) -> x."""
    a1, a2, x = b["a1"], b["a2"], b["x"]
    same = a1 is a2 or (a1.is_param and a2.is_param and a1.type == a2.type and np.array_equal(a1.const, a2.const))
    return x if same and x.type == b["_node"].outputs[0].type else None


def _scale_chain(g: Graph, b):
    """(x * c1) * c2 -> x * (c1 * c2)."""
    inner, c1, c2 = b["inner"], b["c1"], b["c2"]
    if not _single_use(b, inner):
        return None
    c = np.multiply(c1.const, c2.const).astype(c1.dtype)
    new = g.op("mul", b["x"], g.add_param(c))
    return new if new.type == b["_node"].outputs[0].type else None


def _scalar_regroup(g: Graph, b):
    """(x * s) * c -> x * (s * c) for a size-1 value s: the scalar product is shared (CSE) across uses."""
    inner, s, c, x = b["inner"], b["s"], b["c"], b["x"]
    if s.type.size != 1 and x.type.size == 1:  # the matcher bound the operands the other way round
        s, x = x, s
    b = dict(b, x=x)
    if s.is_param or s.type.size != 1 or b["x"].type.size == 1 or not _single_use(b, inner):
        return None
    new = g.op("mul", b["x"], g.op("mul", s, c))
    return new if new.type == b["_node"].outputs[0].type else None


def _scale_into_dot(g: Graph, b):
    """dot(x * c, W) -> dot(x, W * c) when c is constant along every axis but the contracting one."""
    node, scaled, c = b["_node"], b["scaled"], b["c"]
    k = dot_weight_axis(node)
    if k is None or b["x"].shape != scaled.shape:  # another reader keeps the product; this dot reads x
        return None
    if scaled.producer.op == "div" and not is_float(scaled.dtype):
        return None  # integer division truncates: (x / c) . W is not x . (W / c)
    ca = aligned(c.const, len(scaled.shape))
    if ca.ndim != len(scaled.shape) or any(d != 1 for i, d in enumerate(ca.shape) if i != k):
        return None
    col = ca.reshape(-1, 1).astype(np.float64)  # size 1 or the contracting size
    W = node.inputs[1].const.astype(np.float64)
    W = W * col if scaled.producer.op == "mul" else W / col
    return g.op("dot", b["x"], g.add_param(W.astype(node.inputs[1].dtype)), **node.attrs)


def _lerp(g: Graph, b):
    """a*x + (1-a)*y -> y + a*(x - y) (a running mean's update): the same big ops, without 1 - a (and exact where
    a is 0 or 1)."""
    one, a1, a2, x, y = b["one"], b["a1"], b["a2"], b["x"], b["y"]
    out = b["_node"].outputs[0]
    if a1 is not a2 or not bool(np.all(one.const == 1)) or not is_float(out.dtype) or x.shape != out.shape \
            or y.shape != out.shape:
        return None
    new = g.op("add", y, g.op("mul", a1, g.op("sub", x, y)))
    return new if new.type == out.type else None


def _scale_out_of_add(g: Graph, b):
    """(x * s) + z -> (x + z/s) * s for a constant s with no zero (a normalisation's gamma and beta): the scale
    moves on towards the convs and dots that read the sum, which fold it into their weights. z is a
    constant (z/s folds) or a small computed value (z/s a small product) where every reader folds the scale."""
    node, scaled, s, z, x = b["_node"], b["scaled"], b["s"], b["z"], b["x"]
    out = node.outputs[0]
    if not is_float(out.dtype) or not np.all(s.const != 0) or x.shape != out.shape or s.type.size * 4 > out.type.size \
            or not _single_use(b, scaled):  # another reader would keep x * s: one more big product
        return None
    readers = b["_users"].get(id(out), [])
    absorbing = readers and out not in g.sinks() and all(
        (u.op == "conv" and u.inputs[0] is out) or (u.op == "dot" and u.inputs[0] is out) for u in readers)
    if z.is_param:
        if z.type.size * 4 > out.type.size:
            return None
        zs = g.add_param((z.const.astype(np.float64) / s.const).astype(out.dtype))
    elif absorbing and z.type.size * 4 <= out.type.size:
        zs = g.op("mul", z, g.add_param((1.0 / s.const.astype(np.float64)).astype(out.dtype)))
    else:
        return None
    if np.broadcast_shapes(x.shape, zs.shape) != out.shape:
        return None
    return g.op("mul", g.op("add", x, zs), s)


def _dot_output_scale(g: Graph, b):
    """dot(x, W) * c with c constant along the output's last axis only (through a unit reshape) -> dot(x, W*c)."""
    d, c = b["d"], b["c"]
    v = b["v"]
    strip = lambda shape: [k for k in shape if k != 1]
    if v is not d and (v.producer is None or v.producer.op != "reshape" or v.producer.inputs[0] is not d
                       or strip(v.shape) != strip(d.shape)):
        return None
    dn = d.producer
    if dot_weight_axis(dn) != len(dn.inputs[0].shape) - 1 or not _single_use(b, d) \
            or (v is not d and not _single_use(b, v)):
        return None
    out = b["_node"].outputs[0]
    if out.shape != v.shape:
        return None
    ca = relaid(c.const, v.shape, d.shape)  # the scale as it broadcasts against the dot's own output
    if ca is None or ca.ndim != len(d.shape) or any(k != 1 for k in ca.shape[:-1]):
        return None
    W = (dn.inputs[1].const.astype(np.float64) * ca.reshape(1, -1)).astype(dn.inputs[1].dtype)
    y = g.op("dot", dn.inputs[0], g.add_param(W), **dn.attrs)
    return y if v is d else g.op("reshape", y, shape=v.shape)


def _dot_output_scale_bind(g: Graph, b):
    v = b["v"]
    d = v.producer.inputs[0] if v.producer is not None and v.producer.op == "reshape" else v
    if d.producer is None or d.producer.op != "dot":
        return None
    return _dot_output_scale(g, dict(b, d=d))


def _scalar_scale_into_dot(g: Graph, b):
    """dot(x * (s * c), W) -> dot(x * s, W * c) for a size-1 value s and a scalar constant c (a normalisation's
    1/sqrt(n) next to its computed 1/rms)."""
    node, scaled, q, s, c = b["_node"], b["scaled"], b["q"], b["s"], b["c"]
    if dot_weight_axis(node) is None or s.is_param or s.type.size != 1 or b["x"].type.size == 1 \
            or not _single_use(b, scaled) or not _single_use(b, q) or b["x"].shape != scaled.shape:
        return None
    W = (node.inputs[1].const.astype(np.float64) * float(c.const.reshape(()))).astype(node.inputs[1].dtype)
    return g.op("dot", g.op("mul", b["x"], s), g.add_param(W), **node.attrs)


def _mean_eps_regroup(g: Graph, b):
    """rsqrt(s / n + eps) -> rsqrt(s + n*eps) * sqrt(n) (n > 0): the mean's 1/n leaves the square root as a
    constant factor that the next dot absorbs (RMS and layer norms)."""
    n, eps, s = b["n"], b["eps"], b["s"]
    nv = float(n.const.reshape(()))
    if b["q"].producer.op == "mul":  # s * (1/n)
        nv = 1.0 / nv if nv != 0 else 0.0
    if not nv > 0 or not is_float(s.dtype) or not _single_use(b, b["q"]) or not _single_use(b, b["a"]):
        return None
    dt = s.dtype
    r = g.op("rsqrt", g.op("add", s, g.add_param(np.asarray(nv * float(eps.const.reshape(())), dt))))
    out = g.op("mul", r, g.add_param(np.asarray(np.sqrt(nv), dt)))
    return out if out.type == b["_node"].outputs[0].type else None


def _window_conv_to_reduce(g: Graph, b):
    """A depthwise conv whose kernel covers its whole (unpadded) input -> reduce_sum(x * k) over the window (an
    SSM's short causal conv over its state window): no layout change, no im2col for a 1x1 output."""
    node = b["_node"]
    x, w = node.inputs[0], node.inputs[1]
    a = node.attrs
    n, ch = x.shape[:2]
    spatial = tuple(range(2, len(x.shape)))
    if a["groups"] != ch or w.shape[0] != ch or w.shape[1] != 1:
        return Reject("not a depthwise conv")
    if tuple(w.shape[2:]) != x.shape[2:]:
        return Reject(f"the kernel {tuple(w.shape[2:])} does not cover the whole input {x.shape[2:]}")
    k = g.add_param(np.asarray(w.const.reshape((1,) + (ch,) + tuple(w.shape[2:])), order="C"))
    y = g.op("reduce_sum", g.op("mul", x, k), axes=spatial)
    if len(node.inputs) == 3:
        y = g.op("add", y, g.add_param(node.inputs[2].const.reshape(1, ch)))
    return g.op("reshape", y, shape=node.outputs[0].shape)


def _unit_reshape_keeps_last(v: Value, x: Value) -> bool:
    """v = reshape(x) only inserts or removes unit dimensions and keeps the last dimension."""
    strip = lambda s: tuple(d for d in s if d != 1)
    return bool(v.shape) and bool(x.shape) and v.shape[-1] == x.shape[-1] and strip(v.shape) == strip(x.shape)


def _dot_of_dot(g: Graph, b):
    """dot(dot(x, W1), W2) -> dot(x, W1 @ W2) when it does not add FLOPs (reshapes of unit dims between)."""
    outer = b["_node"]
    mid = outer.inputs[0]
    inner_out = mid
    if mid.producer is not None and mid.producer.op == "reshape":
        inner_out = mid.producer.inputs[0]
        if not _unit_reshape_keeps_last(mid, inner_out) or not _single_use(b, mid):
            return None
    inner = inner_out.producer
    if inner is None or inner.op != "dot" or not _single_use(b, inner_out):
        return None
    k1, k2 = dot_weight_axis(inner), dot_weight_axis(outer)
    x = inner.inputs[0]
    if k1 != len(x.shape) - 1 or k2 != len(mid.shape) - 1:
        return None
    W1, W2 = inner.inputs[1].const, outer.inputs[1].const
    (k, m), n = W1.shape, W2.shape[1]
    if k * n > k * m + m * n:
        return None
    W = (W1.astype(np.float64) @ W2.astype(np.float64)).astype(W1.dtype)
    y = g.op("dot", x, g.add_param(W), lhs_contract=(k1,), rhs_contract=(0,), lhs_batch=(), rhs_batch=())
    out = outer.outputs[0]
    return y if y.shape == out.shape else g.op("reshape", y, shape=out.shape)


def _is_pointwise_conv(node) -> bool:
    """A 1x1 convolution (stride 1, no padding, no dilation of any kind, one group): a matmul over channels."""
    a, w = node.attrs, node.inputs[1]
    nsp = len(w.shape) - 2
    return (w.is_param and all(k == 1 for k in w.shape[2:]) and a["groups"] == 1 and a["strides"] == (1,) * nsp
            and all(tuple(p) == (0, 0) for p in a["pads"]) and not any(d != 1 for d in a["lhs_dilations"]))


def _conv_of_conv(g: Graph, b):
    """conv1x1(conv(x, W1, b1), W2, b2) -> conv(x, W2 W1, W2 b1 + b2) when it does not add FLOPs (a
    pointwise projection after a downsampling conv)."""
    outer, inner_out = b["_node"], b["inner"]
    inner = inner_out.producer
    if not _is_pointwise_conv(outer):
        return Reject("the outer conv is not a plain 1x1 conv")
    if not _single_use(b, inner_out):
        return Reject("the inner conv has other readers")
    if inner.attrs["groups"] != 1 or not all(v.is_param for v in inner.inputs[1:]):
        return Reject("the inner conv is grouped or has a computed kernel or bias")
    W1, W2 = inner.inputs[1].const.astype(np.float64), outer.inputs[1].const.astype(np.float64)
    o1, c, kernel = W1.shape[0], W1.shape[1], int(np.prod(W1.shape[2:]))
    o2 = W2.shape[0]
    if o2 * c * kernel > o1 * c * kernel + o2 * o1:
        return Reject("merging would add FLOPs")
    M = W2.reshape(o2, o1)
    W = np.tensordot(M, W1, axes=(1, 0))
    bias = np.zeros(o2) if len(inner.inputs) < 3 else M @ inner.inputs[2].const.astype(np.float64)
    if len(outer.inputs) == 3:
        bias = bias + outer.inputs[2].const
    dtype = outer.outputs[0].dtype
    return g.add_node("conv", [inner.inputs[0], g.add_param(W.astype(dtype)), g.add_param(bias.astype(dtype))],
                      **inner.attrs).outputs[0]


def _slice_of_dot(g: Graph, b):
    """slice(dot(x, W)) on the output's last axis only -> dot(x, W[:, a:b]), when only slices read the dot."""
    node, d = b["_node"], b["d"]
    dn = d.producer
    k = dot_weight_axis(dn)
    if k is None or any(u.op != "slice" for u in b["_users"].get(id(d), [])) or d in g.sinks():
        return None
    a = node.attrs
    last = len(d.shape) - 1
    for i, (s, l, st) in enumerate(zip(a["starts"], a["limits"], a["strides"])):
        if i != last and (s, l, st) != (0, d.shape[i], 1):
            return None
    W = dn.inputs[1].const[:, a["starts"][last]:a["limits"][last]:a["strides"][last]]
    return g.op("dot", dn.inputs[0], g.add_param(np.asarray(W, order="C")), **dn.attrs)


def _mul_reduce_to_dot(g: Graph, b):
    """reduce_sum(a * v, axis k) with v a vector along k -> dot(a, v)."""
    node, prod = b["_node"], b["prod"]
    axes = node.attrs["axes"]
    if len(axes) != 1 or not _single_use(b, prod):
        return None
    k = axes[0]
    if b["p"] is b["q"]:
        return None  # a sum of squares: the vector would need its own reshape, and nothing is saved
    for a, v in ((b["p"], b["q"]), (b["q"], b["p"])):
        if a.shape != prod.shape:
            continue
        vs = (1,) * (len(a.shape) - len(v.shape)) + v.shape
        if len(vs) == len(a.shape) and all(d == 1 for i, d in enumerate(vs) if i != k) and vs[k] == a.shape[k]:
            vec = g.op("reshape", v, shape=(a.shape[k],)) if v.shape != (a.shape[k],) else v
            return g.op("dot", a, vec, lhs_contract=(k,), rhs_contract=(0,), lhs_batch=(), rhs_batch=())
    return None


def _scalar_pat(name):
    return C(name, where=_scalar)


def _avg_pool(g: Graph, b):
    """div(pool_sum(x), n) with n the window size -> pool_avg(x) (what an average pool traces into)."""
    pool, n = b["pool"], b["n"]
    a = pool.producer.attrs
    if not _single_use(b, pool):
        return Reject("the sum pool has other readers")
    if float(n.const.reshape(-1)[0]) != float(np.prod(a["window"])) or b["_node"].outputs[0].type != pool.type:
        return Reject("the divisor is not the window size")
    return g.op("pool", pool.producer.inputs[0], **dict(a, mode="avg"))


RULES = [
    Rule("clamp", P("min", P("max", X("x"), _scalar_pat("lo"), commute=True), _scalar_pat("hi"), commute=True),
         _clamp),
    Rule("clamp", P("max", P("min", X("x"), _scalar_pat("hi"), commute=True), _scalar_pat("lo"), commute=True),
         _clamp),
    Rule("lerp", P("add", P("mul", X("a1"), X("x"), commute=True),
                   P("mul", P("sub", C("one", where=_scalar), X("a2")), X("y"), commute=True), commute=True), _lerp),
    Rule("scale-out-of-add", P("add", P("mul", X("x"), C("s"), commute=True, name="scaled"), X("z"), commute=True),
         _scale_out_of_add),
    Rule("dot-output-scale", P("mul", X("v"), C("c"), commute=True), _dot_output_scale_bind),
    Rule("sub-of-sub", P("sub", X("a1"), P("sub", X("a2"), X("x"))), _sub_of_sub),
    Rule("scale-chain", P("mul", P("mul", X("x"), C("c1"), commute=True, name="inner"), C("c2"), commute=True),
         _scale_chain),
    Rule("scalar-regroup", P("mul", P("mul", X("x"), X("s"), commute=True, name="inner"), C("c", where=_scalar),
                             commute=True), _scalar_regroup),
    Rule("scale-into-dot", P("dot", P("mul", X("x"), C("c"), commute=True, name="scaled"), C()), _scale_into_dot),
    Rule("scale-into-dot", P("dot", P("div", X("x"), C("c"), name="scaled"), C()), _scale_into_dot),
    Rule("scalar-scale-into-dot", P("dot", P("mul", X("x"), P("mul", X("s"), C("c", where=_scalar), commute=True,
                                                             name="q"), commute=True, name="scaled"), C()),
         _scalar_scale_into_dot),
    Rule("mean-eps-regroup", P("rsqrt", P("add", P(("div", "mul"), X("s"), C("n", where=_scalar), name="q"),
                                           C("eps", where=_scalar), commute=True, name="a")), _mean_eps_regroup),
    Rule("window-conv-to-reduce", P("conv", X(), C(), more=C(), attrs={"pads": _unpadded, "lhs_dilations": _ones}),
         _window_conv_to_reduce),
    Rule("dot-of-dot", P("dot", X(), C()), _dot_of_dot),
    Rule("conv-of-conv", P("conv", P("conv", name="inner"), C(), more=C()), _conv_of_conv),
    Rule("slice-of-dot", P("slice", P("dot", X(), C(), name="d")), _slice_of_dot),
    Rule("avg-pool", P("div", P("pool", name="pool", attrs={"mode": "sum"}), C("n", where=_scalar)), _avg_pool),
    Rule("mul-reduce-to-dot", P("reduce_sum", P("mul", X("p"), X("q"), name="prod")), _mul_reduce_to_dot),
]
