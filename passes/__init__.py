"""The pass library and per-target pipelines (imports as graphopt.passes)."""
from __future__ import annotations

from .infra import Pass, PassBase, PassManager, PassOptions, PassResult, in_place
from .manager import LOWERINGS, PASSES, PassError, RulePass, explain_rule, find_rule, format_report, get_pass, register, \
    run_pipeline

# the passes every fusing pipeline runs, in order; value-changing ones only for targets they suit
DEFAULT_PIPELINE = ["fold-constants", "simplify", "cse", "raise-math", "drop-cast-roundtrips", "algebra", "layout",
                    "state-layout", "onnx-forms", "simplify", "cse", "fold-constants", "dce"]
# passes that may change the model's signature (a state tensor stored in another layout; the manifest says
# how to read it back): left out where the output must be a drop-in replacement (graphopt optimize)
SIGNATURE_PASSES = ("state-layout",)


def pipeline_for(target, fuse: bool = True, exact_only: bool = False, fixed_inputs: bool = False,
                 keep_signature: bool = False) -> list[str]:
    """The target's default pipeline (target: a name, or the Capabilities of a target being designed).
    exact_only drops value-changing passes; fixed_inputs prepends
    specialize-inputs (which also runs without fusion, followed by constant folding); keep_signature drops
    the passes that may change the model's inputs, outputs or state (SIGNATURE_PASSES)."""
    names = list(DEFAULT_PIPELINE) if fuse else []
    names = [n for n in names if _suits(n, target) and (PASSES[n].exact or not exact_only)
             and not (keep_signature and n in SIGNATURE_PASSES)]
    if fixed_inputs:
        names = ["specialize-inputs"] + (names if fuse else ["fold-constants", "dce"])
    return names


def lowerings_for(target) -> list[str]:
    """The lowering passes the target needs (run after its pipeline, with or without fusion)."""
    return [n for n in LOWERINGS if _suits(n, target)]


def _suits(name: str, target) -> bool:
    """Whether a pass suits a target (a name, or a Capabilities), asked of its declared capabilities."""
    from graphopt.targets import Capabilities, get
    if not isinstance(target, Capabilities):
        try:
            target = get(target).caps
        except KeyError:
            raise PassError(f"unknown target {target!r}: no capabilities to choose passes by") from None
    return PASSES[name].suits is None or PASSES[name].suits(target)


__all__ = ["SIGNATURE_PASSES", "DEFAULT_PIPELINE", "LOWERINGS", "PASSES", "Pass", "PassBase", "PassError", "PassManager",
           "PassOptions", "PassResult", "RulePass", "explain_rule", "find_rule", "format_report", "get_pass", "in_place", "lowerings_for",
           "pipeline_for", "register", "run_pipeline"]
