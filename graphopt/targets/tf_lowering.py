"""Lower an IR graph to TensorFlow ops: one function per IR op, declared in `TABLE` (a
lowering.LoweringTable) as fn(lowering: TfLowering, node) -> Lowered, plus layout tracking. Most ops
are plain (`_plain`): fn(tf, node, *tensors) -> tensor, their inputs given in the IR's layout (an
elementwise op: in its inputs' common layout); conv, pool, reduce, reverse and transpose handle layouts.

The IR's convolutions are channels-first; TensorFlow's CPU kernels and TFLite's (and XNNPACK's)
are channels-last. Every lowered value therefore carries a permutation: the TF tensor holds
transpose(ir_value, perm). A conv produces its result channels-last (perm (0,2,3,1), or (0,2,3,4,1)
in 3-D), elementwise ops, reductions, pools and reverses keep whatever layout their inputs have, an
IR transpose composes with it, and only ops that need the IR layout get a real tf.transpose. Traced
NHWC (NDHWC) models thus lower to NHWC (NDHWC) convs and pools with no transposes around them.

Lowered for XLA (the `tf` target's jit_compile), float sums accumulate in float64: XLA merges a
chain of reduce_sums (what split-long-reductions makes of a long sum) back into one reduction, and
its CPU backend (YNNPACK fusion in TF 2.21) adds PhysNet's 131072-term sums with 3.5e-6 relative
error (TF's kernels add the chain with 5e-8), which moves the waveform 12x the float32 noise floor.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import OPS, Graph, Node, Value
from ..ir.ops import lhs_dilations
from . import UnsupportedOpError  # noqa: F401  (one class for every target; raised here)
from .lowering import LoweringTable

TABLE = LoweringTable("TensorFlow", "graphopt/targets/tf_lowering.py")


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _identity(rank):
    return tuple(range(rank))


def import_tensorflow(threads: int = 1):
    """TensorFlow, with its thread pools sized before its runtime starts (one thread, as every graphopt
    runtime runs; TF XLA's float results depend on how many threads split a reduction, so an artifact
    built, verified and reloaded in different processes must see the same count). Where the runtime
    already started in this process (another library ran TF first), its setting stays."""
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass
    return tf


class Lowered:
    """A TF tensor t with t = transpose(ir_value, perm)."""
    __slots__ = ("t", "perm")

    def __init__(self, t, perm):
        self.t, self.perm = t, tuple(perm)


class TfLowering:
    def __init__(self, graph: Graph, xla: bool = False):
        self.tf = import_tensorflow()
        self.graph = graph
        self.xla = xla
        TABLE.check(graph)
        self.env: dict[int, Lowered] = {}

    # ---- layout helpers ----------------------------------------------------------------
    def lowered(self, v: Value) -> Lowered:
        """v as stored (a parameter as a constant in the IR's layout)."""
        if v.is_param:
            return Lowered(self.tf.constant(v.const), _identity(len(v.shape)))
        return self.env[id(v)]

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
            return self.tf.constant(np.asarray(np.transpose(c, perm), order="C") if c.ndim == len(perm) else c)
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
        self.env[id(node.outputs[0])] = TABLE.lower(node, self, node)

    def lower_plain(self, fn: Callable, node: Node) -> Lowered:
        """A plain op fn(tf, node, *tensors) -> tensor: elementwise in its inputs' common layout, else in the IR's."""
        rank = len(node.outputs[0].shape)
        if OPS[node.op].elementwise:
            perm = self._common_perm(node)
            args = [self.in_layout(v, perm) if len(v.shape) == rank or v.is_param else self.plain(v)
                    for v in node.inputs]
            return Lowered(fn(self.tf, node, *args), perm)
        args = [self.plain(v) for v in node.inputs]
        return Lowered(fn(self.tf, node, *args), _identity(rank))

    def _common_perm(self, node: Node):
        """The layout an elementwise op runs in: that of its full-rank non-constant inputs if they agree."""
        rank = len(node.outputs[0].shape)
        perms = {self.env[id(v)].perm for v in node.inputs
                 if not v.is_param and v.shape == node.outputs[0].shape}
        others_ok = all(v.is_param or v.type.size == 1 or v.shape == node.outputs[0].shape for v in node.inputs)
        if len(perms) == 1 and others_ok:
            return next(iter(perms))
        return _identity(rank)


@TABLE.register("transpose")
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


@TABLE.register("reduce_sum", "reduce_max", "reduce_min")
def _reduce(low: TfLowering, node: Node) -> Lowered:
    x = node.inputs[0]
    lv = low.lowered(x)
    axes = node.attrs["axes"]
    stored_axes = sorted(lv.perm.index(a) for a in axes)
    fn = {"reduce_sum": low.tf.reduce_sum, "reduce_max": low.tf.reduce_max, "reduce_min": low.tf.reduce_min}
    if node.op == "reduce_sum" and low.xla and node.outputs[0].dtype in ("float16", "float32"):  # see the docstring
        t = low.tf.cast(low.tf.reduce_sum(low.tf.cast(lv.t, "float64"), axis=stored_axes), lv.t.dtype)
    else:
        t = fn[node.op](lv.t, axis=stored_axes)
    kept = [q for q in lv.perm if q not in axes]  # IR axes in stored order
    renum = {a: i for i, a in enumerate(sorted(kept))}
    return Lowered(t, tuple(renum[q] for q in kept))


@TABLE.register("reverse")
def _reverse(low: TfLowering, node: Node) -> Lowered:
    """np.flip in the input's own layout, one reverse per run of neighbouring stored axes (TFLite's
    REVERSE_V2 takes contiguous axes only)."""
    lv = low.lowered(node.inputs[0])
    t = lv.t
    for run in _runs(sorted(lv.perm.index(a) for a in node.attrs["axes"])):
        t = low.tf.reverse(t, run)
    return Lowered(t, lv.perm)


def _runs(axes) -> list[list[int]]:
    """Sorted axes split into runs of neighbours: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for i in axes:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


# ---- pool: separable window reductions as 2-D pools, in the input's own layout -----------------------
#
# A window reduction is separable: the max over a box is the max over its axes one after another,
# and the mean over a box (padding counted) the mean of means. So a pool of any rank runs as a chain
# of 2-D pools (the only pools TFLite and XNNPACK have), each over one or two neighbouring stored
# axes of a [before, h, w, after] reshape: no transposes, whatever the layout, and 3-D windows on
# channels-last tensors need no TFLite Flex ops. Sum pools are average pools times the window size.


@TABLE.register("pool")
def _pool(low: TfLowering, node: Node) -> Lowered:
    lv = low.lowered(node.inputs[0])
    a = node.attrs
    window, strides, pads = ([attr[q] for q in lv.perm] for attr in (a["window"], a["strides"], a["pads"]))
    t = lv.t
    for axes in _pool_groups(window, strides, pads):
        t = _pool2d(low.tf, t, axes, a["mode"], window, strides, pads)
    if a["mode"] == "sum":
        t = t * float(np.prod(a["window"]))
    return Lowered(t, lv.perm)


def _pool_groups(window, strides, pads) -> list[list[int]]:
    """The windowed stored axes cut into groups of one or two neighbours, trailing pairs first."""
    active = [i for i, (k, s, p) in enumerate(zip(window, strides, pads)) if (k, s, tuple(p)) != (1, 1, (0, 0))]
    groups = []
    for run in reversed(_runs(active)):
        while run:
            groups.append(run[-2:])
            run = run[:-2]
    return groups


def _pool2d(tf, t, axes, mode, window, strides, pads):
    """Pool the stored axes `axes` (one, or two neighbours) of t: a 2-D max/avg pool on a
    [before, h, w, after] reshape, VALID after explicit padding (window, strides, pads: per stored axis)."""
    shape = t.shape.as_list()
    first, last = axes[0], axes[-1]
    unit = [1] * (2 - len(axes))  # a single axis pools as h, with w = 1
    t = tf.reshape(t, [int(np.prod(shape[:first])), *(shape[i] for i in axes), *unit, int(np.prod(shape[last + 1:]))])
    hw_pads = [list(pads[i]) for i in axes] + [[0, 0]] * len(unit)
    if any(p != [0, 0] for p in hw_pads):
        fill = float("-inf") if mode == "max" else 0.0  # what the IR pads with
        t = tf.pad(t, [[0, 0], *hw_pads, [0, 0]], constant_values=fill)
    pool = tf.nn.max_pool2d if mode == "max" else tf.nn.avg_pool2d
    y = pool(t, [window[i] for i in axes] + unit, [strides[i] for i in axes] + unit, "VALID")
    return tf.reshape(y, shape[:first] + y.shape.as_list()[1:1 + len(axes)] + shape[last + 1:])


# ---- conv: channels-last 1-D (as 2-D), 2-D and 3-D convolutions -------------------------------------


@TABLE.register("conv")
def _conv(low: TfLowering, node: Node) -> Lowered:
    tf = low.tf
    x, w = node.inputs[0], node.inputs[1]
    a = node.attrs
    nsp = len(x.shape) - 2
    _check_conv(node, nsp)
    channels_last = (0, *range(2, nsp + 2), 1)
    xt = low.in_layout(x, channels_last)
    one_d = nsp == 1
    if one_d:  # TF and TFLite have no 1-D convolutions: a 2-D one over a unit H axis
        xt = tf.reshape(xt, [x.shape[0], 1, x.shape[2], x.shape[1]])
        a = dict(a, strides=(1, *a["strides"]), pads=((0, 0), *a["pads"]), dilations=(1, *a["dilations"]))
        nsp = 2
    spatial = tuple(range(2, nsp + 2))
    kernel_shape = (w.shape[0], w.shape[1], *((1,) if one_d else ()), *w.shape[2:])

    def kernel(perm):  # the kernel (O, I/groups, *k) in TF's order; folded by the converters
        if w.is_param:
            return tf.constant(np.asarray(w.const.reshape(kernel_shape).transpose(perm), order="C"))
        return tf.transpose(tf.reshape(low.plain(w), kernel_shape), perm)
    if nsp == 3 and a["groups"] != 1:
        y = _depthwise_conv3d(low, xt, w, a, node.outputs[0].shape)
        if len(node.inputs) == 3:
            y = tf.nn.bias_add(y, low.plain(node.inputs[2]))
        return Lowered(y, channels_last)
    padding = _conv_padding(a, kernel_shape[2:])
    strides = [1, *a["strides"], 1]
    if a["groups"] == 1 and nsp == 2:
        y = tf.nn.conv2d(xt, kernel(spatial + (1, 0)), strides, padding, dilations=list(a["dilations"]))
    else:  # conv3d and depthwise_conv2d take no explicit padding
        if isinstance(padding, list):
            xt, padding = tf.pad(xt, padding), "VALID"
        if a["groups"] == 1:
            y = tf.nn.conv3d(xt, kernel(spatial + (1, 0)), strides, padding, dilations=[1, *a["dilations"], 1])
        else:
            y = tf.nn.depthwise_conv2d(xt, kernel(spatial + (0, 1)), strides, padding,
                                       dilations=list(a["dilations"]))
    if one_d:
        n, o, width = node.outputs[0].shape
        y = tf.reshape(y, [n, width, o])
    if len(node.inputs) == 3:
        y = tf.nn.bias_add(y, low.plain(node.inputs[2]))
    return Lowered(y, channels_last)


def _depthwise_conv3d(low: TfLowering, xt, w: Value, a: dict, out_shape):
    """A depthwise 3-D conv (groups == channels; TF's Conv3D has no groups) as one depthwise 2-D conv per
    temporal kernel offset, summed: offset i reads the frames i * dilation + stride * t, folded into the
    batch ([N * T', H, W, C]), and convolves them with the kernel's slice i. TFLite runs DEPTHWISE_CONV_2D
    natively (XNNPACK), so a 3x3x3 kernel costs three depthwise convs and two adds, not a Flex op."""
    tf = low.tf
    n, c, t_out, h_out, w_out = out_shape
    kd = w.shape[2]
    (st, sh, sw), (dt, dh, dw) = a["strides"], a["dilations"]
    if any(p != (0, 0) for p in map(tuple, a["pads"])):
        xt = tf.pad(xt, [[0, 0], *[list(p) for p in a["pads"]], [0, 0]])
    if w.is_param:
        k = tf.constant(np.asarray(w.const[:, 0].transpose(1, 2, 3, 0)[..., None], order="C"))  # (kd, kh, kw, C, 1)
    else:
        k = tf.expand_dims(tf.transpose(tf.reshape(low.plain(w), (c,) + tuple(w.shape[2:])), (1, 2, 3, 0)), -1)
    _, _, hp, wp, _ = xt.shape.as_list()
    y = None
    for i in range(kd):
        frames = xt[:, i * dt:i * dt + (t_out - 1) * st + 1:st]
        z = tf.nn.depthwise_conv2d(tf.reshape(frames, [n * t_out, hp, wp, c]), k[i], [1, sh, sw, 1], "VALID",
                                   dilations=[dh, dw])
        y = z if y is None else y + z
    return tf.reshape(y, [n, t_out, h_out, w_out, c])


def _check_conv(node: Node, nsp: int) -> None:
    a, x, w = node.attrs, node.inputs[0], node.inputs[1]
    conv = f"conv %{node.outputs[0].name}"
    if nsp not in (1, 2, 3):
        raise UnsupportedOpError(f"{conv} has {nsp} spatial dims; the TensorFlow lowering has 1-D (as 2-D), 2-D and "
                                 "3-D convolutions only")
    if lhs_dilations(a, nsp) != (1,) * nsp:
        raise UnsupportedOpError(f"{conv} has lhs_dilations {a['lhs_dilations']}, which TensorFlow's convolutions "
                                 "lack; run the expand-lhs-dilation lowering pass first (graphopt build runs it for "
                                 "the tf and tflite targets)")
    groups, cin, cout = a["groups"], x.shape[1], w.shape[0]
    depthwise = groups != 1 and groups == cin == cout
    if nsp == 3 and depthwise and any(s > 1 for s in a["strides"][1:]) and any(d > 1 for d in a["dilations"][1:]):
        raise UnsupportedOpError(f"{conv} is a depthwise 3-D conv with strides {a['strides']} and dilations "
                                 f"{a['dilations']}: TensorFlow's depthwise convs take spatial strides or "
                                 "dilations, not both; use the xla, onnx or torch target")
    if nsp == 3 and not depthwise and a["dilations"][1] != a["dilations"][2]:
        raise UnsupportedOpError(f"{conv} has dilations {a['dilations']}: TensorFlow's Conv3D shape inference swaps "
                                 "the H and W dilations, so they must be equal; use the xla, onnx or torch target")
    if groups != 1 and not depthwise:
        raise UnsupportedOpError(f"{conv} is a {nsp}-D conv with {groups} groups ({cin} -> {cout} channels); "
                                 "TensorFlow has depthwise convs only (groups == input channels == output "
                                 "channels); use the xla, onnx or torch target")


def _conv_padding(a: dict, kernel_shape) -> str | list:
    """TF's padding for the conv: "VALID", "SAME" where it matches, else explicit [[lo, hi]...] in NDHWC order."""
    pads = [tuple(p) for p in a["pads"]]
    if all(p == (0, 0) for p in pads):
        return "VALID"
    if all(s == 1 for s in a["strides"]) and all(
            p == (((k - 1) * d) // 2, (k - 1) * d - ((k - 1) * d) // 2)
            for p, k, d in zip(pads, kernel_shape, a["dilations"])):
        return "SAME"
    return [[0, 0]] + [list(p) for p in pads] + [[0, 0]]


# ---- plain ops: fn(tf, node, *tensors) -> tensor -----------------------------------------------


def _plain(*ops):
    """Decorator: fn(tf, node, *tensors) -> tensor lowers these ops (see TfLowering.lower_plain)."""
    def deco(fn):
        TABLE.register(*ops)(lambda low, node: low.lower_plain(fn, node))
        return fn
    return deco


def _direct_ops():
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
        _plain(name)((lambda p: lambda tf, n, x: resolve(tf, p)(x))(path))
    for name, path in binary.items():
        _plain(name)((lambda p: lambda tf, n, x, y: resolve(tf, p)(x, y))(path))


_direct_ops()


@_plain("div")
def _div(tf, n, x, y):
    return x / y if n.outputs[0].dtype.startswith("float") else tf.truncatediv(x, y)


@_plain("rem")
def _rem(tf, n, x, y):
    """C fmod semantics, as the interpreter's np.fmod. Integers: x - trunc(x / y) * y, exact, from ops
    the TFLite converter has as builtins (it has no TruncateMod)."""
    if n.outputs[0].dtype.startswith("float"):
        return tf.truncatemod(x, y)
    return x - tf.truncatediv(x, y) * y


@_plain("round")
def _round(tf, n, x):
    if n.attrs["mode"] == "half_even":
        return tf.round(x)
    t = tf.math.floor(tf.abs(x))
    frac = tf.abs(x) - t
    return tf.sign(x) * tf.where(frac >= 0.5, t + 1, t)


@_plain("clamp")
def _clamp(tf, n, x):
    lo, hi = n.attrs["lo"], n.attrs["hi"]
    if (lo, hi) == (0.0, 6.0):
        return tf.nn.relu6(x)
    return tf.minimum(tf.maximum(x, lo), hi)


@_plain("select")
def _select(tf, n, c, x, y):
    return tf.where(c, x, y)


@_plain("cast")
def _cast(tf, n, x):
    to = n.attrs["to"]
    if n.inputs[0].dtype.startswith("float") and not to.startswith("float") and to != "bool":
        x = tf.where(x < 0, tf.math.ceil(x), tf.math.floor(x))  # float -> int truncates toward zero
    return tf.cast(x, to)


@_plain("reshape")
def _reshape(tf, n, x):
    return tf.reshape(x, n.attrs["shape"])


@_plain("broadcast")
def _broadcast(tf, n, x):
    shape, dims = n.attrs["shape"], n.attrs["dims"]
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = n.inputs[0].shape[i]
    return tf.broadcast_to(tf.reshape(x, expanded), shape)


@_plain("slice")
def _slice(tf, n, x):
    a = n.attrs
    return tf.strided_slice(x, a["starts"], a["limits"], a["strides"])


@_plain("concat")
def _concat(tf, n, *xs):
    return tf.concat(list(xs), axis=n.attrs["axis"])


@_plain("pad")
def _pad(tf, n, x, v):
    """tf.pad with neighbouring unpadded axes merged (TFLite's PAD takes at most 5 dims; the zero
    insertion of expand-lhs-dilation pads 6-D values). A constant zero value makes it a plain PAD."""
    shape, pads = [], []
    for d, p in zip(n.inputs[0].shape, n.attrs["pads"]):
        if tuple(p) == (0, 0) and pads and pads[-1] == [0, 0]:
            shape[-1] *= d
        else:
            shape.append(d)
            pads.append(list(p))
    value = n.inputs[1].const.item() if n.inputs[1].is_param else v
    return tf.reshape(tf.pad(tf.reshape(x, shape), pads, constant_values=value), n.outputs[0].shape)


@_plain("take")
def _take(tf, n, x, i):
    ax = n.attrs["axis"]
    return tf.gather(x, tf.clip_by_value(i, 0, n.inputs[0].shape[ax] - 1), axis=ax)


@_plain("cumsum")
def _cumsum(tf, n, x):
    return tf.cumsum(x, axis=n.attrs["axis"], reverse=n.attrs["reverse"])


@_plain("dot")
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
    if not a["lhs_contract"]:
        return _outer(tf, n, x, y)
    from .onnx import einsum_equation
    return tf.einsum(einsum_equation(len(lhs.shape), len(rhs.shape), a), x, y)


def _outer(tf, n, x, y):
    """A dot with no contracted dims (a batched outer product) as a broadcast multiply: each operand moved to
    (batch, its free dims) with unit dims where the other's free dims go. TFLite's converter rewrites such an
    Einsum (ab,cda->abcd) into a BatchMatMul whose shapes it then rejects ("invalid output dimension")."""
    a = n.attrs
    lhs, rhs = n.inputs
    lf = [i for i in range(len(lhs.shape)) if i not in a["lhs_batch"]]
    rf = [i for i in range(len(rhs.shape)) if i not in a["rhs_batch"]]
    batch = [lhs.shape[i] for i in a["lhs_batch"]]
    xt = tf.reshape(tf.transpose(x, list(a["lhs_batch"]) + lf), batch + [lhs.shape[i] for i in lf] + [1] * len(rf))
    yt = tf.reshape(tf.transpose(y, list(a["rhs_batch"]) + rf), batch + [1] * len(lf) + [rhs.shape[i] for i in rf])
    return xt * yt


def lower_graph(graph: Graph, inputs: list, state: list, xla: bool = False) -> tuple[list, list]:
    """Evaluate the graph with TF ops on the given TF tensors (inside a tf.function or eagerly);
    xla: for a tf.function compiled by XLA (sums accumulate in float64, see the module docstring)."""
    return TfLowering(graph, xla).run(list(inputs), list(state))
