"""Rewrite rules as data, applied to a fixpoint by one driver (the shape of tinygrad's PatternMatcher).

A pattern names an op (or a set of ops), its attributes and sub-patterns, binds values by name and may
test a predicate. A rule's function gets the graph and the bindings and returns a replacement value of
the same type, or `Reject("why")` (or None) to leave the node alone. Besides the pattern's names, the
bindings hold "_node" (the matched node), "_users" (id(value) -> reading nodes) and "_uses" (id(value)
-> number of readers, graph outputs included), both taken at the start of the sweep; rules that would
duplicate work check them.

`apply_rules` returns how often each rule fired; `why_not(rule, graph, value)` says why a rule does not
fire on a value (the first part of the pattern that does not match, or the rule's own reason), for
tests and `graphopt explain`. Rule lists combine with `+`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from graphopt.ir import Graph, Value

from .cleanup import dce


@dataclass(frozen=True)
class Pat:
    ops: tuple[str, ...] | None  # None: any value; ("const",): a parameter
    inputs: tuple["Pat", ...] | None = None  # None: inputs unconstrained
    name: str | None = None
    where: Callable[[Value], bool] | None = None
    commute: bool = False  # binary op whose inputs may match in either order
    attrs: tuple[tuple[str, Any], ...] = ()  # (attribute, value or predicate on the value)
    more: "bool | Pat" = False  # the node may have more inputs than `inputs` (each matching it, if a Pat)


def P(ops: str | tuple[str, ...], *inputs: Pat, name: str | None = None, where=None, commute=False,
      attrs: dict | None = None, more: "bool | Pat" = False) -> Pat:
    """A node of one of `ops` whose inputs match `inputs` in order: all of them, or the first ones when
    `more` (True: any further inputs; a Pat: further inputs, each matching it, e.g. a conv's optional
    constant bias). `attrs` maps an attribute to the value it must have or to a predicate it must pass."""
    return Pat((ops,) if isinstance(ops, str) else tuple(ops), tuple(inputs) if inputs else None, name, where,
               commute, tuple((attrs or {}).items()), more)


def X(name: str | None = None, where=None) -> Pat:
    """Any value."""
    return Pat(None, None, name, where)


def C(name: str | None = None, where=None) -> Pat:
    """A parameter (constant)."""
    return Pat(("const",), None, name, where)


def match(pat: Pat, v: Value, bound: dict) -> bool:
    """Whether v matches pat; on success the pattern's names are added to bound."""
    return _mismatch(pat, v, bound, "") is None


def _mismatch(pat: Pat, v: Value, bound: dict, where: str) -> str | None:
    """None if v matches pat (bound gains its names), else what does not match, `where` naming the spot."""
    at = where or "the value"
    if pat.ops == ("const",):
        if not v.is_param:
            return f"{at} is not a constant"
    elif pat.ops is not None:
        node = v.producer
        if node is None:
            return f"{at} is {'a constant' if v.is_param else 'a graph input or state'}, not {'/'.join(pat.ops)}"
        if node.op not in pat.ops:
            return f"{at} is {node.op}, not {'/'.join(pat.ops)}"
        for key, want in pat.attrs:
            have = node.attrs.get(key)
            if not (want(have) if callable(want) else have == want):
                return f"{at}: attribute {key}={have!r} does not match"
        if pat.inputs is not None:
            n = len(pat.inputs)
            if len(node.inputs) < n or (len(node.inputs) > n and pat.more is False):
                return f"{at} ({node.op}) has {len(node.inputs)} inputs, the pattern {n}{' or more' if pat.more else ''}"
            if isinstance(pat.more, Pat):
                for i, x in enumerate(node.inputs[n:], n):
                    why = _mismatch(pat.more, x, bound, f"{node.op} input {i}")
                    if why:
                        return why
            orders = [node.inputs[:n]]
            if pat.commute and n == 2:
                orders.append(node.inputs[1::-1])
            first = None
            for order in orders:
                trial = dict(bound)
                why = next((w for w in (_mismatch(p, x, trial, f"{node.op} input {i}")
                                        for i, (p, x) in enumerate(zip(pat.inputs, order))) if w), None)
                if why is None:
                    bound.update(trial)
                    break
                first = first or why
            else:
                return first
    if pat.where is not None and not pat.where(v):
        return f"{at} fails the condition {getattr(pat.where, '__name__', 'where')}"
    if pat.name is not None:
        if pat.name in bound and bound[pat.name] is not v:
            return f"{at} is not the value already bound to {pat.name!r}"  # the same name, the same value
        bound[pat.name] = v
    return None


