"""Stream.state gives the model's state layout on every target (issue 15 item 5).

The state-layout pass may store a recurrent state in another layout than the model holds it; the
manifest's state entry then carries `view` steps (and `model_shape`), `Stream.state` applies them and
`Stream.native_state` gives the stored tensors. The pass only re-lays a state for targets whose convs run
channels-first, so to test the view mechanism on every target, the SAME re-laid graph (with views) is
emitted to each one (emit takes any graph) and checked against the IR interpreter on the model-layout
graph. The graph is tests/test_state_layout.py's running_mean_net."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt import artifact as art
from graphopt import state_views, targets
from graphopt.ir import Graph, Interpreter
from graphopt.passes import run_pipeline
from graphopt.stream import StepError

C, H, W = 4, 3, 5
CLEANUP = ["layout", "state-layout", "simplify", "cse", "dce"]
STORED, MODEL = (1, C, H, W), (1, 1, H, W, C)
VIEW = [{"op": "transpose", "perm": [0, 2, 3, 1]}, {"op": "reshape", "shape": list(MODEL)}]
DT, STEPS = 0.1, 4
TOL = dict(rtol=1e-4, atol=1e-5)


from test_state_layout import running_mean_net  # noqa: E402  (the same graph, built once in one place)


def run_interpreter(g: Graph, frames):
    """Outputs and the raw final state (in g's own state layout) of g over the frames, float64."""
    it = Interpreter(g, "float64")
    state = [s.init for s in g.state]
    outs = []
    for frame in frames:
        (y,), state = it.run([frame, np.float32(DT)], state)
        outs.append(y)
    return outs, state


@pytest.fixture(scope="module")
def relaid():
    """The re-laid graph (states stored channels-first, with views), the model-layout reference graph,
    random frames, and the interpreter's outputs, model-layout state and stored-layout state after them."""
    ref = running_mean_net()
    g, _ = run_pipeline(running_mean_net(), CLEANUP)
    g.meta.update(model="net", fps=10.0)
    # the pass must still re-lay the states, else this file tests nothing
    assert [s.input.shape for s in g.state] == [STORED] * 2
    assert [state_views.to_manifest(s.view) for s in g.state] == [VIEW] * 2
    assert all(s.view == () and s.input.shape == MODEL for s in ref.state)
    rng = np.random.default_rng(5)
    frames = [rng.random(STORED).astype(np.float32) for _ in range(STEPS)]
    outs, model_state = run_interpreter(ref, frames)
    relaid_outs, stored_state = run_interpreter(g, frames)
    for a, b in zip(outs + model_state, relaid_outs + [state_views.apply(s, v.view) for s, v in
                                                      zip(stored_state, g.state)]):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)  # the pass kept the model's meaning
    return dict(graph=g, ref=ref, frames=frames, outs=outs, model_state=model_state, stored_state=stored_state)


# every target that runs without a GPU; tensorrt without an engine (no GPU) runs its TensorRT-legal ONNX in
# onnxruntime, and with a GPU and datacenter TensorRT its engine (TensorRTStream)
TARGETS = [
    pytest.param("onnx", {}, id="onnx"),
    pytest.param("xla", {}, id="xla"),
    pytest.param("tflite", {}, id="tflite-variables"),
    pytest.param("tflite", {"state_mode": "io"}, id="tflite-io"),
    pytest.param("tf", {}, id="tf"),
    pytest.param("torch", {}, id="torch"),
    pytest.param("torch-compile", {}, id="torch-compile"),  # ~5 s warm inductor cache, ~14 s cold
    pytest.param("tensorrt", {}, id="tensorrt"),
]


def assert_states(got, want, shape, exact=False):
    assert len(got) == len(want) == 2
    for x, w in zip(got, want):
        assert x.shape == shape and x.dtype == np.float32
        if exact:
            np.testing.assert_array_equal(x, w)
        else:
            np.testing.assert_allclose(x, w, **TOL)


@pytest.mark.parametrize("target, options", TARGETS)
def test_stream_state_is_the_models_layout_and_native_state_the_stored_one(target, options, relaid, tmp_path):
    module = targets.module_for(target)
    ok, why = module.available()
    if not ok:
        pytest.skip(why)
    g, ref = relaid["graph"], relaid["ref"]
    model_init = [s.init for s in ref.state]
    stored_init = [s.init for s in g.state]

    # emit: the manifest (returned and on disk) describes the stored tensors and carries the views back
    a = module.emit(g.clone(), tmp_path, {"stem": "net", **options})  # clone: an emit may legalise in place
    for m in (a.manifest, art.open_artifact(a.path).manifest):
        assert [s["shape"] for s in m["state"]] == [list(STORED)] * 2
        assert [s["model_shape"] for s in m["state"]] == [list(MODEL)] * 2
        assert [s["view"] for s in m["state"]] == [VIEW] * 2
    if "state_mode" in options:
        assert a.manifest["tflite"]["state_mode"] == options["state_mode"]

    stream = art.load(a.path)  # load's self-check: the model's state I/O has the manifest's (stored) shapes
    assert_states(stream.state, model_init, MODEL, exact=True)
    assert_states(stream.native_state, stored_init, STORED, exact=True)

    for frame, want in zip(relaid["frames"], relaid["outs"]):
        np.testing.assert_allclose(stream.step(frame, dt=DT), want, **TOL)
    assert_states(stream.state, relaid["model_state"], MODEL)
    assert_states(stream.native_state, relaid["stored_state"], STORED)

    # the state handed out is a copy: writing into it leaves the stream's own alone
    handed = stream.state
    kept = [x.copy() for x in handed]
    for x in handed:
        x[...] = 0
    assert_states(stream.state, kept, MODEL, exact=True)

    # a refused step (NaN/Inf in the new state) keeps the last good state, in the model's layout too; LiteRT
    # keeps variables-mode state inside the model and resets it instead (graphopt.targets.tflite)
    with pytest.raises(StepError):
        stream.step(np.full(STORED, 1e30, np.float32), dt=DT)
    resets = target == "tflite" and a.manifest["tflite"]["state_mode"] == "variables"
    assert_states(stream.state, model_init if resets else kept, MODEL, exact=True)

    stream.reset()
    assert_states(stream.state, model_init, MODEL, exact=True)
    assert_states(stream.native_state, stored_init, STORED, exact=True)
