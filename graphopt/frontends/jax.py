"""JAX frontend: trace any JAX callable with `jax.make_jaxpr` and translate the jaxpr into the IR.

Nested jaxprs (jit/pjit, closed_call, custom_jvp_call, custom_vjp_call, remat) are inlined.
Each primitive has one handler in HANDLERS; an unsupported primitive (or an unsupported form of
one) raises UnsupportedPrimitiveError naming the primitive and the user code that produced it.

Primitives with no IR op of their own are translated into existing ops (the IR stays small, and
every target lowers them):
- control flow: `scan` is unrolled (its trip count is static); `while` is unrolled where its
  condition depends on constants only (a counter with constant bounds), iteration by iteration;
  `cond` with a constant index takes that branch, else computes every branch and selects (branches
  must be free of side effects). Small loop-carried values that fold to constants (counters) are
  kept constant, so indices computed from them (x[i] in a fori_loop) fold to static slices.
- complex values are (real, imaginary) pairs of float tensors (`Complex`): arithmetic, reshapes and
  slices, dots, and `fft` (every type, static lengths) as matrix products with constant DFT
  matrices; a complex graph input or output is refused.
- argmax/argmin (max, compare, first index), cumprod/cummax/cummin/cumlogsumexp (log-step scans),
  reduce_prod/and/or, tile, exp2, tan, dynamic_slice/dynamic_update_slice (static starts folded,
  dynamic ones as `take` and select), erfc and erf_inv (rational approximations), sort and top_k
  (ranks from pairwise comparisons: O(n^2) in the sorted axis, up to SORT_MAX elements), scatter
  (x.at[i].set/add/multiply/min/max) with indices that fold to constants (static slices padded into place
  and selected or combined; other index patterns as a `take` of the updates by a constant index array).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ..ir import Graph, TensorType, Value, canonical_dtype
from ..ir.ops import get_op


class UnsupportedPrimitiveError(NotImplementedError):
    """The jaxpr uses a primitive (or a form of one) the frontend cannot translate."""


def _is_complex(dtype) -> bool:
    try:
        return np.issubdtype(np.dtype(dtype), np.complexfloating)
    except TypeError:  # JAX's extended dtypes (PRNG keys) are no NumPy dtypes
        return False


def _real_dtype(dtype) -> str:
    """complex64 -> float32, complex128 -> float64."""
    return canonical_dtype(np.finfo(np.dtype(dtype)).dtype)


class Complex:
    """A complex JAX value as two float tensors: re + i * im. im None means exactly zero (a real
    value converted to complex), so arithmetic on it adds no nodes."""

    __slots__ = ("re", "im", "origin")

    def __init__(self, re: Value, im: Value | None):
        self.re, self.im = re, im
        self.origin = ""  # the primitive and source line that made it, for messages

    @property
    def shape(self) -> tuple[int, ...]:
        return self.re.shape


# the most iterations a while loop is unrolled to, and the most eqns a loop may unroll into
MAX_WHILE_ITERATIONS = 10_000
MAX_UNROLLED_EQNS = 2_000_000
FOLD_CARRY_SIZE = 64  # loop-carried values up to this many elements are folded when they are constant


def _source(eqn) -> str:
    try:
        from jax._src import source_info_util
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # source info is best effort
        return "unknown location"


class _Translator:
    def __init__(self, graph: Graph, param_names: dict[int, str]):
        self.g = graph
        self.param_names = param_names
        self._literals: dict[tuple, Value] = {}
        self._static: dict[int, tuple[Value, np.ndarray | None]] = {}
        self._where: list[str] = []  # source of the enclosing eqns, for eqns inlined from library jits

    # ---- values -------------------------------------------------------------------------
    def const(self, array: Any, dtype: Any = None) -> Value:
        array = np.asarray(array, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if array.size <= 16 and key in self._literals:
            return self._literals[key]
        v = self.g.add_param(array)
        if array.size <= 16:
            self._literals[key] = v
        return v

    def read(self, env: dict, var) -> Value | Complex:
        if type(var).__name__ == "Literal":
            if _is_complex(var.aval.dtype):
                c = np.asarray(var.val, dtype=var.aval.dtype)
                return Complex(self.const(c.real), self.const(c.imag))
            return self.const(var.val, var.aval.dtype)
        return env[var]

    def zeros(self, like: Value) -> Value:
        """Zeros of like's type: a parameter where small (a padding value must be one), else a broadcast."""
        if like.type.size <= 16:
            return self.const(np.zeros(like.shape, like.dtype))
        return self.g.op("broadcast", self.const(0, like.dtype), shape=like.shape, dims=())

    # ---- constant values ------------------------------------------------------------------
    def static(self, v) -> np.ndarray | None:
        """v's value where it depends on parameters only (computed with the ops' NumPy semantics, as the
        interpreter would), else None. Used to fold loop conditions, branch indices and slice starts."""
        if isinstance(v, Complex):
            return None
        if v.is_param:
            return v.const
        memo = self._static
        stack = [v]
        while stack:
            u = stack[-1]
            if u.is_param or id(u) in memo:
                stack.pop()
                continue
            node = u.producer
            if node is None:  # a graph input or state
                memo[id(u)] = (u, None)
                stack.pop()
                continue
            pending = [w for w in node.inputs if not w.is_param and id(w) not in memo]
            if pending:
                stack.extend(pending)
                continue
            args = [w.const if w.is_param else memo[id(w)][1] for w in node.inputs]
            if any(a is None for a in args):
                results = [None] * len(node.outputs)
            else:
                results = get_op(node.op).compute(*args, node.attrs)
                results = [np.asarray(r, dtype=o.dtype) for r, o in zip(results, node.outputs)]
            for o, r in zip(node.outputs, results):
                memo[id(o)] = (o, r)  # the value is kept alive with its entry: ids are never reused
            stack.pop()
        return memo[id(v)][1]

    def fold_small(self, v):
        """A small value that depends on parameters only, as a parameter (a loop counter)."""
        if isinstance(v, Complex) or v.is_param or v.type.size > FOLD_CARRY_SIZE:
            return v
        c = self.static(v)
        return v if c is None else self.const(c)

    def sweep(self, mark: int, keep) -> None:
        """Drop the nodes added since g.nodes[mark] that nothing in keep depends on (loop counters folded
        to constants, conditions evaluated while unrolling)."""
        live = set()
        for v in keep:
            for part in ((v.re, v.im) if isinstance(v, Complex) else (v,)):
                if part is not None:
                    live.add(id(part))
        kept = []
        for node in reversed(self.g.nodes[mark:]):
            if any(id(o) in live for o in node.outputs):
                kept.append(node)
                live.update(id(i) for i in node.inputs)
        self.g.nodes[mark:] = kept[::-1]

    # ---- jaxprs -------------------------------------------------------------------------
    def closed(self, closed_jaxpr, args: Sequence[Value]) -> list[Value]:
        consts = []
        for c in closed_jaxpr.consts:
            name = self.param_names.get(id(c))
            if _is_complex(np.asarray(c).dtype):
                c = np.asarray(c)
                consts.append(Complex(self.const(c.real), self.const(c.imag)))
            else:
                consts.append(self.g.add_param(np.asarray(c), name) if name else self.const(np.asarray(c)))
        return self.jaxpr(closed_jaxpr.jaxpr, consts, args)

    def jaxpr(self, jaxpr, consts: Sequence[Value], args: Sequence[Value]) -> list[Value]:
        env: dict = {}
        for var, v in zip(jaxpr.constvars, consts):
            env[var] = v
        if len(jaxpr.invars) != len(args):
            raise ValueError(f"jaxpr takes {len(jaxpr.invars)} arguments, got {len(args)}")
        for var, v in zip(jaxpr.invars, args):
            env[var] = v
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            # an eqn traced inside a library jit (jnp.sort, ...) has no user frame: use the enclosing eqn's
            where = _source(eqn) or (self._where[-1] if self._where else "unknown location")
            ins = [self.read(env, v) for v in eqn.invars]
            complex_ = any(isinstance(v, Complex) for v in ins) or any(_is_complex(v.aval.dtype) for v in eqn.outvars)
            handler = (COMPLEX_HANDLERS if complex_ else HANDLERS).get(name)
            if handler is None and complex_ and name in HANDLERS:
                raise UnsupportedPrimitiveError(
                    f"JAX primitive '{name}' on complex values (from {where}) is not supported: graphopt "
                    f"computes complex values as (real, imaginary) pairs of float tensors, for these primitives "
                    f"only: {', '.join(sorted(COMPLEX_HANDLERS))}")
            if handler is None:
                raise UnsupportedPrimitiveError(
                    f"JAX primitive '{name}' (from {where}) is not supported by the graphopt JAX "
                    f"frontend; add a handler for it in graphopt/frontends/jax.py")
            self._where.append(where)
            try:
                outs = handler(self, eqn, ins)
            except UnsupportedPrimitiveError:
                raise
            except NotImplementedError as e:
                raise UnsupportedPrimitiveError(f"JAX primitive '{name}' (from {where}): {e}") from None
            finally:
                self._where.pop()
            for var, v in zip(eqn.outvars, outs):
                if type(var).__name__ != "DropVar":
                    if _is_complex(var.aval.dtype):
                        part = TensorType(tuple(var.aval.shape), _real_dtype(var.aval.dtype))
                        ok = isinstance(v, Complex) and v.re.type == part and (v.im is None or v.im.type == part)
                        got = f"({v.re.type}, {v.im and v.im.type})" if isinstance(v, Complex) else v.type
                        expect = f"a complex pair of {part}"
                    else:
                        expect = TensorType(tuple(var.aval.shape), canonical_dtype(var.aval.dtype))
                        ok = isinstance(v, Value) and v.type == expect
                        got = "a complex pair" if isinstance(v, Complex) else v.type
                    if not ok:
                        raise AssertionError(f"frontend bug: '{name}' gave {got}, jaxpr says {expect}")
                    if isinstance(v, Complex) and not v.origin:
                        v.origin = f"JAX primitive '{name}' (from {where})"
                    env[var] = v
        return [self.read(env, v) for v in jaxpr.outvars]


