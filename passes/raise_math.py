"""Raise approximated math (polynomials with range reduction) to native exp / sin / cos.

Models written for NPUs often spell exp, sin and cos out of multiply-adds: range reduction by
round / floor / an int cast, a short polynomial, and for exp a gather from a table of powers of
two. This pass finds such constructions by structure and identifies them by evaluation:

1. Structure. A *univariate cone* is a set of nodes that computes elementwise from one variable
   x: elementwise ops whose other operands are scalar constants (casts included), and lookups
   (`take`) into a constant 1-D table indexed by a value of the cone. Every value is assigned the
   root of the cone it belongs to. A cone that contains range reduction (round, floor, ceil, a
   float->int cast, or a table lookup) is a candidate.
2. Identification. For a candidate output y (a value after the range reduction) and a root c (x
   or a value of the cone before the range reduction that y depends on alone), the cone is
   evaluated on probe points of c and compared with each native function on its probe domain.
   The widest match (latest y, earliest c) is replaced by one native op.

The result is value-changing: the native op differs from the approximation by the
approximation's own error (measured on the probe domain and returned in the pass result's notes["raise_math"]),
and outside the approximation's valid range it differs more. It is on by default only for
targets that have exp, sin and cos natively.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphopt.ir import OPS, Graph, Node, Value, get_op, is_float

from .cleanup import dce

RANGE_REDUCTION = {"round", "floor", "ceil", "take"}


@dataclass(frozen=True)
class Native:
    op: str
    fn: Callable[[np.ndarray], np.ndarray]
    domain: tuple[float, float]  # probe interval the approximation must cover
    tol: float  # max error allowed on the domain
    relative: bool  # error relative to |f(x)| (exp) or absolute (sin, cos)


NATIVES = (
    Native("exp", np.exp, (-10.0, 10.0), 1e-2, True),
    Native("sin", np.sin, (-30.0, 30.0), 1e-2, False),
    Native("cos", np.cos, (-30.0, 30.0), 1e-2, False),
)
PROBES = 4001


def _is_scalar_const(v: Value) -> bool:
    return v.is_param and v.const.size == 1


def _variable_inputs(node: Node) -> list[Value] | None:
    """The inputs through which a univariate node depends on its cone, or None if it is not one."""
    if len(node.outputs) != 1:
        return None
    if node.op == "take":
        table, idx = node.inputs
        if table.is_param and table.const.ndim == 1 and node.attrs["axis"] == 0 and not idx.is_param:
            return [idx]
        return None
    if not OPS[node.op].elementwise:
        return None
    var = [v for v in node.inputs if not v.is_param]
    if not var or any(v.is_param and not _is_scalar_const(v) for v in node.inputs):
        return None
    if any(v.shape != node.outputs[0].shape for v in var):
        return None
    return var


def _is_reduction(node: Node) -> bool:
    if node.op in RANGE_REDUCTION:
        return True
    return node.op == "cast" and is_float(node.inputs[0].dtype) and not is_float(node.attrs["to"])


class _Cones:
    """Roots of univariate cones for every value of the graph."""

    def __init__(self, graph: Graph):
        self.var_inputs: dict[int, list[Value]] = {}
        self.root: dict[int, Value] = {}
        self.members: dict[int, list[Node]] = {}
        for node in graph.nodes:
            var = _variable_inputs(node)
            out = node.outputs[0] if len(node.outputs) == 1 else None
            roots = {id(self.root_of(v)): self.root_of(v) for v in var} if var else {}
            if out is not None and len(roots) == 1:
                root = next(iter(roots.values()))
                self.var_inputs[id(node)] = var
                self.root[id(out)] = root
                self.members.setdefault(id(root), []).append(node)

    def root_of(self, v: Value) -> Value:
        return self.root.get(id(v), v)


def _evaluate(nodes: list[Node], var_inputs: dict[int, list[Value]], c: Value, x: Value,
              probe: np.ndarray) -> dict[int, np.ndarray]:
    """Values of the cone's nodes that depend on x only through c, with c set to probe."""
    vals = {id(c): probe.astype(c.dtype)}
    with np.errstate(all="ignore"):
        for node in nodes:
            var = var_inputs[id(node)]
            if id(node.outputs[0]) in vals or not all(id(v) in vals for v in var):
                continue
            args = [vals[id(v)] if not v.is_param else
                    (v.const if node.op == "take" and v is node.inputs[0] else v.const.reshape(()))
                    for v in node.inputs]
            out = node.outputs[0]
            vals[id(out)] = np.asarray(get_op(node.op).compute(*args, node.attrs)[0]).astype(out.dtype)
    vals.pop(id(c))
    return vals


def _error(native: Native, y: np.ndarray, probe: np.ndarray) -> float:
    want = native.fn(probe.astype(np.float64))
    got = y.astype(np.float64)
    err = np.abs(got - want)
    if native.relative:
        err = err / np.maximum(np.abs(want), 1e-30)
    return float(np.max(err)) if np.all(np.isfinite(got)) else float("inf")


def _find_match(members: list[Node], cones: _Cones, x: Value):
    """The widest (y, c, native, error) in one cone, or None."""
    after: set[int] = set()  # values downstream of a range reduction
    for node in members:
        if _is_reduction(node) or any(id(v) in after for v in cones.var_inputs[id(node)]):
            after.add(id(node.outputs[0]))
    if not after:
        return None
    before = [x] + [n.outputs[0] for n in members if id(n.outputs[0]) not in after]
    roots = [c for c in before if is_float(c.dtype)]
    outputs = [n.outputs[0] for n in reversed(members) if id(n.outputs[0]) in after and is_float(n.outputs[0].dtype)]
    evaluated = {}
    for y in outputs:
        for c in roots:
            if c.dtype != y.dtype:
                continue
            for native in NATIVES:
                key = (id(c), native.domain)
                if key not in evaluated:
                    probe = np.linspace(*native.domain, PROBES)
                    evaluated[key] = (probe, _evaluate(members, cones.var_inputs, c, x, probe))
                probe, vals = evaluated[key]
                if id(y) in vals:
                    err = _error(native, vals[id(y)], probe)
                    if err <= native.tol:
                        return y, c, native, err
    return None


def raise_math(graph: Graph) -> list[dict]:
    """Replace every recognised approximation of exp/sin/cos by the native op. Returns one entry per
    replacement (op, approximation error on the probe domain, error kind, domain); empty when none was."""
    log: list[dict] = []
    changed = True
    while changed:
        changed = False
        cones = _Cones(graph)
        for members in cones.members.values():  # cones are disjoint: replace in each
            x = cones.root[id(members[0].outputs[0])]
            match = _find_match(members, cones, x)
            if match is None:
                continue
            y, c, native, err = match
            graph.replace_all_uses(y, graph.op(native.op, c))
            log.append({"op": native.op, "max_error": err,
                        "error_kind": "relative" if native.relative else "absolute", "domain": list(native.domain)})
            changed = True
        if changed:
            graph.toposort()
            dce(graph)
    return log
