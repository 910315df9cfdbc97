"""int8 rows of issue 18 (part 3) in one interleaved run, 1 thread: the authors' int8 TFLite, graphopt's tflite
float32, int8-dynamic (every layer int8, the build `--quantize int8` made before) and int8 (per-layer precision
from measured sensitivity), and onnxruntime float32 and int8 (static QDQ). Each row's tier and Pearson r against
the authors' step (verification clip, 600 frames), FPS (median over rounds, spread = slowest and fastest
round) and the ratio to the authors' file.

Two clocks: wall time (what a user sees) and the thread's CPU time (time.thread_time: every runtime here runs
on the calling thread with 1 thread, so this is the step's own work, unaffected by other processes on a
shared machine). The ratio to the authors' row is taken on both.

The authors' model.tflite: pass it with --authors FILE (and --authors-state FILE, their gzip-JSON or npz
state, when it does not start from zeros). open-rppg 0.1.1 does not ship it; without --authors the row is a
stand-in built the way the authors built theirs: their FacePhys step (traced from open-rppg's Keras code,
exact passes only, so the same ops as the model they converted), as a TF function with their I/O names
(input, dt, state_in_i -> output, state_out_i), converted by the TFLite converter with dynamic-range int8
(Optimize.DEFAULT). It runs as a baseline (graphopt.baseline), as `graphopt verify/bench --baseline` runs the
authors' files.

Not part of the test run. Run by hand (builds about 10 minutes on 2 shared cores, then ~2 minutes):

    .venv/bin/python tests/benchmarks/bench_int8.py [--out DIR] [--rounds 9] [--steps 100]
        [--authors model.tflite [--authors-state state.json.gz]] [--rows a,b,...] [--json result.json]
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # NumPy's BLAS: 1 thread
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# name -> (target, target options); the authors' row is added in front
ROWS = {
    "graphopt tflite float32": ("tflite", {}),
    "graphopt tflite int8-dynamic (every layer)": ("tflite", {"quantize": "int8-dynamic"}),
    "graphopt tflite int8 (per layer, new)": ("tflite", {"quantize": "int8"}),
    "graphopt tflite int8 (per layer, --state-mode io)": ("tflite", {"quantize": "int8", "state_mode": "io"}),
    "graphopt onnx float32": ("onnx", {}),
    "graphopt onnx int8 (static QDQ, per layer)": ("onnx", {"quantize": "int8"}),
}
AUTHORS = "authors' model.tflite (int8 dynamic-range)"
STAND_IN = "authors-style model.tflite (int8 dynamic-range; stand-in, see --authors)"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")[:60]


def build_rows(out: Path, names: list[str], rebuild: bool) -> dict[str, Path]:
    from graphopt import trace_cache
    from graphopt.builder import build
    traced = trace_cache.load_traced("facephys", log=log)
    folders = {}
    for name in names:
        target, options = ROWS[name]
        dest = out / folder_name(name)
        if rebuild or not list(dest.glob("*.manifest.json")):
            log(f"building {name} into {dest} ...")
            t0 = time.time()
            build("facephys", target, dest, force=True, traced=traced, target_options=options or None, log=log)
            log(f"      built in {time.time() - t0:.0f} s")
        folders[name] = dest
    return folders


def stand_in(out: Path) -> Path:
    """The authors-style int8 TFLite (see the module docstring)."""
    path = out / "authors-style" / "model.tflite"
    if path.is_file():
        return path
    from graphopt import artifact as art
    from graphopt import passes, trace_cache
    from graphopt.targets.tf_module import build_module, to_tflite
    log("building the authors-style stand-in (their step, exact passes, dynamic-range int8) ...")
    graph = trace_cache.load_traced("facephys", log=log).copy_graph()
    graph, report = passes.run_pipeline(graph, passes.pipeline_for("tf", exact_only=True))
    assert report["exact"]
    manifest = art.describe_graph(graph, "model.tflite", "tflite", "float32")
    manifest["inputs"][0]["name"], manifest["inputs"][1]["name"] = "input", "dt"
    manifest["outputs"][0]["name"] = "output"
    module, signatures = build_module(graph, manifest, "io")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_tflite(module, signatures, "io", "int8-dynamic"))
    return path


def verify_baseline(stream, state_file) -> dict:
    from graphopt import equivalence, models
    from graphopt.baseline import reference_state
    spec = models.load("facephys")
    ref_state = reference_state(stream.state, spec) if state_file else None
    return equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec, equivalence.Clip(),
                             reference_state=ref_state)


def measure(streams: dict, frames: np.ndarray, rounds: int, steps: int, warmup: int = 30) -> dict:
    """Interleaved rounds: every round steps each stream `steps` times; per round and row, the median wall
    and CPU time of a step."""
    wall = {n: [] for n in streams}
    cpu = {n: [] for n in streams}
    for s in streams.values():
        for i in range(warmup):
            s.step(frames[i % len(frames)])
    for r in range(rounds):
        for name, s in streams.items():
            w, c = [], []
            for i in range(steps):
                frame = frames[(r * steps + i) % len(frames)]
                c0, w0 = time.thread_time(), time.perf_counter()
                s.step(frame)
                w.append(time.perf_counter() - w0)
                c.append(time.thread_time() - c0)
            wall[name].append(float(np.median(w)))
            # thread_time ticks coarsely on some kernels: the round's mean, not its median
            cpu[name].append(float(np.mean(c)))
        log(f"round {r + 1}/{rounds} done")
    return {n: {"wall_fps": 1 / float(np.median(wall[n])), "wall_fps_min": 1 / max(wall[n]),
                "wall_fps_max": 1 / min(wall[n]), "cpu_fps": 1 / float(np.median(cpu[n])),
                "cpu_fps_min": 1 / max(cpu[n]), "cpu_fps_max": 1 / min(cpu[n])} for n in streams}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "graphopt-bench-int8"))
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=100, help="steps per row per round")
    p.add_argument("--authors", help="the authors' model.tflite (else the stand-in, see the docstring)")
    p.add_argument("--authors-state", help="its initial state (npz or the authors' gzip-JSON)")
    p.add_argument("--rows", help="comma-separated subset of: " + ", ".join(ROWS))
    p.add_argument("--rebuild", action="store_true", help="build the artifacts again even where --out has them")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    out = Path(a.out)
    names = [n.strip() for n in a.rows.split(",")] if a.rows else list(ROWS)
    folders = build_rows(out, names, a.rebuild)

    from graphopt import artifact as art
    from graphopt.baseline import open_baseline
    from graphopt.equivalence import Clip
    authors = Path(a.authors) if a.authors else stand_in(out)
    authors_name = AUTHORS if a.authors else STAND_IN
    result = {"machine": {"cpu": _cpu(), "threads": 1}, "rows": {}}
    streams = {authors_name: open_baseline(authors, "facephys", a.authors_state, threads=1)}
    log(f"verifying {authors_name} against the authors' step ...")
    v = verify_baseline(streams[authors_name], a.authors_state)
    result["rows"][authors_name] = {"file": str(authors), "tier": v["tier"], "pearson": v["pearson"],
                                    "nrmse": v["nrmse"], "hr_bpm": v["hr_bpm"]}
    for name in names:
        stream = art.load(folders[name], threads=1)
        m = stream.manifest
        eq = m.get("equivalence", {})
        q = m.get("quantization") or {}
        result["rows"][name] = {"file": str(folders[name]), "precision": m["precision"], "tier": eq.get("tier"),
                                "tier_claimed": eq.get("tier_claimed"), "pearson": eq.get("pearson"),
                                "nrmse": eq.get("nrmse"), "hr_bpm": eq.get("hr_bpm"),
                                **({"int8_layers": q.get("int8_layers"), "float_layers": q.get("float_layers"),
                                    "int8_flops_fraction": q.get("int8_flops_fraction")} if q else {}),
                                "build_time_s": m.get("pipeline", {}).get("build_time_s")}
        streams[name] = stream
    frames = Clip(frames=64, seed=3).array((1, 1, 36, 36, 3))
    log(f"benchmark: {len(streams)} rows, {a.rounds} interleaved rounds of {a.steps} steps, 1 thread ...")
    timing = measure(streams, frames, a.rounds, a.steps)
    base = timing[authors_name]
    for name, t in timing.items():
        result["rows"][name].update(t, x_authors_wall=t["wall_fps"] / base["wall_fps"],
                                    x_authors_cpu=t["cpu_fps"] / base["cpu_fps"])
    print(table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def table(result: dict) -> str:
    lines = ["| artifact | precision | tier (r vs the authors' step) | FPS wall (spread) | x authors' | "
             "FPS CPU time (spread) | x authors' |", "|---|---|---|---:|---:|---:|---:|"]
    for name, r in result["rows"].items():
        tier = f"{r['tier'] or 'none'} (r {r['pearson']:.6f})" if r.get("pearson") is not None else "n/a"
        extra = f"; {r['int8_layers']} int8 / {r['float_layers']} float layers, " \
                f"{100 * r['int8_flops_fraction']:.0f}% of their FLOPs int8" if r.get("int8_layers") is not None else ""
        lines.append(f"| {name} | {r.get('precision', 'int8 dynamic-range')}{extra} | {tier} | "
                     f"{r['wall_fps']:.0f} ({r['wall_fps_min']:.0f}-{r['wall_fps_max']:.0f}) | "
                     f"{r['x_authors_wall']:.2f} | "
                     f"{r['cpu_fps']:.0f} ({r['cpu_fps_min']:.0f}-{r['cpu_fps_max']:.0f}) | "
                     f"{r['x_authors_cpu']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
