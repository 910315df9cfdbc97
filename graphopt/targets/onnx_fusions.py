"""ONNX fused lowerings: groups of IR nodes the ONNX emitter (graphopt/targets/onnx.py) writes as fewer
ONNX nodes, all exact, declared as rules in RULES:

- sibling-dots:    x @ W1, x @ W2 (+ b2), ... (same x, constant W, b)  -> one MatMul (Gemm with biases) + Split
- split:           slices that partition one axis of a value          -> one Split
- gemm:            x @ W + b (2-D x, constant W and b)                 -> one Gemm
- reduce-keepdims: reduce(x) reshaped to put the reduced axes back    -> one Reduce with keepdims=1
  (sum-square:     reduce_sum(x * x), reshaped or not                 -> one ReduceSumSquare)
- div-by-sqrt:     x * rsqrt(y)                                        -> Div(x, Sqrt(y)) (ONNX has no Rsqrt)

A `Rule` matches a pattern (passes/rewrite.py's P/X/C) at each node's output, in graph order; a
`Siblings` rule matches the readers of one value (its pattern's X("x") bound to that value) and groups
those with the same key. The rule's `group` function checks what the pattern cannot say (single
readers, bias shapes) and returns a `Group`: the node to emit the group at (where every input from
outside the group is defined), its nodes, and its emitter. `plan` applies the rules in order over the
whole graph; a node joins one group at most, and a swallowed node's output is never a graph output
(those keep their names) and has no other reader. The emitter lowers every other node on its own.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from ..ir import Graph, Node, Value, dot_weight_axis
from ..passes.rewrite import C, P, Pat, X, match

# emit(builder, name: Value -> ONNX name, out: Value -> ONNX name for a new output) -> None
Emit = Callable[[object, Callable[[Value], str], Callable[[Value], str]], None]


@dataclass(frozen=True)
class Group:
    at: Node  # where the group is emitted
    nodes: list[Node]  # every node the group emits (at included)
    emit: Emit


@dataclass
class Plan:
    emit: dict[int, Emit] = field(default_factory=dict)  # id(first node of a group) -> the group's emitter
    skip: set[int] = field(default_factory=set)  # ids of nodes a group emits (nothing to emit at them)
    fired: Counter = field(default_factory=Counter)  # rule name -> groups

    def free(self, *nodes: Node) -> bool:
        return all(id(n) not in self.skip and id(n) not in self.emit for n in nodes)

    def claim(self, rule: str, group: Group | None) -> bool:
        """Take the group if all its nodes are free."""
        if group is None or not self.free(*group.nodes):
            return False
        self.emit[id(group.at)] = group.emit
        self.skip.update(id(n) for n in group.nodes if n is not group.at)
        self.fired[rule] += 1
        return True


class Context:
    """The graph being planned: its readers, sinks and node order, and the plan so far."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.users = graph.users()
        self.values = {id(v): v for n in graph.nodes for v in n.inputs}
        self.sinks = {id(v) for v in graph.sinks()}
        self.order = {id(n): i for i, n in enumerate(graph.nodes)}
        self.plan = Plan()

    def only_reader(self, v: Value) -> Node | None:
        """The one node that reads v, where v is not a graph output either."""
        us = self.users.get(id(v), [])
        return us[0] if len(us) == 1 and id(v) not in self.sinks else None


@dataclass(frozen=True)
class Rule:
    """Nodes whose output matches one of `patterns` (tried in order) and whose group `group` returns."""
    name: str
    patterns: tuple[Pat, ...]
    group: Callable[[dict, Context], Group | None]  # (bindings, with "_node": the matched node) -> group

    def apply(self, ctx: Context) -> None:
        for node in ctx.graph.nodes:
            for pat in self.patterns:
                bound = {"_node": node}
                if match(pat, node.outputs[0], bound) and ctx.plan.claim(self.name, self.group(bound, ctx)):
                    break


