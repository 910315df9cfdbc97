"""Lower an IR graph to a torch.fx GraphModule: placeholders for the inputs and state, one
call_function node per IR op (a table of torch functions), parameters as buffers.

forward(*inputs, *state) -> (*outputs, *new_state). Convolutions keep the IR's channels-first shapes;
their inputs are laid out channels-last in memory (torch's memory_format), which torch's CPU
convolutions run faster, and the conv outputs stay so for the ops that follow.
"""
from __future__ import annotations

import operator
from typing import Callable

import numpy as np

from ..ir import Graph, Node
from ..ir.ops import lhs_dilations
from . import UnsupportedOpError  # noqa: F401  (one class for every target; raised here)


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
    if nsp in CHANNELS_LAST:  # torch's CPU convs are faster channels-last; a no-op when x already is
        x = x.contiguous(memory_format=getattr(torch, CHANNELS_LAST[nsp]))
    return fn(x, w, b, tuple(strides), padding, tuple(dilations), groups)


# the IR's convs are channels-first; torch runs them on channels-last memory (same shapes, other strides)
CHANNELS_LAST = {2: "channels_last", 3: "channels_last_3d"}


def _window_pool(x, mode, window, strides, pads):
    """torch pooling of [N, C, *spatial] (1 to 3 axes); 1-D pools as 2-D, for avg_pool2d's divisor_override."""
    import torch
    F = torch.nn.functional
    if len(window) == 1:
        return _window_pool(x.unsqueeze(2), mode, (1,) + window, (1,) + strides, ((0, 0),) + pads).squeeze(2)
    if any(lo != hi or lo > k // 2 for (lo, hi), k in zip(pads, window)):  # torch pads evenly, at most k // 2
        x = _pad(x, float("-inf") if mode == "max" else 0.0, [(0, 0), (0, 0)] + list(pads))
        pads = ((0, 0),) * len(pads)
    padding = tuple(lo for lo, _ in pads)
    if mode == "max":  # pads with -inf
        return {2: F.max_pool2d, 3: F.max_pool3d}[len(window)](x, window, strides, padding)
    return {2: F.avg_pool2d, 3: F.avg_pool3d}[len(window)](x, window, strides, padding, count_include_pad=True,
                                                           divisor_override=1 if mode == "sum" else None)


def _pool(x, mode, perm, folded, unfolded, window, strides, pads, inverse):
    """An IR pool: trivially windowed axes moved first (perm) and folded into N and C (see onnx.pool_plan)."""
    if perm:
        x = x.permute(perm)
    if folded:
        x = x.reshape(folded)
    y = _window_pool(x, mode, window, strides, pads)
    if folded:
        y = y.reshape(unfolded)
    return y.permute(inverse) if inverse else y


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
    if op == "reverse":
        return torch.flip, (x, tuple(a["axes"])), {}
    if op == "pool":
        return _pool_call(node, x)
    if op == "conv":
        if any(d != 1 for d in lhs_dilations(a, len(node.inputs[0].shape) - 2)):
            raise UnsupportedOpError(f"conv %{node.outputs[0].name} has lhs_dilations {a['lhs_dilations']}, which "
                                     "torch's conv lacks; run the expand-lhs-dilation lowering pass first (graphopt "
                                     "build does for this target)")
        b = args[2] if len(args) == 3 else None
        return _conv, (x, args[1], b, a["strides"], [tuple(p) for p in a["pads"]], a["dilations"], a["groups"]), {}
    raise UnsupportedOpError(f"op '{op}' has no torch lowering (graphopt/targets/torch_lowering.py)")


def _pool_call(node: Node, x) -> tuple[Callable, tuple, dict]:
    import torch

    from .onnx import pool_plan
    plan = pool_plan(node.inputs[0].shape, node.outputs[0].shape, node.attrs)
    if not plan.window:
        return torch.clone, (x,), {}
    if len(plan.window) > 3:
        raise UnsupportedOpError(f"pool %{node.outputs[0].name} has a window on {len(plan.window)} axes; torch "
                                 "pools at most 3 (split it into two pools: a box window is separable)")
    return _pool, (x, node.attrs["mode"], plan.perm if plan.inverse else None, plan.folded, plan.unfolded,
                   plan.window, plan.strides, plan.pads, plan.inverse), {}


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
