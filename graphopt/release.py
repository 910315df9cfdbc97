"""graphopt release: every available target built, verified and benchmarked into one folder, with a
release manifest and a generated model card (README.md).

The folder is built under a temporary name beside the destination and renamed at the end; when any
target fails, the failure is reported, nothing is left behind and the release exits non-zero. A
target whose artifact has a part only a device builds (its descriptor's device_part: TensorRT's
engine) contributes the rest on machines without the device, and its release_pending hook says how
to finish it. The targets, their variants, the runtimes' packages and the model card's code come
from the target registry (graphopt.targets), and so do what a runtime times in its own loop (the
bench_in_page hook: a browser runtime is timed in the page, as `graphopt bench` times it) and what a
target adds to its entry (the release_extras hook: a web artifact's demo page screenshot).
"""
from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# fields that are timestamps by nature, kept apart so the rest of a release is reproducible
TIMESTAMP_FIELDS = ("created", "elapsed_s")
MAX_INTERLEAVED_BYTES = 8 << 30  # a model whose step computes more than this is benchmarked one runtime at a time
ROUND_BUDGET_S = 10.0  # a benchmark round of one artifact takes about this long at most (at least one step)


class ReleaseError(RuntimeError):
    """A target failed; the message lists which and why. Nothing was written."""


def default_variants(step_model) -> list[str]:
    """Every target's variants (graphopt.targets declares them); those that carry state as I/O only for
    models with state."""
    from .targets import release_variants
    return [n for n, (_, v) in release_variants().items() if step_model.initial_state or not v.needs_state]


