"""Lower an IR graph to TensorFlow ops: one function per IR op, plus layout tracking.

The IR's convolutions are channels-first; TensorFlow's CPU kernels and TFLite's (and XNNPACK's)
are channels-last. Every lowered value therefore carries a permutation: the TF tensor holds
transpose(ir_value, perm). A conv produces its result channels-last (perm (0,2,3,1)), elementwise
ops and reductions keep whatever layout their inputs have, an IR transpose composes with it, and
only ops that need the IR layout get a real tf.transpose. Traced NHWC models thus lower to
NHWC convs with no transposes around them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import OPS, Graph, Node, Value


class UnsupportedOpError(ValueError):
    """The graph has an op (or an op configuration) the TF lowering does not handle."""


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _identity(rank):
    return tuple(range(rank))


class Lowered:
    """A TF tensor t with t = transpose(ir_value, perm)."""
    __slots__ = ("t", "perm")

    def __init__(self, t, perm):
        self.t, self.perm = t, tuple(perm)


class TfLowering:
    def __init__(self, graph: Graph):
        import tensorflow as tf
        self.tf = tf
        self.graph = graph
        missing = sorted({n.op for n in graph.nodes if n.op not in LOWERINGS and n.op not in LAYOUT_OPS})
        if missing:
            raise UnsupportedOpError(f"ops {missing} have no TensorFlow lowering (graphopt/targets/tf_lowering.py)")
        self.env: dict[int, Lowered] = {}

    # ---- layout helpers ----------------------------------------------------------------
    def plain(self, v: Value):
        """The TF tensor in the IR's own layout."""
        if v.is_param:
            return self.tf.constant(v.const)
        lv = self.env[id(v)]
        if lv.perm == _identity(len(lv.perm)):
            return lv.t
        return self.tf.transpose(lv.t, _inverse(lv.perm))

    def in_layout(self, v: Value, perm):
        """The TF tensor as transpose(ir_value, perm)."""
        if v.is_param:
            c = v.const.reshape((1,) * (len(perm) - v.const.ndim) + v.const.shape) if v.const.size > 1 else v.const
            return self.tf.constant(np.ascontiguousarray(np.transpose(c, perm)) if c.ndim == len(perm) else c)
        lv = self.env[id(v)]
        if lv.perm == tuple(perm):
            return lv.t
        if len(v.shape) != len(perm):
            return self.plain(v)
        r = tuple(lv.perm.index(p) for p in perm)  # out[i] = stored axis holding ir axis perm[i]
        return lv.t if r == _identity(len(r)) else self.tf.transpose(lv.t, r)

    # ---- driver --------------------------------------------------------------------------
    def run(self, inputs: list, state: list) -> tuple[list, list]:
        for v, t in zip(self.graph.inputs + [s.input for s in self.graph.state], inputs + state):
            self.env[id(v)] = Lowered(t, _identity(len(v.shape)))
        for node in self.graph.nodes:
            self.lower(node)
        outs = [self.plain(v) for v in self.graph.outputs]
        new_state = [self.plain(s.output) for s in self.graph.state]
        return outs, new_state

    def lower(self, node: Node):
        out = node.outputs[0]
        rank = len(out.shape)
        opdef = OPS[node.op]
        if node.op in LAYOUT_OPS:
            self.env[id(out)] = LAYOUT_OPS[node.op](self, node)
            return
        if opdef.elementwise:
            perm = self._common_perm(node)
            args = [self.in_layout(v, perm) if len(v.shape) == rank or v.is_param else self.plain(v)
                    for v in node.inputs]
            self.env[id(out)] = Lowered(LOWERINGS[node.op](self.tf, node, *args), perm)
            return
        args = [self.plain(v) for v in node.inputs]
        self.env[id(out)] = Lowered(LOWERINGS[node.op](self.tf, node, *args), _identity(rank))

    def _common_perm(self, node: Node):
        """The layout an elementwise op runs in: that of its full-rank non-constant inputs if they agree."""
        rank = len(node.outputs[0].shape)
        perms = {self.env[id(v)].perm for v in node.inputs
                 if not v.is_param and v.shape == node.outputs[0].shape}
        others_ok = all(v.is_param or v.type.size == 1 or v.shape == node.outputs[0].shape for v in node.inputs)
        if len(perms) == 1 and others_ok:
            return next(iter(perms))
        return _identity(rank)