@dataclass(frozen=True)
class Reject:
    """A rule's answer when its pattern matched but the rewrite does not apply; says why."""
    reason: str


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Pat
    rewrite: Callable[[Graph, dict], "Value | Reject | None"]


def _bindings(node, uses, users) -> dict:
    return {"_node": node, "_uses": uses, "_users": users}


def _use_counts(graph: Graph, users) -> dict[int, int]:
    uses = {k: len(v) for k, v in users.items()}
    for v in graph.sinks():
        uses[id(v)] = uses.get(id(v), 0) + 1
    return uses


def why_not(rule: Rule, graph: Graph, v: Value) -> str | None:
    """Why `rule` does not rewrite v (None: it would). Does not change the graph unless the rule would fire,
    in which case the rule's function has run: call it on a clone when that matters."""
    if v.producer is None:
        return "the value is not computed by a node"
    users = graph.users()
    bound = _bindings(v.producer, _use_counts(graph, users), users)
    why = _mismatch(rule.pattern, v, bound, "")
    if why is not None:
        return why
    new = rule.rewrite(graph, bound)
    if isinstance(new, Reject):
        return new.reason
    if new is None or new is v:
        return "the rule declined (no reason given)"
    return None


def explain(rule: Rule, graph: Graph) -> Counter:
    """Why `rule` does not fire anywhere in the graph: reason -> how many candidate nodes (those whose op is
    one the pattern starts with) gave it; "fires" counts candidates where it would. The graph is not
    changed (a rewrite that would apply runs on a clone)."""
    users = graph.users()
    uses = _use_counts(graph, users)
    reasons: Counter = Counter()
    for node in graph.nodes:
        if node.op not in (rule.pattern.ops or ()) or len(node.outputs) != 1:
            continue
        why = _mismatch(rule.pattern, node.outputs[0], _bindings(node, uses, users), "")
        if why is None:  # the pattern matches: ask the rewrite, on a copy
            copy = graph.clone()
            twin = next(n for n in copy.nodes if n.outputs and n.outputs[0].name == node.outputs[0].name)
            why = why_not(rule, copy, twin.outputs[0])
        reasons[why or "fires"] += 1
    return reasons


def apply_rules(graph: Graph, rules: list[Rule], max_sweeps: int = 50) -> Counter:
    """Apply rules bottom-up (producers before consumers) until none fires. Returns how often each fired
    (empty, so false, when none did)."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.pattern.ops or ():
            by_op.setdefault(op, []).append(r)
    fired: Counter = Counter()
    for _ in range(max_sweeps):
        subst: dict[int, Value] = {}
        users = graph.users()
        uses = _use_counts(graph, users)
        resolve = lambda v: subst.get(id(v), v)
        changed = False
        for node in list(graph.nodes):
            node.inputs = [resolve(v) for v in node.inputs]
            if len(node.outputs) != 1:
                continue
            out = node.outputs[0]
            for rule in by_op.get(node.op, ()):
                bound = _bindings(node, uses, users)
                if not match(rule.pattern, out, bound):
                    continue
                new = rule.rewrite(graph, bound)
                if new is None or isinstance(new, Reject) or new is out:
                    continue
                if new.type != out.type:
                    raise AssertionError(f"rule {rule.name} changed the type {out.type} -> {new.type}")
                subst[id(out)] = resolve(new)
                fired[rule.name] += 1
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
    else:
        raise RuntimeError(f"rewrite rules did not reach a fixpoint in {max_sweeps} sweeps")
    return fired
