"""Reductions, scans and normalisations over axes: Reduce*, ArgMax/ArgMin, CumSum, Softmax, LogSoftmax,
Hardmax and TopK. Axes (attributes in older opsets, inputs from opset 13 (ReduceSum) / 18 (the other
Reduce*)) must be known while importing."""
from __future__ import annotations

import numpy as np

from ..registry import converter
from .elementwise import along, cast, float_input, norm_axis, pad_axis, permute, reshape, scalar

SORT_MAX = 4096  # the longest axis TopK is translated for (pairwise comparisons: n^2 elements)


def _axes(ctx, ins, attrs):
    """The reduced axes (sorted, non-negative); none where noop_with_empty_axes is set and no axes are given
    (the reduction is then an identity, but the composite operators' other steps still apply: ReduceL1
    gives |x|, ReduceSumSquare x^2, ReduceLogSum log x)."""
    rank = len(ctx.shape(ins[0]))
    if attrs.get("axes") is not None:
        axes = [int(a) for a in attrs["axes"]]
    elif len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in ctx.const(ins[1], f"{ctx.node.op_type}'s axes").reshape(-1)]
    else:
        axes = []
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    axes = sorted({norm_axis(ctx, a, rank) for a in axes})
    return axes


def _keep(ctx, y, shape, axes, keepdims: bool):
    """y (x reduced over axes) with the reduced axes kept as 1s where keepdims."""
    if keepdims:
        return reshape(ctx, y, [1 if i in axes else d for i, d in enumerate(shape)])
    return y


def _reduce(ctx, op: str, x, axes):
    if not axes:
        return x
    if ctx.dtype(x) == "bool":
        return cast(ctx, ctx.op(op, cast(ctx, x, "int32"), axes=tuple(axes)), "bool")
    return ctx.op(op, x, axes=tuple(axes))


def _count(shape, axes) -> int:
    return int(np.prod([shape[a] for a in axes], dtype=np.int64))


