"""Hostile ONNX files: every one is refused by `graphopt optimize/build/inspect/verify` with one line on stderr
starting with `error:` (exit 2), before any large allocation or long loop, and nothing is written. The
memory bombs ask for terabytes, so a regression fails fast (MemoryError) instead of filling the machine;
two of them also run through the installed `graphopt` in a subprocess under a 4 GB address-space limit."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from graphopt import cli
from graphopt.frontends import onnx as onnx_frontend
from graphopt.frontends.onnx import importer, registry

F, I64, B = TP.FLOAT, TP.INT64, TP.BOOL


def vi(name, shape, t=F):
    return h.make_tensor_value_info(name, t, shape)


def model(nodes, ins, outs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", ins, outs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=10)


def i64(name, vals):
    return nh.from_array(np.array(vals, np.int64), name)


def f32(name, vals):
    return nh.from_array(np.array(vals, np.float32), name)


def ones(name, *shape):
    return nh.from_array(np.ones(shape, np.float32), name)


X, Y = [vi("x", [1, 4])], [vi("y", None)]
BIG = 1 << 20  # dims of 2^20 x 2^20: a tensor of 4 TiB


def loop_body(nodes, carried=("v", [1, 4]), inits=()):
    name, shape = carried
    return h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"])] + nodes, "body",
                        [vi("i", [], I64), vi("c_in", [], B), vi(f"{name}_in", shape)],
                        [vi("c_out", [], B), vi(f"{name}_out", shape)], list(inits))


def then_else(inner_nodes, out):
    return h.make_graph(inner_nodes, "branch", [], [vi(out, [1, 4])])


def tensor(name, data_type, dims, raw=b""):
    return TP(name=name, data_type=data_type, dims=dims, raw_data=raw)


# ---- the table: (id, the model, extra flags, what the message says) ----------------------------------

def _cases():
    def cos(shape):
        return model([h.make_node("ConstantOfShape", ["s"], ["c"]), h.make_node("Add", ["x", "c"], ["y"])], X, Y,
                     [i64("s", shape)])
    chain = [h.make_node("ConstantOfShape", ["s"], ["c0"])] + \
        [h.make_node("Neg", [f"c{k}"], [f"c{k + 1}"]) for k in range(40)] + \
        [h.make_node("ReduceSum", ["c40"], ["r"], keepdims=0), h.make_node("Add", ["x", "r"], ["y"])]
    inner = h.make_graph([h.make_node("Identity", ["c2"], ["c2o"]), h.make_node("Add", ["w_in", "w_in"], ["w_out"])],
                         "inner", [vi("j", [], I64), vi("c2", [], B), vi("w_in", [1, 4])],
                         [vi("c2o", [], B), vi("w_out", [1, 4])])
    outer = loop_body([h.make_node("Loop", ["M2", "", "v_in"], ["v_out"], body=inner)], inits=[i64("M2", 100)])
    scan_body = h.make_graph([h.make_node("Add", ["s", "e"], ["s2"]), h.make_node("Identity", ["s2"], ["o"])], "b",
                             [vi("s", [1]), vi("e", [1])], [vi("s2", [1]), vi("o", [1])])
    lstm_w = [ones("W", 1, 8, 4), ones("R", 1, 8, 2)]
    redefine = then_else([h.make_node("Relu", ["x"], ["x"])], "x")
    nul = TP(name="w", data_type=F, dims=[1, 4], data_location=TP.EXTERNAL)
    for k, v in (("location", "a\0b"), ("offset", "0"), ("length", "16")):
        e = nul.external_data.add()
        e.key, e.value = k, v
    dup_opset = model([h.make_node("Relu", ["x"], ["y"])], X, Y)
    dup_opset.opset_import.append(h.make_opsetid("ai.onnx", 9))
    return [
        # a small file asking for an enormous tensor: refused before anything is allocated
        ("ConstantOfShape-huge", cos([BIG, BIG]), [],
         "(ConstantOfShape, opset 17): its output 'c' would have 1099511627776 elements (shape (1048576, 1048576)), "
         "more than the 268435456 graphopt takes in one tensor"),
        ("ConstantOfShape-negative", cos([-3, 4]), [],
         "would have a negative dimension (shape (-3, 4))"),
        ("Expand-runtime", model([h.make_node("Expand", ["x", "s"], ["y"])], X, Y, [i64("s", [BIG, BIG, 4])]), [],
         "(Expand, opset 17): the result of broadcast would have 4398046511104 elements"),
        ("Tile-runtime", model([h.make_node("Tile", ["x", "r"], ["y"])], X, Y, [i64("r", [BIG, BIG])]), [],
         "(Tile, opset 17): the result of broadcast would have"),
        ("Range-huge", model([h.make_node("Range", ["a", "b", "d"], ["c"]), h.make_node("Add", ["x", "c"], ["y"])], X,
                             Y, [i64("a", 0), i64("b", 1 << 40), i64("d", 1)]), [],
         "(Range, opset 17): its output 'c' would have 1099511627776 elements"),
        ("Range-zero-delta", model([h.make_node("Range", ["a", "b", "d"], ["c"]),
                                    h.make_node("Add", ["x", "c"], ["y"])], X, Y,
                                   [f32("a", 0), f32("b", 4), f32("d", 0)]), [],
         "Range(0, 4, 0) has no finite length"),
        ("Pad-runtime", model([h.make_node("Pad", ["x", "p"], ["y"])], X, Y, [i64("p", [0, 0, BIG, BIG])]), [],
         "(Pad, opset 17): the result of pad would have"),
        ("Resize-runtime", model([h.make_node("Resize", ["x4", "", "sc"], ["y"])], [vi("x4", [1, 1, 2, 2])], Y,
                                 [f32("sc", [1, 1, 1e6, 1e6])]), [],
         "(Resize, opset 17): the resized output would have 4000000000000 elements"),
        ("Resize-nan", model([h.make_node("Resize", ["x4", "", "sc"], ["y"])], [vi("x4", [1, 1, 2, 2])], Y,
                             [f32("sc", [1, 1, np.nan, 2])]), [],
         "(Resize, opset 17): it does not fit its inputs or attributes (ValueError"),
        ("OneHot-huge", model([h.make_node("OneHot", ["ix", "dep", "vals"], ["y"])], [vi("ix", [1, 4], I64)], Y,
                              [i64("dep", [1 << 40]), f32("vals", [0, 1])]), [],
         "(OneHot, opset 17): its one-hot output would have"),
        ("outer-product-of-constants", model(
            [h.make_node("ConstantOfShape", ["sa"], ["a"]), h.make_node("ConstantOfShape", ["sb"], ["b"]),
             h.make_node("Add", ["a", "b"], ["c"]), h.make_node("Add", ["x", "c"], ["y"])], X, Y,
            [i64("sa", [BIG, 1]), i64("sb", [1, BIG])]), [],
         "(Add, opset 17): its output 'c' would have 1099511627776 elements"),
        ("Conv-huge-pads", model([h.make_node("Conv", ["x4", "w"], ["y"], pads=[BIG] * 4)], [vi("x4", [1, 1, 8, 8])],
                                 Y, [ones("w", 1, 1, 3, 3)]), [],
         "(Conv, opset 17): the result of conv would have"),
        ("Loop-doubling", model([h.make_node("Loop", ["M", "", "x"], ["l"], body=loop_body(
            [h.make_node("Concat", ["v_in", "v_in"], ["v_out"], axis=0)], ("v", None))),
            h.make_node("ReduceSum", ["l"], ["y"])], X, Y, [i64("M", 64)]), [],
         "(Concat, opset 17): the tensors the model computes hold more than"),
        ("input-declared-huge", model([h.make_node("Relu", ["big"], ["y"])], [vi("big", [1, 100000, 100000])], Y), [],
         "input 'big' of shape (1, 100000, 100000) has 10000000000 elements, more than the 268435456"),
        ("input-shape-huge", model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [1, "n", "m"])], Y),
         ["--input-shape", "x:1,1048576,1048576"], "input 'x' of shape (1, 1048576, 1048576) has 1099511627776"),
        ("input-shape-wrong-rank", model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [1, "n", 4])], Y),
         ["--input-shape", "x:1,4"], "--input-shape x:1,4 does not fit the model's input 'x', of shape (1, ?, 4)"),
        ("input-shape-static-dim", model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [1, "n", 4])], Y),
         ["--input-shape", "x:1,7,5"], "--input-shape x:1,7,5 does not fit the model's input 'x'"),
        # many tensors, each within the limit: the total is bounded (the budget is made small here)
        ("constants-in-all", model(chain, X, Y, [i64("s", [1 << 16])]), ["budget"],
         "(Neg, opset 17): the tensors the model computes hold more than"),
        ("IR-values-in-all", model([h.make_node("Expand", ["x", "s"], ["e0"])] +
                                   [h.make_node("Relu", [f"e{k}"], [f"e{k + 1}"]) for k in range(40)] +
                                   [h.make_node("ReduceSum", ["e40"], ["y"])], X, Y, [i64("s", [1 << 14, 4])]),
         ["budget"], "(Relu, opset 17): the tensors the model computes hold more than"),
        # loops unrolled past the node limit (made small here): refused, not run for minutes
        ("Loop-nested", model([h.make_node("Loop", ["M", "", "x"], ["y"], body=outer)], X, Y, [i64("M", 100)]),
         ["nodes"], "the model converts more than 2000 nodes (a Loop or Scan body counts once per iteration)"),
        ("Scan-long", model([h.make_node("Scan", ["s0", "xs"], ["sf", "y"], body=scan_body, num_scan_inputs=1)],
                            [vi("xs", [5000, 1])], [vi("sf", [1]), vi("y", None)], [f32("s0", [0])]),
         ["nodes"], "the graph grows past 2000 nodes (unrolled loops and recurrences count every step)"),
        ("LSTM-long", model([h.make_node("LSTM", ["xs", "W", "R"], ["y"], hidden_size=2)], [vi("xs", [5000, 1, 4])],
                            Y, lstm_w), ["nodes"], "(LSTM, opset 17): the graph grows past 2000 nodes"),
        # malformed nodes: the schema's counts and types, the IR's type checks, converters tripping
        ("Add-one-input", model([h.make_node("Add", ["x"], ["y"])], X, Y), [], "it has 1 inputs; Add-14 takes 2"),
        ("Add-three-inputs", model([h.make_node("Add", ["x", "x", "x"], ["y"])], X, Y), [],
         "it has 3 inputs; Add-14 takes 2"),
        ("Concat-no-inputs", model([h.make_node("Concat", [], ["y"], axis=0)], X, Y), [],
         "it has 0 inputs; Concat-13 takes 1 or more"),
        ("Add-shape-mismatch", model([h.make_node("Add", ["x", "z"], ["y"])], X + [vi("z", [1, 5])], Y), [],
         "(Add, opset 17): it does not fit its inputs or attributes (IRTypeError: op add: shapes [(1, 4), (1, 5)] do "
         "not broadcast)"),
        ("Gemm-mismatch", model([h.make_node("Gemm", ["x", "w"], ["y"])], X, Y, [ones("w", 5, 3)]), [],
         "(Gemm, opset 17): it does not fit its inputs or attributes (IRTypeError"),
        ("Transpose-float-perm", model([h.make_node("Transpose", ["x"], ["y"], perm=[1.0, 0.0])], X, Y), [],
         "attribute 'perm' is FLOATS; Transpose-13 takes INTS"),
        ("If-string-branches", model([h.make_node("If", ["c"], ["y"], then_branch="a", else_branch="b")],
                                     X + [vi("c", [], B)], Y), [], "is STRING; If-16 takes GRAPH"),
        ("unknown-attribute", model([h.make_node("Relu", ["x"], ["y"], foo=3)], X, Y), [],
         "attribute 'foo' is not one of Relu-14's (none)"),
        ("Split-zero-outputs", model([h.make_node("Split", ["x"], ["y"], axis=1, num_outputs=0)], X, Y, opset=18), [],
         "(Split, opset 18): it does not fit its inputs or attributes (ZeroDivisionError"),
        ("Conv-zero-strides", model([h.make_node("Conv", ["x4", "w"], ["y"], strides=[0, 0])],
                                    [vi("x4", [1, 1, 8, 8])], Y, [ones("w", 1, 1, 3, 3)]), [],
         "(Conv, opset 17): it does not fit its inputs or attributes (ZeroDivisionError"),
        # names: each defined once
        ("node-output-twice", model([h.make_node("Relu", ["x"], ["y"]), h.make_node("Neg", ["x"], ["y"])], X, Y), [],
         "(Neg, opset 17): output 'y' is already defined"),
        ("node-redefines-input", model([h.make_node("Relu", ["x"], ["x"]), h.make_node("Neg", ["x"], ["y"])], X, Y),
         [], "(Relu, opset 17): output 'x' is already defined"),
        ("branch-redefines-outer", model([h.make_node("If", ["c"], ["y"], then_branch=redefine,
                                                      else_branch=redefine)], X + [vi("c", [], B)], Y), [],
         "(Relu, opset 17): output 'x' is already defined"),
        ("input-twice", model([h.make_node("Add", ["x", "x"], ["y"])], X + X, Y), [],
         "the graph lists input 'x' twice"),
        ("output-twice", model([h.make_node("Relu", ["x"], ["y"])], X, Y + Y), [],
         "the graph lists output 'y' twice"),
        ("opset-twice", dup_opset, [], "imports the opset of domain 'ai.onnx' twice (17 and 9)"),
        # tensors whose dims and data disagree
        ("initializer-dims-vs-data", model([h.make_node("Add", ["x", "w"], ["y"])], X, Y,
                                           [tensor("w", F, [BIG, BIG], b"\0\0\0\0")]), [],
         "tensor 'w' (dims [1048576, 1048576]) cannot be read: its data does not match its dims and type"),
        ("initializer-unknown-type", model([h.make_node("Add", ["x", "w"], ["y"])], X, Y,
                                           [tensor("w", 999, [1], b"\0\0\0\0")]), [],
         "tensor 'w' has element type 999, which ONNX does not define"),
        ("initializer-negative-dims", model([h.make_node("Add", ["x", "w"], ["y"])], X, Y,
                                            [tensor("w", F, [-1, 4], b"\0" * 16)]), [],
         "tensor 'w' has dims [-1, 4], a negative one"),
        ("Constant-dims-vs-data", model([h.make_node("Constant", [], ["c"], value=tensor("c", F, [1 << 30])),
                                         h.make_node("Add", ["x", "c"], ["y"])], X, Y), [],
         "tensor 'c' (dims [1073741824]) cannot be read"),
        ("external-data-nul", model([h.make_node("Add", ["x", "w"], ["y"])], X, Y, [nul]), [],
         "tensor 'w' names external data 'a\\x00b'; external data must be a file beside the model"),
        # outputs and inputs graphopt cannot take
        ("no-inputs", model([h.make_node("Constant", [], ["y"], value=h.make_tensor("v", F, [1], [1.0]))], [], Y), [],
         "the model has no input other than its state"),
    ]


CASES = _cases()


def _write(tmp_path, m) -> str:
    path = tmp_path / "m.onnx"
    with open(path, "wb") as f:  # onnx.save would refuse some of these (a NUL in a location)
        f.write(m.SerializeToString())
    return str(path)


def _one_error_line(err: str, says: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert says in errors[0], errors[0]


@pytest.fixture
def small_limits(monkeypatch):
    def apply(flags):
        if "budget" in flags:
            monkeypatch.setattr(registry, "MAX_TOTAL_ELEMENTS", 1 << 20)
        if "nodes" in flags:
            monkeypatch.setattr(registry, "MAX_NODES", 2000)
            monkeypatch.setattr(importer, "MAX_NODES", 2000)
        return [f for f in flags if f not in ("budget", "nodes")]
    return apply


@pytest.mark.parametrize("m, flags, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_optimize_refuses_hostile_file(tmp_path, capsys, small_limits, m, flags, says):
    path = _write(tmp_path, m)
    out = tmp_path / "out.onnx"
    t0 = time.perf_counter()
    assert cli.main(["optimize", path, "-o", str(out), "--json"] + small_limits(flags)) == 2
    assert time.perf_counter() - t0 < 20
    cap = capsys.readouterr()
    assert cap.out == ""
    _one_error_line(cap.err, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing written, no temporary left


BUILD_CASES = [c for c in CASES if c[0] in ("ConstantOfShape-huge", "Loop-doubling", "Add-shape-mismatch",
                                            "node-output-twice", "initializer-dims-vs-data")]


@pytest.mark.parametrize("m, flags, says", [c[1:] for c in BUILD_CASES], ids=[c[0] for c in BUILD_CASES])
def test_build_refuses_hostile_file(tmp_path, capsys, m, flags, says):
    path = _write(tmp_path, m)
    assert cli.main(["build", "--model", path, "--target", "onnx", "--out", str(tmp_path / "art")] + flags) == 2
    _one_error_line(capsys.readouterr().err, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


INSPECT_CASES = [c for c in CASES if c[0] in ("initializer-dims-vs-data", "initializer-unknown-type",
                                              "initializer-negative-dims", "Constant-dims-vs-data", "input-twice",
                                              "opset-twice", "external-data-nul")]


@pytest.mark.parametrize("m, flags, says", [c[1:] for c in INSPECT_CASES], ids=[c[0] for c in INSPECT_CASES])
def test_inspect_refuses_hostile_file(tmp_path, capsys, m, flags, says):
    path = _write(tmp_path, m)
    assert cli.main(["inspect", path]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    _one_error_line(cap.err, says)


def test_inspect_escapes_names_with_control_characters(tmp_path, capsys):
    m = model([h.make_node("Relu", ["x\n\x1b[31m"], ["y\rz"], name="n")], [vi("x\n\x1b[31m", [1, 4])],
              [vi("y\rz", [1, 4])])
    assert cli.main(["inspect", _write(tmp_path, m)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "  inputs      x\\n\\x1b[31m float32[1,4]" in out.splitlines()
    assert "  outputs     y\\rz float32[1,4]" in out.splitlines()


def test_verify_refuses_a_hostile_model_file(tmp_path, capsys):
    good = _write(tmp_path, model([h.make_node("Relu", ["x"], ["y"])], X, Y))
    art = tmp_path / "art"
    assert cli.main(["build", "--model", good, "--target", "onnx", "--out", str(art), "--frames", "32"]) == 0
    capsys.readouterr()
    (tmp_path / "bad").mkdir()
    bad = _write(tmp_path / "bad", dict((c[0], c[1]) for c in CASES)["input-twice"])
    before = sorted(p.name for p in art.iterdir())
    assert cli.main(["verify", str(art), "--model", bad, "--frames", "32"]) == 2
    _one_error_line(capsys.readouterr().err, "the graph lists input 'x' twice")
    assert sorted(p.name for p in art.iterdir()) == before


def test_slow_reference_ops_on_constants_are_not_evaluated_while_importing(tmp_path):
    """An AveragePool of a 1024x1024 constant with a 32x32 window: onnx's reference evaluator takes minutes
    (Python loops); the importer leaves it to the converter (the runtime computes it)."""
    m = model([h.make_node("ConstantOfShape", ["s"], ["img"], value=h.make_tensor("v", F, [1], [1.0])),
               h.make_node("AveragePool", ["img"], ["g"], kernel_shape=[32, 32]),
               h.make_node("ReduceSum", ["g"], ["r"], keepdims=0), h.make_node("Add", ["x", "r"], ["y"])], X, Y,
              [i64("s", [1, 1, 1024, 1024])])
    t0 = time.perf_counter()
    graph = onnx_frontend.load(_write(tmp_path, m)).trace()
    assert time.perf_counter() - t0 < 20
    assert len(graph.nodes) > 1  # the pool is in the graph, not a constant computed here


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (4_000_000_000, 4_000_000_000))


@pytest.mark.parametrize("name, nodes, inits, says", [
    ("cos-4gib", [h.make_node("ConstantOfShape", ["s"], ["c"]), h.make_node("ReduceSum", ["c"], ["r"], keepdims=0),
                  h.make_node("Add", ["x", "r"], ["y"])], [i64("s", [1 << 15, 1 << 15])],
     "its output 'c' would have 1073741824 elements"),
    ("expand-const", [h.make_node("Expand", ["one", "s"], ["c"]), h.make_node("Add", ["x", "c"], ["y"])],
     [ones("one", 1, 4), i64("s", [1 << 16, 1 << 16, 1])], "its output 'c' would have 17179869184 elements"),
])
def test_installed_command_under_a_memory_limit(tmp_path, name, nodes, inits, says):
    exe = Path(sys.executable).parent / "graphopt"
    if not exe.is_file():
        pytest.skip("the graphopt command is not installed in this environment")
    path = _write(tmp_path, model(nodes, X, Y, inits))
    out = tmp_path / "o.onnx"
    r = subprocess.run([str(exe), "optimize", path, "-o", str(out)], capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_memory, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2, r.stderr[-2000:]
    _one_error_line(r.stderr, says)
    assert not out.exists()