def _transpose(low: TfLowering, node: Node) -> Lowered:
    x = node.inputs[0]
    if x.is_param:
        return Lowered(low.tf.constant(np.transpose(x.const, node.attrs["perm"])), _identity(len(x.shape)))
    lv = low.env[id(x)]
    p = node.attrs["perm"]
    # stored s = transpose(x, q); out = transpose(x, p) = transpose(s, r) with r[i] = q.index(p[i]);
    # keep s and record out's layout: s = transpose(out, perm_out) with perm_out = inverse(p) o q
    perm_out = tuple(_inverse(p)[q] for q in lv.perm)
    return Lowered(lv.t, perm_out)


def _reduce(low: TfLowering, node: Node) -> Lowered:
    x = node.inputs[0]
    lv = low.env[id(x)] if not x.is_param else Lowered(low.tf.constant(x.const), _identity(len(x.shape)))
    axes = node.attrs["axes"]
    stored_axes = sorted(lv.perm.index(a) for a in axes)
    fn = {"reduce_sum": low.tf.reduce_sum, "reduce_max": low.tf.reduce_max, "reduce_min": low.tf.reduce_min}
    t = fn[node.op](lv.t, axis=stored_axes)
    kept = [q for q in lv.perm if q not in axes]  # IR axes in stored order
    renum = {a: i for i, a in enumerate(sorted(kept))}
    return Lowered(t, tuple(renum[q] for q in kept))


