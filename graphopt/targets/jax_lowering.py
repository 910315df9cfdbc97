"""Lower an IR graph to a JAX function: one function per IR op, declared in `TABLE` (a
lowering.LoweringTable) as fn(node, *jax arrays) -> [outputs].

`to_jax_function(graph)` returns f(*inputs, *state) -> (*outputs, *new_state), a pure function of
flat arrays, ready for jax.jit and jax.export. Parameters become constants of the function.

jax is imported when a graph is lowered, not with this module (`jnp` and `lax` below resolve their
attributes on use), so the table can be read without it.
"""
from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from ..ir import Graph
from ..ir.ops import lhs_dilations
from . import UnsupportedOpError  # noqa: F401  (one class for every target; raised here)
from .lowering import LoweringTable


class _Lazy:
    """A module imported on first attribute access."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


jnp, lax = _Lazy("jax.numpy"), _Lazy("jax.lax")

TABLE = LoweringTable("JAX", "graphopt/targets/jax_lowering.py")
lowering = TABLE.register

# IR op -> the jnp or lax function (module.name) applied to its inputs
UNARY = {"neg": "jnp.negative", "exp": "jnp.exp", "log": "jnp.log", "sqrt": "jnp.sqrt", "rsqrt": "lax.rsqrt",
         "floor": "jnp.floor", "ceil": "jnp.ceil", "abs": "jnp.abs", "sign": "jnp.sign", "sin": "jnp.sin",
         "cos": "jnp.cos", "tanh": "jnp.tanh", "erf": "lax.erf", "log1p": "jnp.log1p", "expm1": "jnp.expm1",
         "not": "jnp.logical_not", "is_finite": "jnp.isfinite"}
BINARY = {"add": "jnp.add", "sub": "jnp.subtract", "mul": "jnp.multiply", "max": "jnp.maximum",
          "min": "jnp.minimum", "pow": "jnp.power", "rem": "lax.rem", "and": "jnp.logical_and",
          "or": "jnp.logical_or", "lt": "jnp.less", "le": "jnp.less_equal", "gt": "jnp.greater",
          "ge": "jnp.greater_equal", "eq": "jnp.equal", "ne": "jnp.not_equal"}
REDUCE = {"reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min"}


def _resolve(path: str) -> Callable:
    module, name = path.split(".")
    return getattr(jnp if module == "jnp" else lax, name)


def _direct(path: str) -> Callable:
    return lambda n, *xs: [_resolve(path)(*xs)]


for _op, _path in {**UNARY, **BINARY}.items():
    TABLE.add(_op, _direct(_path))


@lowering("sigmoid")
def _sigmoid(n, x):
    return [1 / (1 + jnp.exp(-x))]


@lowering("div")
def _div(n, x, y):
    return [x / y if jnp.issubdtype(x.dtype, jnp.floating) else lax.div(x, y)]


@lowering("round")
def _round(n, x):
    if n.attrs["mode"] == "half_even":
        return [jnp.round(x)]
    return [lax.round(x, lax.RoundingMethod.AWAY_FROM_ZERO)]


@lowering("clamp")
def _clamp(n, x):
    return [jnp.minimum(jnp.maximum(x, n.attrs["lo"]), n.attrs["hi"]).astype(x.dtype)]


@lowering("select")
def _select(n, c, x, y):
    return [jnp.where(c, x, y)]


@lowering("cast")
def _cast(n, x):
    return [x.astype(n.attrs["to"])]


@lowering("reshape")
def _reshape(n, x):
    return [jnp.reshape(x, n.attrs["shape"])]


@lowering("transpose")
def _transpose(n, x):
    return [jnp.transpose(x, n.attrs["perm"])]


@lowering("broadcast")
def _broadcast(n, x):
    return [lax.broadcast_in_dim(x, n.attrs["shape"], n.attrs["dims"])]


@lowering("slice")
def _slice(n, x):
    a = n.attrs
    return [lax.slice(x, a["starts"], a["limits"], a["strides"])]


@lowering("concat")
def _concat(n, *xs):
    return [jnp.concatenate(xs, axis=n.attrs["axis"])]


@lowering("pad")
def _pad(n, x, v):
    return [lax.pad(x, v, [(lo, hi, 0) for lo, hi in n.attrs["pads"]])]


@lowering("take")
def _take(n, x, i):
    ax = n.attrs["axis"]
    return [jnp.take(x, jnp.clip(i, 0, x.shape[ax] - 1), axis=ax)]


@lowering("reduce_sum", "reduce_max", "reduce_min")
def _reduce(n, x):
    return [getattr(jnp, REDUCE[n.op])(x, axis=n.attrs["axes"])]


@lowering("cumsum")
def _cumsum(n, x):
    return [lax.cumsum(x, axis=n.attrs["axis"], reverse=n.attrs["reverse"])]


@lowering("dot")
def _dot(n, x, y):
    a = n.attrs
    acc = jnp.float32 if x.dtype == jnp.float16 else None
    out = lax.dot_general(x, y, ((a["lhs_contract"], a["rhs_contract"]), (a["lhs_batch"], a["rhs_batch"])),
                          precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    return [out.astype(x.dtype)]


@lowering("conv")
def _conv(n, x, w, b=None):
    # channels-last inside (XLA's CPU convolutions are fastest in NHWC/HWIO); the transposes
    # around it cancel against the model's own NHWC<->NCHW transposes in XLA's simplifier
    a = n.attrs
    nsp = x.ndim - 2
    sp = "DHW"[-nsp:]
    last = (0,) + tuple(range(2, 2 + nsp)) + (1,)
    first = (0, nsp + 1) + tuple(range(1, nsp + 1))
    xl = jnp.transpose(x, last)
    wl = jnp.transpose(w, tuple(range(2, 2 + nsp)) + (1, 0))
    dn = lax.conv_dimension_numbers(xl.shape, wl.shape, ("N" + sp + "C", sp + "IO", "N" + sp + "C"))
    acc = jnp.float32 if x.dtype == jnp.float16 else None
    out = lax.conv_general_dilated(xl, wl, a["strides"], [tuple(p) for p in a["pads"]],
                                   lhs_dilation=lhs_dilations(a, nsp), rhs_dilation=a["dilations"],
                                   dimension_numbers=dn, feature_group_count=a["groups"],
                                   precision=lax.Precision.HIGHEST, preferred_element_type=acc)
    if b is not None:
        out = out + b.astype(out.dtype)
    return [jnp.transpose(out, first).astype(x.dtype)]


@lowering("reverse")
def _reverse(n, x):
    return [lax.rev(x, n.attrs["axes"])]


@lowering("pool")
def _pool(n, x):
    a = n.attrs
    acc = jnp.float32 if x.dtype == jnp.float16 else x.dtype  # as the IR: f16 windows sum in f32
    init, combine = (-jnp.inf, lax.max) if a["mode"] == "max" else (0, lax.add)
    out = lax.reduce_window(x.astype(acc), np.array(init, acc), combine, a["window"], a["strides"],
                            [tuple(p) for p in a["pads"]])
    if a["mode"] == "avg":
        out = out / np.array(np.prod(a["window"]), acc)
    return [out.astype(x.dtype)]


def to_jax_function(graph: Graph) -> Callable:
    """f(*inputs, *state) -> tuple(*outputs, *new_state), evaluating the graph op by op in jnp."""
    TABLE.check(graph)
    n_in = len(graph.inputs)

    def f(*args):
        env: dict[int, object] = {}
        for v, x in zip(graph.inputs + [s.input for s in graph.state], args):
            env[id(v)] = x
        read = lambda v: env[id(v)] if id(v) in env else jnp.asarray(v.const)
        for node in graph.nodes:
            outs = TABLE.lower(node, node, *[read(v) for v in node.inputs])
            for v, o in zip(node.outputs, outs):
                env[id(v)] = o
        return tuple(read(v) for v in graph.outputs) + tuple(read(s.output) for s in graph.state)

    f.n_inputs = n_in
    return f

