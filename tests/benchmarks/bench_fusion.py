"""Fusion benchmark: FacePhys ONNX unfused vs fused (exact passes; default pipeline; --fps 30) in
onnxruntime with 1 thread, measured interleaved in one run (graphopt.benchmark). Not part of the
default test run. Run by hand:

    .venv/bin/python -m pytest tests/benchmarks/bench_fusion.py -s

It prints a Markdown table (nodes, FPS, p50/p99, ratio to unfused) and writes it as JSON to
$GRAPHOPT_BENCH_OUT (default: bench_fusion.json in the pytest temp folder).

The run also times the Conv nodes of the unfused and the fused build alone (the same convs, weights
and shapes, fed fixed inputs, in a session of their own) and prints their share of each build's step:
the compute-bound part that fusion cannot shrink further. The two sets differ: the unfused build
computes its conv weights each step (a transpose of the checkpoint's layout, so onnxruntime cannot
pre-pack them) and runs the SSM windows as depthwise convs; the fused build's convs have constant
weights and include its 1x1 projections.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

from graphopt import artifact as art
from graphopt.benchmark import markdown_table, measure
from graphopt.equivalence import Clip

VARIANTS = {
    "onnx unfused": dict(fuse=False),
    "onnx fused (exact)": dict(exact=True),
    "onnx fused": dict(),
    "onnx fused --fps 30": dict(fps=30),
}


def conv_only_model(path) -> onnx.ModelProto:
    """The Conv nodes of an ONNX model alone: a conv reading another conv still does; every other
    non-constant input becomes a graph input (shapes from ONNX shape inference); constant weights and
    biases stay initializers."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    typed = {v.name: v for v in [*m.graph.value_info, *m.graph.input, *m.graph.output]}
    inits = {t.name: t for t in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    made = {o for n in convs for o in n.output}  # a conv reading another conv reads it here too
    used = sorted({i for n in convs for i in n.input if i})
    g = helper.make_graph(convs, "convs", [typed[i] for i in used if i not in inits and i not in made],
                          [typed[o] for n in convs for o in n.output], [inits[i] for i in used if i in inits])
    return helper.make_model(g, opset_imports=m.opset_import, ir_version=m.ir_version)


def conv_step(model: onnx.ModelProto):
    """step(frame) running the conv-only model on fixed random inputs, onnxruntime on 1 thread."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}
    return lambda frame: sess.run(None, feed)


def test_fused_vs_unfused_onnxruntime(tmp_path):
    from graphopt.builder import build
    arts = {name: build("facephys", "onnx", tmp_path / f"a{i}", verify=False, log=lambda m: None, **kw)
            for i, (name, kw) in enumerate(VARIANTS.items())}
    frames = Clip(frames=64).array((1, 1, 36, 36, 3))
    streams = {name: art.load(a.path, threads=1) for name, a in arts.items()}
    steps = {name: s.step for name, s in streams.items()}
    convs = {name: conv_only_model(arts[name].path) for name in ("onnx unfused", "onnx fused")}
    steps.update({f"{name}: its {len(m.graph.node)} convs alone": conv_step(m) for name, m in convs.items()})
    rows = measure(steps, frames, rounds=7, steps_per_round=100)
    extra = {name: {"ONNX nodes": a.manifest["onnx"]["nodes"], "IR nodes": a.manifest["graph"]["nodes"]}
             for name, a in arts.items()}
    table = markdown_table(rows, baseline="onnx unfused", extra=extra)
    p50 = {r.name: r.p50_ms for r in rows}
    share = {name: p50[f"{name}: its {len(m.graph.node)} convs alone"] / p50[name] for name, m in convs.items()}
    print("\n" + table)
    print("\nits convs alone, as a share of the step: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    out = os.environ.get("GRAPHOPT_BENCH_OUT", str(tmp_path / "bench_fusion.json"))
    with open(out, "w") as f:
        json.dump({r.name: {"fps": r.fps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, **extra.get(r.name, {})}
                   for r in rows} | {"convs alone, share of the step": share}, f, indent=2)
    assert all(r.p50_ms > 0 for r in rows)
    pytest.fused_ratio = rows[0].p50_ms / rows[2].p50_ms