@dataclass(frozen=True)
class Siblings:
    """Readers of a value x whose output matches `reader` (X("x") bound to x), grouped by `key` (None: left
    out); `group` gets each group of two or more, in graph order."""
    name: str
    reader: Pat
    key: Callable[[Node, Context], Hashable | None]
    group: Callable[[Value, Hashable, list[Node], Context], Group | None]  # (x, key, readers, ctx)

    def apply(self, ctx: Context) -> None:
        for x_id, readers in ctx.users.items():
            x = ctx.values[x_id]
            groups: dict[Hashable, dict[int, Node]] = {}
            for n in readers:
                if match(self.reader, n.outputs[0], {"x": x}) and (k := self.key(n, ctx)) is not None:
                    groups.setdefault(k, {})[id(n)] = n
            for key, nodes in groups.items():
                if len(nodes) >= 2:
                    nodes = sorted(nodes.values(), key=lambda n: ctx.order[id(n)])
                    ctx.plan.claim(self.name, self.group(x, key, nodes, ctx))


def plan(graph: Graph) -> Plan:
    ctx = Context(graph)
    for rule in RULES:
        rule.apply(ctx)
    return ctx.plan


def _matmul_like(v: Value) -> bool:
    """x[..., k] @ W[k, n] with a constant 2-D W: an ONNX MatMul / Gemm as it stands."""
    n = v.producer
    return dot_weight_axis(n) == len(n.inputs[0].shape) - 1


MATMUL = P("dot", X("x"), C("w"), where=_matmul_like)


def _column_bias(n: Node, ctx: Context) -> tuple[Node, np.ndarray] | None:
    """(the add, its bias as a vector over the output's last axis) where x @ W is read only by + bias."""
    add = ctx.only_reader(n.outputs[0])
    if add is None or add.op != "add" or not ctx.plan.free(add) or add.outputs[0].shape != n.outputs[0].shape:
        return None
    bias = next((v for v in add.inputs if v is not n.outputs[0]), None)
    N = n.outputs[0].shape[-1]
    if bias is None or not bias.is_param or not (bias.type.size in (1, N) and all(d == 1 for d in bias.shape[:-1])):
        return None
    return add, np.broadcast_to(bias.const.reshape(-1), (N,)).astype(bias.dtype)


# ---- sibling dots ------------------------------------------------------------------------------------------


def _dots_key(n: Node, ctx: Context) -> Hashable | None:
    return None if n.inputs[0] is n.inputs[1] else (n.attrs_key(), n.inputs[1].dtype)


def _sibling_dots(x: Value, key, group: list[Node], ctx: Context) -> Group:
    biases = [_column_bias(n, ctx) if len(x.shape) == 2 else None for n in group]
    biases = biases if any(biases) else [None] * len(group)

    def emit(b, name, out):
        W = np.concatenate([n.inputs[1].const for n in group], axis=1)
        sizes = [n.inputs[1].shape[1] for n in group]
        ins = [name(x), b.const(W, "w")]
        if any(biases):  # x @ [W1 W2 ..] + [b1 0 ..]: one Gemm
            vec = np.concatenate([bias[1] if bias else np.zeros(k, W.dtype) for bias, k in zip(biases, sizes)])
            y = b.node("Gemm", ins + [b.const(vec, "bias")])
        else:
            y = b.node("MatMul", ins)
        outs = [out(bias[0].outputs[0] if bias else n.outputs[0]) for n, bias in zip(group, biases)]
        b.nodes.append(b.helper.make_node("Split", [y, b.ints(sizes)], outs, axis=len(group[0].outputs[0].shape) - 1))
    return Group(group[0], group + [bias[0] for bias in biases if bias], emit)


# ---- split ---------------------------------------------------------------------------------------------


