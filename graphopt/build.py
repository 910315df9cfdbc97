"""build: model adapter -> frontend -> IR -> pass pipeline -> target emitter -> verified artifact."""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifact as art
from . import equivalence, metrics
from .ir import verify as verify_ir

TARGETS = ("onnx",)


class BuildError(RuntimeError):
    """The build could not produce an artifact that meets its tier; nothing was written."""


def target_module(name: str):
    if name not in TARGETS:
        raise BuildError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
    return importlib.import_module(f"graphopt.targets.{name}")


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(model: str, target: str, out: str | Path, *, weights: str | None = None, as_published: bool = False,
          fuse: bool = True, pass_names: list[str] | None = None, verify_each_pass: bool = False,
          verify: bool = True, frames: int = 600, log: Callable[[str], None] = log_stderr) -> art.Artifact:
    """Build one artifact into `out` (a folder, replaced atomically). Raises on any failure."""
    from graphopt import models, passes

    tmod = target_module(target)
    ok, reason = tmod.available()
    if not ok:
        raise BuildError(f"target {target} is not available here: {reason}")
    t0 = time.perf_counter()
    log(f"[1/4] loading {model} ...")
    step_model = models.load(model, weights, as_published)
    graph = step_model.trace()
    verify_ir(graph)
    log(f"      traced {len(graph.nodes)} nodes, {graph.flops() / 1e6:.1f} MFLOP/step "
        f"({time.perf_counter() - t0:.1f} s)")
    names = pass_names if pass_names is not None else passes.pipeline_for(target, fuse)
    log(f"[2/4] pass pipeline: {', '.join(names) or 'none (unfused)'}")
    samples = None
    if verify_each_pass:
        clip = equivalence.Clip(frames=4).array(step_model.frame_shape)
        samples = [[f, np.float32(1.0 / step_model.fps)] for f in clip]
    graph, report = passes.run_pipeline(graph, names, verify_each=verify_each_pass, samples=samples, log=log)
    report["name"] = "default" if pass_names is None and fuse else ("custom" if names else "none")
    graph.meta["pipeline"] = report
    precision = step_model.source["precision"]
    tier = "rounding" if report["exact"] else "signal"
    with art.atomic_dir(Path(out)) as tmp:
        log(f"[3/4] emitting {target} artifact")
        artifact = tmod.emit(graph, tmp, {"stem": model, "precision": precision})
        manifest = artifact.manifest
        manifest["equivalence"] = {"tier_claimed": tier, "verified": False}
        if verify:
            log(f"[4/4] verifying over {frames} frames against the authors' step ...")
            stream = art.load(artifact.path)
            result = equivalence.check(equivalence.stream_step(stream), stream.state, model, step_model.source,
                                       equivalence.Clip(frames=frames))
            manifest["equivalence"].update(result, verified=True)
            log(format_result(result, tier))
            if not metrics.meets(tier, result["tier"]):
                raise BuildError(f"the {target} artifact reaches tier {result['tier']}, not the {tier} tier it "
                                 "claims; no artifact was written")
        else:
            log("[4/4] verification skipped (--no-verify)")
        art.write_json(artifact.manifest_path, manifest)
    final = Path(out).resolve() / artifact.path.name
    log(f"wrote {final} ({time.perf_counter() - t0:.1f} s)")
    return art.Artifact(final, manifest)


def format_result(r: dict, claimed: str | None = None) -> str:
    floor = r["noise_floor"]
    lines = [
        f"  max abs error     {r['max_abs']:.3g}",
        f"  NRMSE             {r['nrmse']:.3g}  ({r['nrmse_over_floor']:.2f}x the noise floor {floor['nrmse']:.3g})",
        f"  Pearson r         {r['pearson']:.6f}",
        f"  heart rate        {r['hr_bpm']:.1f} bpm (reference {r['hr_ref_bpm']:.1f} bpm, bin {r['hr_bin_bpm']:.1f})",
        f"  final state error {r['state_max_rel']:.3g} (max relative)",
        f"  tier reached      {r['tier']}" + (f" (claimed: {claimed})" if claimed else ""),
    ]
    return "\n".join(lines)
