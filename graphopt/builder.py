"""build: model adapter -> frontend -> IR -> pass pipeline -> target emitter -> verified artifact."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifact as art
from . import equivalence, metrics, trace_cache
from .targets import NeedsDevice as EngineNeedsGpu  # the artifact is written but for a device part; exit 3

MIN_FPS, MAX_FPS = 0.1, 10000.0  # --fps: dt = 1/fps must be a usable float32 number of seconds


class BuildError(RuntimeError):
    """The build could not produce an artifact that meets its tier; nothing was written."""


class BuildUsageError(BuildError):
    """The request itself is wrong (unknown target, missing runtime, bad option): exit status 2."""



def target_module(name: str):
    from .targets import MODULES, module_for
    if name not in MODULES:
        raise BuildUsageError(f"unknown target {name!r}; choose one of: {', '.join(MODULES)}")
    return module_for(name)


def log_stderr(msg: str) -> None:
    from .console import log
    log(msg)


def build(model, target: str, out: str | Path, *, weights: str | None = None, as_published: bool = False,
          fuse: bool = True, pass_names: list[str] | None = None, verify_each_pass: bool = False,
          verify: bool = True, frames: int = 600, exact: bool = False, fps: float | None = None,
          target_options: dict | None = None, force: bool = False, explain: list[str] = (),
          tier: str | None = None, cache: bool = True, traced: trace_cache.Traced | None = None,
          streams: int = 1, log: Callable[[str], None] = log_stderr) -> art.Artifact:
    """Build one artifact into `out` (a new or empty folder, written atomically; with force, an earlier
    graphopt artifact there is replaced). Raises on any failure, leaving `out` as it was.

    model: a graphopt.ModelSpec, a built-in model's name, or "FILE.py:FUNC" / "package.module:FUNC" (FUNC()
    returns a ModelSpec); weights / as_published: options of the built-in models.

    exact: run only exact passes (rounding-level tier); fps: bake dt = 1/fps into the graph;
    explain: rewrite rules to report on after the pipeline (why each did not fire where it could start);
    tier: the tier the artifact must reach (default: the tier the pipeline claims; a quantised artifact is
    held to at most its precision's tier). A looser tier than the claim accepts an artifact whose runtime's
    own kernels round differently (e.g. long conv accumulations summed in another order); the manifest
    keeps the claim, the tier required and the tier reached.

    cache: take the traced IR from the trace cache when it holds this model (graphopt.trace_cache), and store
    it there after a trace; False (--no-cache) builds and traces the model and leaves the cache alone.
    traced: the model already traced (trace_cache.load_traced; graphopt.bench builds several artifacts from
    one trace): the build runs on a copy of its graph.
    streams: one step advances this many independent streams (graphopt.multistream); each stream is verified
    against the model's one-stream reference on its own clip.
    """
    from graphopt import models, passes
    from .outdir import check_destination

    tmod = target_module(target)
    ok, reason = tmod.available()
    if not ok:
        raise BuildUsageError(f"target {target} is not available here: {reason}")
    if target_options:
        from .targets import get as get_target
        known = {o.dest for o in get_target(target).options}
        unknown = sorted(set(target_options) - known)
        if unknown:
            raise BuildUsageError(f"target {target} takes no option {', '.join(unknown)}; its options: "
                                  f"{', '.join(sorted(known)) or 'none'}")
    if fps is not None and (isinstance(fps, bool) or not (isinstance(fps, (int, float)) and MIN_FPS <= fps <= MAX_FPS)):
        raise BuildUsageError(f"--fps must be a frame rate from {MIN_FPS:g} to {MAX_FPS:g}, got {fps}")
    if tier is not None and tier not in metrics.TIERS:
        raise BuildUsageError(f"--tier must be one of {', '.join(metrics.TIERS)}, got {tier!r}")
    required_tier = tier  # `tier` below is the tier the pipeline claims
    if verify:
        equivalence.check_frames(frames)
    models.check(model, weights, as_published)  # an unknown model, pass or weights file fails before any work
    try:
        for name in pass_names or ():
            passes.get_pass(name)
        for name in explain:
            passes.find_rule(name)
    except passes.PassError as e:
        raise BuildUsageError(str(e)) from None
    if weights is not None and not Path(weights).is_file():
        raise BuildUsageError(f"--weights {weights} is not a file")
    from . import multistream
    streams = multistream.check_streams(streams)
    if streams > 1 and traced is not None and traced.spec.streams != streams:
        raise BuildUsageError(f"the traced model has {traced.spec.streams} streams, not the {streams} asked for")
    out = check_destination(Path(out), force)  # before the long work: a refused --out costs nothing
    t0 = time.perf_counter()
    log(f"[1/4] loading {getattr(model, 'name', model)} ...")

    def check_spec(spec):  # before any trace (a trace-cache hit is checked alike)
        if verify:
            equivalence.check_frames(frames, spec.frames_per_step, spec.fps)
        if fps is not None and not spec.takes_dt:
            raise BuildUsageError(f"--fps needs a model with a dt input; {spec.name} has none")

    if traced is not None:
        check_spec(traced.spec)
        traced = trace_cache.Traced(traced.spec, traced.copy_graph(), traced.seconds, traced.cache)
    else:
        from .console import working
        with working(f"loading and tracing {getattr(model, 'name', model)}"):  # tens of seconds on a cache miss
            if streams > 1:  # the model under jax.vmap, traced as a spec of its own
                base = models.resolve(model, weights, as_published)
                fixed = {base.dt_input: 1.0 / fps} if fps is not None and base.takes_dt else None
                model = multistream.MultiStreamSpec(base, streams, fixed)  # --fps: one dt for every stream
                weights, as_published = None, False
                log(f"      {streams} streams per step")
            traced = trace_cache.load_traced(model, weights, as_published, cache=cache, check=check_spec, log=log)
    spec, graph = traced.spec, traced.graph
    if traced.cache == "hit":
        log(f"      loaded the traced IR from the cache ({traced.seconds:.1f} s): {len(graph.nodes)} nodes, "
            f"{graph.flops() / 1e6:.1f} MFLOP/step")
    else:
        log(f"      traced {len(graph.nodes)} nodes, {graph.flops() / 1e6:.1f} MFLOP/step ({traced.seconds:.1f} s)")
    if traced.note:
        log(f"      note: {traced.note}")
    fixed_inputs = {}
    if fps is not None:
        fixed_inputs = {spec.dt_input: 1.0 / fps}
        graph.meta["fixed_inputs"] = fixed_inputs  # for the manifest
    if pass_names is not None:
        names = (["specialize-inputs"] if fps is not None else []) + list(pass_names)
    else:
        names = passes.pipeline_for(target, fuse, exact_only=exact, fixed_inputs=fps is not None)
    names += [n for n in passes.lowerings_for(target) if n not in names]
    log(f"[2/4] pass pipeline: {', '.join(names) or 'none (unfused)'}")
    samples = None
    if verify_each_pass:
        if spec.streams > 1:  # each stream a clip of its own, stacked as the batched inputs
            samples = multistream.stacked_samples(spec, 4 * spec.frames_per_step, fps or spec.fps)
        else:
            feeds = equivalence.Clip(frames=4 * spec.frames_per_step, fps=fps or spec.fps).feeds(spec)
            samples = [[f[n] for n in spec.inputs] for f in feeds]
    try:
        graph, report = passes.run_pipeline(graph, names, options=passes.PassOptions(fixed_inputs=fixed_inputs),
                                            verify_each=verify_each_pass, samples=samples, log=log)
    except passes.PassError as e:
        raise BuildError(str(e)) from e
    report["name"] = "custom" if pass_names is not None else ("default" if fuse else "none") + \
        (" (exact only)" if exact and fuse else "")
    report["raise_math"] = _summarize_raised(report.pop("notes").get("raise_math", []))
    # the trace (or the trace cache's load): its time and whether the cache was hit (hit, miss, off, unavailable)
    report["trace"] = {"time_s": round(traced.seconds, 3), "cache": traced.cache}
    if report["raise_math"]:
        log("      raised to native ops: " + ", ".join(
            f"{r['count']} x {r['op']} (approximation error {r['max_error']:.2g} {r['error_kind']})"
            for r in report["raise_math"]))
    graph.meta["pipeline"] = report
    for name in explain:
        fired = sum(p.get("fired", {}).get(name, 0) for p in report["passes"])
        log(f"      rule {name} fired {fired} time(s) in the pipeline")
        for line in passes.explain_rule(graph, name):
            log("      " + line)
    precision = spec.source.get("precision", "float32")
    tier = "rounding" if report["exact"] else "signal"
    log(f"      {len(graph.nodes)} nodes after the pipeline; tier claimed: {tier}"
        + ("" if report["exact"] else " (value-changing passes changed the graph)"))
    with art.atomic_dir(out, force) as tmp:
        log(f"[3/4] emitting {target} artifact")
        try:
            # fuse: the emitter may lower groups of nodes as one (--no-fuse: every node on its own)
            artifact = tmod.emit(graph, tmp, {"stem": spec.name, "precision": precision, "fuse": fuse,
                                              **(target_options or {})})
        except (art.ArtifactError, ValueError) as e:  # targets.UnsupportedOpError (a ValueError): an unlowerable op
            raise BuildError(f"the {target} target cannot emit this graph: {e}") from e
        manifest = artifact.manifest
        if manifest.get("precision_tier") and metrics.TIERS.index(manifest["precision_tier"]) > metrics.TIERS.index(tier):
            tier = manifest["precision_tier"]
            log(f"      {manifest['precision']}: tier claimed {tier}")
        manifest["equivalence"] = {"tier_claimed": tier, "verified": False}
        if verify:
            log(f"[4/4] verifying over {frames} frames against the model's reference ({spec.reference_kind}) ...")
            stream = art.load(artifact.path)
            try:
                if spec.streams > 1:  # each stream against the one-stream reference on its own clip
                    result = multistream.check(stream, spec, frames, fps)
                    log("      per stream: " + ", ".join(f"{i}: {r['tier']} (NRMSE {r['nrmse']:.2g})"
                                                        for i, r in enumerate(result["per_stream"])))
                else:
                    result = equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec,
                                               equivalence.Clip(frames=frames, fps=fps or spec.fps))
            except equivalence.VerificationError as e:
                raise BuildError(f"{e}; no artifact was written") from None
            manifest["equivalence"].update(result, verified=True)
            manifest["equivalence"]["verified_with"] = type(stream).__name__
            log(format_result(result, tier))
            required = required_tier or tier
            if manifest.get("precision_tier") and required_tier:  # a quantised artifact is held to its precision's tier
                required = metrics.loosest([required, manifest["precision_tier"]])
            manifest["equivalence"]["tier_required"] = required
            if not metrics.meets(required, result["tier"]):
                raise BuildError(f"the {target} artifact reaches tier {result['tier']}, not the {required} tier it "
                                 + ("must reach (--tier)" if required_tier else "claims")
                                 + "; no artifact was written")
            if not metrics.meets(tier, result["tier"]):
                log(f"      note: tier {result['tier']} is below the {tier} tier the pipeline claims "
                    f"(accepted: --tier {required})")
        else:
            log("[4/4] verification skipped (--no-verify)")
        # the build's own time, from loading the model to a verified artifact (a trace-cache hit shows here)
        manifest.setdefault("pipeline", {})["build_time_s"] = round(time.perf_counter() - t0, 3)
        art.write_json(artifact.manifest_path, manifest)
    final = out / artifact.path.name
    log(f"wrote {final} ({time.perf_counter() - t0:.1f} s)")
    if hasattr(tmod, "after_build"):  # e.g. tensorrt: report its check; raise NeedsDevice without a GPU
        tmod.after_build(final, manifest, log)
    return art.Artifact(final, manifest)


def _summarize_raised(entries: list[dict]) -> list[dict]:
    """raise-math's log grouped by op: count and the largest approximation error on the probe domain."""
    out: dict[str, dict] = {}
    for e in entries:
        r = out.setdefault(e["op"], {"op": e["op"], "count": 0, "max_error": 0.0, "error_kind": e["error_kind"],
                                     "domain": e["domain"]})
        r["count"] += 1
        r["max_error"] = max(r["max_error"], e["max_error"])
    return list(out.values())


def format_result(r: dict, claimed: str | None = None) -> str:
    outputs = r.get("outputs") or {"": r}
    tier = lambda o: o["tier"] or "none" + (f" ({o['tier_note']})" if o.get("tier_note") else "")  # not reached
    lines = []
    for name, o in outputs.items():
        floor, at = o["noise_floor"], f" [{name}]" if name else ""
        over = "undefined (zero floor)" if o["nrmse_over_floor"] is None else f"{o['nrmse_over_floor']:.2f}x"
        lines += [f"  max abs error{at:<4} {o['max_abs']:.3g}",
                  f"  NRMSE{at:<12} {o['nrmse']:.3g}  ({over} the noise floor {floor['nrmse']:.3g})",
                  f"  Pearson r{at:<8} {o['pearson']:.6f}"]
        if o.get("hr_bpm") is not None:
            lines.append(f"  heart rate{at:<7} {o['hr_bpm']:.1f} bpm (reference {o['hr_ref_bpm']:.1f} bpm, "
                         f"bin {o['hr_bin_bpm']:.1f})")
        if name:
            lines.append(f"  tier{at:<13} {tier(o)}")
    lines += [
        (f"  final state error {r['state_max_rel']:.3g} (max relative)" if r.get("state_max_rel") is not None
         else f"  final state       not compared ({r.get('state_note', 'no state')})"),
        f"  tier reached      {tier(r)}" + (f" (claimed: {claimed})" if claimed else ""),
    ]
    return "\n".join(lines)
