"""Lower an IR graph to a torch.fx GraphModule: placeholders for the inputs and state, one
call_function node per IR op, parameters as buffers. `TABLE` (a lowering.LoweringTable) maps each op
to fn(node, fx args) -> (function, args, kwargs) of its call; torch is imported when a graph is lowered.

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
from .lowering import LoweringTable

TABLE = LoweringTable("torch", "graphopt/targets/torch_lowering.py")
lowering = TABLE.register


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


# IR op -> the function its inputs are passed to: a torch function by name, or a callable
DIRECT = {
    "neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": _rsqrt, "floor": "floor", "ceil": "ceil",
    "abs": "abs", "sign": "sign", "sin": "sin", "cos": "cos", "tanh": "tanh", "sigmoid": "sigmoid", "erf": "erf",
    "log1p": "log1p", "expm1": "expm1", "not": "logical_not", "is_finite": "isfinite",
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": _div, "max": "maximum",
    "min": "minimum", "pow": "pow", "rem": "fmod", "and": "logical_and", "or": "logical_or", "lt": "lt",
    "le": "le", "gt": "gt", "ge": "ge", "eq": "eq", "ne": "ne", "select": "where",
}


def _direct(fn) -> Callable:
    def call(node, args):
        import torch
        return (getattr(torch, fn) if isinstance(fn, str) else fn), tuple(args), {}
    return call


for _op, _fn in DIRECT.items():
    TABLE.add(_op, _direct(_fn))


@lowering("round")
def _round_call(node, args):
    import torch
    return (torch.round, (args[0],), {}) if node.attrs["mode"] == "half_even" else (_round_away, (args[0],), {})


@lowering("clamp")
def _clamp_call(node, args):
    import torch
    return torch.clamp, (args[0],), {"min": node.attrs["lo"], "max": node.attrs["hi"]}


@lowering("cast")
def _cast_call(node, args):
    import torch
    return _cast, (args[0], getattr(torch, node.attrs["to"])), {}


@lowering("reshape")
def _reshape_call(node, args):
    import torch
    return torch.reshape, (args[0], tuple(node.attrs["shape"])), {}


@lowering("transpose")
def _transpose_call(node, args):
    import torch
    return torch.permute, (args[0], tuple(node.attrs["perm"])), {}


@lowering("broadcast")
def _broadcast_call(node, args):
    return _broadcast, (args[0], node.inputs[0].shape, tuple(node.attrs["shape"]), tuple(node.attrs["dims"])), {}


@lowering("slice")
def _slice_call(node, args):
    a = node.attrs
    return _slice, (args[0], a["starts"], a["limits"], a["strides"]), {}


@lowering("concat")
def _concat_call(node, args):
    import torch
    return torch.cat, (tuple(args),), {"dim": node.attrs["axis"]}


@lowering("pad")
def _pad_call(node, args):
    if not node.inputs[1].is_param:
        raise UnsupportedOpError(f"pad %{node.outputs[0].name} has a non-constant padding value, which the torch "
                                 "lowering lacks; use the xla or onnx target")
    return _pad, (args[0], node.inputs[1].const.item(), [tuple(p) for p in node.attrs["pads"]]), {}


@lowering("take")
def _take_call(node, args):
    axis = node.attrs["axis"]
    return _take, (args[0], args[1], axis, node.inputs[0].shape[axis]), {}


@lowering("reduce_sum", "reduce_max", "reduce_min")
def _reduce_call(node, args):
    import torch
    if not node.attrs["axes"]:
        return torch.clone, (args[0],), {}
    fn = {"reduce_sum": torch.sum, "reduce_max": torch.amax, "reduce_min": torch.amin}[node.op]
    return fn, (args[0],), {"dim": tuple(node.attrs["axes"])}


@lowering("cumsum")
def _cumsum_call(node, args):
    return _cumsum, (args[0], node.attrs["axis"], node.attrs["reverse"]), {}


@lowering("dot")
def _dot_call(node, args):
    from .onnx import einsum_equation
    a = node.attrs
    lhs, rhs = node.inputs
    matmul = (not a["lhs_batch"] and a["lhs_contract"] == (len(lhs.shape) - 1,) and len(rhs.shape) == 2
              and a["rhs_contract"] == (0,))
    return _dot, (args[0], args[1], einsum_equation(len(lhs.shape), len(rhs.shape), a), matmul), {}


@lowering("reverse")
def _reverse_call(node, args):
    import torch
    return torch.flip, (args[0], tuple(node.attrs["axes"])), {}


@lowering("conv")
def _conv_call(node, args):
    a = node.attrs
    if any(d != 1 for d in lhs_dilations(a, len(node.inputs[0].shape) - 2)):
        raise UnsupportedOpError(f"conv %{node.outputs[0].name} has lhs_dilations {a['lhs_dilations']}, which "
                                 "torch's conv lacks; run the expand-lhs-dilation lowering pass first (graphopt "
                                 "build does for this target)")
    b = args[2] if len(args) == 3 else None
    return _conv, (args[0], args[1], b, a["strides"], [tuple(p) for p in a["pads"]], a["dilations"], a["groups"]), {}


@lowering("pool")
def _pool_call(node: Node, args) -> tuple[Callable, tuple, dict]:
    import torch

    from .onnx import pool_plan
    x = args[0]
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

    TABLE.check(graph)
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
        fn, fargs, kwargs = TABLE.lower(node, node, args)
        env[id(node.outputs[0])] = g.call_function(fn, fargs, kwargs)
    outs = [read(v) for v in graph.outputs] + [read(s.output) for s in graph.state]
    g.output(tuple(outs))
    return fx.GraphModule(root, g, class_name="GraphoptStep")
