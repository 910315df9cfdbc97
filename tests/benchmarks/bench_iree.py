"""FacePhys FPS of the iree target against xla, tflite and onnx (issue 18), and IREE compiler-flag variants,
in one interleaved run: batch 1, state carried, 1 thread, every Stream stepped in turn each round
(graphopt.benchmark), the authors' jax.jit step as the reference row. Not part of the test run:

    .venv/bin/python tests/benchmarks/bench_iree.py --out /tmp/iree-bench [--rounds 9] [--steps 100]

FacePhys is built (default pipeline, unverified: verification is the tests' and the build's job) for onnx,
xla, tflite and iree into --out, or reused from there; then the iree artifact's StableHLO is compiled again
with each flag variant (VARIANTS) into a sibling folder, its manifest updated to the new file. Prints each
row's median FPS, the slowest and fastest round, and its ratio to xla per round (median, min-max): ratios
taken within a round are what survive a shared machine's drift. Each is given twice: from the median step's
wall time, and from the process's CPU time per step (on a machine shared with other jobs, time-slicing
inflates wall time, not the CPU time a single-threaded step costs).
"""
from __future__ import annotations

from graphopt import bench

bench.single_thread_env()  # before jax or tensorflow start

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

TARGETS = ("onnx", "xla", "tflite", "iree")
# name -> iree-compile flags, in place of the target's own (iree.compile_flags(): host CPU, data tiling)
VARIANTS = {
    "iree-host-defaults": ["--iree-llvmcpu-target-cpu=host"],  # IREE's defaults but the CPU
    "iree-generic": ["--iree-llvmcpu-target-cpu=generic"],  # IREE's defaults
    "iree-host-data-tiling-ukernels": ["--iree-llvmcpu-target-cpu=host", "--iree-opt-data-tiling",
                                       "--iree-llvmcpu-enable-ukernels=all"],
    "iree-host-data-tiling-O3": ["--iree-llvmcpu-target-cpu=host", "--iree-opt-data-tiling", "--iree-opt-level=O3"],
}


def built(out: Path, target: str, traced) -> Path:
    from graphopt import artifact as art
    from graphopt.builder import build
    folder = out / f"facephys-{target}"
    try:
        m, _ = art.read_manifest(folder)
        if m.get("target") == target:
            return folder
    except art.ArtifactError:
        pass
    print(f"building {target} ...", flush=True)
    build("facephys", target, folder, verify=False, force=True, traced=traced, log=lambda m: None)
    return folder


def variant(out: Path, base: Path, name: str, flags: list[str]) -> Path:
    """The iree artifact with its StableHLO compiled again with `flags` (reused when already there)."""
    from graphopt import artifact as art
    from graphopt.targets import iree
    folder = out / f"facephys-{name}"
    if folder.is_dir():
        m, _ = art.read_manifest(folder)
        if m["iree"]["compile_flags"] == flags:
            return folder
        shutil.rmtree(folder)
    print(f"compiling {name}: {' '.join(flags)} ...", flush=True)
    shutil.copytree(base, folder)
    m, _ = art.read_manifest(folder)
    vmfb = folder / m["file"]
    vmfb.write_bytes(iree.compile_mlir((folder / m["iree"]["mlir"]).read_text(), flags))
    cpu = next(f.split("=", 1)[1] for f in flags if f.startswith("--iree-llvmcpu-target-cpu="))
    m["sha256"], m["iree"]["compile_flags"] = art.sha256(vmfb), flags
    m["iree"]["target_cpu"], m["iree"]["cpu_features"] = cpu, sorted(iree.cpu_features()) if cpu == "host" else []
    art.write_json(art.manifest_path_for(vmfb), m)
    return folder


def measure(steps: dict, frames: list, rounds: int, n: int) -> tuple[dict, dict]:
    """Per row and round: the median step's wall time, and the process's CPU time per step (user + system,
    every thread: what the step costs a core, which a busy machine's time-slicing does not inflate as it
    does wall time). Each round steps every row in turn, after a few warm-up steps."""
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for i in range(10):
                step(frames[i % len(frames)])
            times, c0 = [], time.process_time()
            for i in range(n):
                t0 = time.perf_counter()
                step(frames[i % len(frames)])
                times.append(time.perf_counter() - t0)
            cpu[name].append((time.process_time() - c0) / n)
            wall[name].append(float(np.median(times)))
    return {k: np.array(v) for k, v in wall.items()}, {k: np.array(v) for k, v in cpu.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the artifacts (kept; reused by a later run)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=100, help="steps per row per round")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS, or none")
    p.add_argument("--json-out", help="write the rows as JSON here")
    a = p.parse_args()
    from graphopt import artifact as art
    from graphopt import trace_cache
    from graphopt.equivalence import Clip
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    traced = trace_cache.load_traced("facephys")
    folders = {t: built(out, t, traced) for t in TARGETS}
    for name in [v for v in a.variants.split(",") if v and v != "none"]:
        folders[name] = variant(out, folders["iree"], name, VARIANTS[name])
    spec = traced.spec
    frames = Clip(frames=64, fps=spec.fps).feeds(spec)
    steps = {name: bench._feed_step(art.load(f, threads=1), spec) for name, f in folders.items()}
    steps["authors' jax.jit step"] = bench.reference_step("facephys")
    print(f"measuring {len(steps)} rows: {a.rounds} interleaved rounds of {a.steps} steps, 1 thread ...", flush=True)
    wall, cpu = measure(steps, frames, a.rounds, a.steps)
    rows = []
    print("\n| artifact | FPS (wall, median step) | rounds (slowest-fastest) | x xla per round | FPS (CPU time) "
          "| x xla per round |\n|---|---:|---|---|---:|---|")
    for name in sorted(steps, key=lambda n: -np.median(1 / wall[n])):
        fw, fc = 1 / wall[name], 1 / cpu[name]  # per round
        rw, rc = wall["xla"] / wall[name], cpu["xla"] / cpu[name]
        print(f"| {name} | {np.median(fw):.0f} | {fw.min():.0f}-{fw.max():.0f} | {np.median(rw):.2f} ({rw.min():.2f}-"
              f"{rw.max():.2f}) | {np.median(fc):.0f} | {np.median(rc):.2f} ({rc.min():.2f}-{rc.max():.2f}) |")
        rows.append({"name": name, "fps_wall_rounds": fw.tolist(), "fps_cpu_rounds": fc.tolist(),
                     "x_xla_wall_median": float(np.median(rw)), "x_xla_cpu_median": float(np.median(rc))})
    m = bench.machine()
    print(f"\nFacePhys, batch 1, state carried, 1 thread, {a.rounds} interleaved rounds of {a.steps} steps. "
          f"Machine: {m['cpu']}, {m['cores']} cores.")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"machine": m, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
