"""The op registry: each op's attributes, type inference, NumPy reference semantics and FLOPs.

The NumPy functions here are the IR's meaning. Elementwise ops broadcast NumPy-style
(multidirectional, like ONNX); inputs of an op share one dtype unless stated otherwise.
Convolutions are channels-first (N, C, *spatial) with (O, I/groups, *kernel) weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .types import TensorType, is_float

Infer = Callable[[list[TensorType], dict], list[TensorType]]
Compute = Callable[..., Any]


class IRTypeError(TypeError):
    """An op was given inputs or attributes its type rule rejects."""


@dataclass(frozen=True)
class OpDef:
    name: str
    attrs: tuple[str, ...]
    infer: Infer
    compute: Compute  # (inputs: list[np.ndarray], attrs) -> list[np.ndarray]
    flops_fn: Callable[[list[TensorType], list[TensorType], dict], int]
    elementwise: bool = False
    arity: int | None = None  # None: variadic
    defaults: tuple[tuple[str, Any], ...] = ()

    def normalize_attrs(self, attrs: dict) -> dict:
        merged = dict(self.defaults)
        merged.update(attrs)
        unknown = set(merged) - set(self.attrs)
        missing = set(self.attrs) - set(merged)
        if unknown or missing:
            raise IRTypeError(f"op {self.name}: unknown attributes {sorted(unknown)}, missing {sorted(missing)}")
        return {k: _freeze(v) for k, v in merged.items()}

    def flops(self, in_types, out_types, attrs) -> int:
        return int(self.flops_fn(in_types, out_types, attrs))


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


OPS: dict[str, OpDef] = {}


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise IRTypeError(f"op {name!r} is not in the graphopt op registry") from None


def register(name, infer, compute, flops=lambda i, o, a: 0, attrs=(), elementwise=False, arity=None, defaults=()):
    OPS[name] = OpDef(name, tuple(attrs), infer, compute, flops, elementwise, arity, tuple(defaults))


def _numel(t: TensorType) -> int:
    return t.size


def _out_numel(i, o, a) -> int:
    return sum(_numel(t) for t in o)


def _in_numel(i, o, a) -> int:
    return _numel(i[0])


# ---- elementwise ----------------------------------------------------------------------

def _broadcast_types(ins: list[TensorType], name: str, out_dtype: str | None = None) -> TensorType:
    dtypes = {t.dtype for t in ins}
    if len(dtypes) != 1:
        raise IRTypeError(f"op {name}: inputs have mixed dtypes {sorted(dtypes)}")
    try:
        shape = np.broadcast_shapes(*[t.shape for t in ins])
    except ValueError:
        raise IRTypeError(f"op {name}: shapes {[t.shape for t in ins]} do not broadcast") from None
    return TensorType(shape, out_dtype or ins[0].dtype)


def _same_dtype(x: np.ndarray, *like: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=like[0].dtype) if like else x


def _round(x, mode):
    if mode == "half_even":
        return np.round(x)
    # half away from zero, decided on the exact fractional part: |x| + 0.5 itself rounds in float
    # (0.49999997 + 0.5 == 1.0 and 8388609 + 0.5 == 8388610 in float32)
    t = np.trunc(x)
    return np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t).astype(x.dtype, copy=False)


def _int_div(a, b):
    if is_float(a.dtype.name):
        return a / b
    q = np.abs(a) // np.abs(b)  # lax.div truncates toward zero for integers
    return np.where((a < 0) != (b < 0), -q, q).astype(a.dtype)


def _rsqrt(x):
    return (1 / np.sqrt(x)).astype(x.dtype)


def _sigmoid(x):
    return (1 / (1 + np.exp(-x))).astype(x.dtype)


def _erf(x):
    from scipy.special import erf
    return erf(x).astype(x.dtype)


UNARY: dict[str, Callable] = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": _rsqrt,
    "floor": np.floor, "ceil": np.ceil, "abs": np.abs, "sign": np.sign,
    "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "sigmoid": _sigmoid, "erf": _erf,
    "log1p": np.log1p, "expm1": np.expm1, "not": np.logical_not,
}
FLOAT_ONLY = {"exp", "log", "sqrt", "rsqrt", "floor", "ceil", "sin", "cos", "tanh", "sigmoid", "erf",
              "log1p", "expm1", "round"}

BINARY: dict[str, Callable] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _int_div,
    "max": np.maximum, "min": np.minimum, "pow": np.power, "rem": np.fmod,
    "and": np.logical_and, "or": np.logical_or,
}
COMPARE: dict[str, Callable] = {
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "eq": np.equal, "ne": np.not_equal,
}


def _unary_infer(name):
    def infer(ins, a):
        if name in FLOAT_ONLY and not is_float(ins[0].dtype):
            raise IRTypeError(f"op {name} needs a float input, got {ins[0].dtype}")
        return [ins[0]]
    return infer


for _name, _fn in UNARY.items():
    register(_name, _unary_infer(_name), (lambda f: lambda x, a: [f(x)])(_fn), _out_numel,
             elementwise=True, arity=1)
register("round", _unary_infer("round"), lambda x, a: [_round(x, a["mode"])], _out_numel,
         attrs=("mode",), elementwise=True, arity=1, defaults=(("mode", "half_even"),))

for _name, _fn in BINARY.items():
    register(_name, (lambda n: lambda ins, a: [_broadcast_types(ins, n)])(_name),
             (lambda f: lambda x, y, a: [_same_dtype(f(x, y), x)])(_fn), _out_numel,
             elementwise=True, arity=2)
for _name, _fn in COMPARE.items():
    register(_name, (lambda n: lambda ins, a: [_broadcast_types(ins, n, "bool")])(_name),
             (lambda f: lambda x, y, a: [f(x, y)])(_fn), _out_numel, elementwise=True, arity=2)


def _clamp_infer(ins, a):
    if not is_float(ins[0].dtype):
        raise IRTypeError(f"op clamp needs a float input, got {ins[0].dtype}")
    if not a["lo"] <= a["hi"]:
        raise IRTypeError(f"op clamp: lo {a['lo']} is above hi {a['hi']}")
    return [ins[0]]


# min(max(x, lo), hi) with constant bounds (relu6 is clamp(x, 0, 6))
register("clamp", _clamp_infer, lambda x, a: [np.minimum(np.maximum(x, x.dtype.type(a["lo"])),
                                                          x.dtype.type(a["hi"]))],
         _out_numel, attrs=("lo", "hi"), elementwise=True, arity=1)


def _is_finite_infer(ins, a):
    if not is_float(ins[0].dtype):
        raise IRTypeError(f"op is_finite needs a float input, got {ins[0].dtype}")
    return [TensorType(ins[0].shape, "bool")]


register("is_finite", _is_finite_infer, lambda x, a: [np.isfinite(x)], _out_numel, elementwise=True, arity=1)


def _select_infer(ins, a):
    cond, x, y = ins
    if cond.dtype != "bool":
        raise IRTypeError(f"op select: condition must be bool, got {cond.dtype}")
    out = _broadcast_types([x, y], "select")
    return [TensorType(np.broadcast_shapes(cond.shape, out.shape), out.dtype)]


register("select", _select_infer, lambda c, x, y, a: [np.where(c, x, y)], _out_numel,
         elementwise=True, arity=3)


def _cast_compute(x, a):
    to = np.dtype(a["to"])
    if is_float(x.dtype.name) and not is_float(to.name) and to.name != "bool":
        x = np.trunc(x)  # float -> int rounds toward zero
    return [x.astype(to)]


register("cast", lambda ins, a: [TensorType(ins[0].shape, a["to"])], _cast_compute,
         attrs=("to",), elementwise=True, arity=1)

# ---- shape and data movement ---------------------------------------------------------------


def _reshape_infer(ins, a):
    if int(np.prod(a["shape"], dtype=np.int64)) != ins[0].size:
        raise IRTypeError(f"op reshape: cannot reshape {ins[0].shape} to {a['shape']}")
    return [TensorType(a["shape"], ins[0].dtype)]


register("reshape", _reshape_infer, lambda x, a: [np.reshape(x, a["shape"])], attrs=("shape",), arity=1)


def _transpose_infer(ins, a):
    perm = a["perm"]
    if sorted(perm) != list(range(len(ins[0].shape))):
        raise IRTypeError(f"op transpose: {perm} is not a permutation of rank {len(ins[0].shape)}")
    return [TensorType(tuple(ins[0].shape[p] for p in perm), ins[0].dtype)]


register("transpose", _transpose_infer, lambda x, a: [np.transpose(x, a["perm"])], attrs=("perm",), arity=1)


def _broadcast_infer(ins, a):
    shape, dims = a["shape"], a["dims"]
    src = ins[0].shape
    if len(dims) != len(src) or any(src[i] not in (1, shape[d]) for i, d in enumerate(dims)) \
            or list(dims) != sorted(set(dims)):
        raise IRTypeError(f"op broadcast: operand {src} cannot broadcast to {shape} along dims {dims}")
    return [TensorType(shape, ins[0].dtype)]


def _broadcast_compute(x, a):
    shape, dims = a["shape"], a["dims"]
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = x.shape[i]
    return [np.broadcast_to(x.reshape(expanded), shape)]


# lax.broadcast_in_dim: operand dim i maps to output dim dims[i]
register("broadcast", _broadcast_infer, _broadcast_compute, attrs=("shape", "dims"), arity=1)


def _slice_infer(ins, a):
    shape = ins[0].shape
    starts, limits, strides = a["starts"], a["limits"], a["strides"]
    if not (len(starts) == len(limits) == len(strides) == len(shape)):
        raise IRTypeError(f"op slice: starts/limits/strides must have rank {len(shape)}")
    out = []
    for s, l, st, d in zip(starts, limits, strides, shape):
        if not (0 <= s <= l <= d) or st < 1:
            raise IRTypeError(f"op slice: bad range [{s}:{l}:{st}] for a dimension of {d}")
        out.append(max(0, -(-(l - s) // st)))
    return [TensorType(tuple(out), ins[0].dtype)]


register("slice", _slice_infer,
         lambda x, a: [x[tuple(slice(s, l, st) for s, l, st in zip(a["starts"], a["limits"], a["strides"]))]],
         attrs=("starts", "limits", "strides"), arity=1)


def _concat_infer(ins, a):
    axis = a["axis"]
    base = ins[0]
    for t in ins[1:]:
        if t.dtype != base.dtype or len(t.shape) != len(base.shape) or any(
                x != y for i, (x, y) in enumerate(zip(t.shape, base.shape)) if i != axis):
            raise IRTypeError(f"op concat: {[t.shape for t in ins]} do not concatenate on axis {axis}")
    shape = list(base.shape)
    shape[axis] = sum(t.shape[axis] for t in ins)
    return [TensorType(tuple(shape), base.dtype)]


register("concat", _concat_infer, lambda *xs: [np.concatenate(xs[:-1], axis=xs[-1]["axis"])], attrs=("axis",))


def _pad_infer(ins, a):
    x, v = ins
    if v.shape != () or v.dtype != x.dtype:
        raise IRTypeError("op pad: padding value must be a scalar of the operand's dtype")
    if any(lo < 0 or hi < 0 for lo, hi in a["pads"]):
        raise IRTypeError(f"op pad: negative padding {a['pads']} is not supported")
    return [TensorType(tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, a["pads"])), x.dtype)]


register("pad", _pad_infer, lambda x, v, a: [np.pad(x, a["pads"], constant_values=v)], attrs=("pads",), arity=2)


def _take_infer(ins, a):
    data, idx = ins
    if idx.dtype not in ("int32", "int64"):
        raise IRTypeError(f"op take: indices must be int32/int64, got {idx.dtype}")
    ax = a["axis"]
    return [TensorType(data.shape[:ax] + idx.shape + data.shape[ax + 1:], data.dtype)]


# Gather along one axis; out-of-range indices are clamped into range (JAX's retrieval semantics).
register("take", _take_infer,
         lambda x, i, a: [np.take(x, np.clip(i, 0, x.shape[a["axis"]] - 1), axis=a["axis"])],
         attrs=("axis",), arity=2)

# ---- reductions and scans ------------------------------------------------------------------


def _check_axes(t: TensorType, axes, name: str) -> TensorType:
    if any(not 0 <= ax < len(t.shape) for ax in axes) or len(set(axes)) != len(axes):
        raise IRTypeError(f"op {name}: axes {axes} out of range or repeated for rank {len(t.shape)}")
    return t


def _reduce_infer(ins, a):
    axes = a["axes"]
    if any(not 0 <= ax < len(ins[0].shape) for ax in axes):
        raise IRTypeError(f"op reduce: axes {axes} out of range for rank {len(ins[0].shape)}")
    return [TensorType(tuple(d for i, d in enumerate(ins[0].shape) if i not in axes), ins[0].dtype)]


for _name, _fn in {"reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min}.items():
    register(_name, _reduce_infer,
             (lambda f: lambda x, a: [np.asarray(f(x, axis=a["axes"]), dtype=x.dtype)])(_fn),
             _in_numel, attrs=("axes",), arity=1)


def _cumsum(x, a):
    ax = a["axis"]
    if a["reverse"]:
        return [np.flip(np.cumsum(np.flip(x, ax), axis=ax, dtype=x.dtype), ax)]
    return [np.cumsum(x, axis=ax, dtype=x.dtype)]


register("cumsum", lambda ins, a: [ins[0]], _cumsum, _in_numel, attrs=("axis", "reverse"), arity=1,
         defaults=(("reverse", False),))

# ---- contractions --------------------------------------------------------------------------


def _dot_dims(lhs: TensorType, rhs: TensorType, a: dict):
    lc, rc, lb, rb = a["lhs_contract"], a["rhs_contract"], a["lhs_batch"], a["rhs_batch"]
    lf = [i for i in range(len(lhs.shape)) if i not in lc and i not in lb]
    rf = [i for i in range(len(rhs.shape)) if i not in rc and i not in rb]
    return lc, rc, lb, rb, lf, rf


def _dot_infer(ins, a):
    lhs, rhs = ins
    if lhs.dtype != rhs.dtype:
        raise IRTypeError(f"op dot: mixed dtypes {lhs.dtype}, {rhs.dtype}")
    lc, rc, lb, rb, lf, rf = _dot_dims(lhs, rhs, a)
    if [lhs.shape[i] for i in lc] != [rhs.shape[i] for i in rc] or \
            [lhs.shape[i] for i in lb] != [rhs.shape[i] for i in rb]:
        raise IRTypeError(f"op dot: contracting/batch dims disagree for {lhs.shape} x {rhs.shape} ({a})")
    shape = [lhs.shape[i] for i in lb] + [lhs.shape[i] for i in lf] + [rhs.shape[i] for i in rf]
    return [TensorType(tuple(shape), lhs.dtype)]


def dot_as_matmul(lhs_shape, rhs_shape, a):
    """Plan a dot as batched matmul: (perm_lhs, (B, M, K)), (perm_rhs, (B, K, N)), out_shape."""
    lc, rc, lb, rb, lf, rf = _dot_dims(TensorType(lhs_shape, "float32"), TensorType(rhs_shape, "float32"), a)
    size = lambda shape, idx: int(np.prod([shape[i] for i in idx], dtype=np.int64))
    B, M, K, N = size(lhs_shape, lb), size(lhs_shape, lf), size(lhs_shape, lc), size(rhs_shape, rf)
    out_shape = tuple([lhs_shape[i] for i in lb] + [lhs_shape[i] for i in lf] + [rhs_shape[i] for i in rf])
    return (tuple(lb) + tuple(lf) + tuple(lc), (B, M, K)), (tuple(rb) + tuple(rc) + tuple(rf), (B, K, N)), out_shape


def dot_weight_axis(node) -> int | None:
    """For a dot x @ W with a constant 2-D W contracted on its first axis (no batch axes): the axis of x
    it contracts. None for any other dot (or another op)."""
    if node.op != "dot":
        return None
    a = node.attrs
    w = node.inputs[1]
    if not w.is_param or len(w.shape) != 2 or a["lhs_batch"] or a["rhs_batch"]:
        return None
    if tuple(a["rhs_contract"]) != (0,) or len(a["lhs_contract"]) != 1:
        return None
    return a["lhs_contract"][0]


def _dot_compute(x, y, a):
    (pl, sl), (pr, sr), out_shape = dot_as_matmul(x.shape, y.shape, a)
    acc = np.float32 if x.dtype == np.float16 else x.dtype  # f16 products accumulate in f32
    lhs = np.transpose(x, pl).reshape(sl).astype(acc, copy=False)
    rhs = np.transpose(y, pr).reshape(sr).astype(acc, copy=False)
    return [np.matmul(lhs, rhs).reshape(out_shape).astype(x.dtype, copy=False)]


def _dot_flops(i, o, a):
    lhs = i[0]
    k = int(np.prod([lhs.shape[d] for d in a["lhs_contract"]], dtype=np.int64))
    return 2 * o[0].size * k


register("dot", _dot_infer, _dot_compute, _dot_flops,
         attrs=("lhs_contract", "rhs_contract", "lhs_batch", "rhs_batch"), arity=2,
         defaults=(("lhs_batch", ()), ("rhs_batch", ())))


def _conv_infer(ins, a):
    x, w = ins[0], ins[1]
    nsp = len(x.shape) - 2
    if len(w.shape) != nsp + 2 or not all(len(a[k]) == nsp for k in ("strides", "pads", "dilations")):
        raise IRTypeError(f"op conv: input {x.shape}, kernel {w.shape} and attributes {a} disagree on rank")
    g = a["groups"]
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise IRTypeError(f"op conv: {x.shape[1]} input channels do not match kernel {w.shape} with {g} groups")
    if len(ins) == 3 and ins[2].shape != (w.shape[0],):
        raise IRTypeError(f"op conv: bias shape {ins[2].shape} is not ({w.shape[0]},)")
    lhs = lhs_dilations(a, nsp)
    if len(lhs) != nsp or any(d < 1 for d in lhs):
        raise IRTypeError(f"op conv: lhs_dilations {a['lhs_dilations']} must be {nsp} positive integers")
    out = [x.shape[0], w.shape[0]]
    for d, k, s, (lo, hi), dil, ld in zip(x.shape[2:], w.shape[2:], a["strides"], a["pads"], a["dilations"], lhs):
        out.append(((d - 1) * ld + 1 + lo + hi - (k - 1) * dil - 1) // s + 1)
    return [TensorType(tuple(out), x.dtype)]


def lhs_dilations(attrs: dict, nsp: int) -> tuple[int, ...]:
    """The conv's input dilation per spatial axis (() in the attributes means none)."""
    return tuple(attrs["lhs_dilations"]) or (1,) * nsp


