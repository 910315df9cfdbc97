"""The seed's FPS table on this machine: every target fused and unfused, the authors' open-rppg JAX-JIT
step, in one interleaved run (graphopt.bench, the same code as `graphopt bench`). Not part of the
default test run. Run by hand:

    .venv/bin/python -m pytest tests/benchmarks/bench_targets.py -s

Prints the Markdown table and writes JSON to $GRAPHOPT_BENCH_OUT (default: in the pytest temp folder).
"""
from __future__ import annotations

from graphopt import bench

bench.single_thread_env()  # before jax or tensorflow start

import json  # noqa: E402
import os  # noqa: E402


def test_targets_table(tmp_path):
    result = bench.run("facephys", None, out_dir=str(tmp_path / "artifacts"), rounds=5, steps_per_round=100,
                       log=lambda m: None)
    print("\n" + bench.markdown(result))
    with open(os.environ.get("GRAPHOPT_BENCH_OUT", str(tmp_path / "bench_targets.json")), "w") as f:
        json.dump(result, f, indent=2)
    rows = {r["name"]: r for r in result["rows"]}
    assert "open-rppg JAX JIT (reference)" in rows
    assert all(r["fps"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows.values())