# ---- handlers ----------------------------------------------------------------------------
Handler = Callable[[_Translator, Any, list[Value]], list[Value]]
HANDLERS: dict[str, Handler] = {}
COMPLEX_HANDLERS: dict[str, Handler] = {}  # primitives on complex values (any input or output complex)


def handles(*names: str):
    def deco(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return deco


def handles_complex(*names: str):
    def deco(fn: Handler) -> Handler:
        for n in names:
            COMPLEX_HANDLERS[n] = fn
        return fn
    return deco


def _simple(op: str) -> Handler:
    return lambda t, eqn, ins: [t.g.op(op, *ins)]


for _prim, _op in {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "max": "max", "min": "min", "pow": "pow",
    "rem": "rem", "and": "and", "or": "or", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "eq": "eq",
    "ne": "ne", "neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "floor": "floor",
    "ceil": "ceil", "abs": "abs", "sign": "sign", "sin": "sin", "cos": "cos", "tanh": "tanh",
    "logistic": "sigmoid", "erf": "erf", "log1p": "log1p", "expm1": "expm1", "not": "not",
    "is_finite": "is_finite",
}.items():
    HANDLERS[_prim] = _simple(_op)


@handles("add_any")
def _add_any(t, eqn, ins):
    return [t.g.op("add", *ins)]


@handles("square")
def _square(t, eqn, ins):
    return [t.g.op("mul", ins[0], ins[0])]


@handles("integer_pow")
def _integer_pow(t, eqn, ins):
    (x,), y = ins, eqn.params["y"]
    if y == 0:
        return [t.g.op("broadcast", t.const(1, x.dtype), shape=x.shape, dims=())]
    result, base, n = None, x, abs(y)
    while n:  # exponentiation by squaring
        if n & 1:
            result = base if result is None else t.g.op("mul", result, base)
        n >>= 1
        if n:
            base = t.g.op("mul", base, base)
    return [t.g.op("div", t.const(1, x.dtype), result) if y < 0 else result]


@handles("round")
def _round(t, eqn, ins):
    method = int(eqn.params["rounding_method"])
    return [t.g.op("round", ins[0], mode="half_even" if method == 1 else "half_away")]


@handles("convert_element_type")
def _convert(t, eqn, ins):
    to = canonical_dtype(eqn.params["new_dtype"])
    return [ins[0] if ins[0].dtype == to else t.g.op("cast", ins[0], to=to)]


@handles("copy", "copy_p", "stop_gradient", "sharding_constraint", "optimization_barrier")
def _identity(t, eqn, ins):
    return list(ins)


@handles("select_n")
def _select_n(t, eqn, ins):
    pred, cases = ins[0], ins[1:]
    if pred.dtype == "bool":
        return [t.g.op("select", pred, cases[1], cases[0])]
    out = cases[-1]  # integer predicate: case i where pred == i
    for i in range(len(cases) - 2, -1, -1):
        out = t.g.op("select", t.g.op("eq", pred, t.const(i, pred.dtype)), cases[i], out)
    return [out]


@handles("clamp")
def _clamp(t, eqn, ins):
    lo, x, hi = ins
    return [t.g.op("min", t.g.op("max", x, lo), hi)]


@handles("broadcast_in_dim")
def _broadcast_in_dim(t, eqn, ins):
    shape, dims = tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"])
    x = ins[0]
    if x.shape == shape and dims == tuple(range(len(shape))):
        return [x]
    return [t.g.op("broadcast", x, shape=shape, dims=dims)]


def _reshape(t, x: Value, shape) -> Value:
    shape = tuple(int(d) for d in shape)
    return x if x.shape == shape else t.g.op("reshape", x, shape=shape)


@handles("reshape")
def _reshape_h(t, eqn, ins):
    if eqn.params.get("dimensions") not in (None, ()):
        raise NotImplementedError("reshape with 'dimensions' (a transposing reshape)")
    return [_reshape(t, ins[0], eqn.params["new_sizes"])]


@handles("squeeze")
def _squeeze(t, eqn, ins):
    return [_reshape(t, ins[0], eqn.outvars[0].aval.shape)]


@handles("expand_dims")
def _expand_dims(t, eqn, ins):
    return [_reshape(t, ins[0], eqn.outvars[0].aval.shape)]


@handles("transpose")
def _transpose(t, eqn, ins):
    perm = tuple(eqn.params["permutation"])
    return [ins[0] if perm == tuple(range(len(perm))) else t.g.op("transpose", ins[0], perm=perm)]


@handles("slice")
def _slice(t, eqn, ins):
    x = ins[0]
    strides = eqn.params["strides"] or (1,) * len(x.shape)
    return [t.g.op("slice", x, starts=eqn.params["start_indices"], limits=eqn.params["limit_indices"],
                   strides=strides)]


@handles("split")
def _split(t, eqn, ins):
    x, axis = ins[0], eqn.params["axis"]
    outs, start = [], 0
    for size in eqn.params["sizes"]:
        starts = [0] * len(x.shape)
        limits = list(x.shape)
        starts[axis], limits[axis] = start, start + int(size)
        outs.append(t.g.op("slice", x, starts=starts, limits=limits, strides=(1,) * len(x.shape)))
        start += int(size)
    return outs


@handles("tile")
def _tile(t, eqn, ins):
    """x [d0, d1, ...] broadcast to [r0, d0, r1, d1, ...], then merged to [r0 * d0, r1 * d1, ...]."""
    x, reps = ins[0], tuple(int(r) for r in eqn.params["reps"])
    if all(r == 1 for r in reps):
        return [x]
    spread = tuple(d for r, n in zip(reps, x.shape) for d in (r, n))
    y = t.g.op("broadcast", x, shape=spread, dims=tuple(range(1, 2 * len(x.shape), 2)))
    return [_reshape(t, y, eqn.outvars[0].aval.shape)]


@handles("concatenate")
def _concatenate(t, eqn, ins):
    return [ins[0] if len(ins) == 1 else t.g.op("concat", *ins, axis=eqn.params["dimension"])]


@handles("stack")
def _stack(t, eqn, ins):
    axis = eqn.params["axis"]
    parts = [_reshape(t, x, x.shape[:axis] + (1,) + x.shape[axis:]) for x in ins]
    return [parts[0] if len(parts) == 1 else t.g.op("concat", *parts, axis=axis)]


@handles("pad")
def _pad(t, eqn, ins):
    x, value = ins
    config = eqn.params["padding_config"]
    if any(interior != 0 for _, _, interior in config) or any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise NotImplementedError("pad with interior or negative padding")
    value = t.fold_small(value)  # e.g. a literal converted to x's dtype: targets want a constant padding value
    return [t.g.op("pad", x, value, pads=tuple((lo, hi) for lo, hi, _ in config))]


@handles("iota")
def _iota(t, eqn, ins):
    p = eqn.params
    shape, dim = tuple(p["shape"]), p["dimension"]
    ramp = np.arange(shape[dim], dtype=np.dtype(p["dtype"]))
    return [t.const(np.broadcast_to(ramp.reshape([-1 if i == dim else 1 for i in range(len(shape))]), shape))]


def _reduce(op):
    def handler(t, eqn, ins):
        axes = tuple(sorted(eqn.params["axes"]))
        return [ins[0] if not axes else t.g.op(op, ins[0], axes=axes)]
    return handler


HANDLERS["reduce_sum"] = _reduce("reduce_sum")
HANDLERS["reduce_max"] = _reduce("reduce_max")
HANDLERS["reduce_min"] = _reduce("reduce_min")


@handles("cumsum")
def _cumsum(t, eqn, ins):
    return [t.g.op("cumsum", ins[0], axis=eqn.params["axis"], reverse=bool(eqn.params["reverse"]))]


def _cast_to(t, x: Value, dtype) -> Value:
    return x if dtype is None or x.dtype == canonical_dtype(dtype) else t.g.op("cast", x, to=canonical_dtype(dtype))


@handles("dot_general")
def _dot_general(t, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    pref = eqn.params.get("preferred_element_type")
    lhs, rhs = (_cast_to(t, x, pref) for x in ins)
    out = t.g.op("dot", lhs, rhs, lhs_contract=tuple(lc), rhs_contract=tuple(rc),
                 lhs_batch=tuple(lb), rhs_batch=tuple(rb))
    return [_cast_to(t, out, eqn.outvars[0].aval.dtype)]


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


@handles("conv_general_dilated")
def _conv(t, eqn, ins):
    p = eqn.params
    if p["batch_group_count"] != 1:
        raise NotImplementedError("conv_general_dilated with batch_group_count != 1")
    padding = p["padding"]
    if isinstance(padding, str) or any(lo < 0 or hi < 0 for lo, hi in padding):
        raise NotImplementedError(f"conv_general_dilated with padding {padding!r}")
    dn = p["dimension_numbers"]
    pref = p.get("preferred_element_type")
    lhs, rhs = (_cast_to(t, x, pref) for x in ins)
    lhs = _permute(t, lhs, dn.lhs_spec)  # -> N, C, *spatial
    rhs = _permute(t, rhs, dn.rhs_spec)  # -> O, I, *kernel
    out = t.g.op("conv", lhs, rhs, strides=tuple(p["window_strides"]), pads=tuple(map(tuple, padding)),
                 dilations=tuple(p["rhs_dilation"]), groups=int(p["feature_group_count"]),
                 lhs_dilations=() if all(d == 1 for d in p["lhs_dilation"]) else tuple(p["lhs_dilation"]))
    out = _permute(t, out, _inverse(dn.out_spec))
    return [_cast_to(t, out, eqn.outvars[0].aval.dtype)]


@handles("rev")
def _rev(t, eqn, ins):
    axes = tuple(sorted(int(d) for d in eqn.params["dimensions"]))
    return [t.g.op("reverse", ins[0], axes=axes) if axes else ins[0]]


def _reduce_window(mode: str) -> Handler:
    def handler(t, eqn, ins):
        p = eqn.params
        if any(d != 1 for d in tuple(p["base_dilation"]) + tuple(p["window_dilation"])):
            raise NotImplementedError(f"reduce_window with base_dilation {p['base_dilation']} or "
                                      f"window_dilation {p['window_dilation']}")
        return [t.g.op("pool", ins[0], mode=mode, window=tuple(p["window_dimensions"]),
                       strides=tuple(p["window_strides"]), pads=tuple(map(tuple, p["padding"])))]
    return handler


HANDLERS["reduce_window_max"] = _reduce_window("max")
HANDLERS["reduce_window_sum"] = _reduce_window("sum")


def _permute(t, x: Value, perm) -> Value:
    perm = tuple(int(i) for i in perm)
    return x if perm == tuple(range(len(perm))) else t.g.op("transpose", x, perm=perm)


@handles("gather")
def _gather(t, eqn, ins):
    """Gathers that index one axis with full slices of the others (x[idx], jnp.take)."""
    operand, indices = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    if len(dn.start_index_map) != 1 or tuple(dn.collapsed_slice_dims) != tuple(dn.start_index_map) \
            or dn.operand_batching_dims or indices.shape[-1:] != (1,):
        raise NotImplementedError(f"gather form {dn} (only single-axis take is supported)")
    axis = dn.start_index_map[0]
    full = tuple(1 if i == axis else d for i, d in enumerate(operand.shape))
    if tuple(p["slice_sizes"]) != full:
        raise NotImplementedError(f"gather with slice_sizes {p['slice_sizes']} (only full slices)")
    idx = _reshape(t, indices, indices.shape[:-1])
    if idx.dtype not in ("int32", "int64"):
        idx = t.g.op("cast", idx, to="int32")
    taken = t.g.op("take", operand, idx, axis=axis)
    # take gives operand[:axis] + batch + operand[axis+1:]; gather puts offset dims at dn.offset_dims.
    n_batch, rank = len(idx.shape), len(taken.shape)
    offset_src = list(range(axis)) + list(range(axis + n_batch, rank))
    batch_src = list(range(axis, axis + n_batch))
    perm, offs, bats = [], iter(offset_src), iter(batch_src)
    for d in range(rank):
        perm.append(next(offs) if d in dn.offset_dims else next(bats))
    out = _permute(t, taken, perm)
    mode = str(p["mode"])
    if "FILL_OR_DROP" in mode:
        n = operand.shape[axis]
        ok = t.g.op("and", t.g.op("ge", idx, t.const(0, idx.dtype)), t.g.op("lt", idx, t.const(n, idx.dtype)))
        batch_pos = tuple(perm.index(b) for b in batch_src)  # where the batch dims land in the output
        ok = t.g.op("broadcast", ok, shape=out.shape, dims=batch_pos)
        fill = p.get("fill_value")
        fill = (np.nan if np.issubdtype(np.dtype(operand.dtype), np.floating) else 0) if fill is None else fill
        out = t.g.op("select", ok, out, t.const(fill, operand.dtype))
    return [out]


def _inline(key: str) -> Handler:
    def handler(t, eqn, ins):
        sub = eqn.params[key]
        if hasattr(sub, "consts"):  # ClosedJaxpr
            return t.closed(sub, ins)
        return t.jaxpr(sub, [], ins)
    return handler


HANDLERS["pjit"] = HANDLERS["jit"] = _inline("jaxpr")
HANDLERS["closed_call"] = HANDLERS["core_call"] = _inline("call_jaxpr")
HANDLERS["custom_jvp_call"] = _inline("call_jaxpr")
HANDLERS["remat"] = HANDLERS["remat2"] = HANDLERS["checkpoint"] = _inline("jaxpr")  # jax.checkpoint: remat2


@handles("custom_vjp_call", "custom_vjp_call_jaxpr")
def _custom_vjp(t, eqn, ins):
    key = "call_jaxpr" if "call_jaxpr" in eqn.params else "fun_jaxpr"
    return _inline(key)(t, eqn, ins)


# ---- composite translations: primitives with no IR op of their own ---------------------------------

def _scalar(t, value, dtype) -> Value:
    return t.const(np.asarray(value, dtype=dtype))


def _iota(t, n: int, axis: int, rank: int, dtype: str = "int32") -> Value:
    """arange(n) along `axis` of a rank-`rank` constant with unit dims elsewhere (broadcasts)."""
    shape = [1] * rank
    shape[axis] = n
    return t.const(np.arange(n, dtype=dtype).reshape(shape))


def _along(t, x: Value, axis: int, start: int, limit: int) -> Value:
    """x[start:limit] on one axis."""
    rank = len(x.shape)
    starts, limits = [0] * rank, list(x.shape)
    starts[axis], limits[axis] = start, limit
    return t.g.op("slice", x, starts=tuple(starts), limits=tuple(limits), strides=(1,) * rank)


def _pad_axis(t, x: Value, axis: int, lo: int, hi: int, value) -> Value:
    pads = [(0, 0)] * len(x.shape)
    pads[axis] = (lo, hi)
    return t.g.op("pad", x, _scalar(t, value, x.dtype), pads=tuple(pads))


def _horner(t, x: Value, coeffs) -> Value:
    """coeffs[0] * x^(n-1) + ... + coeffs[-1], in x's dtype."""
    p = _scalar(t, coeffs[0], x.dtype)
    for c in coeffs[1:]:
        p = t.g.op("add", t.g.op("mul", p, x), _scalar(t, c, x.dtype))
    return p


def _extreme(dtype: str, high: bool):
    if dtype.startswith("float"):
        return np.inf if high else -np.inf
    info = np.iinfo(np.dtype(dtype))
    return info.max if high else info.min


def _arg_reduce(reduce_op: str) -> Handler:
    """argmax/argmin: the first index where x equals its max (min); a NaN counts as the extreme, as in JAX."""
    def handler(t, eqn, ins):
        x = ins[0]
        (axis,) = eqn.params["axes"]
        index = canonical_dtype(eqn.params["index_dtype"])
        if x.dtype == "bool":
            x = t.g.op("cast", x, to="int32")
        rank, n = len(x.shape), x.shape[axis]
        kept = tuple(d for d in range(rank) if d != axis)
        m = t.g.op("broadcast", t.g.op(reduce_op, x, axes=(axis,)), shape=x.shape, dims=kept)
        hit = t.g.op("eq", x, m)
        if x.dtype.startswith("float"):
            hit = t.g.op("or", hit, t.g.op("ne", x, x))
        idx = t.g.op("select", hit, _iota(t, n, axis, rank, index), _scalar(t, n, index))
        return [t.g.op("reduce_min", idx, axes=(axis,))]
    return handler


HANDLERS["argmax"] = _arg_reduce("reduce_max")
HANDLERS["argmin"] = _arg_reduce("reduce_min")


def _logaddexp(t, a: Value, b: Value) -> Value:
    m, mn = t.g.op("max", a, b), t.g.op("min", a, b)
    # a == b (both -inf included): log(2) above m, never inf - inf
    d = t.g.op("select", t.g.op("eq", m, mn), _scalar(t, 0, a.dtype), t.g.op("sub", mn, m))
    return t.g.op("add", m, t.g.op("log1p", t.g.op("exp", d)))


CUMULATIVE = {  # primitive -> (combine, identity(dtype))
    "cumprod": (lambda t, a, b: t.g.op("mul", a, b), lambda dt: 1),
    "cummax": (lambda t, a, b: t.g.op("max", a, b), lambda dt: _extreme(dt, high=False)),
    "cummin": (lambda t, a, b: t.g.op("min", a, b), lambda dt: _extreme(dt, high=True)),
    "cumlogsumexp": (_logaddexp, lambda dt: -np.inf),
}


def _cumulative(t, eqn, ins):
    """A log-step (Hillis-Steele) scan: ceil(log2 n) rounds of y = combine(y, y shifted by 2^k)."""
    combine, identity = CUMULATIVE[eqn.primitive.name]
    x, axis, reverse = ins[0], eqn.params["axis"], bool(eqn.params["reverse"])
    if x.dtype == "bool" or (eqn.primitive.name == "cumlogsumexp" and not x.dtype.startswith("float")):
        raise NotImplementedError(f"{eqn.primitive.name} of {x.dtype} values")
    n, y, k = x.shape[axis], x, 1
    while k < n:
        if reverse:
            shifted = _pad_axis(t, _along(t, y, axis, k, n), axis, 0, k, identity(x.dtype))
        else:
            shifted = _pad_axis(t, _along(t, y, axis, 0, n - k), axis, k, 0, identity(x.dtype))
        y = combine(t, y, shifted)
        k *= 2
    return [y]


for _prim in CUMULATIVE:
    HANDLERS[_prim] = _cumulative


@handles("reduce_prod")
def _reduce_prod(t, eqn, ins):
    """The reduced axes moved last and flattened, then halved: x[:n/2] * x[n/2:] (odd lengths padded with 1)."""
    x = ins[0]
    axes = sorted(int(a) for a in eqn.params["axes"])
    if not axes:
        return [x]
    kept = [d for d in range(len(x.shape)) if d not in axes]
    out_shape = tuple(x.shape[d] for d in kept)
    n = int(np.prod([x.shape[d] for d in axes]))
    if n == 0:
        return [t.const(np.ones(out_shape, x.dtype))]
    y = _reshape(t, _permute(t, x, kept + axes), out_shape + (n,))
    last = len(kept)
    while n > 1:
        if n % 2:
            y, n = _pad_axis(t, y, last, 0, 1, 1), n + 1
        y, n = t.g.op("mul", _along(t, y, last, 0, n // 2), _along(t, y, last, n // 2, n)), n // 2
    return [_reshape(t, y, out_shape)]


def _reduce_bool(op: str) -> Handler:
    def handler(t, eqn, ins):
        x, axes = ins[0], tuple(sorted(int(a) for a in eqn.params["axes"]))
        if x.dtype != "bool":
            raise NotImplementedError(f"{eqn.primitive.name} of {x.dtype} values (a bitwise reduction)")
        if not axes:
            return [x]
        return [t.g.op("cast", t.g.op(op, t.g.op("cast", x, to="int32"), axes=axes), to="bool")]
    return handler


HANDLERS["reduce_and"] = _reduce_bool("reduce_min")
HANDLERS["reduce_or"] = _reduce_bool("reduce_max")


@handles("exp2")
def _exp2(t, eqn, ins):  # as XLA computes it: exp(x * ln 2)
    return [t.g.op("exp", t.g.op("mul", ins[0], _scalar(t, math.log(2), ins[0].dtype)))]


@handles("tan")
def _tan(t, eqn, ins):
    return [t.g.op("div", t.g.op("sin", ins[0]), t.g.op("cos", ins[0]))]


# erfc(|x|) = t exp(-x^2 + P(t)), t = 1 / (1 + |x|/2), relative error below 1.2e-7 everywhere
# (Numerical Recipes' erfcc, a Chebyshev fit); erfc(-x) = 2 - erfc(x). 1 - erf(x) would lose erfc's
# small values for large x (GELU's left tail).
ERFC_COEFFS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
               0.37409196, 1.00002368, -1.26551223)


@handles("erfc")
def _erfc(t, eqn, ins):
    x = ins[0]
    one = _scalar(t, 1, x.dtype)
    z = t.g.op("abs", x)
    u = t.g.op("div", one, t.g.op("add", one, t.g.op("mul", z, _scalar(t, 0.5, x.dtype))))
    e = t.g.op("exp", t.g.op("sub", _horner(t, u, ERFC_COEFFS), t.g.op("mul", z, z)))
    y = t.g.op("mul", u, e)
    return [t.g.op("select", t.g.op("lt", x, _scalar(t, 0, x.dtype)), t.g.op("sub", _scalar(t, 2, x.dtype), y), y)]


# erf_inv: Giles' single-precision approximation (2010; what XLA computes for float32): with
# w = -log((1 - x)(1 + x)), x * P1(w - 2.5) for w < 5, else x * P2(sqrt(w) - 3); +-inf at +-1
ERF_INV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
ERF_INV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


@handles("erf_inv")
def _erf_inv(t, eqn, ins):
    x = ins[0]
    c = lambda v: _scalar(t, v, x.dtype)
    w = t.g.op("neg", t.g.op("log", t.g.op("mul", t.g.op("sub", c(1), x), t.g.op("add", c(1), x))))
    central = _horner(t, t.g.op("sub", w, c(2.5)), ERF_INV_CENTRAL)
    tail = _horner(t, t.g.op("sub", t.g.op("sqrt", w), c(3)), ERF_INV_TAIL)
    y = t.g.op("mul", t.g.op("select", t.g.op("lt", w, c(5)), central, tail), x)
    return [t.g.op("select", t.g.op("eq", t.g.op("abs", x), c(1)), t.g.op("mul", x, c(np.inf)), y)]


# ---- dynamic slices -----------------------------------------------------------------------------


def _start(t, s: Value, hi: int) -> Value:
    """A computed start index clamped into [0, hi], as JAX clamps it."""
    if s.dtype not in ("int32", "int64"):
        s = t.g.op("cast", s, to="int32")
    return t.g.op("min", t.g.op("max", s, _scalar(t, 0, s.dtype)), _scalar(t, hi, s.dtype))


@handles("dynamic_slice")
def _dynamic_slice(t, eqn, ins):
    """Constant starts fold into a slice; each computed one is a take of start + arange(size)."""
    x, starts = ins[0], ins[1:]
    sizes = tuple(int(d) for d in eqn.params["slice_sizes"])
    rank = len(x.shape)
    begin, end, dynamic = [0] * rank, list(x.shape), []
    for ax, (s, size) in enumerate(zip(starts, sizes)):
        c = t.static(s)
        if c is None:
            dynamic.append((ax, s, size))
        else:  # JAX clamps the start so the slice fits
            begin[ax] = int(np.clip(int(c), 0, x.shape[ax] - size))
            end[ax] = begin[ax] + size
    out = x
    if begin != [0] * rank or end != list(x.shape):
        out = t.g.op("slice", x, starts=tuple(begin), limits=tuple(end), strides=(1,) * rank)
    for ax, s, size in dynamic:
        start = _start(t, s, x.shape[ax] - size)
        out = t.g.op("take", out, t.g.op("add", start, t.const(np.arange(size, dtype=start.dtype))), axis=ax)
    return [out]


@handles("dynamic_update_slice")
def _dynamic_update_slice(t, eqn, ins):
    """select(region, update placed over x, x): the update padded (constant starts) or taken along
    arange(d) - start (computed ones) to x's shape, the region a constant mask or computed from the starts."""
    x, u, starts = ins[0], ins[1], ins[2:]
    rank = len(x.shape)
    static_mask, dynamic_mask, full = np.ones(x.shape, bool), None, u
    for ax, s in enumerate(starts):
        d, n = x.shape[ax], u.shape[ax]
        if n == d:  # the whole axis (its start clamps to 0)
            continue
        c = t.static(s)
        if c is not None:
            b = int(np.clip(int(c), 0, d - n))
            full = _pad_axis(t, full, ax, b, d - n - b, 0)
            inside = np.zeros(d, bool)
            inside[b:b + n] = True
            static_mask &= inside.reshape([-1 if i == ax else 1 for i in range(rank)])
        else:
            start = _start(t, s, d - n)
            pos = t.const(np.arange(d, dtype=start.dtype))
            full = t.g.op("take", full, t.g.op("sub", pos, start), axis=ax)  # clamped outside: masked below
            inside = t.g.op("and", t.g.op("ge", pos, start),
                            t.g.op("lt", pos, t.g.op("add", start, _scalar(t, n, start.dtype))))
            m = t.g.op("broadcast", inside, shape=x.shape, dims=(ax,))
            dynamic_mask = m if dynamic_mask is None else t.g.op("and", dynamic_mask, m)
    mask = None if static_mask.all() else t.const(static_mask)
    if dynamic_mask is not None:
        mask = dynamic_mask if mask is None else t.g.op("and", mask, dynamic_mask)
    return [full if mask is None else t.g.op("select", mask, full, x)]


# ---- scatter with constant indices ----------------------------------------------------------------

SCATTER_MAX_ROUNDS = 64  # the most updates a scatter-add/mul/min/max may combine into one element
_SCATTER_COMBINE = {"scatter": None, "scatter-add": "add", "scatter-sub": "sub", "scatter-mul": "mul",
                    "scatter-min": "min", "scatter-max": "max"}


def _scatter_rounds(eqn, operand_shape, indices: np.ndarray, update_shape) -> list[np.ndarray]:
    """Where each update element lands, computed by JAX itself (every dimension-number form and index mode,
    as jax.jit computes it): operand-shaped int arrays holding the flat index of the update written to each
    element, -1 where none is. One array for a set (the writer JAX keeps where indices repeat); for a
    combining scatter one per round, each element receiving at most one update per round."""
    from jax import lax
    p = eqn.params
    kw = dict(dimension_numbers=p["dimension_numbers"], indices_are_sorted=bool(p["indices_are_sorted"]),
              unique_indices=bool(p["unique_indices"]), mode=p["mode"])
    n = int(np.prod(update_shape, dtype=np.int64))
    ids = np.arange(n, dtype=np.int32).reshape(update_shape)
    with jax.default_device(jax.devices("cpu")[0]):
        idx = jax.numpy.asarray(indices)
        if eqn.primitive.name == "scatter":
            return [np.asarray(lax.scatter(np.full(operand_shape, -1, np.int32), idx, ids, **kw))]
        big = np.iinfo(np.int32).max
        taken, rounds = np.zeros(n, bool), []
        while True:
            pending = np.where(taken.reshape(update_shape), big, ids)
            r = np.asarray(lax.scatter_min(np.full(operand_shape, big, np.int32), idx, pending, **kw))
            r = np.where(r == big, -1, r).astype(np.int32)
            if not (r >= 0).any():
                return rounds
            if len(rounds) == SCATTER_MAX_ROUNDS:
                raise NotImplementedError(f"{eqn.primitive.name} that combines more than {SCATTER_MAX_ROUNDS} "
                                          "updates into one element: graphopt combines them one round at a time")
            taken[r[r >= 0]] = True
            rounds.append(r)


def _strided_box(written: np.ndarray) -> list[tuple[int, int, int]] | None:
    """(start, step, count) per axis where the True elements of `written` are exactly a strided box."""
    box = []
    for ax in range(written.ndim):
        at = np.flatnonzero(written.any(axis=tuple(a for a in range(written.ndim) if a != ax)))
        step = int(at[1] - at[0]) if len(at) > 1 else 1
        if len(at) > 1 and not (np.diff(at) == step).all():
            return None
        box.append((int(at[0]), step, len(at)))
    if int(np.prod([c for _, _, c in box], dtype=np.int64)) != int(written.sum()):
        return None
    return box


def _place_box(t, u: Value, box, shape, fill) -> Value:
    """u (the box's shape) placed at the strided box in an array of `shape`, `fill` elsewhere (pads; a
    step s spreads an axis by padding a new unit axis after it to s and merging the two)."""
    out = u
    for ax, ((start, step, count), d) in enumerate(zip(box, shape)):
        if step > 1 and count > 1:
            cur = out.shape
            out = _reshape(t, out, cur[:ax + 1] + (1,) + cur[ax + 1:])
            out = _pad_axis(t, out, ax + 1, 0, step - 1, fill)
            out = _reshape(t, out, cur[:ax] + (count * step,) + cur[ax + 1:])
            out = _along(t, out, ax, 0, (count - 1) * step + 1)
        span = out.shape[ax]
        if span != d:
            out = _pad_axis(t, out, ax, start, d - start - span, fill)
    return out


@handles(*_SCATTER_COMBINE)
def _scatter(t, eqn, ins):
    """x.at[idx].set/add/multiply/min/max(u) with indices that fold to constants: where each update lands is
    computed at trace time. Updates filling a strided box in order (static slices) are padded into place
    (strides by padding a unit axis); any other static pattern takes the flat updates by a constant index
    array. A set selects with a constant mask; add/mul combine with the padded update (zeros, ones outside)."""
    x, indices, u = ins
    combine = _SCATTER_COMBINE[eqn.primitive.name]
    idx = t.static(indices)
    if idx is None:
        raise NotImplementedError("scatter indices computed from the inputs: graphopt translates scatters "
                                  "(x.at[i].set/add(...)) whose indices are constants (static slices, constant "
                                  "index arrays, loop counters that fold)")
    if u.type.size == 0:
        return [x]
    rounds = _scatter_rounds(eqn, x.shape, idx, u.shape)
    out = x
    neutral = {"add": 0, "sub": 0, "mul": 1}.get(combine)
    for src in rounds:
        written = src >= 0
        if not written.any():
            continue
        box = _strided_box(written)
        if box is not None:
            inside = src[tuple(slice(s, s + (c - 1) * st + 1, st) for s, st, c in box)]
            if inside.size == u.type.size and (inside.reshape(-1) == np.arange(inside.size)).all():
                placed = _place_box(t, _reshape(t, u, inside.shape), box, x.shape,
                                    0 if neutral is None else neutral)
                if neutral is not None:  # add, sub, mul: the neutral element outside needs no mask
                    out = t.g.op(combine, out, placed)
                    continue
                new = placed if combine is None else t.g.op(combine, out, placed)
                out = new if written.all() else t.g.op("select", t.const(written), new, out)
                continue
        flat = _reshape(t, u, (u.type.size,))
        taken = t.g.op("take", flat, t.const(np.maximum(src, 0)), axis=0)
        new = taken if combine is None else t.g.op(combine, out, taken)
        out = new if written.all() else t.g.op("select", t.const(written), new, out)
    return [out]


# ---- sort and top_k: ranks from pairwise comparisons ------------------------------------------------

SORT_MAX = 4096  # the longest axis sort/top_k are translated for (they compare every pair: n^2 elements)


def _before(t, keys: list[Value], descending: bool) -> Value:
    """bool [..., n(i), n(j)]: element j comes before element i in the stable (lexicographic) order of
    keys [..., n]; NaNs order after every number ascending, before every number descending (as in JAX).
    -0.0 and 0.0 compare equal here (JAX orders -0.0 first): their values agree, their indices may not."""
    n, lead = keys[0].shape[-1], keys[0].shape[:-1]
    before = t.const(np.tril(np.ones((n, n), bool), -1))  # ties: the lower index first
    for key in reversed(keys):
        a, b = _reshape(t, key, lead + (n, 1)), _reshape(t, key, lead + (1, n))
        first = t.g.op("gt" if descending else "lt", b, a)
        same = t.g.op("eq", b, a)
        if key.dtype.startswith("float"):
            na, nb = t.g.op("ne", a, a), t.g.op("ne", b, b)
            nan_first = t.g.op("and", nb, t.g.op("not", na)) if descending else t.g.op("and", na, t.g.op("not", nb))
            first = t.g.op("or", first, nan_first)
            same = t.g.op("or", same, t.g.op("and", na, nb))
        before = t.g.op("or", first, t.g.op("and", same, before))
    return before


def _ranks(t, keys: list[Value], descending: bool = False) -> Value:
    """int32 [..., n]: each element's position in the sorted order."""
    before = _before(t, keys, descending)
    return t.g.op("reduce_sum", t.g.op("cast", before, to="int32"), axes=(len(before.shape) - 1,))


def _by_rank(t, ranks: Value, row: Value, k: int) -> Value:
    """out[..., r] = row[..., i] where ranks[..., i] == r, for r < k; row is [..., 1, n] (or broadcasts to it)."""
    n, lead = ranks.shape[-1], ranks.shape[:-1]
    onehot = t.g.op("eq", _reshape(t, ranks, lead + (1, n)), t.const(np.arange(k, dtype=np.int32).reshape(k, 1)))
    dtype = row.dtype
    if dtype == "bool":
        row = t.g.op("cast", row, to="int32")
    picked = t.g.op("select", onehot, row, _scalar(t, 0, row.dtype))  # one term per sum: exact
    out = t.g.op("reduce_sum", picked, axes=(len(lead) + 1,))
    return t.g.op("cast", out, to="bool") if dtype == "bool" else out


def _last(t, x: Value, axis: int) -> tuple[Value, tuple[int, ...]]:
    """x with `axis` moved last, and the permutation that moves it back."""
    perm = [d for d in range(len(x.shape)) if d != axis] + [axis]
    return _permute(t, x, perm), _inverse(perm)


def _check_sort_size(eqn, n: int) -> None:
    if n > SORT_MAX:
        raise NotImplementedError(f"{eqn.primitive.name} along an axis of {n} elements: graphopt translates "
                                  f"sorts by comparing every pair of elements, for axes of up to {SORT_MAX}")


@handles("sort")
def _sort(t, eqn, ins):
    p = eqn.params
    axis, nk = int(p["dimension"]), int(p["num_keys"])
    n = ins[0].shape[axis]
    _check_sort_size(eqn, n)
    if n <= 1:
        return list(ins)
    moved = [_last(t, x, axis) for x in ins]
    ops = [m for m, _ in moved]
    ranks = _ranks(t, ops[:nk])
    return [_permute(t, _by_rank(t, ranks, _reshape(t, x, x.shape[:-1] + (1, n)), n), back)
            for x, (_, back) in zip(ops, moved)]


@handles("top_k")
def _top_k(t, eqn, ins):
    x, k = ins[0], int(eqn.params["k"])
    axis = int(eqn.params.get("axis", -1)) % len(x.shape)
    n = x.shape[axis]
    _check_sort_size(eqn, n)
    xl, back = _last(t, x, axis)
    ranks = _ranks(t, [xl], descending=True)
    values = _by_rank(t, ranks, _reshape(t, xl, xl.shape[:-1] + (1, n)), k)
    index = canonical_dtype(eqn.outvars[1].aval.dtype)
    indices = _by_rank(t, ranks, t.const(np.arange(n, dtype=index).reshape((1,) * len(xl.shape) + (n,))), k)
    return [_permute(t, values, back), _permute(t, indices, back)]


# ---- control flow --------------------------------------------------------------------------------


def _parts(t, z, fn):
    """fn applied to a value, or to both parts of a Complex one."""
    if isinstance(z, Complex):
        return Complex(fn(z.re), None if z.im is None else fn(z.im))
    return fn(z)


def _im_or_zeros(t, z: Complex) -> Value:
    return z.im if z.im is not None else t.zeros(z.re)


def _concat0(t, pieces: list) -> Value | Complex:
    if len(pieces) == 1:
        return pieces[0]
    if not isinstance(pieces[0], Complex):
        return t.g.op("concat", *pieces, axis=0)
    re = t.g.op("concat", *[p.re for p in pieces], axis=0)
    if all(p.im is None for p in pieces):
        return Complex(re, None)
    return Complex(re, t.g.op("concat", *[_im_or_zeros(t, p) for p in pieces], axis=0))


def _select_cases(t, index: Value, cases: list):
    """select_n(index, *cases) for values or Complex values; a bool index picks cases[1] where true."""
    if all(c is cases[0] for c in cases):
        return cases[0]
    if isinstance(cases[0], Complex):
        re = _select_cases(t, index, [c.re for c in cases])
        if all(c.im is None for c in cases):
            return Complex(re, None)
        return Complex(re, _select_cases(t, index, [_im_or_zeros(t, c) for c in cases]))
    if index.dtype == "bool":
        return t.g.op("select", index, cases[1], cases[0])
    out = cases[-1]
    for i in range(len(cases) - 2, -1, -1):
        out = t.g.op("select", t.g.op("eq", index, t.const(i, index.dtype)), cases[i], out)
    return out


@handles("cond")
def _cond(t, eqn, ins):
    """A constant index takes its branch; otherwise every branch is computed and the results selected."""
    index, ops = ins[0], ins[1:]
    branches = eqn.params["branches"]
    k = t.static(index)
    if k is not None:
        return t.closed(branches[int(np.clip(int(k), 0, len(branches) - 1))], ops)
    effects = [b.effects for b in branches if b.effects]
    if effects:
        raise NotImplementedError(f"cond with side effects in a branch ({sorted(map(str, effects[0]))}) and an "
                                  "index computed from the inputs: graphopt computes every branch and selects")
    outs = [t.closed(b, ops) for b in branches]
    src = index.producer
    if len(branches) == 2 and src is not None and src.op == "cast" and src.inputs[0].dtype == "bool":
        index = src.inputs[0]  # lax.cond's index is its bool predicate cast to int32
    return [_select_cases(t, index, list(cases)) for cases in zip(*outs)]


def _check_unroll(eqn, trips: int, jaxpr) -> None:
    if trips * max(1, len(jaxpr.jaxpr.eqns)) > MAX_UNROLLED_EQNS:
        raise NotImplementedError(f"{eqn.primitive.name} of {trips} iterations over {len(jaxpr.jaxpr.eqns)} "
                                  f"eqns: graphopt unrolls loops, up to {MAX_UNROLLED_EQNS} eqns in all")


@handles("scan")
def _scan(t, eqn, ins):
    """Unrolled: the body once per step, xs sliced and ys stacked along axis 0."""
    p = eqn.params
    nc, nk, length, reverse = int(p["num_consts"]), int(p["num_carry"]), int(p["length"]), bool(p["reverse"])
    body = p["jaxpr"]
    _check_unroll(eqn, length, body)
    consts, carry, xs = list(ins[:nc]), list(ins[nc:nc + nk]), ins[nc + nk:]
    mark = len(t.g.nodes)
    steps: list = [None] * length
    for i in range(length):
        at = length - 1 - i if reverse else i
        x_at = [_parts(t, x, lambda v: _reshape(t, _along(t, v, 0, at, at + 1), v.shape[1:])) for x in xs]
        outs = t.closed(body, consts + carry + x_at)
        carry = [t.fold_small(v) for v in outs[:nk]]
        steps[at] = outs[nk:]
    ys = []
    for j, var in enumerate(eqn.outvars[nk:]):
        if length == 0:
            zeros = t.const(np.zeros(var.aval.shape, _real_dtype(var.aval.dtype) if _is_complex(var.aval.dtype)
                                     else var.aval.dtype))
            ys.append(Complex(zeros, None) if _is_complex(var.aval.dtype) else zeros)
            continue
        ys.append(_concat0(t, [_parts(t, s[j], lambda v: _reshape(t, v, (1,) + v.shape)) for s in steps]))
    t.sweep(mark, carry + ys)
    return carry + ys


@handles("while")
def _while(t, eqn, ins):
    """Unrolled while the condition folds to a constant (it depends on constants only, e.g. a counter with
    constant bounds); a condition computed from the inputs is refused."""
    p = eqn.params
    cn, bn = int(p["cond_nconsts"]), int(p["body_nconsts"])
    cconsts, bconsts, carry = list(ins[:cn]), list(ins[cn:cn + bn]), list(ins[cn + bn:])
    mark = len(t.g.nodes)
    for i in range(MAX_WHILE_ITERATIONS + 1):
        at = len(t.g.nodes)
        (pred,) = t.closed(p["cond_jaxpr"], cconsts + carry)
        go = t.static(pred)
        del t.g.nodes[at:]  # the condition was evaluated here; it is no part of the graph
        if go is None:
            raise NotImplementedError(
                "while loop whose condition depends on the inputs, so its trip count is not static; graphopt "
                "unrolls while loops whose condition depends on constants only (lax.fori_loop with constant "
                "bounds, a counter compared with a constant), or use lax.scan with a static length")
        if not bool(go):
            break
        if i == MAX_WHILE_ITERATIONS:
            raise NotImplementedError(f"while loop still running after {MAX_WHILE_ITERATIONS} iterations; "
                                      f"graphopt unrolls at most {MAX_WHILE_ITERATIONS}")
        _check_unroll(eqn, i + 1, p["body_jaxpr"])
        carry = [t.fold_small(v) for v in t.closed(p["body_jaxpr"], bconsts + carry)]
    t.sweep(mark, carry)
    return carry



# ---- complex values: (real, imaginary) pairs ----------------------------------------------------------

def _cx(z) -> Complex:
    return z if isinstance(z, Complex) else Complex(z, None)


def _fit(t, v: Value | None, shape) -> Value | None:
    if v is None or v.shape == tuple(shape):
        return v
    return t.g.op("broadcast", v, shape=tuple(shape), dims=tuple(range(len(shape) - len(v.shape), len(shape))))


def _sum(t, terms, shape) -> Value | None:
    """The sum of (sign, value) terms, None terms (zeros) skipped; None if all are."""
    out = None
    for sign, v in terms:
        if v is None:
            continue
        if out is None:
            out = v if sign > 0 else t.g.op("neg", v)
        else:
            out = t.g.op("add" if sign > 0 else "sub", out, v)
    return _fit(t, out, shape)


def _mul(t, a, b):
    return None if a is None or b is None else t.g.op("mul", a, b)


def _cmul(t, a: Complex, b: Complex, shape) -> Complex:
    re = _sum(t, [(1, _mul(t, a.re, b.re)), (-1, _mul(t, a.im, b.im))], shape)
    return Complex(re, _sum(t, [(1, _mul(t, a.re, b.im)), (1, _mul(t, a.im, b.re))], shape))


def _cdiv(t, a: Complex, b: Complex, shape) -> Complex:
    if b.im is None:
        div = lambda v: None if v is None else t.g.op("div", v, b.re)
        return Complex(_fit(t, div(a.re), shape), _fit(t, div(a.im), shape))
    den = t.g.op("add", t.g.op("mul", b.re, b.re), t.g.op("mul", b.im, b.im))
    re = _sum(t, [(1, _mul(t, a.re, b.re)), (1, _mul(t, a.im, b.im))], shape)
    im = _sum(t, [(1, _mul(t, a.im, b.re)), (-1, _mul(t, a.re, b.im))], shape)
    return Complex(t.g.op("div", re, den), t.g.op("div", im, den))


def _out_shape(eqn, i: int = 0) -> tuple[int, ...]:
    return tuple(eqn.outvars[i].aval.shape)


def _complex_binary(kind: str) -> Handler:
    def handler(t, eqn, ins):
        a, b = (_cx(x) for x in ins)
        shape = _out_shape(eqn)
        if kind in ("add", "sub"):
            sign = 1 if kind == "add" else -1
            return [Complex(_sum(t, [(1, a.re), (sign, b.re)], shape), _sum(t, [(1, a.im), (sign, b.im)], shape))]
        return [(_cmul if kind == "mul" else _cdiv)(t, a, b, shape)]
    return handler


for _prim, _kind in {"add": "add", "add_any": "add", "sub": "sub", "mul": "mul", "div": "div"}.items():
    COMPLEX_HANDLERS[_prim] = _complex_binary(_kind)


@handles_complex("neg")
def _cneg(t, eqn, ins):
    return [_parts(t, _cx(ins[0]), lambda v: t.g.op("neg", v))]


@handles_complex("conj")
def _conj(t, eqn, ins):
    z = _cx(ins[0])
    if not _is_complex(eqn.outvars[0].aval.dtype):  # conj of a real value (jnp keeps it complex)
        return [z.re]
    return [Complex(z.re, None if z.im is None else t.g.op("neg", z.im))]


@handles_complex("real")
def _real(t, eqn, ins):
    return [_cx(ins[0]).re]


@handles_complex("imag")
def _imag(t, eqn, ins):
    return [_im_or_zeros(t, _cx(ins[0]))]


@handles_complex("complex")
def _complex(t, eqn, ins):
    shape = _out_shape(eqn)
    return [Complex(_fit(t, ins[0], shape), _fit(t, ins[1], shape))]


@handles_complex("abs")
def _cabs(t, eqn, ins):
    z = _cx(ins[0])
    if z.im is None:
        return [t.g.op("abs", z.re)]
    return [t.g.op("sqrt", t.g.op("add", t.g.op("mul", z.re, z.re), t.g.op("mul", z.im, z.im)))]


@handles_complex("exp")
def _cexp(t, eqn, ins):
    z = _cx(ins[0])
    e = t.g.op("exp", z.re)
    if z.im is None:
        return [Complex(e, None)]
    return [Complex(t.g.op("mul", e, t.g.op("cos", z.im)), t.g.op("mul", e, t.g.op("sin", z.im)))]


@handles_complex("square")
def _csquare(t, eqn, ins):
    z = _cx(ins[0])
    return [_cmul(t, z, z, z.shape)]


@handles_complex("integer_pow")
def _cinteger_pow(t, eqn, ins):
    z, y = _cx(ins[0]), eqn.params["y"]
    if y == 0:
        return [Complex(t.g.op("broadcast", t.const(1, z.re.dtype), shape=z.shape, dims=()), None)]
    result, base, n = None, z, abs(y)
    while n:
        if n & 1:
            result = base if result is None else _cmul(t, result, base, z.shape)
        n >>= 1
        if n:
            base = _cmul(t, base, base, z.shape)
    if y < 0:
        result = _cdiv(t, Complex(t.const(1, z.re.dtype), None), result, z.shape)
    return [result]


@handles_complex("convert_element_type")
def _cconvert(t, eqn, ins):
    to = eqn.params["new_dtype"]
    z = _cx(ins[0])
    if not _is_complex(to):  # complex -> real keeps the real part (as JAX does, with a warning)
        return [_convert(t, eqn, [z.re])[0]]
    part = _real_dtype(to)
    cast = lambda v: v if v.dtype == part else t.g.op("cast", v, to=part)
    return [Complex(cast(z.re), None if z.im is None else cast(z.im))]


@handles_complex("dot_general")
def _cdot(t, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    a, b = (_cx(x) for x in ins)
    part = _real_dtype(eqn.outvars[0].aval.dtype)
    cast = lambda v: v if v is None or v.dtype == part else t.g.op("cast", v, to=part)
    dot = lambda x, y: None if x is None or y is None else t.g.op(
        "dot", cast(x), cast(y), lhs_contract=tuple(lc), rhs_contract=tuple(rc), lhs_batch=tuple(lb),
        rhs_batch=tuple(rb))
    shape = _out_shape(eqn)
    return [Complex(_sum(t, [(1, dot(a.re, b.re)), (-1, dot(a.im, b.im))], shape),
                    _sum(t, [(1, dot(a.re, b.im)), (1, dot(a.im, b.re))], shape))]


def _partwise(handler: Handler) -> Handler:
    """A primitive that moves or adds elements (reshape, slice, concatenate, sums, ...) on each part."""
    def run(t, eqn, ins):
        cins = [x for x in ins if isinstance(x, Complex)]
        re = handler(t, eqn, [x.re if isinstance(x, Complex) else x for x in ins])
        if all(x.im is None for x in cins):
            im = [None] * len(re)
        else:
            im = handler(t, eqn, [_im_or_zeros(t, x) if isinstance(x, Complex) else x for x in ins])
        return [Complex(r, i) if _is_complex(var.aval.dtype) else r for r, i, var in zip(re, im, eqn.outvars)]
    return run


for _prim in ("reshape", "squeeze", "expand_dims", "transpose", "slice", "split", "concatenate", "tile",
              "broadcast_in_dim", "rev", "pad", "select_n", "gather", "dynamic_slice", "dynamic_update_slice",
              "reduce_sum", "cumsum"):
    COMPLEX_HANDLERS[_prim] = _partwise(HANDLERS[_prim])
for _prim in ("copy", "copy_p", "stop_gradient", "sharding_constraint", "optimization_barrier", "pjit", "jit",
              "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "remat",
              "remat2", "checkpoint", "cond", "scan", "while"):
    COMPLEX_HANDLERS[_prim] = HANDLERS[_prim]


# ---- fft: products with constant DFT matrices ----------------------------------------------------------

FFT_MAX = 4096  # the longest FFT translated (its DFT matrices hold n^2 elements each)


def _dft(n_in: int, n_out: int, n: int, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """(C, S) with W = C + iS, W[j, k] = exp(-+2 pi i j k / n) (/ n for the inverse), j < n_in, k < n_out."""
    jk = np.outer(np.arange(n_in), np.arange(n_out)) % n  # exact phases: no large angles
    ang = 2 * np.pi * jk / n
    c, s = np.cos(ang), np.sin(ang) * (1 if inverse else -1)
    s[(2 * jk) % n == 0] = 0.0  # 0 and pi exactly
    c[(4 * jk == n) | (4 * jk == 3 * n)] = 0.0  # pi/2 and 3pi/2
    return (c / n, s / n) if inverse else (c, s)


def _contract(t, x: Value | None, m: np.ndarray, axis: int) -> Value | None:
    """x's `axis` contracted with m's rows; the new axis (m's columns) takes its place."""
    if x is None:
        return None
    y = t.g.op("dot", x, t.const(m.astype(x.dtype)), lhs_contract=(axis,), rhs_contract=(0,))
    rank = len(x.shape)
    if axis == rank - 1:
        return y
    perm = list(range(rank - 1))
    perm.insert(axis, rank - 1)
    return t.g.op("transpose", y, perm=tuple(perm))


def _dft_axis(t, z: Complex, axis: int, inverse: bool) -> Complex:
    n = z.shape[axis]
    c, s = _dft(n, n, n, inverse)
    shape = z.shape
    re = _sum(t, [(1, _contract(t, z.re, c, axis)), (-1, _contract(t, z.im, s, axis))], shape)
    return Complex(re, _sum(t, [(1, _contract(t, z.re, s, axis)), (1, _contract(t, z.im, c, axis))], shape))


@handles_complex("fft")
def _fft(t, eqn, ins):
    p = eqn.params
    kind = int(p["fft_type"])  # FftType: 0 FFT, 1 IFFT, 2 RFFT, 3 IRFFT
    lengths = tuple(int(n) for n in p["fft_lengths"])
    z = ins[0]
    rank = len(z.shape)
    axes = list(range(rank - len(lengths), rank))
    if max(lengths, default=0) > FFT_MAX:
        raise NotImplementedError(f"fft of lengths {lengths}: graphopt computes FFTs as products with constant "
                                  f"n x n DFT matrices, for lengths up to {FFT_MAX}")
    expect = lengths[:-1] + ((lengths[-1] // 2 + 1,) if kind == 3 else lengths[-1:])
    if tuple(z.shape[a] for a in axes) != expect:
        raise NotImplementedError(f"fft of type {kind} with lengths {lengths} on an input of shape {z.shape}")
    if kind in (0, 1):
        out = _cx(z)
        for ax in axes:
            out = _dft_axis(t, out, ax, inverse=kind == 1)
        return [out]
    if kind == 2:  # real input: the first n // 2 + 1 outputs of the last axis, then the others
        n = lengths[-1]
        c, s = _dft(n, n // 2 + 1, n, inverse=False)
        out = Complex(_contract(t, z, c, rank - 1), _contract(t, z, s, rank - 1))
        for ax in axes[:-1]:
            out = _dft_axis(t, out, ax, inverse=False)
        return [out]
    z = _cx(z)  # IRFFT: the other axes first, then the last, whose missing half is the conjugate mirror
    for ax in axes[:-1]:
        z = _dft_axis(t, z, ax, inverse=True)
    n = lengths[-1]
    k = n // 2 + 1
    c, s = _dft(k, n, n, inverse=True)
    twice = np.full((k, 1), 2.0)
    twice[0] = 1.0
    if n % 2 == 0:
        twice[-1] = 1.0
    return [_sum(t, [(1, _contract(t, z.re, c * twice, rank - 1)), (-1, _contract(t, z.im, s * twice, rank - 1))],
                 z.shape[:-1] + (n,))]


# ---- entry point -----------------------------------------------------------------------------

def trace(fn: Callable, inputs: dict[str, Any], state: Any = None, *, name: str = "graph",
          output_names: Sequence[str] | None = None, state_names: Sequence[str] | None = None,
          param_names: dict[int, str] | None = None) -> Graph:
    """Trace `fn(*inputs.values(), state) -> (outputs, new_state)` into a Graph.

    `inputs` are example arrays (ordered, named). `state` is any pytree of arrays (or None for a
    stateless function, then `fn(*inputs) -> outputs`); the new state must have the same leaves in
    the same order, shapes and dtypes. `param_names` maps id(array) of closed-over constants to
    readable parameter names.
    """
    names = list(inputs)
    # JAX canonicalizes dtypes (float64 -> float32 unless x64 is enabled); the graph's types must match
    canon = lambda x: np.asarray(x).astype(jax.dtypes.canonicalize_dtype(np.asarray(x).dtype), copy=False)
    examples = [canon(x) for x in inputs.values()]
    leaves, treedef = jax.tree_util.tree_flatten(state)
    leaves = [canon(x) for x in leaves]
    n_in = len(examples)

    def flat(*args):
        if state is None:
            out, new = fn(*args), []
        else:
            out, new = fn(*args[:n_in], jax.tree_util.tree_unflatten(treedef, args[n_in:]))
        return jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(new)

    closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*examples, *leaves)
    out_shapes, new_shapes = shapes
    if len(new_shapes) != len(leaves):
        raise ValueError(f"the step returns {len(new_shapes)} state tensors but takes {len(leaves)}")
    for i, (old, new) in enumerate(zip(leaves, new_shapes)):
        if tuple(old.shape) != tuple(new.shape) or np.dtype(old.dtype) != np.dtype(new.dtype):
            raise ValueError(f"state tensor {i}: input {old.shape} {old.dtype} but output {new.shape} {new.dtype}")

    for what, arrays in (("input", dict(zip(names, examples))), ("state tensor", dict(enumerate(leaves)))):
        for key, x in arrays.items():
            if _is_complex(x.dtype):
                raise TypeError(f"{what} {key!r} is {x.dtype}: graphopt graphs take real tensors; pass the real and "
                                "imaginary parts as two tensors (lax.complex(re, im) makes the complex value inside)")
    g = Graph(name=name)
    args = [g.add_input(n, TensorType(x.shape, canonical_dtype(x.dtype))) for n, x in zip(names, examples)]
    state_names = list(state_names) if state_names else [f"state_{i}" for i in range(len(leaves))]
    svals = [g.add_state(sn, x) for sn, x in zip(state_names, leaves)]
    outs = _Translator(g, param_names or {}).closed(closed, args + svals)
    n_out = len(out_shapes)
    for i, v in enumerate(outs):
        if isinstance(v, Complex):
            what = f"output {i}" if i < n_out else f"new state tensor {i - n_out}"
            raise UnsupportedPrimitiveError(
                f"{what} of the traced function is complex (made by {v.origin or 'a complex input'}): graphopt "
                "computes complex values as (real, imaginary) pairs inside the graph, but its outputs are real; "
                "return jnp.real/jnp.imag/jnp.abs of it")
    g.outputs = outs[:n_out]
    g.output_names = list(output_names) if output_names else [f"output_{i}" for i in range(n_out)]
    if len(g.output_names) != n_out:
        raise ValueError(f"{len(g.output_names)} output names for {n_out} outputs")
    for pair, v in zip(g.state, outs[n_out:]):
        pair.output = v
    return g
