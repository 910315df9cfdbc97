"""FacePhys FPS benchmarks (DESIGN.md protocol: batch 1, state carried, 1 thread, median).

Not part of the default test run (the file name does not match test_*.py). Run by hand:

    .venv/bin/python -m pytest tests/benchmarks/bench_facephys.py --benchmark-columns=median,ops

Compare rows within one run: this machine's FPS moves by tens of percent within an hour.
"""
from __future__ import annotations

import os

# one thread for XLA's CPU backend; must be set before jax is imported
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from graphopt import artifact as art  # noqa: E402
from graphopt.equivalence import Clip  # noqa: E402

FRAMES = Clip(frames=64).array((1, 1, 36, 36, 3))


def _cycle(step):
    i = 0

    def one():
        nonlocal i
        step(FRAMES[i % len(FRAMES)])
        i += 1
    return one


@pytest.fixture(scope="module")
def onnx_artifacts(tmp_path_factory):
    from graphopt.builder import build
    out = tmp_path_factory.mktemp("bench")
    return {fused: build("facephys", "onnx", out / f"onnx-{fused}", fuse=fused, verify=False, log=lambda m: None)
            for fused in (False, True)}


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_onnxruntime_1_thread(benchmark, onnx_artifacts, fused):
    stream = art.load(onnx_artifacts[fused].path, threads=1)
    benchmark.extra_info["nodes"] = onnx_artifacts[fused].manifest["onnx"]["nodes"]
    benchmark.pedantic(_cycle(stream.step), rounds=300, warmup_rounds=30)


@pytest.mark.parametrize("as_published", [True, False], ids=["published-mixed16", "fp32"])
def test_open_rppg_jax_jit(benchmark, as_published):
    """The authors' step under jax.jit, as open-rppg runs it (state carried, results pulled to host)."""
    from graphopt import models
    model = models.load("facephys", None, as_published)
    step = model.reference()
    state = [np.asarray(s) for s in model.initial_state]
    dt = np.float32(1 / 30)

    def one_step(frame):
        nonlocal state
        (y,), state = step(frame, dt, *state)
        np.asarray(y)
    benchmark.pedantic(_cycle(one_step), rounds=300, warmup_rounds=30)
