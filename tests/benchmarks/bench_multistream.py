"""Multi-stream FacePhys: FPS per core (all streams' frames) and live 30-FPS streams per core for N streams per
step, every CPU target, with and without --fps 30, interleaved in one run (1 thread per runtime).

    .venv/bin/python tests/benchmarks/bench_multistream.py [--streams 1,4,8,16] [--targets onnx,tflite,xla]
        [--rounds 5] [--steps 40] [--out DIR]

Per-frame gain = FPS with N streams / FPS of the same target and build options with one stream.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", default="1,4,8,16")
    p.add_argument("--targets", default="onnx,tflite,xla")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out")
    a = p.parse_args(argv)
    from graphopt.bench import single_thread_env
    single_thread_env()
    from graphopt import artifact as art, models
    from graphopt.bench import _batcher, machine, sgemm_gflops
    from graphopt.benchmark import measure
    from graphopt.builder import build
    from graphopt.equivalence import Clip
    from graphopt.multistream import MultiStreamSpec
    counts = [int(x) for x in a.streams.split(",")]
    targets = a.targets.split(",")
    out = Path(a.out or tempfile.mkdtemp(prefix="bench-multistream-"))
    base = models.resolve("facephys")
    feeds = Clip(frames=64).feeds(base)
    steps, info = {}, {}
    for fps in (None, 30.0):
        for n in counts:
            fixed = {base.dt_input: 1 / fps} if fps else None
            spec = base if n == 1 else MultiStreamSpec(base, n, fixed)
            for t in targets:
                name = f"{t} x{n}" + (" --fps 30" if fps else "")
                print(f"building {name} ...", file=sys.stderr, flush=True)
                got = build(spec, t, out / name.replace(" ", "_"), fps=fps, verify=False, force=True,
                            log=lambda m: None)
                s = art.load(got.path, threads=1)
                batch = _batcher(base, n)
                dt = {base.dt_input: "dt"}
                if fps:
                    steps[name] = (lambda s, batch: lambda f: s.step(**{k: v for k, v in batch(f).items()
                                                                        if k != base.dt_input}))(s, batch)
                else:
                    steps[name] = (lambda s, batch: lambda f: s.step(**{dt.get(k, k): v for k, v in
                                                                        batch(f).items()}))(s, batch)
                info[name] = {"target": t, "streams": n, "fps_baked": fps, "nodes": got.manifest["graph"]["nodes"]}
    rows = measure(steps, feeds, rounds=a.rounds, steps_per_round=a.steps, warmup=5)
    gflops = sgemm_gflops()
    result = []
    for r in rows:
        r.frames_per_step = info[r.name]["streams"]
        lo, hi = r.fps_spread
        result.append({"name": r.name, **info[r.name], "fps": r.fps, "fps_spread": [lo, hi], "p50_ms": r.p50_ms})
    by = {(x["target"], x["fps_baked"], x["streams"]): x for x in result}
    print(f"| build | streams | IR nodes | FPS (all streams) | spread | live 30-FPS streams per core | "
          f"per-frame gain vs 1 stream |\n|---|---:|---:|---:|---|---:|---:|")
    for x in sorted(result, key=lambda x: (x["target"], x["fps_baked"] or 0, x["streams"])):
        one = by.get((x["target"], x["fps_baked"], 1))
        gain = f"{x['fps'] / one['fps']:.2f}" if one else ""
        print(f"| {x['name']} | {x['streams']} | {x['nodes']} | {x['fps']:.0f} | {x['fps_spread'][0]:.0f}-"
              f"{x['fps_spread'][1]:.0f} | {x['fps'] / 30:.1f} | {gain} |")
    m = machine()
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores; single-thread sgemm {gflops:.1f} GFLOP/s "
          f"(FacePhys 151.9 MFLOP/frame: bound {gflops * 1e9 / 151.9e6:.0f} FPS); {a.rounds} interleaved rounds.")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
