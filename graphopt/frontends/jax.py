"""JAX frontend: trace any JAX callable with `jax.make_jaxpr` and translate the jaxpr into the IR.

Nested jaxprs (jit/pjit, closed_call, custom_jvp_call, custom_vjp_call, remat) are inlined.
Each primitive has one handler in HANDLERS; an unsupported primitive raises
UnsupportedPrimitiveError naming the primitive and the user code that produced it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ..ir import Graph, TensorType, Value, canonical_dtype


class UnsupportedPrimitiveError(NotImplementedError):
    """The jaxpr uses a primitive (or a form of one) the frontend cannot translate."""


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

    def read(self, env: dict, var) -> Value:
        if type(var).__name__ == "Literal":
            return self.const(var.val, var.aval.dtype)
        return env[var]

    # ---- jaxprs -------------------------------------------------------------------------
    def closed(self, closed_jaxpr, args: Sequence[Value]) -> list[Value]:
        consts = []
        for c in closed_jaxpr.consts:
            name = self.param_names.get(id(c))
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
            handler = HANDLERS.get(name)
            if handler is None:
                raise UnsupportedPrimitiveError(
                    f"JAX primitive '{name}' (from {where}) is not supported by the graphopt JAX "
                    f"frontend; add a handler for it in graphopt/frontends/jax.py")
            ins = [self.read(env, v) for v in eqn.invars]
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
                    expect = TensorType(tuple(var.aval.shape), canonical_dtype(var.aval.dtype))
                    if v.type != expect:
                        raise AssertionError(f"frontend bug: '{name}' gave {v.type}, jaxpr says {expect}")
                    env[var] = v
        return [self.read(env, v) for v in jaxpr.outvars]


# ---- handlers ----------------------------------------------------------------------------
Handler = Callable[[_Translator, Any, list[Value]], list[Value]]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str):
    def deco(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
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

    g = Graph(name=name)
    args = [g.add_input(n, TensorType(x.shape, canonical_dtype(x.dtype))) for n, x in zip(names, examples)]
    state_names = list(state_names) if state_names else [f"state_{i}" for i in range(len(leaves))]
    svals = [g.add_state(sn, x) for sn, x in zip(state_names, leaves)]
    outs = _Translator(g, param_names or {}).closed(closed, args + svals)
    n_out = len(out_shapes)
    g.outputs = outs[:n_out]
    g.output_names = list(output_names) if output_names else [f"output_{i}" for i in range(n_out)]
    if len(g.output_names) != n_out:
        raise ValueError(f"{len(g.output_names)} output names for {n_out} outputs")
    for pair, v in zip(g.state, outs[n_out:]):
        pair.output = v
    return g
