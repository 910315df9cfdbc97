"""ONNX lowering choices that emit a group of IR nodes as fewer ONNX nodes (all exact).

The ONNX emitter lowers IR nodes one by one (graphopt/targets/onnx.py). Some IR patterns have a
smaller spelling in ONNX's operator set; each fusion here finds its pattern on the whole graph
first and returns the group's emitter, run at the group's first node, and the nodes the group
swallows:

- split:          slices that partition one axis of a value          -> one Split
- sibling-dots:   x @ W1, x @ W2 (+ b2), ... (same x, constant W, b)  -> one MatMul (Gemm with biases) + Split
- gemm:           x @ W + b (2-D x, constant W and b)                 -> one Gemm
- reduce-keepdims: reduce(x) reshaped to put the reduced axes back    -> one Reduce with keepdims=1
- sum-square:     reduce_sum(x * x)                                   -> one ReduceSumSquare
- div-by-sqrt:    x * rsqrt(y)                                        -> Div(x, Sqrt(y)) (ONNX has no Rsqrt)

A swallowed node's output is never a graph output (those keep their names) and has no other reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..ir import Graph, Node, Value, dot_weight_axis

# emit(builder, name: Value -> ONNX name, out: Value -> ONNX name for a new output) -> None
Emit = Callable[[object, Callable[[Value], str], Callable[[Value], str]], None]


@dataclass
class Plan:
    emit: dict[int, Emit] = field(default_factory=dict)  # id(first node of a group) -> the group's emitter
    skip: set[int] = field(default_factory=set)  # ids of nodes a group emits (nothing to emit at them)

    def claim(self, at: Node, group: list[Node], emit: Emit) -> None:
        """Emit the group at node `at` (where every input from outside the group is defined) and
        nothing at its other nodes."""
        self.emit[id(at)] = emit
        self.skip.update(id(n) for n in group if n is not at)

    def free(self, *nodes: Node) -> bool:
        return all(id(n) not in self.skip and id(n) not in self.emit for n in nodes)


def plan(graph: Graph) -> Plan:
    users = graph.users()
    sinks = {id(v) for v in graph.sinks()}
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    p = Plan()
    only_reader = lambda v: (lambda us: us[0] if len(us) == 1 and id(v) not in sinks else None)(users.get(id(v), []))
    for fusion in (_sibling_dots, _splits, _gemm, _reductions, _div_by_sqrt):
        fusion(graph, p, users, only_reader, order)
    return p


def _matmul_like(n: Node) -> bool:
    """x[..., k] @ W[k, n] with a constant 2-D W: an ONNX MatMul / Gemm as it stands."""
    return dot_weight_axis(n) == len(n.inputs[0].shape) - 1


# ---- split ---------------------------------------------------------------------------------------------


def _slice_axis(n: Node) -> int | None:
    """The one axis a stride-1 slice cuts, or None."""
    a, shape = n.attrs, n.inputs[0].shape
    cut = [i for i, (s, l, st) in enumerate(zip(a["starts"], a["limits"], a["strides"])) if (s, l, st) != (0, shape[i], 1)]
    if len(cut) != 1 or a["strides"][cut[0]] != 1:
        return None
    return cut[0]


def _splits(graph, p: Plan, users, only_reader, order) -> None:
    for x_id, readers in users.items():
        by_axis: dict[int, list[Node]] = {}
        for n in readers:
            if n.op == "slice" and p.free(n):
                ax = _slice_axis(n)
                if ax is not None:
                    by_axis.setdefault(ax, []).append(n)
        for ax, group in by_axis.items():
            group = sorted({id(n): n for n in group}.values(), key=lambda n: n.attrs["starts"][ax])
            x = group[0].inputs[0]
            bounds = [(n.attrs["starts"][ax], n.attrs["limits"][ax]) for n in group]
            if len(group) < 2 or bounds[0][0] != 0 or bounds[-1][1] != x.shape[ax] \
                    or any(bounds[i][1] != bounds[i + 1][0] for i in range(len(bounds) - 1)):
                continue
            first = min(group, key=lambda n: order[id(n)])

            def emit(b, name, out, group=group, ax=ax, sizes=[hi - lo for lo, hi in bounds]):
                outs = [out(n.outputs[0]) for n in group]
                b.nodes.append(b.helper.make_node("Split", [name(group[0].inputs[0]), b.ints(sizes)], outs, axis=ax))
            p.claim(first, group, emit)


# ---- sibling dots ------------------------------------------------------------------------------------------


def _sibling_dots(graph, p: Plan, users, only_reader, order) -> None:
    for x_id, readers in users.items():
        groups: dict[tuple, list[Node]] = {}
        for n in readers:
            if _matmul_like(n) and n.inputs[0] is not n.inputs[1]:
                groups.setdefault((n.attrs_key(), n.inputs[1].dtype), []).append(n)
        for group in groups.values():
            group = sorted({id(n): n for n in group}.values(), key=lambda n: order[id(n)])
            if len(group) < 2:
                continue
            biases = [_column_bias(n, p, only_reader) if len(n.inputs[0].shape) == 2 else None for n in group]
            biases = biases if any(biases) else [None] * len(group)

            def emit(b, name, out, group=group, biases=biases):
                W = np.concatenate([n.inputs[1].const for n in group], axis=1)
                sizes = [n.inputs[1].shape[1] for n in group]
                ins = [name(group[0].inputs[0]), b.const(W, "w")]
                if any(biases):  # x @ [W1 W2 ..] + [b1 0 ..]: one Gemm
                    vec = np.concatenate([bias[1] if bias else np.zeros(k, W.dtype) for bias, k in zip(biases, sizes)])
                    y = b.node("Gemm", ins + [b.const(vec, "bias")])
                else:
                    y = b.node("MatMul", ins)
                outs = [out(bias[0].outputs[0] if bias else n.outputs[0]) for n, bias in zip(group, biases)]
                b.nodes.append(b.helper.make_node("Split", [y, b.ints(sizes)], outs,
                                                  axis=len(group[0].outputs[0].shape) - 1))
            p.claim(group[0], group + [bias[0] for bias in biases if bias], emit)


# ---- gemm ----------------------------------------------------------------------------------------------------


def _column_bias(n: Node, p: Plan, only_reader) -> tuple[Node, np.ndarray] | None:
    """(the add, its bias as a vector over the output's last axis) where x @ W is read only by + bias."""
    add = only_reader(n.outputs[0])
    if add is None or add.op != "add" or not p.free(add) or add.outputs[0].shape != n.outputs[0].shape:
        return None
    bias = next((v for v in add.inputs if v is not n.outputs[0]), None)
    N = n.outputs[0].shape[-1]
    if bias is None or not bias.is_param or not (bias.type.size in (1, N) and all(d == 1 for d in bias.shape[:-1])):
        return None
    return add, np.broadcast_to(bias.const.reshape(-1), (N,)).astype(bias.dtype)


def _gemm(graph, p: Plan, users, only_reader, order) -> None:
    for n in graph.nodes:
        if not _matmul_like(n) or len(n.inputs[0].shape) != 2 or not p.free(n):
            continue
        bias = _column_bias(n, p, only_reader)
        if bias is None:
            continue

        def emit(b, name, out, n=n, add=bias[0], vec=bias[1]):
            b.nodes.append(b.helper.make_node("Gemm", [name(n.inputs[0]), name(n.inputs[1]), b.const(vec, "bias")],
                                              [out(add.outputs[0])]))
        p.claim(n, [n, bias[0]], emit)


# ---- reductions ------------------------------------------------------------------------------------------------

REDUCE_ONNX = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}