def _slice_axis(n: Node, ctx: Context) -> int | None:
    """The one axis a stride-1 slice cuts (the key of a split), or None (also where the slice is taken)."""
    a, shape = n.attrs, n.inputs[0].shape
    cut = [i for i, (s, l, st) in enumerate(zip(a["starts"], a["limits"], a["strides"]))
           if (s, l, st) != (0, shape[i], 1)]
    if len(cut) != 1 or a["strides"][cut[0]] != 1 or not ctx.plan.free(n):
        return None
    return cut[0]


def _split(x: Value, ax: int, group: list[Node], ctx: Context) -> Group | None:
    parts = sorted(group, key=lambda n: n.attrs["starts"][ax])
    bounds = [(n.attrs["starts"][ax], n.attrs["limits"][ax]) for n in parts]
    if bounds[0][0] != 0 or bounds[-1][1] != x.shape[ax] or any(bounds[i][1] != bounds[i + 1][0]
                                                                  for i in range(len(bounds) - 1)):
        return None

    def emit(b, name, out):
        b.nodes.append(b.helper.make_node("Split", [name(x), b.ints([hi - lo for lo, hi in bounds])],
                                          [out(n.outputs[0]) for n in parts], axis=ax))
    return Group(group[0], parts, emit)


# ---- gemm ----------------------------------------------------------------------------------------------------


def _gemm(bound: dict, ctx: Context) -> Group | None:
    n = bound["_node"]
    bias = _column_bias(n, ctx) if len(bound["x"].shape) == 2 else None
    if bias is None:
        return None
    add, vec = bias

    def emit(b, name, out):
        b.nodes.append(b.helper.make_node("Gemm", [name(n.inputs[0]), name(n.inputs[1]), b.const(vec, "bias")],
                                          [out(add.outputs[0])]))
    return Group(n, [n, add], emit)


# ---- reductions ------------------------------------------------------------------------------------------------

REDUCE_ONNX = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}
SQUARE = P("mul", X("a"), X("a"), name="sq")


def _reduction(bound: dict, ctx: Context) -> Group | None:
    n, x = bound["_node"], bound["x"]
    axes = n.attrs["axes"]
    group, src, op_type = [n], x, REDUCE_ONNX[n.op]
    sq = {}
    if n.op == "reduce_sum" and match(SQUARE, x, sq) and ctx.only_reader(x) is n and ctx.plan.free(x.producer):
        group, src, op_type = [x.producer, n], sq["a"], "ReduceSumSquare"
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    r = ctx.only_reader(n.outputs[0])
    last = n
    if r is not None and r.op == "reshape" and r.outputs[0].shape == kept and ctx.plan.free(r):
        group.append(r)
        last = r
    if len(group) == 1:
        return None

    def emit(b, name, out):
        b.nodes.append(b.helper.make_node(op_type, [name(src), b.ints(axes)], [out(last.outputs[0])],
                                          keepdims=int(last is not n)))
    return Group(n, group, emit)


# ---- div by sqrt ------------------------------------------------------------------------------------------------


def _div_by_sqrt(bound: dict, ctx: Context) -> Group | None:
    n, x, r = bound["_node"], bound["x"], bound["r"]
    if ctx.only_reader(r) is not n or x is r or np.broadcast_shapes(x.shape, r.shape) != n.outputs[0].shape:
        return None

    def emit(b, name, out):
        b.nodes.append(b.helper.make_node("Div", [name(x), b.node("Sqrt", [name(bound["y"])])], [out(n.outputs[0])]))
    return Group(n, [r.producer, n], emit)


RSQRT = P("rsqrt", X("y"), name="r")
RULES = [
    Siblings("sibling-dots", MATMUL, _dots_key, _sibling_dots),
    Siblings("split", P("slice", X("x")), _slice_axis, _split),
    Rule("gemm", (MATMUL,), _gemm),
    Rule("reduce-keepdims", (P(tuple(REDUCE_ONNX), X("x"), where=lambda v: bool(v.producer.attrs["axes"])),),
         _reduction),
    Rule("div-by-sqrt", (P("mul", X("x"), RSQRT), P("mul", RSQRT, X("x"))), _div_by_sqrt),
]