def _prod(ctx, x, axes):
    """The reduced axes moved last and flattened, then halved: y[:n/2] * y[n/2:] (odd lengths padded with 1)."""
    if not axes:
        return x
    s = ctx.shape(x)
    kept = [d for d in range(len(s)) if d not in axes]
    out_shape = tuple(s[d] for d in kept)
    n = _count(s, axes)
    if n == 0:
        return np.ones(out_shape, np.dtype(ctx.dtype(x)))
    y = reshape(ctx, permute(ctx, x, kept + list(axes)), out_shape + (n,))
    last = len(kept)
    while n > 1:
        if n % 2:
            y, n = pad_axis(ctx, y, last, 0, 1, 1), n + 1
        y, n = ctx.op("mul", along(ctx, y, last, 0, n // 2), along(ctx, y, last, n // 2, n)), n // 2
    return reshape(ctx, y, out_shape)


def _logsumexp(ctx, x, axes):
    if not axes:
        return x
    m = _reduce(ctx, "reduce_max", x, axes)
    dt = ctx.dtype(x)
    m = ctx.op("select", ctx.op("is_finite", m), m, scalar(0, dt))  # all -inf (or inf): no inf - inf
    mk = _keep(ctx, m, ctx.shape(x), axes, True)
    s = ctx.op("reduce_sum", ctx.op("exp", ctx.op("sub", x, mk)), axes=tuple(axes))
    return ctx.op("add", ctx.op("log", s), m)


REDUCERS = {
    "ReduceSum": lambda ctx, x, axes: _reduce(ctx, "reduce_sum", x, axes),
    "ReduceMax": lambda ctx, x, axes: _reduce(ctx, "reduce_max", x, axes),
    "ReduceMin": lambda ctx, x, axes: _reduce(ctx, "reduce_min", x, axes),
    "ReduceMean": lambda ctx, x, axes: x if not axes else ctx.op(
        "div", _reduce(ctx, "reduce_sum", x, axes), scalar(_count(ctx.shape(x), axes), ctx.dtype(x))),
    "ReduceProd": _prod,
    "ReduceL1": lambda ctx, x, axes: _reduce(ctx, "reduce_sum", ctx.op("abs", x), axes),
    "ReduceL2": lambda ctx, x, axes: ctx.op("sqrt", _reduce(ctx, "reduce_sum", ctx.op("mul", x, x), axes)),
    "ReduceSumSquare": lambda ctx, x, axes: _reduce(ctx, "reduce_sum", ctx.op("mul", x, x), axes),
    "ReduceLogSum": lambda ctx, x, axes: ctx.op("log", _reduce(ctx, "reduce_sum", x, axes)),
    "ReduceLogSumExp": _logsumexp,
}
FLOAT_ONLY = {"ReduceL2", "ReduceLogSum", "ReduceLogSumExp"}


def _reducer(op_type: str):
    fn = REDUCERS[op_type]

    def convert(ctx, ins, attrs):
        x = ins[0]
        if op_type in FLOAT_ONLY:
            float_input(ctx, x, op_type)
        elif ctx.dtype(x) == "bool" and op_type not in ("ReduceMax", "ReduceMin"):
            ctx.fail(f"{op_type} of bool values is not supported")
        axes = _axes(ctx, ins, attrs)
        y = fn(ctx, x, axes)
        return _keep(ctx, y, ctx.shape(x), axes, bool(attrs.get("keepdims", 1)))
    return convert


for _op in REDUCERS:
    converter(_op)(_reducer(_op))


# ---- arg reductions --------------------------------------------------------------------------


def _arg(ctx, x, axis: int, largest: bool, last: bool):
    """int64 index of the first (last) max (min) along axis, keeping the axis as 1; a NaN counts as the
    extreme (its first occurrence), as in JAX."""
    if ctx.dtype(x) == "bool":
        x = cast(ctx, x, "int32")
    s = ctx.shape(x)
    n = s[axis]
    m = _keep(ctx, ctx.op("reduce_max" if largest else "reduce_min", x, axes=(axis,)), s, [axis], True)
    hit = ctx.op("eq", x, m)
    if ctx.dtype(x).startswith("float"):
        hit = ctx.op("or", hit, ctx.op("ne", x, x))
    ramp = np.arange(n, dtype=np.int64).reshape([n if d == axis else 1 for d in range(len(s))])
    idx = ctx.op("select", hit, ramp, scalar(-1 if last else n, "int64"))
    return _keep(ctx, ctx.op("reduce_max" if last else "reduce_min", idx, axes=(axis,)), s, [axis], True)


def _arg_reduce(largest: bool):
    def convert(ctx, ins, attrs):
        x = ins[0]
        s = ctx.shape(x)
        axis = norm_axis(ctx, attrs.get("axis", 0), len(s))
        if s[axis] == 0:
            ctx.fail(f"{ctx.node.op_type} along an empty axis")
        y = _arg(ctx, x, axis, largest, bool(attrs.get("select_last_index", 0)))
        return y if attrs.get("keepdims", 1) else reshape(ctx, y, s[:axis] + s[axis + 1:])
    return convert


converter("ArgMax")(_arg_reduce(True))
converter("ArgMin")(_arg_reduce(False))


@converter("CumSum")
def cumsum(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    axis = norm_axis(ctx, int(ctx.const(ins[1], "CumSum's axis").reshape(-1)[0]), len(s))
    reverse = bool(attrs.get("reverse", 0))
    n = s[axis]
    if attrs.get("exclusive", 0):  # the sum of the elements before (after) each one: shift by one, then sum
        if reverse:
            x = pad_axis(ctx, along(ctx, x, axis, min(1, n), n), axis, 0, min(1, n), 0)
        else:
            x = pad_axis(ctx, along(ctx, x, axis, 0, max(n - 1, 0)), axis, min(1, n), 0, 0)
    if ctx.dtype(x) == "bool":
        ctx.fail("CumSum of bool values")
    return ctx.op("cumsum", x, axis=axis, reverse=reverse)


# ---- softmax family ---------------------------------------------------------------------------


def _along_axis(fn):
    """A converter for an operator on one axis: opset >= 13 takes `axis` (default -1); older opsets
    coerce the input to 2-D [prod(shape[:axis]), prod(shape[axis:])] (axis default 1) and act on its
    second axis."""
    def convert(ctx, ins, attrs):
        x = ins[0]
        s = ctx.shape(x)
        if ctx.opset >= 13:
            axis = norm_axis(ctx, attrs.get("axis", -1), len(s))
            return fn(ctx, x, axis)
        axis = attrs.get("axis", 1)
        if not -len(s) <= axis <= len(s):
            ctx.fail(f"axis {axis} is out of range for a tensor of rank {len(s)}")
        axis = axis + len(s) if axis < 0 else axis
        flat = reshape(ctx, x, (int(np.prod(s[:axis], dtype=np.int64)), int(np.prod(s[axis:], dtype=np.int64))))
        return reshape(ctx, fn(ctx, flat, 1), s)
    return convert


def _shifted(ctx, x, axis):
    """x - max(x) along axis (keeping the axis), where the max is finite."""
    m = ctx.op("reduce_max", x, axes=(axis,))
    m = ctx.op("select", ctx.op("is_finite", m), m, scalar(0, ctx.dtype(x)))
    return ctx.op("sub", x, _keep(ctx, m, ctx.shape(x), [axis], True))


def _softmax(ctx, x, axis):
    float_input(ctx, x, "Softmax")
    e = ctx.op("exp", _shifted(ctx, x, axis))
    return ctx.op("div", e, _keep(ctx, ctx.op("reduce_sum", e, axes=(axis,)), ctx.shape(x), [axis], True))


def _log_softmax(ctx, x, axis):
    float_input(ctx, x, "LogSoftmax")
    d = _shifted(ctx, x, axis)
    lse = ctx.op("log", ctx.op("reduce_sum", ctx.op("exp", d), axes=(axis,)))
    return ctx.op("sub", d, _keep(ctx, lse, ctx.shape(x), [axis], True))


def _hardmax(ctx, x, axis):
    s = ctx.shape(x)
    first = _arg(ctx, x, axis, True, False)
    ramp = np.arange(s[axis], dtype=np.int64).reshape([s[axis] if d == axis else 1 for d in range(len(s))])
    return cast(ctx, ctx.op("eq", first, ramp), ctx.dtype(x))


converter("Softmax")(_along_axis(_softmax))
converter("LogSoftmax")(_along_axis(_log_softmax))
converter("Hardmax")(_along_axis(_hardmax))


# ---- TopK: ranks from pairwise comparisons (graphopt.frontends.jax's sort/top_k) ---------------------


class _Translator:
    """What graphopt.frontends.jax's composition helpers take: the graph, and constants as parameters."""

    def __init__(self, ctx):
        self._ctx = ctx
        self.g = ctx.g

    def const(self, array, dtype=None):
        return self._ctx.value(np.asarray(array, dtype=dtype))


@converter("TopK")
def top_k(ctx, ins, attrs):
    from ... import jax as jfe
    x = ctx.value(ins[0])
    s = x.shape
    if len(ins) > 1 and ins[1] is not None:
        k = int(ctx.const(ins[1], "TopK's k").reshape(-1)[0])
    elif "k" in attrs:
        k = int(attrs["k"])
    else:
        ctx.fail("it has no k")
    axis = norm_axis(ctx, attrs.get("axis", -1), len(s))
    n = s[axis]
    if not 0 <= k <= n:
        ctx.fail(f"k = {k} for an axis of {n} elements")
    if n > SORT_MAX:
        ctx.fail(f"TopK along an axis of {n} elements: graphopt translates it by comparing every pair of "
                 f"elements, for axes of up to {SORT_MAX}")
    if x.dtype == "bool":
        ctx.fail("TopK of bool values")
    t = _Translator(ctx)
    xl, back = jfe._last(t, x, axis)
    ranks = jfe._ranks(t, [xl], descending=bool(attrs.get("largest", 1)))  # ties: the lower index first
    row = jfe._reshape(t, xl, xl.shape[:-1] + (1, n))
    values = jfe._by_rank(t, ranks, row, k)
    indices = jfe._by_rank(t, ranks, t.const(np.arange(n, dtype=np.int64).reshape((1,) * len(xl.shape) + (n,))), k)
    return [permute(ctx, values, back), permute(ctx, indices, back)]