def _conv(low: TfLowering, node: Node) -> Lowered:
    tf = low.tf
    x, w = node.inputs[0], node.inputs[1]
    a = node.attrs
    if len(x.shape) != 4:
        raise UnsupportedOpError(f"conv with {len(x.shape) - 2} spatial dims has no TensorFlow lowering yet")
    nhwc = (0, 2, 3, 1)
    xt = low.in_layout(x, nhwc)
    groups, cin, cout = a["groups"], x.shape[1], w.shape[0]

    def kernel(perm):  # the kernel (O, I/groups, kh, kw) in TF's order; folded by the converters
        if w.is_param:
            return tf.constant(np.ascontiguousarray(w.const.transpose(perm)))
        return tf.transpose(low.plain(w), perm)
    pads = [tuple(p) for p in a["pads"]]
    if all(p == (0, 0) for p in pads):
        padding = "VALID"
    elif all(s == 1 for s in a["strides"]) and all(
            p == (((k - 1) * d) // 2, (k - 1) * d - ((k - 1) * d) // 2)
            for p, k, d in zip(pads, w.shape[2:], a["dilations"])):
        padding = "SAME"
    else:
        padding = [[0, 0]] + [list(p) for p in pads] + [[0, 0]]
    strides = [1, *a["strides"], 1]
    dil = list(a["dilations"])
    if groups == 1:
        y = tf.nn.conv2d(xt, kernel((2, 3, 1, 0)), strides, padding, dilations=dil)
    elif groups == cin == cout:
        if isinstance(padding, list):
            xt = tf.pad(xt, padding)
            padding = "VALID"
        y = tf.nn.depthwise_conv2d(xt, kernel((2, 3, 0, 1)), strides, padding, dilations=dil)
    else:
        raise UnsupportedOpError(f"grouped conv with {groups} groups of {cin} channels has no TensorFlow lowering")
    if len(node.inputs) == 3:
        y = tf.nn.bias_add(y, low.plain(node.inputs[2]))
    return Lowered(y, nhwc)


LAYOUT_OPS: dict[str, Callable[[TfLowering, Node], Lowered]] = {
    "transpose": _transpose, "reduce_sum": _reduce, "reduce_max": _reduce, "reduce_min": _reduce, "conv": _conv,
}

# ---- plain ops: fn(tf, node, *tensors) -> tensor -----------------------------------------------

LOWERINGS: dict[str, Callable] = {}


def _register_table():
    unary = {"neg": "negative", "exp": "exp", "log": "math.log", "sqrt": "sqrt", "rsqrt": "math.rsqrt",
             "floor": "floor", "ceil": "math.ceil", "abs": "abs", "sign": "sign", "sin": "sin", "cos": "cos",
             "tanh": "tanh", "sigmoid": "sigmoid", "erf": "math.erf", "log1p": "math.log1p",
             "expm1": "math.expm1", "not": "logical_not", "is_finite": "math.is_finite"}
    binary = {"add": "add", "sub": "subtract", "mul": "multiply", "max": "maximum", "min": "minimum",
              "pow": "pow", "and": "logical_and", "or": "logical_or", "lt": "less", "le": "less_equal",
              "gt": "greater", "ge": "greater_equal", "eq": "equal", "ne": "not_equal"}

    def resolve(tf, path):
        obj = tf
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    for name, path in unary.items():
        LOWERINGS[name] = (lambda p: lambda tf, n, x: resolve(tf, p)(x))(path)
    for name, path in binary.items():
        LOWERINGS[name] = (lambda p: lambda tf, n, x, y: resolve(tf, p)(x, y))(path)


_register_table()


def _lower(*ops):
    def deco(fn):
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return deco


@_lower("div")
def _div(tf, n, x, y):
    return x / y if n.outputs[0].dtype.startswith("float") else tf.math.truncatediv(x, y)


@_lower("rem")
def _rem(tf, n, x, y):
    return tf.math.truncatemod(x, y)  # C fmod semantics, as the interpreter's np.fmod


@_lower("round")
def _round(tf, n, x):
    if n.attrs["mode"] == "half_even":
        return tf.round(x)
    t = tf.math.floor(tf.abs(x))
    frac = tf.abs(x) - t
    return tf.sign(x) * tf.where(frac >= 0.5, t + 1, t)


@_lower("clamp")
def _clamp(tf, n, x):
    lo, hi = n.attrs["lo"], n.attrs["hi"]
    if (lo, hi) == (0.0, 6.0):
        return tf.nn.relu6(x)
    return tf.minimum(tf.maximum(x, lo), hi)


@_lower("select")
def _select(tf, n, c, x, y):
    return tf.where(c, x, y)


@_lower("cast")
def _cast(tf, n, x):
    to = n.attrs["to"]
    if n.inputs[0].dtype.startswith("float") and not to.startswith("float") and to != "bool":
        x = tf.where(x < 0, tf.math.ceil(x), tf.math.floor(x))  # float -> int truncates toward zero
    return tf.cast(x, to)


@_lower("reshape")
def _reshape(tf, n, x):
    return tf.reshape(x, n.attrs["shape"])


@_lower("broadcast")
def _broadcast(tf, n, x):
    shape, dims = n.attrs["shape"], n.attrs["dims"]
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = n.inputs[0].shape[i]
    return tf.broadcast_to(tf.reshape(x, expanded), shape)


@_lower("slice")
def _slice(tf, n, x):
    a = n.attrs
    return tf.strided_slice(x, a["starts"], a["limits"], a["strides"])


@_lower("concat")
def _concat(tf, n, *xs):
    return tf.concat(list(xs), axis=n.attrs["axis"])


@_lower("pad")
def _pad(tf, n, x, v):
    return tf.pad(x, [list(p) for p in n.attrs["pads"]], constant_values=v)


@_lower("take")
def _take(tf, n, x, i):
    ax = n.attrs["axis"]
    return tf.gather(x, tf.clip_by_value(i, 0, n.inputs[0].shape[ax] - 1), axis=ax)


@_lower("cumsum")
def _cumsum(tf, n, x):
    return tf.cumsum(x, axis=n.attrs["axis"], reverse=n.attrs["reverse"])


@_lower("dot")
def _dot(tf, n, x, y):
    a = n.attrs
    lhs, rhs = n.inputs
    if not a["lhs_batch"] and a["lhs_contract"] == (len(lhs.shape) - 1,) and a["rhs_contract"] == (0,):
        k = lhs.shape[-1]
        if len(rhs.shape) == 2:  # x[..., K] @ W[K, N] as a 2-D matmul (TFLite FULLY_CONNECTED)
            y2 = tf.matmul(tf.reshape(x, [-1, k]), y)
            return tf.reshape(y2, n.outputs[0].shape)
        if len(rhs.shape) == 1:
            return tf.reduce_sum(x * y, axis=-1)
    from .onnx import einsum_equation
    return tf.einsum(einsum_equation(len(lhs.shape), len(rhs.shape), a), x, y)


def lower_graph(graph: Graph, inputs: list, state: list) -> tuple[list, list]:
    """Evaluate the graph with TF ops on the given TF tensors (inside a tf.function or eagerly)."""
    return TfLowering(graph).run(list(inputs), list(state))
