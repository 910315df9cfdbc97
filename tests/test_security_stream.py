"""Attacks on a running Stream: threads sharing it, frames and dt values that would poison its state,
frames of the wrong kind, memory per Stream, and a long soak. Every target's Stream is tried on the
small model of conftest.tiny_graph (an exp(40 dt) gain and a running variance, so absurd frames and
stalls really produce NaN/Inf in the model)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import TINY_FRAME, build_tiny

import graphopt
from graphopt import artifact as art
from graphopt.stream import MAX_DT_FRAMES, FrameError, StepError

# name -> (target, emit options)
TARGETS = {"onnx": ("onnx", {}), "xla": ("xla", {}), "torch": ("torch", {}),
           "tflite-io": ("tflite", {"state_mode": "io"}), "tflite-variables": ("tflite", {"state_mode": "variables"}),
           "tf": ("tf", {})}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-targets")
    return {name: build_tiny(t, out / name, **opts) for name, (t, opts) in TARGETS.items()}


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return (0.5 + 0.1 * rng.standard_normal((n,) + TINY_FRAME)).astype(np.float32)


def _outputs(stream, frames, dt=None):
    return np.array([float(np.asarray(stream.step(f, dt)).ravel()[0]) for f in frames])


@pytest.mark.parametrize("name", list(TARGETS))
def test_absurd_frame_is_refused_and_the_stream_goes_on(tiny, name):
    """A finite but absurd frame (1e30) makes the model's state NaN: the Stream refuses the step and keeps
    the last good state (TFLite variables mode, whose state lives in the interpreter, resets instead)."""
    frames = _frames(12)
    stream, twin = graphopt.load(tiny[name].path), graphopt.load(tiny[name].path)
    _outputs(stream, frames[:6])
    _outputs(twin, frames[:6])
    before = stream.state
    with pytest.raises(StepError, match="NaN/Inf.*" + ("reset" if name == "tflite-variables" else "kept")):
        stream.step(np.full(TINY_FRAME, 1e30, np.float32))
    assert stream.stats["refused"] == 1
    if name == "tflite-variables":
        twin.reset()
    else:
        for a, b in zip(before, stream.state):
            np.testing.assert_array_equal(a, b)
    after, expect = _outputs(stream, frames[6:]), _outputs(twin, frames[6:])
    assert np.isfinite(after).all()
    np.testing.assert_allclose(after, expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["onnx", "xla", "torch", "tflite-io"])
def test_camera_stall_is_stepped_as_max_dt(tiny, name):
    """dt = 3 s would overflow the model's exp(40 dt): the step runs with dt = max_dt (4 frame intervals)
    and says so in stats; a dt beyond what the model takes is never returned as Inf."""
    stream, twin = graphopt.load(tiny[name].path), graphopt.load(tiny[name].path)
    max_dt = tiny[name].manifest["max_dt"]
    assert max_dt == pytest.approx(MAX_DT_FRAMES / 30)
    frames = _frames(3)
    y = float(np.asarray(stream.step(frames[0], dt=3.0)).ravel()[0])
    assert np.isfinite(y) and stream.stats["dt_clamped"] == 1
    assert y == pytest.approx(float(np.asarray(twin.step(frames[0], dt=max_dt)).ravel()[0]), rel=1e-6)
    stream.max_dt = 10.0  # a user who lifts the clamp gets an error, not an Inf
    with pytest.raises(StepError):
        stream.step(frames[1], dt=3.0)
    assert np.isfinite(stream.step(frames[2])).all()


@pytest.mark.parametrize("name", ["onnx", "torch", "xla"])
def test_threads_sharing_a_stream_lose_no_step(tiny, name):
    """Four threads step one Stream 300 times each: the lock serialises them, so the elapsed-time state
    is exactly 1200 steps of dt (before the lock, steps were lost or their state mixed)."""
    stream = graphopt.load(tiny[name].path)
    frame = _frames(1)[0]
    errors = []

    def work():
        try:
            for _ in range(300):
                stream.step(frame, 0.01)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    alone = graphopt.load(tiny[name].path)
    for _ in range(1200):
        alone.step(frame, 0.01)
    assert stream.stats["steps"] == 1200
    for a, b in zip(stream.state, alone.state):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, object, np.str_])
def test_frames_of_a_non_float_dtype_are_refused(tiny_onnx, dtype):
    stream = graphopt.load(tiny_onnx.path)
    with pytest.raises(FrameError, match="dtype|uint8"):
        stream.step(np.zeros(TINY_FRAME, dtype))
    assert stream.stats["steps"] == 0


@pytest.mark.parametrize("dt, match", [(np.array([0.1, 0.2]), "one number"), ([], "one number"),
                                       ("0.03", "positive number"), (True, "positive number"),
                                       (float("nan"), "positive number"), (-1 / 30, "positive number"),
                                       ({"dt": 1}, "positive number")])
def test_dt_of_the_wrong_kind_is_a_frame_error(tiny_onnx, dt, match):
    stream = graphopt.load(tiny_onnx.path)
    with pytest.raises(FrameError, match=match):
        stream.step(_frames(1)[0], dt)


def test_ragged_and_empty_clips(tiny_onnx):
    stream = graphopt.load(tiny_onnx.path)
    out = stream.run(np.zeros((0,) + TINY_FRAME, np.float32))
    assert out.shape == (0,) and out.dtype == np.float32
    with pytest.raises(FrameError, match="not an array|shape"):
        stream.step([[0.5, 0.5], [0.5]])
    with pytest.raises(FrameError, match="no axes"):
        stream.run(np.float32(0.5))


MEMORY = """
import gc, json, sys
import numpy as np
import graphopt
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
path, n = sys.argv[1], int(sys.argv[2])
first = graphopt.load(path)
frame = np.full(first.frame_shape, 0.5, np.float32)
first.step(frame)
gc.collect()
base = rss_mb()
streams = [graphopt.load(path) for _ in range(n)]
for s in streams:
    s.step(frame)