def _reductions(graph, p: Plan, users, only_reader, order) -> None:
    for n in graph.nodes:
        if n.op not in REDUCE_ONNX or not n.attrs["axes"] or not p.free(n):
            continue
        x, axes = n.inputs[0], n.attrs["axes"]
        group, src, op_type = [n], x, REDUCE_ONNX[n.op]
        sq = x.producer
        if n.op == "reduce_sum" and sq is not None and sq.op == "mul" and sq.inputs[0] is sq.inputs[1] \
                and only_reader(x) is n and p.free(sq):
            group, src, op_type = [sq, n], sq.inputs[0], "ReduceSumSquare"
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        r = only_reader(n.outputs[0])
        last = n
        if r is not None and r.op == "reshape" and r.outputs[0].shape == kept and p.free(r):
            group.append(r)
            last = r
        if len(group) == 1:
            continue

        def emit(b, name, out, src=src, axes=axes, op_type=op_type, last=last, keep=last is not n):
            b.nodes.append(b.helper.make_node(op_type, [name(src), b.ints(axes)], [out(last.outputs[0])],
                                              keepdims=int(keep)))
        p.claim(n, group, emit)


# ---- div by sqrt ------------------------------------------------------------------------------------------------


def _div_by_sqrt(graph, p: Plan, users, only_reader, order) -> None:
    for n in graph.nodes:
        if n.op != "mul" or not p.free(n):
            continue
        for x, r in (n.inputs, n.inputs[::-1]):
            rn = r.producer
            if rn is None or rn.op != "rsqrt" or only_reader(r) is not n or not p.free(rn) or x is r \
                    or np.broadcast_shapes(x.shape, r.shape) != n.outputs[0].shape:
                continue

            def emit(b, name, out, n=n, x=x, y=rn.inputs[0]):
                b.nodes.append(b.helper.make_node("Div", [name(x), b.node("Sqrt", [name(y)])], [out(n.outputs[0])]))
            p.claim(n, [rn, n], emit)
            break