def run(model, out: str | Path, *, variants: list[str] | None = None, frames: int = 600, rounds: int = 3,
        steps_per_round: int = 100, force: bool = False, tier: str | None = None, baselines: list[str] = (),
        baseline_state: str | None = None, log: Callable[[str], None] = print) -> Path:
    from . import __version__
    from . import artifact as art
    from . import models
    from .bench import _feed_step, backend, machine, reference_row, reference_step, sgemm_gflops, single_thread_env
    from .benchmark import measure, plan
    from .builder import EngineNeedsGpu, build, target_module
    from .console import working
    from .equivalence import Clip, check_frames, fingerprint
    from .inspect import file_size
    from .outdir import check_destination

    single_thread_env()
    t0 = time.time()
    from .targets import hook, release_variants
    known = release_variants()
    unknown = [n for n in variants or () if n not in known]
    if unknown:
        from .builder import BuildUsageError
        raise BuildUsageError(f"unknown release variants {unknown}; choose from {', '.join(known)}")
    out = check_destination(Path(out), force)  # before the long work
    step_model = models.resolve(model)
    check_frames(frames, step_model.frames_per_step, step_model.fps)
    names = variants or default_variants(step_model)
    entries, failures, streams = {}, {}, {}
    with art.atomic_dir(out, force) as tmp:
        t_targets = time.time()
        for i, name in enumerate(names, 1):
            target, variant = known[name]
            kw = {"target_options": dict(variant.options)} if variant.options else {}
            ok, reason = target_module(target).available()
            if not ok:
                log(f"[{i}/{len(names)}] {name}: skipped ({reason})")
                entries[name] = {"target": target, "skipped": reason}
                continue
            spent = time.time() - t_targets
            left = f", about {spent / (i - 1) * (len(names) - i + 1) / 60:.0f} min left" if i > 1 else ""
            log(f"[{i}/{len(names)}] building and verifying {name} ... ({spent / 60:.1f} min so far{left})")
            pending = False
            try:
                with working(f"{name}: building and verifying"):
                    a = build(step_model, target, tmp / name, frames=frames, tier=tier, log=lambda m: None, **kw)
                manifest, path = a.manifest, Path(a.path)
            except EngineNeedsGpu:  # complete but for its device part (e.g. the TensorRT engine)
                manifest, base = art.read_manifest(tmp / name)
                path, pending = base / manifest["file"], True
            except Exception as e:  # any failing target fails the release
                failures[name] = f"{type(e).__name__}: {e}"
                log(f"      FAILED: {failures[name]}")
                continue
            eq = manifest["equivalence"]
            entries[name] = {
                "target": target, "folder": name, "file": f"{name}/{path.name}", "precision": manifest["precision"],
                "tier_claimed": eq["tier_claimed"], "tier_required": eq.get("tier_required"), "tier": eq["tier"],
                "nrmse_over_floor": eq["nrmse_over_floor"],
                "pearson": eq["pearson"], "max_abs": eq["max_abs"], "hr_bpm": eq["hr_bpm"],
                "size_bytes": file_size(path), "nodes": manifest["graph"]["nodes"], "sha256": manifest["sha256"],
                "backend": backend(target)}
            if pending:  # how to finish it, in the folder it will have in the release
                finish = hook(target, "release_pending")
                entries[name].update(finish(Path(name), path.name, manifest) if finish else {})  # relative: run from the release folder
            else:
                streams[name] = path  # opened for the benchmark, after every build (each runtime holds memory)
            log(f"      tier {eq['tier']} ({eq['nrmse_over_floor']:.2f}x floor), "
                f"{entries[name]['size_bytes'] / 1e6:.2f} MB")
        if failures:
            raise ReleaseError("release failed; nothing was written. Failing targets: "
                               + "; ".join(f"{k}: {v}" for k, v in failures.items()))
        ref_name, ref_backend = reference_row(model, step_model)
        graph = step_model.trace()
        interleaved = activation_bytes(graph) <= MAX_INTERLEAVED_BYTES
        log(f"benchmarking {len(streams)} artifacts and the reference ({rounds} "
            + ("interleaved rounds) ..." if interleaved else "rounds, one runtime at a time: its activations are "
               f"{activation_bytes(graph) / 2**30:.1f} GiB a step, too much to hold every runtime at once) ..."))
        for path in baselines:  # the authors' own exports: verified like ours, and rows in the benchmark
            name, stream, e = _baseline_entry(path, step_model, baseline_state, frames, log)
            entries[name], streams[name] = e, stream
        per = step_model.frames_per_step
        clip_feeds = Clip(frames=max(64, 2 * per), fps=step_model.fps).feeds(step_model)
        timing = dict(rounds=rounds, frames_per_step=per, round_budget_s=ROUND_BUDGET_S, **plan(per, steps_per_round))
        opened = {n: (lambda s=s: art.load(s, threads=1) if isinstance(s, Path) else s) for n, s in streams.items()}
        reference = reference_step(model if isinstance(model, str) and model in models.MODELS else step_model)

        def own(n, s):  # the row a runtime times in its own loop (a browser page), else None
            return _timed_in_page(n, s, entries[n], step_model, clip_feeds, rounds, steps_per_round)

        if interleaved:
            live = {n: o() for n, o in opened.items()}
            in_page = {n: r for n, r in ((n, own(n, s)) for n, s in live.items()) if r is not None}
            steps = {n: _feed_step(s, step_model) for n, s in live.items() if n not in in_page}
            rows = measure({**steps, ref_name: reference}, clip_feeds, **timing) + list(in_page.values())
            opened = {n: (lambda s=s: s) for n, s in live.items()}
        else:
            rows = []
            for n, o in opened.items():
                s = o()
                row = own(n, s)
                rows += [row] if row is not None else measure({n: _feed_step(s, step_model)}, clip_feeds, **timing)
                del s
                gc.collect()  # the runtime's buffers go before the next one's arrive
            rows += measure({ref_name: reference}, clip_feeds, **timing)
        ref = next(r for r in rows if r.name == ref_name)
        for r in rows:
            e = entries.setdefault(r.name, {"target": "reference", "backend": ref_backend,
                                            # built-ins run as their authors publish them (bench.reference_step)
                                            "precision": "mixed float16" if isinstance(model, str)
                                            and model in models.MODELS else step_model.source.get("precision",
                                                                                                  "float32")})
            lo, hi = r.fps_spread
            e.update(fps=r.fps, fps_min=lo, fps_max=hi, p50_ms=r.p50_ms, p99_ms=r.p99_ms,
                     x_reference=ref.p50_ms / r.p50_ms)
        log("drawing the model card's pictures ...")
        pictures = card_pictures(tmp, step_model, opened, entries, rows, frames)
        for name in streams:  # what a target adds to its release entry (the web targets: the demo page's screenshot)
            extras = hook(entries[name]["target"], "release_extras") if isinstance(streams[name], Path) else None
            if extras:
                log(f"{name}: release extras ...")
                try:
                    entries[name].update(extras(tmp / entries[name]["folder"], entries[name], log))
                except Exception as e:
                    raise ReleaseError(f"release failed; nothing was written. Failing targets: {name}: "
                                       f"{type(e).__name__}: {e}") from None
        release = {
            "model": step_model.name, "graphopt_version": __version__,
            "source": step_model.source if "package" in step_model.source else
            {**step_model.source, "fingerprint": fingerprint(step_model)},
            "tools": art.tool_versions(*tool_packages()),
            "frames_per_step": per, "inputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype,
                                                "role": step_model.roles()[v.name]} for v in graph.inputs],
            "outputs": [{"name": n, "shape": list(v.shape), "dtype": v.dtype,
                         "role": "pulse" if n == step_model.pulse_output else "output"}
                        for n, v in zip(graph.output_names, graph.outputs)],
            "flops_per_frame": graph.flops() / per, "params": len(graph.params()), "param_bytes": graph.param_bytes(),
            "state_tensors": len(graph.state), "state_bytes": graph.state_bytes(),
            "verification": {"frames": frames // per * per,  # whole chunks only
                             "clip": "synthetic face clip, 72 bpm, seed 0"},
            "tier_required": tier, "reference_row": ref_name,
            "benchmark": "interleaved" if interleaved else "one runtime at a time", "pictures": pictures, "machine": machine(),
            "sgemm_gflops_1thread": sgemm_gflops(), "artifacts": entries, "license": source_license(step_model.source),
            "timestamps": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "elapsed_s": round(time.time() - t0, 1)},
        }
        art.write_json(tmp / "release.json", release)
        (tmp / "README.md").write_text(model_card(release))
    log(f"wrote {out} ({time.time() - t0:.0f} s)")
    return out