def dilate(x: np.ndarray, factors, first_axis: int = 2) -> np.ndarray:
    """Insert factor-1 zeros between neighbouring elements along axes first_axis.. (lax lhs_dilation)."""
    if all(f == 1 for f in factors):
        return x
    shape = list(x.shape)
    for i, f in enumerate(factors):
        shape[first_axis + i] = (shape[first_axis + i] - 1) * f + 1
    out = np.zeros(shape, x.dtype)
    out[(slice(None),) * first_axis + tuple(slice(None, None, f) for f in factors)] = x
    return out


def conv_reference(x: np.ndarray, w: np.ndarray, strides, pads, dilations, groups) -> np.ndarray:
    """N-d grouped convolution, channels first (cross-correlation, as in every DL framework)."""
    nsp = x.ndim - 2
    acc = np.float32 if x.dtype == np.float16 else x.dtype
    x = np.pad(x.astype(acc, copy=False), [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    w = w.astype(acc, copy=False)
    extent = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilations)]
    win = sliding_window_view(x, extent, axis=tuple(range(2, 2 + nsp)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, d) for d in dilations)]
    n, c = x.shape[:2]
    o = w.shape[0]
    out_sp = win.shape[2:2 + nsp]
    if groups == 1:
        axes_w = (1,) + tuple(range(2, 2 + nsp))
        axes_x = (1,) + tuple(range(2 + nsp, 2 + 2 * nsp))
        out = np.tensordot(win, w, axes=(axes_x, axes_w))  # n, *out_sp, o
        return np.moveaxis(out, -1, 1)
    win = win.reshape((n, groups, c // groups) + win.shape[2:])
    wg = w.reshape((groups, o // groups) + w.shape[1:])
    sp = "hijk"[:nsp]
    kk = "uvwx"[:nsp]
    out = np.einsum(f"ngc{sp}{kk},goc{kk}->ngo{sp}", win, wg, optimize=True)
    return out.reshape((n, o) + out_sp)


def _conv_compute(*args):
    a = args[-1]
    x, w = args[0], args[1]
    x = dilate(x, lhs_dilations(a, x.ndim - 2))
    out = conv_reference(x, w, a["strides"], a["pads"], a["dilations"], a["groups"])
    if len(args) == 4:
        out = out + args[2].astype(out.dtype).reshape((1, -1) + (1,) * (x.ndim - 2))
    return [out.astype(x.dtype, copy=False)]


def _conv_flops(i, o, a):
    w = i[1]
    return 2 * o[0].size * int(np.prod(w.shape[1:], dtype=np.int64))


# conv(x[N,C,*S], w[O,C/groups,*K] [, bias[O]]); lhs_dilations (lax's input dilation, the
# transposed-convolution form) spreads the input with zeros before padding; () means none
register("conv", _conv_infer, _conv_compute, _conv_flops,
         attrs=("strides", "pads", "dilations", "groups", "lhs_dilations"), defaults=(("lhs_dilations", ()),))

# ---- windows --------------------------------------------------------------------------------

POOL_MODES = ("max", "sum", "avg")


def _pool_infer(ins, a):
    x = ins[0]
    rank = len(x.shape)
    if a["mode"] not in POOL_MODES:
        raise IRTypeError(f"op pool: mode {a['mode']!r} is not one of {POOL_MODES}")
    if not (len(a["window"]) == len(a["strides"]) == len(a["pads"]) == rank):
        raise IRTypeError(f"op pool: window/strides/pads must have rank {rank}, got {a}")
    if not is_float(x.dtype):
        raise IRTypeError(f"op pool: needs a float operand, got {x.dtype}")
    out = []
    for d, k, s, (lo, hi) in zip(x.shape, a["window"], a["strides"], a["pads"]):
        if k < 1 or s < 1 or lo < 0 or hi < 0 or d + lo + hi < k:
            raise IRTypeError(f"op pool: window {a['window']}, strides {a['strides']}, pads {a['pads']} "
                              f"do not fit {x.shape}")
        out.append((d + lo + hi - k) // s + 1)
    return [TensorType(tuple(out), x.dtype)]


def _pool_compute(x, a):
    mode = a["mode"]
    fill = -np.inf if mode == "max" else 0.0
    padded = np.pad(x, a["pads"], constant_values=fill)
    acc = np.float32 if x.dtype == np.float16 else x.dtype
    win = sliding_window_view(padded.astype(acc, copy=False), a["window"])
    win = win[tuple(slice(None, None, s) for s in a["strides"])]
    axes = tuple(range(x.ndim, 2 * x.ndim))
    out = win.max(axis=axes) if mode == "max" else win.sum(axis=axes)
    if mode == "avg":  # padding counts towards the window (ONNX count_include_pad=1, TF "VALID")
        out = out / np.asarray(np.prod(a["window"]), dtype=out.dtype)
    return [np.asarray(out, dtype=x.dtype)]


def _pool_flops(i, o, a):
    return o[0].size * int(np.prod(a["window"]))


# pool(x): a reduction over a sliding window on every axis (lax.reduce_window); max pads with -inf,
# sum and avg with 0, avg divides by the window size
register("pool", _pool_infer, _pool_compute, _pool_flops, attrs=("mode", "window", "strides", "pads"), arity=1)

register("reverse", lambda ins, a: [_check_axes(ins[0], a["axes"], "reverse")],
         lambda x, a: [np.flip(x, a["axes"]).copy()], attrs=("axes",), arity=1)
