"""Whole-graph cleanup passes: dead-code elimination, common-subexpression elimination, constant folding."""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Value, get_op

FOLD_GROWTH_LIMIT = 4096  # fold a node only if its result is no larger than this or than its inputs


def dce(graph: Graph) -> bool:
    """Drop nodes whose outputs nothing observes."""
    live: set[int] = {id(v) for v in graph.sinks()}
    keep = []
    for node in reversed(graph.nodes):
        if any(id(v) in live for v in node.outputs):
            keep.append(node)
            live.update(id(v) for v in node.inputs)
    changed = len(keep) != len(graph.nodes)
    graph.nodes = keep[::-1]
    return changed


def _param_key(v: Value):
    return ("const", v.dtype, v.shape, v.const.tobytes()) if v.const.size <= 4096 else ("param", id(v))


def cse(graph: Graph) -> bool:
    """Merge nodes with the same op, attributes and inputs, and parameters with the same contents."""
    canon: dict = {}
    subst: dict[int, Value] = {}
    resolve = lambda v: subst.get(id(v), v)
    keep = []
    changed = False
    for node in graph.nodes:
        inputs = []
        for v in node.inputs:
            v = resolve(v)
            if v.is_param:
                v = canon.setdefault(_param_key(v), v)
            inputs.append(v)
        if inputs != node.inputs:
            node.inputs = inputs
            changed = True
        key = (node.op, node.attrs_key(), tuple(id(v) for v in node.inputs))
        first = canon.get(key)
        if first is None:
            canon[key] = node
            keep.append(node)
        else:
            for old, new in zip(node.outputs, first.outputs):
                subst[id(old)] = new
            changed = True
    graph.nodes = keep
    graph.outputs = [resolve(v) for v in graph.outputs]
    for s in graph.state:
        s.output = resolve(s.output)
    return changed


def fold_constants(graph: Graph) -> bool:
    """Evaluate every node whose inputs are all parameters (NumPy reference semantics) into a parameter."""
    subst: dict[int, Value] = {}
    keep = []
    changed = False
    for node in graph.nodes:
        node.inputs = [subst.get(id(v), v) for v in node.inputs]
        out_size = sum(v.type.size for v in node.outputs)
        in_size = max((v.type.size for v in node.inputs), default=0)
        if node.inputs and all(v.is_param for v in node.inputs) and \
                (out_size <= FOLD_GROWTH_LIMIT or out_size <= in_size):
            results = get_op(node.op).compute(*[v.const for v in node.inputs], node.attrs)
            for v, r in zip(node.outputs, results):
                subst[id(v)] = graph.add_param(np.asarray(r, dtype=v.dtype).reshape(v.shape))
            changed = True
        else:
            keep.append(node)
    graph.nodes = keep
    graph.outputs = [subst.get(id(v), v) for v in graph.outputs]
    for s in graph.state:
        s.output = subst.get(id(s.output), s.output)
    return changed