gc.collect()
print(json.dumps({"per_stream_mb": (rss_mb() - base) / n, "state_mb": sum(x.nbytes for x in first.state) / 2**20}))
"""


def _medium_graph():
    """2 MB of state (FacePhys's size) and a 3x3 conv over a 36x36x16 image: memory per Stream is about
    what graphopt adds to the state, not the model's size."""
    import jax
    import jax.numpy as jnp

    from graphopt.frontends.jax import trace
    w = np.random.default_rng(0).standard_normal((3, 3, 3, 16)).astype(np.float32) * 0.1

    def step(frame, dt, state):
        y = jax.lax.conv_general_dilated(frame.reshape(1, 36, 36, 3), w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        new = [0.9 * s + 0.1 * jnp.mean(y) * dt for s in state]
        return jnp.mean(y).reshape(1, 1), new
    init = [np.zeros((1, 32, 36, 36), np.float32)] * 8 + [np.zeros((1, 32, 4, 128), np.float32)] * 11
    g = trace(step, {"frame": np.zeros((1, 1, 36, 36, 3), np.float32), "dt": np.float32(1 / 30)}, init,
              name="medium", output_names=["bvp"])
    g.meta.update(model="medium", fps=30.0)
    return g


def test_memory_per_extra_onnx_stream(tmp_path):
    """50 extra Streams of one ONNX artifact with 2 MB of state: each costs its two state buffers (the
    step reads one and writes the other) and nothing else; the session, its weights and the initial
    state are shared. Measured in a fresh process (issue: 12.6 MB per FacePhys Stream before)."""
    from graphopt.targets import onnx as onnx_target
    with art.atomic_dir(tmp_path / "medium") as tmp:
        onnx_target.emit(_medium_graph(), tmp, {"stem": "medium"})
    r = subprocess.run([sys.executable, "-c", MEMORY, str(tmp_path / "medium"), "50"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert 1.9 < got["state_mb"] < 2.1
    assert got["per_stream_mb"] <= 2 * got["state_mb"] + 0.5, got
    assert got["per_stream_mb"] <= 8, got


def test_streams_of_one_artifact_share_session_and_initial_state(tiny_onnx):
    a, b = graphopt.load(tiny_onnx.path), graphopt.load(tiny_onnx.path)
    assert a.session is b.session
    assert all(x is y for x, y in zip(a._initial_state, b._initial_state))
    assert not a._initial_state[0].flags.writeable
    frames = _frames(4)
    ya = _outputs(a, frames)
    yb = _outputs(b, frames[:2])
    np.testing.assert_array_equal(ya[:2], yb)  # one Stream's steps do not move the other's state


SOAK = """
import gc, json, sys
import numpy as np
import graphopt
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
s = graphopt.load(sys.argv[1])
n = int(sys.argv[2])
rng = np.random.default_rng(0)
frames = (0.5 + 0.1 * rng.standard_normal((64,) + s.frame_shape)).astype(np.float32)
finite, rss = True, []
for i in range(n):
    y = s.step(frames[i % 64], 1 / 30 if i % 997 else 0.5)  # a camera stall now and then
    finite &= bool(np.isfinite(y).all())
    if i == n // 10:
        gc.collect(); rss.append(rss_mb())
gc.collect(); rss.append(rss_mb())
print(json.dumps({"finite": finite, "rss_growth_mb": rss[-1] - rss[0], "steps": s.stats["steps"],
                  "clamped": s.stats["dt_clamped"], "state_finite": all(np.isfinite(x).all() for x in s.state)}))
"""


@pytest.mark.parametrize("name", ["onnx", "xla"])
def test_soak_100k_steps(tiny, name):
    """100,000 steps with a stall every 997 frames: every output and the final state finite, RSS flat
    (growth after the first 10% under 5 MB), every stall clamped."""
    r = subprocess.run([sys.executable, "-c", SOAK, str(tiny[name].path), "100000"], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["finite"] and got["state_finite"] and got["steps"] == 100000
    assert got["clamped"] == len(range(0, 100000, 997))
    assert got["rss_growth_mb"] < 5, got


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.parametrize("edit", ["output-shape", "output-name", "frame-dtype", "state-shape"])
def test_a_manifest_that_does_not_fit_its_model_is_refused_at_load(tiny, tmp_path, name, edit):
    """The manifest is checked against the model file by one step at load: a name, shape or dtype the model
    does not have is an ArtifactError there, never a runtime's own exception at the first frame."""
    import shutil
    folder = tmp_path / "a"
    shutil.copytree(tiny[name].path.parent, folder)
    mpath = folder / "tiny.manifest.json"
    m = json.loads(mpath.read_text())
    if edit == "output-shape":
        m["outputs"][0]["shape"] = [1, 2]
    elif edit == "output-name":
        m["outputs"][0]["name"] = "pulse"
    elif edit == "frame-dtype":
        m["inputs"][0]["dtype"] = "float16" if name != "onnx" else "float64"
    else:  # the state file made to match, so only the model disagrees
        m["state"][2]["shape"] = [1, 2]
        with np.load(folder / "tiny.state.npz") as d:
            arrays = {k: d[k] for k in d.files}
        arrays["state_in_2"] = np.zeros((1, 2), np.float32)
        np.savez(folder / "tiny.state.npz", **arrays)
        m["initial_state"]["sha256"] = art.sha256(folder / "tiny.state.npz")
    mpath.write_text(json.dumps(m))
    # xla and torch programs take and return tensors by position (a name is only the manifest's label), and
    # torch casts float16 frames to the model's float32: those edits change nothing the model sees
    if (name in ("xla", "torch") and edit == "output-name") or (name == "torch" and edit == "frame-dtype"):
        stream = graphopt.load(folder)
        assert np.isfinite(stream.step(_frames(1)[0])).all()
        return
    with pytest.raises(art.ArtifactError, match="manifest|rebuild"):
        graphopt.load(folder)


@pytest.mark.parametrize("dt", [1e-300, 10**400, -1e39])
def test_dt_that_float32_cannot_hold(tiny_onnx, dt):
    stream = graphopt.load(tiny_onnx.path)
    with pytest.raises(FrameError, match="dt must be"):
        stream.step(_frames(1)[0], dt)


def test_clips_as_generators_lists_and_masked_frames(tiny_onnx):
    stream = graphopt.load(tiny_onnx.path)
    frames = _frames(3)
    y = stream.run(f for f in frames)
    stream.reset()
    np.testing.assert_array_equal(y, stream.run(list(frames)))
    with pytest.raises(FrameError, match="one array"):
        stream.run([frames[0], frames[0][..., :2]])
    masked = np.ma.masked_array(frames[0], mask=np.zeros(TINY_FRAME, bool))
    masked.mask[0, 0, 0, 0, 0] = True
    with pytest.raises(FrameError, match="masked"):
        stream.step(masked)