def _timed_in_page(name: str, stream, entry: dict, spec, feeds: list, rounds: int, steps_per_round: int):
    """The benchmark row of an artifact whose runtime times its own loop (the target's bench_in_page hook: a
    browser runtime, timed in the page with no Python per step, as `graphopt bench` measures it): its first
    row (1 thread) is the artifact's, every row goes into entry["in_page"]; None where the target has no
    such hook or it cannot feed the model (then the artifact is measured as any other)."""
    from .benchmark import Row, plan
    from .targets import hook
    timed = hook(entry.get("target", ""), "bench_in_page") \
        if spec.frame_input and getattr(stream, "streams", 1) == 1 else None
    got = timed(stream, [f[spec.frame_input] for f in feeds], rounds=rounds,
                **plan(spec.frames_per_step, steps_per_round)) if timed else None
    if not got:
        return None
    rows = [Row(name, lat, spec.frames_per_step, tuple(medians)) for _, lat, medians in got]
    entry["measured"] = "in page"
    entry["in_page"] = [{"label": label, "fps": r.fps, "fps_min": r.fps_spread[0], "fps_max": r.fps_spread[1],
                         "p50_ms": r.p50_ms, "p99_ms": r.p99_ms} for (label, _, _), r in zip(got, rows)]
    return rows[0]


def activation_bytes(graph) -> int:
    """Bytes of every value one step computes (an upper bound of what a runtime holds at once)."""
    return sum(v.type.nbytes for n in graph.nodes for v in n.outputs)


def _baseline_entry(path: str, spec, state_file: str | None, frames: int, log) -> tuple[str, object, dict]:
    """A model graphopt did not build (the authors' own ONNX or TFLite export) as a release row: verified
    against the same reference over the same clip, benchmarked with the artifacts."""
    from . import equivalence
    from .baseline import open_baseline, reference_state
    from .bench import backend
    stream = open_baseline(path, spec, state_file, threads=1)
    name = f"baseline {Path(path).name}"
    log(f"verifying {name} ...")
    start = reference_state(stream.state, spec) if state_file else None  # the reference starts where it does
    r = equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec,
                          equivalence.Clip(frames=frames, fps=spec.fps), reference_state=start)
    stream.reset()
    target = stream.manifest["target"]
    return name, stream, {"target": "baseline-" + target, "backend": backend("baseline-" + target),
                          "file": Path(path).name, "precision": "as exported", "tier": r["tier"],
                          "nrmse_over_floor": r["nrmse_over_floor"], "pearson": r["pearson"],
                          "max_abs": r["max_abs"], "hr_bpm": r["hr_bpm"], "size_bytes": Path(path).stat().st_size}


