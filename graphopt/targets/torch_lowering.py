"""Lower an IR graph to a torch.fx GraphModule: placeholders for the inputs and state, one
call_function node per IR op (a table of torch functions), parameters as buffers.

forward(*inputs, *state) -> (*outputs, *new_state). Convolutions stay channels-first (torch's own
layout), so no layout work is needed here.
"""
from __future__ import annotations

import operator
from typing import Callable

import numpy as np

from ..ir import Graph, Node


class UnsupportedOpError(ValueError):
    """The graph has an op the torch lowering does not handle."""


def _slice(x, starts, limits, strides):
    return x[tuple(slice(s, l, st) for s, l, st in zip(starts, limits, strides))]


def _broadcast(x, src_shape, shape, dims):
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = src_shape[i]
    return x.reshape(expanded).expand(shape)


def _take(x, idx, axis, size):
    import torch
    flat = torch.clamp(idx, 0, size - 1).reshape(-1).long()
    out = torch.index_select(x, axis, flat)
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


def _pad(x, v, pads):
    import torch
    flat = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    return torch.nn.functional.pad(x, flat, value=float(v))


def _cumsum(x, axis, reverse):
    import torch
    if reverse:
        return torch.flip(torch.cumsum(torch.flip(x, (axis,)), axis), (axis,))
    return torch.cumsum(x, axis)


def _round_away(x):
    import torch
    t = torch.trunc(x)
    return torch.where((x - t).abs() >= 0.5, t + torch.sign(x), t)


def _div(x, y):
    import torch
    if x.dtype.is_floating_point:
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


def _cast(x, dtype):
    return x.to(dtype)


def _rsqrt(x):
    import torch
    return torch.rsqrt(x)


def _dot(x, y, equation, matmul):
    import torch
    return torch.matmul(x, y) if matmul else torch.einsum(equation, x, y)


def _conv(x, w, b, strides, pads, dilations, groups):
    import torch
    F = torch.nn.functional
    nsp = x.dim() - 2
    if any(lo != hi for lo, hi in pads):
        x = _pad(x, 0.0, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
        padding = 0
    else:
        padding = tuple(lo for lo, _ in pads)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nsp]
    return fn(x, w, b, tuple(strides), padding, tuple(dilations), groups)


def _table() -> dict[str, Callable]:
    import torch
    t = {
        "neg": torch.neg, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": _rsqrt,
        "floor": torch.floor, "ceil": torch.ceil, "abs": torch.abs, "sign": torch.sign, "sin": torch.sin,
        "cos": torch.cos, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf, "log1p": torch.log1p,
        "expm1": torch.expm1, "not": torch.logical_not, "is_finite": torch.isfinite,
        "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _div, "max": torch.maximum,
        "min": torch.minimum, "pow": torch.pow, "rem": torch.fmod, "and": torch.logical_and,
        "or": torch.logical_or, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq,
        "ne": torch.ne, "select": torch.where,
    }
    return t


def _call(node: Node, args: list) -> tuple[Callable, tuple, dict]:
    """(function, args, kwargs) of one IR node, given its (fx) input arguments."""
    import torch
    op, a = node.op, node.attrs
    table = _table()
    if op in table:
        return table[op], tuple(args), {}
    x = args[0]
    if op == "round":
        return (torch.round, (x,), {}) if a["mode"] == "half_even" else (_round_away, (x,), {})
    if op == "clamp":
        return torch.clamp, (x,), {"min": a["lo"], "max": a["hi"]}
    if op == "cast":
        return _cast, (x, getattr(torch, a["to"])), {}
    if op == "reshape":
        return torch.reshape, (x, tuple(a["shape"])), {}
    if op == "transpose":
        return torch.permute, (x, tuple(a["perm"])), {}
    if op == "broadcast":
        return _broadcast, (x, node.inputs[0].shape, tuple(a["shape"]), tuple(a["dims"])), {}
    if op == "slice":
        return _slice, (x, a["starts"], a["limits"], a["strides"]), {}
    if op == "concat":
        return torch.cat, (tuple(args),), {"dim": a["axis"]}
    if op == "pad":
        return _pad, (x, node.inputs[1].const.item() if node.inputs[1].is_param else 0.0,
                      [tuple(p) for p in a["pads"]]), {}
    if op == "take":
        return _take, (x, args[1], a["axis"], node.inputs[0].shape[a["axis"]]), {}
    if op in ("reduce_sum", "reduce_max", "reduce_min"):
        fn = {"reduce_sum": torch.sum, "reduce_max": torch.amax, "reduce_min": torch.amin}[op]
        if not a["axes"]:
            return torch.clone, (x,), {}
        return fn, (x,), {"dim": tuple(a["axes"])}
    if op == "cumsum":
        return _cumsum, (x, a["axis"], a["reverse"]), {}
    if op == "dot":
        from .onnx import einsum_equation
        lhs, rhs = node.inputs
        matmul = (not a["lhs_batch"] and a["lhs_contract"] == (len(lhs.shape) - 1,) and len(rhs.shape) == 2
                  and a["rhs_contract"] == (0,))
        return _dot, (x, args[1], einsum_equation(len(lhs.shape), len(rhs.shape), a), matmul), {}
    if op == "conv":
        b = args[2] if len(args) == 3 else None
        return _conv, (x, args[1], b, a["strides"], [tuple(p) for p in a["pads"]], a["dilations"], a["groups"]), {}
    raise UnsupportedOpError(f"op '{op}' has no torch lowering (graphopt/targets/torch_lowering.py)")


def to_graph_module(graph: Graph):
    """A torch.fx.GraphModule computing (*outputs, *new_state) from (*inputs, *state)."""
    import torch
    import torch.fx as fx

    if any(n.op == "pad" and not n.inputs[1].is_param for n in graph.nodes):
        raise UnsupportedOpError("pad with a non-constant padding value has no torch lowering")
    root = torch.nn.Module()
    g = fx.Graph()
    env: dict[int, fx.Node] = {}
    for i, v in enumerate(graph.inputs + [s.input for s in graph.state]):
        env[id(v)] = g.placeholder(f"in_{i}_{v.name}".replace("/", "_").replace(".", "_")[:60])
    consts: dict[int, fx.Node] = {}

    def read(v):
        if id(v) in env:
            return env[id(v)]
        if v.is_param:
            if id(v) not in consts:
                name = f"c{len(consts)}"
                root.register_buffer(name, torch.from_numpy(np.array(v.const)))
                consts[id(v)] = g.get_attr(name)
            return consts[id(v)]
        raise KeyError(v.name)

    for node in graph.nodes:
        args = [read(v) for v in node.inputs]
        fn, fargs, kwargs = _call(node, args)
        env[id(node.outputs[0])] = g.call_function(fn, fargs, kwargs)
    outs = [read(v) for v in graph.outputs] + [read(s.output) for s in graph.state]
    g.output(tuple(outs))
    return fx.GraphModule(root, g, class_name="GraphoptStep")
