"""Tests for state views (graphopt.state_views), Graph.clone and the state-layout pass
(passes/state_layout.py): a recurrent state stored in the layout its neighbourhood computes in, with
Streams and --verify-each-pass still seeing the model's own layout."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt import artifact as art
from graphopt import state_views
from graphopt.ir import Graph, Interpreter, TensorType, verify
from graphopt.passes import PassError, Pass, in_place, register, run_pipeline
from graphopt.passes.manager import PASSES

C, H, W = 4, 3, 5
CLEANUP = ["layout", "state-layout", "simplify", "cse", "dce"]


def f32(*shape):
    return TensorType(shape, "float32")


def dyadic(*shape, seed=0):
    return (np.random.default_rng(seed).integers(-4, 5, shape) / 4).astype(np.float32)


def conv3x3(g, x, seed):
    return g.add_node("conv", [x, g.add_param(dyadic(C, C, 3, 3, seed=seed) / 4)], strides=(1, 1),
                      pads=((1, 1), (1, 1)), dilations=(1, 1), groups=1).outputs[0]


def running_mean_net(projection: bool = False) -> Graph:
    """conv -> channels-last running mean and variance (states [1,1,H,W,C], like FacePhys's TNM) -> conv.

    With projection, the running mean reads a channels-last projection x[..., 3] @ W[3, C] of the input
    (the first block of FacePhys) instead of a conv output."""
    g = Graph("net")
    if projection:
        frame = g.add_input("frame", f32(1, 1, H, W, 3))
        x5 = g.op("dot", frame, g.add_param(dyadic(3, C, seed=9)), lhs_contract=(4,), rhs_contract=(0,))
    else:
        frame = g.add_input("frame", f32(1, C, H, W))
        x4 = g.op("transpose", conv3x3(g, frame, 1), perm=(0, 2, 3, 1))
        x5 = g.op("reshape", x4, shape=(1, 1, H, W, C))
    dt = g.add_input("dt", f32())
    rng = np.random.default_rng(3)
    m = g.add_state("mean", rng.standard_normal((1, 1, H, W, C)).astype(np.float32))
    v = g.add_state("var", (1 + rng.random((1, 1, H, W, C))).astype(np.float32))
    a = g.op("mul", g.add_param(np.linspace(0.5, 2, C).astype(np.float32)), dt)  # a per-channel rate, computed
    m2 = g.op("add", m, g.op("mul", a, g.op("sub", x5, m)))
    d = g.op("sub", x5, m2)
    v2 = g.op("add", v, g.op("mul", a, g.op("sub", g.op("mul", d, d), v)))
    y = g.op("div", d, g.op("sqrt", g.op("add", v2, g.add_param(np.float32(1e-3)))))
    y4 = g.op("transpose", g.op("reshape", y, shape=(1, H, W, C)), perm=(0, 3, 1, 2))
    g.state[0].output, g.state[1].output = m2, v2
    g.outputs, g.output_names = [conv3x3(g, y4, 2)], ["y"]
    verify(g)
    return g


def steps(g: Graph, n: int = 3, seed: int = 0, model_layout: bool = True):
    """Outputs and final state (in the model's layout through the views) over n steps, float64."""
    rng = np.random.default_rng(seed)
    it = Interpreter(g, "float64")
    state = [s.init for s in g.state]
    outs = []
    for _ in range(n):
        inputs = [rng.standard_normal(v.shape).astype(np.float32) if v.name == "frame" else np.float32(0.1)
                  for v in g.inputs]
        y, state = it.run(inputs, state)
        outs.append(y[0])
    if model_layout:
        state = [state_views.apply(x, s.view) for x, s in zip(state, g.state)]
    return outs, state


def assert_same_steps(before, after):
    for a, b in zip(before[0] + before[1], after[0] + after[1]):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


# ---- state views ----------------------------------------------------------------------------------


def test_state_view_maps_stored_to_model_layout_and_round_trips_through_the_manifest():
    model = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 1, 2, 3, 4)
    stored = np.transpose(model.reshape(1, 2, 3, 4), (0, 3, 1, 2))  # channels-first [1, 4, 2, 3]
    view = (("transpose", (0, 2, 3, 1)), ("reshape", (1, 1, 2, 3, 4)))
    np.testing.assert_array_equal(state_views.apply(stored, view), model)
    manifest = state_views.to_manifest(view)
    assert manifest == [{"op": "transpose", "perm": [0, 2, 3, 1]}, {"op": "reshape", "shape": [1, 1, 2, 3, 4]}]
    np.testing.assert_array_equal(state_views.apply(stored, manifest), model)
    assert state_views.model_shape(stored.shape, view) == (1, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown state view step 'flip'"):
        state_views.apply(stored, [{"op": "flip"}])


def test_graph_clone_is_independent_of_the_original():
    g = running_mean_net()
    before = steps(g)
    text = str(g)
    c = g.clone()
    assert str(c) == text
    assert_same_steps(before, steps(c))
    # rewriting the clone leaves the original alone
    c.outputs = [c.op("neg", c.outputs[0])]
    c.nodes[0].inputs = [c.op("neg", c.inputs[0])] + c.nodes[0].inputs[1:]
    c.toposort()
    verify(c)
    assert str(g) == text and len(c.nodes) == len(g.nodes) + 2 and g.nodes[0].inputs[0] is g.inputs[0]
    assert c.state[0].input is not g.state[0].input and c.nodes[0] is not g.nodes[0]


# ---- the pass ---------------------------------------------------------------------------------------


def transposes(g: Graph) -> int:
    return sum(n.op == "transpose" for n in g.nodes)


def test_state_layout_stores_a_channels_last_state_channels_first_and_cancels_the_transposes():
    g = running_mean_net()
    before = steps(g)
    assert transposes(g) == 2
    g, _ = run_pipeline(g, CLEANUP)
    verify(g)
    assert transposes(g) == 0
    assert [s.input.shape for s in g.state] == [(1, C, H, W)] * 2
    assert all(s.view == (("transpose", (0, 2, 3, 1)), ("reshape", (1, 1, H, W, C))) for s in g.state)
    assert [s.init.shape for s in g.state] == [(1, C, H, W)] * 2
    assert_same_steps(before, steps(g))
    raw = steps(g, model_layout=False)[1]
    assert [x.shape for x in raw] == [(1, C, H, W)] * 2


def test_state_layout_moves_a_channels_last_input_projection_to_a_conv():
    """The running mean reads x[..., 3] @ W[3, C] computed channels-last: the pass computes it as a 1x1 conv
    of the transposed 3-channel input, so only that small transpose is left."""
    g = running_mean_net(projection=True)
    before = steps(g)
    g, _ = run_pipeline(g, CLEANUP)
    verify(g)
    assert [s.input.shape for s in g.state] == [(1, C, H, W)] * 2
    (t,) = [n for n in g.nodes if n.op == "transpose"]
    assert t.outputs[0].shape == (1, 3, H, W)
    assert g.op_histogram()["conv"] == 2 and "dot" not in g.op_histogram()
    assert_same_steps(before, steps(g))


def test_state_layout_leaves_a_state_alone_when_no_layout_chain_meets_it():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    s = g.add_state("s", np.ones((2, 3), np.float32))
    g.state[0].output = g.op("add", s, x)
    g.outputs, g.output_names = [g.op("mul", g.state[0].output, x)], ["y"]
    text = str(g)
    g, report = run_pipeline(g, ["state-layout"])
    assert not report["passes"][1]["changed"] and str(g) == text and g.state[0].view == ()


def test_state_layout_keeps_the_model_layout_when_the_other_costs_more():
    """The state's neighbourhood is channels-last on both sides but for one transposed reader: moving
    the state would add transposes, so the trial is dropped."""
    g = Graph()
    x = g.add_input("x", f32(1, H, W, C))
    s = g.add_state("s", np.zeros((1, H, W, C), np.float32))
    s2 = g.op("add", s, x)
    g.state[0].output = s2
    g.outputs = [g.op("mul", s2, x), g.op("transpose", s2, perm=(0, 3, 1, 2))]
    g.output_names = ["y", "z"]
    g, report = run_pipeline(g, ["state-layout"])
    assert not report["passes"][1]["changed"] and g.state[0].input.shape == (1, H, W, C)


def test_verify_each_pass_compares_state_through_the_views():
    g = running_mean_net()
    samples = [[np.full((1, C, H, W), 0.1 * i, np.float32), np.float32(0.1)] for i in range(3)]
    run_pipeline(g, CLEANUP, verify_each=True, samples=samples)  # the views make the re-laid state comparable

    def bad_view(graph):  # re-lays like state-layout but records the wrong view back
        from graphopt.passes.state_layout import _relayout
        _relayout(graph, graph.state[0], ((1, H, W, C), (0, 3, 1, 2)))
        graph.state[0].view = (("reshape", (1, 1, H, W, C)),)
        return True
    register(Pass("test-bad-state-view", in_place(bad_view)))
    try:
        with pytest.raises(PassError, match="test-bad-state-view"):
            run_pipeline(running_mean_net(), ["test-bad-state-view"], verify_each=True, samples=samples)
    finally:
        PASSES.pop("test-bad-state-view")


# ---- artifacts and streams --------------------------------------------------------------------------


def test_onnx_stream_reports_the_model_layout_and_keeps_the_stored_one_native(tmp_path):
    from graphopt.targets import onnx as onnx_target
    g = running_mean_net()
    ref = running_mean_net()
    g, _ = run_pipeline(g, CLEANUP)
    g.meta.update(model="net", fps=10.0)
    a = onnx_target.emit(g, tmp_path, {"stem": "net"})
    m = a.manifest
    assert [s["shape"] for s in m["state"]] == [[1, C, H, W]] * 2
    assert [s["model_shape"] for s in m["state"]] == [[1, 1, H, W, C]] * 2
    assert m["state"][0]["view"] == [{"op": "transpose", "perm": [0, 2, 3, 1]},
                                      {"op": "reshape", "shape": [1, 1, H, W, C]}]
    stream = art.load(a.path)
    np.testing.assert_array_equal(stream.state[0], ref.state[0].init)  # initial state, model layout
    it = Interpreter(ref, "float32")
    state = [s.init for s in ref.state]
    rng = np.random.default_rng(5)
    for _ in range(4):
        frame = rng.random((1, C, H, W)).astype(np.float32)
        (want,), state = it.run([frame, np.float32(0.1)], state)
        got = stream.step(frame, dt=0.1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(stream.state, state):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert [x.shape for x in stream.native_state] == [(1, C, H, W)] * 2
    stream.reset()
    np.testing.assert_array_equal(stream.state[1], ref.state[1].init)
