"""graphopt bench: the authors' FPS table reproduced on this machine (DESIGN.md protocol).

Rows: every requested target fused and unfused (built into a temporary or given folder, not
verified), the authors' open-rppg step under jax.jit as the reference row, and any baseline step
model given by path. One thread per runtime, measured interleaved (graphopt.benchmark), plus this
core's single-thread sgemm rate and the resulting compute bound in FPS.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# rows that are not graphopt targets (a target's backend is in its descriptor: backend() below)
OTHER_BACKENDS = {"reference": "JAX JIT (authors' step)"}


def backend(row_kind: str) -> str:
    """The runtime behind a row: a target's declared backend (also for "baseline-<target>", a baseline
    run on that target's runtime), or the reference's."""
    from .targets import MODULES, get
    kind = row_kind.removeprefix("baseline-")
    return get(kind).backend if kind in MODULES else OTHER_BACKENDS.get(row_kind, row_kind)


def single_thread_env() -> None:
    """One thread per runtime. Must run before jax/tensorflow start: their thread pools are sized
    at start-up (onnxruntime and LiteRT take a thread count per session)."""
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def sgemm_gflops(n: int = 512, repeats: int = 20) -> float:
    """Single-thread sgemm rate of this core, measured with onnxruntime's MatMul (MLAS) on 1 thread."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "sgemm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = {"x": np.ones((n, n), np.float32)}
    for _ in range(3):
        sess.run(None, x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def reference_row(model, spec) -> tuple[str, str]:
    """The reference row's name and backend: the authors' step for open-rppg's models, else the spec's own
    reference (its fn under jax.jit, or onnxruntime on the original ONNX file)."""
    from . import models
    if models.is_builtin(model):
        return "open-rppg JAX JIT (reference)", backend("reference")
    if spec.reference_kind == "jax.jit":
        return f"{spec.name} JAX JIT (reference)", "JAX JIT (the spec's fn)"
    return f"{spec.name} {spec.reference_kind} (reference)", spec.reference_kind


def reference_step(model, streams: int = 1) -> Callable:
    """The model's own step under jax.jit (a built-in: as its authors publish it), state carried on the
    device: a callable over one step's feeds (input name -> array). streams > 1: the step under jax.vmap
    over that many streams, each fed the same feeds."""
    import jax
    from . import models
    m = models.resolve(model, None, True) if isinstance(model, str) and model in models.MODELS else models.resolve(model)
    base = m
    if streams > 1:
        from .multistream import MultiStreamSpec
        m = MultiStreamSpec(m, streams)
    step = m.reference()
    names = list(m.inputs)
    state = [np.asarray(s) for s in m.initial_state]
    batch = _batcher(base, streams)

    def one(feeds):
        nonlocal state
        feeds = batch(feeds)
        y, state = step(*(feeds[n] for n in names), *state)
        return jax.block_until_ready(y)  # JAX dispatches asynchronously: time the step, not its dispatch
    return one


def _batcher(spec, streams: int) -> Callable:
    """One step's feeds of a one-stream spec -> the feeds of `streams` streams (each the same), memoised per
    feeds dict (a benchmark cycles through a few)."""
    if streams <= 1:
        return lambda feeds: feeds
    from .multistream import stack
    memo = {}

    def batch(feeds):
        key = id(feeds)
        if key not in memo:
            memo[key] = (feeds, {k: (np.full(streams, np.asarray(v).reshape(()), np.float32) if k == spec.dt_input
                                     else stack([v] * streams, np.shape(v), streams)) for k, v in feeds.items()})
        return memo[key][1]
    return batch


def run(model="facephys", targets: list[str] | None = None, baselines: list[str] = (),
        state_file: str | None = None, out_dir: str | None = None, rounds: int = 5, steps_per_round: int = 100,
        unfused: bool = True, force: bool = False, artifacts: list[str] = (), cache: bool = True,
        streams: list[int] = (), variants: list[str] = (), log: Callable[[str], None] = print) -> dict:
    """The FPS table's rows, measured. The model is traced once (or taken from the trace cache) for every
    build. artifacts: artifact folders (or folders of them) of this model to measure as they are; with
    artifacts and no targets nothing is built. out_dir: where builds go and stay; an artifact already there
    for the same model, target and pipeline is measured again instead of rebuilt (unless force). Without
    out_dir the builds go to a temporary folder, removed at the end (also on failure).
    streams: also build every target with each of these stream counts (graphopt.multistream; fused only) and
    run the reference under jax.vmap with as many: rows "... xN" whose FPS counts the frames of all streams.
    variants: release variants to build and measure too (e.g. tflite-int8, tflite-int8-dynamic: a target with
    its variant's options), rows "graphopt <variant>"."""
    single_thread_env()
    from . import artifact as art
    from . import trace_cache
    from .builder import target_module
    from .targets import names as target_names

    explicit = targets is not None
    targets = list(targets if explicit else ([] if artifacts else target_names()))
    for t in targets:
        target_module(t)  # unknown targets fail before any work
    from .targets import release_variants
    known = release_variants()
    for v in variants:
        if v not in known:
            raise art.ArtifactError(f"--variants {v!r:.40} is not a release variant; choose from {', '.join(known)}")
    given = [m for path in artifacts for m in _artifact_folders(path)]  # a missing or foreign folder fails here
    traced = trace_cache.load_traced(model, cache=cache, log=log)  # once: every build starts from this graph
    log(f"{'loaded the traced IR of' if traced.cache == 'hit' else 'traced'} {traced.spec.name} "
        f"({traced.seconds:.1f} s)")
    tmp = None if out_dir else tempfile.mkdtemp(prefix="graphopt-bench-")
    try:
        return _run(model, traced, targets, given, baselines, state_file, Path(out_dir or tmp), tmp is None,
                    rounds, steps_per_round, unfused, force, log, art, [n for n in streams if n > 1],
                    [(v, *known[v]) for v in variants])
    finally:
        if tmp is not None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


def _artifact_folders(path: str) -> list[tuple[dict, Path]]:
    """(manifest, folder) of the artifact at `path`, or of each artifact folder directly inside it."""
    from . import artifact as art
    p = Path(path)
    if not p.is_dir():
        raise art.ArtifactError(f"--artifacts {path} is not a folder; pass artifact folders graphopt built")
    try:
        return [art.read_manifest(p)]
    except art.ArtifactError:
        subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        found = []
        for d in subs:
            try:
                found.append(art.read_manifest(d))
            except art.ArtifactError:
                continue
        if not found:
            raise art.ArtifactError(f"--artifacts {path} holds no graphopt artifact (nor do its folders)") from None
        return found


def _variant(manifest: dict) -> str:
    """fused (the default pipeline), unfused (--no-fuse), or the pipeline's own name."""
    name = (manifest.get("pipeline") or {}).get("name", "default")
    return {"default": "fused", "none": "unfused"}.get(name, str(name))


def _reusable(folder: Path, spec, target: str, variant: str) -> bool:
    """Whether `folder` holds an artifact a build of this row would make: the same model (fingerprint),
    target, pipeline and precision, nothing baked in."""
    from . import artifact as art
    from .equivalence import fingerprint
    if not folder.is_dir():
        return False
    try:
        m, _ = art.read_manifest(folder)
    except art.ArtifactError:
        return False
    return (m.get("model") == spec.name and m.get("target") == target and _variant(m) == variant
            and (m.get("source") or {}).get("fingerprint") == fingerprint(spec)
            and m.get("precision") == spec.source.get("precision", "float32") and not m.get("fixed_inputs")
            and not m.get("streams"))


def _run(model, traced, targets, given, baselines, state_file, work: Path, keep: bool, rounds, steps_per_round,
         unfused, force, log, art, streams: list[int], variants: list = ()) -> dict:
    from . import models
    from .baseline import open_baseline
    from .benchmark import Row, measure, plan
    from .builder import EngineNeedsGpu, build, target_module
    from .equivalence import Clip
    from .targets import get as get_target
    from .targets import hook

    ref_model = traced.spec
    per = ref_model.frames_per_step
    frames = Clip(frames=max(64, 2 * per), fps=ref_model.fps).feeds(ref_model)
    steps: dict[str, Callable] = {}
    meta: dict[str, dict] = {}

    in_page = []  # rows a target measures in its own loop (a browser runtime: in the page, no Python per step)

    def add(name: str, stream, target: str, variant: str, path) -> None:
        if name in steps:  # two given artifacts of the same row: tell them apart by their folder
            name += f" ({Path(path).parent.name})"
        while name in steps:
            name += "'"
        one = ref_model.frame_input and getattr(stream, "streams", 1) == 1
        measure_own = hook(target, "bench_in_page") if one else None
        own = measure_own(stream, [f[ref_model.frame_input] for f in frames], rounds=rounds,
                          **plan(per, steps_per_round)) if measure_own else None
        if own is not None:  # [(label, latencies in s, each round's median)]
            for label, lat, medians in own:
                in_page.append(Row(f"{name} ({label})", lat, per, medians))
                meta[in_page[-1].name] = {"backend": backend(target), "nodes": stream.manifest["graph"]["nodes"],
                                          "target": target, "fused": variant == "fused", "streams": 1,
                                          "artifact": str(path) if path is not None else None, "measured": "in page"}
            return
        steps[name] = _feed_step(stream, ref_model)
        meta[name] = {"backend": backend(target), "nodes": stream.manifest["graph"]["nodes"], "target": target,
                      "fused": variant == "fused", "artifact": str(path) if path is not None else None,
                      "streams": stream.streams}

    multi = {}

    def multi_traced(n: int):  # the model with n streams, traced once for every target
        if n not in multi:
            from . import trace_cache
            from .multistream import MultiStreamSpec
            base = multi.setdefault("base", models.resolve(model))
            multi[n] = trace_cache.load_traced(MultiStreamSpec(base, n), cache=False)
        return multi[n]

    covered = set()
    for manifest, folder in given:
        if manifest.get("model") != ref_model.name:
            raise art.ArtifactError(f"--artifacts {folder} is a {manifest.get('model')!r:.40} artifact, not "
                                    f"{ref_model.name}")
        stream = art.load(folder, threads=1)
        variant = _variant(manifest)
        covered.add((manifest["target"], variant))
        log(f"measuring {folder} as it is")
        add(f"graphopt {manifest['target']} {variant}", stream, manifest["target"], variant,
            folder / manifest["file"])
    for t in targets:
        ok, reason = target_module(t).available()
        if not ok:
            log(f"skipping {t}: {reason}")
            continue
        for fused in ([True, False] if unfused else [True]):
            variant = "fused" if fused else "unfused"
            if (t, variant) in covered:
                continue
            dest = work / f"{ref_model.name}-{t}-{variant}"
            name = f"graphopt {t} {variant}"
            stream = None
            if keep and not force and _reusable(dest, ref_model, t, variant):
                try:
                    stream = art.load(dest, threads=1)
                    path = dest / stream.manifest["file"]
                    log(f"reusing {name} in {dest}")
                except art.ArtifactError as e:  # e.g. a changed file: built again (which needs --force)
                    log(f"not reusing {dest}: {e}")
            if stream is None:
                log(f"building {name} ...")
                try:
                    a = build(model, t, dest, fuse=fused, verify=False, force=force, traced=traced,
                              log=lambda m: None)
                except EngineNeedsGpu as e:  # a part only a machine with a device builds
                    part = get_target(t).device_part
                    log(f"skipping {t}: {part.bench_note if part else e}")
                    break
                stream, path = art.load(a.path, threads=1), a.path
            add(name, stream, t, variant, path if keep else None)  # a temporary folder is removed after the run
        for n in streams:
            name, dest = f"graphopt {t} x{n}", work / f"{ref_model.name}-{t}-x{n}"
            log(f"building {name} ({n} streams per step) ...")
            try:
                a = build(model, t, dest, verify=False, force=True, traced=multi_traced(n), log=lambda m: None)
            except EngineNeedsGpu as e:  # a part only a machine with a device builds
                part = get_target(t).device_part
                log(f"skipping {name}: {part.bench_note if part else e}")
                continue
            add(name, art.load(a.path, threads=1), t, "fused", a.path if keep else None)
    for vname, t, variant in variants:  # e.g. the int8 builds: the target with the variant's options
        name = f"graphopt {vname}"
        if name in steps:
            continue
        log(f"building {name} ...")
        try:
            a = build(model, t, work / f"{ref_model.name}-{vname}", verify=False, force=True, traced=traced,
                      target_options=dict(variant.options) or None, log=lambda m: None)
        except EngineNeedsGpu as e:
            part = get_target(t).device_part
            log(f"skipping {name}: {part.bench_note if part else e}")
            continue
        add(name, art.load(a.path, threads=1), t, "fused", a.path if keep else None)
    ref_row, ref_backend = reference_row(model, ref_model)
    ref_src = model if isinstance(model, str) and model in models.MODELS else ref_model
    steps[ref_row] = reference_step(ref_src)
    meta[ref_row] = {"backend": ref_backend, "target": "reference", "streams": 1}
    for n in streams:  # the authors' step under jax.vmap: what batching gives without graphopt
        steps[f"{ref_row} x{n} (jax.vmap)"] = reference_step(ref_src, streams=n)
        meta[f"{ref_row} x{n} (jax.vmap)"] = {"backend": ref_backend, "target": "reference", "streams": n}
    for path in baselines:
        stream = open_baseline(path, ref_model, state_file, threads=1)
        kind = "baseline-" + stream.manifest["target"]
        name = f"baseline {Path(path).name}"
        if name in steps:  # two baselines with the same file name: tell them apart by their folder
            name = f"baseline {Path(path).parent.name}/{Path(path).name}"
        while name in steps:
            name += "'"
        steps[name] = _feed_step(stream, ref_model)
        meta[name] = {"backend": backend(kind), "target": kind, "artifact": str(path)}
    timing = plan(per, steps_per_round)
    log(f"measuring {len(steps)} rows: {rounds} interleaved rounds of {timing['steps_per_round']} steps, 1 thread ...")
    rows = measure(steps, frames, rounds=rounds, frames_per_step=per, **timing) + in_page
    for r in rows:  # a multi-stream step advances every stream: its FPS counts the frames of all of them
        r.frames_per_step = per * meta[r.name].get("streams", 1)
    gflops = sgemm_gflops()
    flops = traced.graph.flops() / per  # the traced graph (builds run on copies of it)
    bound_fps = gflops * 1e9 / flops if flops else None
    ref = next(r for r in rows if r.name == ref_row)
    result = {"model": ref_model.name, "frames_per_step": per, "machine": machine(), "sgemm_gflops_1thread": gflops,
              "flops_per_frame": flops, "compute_bound_fps": bound_fps, "rows": []}
    for r in rows:
        result["rows"].append({"name": r.name, "fps": r.fps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                               "x_reference": r.fps / ref.fps,  # frames per second: all streams' frames
                               "of_compute_bound": r.fps / bound_fps if bound_fps else None,
                               "live_streams_30fps": r.fps / ref_model.fps, **meta[r.name]})
    for r in result["rows"]:  # per-frame gain of a multi-stream row over the same runtime with one stream
        base = r["name"].rsplit(" x", 1)[0]
        one = next((o for o in result["rows"] if o.get("streams", 1) == 1 and o["target"] == r["target"]
                    and (o["name"] == base or o["name"] == base + " fused")), None)
        if r.get("streams", 1) > 1 and one:
            r["x_one_stream"] = r["fps"] / one["fps"]
    return result


def machine() -> dict:
    import platform
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}


