"""The TF lowering of pool, reverse and 3-D conv, through the `tf` and `tflite` targets.

Each case is a small stateless IR graph built by hand (channels-last tensors with the transposes a
traced NDHWC model puts around its channels-first convs), emitted, loaded as a Stream and compared
with the IR interpreter in float64. Also: the `tf` target's float64 sums under XLA (PhysNet's chunk mean)."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import artifact as art
from graphopt.ir import Graph, Interpreter, TensorType, Value
from graphopt.targets import module_for
from graphopt.targets.tf_lowering import UnsupportedOpError

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

NO_PADS = ((0, 0),) * 5


def _graph(shape, build) -> Graph:
    g = Graph(name="window_ops")
    x = g.add_input("frame", TensorType(shape, "float32"))
    g.outputs, g.output_names = [build(g, x)], ["y"]
    return g


def _conv_ndhwc(g: Graph, x: Value, cout, kernel, pads, strides=(1, 1, 1), dilations=(1, 1, 1), seed=0) -> Value:
    """A channels-first 3-D conv (with bias) on a channels-last value, as traced: transpose, conv, transpose."""
    rng = np.random.default_rng(seed)
    cin = x.shape[-1]
    w = g.add_param((rng.standard_normal((cout, cin, *kernel)) / np.sqrt(cin * np.prod(kernel))).astype(np.float32))
    b = g.add_param(rng.standard_normal(cout).astype(np.float32))
    y = g.op("conv", g.op("transpose", x, perm=(0, 4, 1, 2, 3)), w, b, strides=strides, pads=pads,
             dilations=dilations, groups=1)
    return g.op("transpose", y, perm=(0, 2, 3, 4, 1))


def _pool(mode, window, strides=None, pads=NO_PADS):
    return lambda g, x: g.op("pool", x, mode=mode, window=window, strides=strides or window, pads=pads)


def _physnet_chain(g: Graph, x: Value) -> Value:
    """PhysNet's conv/pool pattern: 'same' convs (1,5,5), (3,3,3), (1,1,1) and max/sum pools, all NDHWC."""
    y = _conv_ndhwc(g, x, 8, (1, 5, 5), ((0, 0), (2, 2), (2, 2)))
    y = g.op("max", y, g.add_param(np.float32(0.0)))
    y = _pool("max", (1, 1, 2, 2, 1))(g, y)
    y = _conv_ndhwc(g, y, 8, (3, 3, 3), ((1, 1),) * 3, seed=1)
    y = _pool("max", (1, 2, 2, 2, 1))(g, y)
    y = _conv_ndhwc(g, y, 4, (1, 1, 1), ((0, 0),) * 3, seed=2)
    return _pool("sum", (1, 1, 2, 2, 1))(g, y)


OVERLAP_2 = dict(window=(1, 1, 3, 3, 1), strides=(1, 1, 2, 2, 1), pads=((0, 0), (0, 0), (1, 1), (0, 2), (0, 0)))
OVERLAP_3 = dict(window=(1, 3, 2, 3, 1), strides=(1, 2, 1, 2, 1), pads=((0, 0), (1, 1), (1, 0), (0, 1), (0, 0)))

CASES = {
    # windows on two axes (H, W), overlapping, padded unevenly
    "pool2-max": ((1, 4, 9, 8, 3), _pool("max", **OVERLAP_2)),
    "pool2-avg": ((1, 4, 9, 8, 3), _pool("avg", **OVERLAP_2)),
    "pool2-sum": ((1, 4, 9, 8, 3), _pool("sum", **OVERLAP_2)),
    # windows on three axes (T, H, W): non-overlapping, and overlapping and padded
    "pool3-max-tiles": ((1, 6, 8, 8, 3), _pool("max", (1, 2, 2, 2, 1))),
    "pool3-max": ((1, 6, 9, 8, 3), _pool("max", **OVERLAP_3)),
    "pool3-avg": ((1, 6, 9, 8, 3), _pool("avg", **OVERLAP_3)),
    "pool3-sum": ((1, 6, 9, 8, 3), _pool("sum", **OVERLAP_3)),
    # windowed axes that are not neighbours (batch, H and channels), on a channels-first view
    "pool-scattered": ((2, 5, 6, 7, 4), lambda g, x: _pool("avg", (2, 1, 3, 1, 2), (1, 1, 2, 1, 2))(
        g, g.op("transpose", x, perm=(0, 4, 1, 2, 3)))),
    "conv3d-strided": ((1, 7, 9, 10, 3), lambda g, x: _conv_ndhwc(
        g, x, 5, (3, 2, 3), ((2, 0), (1, 0), (0, 3)), strides=(2, 1, 3), dilations=(1, 2, 2))),
    "physnet-chain": ((1, 8, 16, 16, 3), _physnet_chain),
    "reverse": ((1, 4, 5, 6, 3), lambda g, x: g.op("reverse", g.op("exp", x), axes=(1, 2, 4))),
    # the 6-D zero insertion expand-lhs-dilation makes of a transposed 3-D conv (TFLite's PAD takes 5-D)
    "pad-6d": ((1, 4, 3, 2, 2), lambda g, x: g.op("pad", g.op("reshape", x, shape=(1, 4, 3, 1, 2, 2)),
                                                   g.add_param(np.float32(0.0)),
                                                   pads=((0, 0), (0, 0), (0, 0), (0, 1), (0, 0), (1, 0)))),
}
TARGETS = ("tf", "tflite")


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    """(graph, artifact) per (case, target), emitted once; tflite with its default options."""
    cache = {}

    def get(case, target):
        if (case, target) not in cache:
            shape, build = CASES[case]
            g = _graph(shape, build)
            cache[case, target] = g, module_for(target).emit(g, tmp_path_factory.mktemp(f"{case}-{target}"))
        return cache[case, target]
    return get


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_interpreter(emitted, case, target):
    g, a = emitted(case, target)
    frame = np.random.default_rng(7).standard_normal(g.inputs[0].shape).astype(np.float32)
    ref = Interpreter(g, "float64").run([frame], [])[0][0]
    out = np.asarray(art.load(a.path).step(frame))
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 1e-5, f"{case} on {target}: max error {err:.2g} of the output's range"


