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


def reference_step(model) -> Callable:
    """The model's own step under jax.jit (a built-in: as its authors publish it), state carried on the
    device: a callable over one step's feeds (input name -> array)."""
    import jax
    from . import models
    m = models.resolve(model, None, True) if isinstance(model, str) and model in models.MODELS else models.resolve(model)
    step = m.reference()
    names = list(m.inputs)
    state = [np.asarray(s) for s in m.initial_state]

    def one(feeds):
        nonlocal state
        y, state = step(*(feeds[n] for n in names), *state)
        return jax.block_until_ready(y)  # JAX dispatches asynchronously: time the step, not its dispatch
    return one


def run(model="facephys", targets: list[str] | None = None, baselines: list[str] = (),
        state_file: str | None = None, out_dir: str | None = None, rounds: int = 5, steps_per_round: int = 100,
        unfused: bool = True, force: bool = False, log: Callable[[str], None] = print) -> dict:
    single_thread_env()
    from . import artifact as art
    from . import models
    from .baseline import open_baseline
    from .benchmark import measure, plan
    from .builder import EngineNeedsGpu, build, target_module
    from .targets import get as get_target
    from .targets import names as target_names
    from .equivalence import Clip

    targets = list(targets or target_names())
    for t in targets:
        target_module(t)  # unknown targets fail before any work
    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="graphopt-bench-"))
    ref_model = models.resolve(model)
    per = ref_model.frames_per_step
    frames = Clip(frames=max(64, 2 * per), fps=ref_model.fps).feeds(ref_model)
    steps: dict[str, Callable] = {}
    meta: dict[str, dict] = {}
    for t in targets:
        ok, reason = target_module(t).available()
        if not ok:
            log(f"skipping {t}: {reason}")
            continue
        for fused in ([True, False] if unfused else [True]):
            name = f"graphopt {t} {'fused' if fused else 'unfused'}"
            log(f"building {name} ...")
            try:
                a = build(ref_model, t, work / f"{ref_model.name}-{t}-{'fused' if fused else 'unfused'}", fuse=fused,
                          verify=False, force=force, log=lambda m: None)
            except EngineNeedsGpu as e:  # a part only a machine with a device builds
                part = get_target(t).device_part
                log(f"skipping {t}: {part.bench_note if part else e}")
                break
            stream = art.load(a.path, threads=1)
            steps[name] = _feed_step(stream, ref_model)
            meta[name] = {"backend": backend(t), "nodes": a.manifest["graph"]["nodes"], "target": t,
                          "fused": fused, "artifact": str(a.path)}
    ref_row, ref_backend = reference_row(model, ref_model)
    steps[ref_row] = reference_step(model if model in models.MODELS else ref_model)
    meta[ref_row] = {"backend": ref_backend, "target": "reference"}
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
    rows = measure(steps, frames, rounds=rounds, frames_per_step=per, **timing)
    gflops = sgemm_gflops()
    flops = ref_model.trace().flops() / per
    bound_fps = gflops * 1e9 / flops if flops else None
    ref = next(r for r in rows if r.name == ref_row)
    result = {"model": ref_model.name, "frames_per_step": per, "machine": machine(), "sgemm_gflops_1thread": gflops, "flops_per_frame": flops,
              "compute_bound_fps": bound_fps, "rows": []}
    for r in rows:
        result["rows"].append({"name": r.name, "fps": r.fps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                               "x_reference": ref.p50_ms / r.p50_ms,
                               "of_compute_bound": r.fps / bound_fps if bound_fps else None, **meta[r.name]})
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
    lines.append(f"Batch 1, {unit}, 1 thread, interleaved rounds. Machine: {m['cpu']}, {m['cores']} cores. "
                 f"Single-thread sgemm {result['sgemm_gflops_1thread']:.1f} GFLOP/s; "
                 f"{(result['flops_per_frame'] or 0) / 1e6:.1f} MFLOP/frame -> compute bound "
                 f"{result['compute_bound_fps'] or 0:.0f} FPS.")
    return "\n".join(lines)


def _feed_step(stream, spec) -> Callable:
    """A Stream as a callable over one step's feeds (input name -> array), as bench measures it."""
    from .equivalence import stream_step
    step = stream_step(stream, spec)
    return lambda feeds: step(feeds, None)
