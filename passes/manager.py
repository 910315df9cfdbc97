"""Pass registry and pass manager: per-pass report, fixpoint iteration, --verify-each-pass."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphopt import state_views
from graphopt.ir import Graph, Interpreter, verify
from graphopt.targets import Capabilities

from . import cleanup


class PassError(RuntimeError):
    """A pass broke the graph's invariants or its output; the message names the pass."""


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph], bool]  # mutates the graph, returns whether it changed anything
    exact: bool = True  # same math up to float rounding; False: value-changing
    suits: Callable[[Capabilities], bool] | None = None  # the targets it suits, by capability (None: all)
    fixpoint: bool = False  # repeat until it reports no change
    doc: str = ""


PASSES: dict[str, Pass] = {}


def register(p: Pass) -> Pass:
    PASSES[p.name] = p
    return p


def get_pass(name: str) -> Pass:
    if name not in PASSES:
        raise PassError(f"unknown pass {name!r}; available: {', '.join(sorted(PASSES))}")
    return PASSES[name]


register(Pass("dce", cleanup.dce, doc="drop nodes nothing observes"))
register(Pass("cse", cleanup.cse, doc="merge identical nodes and identical constants"))
register(Pass("fold-constants", cleanup.fold_constants, doc="evaluate parameter-only subgraphs"))


def rule_pass(module: str) -> Callable[[Graph], bool]:
    """A pass that applies the rule list RULES of passes/<module>.py to a fixpoint."""
    def run(graph: Graph) -> bool:
        import importlib
        from .rewrite import apply_rules
        return apply_rules(graph, importlib.import_module(f"{__package__}.{module}").RULES)
    return run


register(Pass("simplify", rule_pass("simplify"),
              doc="reshape/transpose/broadcast chains and identities, broadcasts made implicit, x*1, x+0, "
                  "ops over concats split where a piece folds, flattened concats of reshapes"))
register(Pass("algebra", rule_pass("algebra"),
              doc="relu6 -> clamp, a-(a-x), scale chains, scales and back-to-back linear maps folded into "
                  "dot weights, slices of a dot split, broadcast-multiply + reduce-sum -> dot"))
register(Pass("drop-cast-roundtrips", rule_pass("roundtrip"), exact=False,
              doc="float casts to a narrower type and straight back removed (value-changing)"))
def _layout(graph: Graph) -> bool:
    from .layout import hoist_unit_reshapes, sink_reshapes, sink_transpose_regions
    changed = rule_pass("layout")(graph)
    while sink_transpose_regions(graph) | hoist_unit_reshapes(graph) | sink_reshapes(graph):
        changed = True
        rule_pass("layout")(graph)
    return changed


register(Pass("layout", _layout,
              doc="transposes sunk through elementwise ops (one op or a whole region) and pools, absorbed by "
                  "dots/reductions; per-channel scale and bias folded into convs"))


def _state_layout(graph: Graph) -> bool:
    from .state_layout import state_layout
    return state_layout(graph)


# targets whose convolutions run channels-first (the IR's conv layout); the xla and tf/tflite lowerings
# run convolutions channels-last themselves
register(Pass("state-layout", _state_layout, suits=lambda caps: caps.channels_first_convs,
              doc="recurrent state stored in the layout its neighbourhood computes in (fewer transposes); "
                  "the state's view maps it back to the model's layout"))


def _onnx_forms(graph: Graph) -> bool:
    from .layout import hoist_unit_reshapes, sink_reshapes
    changed = rule_pass("forms")(graph)
    if changed:  # tidy the reshapes the forms add: chains collapsed, then regions moved past them
        rule_pass("simplify")(graph)
        while sink_reshapes(graph) | hoist_unit_reshapes(graph):
            pass
    return changed


register(Pass("onnx-forms", _onnx_forms, suits=lambda caps: caps.onnx_ops,
              doc="forms that lower to fewer or faster ONNX ops: a dot with a vector as a matrix product, a "
                  "whole-image mean of a conv output as a global average pool, a bias next to its dot (Gemm)"))


def _specialize(graph: Graph) -> bool:
    from .specialize import specialize_inputs
    return specialize_inputs(graph)


register(Pass("specialize-inputs", _specialize,
              doc="bake inputs fixed at build time (--fps: dt = 1/fps) into constants"))


def _raise_math(graph: Graph) -> bool:
    from .raise_math import raise_math
    return raise_math(graph)


# targets whose runtimes have exp, sin and cos as native ops
register(Pass("raise-math", _raise_math, exact=False, suits=lambda caps: caps.native_transcendentals,
              doc="polynomial exp/sin/cos with range reduction -> native op (value-changing)"))


# targets whose runtimes do not take a conv with input (lhs) dilation as it is
register(Pass("expand-lhs-dilation", rule_pass("lowering"), suits=lambda caps: not caps.input_dilated_convs,
              doc="lowering: conv with input dilation (transposed conv) -> zero insertion + conv"))
# runtimes that add a reduction's terms one after another (XLA sums in a tree)
register(Pass("split-long-reductions", rule_pass("numerics"), suits=lambda caps: caps.sequential_sums,
              doc="lowering: sums over many elements split into short partial sums (float32 rounding "
                  "stays at the noise floor)"))
LOWERINGS = ["expand-lhs-dilation", "split-long-reductions"]  # run for every target they suit, fused or not


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


def run_pipeline(graph: Graph, names: list[str], *, verify_each: bool = False,
                 samples: list[list[np.ndarray]] | None = None, rtol: float = 1e-3,
                 log: Callable[[str], None] | None = None) -> tuple[Graph, dict]:
    """Run passes in order, recording node count, FLOPs and time after each.

    With verify_each, the structural verifier runs after every pass and, given sample inputs,
    the graph's outputs (and state) are compared with the input graph's; the first pass whose
    outputs move by more than rtol (relative to the largest output magnitude) raises PassError.
    """
    passes = [get_pass(n) for n in names]
    report = {"passes": [{"name": "(traced)", "nodes": len(graph.nodes), "flops": graph.flops()}],
              "exact": True}  # False once a value-changing pass has changed the graph
    baseline = _sample_run(graph, samples) if verify_each and samples else None
    for p in passes:
        t0 = time.perf_counter()
        changed, rounds = False, 0
        while True:
            rounds += 1
            step_changed = p.run(graph)
            changed |= step_changed
            if not (p.fixpoint and step_changed) or rounds >= 20:
                break
        report["exact"] &= p.exact or not changed
        entry = {"name": p.name, "changed": bool(changed), "exact": p.exact, "nodes": len(graph.nodes),
                 "flops": graph.flops(), "time_s": round(time.perf_counter() - t0, 4)}
        if verify_each:
            try:
                verify(graph)
            except Exception as e:
                raise PassError(f"pass {p.name} broke the IR: {e}") from e
            if baseline is not None:
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
