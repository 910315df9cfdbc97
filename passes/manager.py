"""The pass registry (every built-in pass, by name) and the pipeline driver: per-pass report with rule fire
counts, the IR verifier after every pass, --verify-each-pass (outputs compared too). Passes, results and
nested managers are defined in passes/infra.py."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphopt import state_views
from graphopt.ir import Graph, Interpreter, verify
from graphopt.targets import Capabilities

from . import algebra, cleanup, forms, layout, lowering, numerics, raise_math, roundtrip, simplify, specialize, \
    state_layout
from .infra import Pass, PassBase, PassManager, PassOptions, PassResult, in_place
from .rewrite import Rule, apply_rules
from .rewrite import explain as rewrite_explain


class PassError(RuntimeError):
    """A pass broke the graph's invariants or its output; the message names the pass."""


PASSES: dict[str, PassBase] = {}


def register(p: PassBase) -> PassBase:
    PASSES[p.name] = p
    return p


def get_pass(name: str) -> PassBase:
    if name not in PASSES:
        raise PassError(f"unknown pass {name!r}; available: {', '.join(sorted(PASSES))}")
    return PASSES[name]


@dataclass(frozen=True)
class RulePass(PassBase):
    """Applies a rule list to a fixpoint; the result counts how often each rule fired."""
    name: str
    rules: tuple[Rule, ...]
    exact: bool = True
    suits: Callable[[Capabilities], bool] | None = None
    doc: str = ""

    def __call__(self, graph: Graph, options: PassOptions) -> PassResult:
        fired = apply_rules(graph, list(self.rules))
        return PassResult(graph, bool(fired), fired)


def _specialize(graph: Graph, options: PassOptions) -> bool:
    return specialize.specialize_inputs(graph, options.fixed_inputs)


def _raise_math(graph: Graph, options: PassOptions) -> PassResult:
    log = raise_math.raise_math(graph)
    return PassResult(graph, bool(log), notes={"raise_math": log} if log else {})


DCE = register(Pass("dce", in_place(cleanup.dce), doc="drop nodes nothing observes"))
CSE = register(Pass("cse", in_place(cleanup.cse), doc="merge identical nodes and identical constants"))
register(Pass("fold-constants", in_place(cleanup.fold_constants), doc="evaluate parameter-only subgraphs"))
SIMPLIFY = register(RulePass(
    "simplify", tuple(simplify.RULES),
    doc="reshape/transpose/broadcast chains and identities, broadcasts made implicit, x*1, x+0, "
        "ops over concats split where a piece folds, flattened concats of reshapes"))
register(RulePass("algebra", tuple(algebra.RULES),
                  doc="relu6 -> clamp, a-(a-x), scale chains, scales and back-to-back linear maps folded into "
                      "dot weights, slices of a dot split, broadcast-multiply + reduce-sum -> dot"))
register(RulePass("drop-cast-roundtrips", tuple(roundtrip.RULES), exact=False,
                  doc="float casts to a narrower type and straight back removed (value-changing)"))
_SINK_RESHAPES = Pass("sink-reshapes", in_place(layout.sink_reshapes))
_HOIST_RESHAPES = Pass("hoist-unit-reshapes", in_place(layout.hoist_unit_reshapes))
# moving reshapes can let a transpose region move, and the reverse: the rules and the region moves repeat
LAYOUT = register(PassManager(
    "layout", (RulePass("layout-rules", tuple(layout.RULES)),
               Pass("sink-transpose-regions", in_place(layout.sink_transpose_regions)), _HOIST_RESHAPES,
               _SINK_RESHAPES),
    fixpoint=True,
    doc="transposes sunk through elementwise ops (one op or a whole region) and pools, absorbed by "
        "dots/reductions; per-channel scale and bias folded into convs"))
# the cleanup a state-layout trial runs (a cancelled transpose can let a reshape region move, and the reverse)
_LAYOUT_CLEANUP = PassManager("layout-cleanup", (LAYOUT, SIMPLIFY, CSE, DCE), fixpoint=True, max_rounds=4)


def _state_layout(graph: Graph, options: PassOptions) -> PassResult:
    new = state_layout.state_layout(graph, lambda g: _LAYOUT_CLEANUP(g, options))
    return PassResult(graph, False) if new is None else PassResult(new, True)


# targets whose convolutions run channels-first (the IR's conv layout); the xla and tf/tflite lowerings
# run convolutions channels-last themselves
register(Pass("state-layout", _state_layout, suits=lambda caps: caps.channels_first_convs,
              doc="recurrent state stored in the layout its neighbourhood computes in (fewer transposes); "
                  "the state's view maps it back to the model's layout"))
# the reshapes the forms add are tidied: chains collapsed, then regions moved past them
register(PassManager(
    "onnx-forms", (RulePass("forms", tuple(forms.RULES)),),
    then=PassManager("tidy-reshapes", (SIMPLIFY, PassManager("move-reshapes", (_SINK_RESHAPES, _HOIST_RESHAPES), fixpoint=True))),
    suits=lambda caps: caps.onnx_ops,
    doc="forms that lower to fewer or faster ONNX ops: a dot with a vector as a matrix product, a "
        "whole-image mean of a conv output as a global average pool, a bias next to its dot (Gemm)"))
register(Pass("specialize-inputs", _specialize,
              doc="bake inputs fixed at build time (--fps: dt = 1/fps) into constants"))
# targets whose runtimes have exp, sin and cos as native ops
register(Pass("raise-math", _raise_math, exact=False, suits=lambda caps: caps.native_transcendentals,
              doc="polynomial exp/sin/cos with range reduction -> native op (value-changing)"))
