"""Fusion benchmark: FacePhys ONNX unfused vs fused (exact passes; default pipeline; --fps 30) in
onnxruntime with 1 thread, measured interleaved in one run (graphopt.benchmark). Not part of the
default test run. Run by hand:

    .venv/bin/python -m pytest tests/benchmarks/bench_fusion.py -s

It prints a Markdown table (nodes, FPS, p50/p99, ratio to unfused) and writes it as JSON to
$GRAPHOPT_BENCH_OUT (default: bench_fusion.json in the pytest temp folder).
"""
from __future__ import annotations

import json
import os

import pytest

from graphopt import artifact as art
from graphopt.benchmark import markdown_table, measure
from graphopt.equivalence import Clip

VARIANTS = {
    "onnx unfused": dict(fuse=False),
    "onnx fused (exact)": dict(exact=True),
    "onnx fused": dict(),
    "onnx fused --fps 30": dict(fps=30),
}


def test_fused_vs_unfused_onnxruntime(tmp_path):
    from graphopt.build import build
    arts = {name: build("facephys", "onnx", tmp_path / f"a{i}", verify=False, log=lambda m: None, **kw)
            for i, (name, kw) in enumerate(VARIANTS.items())}
    frames = Clip(frames=64).array((1, 1, 36, 36, 3))
    streams = {name: art.load(a.path, threads=1) for name, a in arts.items()}
    rows = measure({name: s.step for name, s in streams.items()}, frames, rounds=7, steps_per_round=100)
    extra = {name: {"ONNX nodes": a.manifest["onnx"]["nodes"], "IR nodes": a.manifest["graph"]["nodes"]}
             for name, a in arts.items()}
    table = markdown_table(rows, baseline="onnx unfused", extra=extra)
    print("\n" + table)
    out = os.environ.get("GRAPHOPT_BENCH_OUT", str(tmp_path / "bench_fusion.json"))
    with open(out, "w") as f:
        json.dump({r.name: {"fps": r.fps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, **extra[r.name]} for r in rows},
                  f, indent=2)
    assert all(r.p50_ms > 0 for r in rows)
    pytest.fused_ratio = rows[0].p50_ms / rows[2].p50_ms