def test_xla_adds_long_sums_accurately(tmp_path):
    # PhysNet's per-channel mean over a chunk, split by split-long-reductions into short sums; XLA merges
    # them back into one float32 reduction 3.5e-6 off, so the tf target accumulates sums in float64
    def mean_chain(g, x):
        for axis in (3, 2, 1):
            x = g.op("reduce_sum", x, axes=(axis,))
        return x
    g = _graph((1, 128, 32, 32, 3), mean_chain)
    frame = np.random.default_rng(3).random(g.inputs[0].shape).astype(np.float32)
    ref = Interpreter(g, "float64").run([frame], [])[0][0]
    out = np.asarray(art.load(module_for("tf").emit(g, tmp_path).path).step(frame))
    assert np.abs(out / ref - 1).max() < 1e-7


def test_ndhwc_convs_and_pools_need_no_transposes(emitted):
    # the transposes the traced graph has around each channels-first conv are absorbed by the layout
    # tracking: every conv and pool runs on the channels-last tensor
    ops = emitted("physnet-chain", "tflite")[1].manifest["tflite"]["op_histogram"]
    assert "TRANSPOSE" not in ops, ops
    assert ops["CONV_3D"] == 3 and ops["MAX_POOL_2D"] == 3 and ops["AVERAGE_POOL_2D"] == 1, ops


def test_stateless_graph_emits_in_io_mode(emitted):
    t = emitted("reverse", "tflite")[1].manifest["tflite"]
    assert t["state_mode"] == "io" and t["signatures"] == ["step"]
    assert "'variables' was asked for, but the graph has no state" in t["state_mode_note"]


@pytest.mark.parametrize("target", TARGETS)
def test_unsupported_conv_names_the_configuration(target, tmp_path):
    g = _graph((1, 6, 7, 8, 3), lambda g, x: _conv_ndhwc(g, x, 4, (3, 3, 3), ((0, 0),) * 3, dilations=(1, 1, 2)))
    with pytest.raises(UnsupportedOpError, match=r"dilations \(1, 1, 2\): .* swaps the H and W dilations"):
        module_for(target).emit(g, tmp_path)


def test_lhs_dilated_conv_asks_for_the_lowering_pass(tmp_path):
    def build(g, x):
        w = g.add_param(np.ones((2, 3, 2, 2, 2), np.float32))
        return g.op("conv", g.op("transpose", x, perm=(0, 4, 1, 2, 3)), w, strides=(1, 1, 1), pads=((0, 0),) * 3,
                    dilations=(1, 1, 1), groups=1, lhs_dilations=(1, 2, 2))
    with pytest.raises(UnsupportedOpError, match="lhs_dilations .* run the expand-lhs-dilation lowering pass first"):
        module_for("tf").emit(_graph((1, 4, 5, 5, 3), build), tmp_path)


@pytest.mark.parametrize("op", ["div", "rem"])
def test_integer_div_and_rem_truncate_like_the_interpreter(tmp_path, op):
    """int32 div and rem of negative numbers truncate toward zero (C semantics), as the interpreter's
    np.trunc / np.fmod; the lowering used tf.math.truncatediv/truncatemod, which TF 2.21 lacks."""
    shape = (1, 6)

    def build(g, x):
        xi = g.op("cast", g.op("mul", x, g.add_param(np.full(shape, 16, np.float32))), to="int32")
        d = g.add_param(np.array([[3, -3, 4, -4, 7, -7]], np.int32))
        return g.op("cast", g.op(op, xi, d), to="float32")
    g = _graph(shape, build)
    x = np.array([[-19, 8, -5, 14, -1, 10]], np.float32) / 16  # exact in float32: x * 16 is an integer
    want = Interpreter(g, "float64").run([x], [])[0][0]
    assert want.tolist() != (np.floor_divide if op == "div" else np.mod)(
        np.trunc(x * 16).astype(int), [[3, -3, 4, -4, 7, -7]]).astype(float).tolist()  # the case tells them apart
    for target in ("tf", "tflite"):
        a = module_for(target).emit(g, (tmp_path / target).mkdir() or tmp_path / target, {"stem": "m"})
        np.testing.assert_array_equal(np.asarray(art.load(a.path).step(x)), want)