def source_license(source: dict) -> dict:
    """The model's license and where it comes from: the source package's own metadata (its License
    field or license classifier and its project URLs), else unknown."""
    import importlib.metadata
    pkg = source.get("package")
    if not pkg:
        return {"license": "unknown", "note": "the model's own license; graphopt does not know it"}
    try:
        meta = importlib.metadata.metadata(pkg)
    except importlib.metadata.PackageNotFoundError:
        return {"license": "unknown"}
    lic = (meta.get("License-Expression") or meta.get("License") or "").strip()
    if not lic or len(lic) > 40:
        lic = next((c.rsplit("::", 1)[-1].strip().replace(" License", "") for c in meta.get_all("Classifier") or []
                    if c.startswith("License ::")), lic[:40] or "unknown")
    urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []] + \
        [u for u in [meta.get("Home-page")] if u]
    return {"license": lic, "authors": (meta.get("Author") or meta.get("Author-email") or "").strip()[:200],
            "urls": urls[:4], "package": f"{pkg}=={meta.get('Version')}"}


def card_pictures(folder: Path, spec, streams: dict, entries: dict, rows, frames: int) -> dict:
    """The card's pictures (card/*.svg): each artifact's waveform over the reference on the first seconds
    of the verification clip, the reference's spectrum with its heart rate, and FPS with the spread over
    rounds. streams: artifact name -> a callable that opens its Stream (each is run, then let go).
    Returns {"waveforms": {artifact: file}, "spectrum": file, "fps": file}."""
    from scipy.signal import welch

    from . import card_plots, equivalence, metrics
    pics = folder / "card"
    pics.mkdir()
    per = spec.frames_per_step
    clip = equivalence.Clip(frames=max(2 * per, min(frames, 10 * int(spec.fps)) // per * per), fps=spec.fps)
    ref_outs, _ = equivalence.reference_run(spec, clip)
    k = spec.output_names(len(ref_outs)).index(spec.pulse_output) if spec.pulse_output else 0
    ref = np.asarray(ref_outs[k], np.float64).reshape(len(ref_outs[k]), -1)[:, :per].ravel() if per > 1 else \
        np.asarray(ref_outs[k], np.float64).reshape(len(ref_outs[k]), -1)[:, 0]
    t = np.arange(len(ref)) / spec.fps
    out = {"waveforms": {}}
    for name, open_stream in streams.items():  # one runtime at a time where the release benchmarked so
        stream = open_stream()
        stream.reset()
        outs, _ = equivalence.run_steps(equivalence.stream_step(stream, spec), clip.feeds(spec), stream.state)
        stream.reset()
        del stream
        gc.collect()
        got = np.asarray(outs[k], np.float64).reshape(len(outs[k]), -1)
        got = got[:, :per].ravel() if per > 1 else got[:, 0]
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:80]  # a baseline's name is its file's: untrusted
        file = f"card/waveform-{stem}.svg"
        while file in out["waveforms"].values():
            file = file[:-4] + "_.svg"
        (folder / file).write_text(card_plots.line_plot(
            f"{name}: {spec.pulse_output or spec.output_names(len(ref_outs))[0]} over the reference", t,
            [("reference", ref), (name, got)], "seconds"))
        out["waveforms"][name] = file
    f, p = welch(ref - ref.mean(), fs=spec.fps, nperseg=min(len(ref), 256))
    band = (f >= 0.5) & (f <= 4.0)
    hr = metrics.estimate_hr(ref, spec.fps) if spec.pulse_output else None
    (folder / "card/spectrum.svg").write_text(card_plots.line_plot(
        "reference spectrum (Welch)" + (f", heart rate {hr:.0f} bpm" if hr else ""), f[band] * 60,
        [("power", p[band])], "beats per minute", marks=[(hr, f"{hr:.0f} bpm")] if hr else []))
    out["spectrum"] = "card/spectrum.svg"
    bars = [(r.name, r.fps, *r.fps_spread) for r in rows]
    (folder / "card/fps.svg").write_text(card_plots.bar_chart(
        "FPS, 1 thread (bar: median round; whisker: slowest to fastest round)", bars, "frames per second"))
    out["fps"] = "card/fps.svg"
    return out


def tool_packages() -> list[str]:
    """The packages whose versions a release records: the frontend's, every target runtime's (their
    descriptors'), the model source's."""
    from .targets import MODULES, get
    return list(dict.fromkeys(["jax", "jaxlib", "keras"] + [p for n in MODULES for p in get(n).packages]
                              + ["open-rppg"]))


def model_card(r: dict) -> str:
    """The release's README, generated from its manifest."""
    src = r["source"]
    from . import metrics
    from .frontends.onnx.model import SOURCE_FORMAT
    arts = r["artifacts"]
    ref_name = r.get("reference_row", "open-rppg JAX JIT (reference)")
    if "package" in src:
        origin = (f"Streaming rPPG model from `{src['package']}=={src.get('version', '?')}` (weights sha256 "
                  f"`{str(src.get('weights_sha256', '?'))[:16]}…`), exported by graphopt to every runtime below and "
                  "checked against the authors' own step.")
        ref_label, ref_col = "authors' step (open-rppg, jax.jit)", "x authors' JAX JIT"
    elif src.get("format") == SOURCE_FORMAT:
        origin = (f"Model from the ONNX file `{_md(src.get('file', '?'))}` (sha256 `{str(src.get('sha256', '?'))[:16]}…`, "
                  f"opset {_md(src.get('opset', '?'))}, made by {_md(src.get('producer') or 'an unknown exporter')}), exported "
                  "by graphopt to every runtime below and checked against onnxruntime running that file.")
        ref_label, ref_col = "the original file (onnxruntime)", "x original file"
    else:
        origin = (f"Model `{r['model']}` from a graphopt.ModelSpec (fingerprint `{str(src.get('fingerprint', '?'))[:16]}…`), "
                  "exported by graphopt to every runtime below and checked against its own fn under jax.jit.")
        ref_label, ref_col = "the spec's fn (jax.jit)", "x spec's JAX JIT"
    lines = _front_matter(r) + [f"# {r['model']} — graphopt {r['graphopt_version']} release", "", origin, ""] + \
        _use_and_license(r) + ["## Inputs, outputs, state", ""] + _io_lines(r) + [
             f"- {r['flops_per_frame'] / 1e6:.1f} MFLOP per frame, {r['params']} parameter tensors "
             f"({r['param_bytes'] / 1e6:.2f} MB).", "",
             "## Artifacts", "",
             "| artifact | runtime | precision | tier | NRMSE / floor | Pearson r | size MB | FPS (1 thread) | "
             f"{ref_col} |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for name, e in arts.items():
        if "tier" not in e:
            continue
        fps = (f"{e['fps']:.0f} ({e['fps_min']:.0f}-{e['fps_max']:.0f})" if "fps_min" in e else f"{e['fps']:.0f}") \
            if "fps" in e else "GPU only"
        x = f"{e['x_reference']:.2f}" if "x_reference" in e else ""
        below = not metrics.meets(e["tier_claimed"], e["tier"]) if e.get("tier_claimed") else False
        tier = f"{e['tier']} (claims {e['tier_claimed']}) [*]" if below else e["tier"]
        lines.append(f"| `{_md(e['file'])}` | {e['backend']} | {e['precision']} | {tier} | "
                     f"{e['nrmse_over_floor']:.1f} | {e['pearson']:.6f} | {e['size_bytes'] / 1e6:.2f} | {fps} | {x} |")
    ref = arts.get(ref_name)
    if ref:
        lines.append(f"| {ref_label} | {ref['backend']} | {ref.get('precision', 'float32')} | "
                     "reference | | | | "
                     f"{ref['fps']:.0f} | 1.00 |")
    if any("[*]" in line for line in lines):
        lines += ["", "[*] reaches a looser tier than its build's passes claim (the release accepted down to "
                  f"`--tier {r.get('tier_required')}`): "
                  "graphopt's rewrites are exact there, the runtime's own kernels round differently from the "
                  "reference (e.g. long conv and matmul accumulations summed in another order)."]
    paged = {n: e for n, e in arts.items() if e.get("measured") == "in page" and e.get("in_page")}
    if paged:
        more = [f"`{_md(n)}` {_md(row['label'])} {row['fps']:.0f} FPS" for n, e in paged.items()
                for row in e["in_page"][1:]]
        lines += ["", f"Browser rows ({', '.join(f'`{_md(n)}`' for n in paged)}) step the JavaScript Stream in "
                  "headless Chromium, timed in the page with performance.now (no Python per step), on 1 thread"
                  + (f"; with the runtime's default threads: {', '.join(more)}." if more else ".")]
    pics = r.get("pictures") or {}
    if pics:
        lines += ["", "## Pictures", "", f"![FPS per artifact, with the spread over rounds]({pics['fps']})", "",
                  f"![The reference's spectrum and heart rate]({pics['spectrum']})", ""]
        lines += [f"![{_md(name).replace('[', '(').replace(']', ')')}: waveform over the reference]({file})"
                  for name, file in pics["waveforms"].items()]
    skipped = {n: e["skipped"] for n, e in arts.items() if "skipped" in e}
    lines += [""] + [f"- `{_md(n)}` not built on this machine: {_md(why, 1000)}" for n, why in skipped.items()]
    from .targets import hook
    for name, e in arts.items():  # a target's own notes, e.g. an engine still to be built
        note = hook(e.get("target", ""), "card_lines")
        lines += note(name, e) if note else []
    m = r["machine"]
    per = r.get("frames_per_step", 1)
    how = "state carried" if per == 1 else f"one chunk of {per} frames per call, FPS counting frames"
    rounds = "interleaved rounds" if r.get("benchmark", "interleaved") == "interleaved" else \
        "rounds run one runtime at a time (too large to hold every runtime at once)"
    lines += ["", f"Measured on {m['cpu']} ({m['cores']} cores), batch 1, {how}, one thread per runtime, "
              f"median of {rounds}; single-thread sgemm {r['sgemm_gflops_1thread']:.0f} GFLOP/s. "
              f"Tiers (DESIGN.md): rounding = NRMSE <= 4x the fp32 noise floor; signal = r >= 0.9999 and the same "
              f"heart rate; quantised = r >= 0.999 and the same heart rate. Verified over "
              f"{r['verification']['frames']} frames of a {r['verification']['clip']}.", "",
              "## Running each artifact", ""] + _run_snippets(r) + [""]
    return "\n".join(lines)


def _front_matter(r: dict) -> list[str]:
    """YAML metadata in Hugging Face's model-card convention (license, library, tags, where the model is
    from); values are JSON strings, which YAML reads as they are."""
    import json
    src, lic = r["source"], r.get("license") or {}
    license_id = str(lic.get("license", "unknown")).lower().replace(" ", "-")
    tags = ["rppg", "remote-photoplethysmography", "heart-rate", "graphopt"] + \
        sorted({e["target"] for e in r["artifacts"].values() if e.get("target") not in (None, "reference")
                and not str(e.get("target")).startswith("baseline-")})
    model_source = f"{src['package']}=={src.get('version')}" if "package" in src else src.get("file", r["model"])
    q = _yaml_str
    return ["---", f"license: {q(license_id)}", "library_name: graphopt", "tags:"] + [f"- {q(t)}" for t in tags] + \
        [f"model_source: {q(model_source)}", f"model_name: {q(r['model'])}",
         f"graphopt_version: {q(r['graphopt_version'])}", "---", ""]


def _md(text, limit: int = 200) -> str:
    """Untrusted text (a file name, an exporter's name) for one line of the card: characters that are not
    printable (newlines, terminal escapes, lone surrogates) shown as \\n, \\x1b, ...; backticks as '."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                       for c in text)
    text = text.replace("`", "'").replace("|", "\\|")  # no code span or table cell ended early
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _yaml_str(text) -> str:
    """A YAML double-quoted scalar that every YAML parser reads back as `text`: a JSON string without ASCII
    escapes of non-ASCII characters (YAML has no surrogate pairs), the unprintable ones shown as _md does."""
    import json
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                       for c in text)
    return json.dumps(text, ensure_ascii=False)


def _use_and_license(r: dict) -> list[str]:
    lic = r.get("license") or {}
    lines = ["## Intended use and limitations", "",
             "- Intended use: estimating a blood-volume-pulse waveform and heart rate from a face video, one "
             "frame (or chunk) at a time, for research and wellness applications. It is not a medical device "
             "and its output must not be used for diagnosis.",
             "- Every artifact was verified against the reference on a **synthetic** face clip (a rendered face "
             "whose skin colour pulses at a known rate), not on real people: the tiers say that an artifact "
             "computes what the reference computes, not how well the model measures a pulse on real video. "
             "The model's accuracy, and its behaviour across skin tones, lighting and motion, are the authors' "
             "to report.",
             "- Tiers: rounding = NRMSE within 4x the float32 noise floor (what float32 rounding alone "
             "explains); signal = the same waveform (Pearson r >= 0.9999) and heart rate; quantised = r >= 0.999 "
             "and the same heart rate.", "",
             "## License and citation", ""]
    if lic.get("package"):
        lines.append(f"The model and its weights are `{lic['package']}`'s, under its license: "
                     f"**{lic.get('license', 'unknown')}** (authors: {lic.get('authors') or 'see the package'}"
                     + (f"; {', '.join(lic['urls'])}" if lic.get("urls") else "") + "). Cite the model's authors "
                     "as that project asks; graphopt only converts the model.")
    else:
        lines.append("The model's license is its authors' (graphopt does not know it); graphopt only converts "
                     "the model.")
    return lines + [""]


def _io_lines(r: dict) -> list[str]:
    per = r.get("frames_per_step", 1)
    out = []
    for i in r["inputs"]:
        role = i.get("role", "dt" if i["name"] == "dt" else "frame")  # releases before roles were recorded
        if role == "dt":
            out.append(f"- `{i['name']}`: float32 scalar, seconds since the previous frame (1/30 at 30 FPS).")
        elif role == "frame" and per > 1:
            out.append(f"- `{i['name']}`: {i['dtype']} `{i['shape']}`, a chunk of {per} RGB face crops in 0..1 "
                       "(frames on axis 1), one chunk per call.")
        elif role == "frame":
            out.append(f"- `{i['name']}`: {i['dtype']} `{i['shape']}`, RGB face crop in 0..1, one per step.")
        else:
            out.append(f"- `{i['name']}`: {i['dtype']} `{i['shape']}`.")
    for o in r["outputs"]:
        if o.get("role", "pulse") == "pulse":
            what = f"the {per} waveform samples of the chunk" if per > 1 else "the blood-volume-pulse sample for this frame"
            out.append(f"- `{o['name']}`: {o['dtype']} `{o['shape']}`, {what}.")
        else:
            out.append(f"- `{o['name']}`: {o['dtype']} `{o['shape']}`.")
    if r["state_tensors"]:
        out.append(f"- state: {r['state_tensors']} tensors ({r['state_bytes'] / 1e6:.2f} MB), `state_in_i` -> "
                   "`state_out_i`; start from `<model>.state.npz` and feed each step's `state_out_i` back as the "
                   "next step's `state_in_i` (the TFLite default and the Streams keep it for you). An artifact "
                   "may store a state in another layout than the authors' model holds it: its manifest entry then "
                   "gives `model_shape` and `view`, the NumPy steps from the stored tensor to the model's.")
    else:
        out.append("- no state: each call is independent (consecutive chunks do not overlap).")
    return out


@dataclass(frozen=True)
class Snippet:
    """What a target's card_snippet hook writes the model card's code with."""
    model: str  # the model's name (the stem of the artifact's files)
    folder: str  # the artifact's folder in the release
    x: str  # the frame (or chunk) input's name
    inputs: list  # the names fed each call: x, and dt where the model takes it
    stateful: bool  # whether `state` (a dict of the state_in_i arrays) is fed and carried


def _run_snippets(r: dict) -> list[str]:
    """Runnable lines per runtime (run from the release folder), with this model's own input names,
    shapes, dt and state where it has them: one section per built artifact named after its target, from
    the target's card_snippet hook, in the release's order. Sections are separated by blank lines."""
    from .targets import hook
    runs = [(name, hook(e["target"], "card_snippet")) for name, e in r["artifacts"].items()
            if name == e.get("target") and "file" in e]
    runs = [(folder, snippet) for folder, snippet in runs if snippet]
    if not runs:
        return []
    model, first = r["model"], runs[0][0]
    names = [i["name"] for i in r["inputs"]]
    has_dt, stateful = "dt" in names, bool(r["state_tensors"])
    x_spec = next(i for i in r["inputs"] if i["name"] != "dt")
    x = x_spec["name"]
    inputs = [x] + (["dt"] if has_dt else [])
    lines = ["```python", "import numpy as np",
             f"{x} = np.zeros({tuple(x_spec['shape'])}, np.{x_spec['dtype']})  # your input: RGB in 0..1"]
    if has_dt:
        lines.append("dt = np.array(1/30, np.float32)  # seconds since the previous frame")
    if stateful:
        lines.append(f"state = dict(np.load('{first}/{model}.state.npz'))  # state_in_i arrays, in order")
    for folder, snippet in runs:
        lines += [""] + snippet(Snippet(model, folder, x, inputs, stateful))
    lines += ["", "# or, with graphopt installed, any of them:", "import graphopt",
              f"stream = graphopt.load('{first}'); bvp = stream.step({x})", "```"]
    return lines
