"""Rewrite rules as data, applied to a fixpoint by one driver (the shape of tinygrad's PatternMatcher).

A pattern names an op (or a set of ops) and sub-patterns, binds values by name and may test a
predicate. A rule's function gets the graph and the bindings and returns a replacement value of
the same type, or None to leave the node alone. Besides the pattern's names, the bindings hold
"_node" (the matched node), "_users" (id(value) -> reading nodes) and "_uses" (id(value) -> number
of readers, graph outputs included), both taken at the start of the sweep; rules that would
duplicate work check them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from graphopt.ir import Graph, Value

from .cleanup import dce


@dataclass(frozen=True)
class Pat:
    ops: tuple[str, ...] | None  # None: any value; ("const",): a parameter
    inputs: tuple["Pat", ...] | None = None  # None: inputs unconstrained
    name: str | None = None
    where: Callable[[Value], bool] | None = None
    commute: bool = False  # binary op whose inputs may match in either order


def P(ops: str | tuple[str, ...], *inputs: Pat, name: str | None = None, where=None, commute=False) -> Pat:
    return Pat((ops,) if isinstance(ops, str) else tuple(ops), tuple(inputs) if inputs else None, name, where,
               commute)


def X(name: str | None = None, where=None) -> Pat:
    """Any value."""
    return Pat(None, None, name, where)


def C(name: str | None = None, where=None) -> Pat:
    """A parameter (constant)."""
    return Pat(("const",), None, name, where)


def match(pat: Pat, v: Value, bound: dict) -> bool:
    if pat.ops == ("const",):
        if not v.is_param:
            return False
    elif pat.ops is not None:
        node = v.producer
        if node is None or node.op not in pat.ops:
            return False
        if pat.inputs is not None:
            if len(node.inputs) != len(pat.inputs):
                return False
            orders = [node.inputs]
            if pat.commute and len(node.inputs) == 2:
                orders.append(node.inputs[::-1])
            for order in orders:
                trial = dict(bound)
                if all(match(p, x, trial) for p, x in zip(pat.inputs, order)):
                    bound.update(trial)
                    break
            else:
                return False
    if pat.where is not None and not pat.where(v):
        return False
    if pat.name is not None:
        if pat.name in bound and bound[pat.name] is not v:
            return False  # the same name must bind the same value
        bound[pat.name] = v
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Pat
    rewrite: Callable[[Graph, dict], Value | None]


def apply_rules(graph: Graph, rules: list[Rule], max_sweeps: int = 50) -> bool:
    """Apply rules bottom-up (producers before consumers) until none fires. Returns whether any did."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.pattern.ops or ():
            by_op.setdefault(op, []).append(r)
    changed_any = False
    for _ in range(max_sweeps):
        subst: dict[int, Value] = {}
        users = graph.users()
        uses = {k: len(v) for k, v in users.items()}
        for v in graph.sinks():
            uses[id(v)] = uses.get(id(v), 0) + 1
        resolve = lambda v: subst.get(id(v), v)
        changed = False
        for node in list(graph.nodes):
            node.inputs = [resolve(v) for v in node.inputs]
            if len(node.outputs) != 1:
                continue
            out = node.outputs[0]
            for rule in by_op.get(node.op, ()):
                bound = {"_node": node, "_uses": uses, "_users": users}
                if not match(rule.pattern, out, bound):
                    continue
                new = rule.rewrite(graph, bound)
                if new is None or new is out:
                    continue
                if new.type != out.type:
                    raise AssertionError(f"rule {rule.name} changed the type {out.type} -> {new.type}")
                subst[id(out)] = resolve(new)
                changed = True
                break
        if not changed:
            break
        for node in graph.nodes:  # nodes appended by rules during the sweep
            node.inputs = [resolve(v) for v in node.inputs]
        graph.outputs = [resolve(v) for v in graph.outputs]
        for s in graph.state:
            s.output = resolve(s.output)
        graph.toposort()
        dce(graph)  # replaced nodes must not match again
        changed_any = True
    else:
        raise RuntimeError(f"rewrite rules did not reach a fixpoint in {max_sweeps} sweeps")
    return changed_any