def markdown(result: dict) -> str:
    lines = ["| Runtime | FPS | Backend | p50 ms | p99 ms | x reference (JAX JIT) | of compute bound | nodes |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: -r["fps"]):
        bound = f"{r['of_compute_bound'] * 100:.0f}%" if r.get("of_compute_bound") else ""
        lines.append(f"| {r['name']} | {r['fps']:.0f} | {r['backend']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['x_reference']:.2f} | {bound} | {r.get('nodes', '')} |")
    m = result["machine"]
    lines.append("")
    per = result.get("frames_per_step", 1)
    unit = "state carried" if per == 1 else f"chunks of {per} frames (FPS counts frames)"
    multi = [r for r in result["rows"] if r.get("streams", 1) > 1]
    if multi:
        lines += ["", "| Runtime | streams per step | FPS (all streams) | live 30-FPS streams per core | "
                      "per-frame gain over 1 stream | p50 ms per step |", "|---|---:|---:|---:|---:|---:|"]
        for r in sorted(multi, key=lambda r: (r["name"].rsplit(" x", 1)[0], r["streams"])):
            gain = f"{r['x_one_stream']:.2f}" if r.get("x_one_stream") else ""
            lines.append(f"| {r['name']} | {r['streams']} | {r['fps']:.0f} | {r['live_streams_30fps']:.1f} | {gain} | "
                         f"{r['p50_ms']:.3f} |")
        lines.append("")
    lines.append(f"Batch 1, {unit}, 1 thread, interleaved rounds. Machine: {m['cpu']}, {m['cores']} cores. "
                 f"Single-thread sgemm {result['sgemm_gflops_1thread']:.1f} GFLOP/s; "
                 f"{(result['flops_per_frame'] or 0) / 1e6:.1f} MFLOP/frame -> compute bound "
                 f"{result['compute_bound_fps'] or 0:.0f} FPS.")
    if any(r.get("measured") == "in page" for r in result["rows"]):
        lines.append("Browser rows (threads in parentheses) step the JavaScript Stream in headless Chromium, timed in "
                     "the page with performance.now (no Python per step), after the interleaved rounds.")
    return "\n".join(lines)


def _feed_step(stream, spec) -> Callable:
    """A Stream as a callable over one step's feeds (input name -> array), as bench measures it."""
    from .equivalence import stream_step
    step = stream_step(stream, spec)
    if stream.streams <= 1:
        return lambda feeds: step(feeds, None)
    batch = _batcher(spec, stream.streams)
    dt = {spec.dt_input: "dt"} if spec.dt_input else {}  # the stream's dt, whatever its name
    return lambda feeds: stream.step(**{dt.get(k, k): v for k, v in batch(feeds).items()})