# targets whose runtimes do not take a conv with input (lhs) dilation as it is
register(RulePass("expand-lhs-dilation", tuple(lowering.RULES), suits=lambda caps: not caps.input_dilated_convs,
                  doc="lowering: conv with input dilation (transposed conv) -> zero insertion + conv"))
# runtimes that add a reduction's terms one after another (XLA sums in a tree)
register(RulePass("split-long-reductions", tuple(numerics.RULES), suits=lambda caps: caps.sequential_sums,
                  doc="lowering: sums over many elements split into short partial sums (float32 rounding "
                      "stays at the noise floor)"))
LOWERINGS = ["expand-lhs-dilation", "split-long-reductions"]  # run for every target they suit, fused or not


def find_rule(name: str) -> Rule:
    """A rewrite rule by name, from any registered rule pass (nested ones included)."""
    def rules(p):
        if isinstance(p, RulePass):
            yield from p.rules
        for sub in (getattr(p, "passes", None) or ()) + ((p.then,) if getattr(p, "then", None) else ()):
            yield from rules(sub)
    found = {r.name: r for p in PASSES.values() for r in rules(p)}
    if name not in found:
        raise PassError(f"unknown rule {name!r}; rules: {', '.join(sorted(found))}")
    return found[name]


def explain_rule(graph: Graph, name: str) -> list[str]:
    """Lines saying why rule `name` does not fire on the graph's candidate nodes, most common reason first."""
    reasons = rewrite_explain(find_rule(name), graph)
    if not reasons:
        return [f"rule {name}: no node has an op its pattern starts with"]
    return [f"rule {name}: {sum(reasons.values())} candidate node(s)"] + [
        f"  {n:5d} x {why}" for why, n in reasons.most_common()]


def _sample_run(graph: Graph, samples: list[list[np.ndarray]]) -> np.ndarray:
    """Outputs of the graph over sample steps with state carried (float32 interpreter)."""
    it = Interpreter(graph, "float32")
    state = [s.init for s in graph.state]
    outs = []
    for inputs in samples:
        with np.errstate(all="ignore"):  # a broken pass may produce NaN; the comparison reports it
            y, state = it.run(inputs, state)
        model_state = [state_views.apply(x, s.view) for x, s in zip(state, graph.state)]  # the model's layout
        outs.append(np.concatenate([np.ravel(v).astype(np.float64) for v in y + model_state]))
    return np.stack(outs)


def run_pipeline(graph: Graph, names: list[str], *, options: PassOptions | None = None, verify_each: bool = False,
                 samples: list[list[np.ndarray]] | None = None, rtol: float = 1e-3,
                 log: Callable[[str], None] | None = None) -> tuple[Graph, dict]:
    """Run passes in order, recording node count, FLOPs, time and rule fire counts after each. Returns the
    final graph (a pass may return a new one) and the report; the report's "notes" gather what passes
    reported (e.g. "raise_math": one entry per approximation replaced).

    The structural verifier (graphopt.ir.verify) runs on the input graph and after every pass, always
    (a few ms for hundreds of nodes, next to seconds of passes): the first pass that leaves an invalid
    graph raises PassError naming it, so a broken graph never reaches a lowering (time_s is the pass's
    own time, without the verifier's). With verify_each and sample inputs, the graph's outputs (and
    state) are also compared with the input graph's after every pass; the first pass whose outputs move
    by more than rtol (relative to the largest output magnitude) raises PassError.
    """
    passes = [get_pass(n) for n in names]
    options = options or PassOptions()
    report = {"passes": [{"name": "(traced)", "nodes": len(graph.nodes), "flops": graph.flops()}],
              "exact": True, "notes": {}}  # exact: False once a value-changing pass has changed the graph
    try:
        verify(graph)
    except Exception as e:
        raise PassError(f"the input graph is invalid (before any pass): {e}") from e
    baseline = _sample_run(graph, samples) if verify_each and samples else None
    for p in passes:
        t0 = time.perf_counter()
        result = p(graph, options)
        graph, changed = result.graph, result.changed
        for kind, entries in result.notes.items():
            report["notes"].setdefault(kind, []).extend(entries)
        report["exact"] &= p.exact or not changed
        entry = {"name": p.name, "changed": bool(changed), "exact": p.exact, "nodes": len(graph.nodes),
                 "flops": graph.flops(), "time_s": round(time.perf_counter() - t0, 4)}
        try:
            verify(graph)
        except Exception as e:
            raise PassError(f"pass {p.name} broke the IR: {e}") from e
        if result.fired:
            entry["fired"] = dict(sorted(result.fired.items()))
        if baseline is not None:  # verify_each with samples
            got = _sample_run(graph, samples)
            with np.errstate(invalid="ignore"):
                err = float(np.max(np.abs(got - baseline)) / max(np.max(np.abs(baseline)), 1e-30))
            entry["max_rel_error"] = err
            if not err <= rtol:  # NaN outputs fail too
                raise PassError(f"pass {p.name} changed the graph's outputs by {err:.3g} (relative), "
                                f"more than {rtol:g}: it is the first pass that breaks equivalence")
        report["passes"].append(entry)
        if log:
            log(f"      {p.name:<24} nodes {entry['nodes']:>5}  MFLOP {entry['flops'] / 1e6:8.2f}  "
                f"{entry['time_s'] * 1e3:7.1f} ms" + ("" if changed else "  (no change)"))
    return graph, report


def format_report(report: dict) -> str:
    lines = [f"{'pass':<24} {'nodes':>6} {'MFLOP':>9} {'ms':>8}"]
    for e in report["passes"]:
        lines.append(f"{e['name']:<24} {e['nodes']:>6} {e['flops'] / 1e6:>9.2f} "
                     f"{e.get('time_s', 0) * 1e3:>8.1f}")
    return "\n".join(lines)
