"""Baseline step models: ONNX/TFLite files graphopt did not build, run as Streams by `verify` and `bench`.

A toy stateful step model is written here in TensorFlow and exported the way authors export theirs
(the TFLite converter, tf2onnx); FacePhys itself is exported through TF + tf2onnx (not a graphopt
emitter) and verified against the authors' reference step.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from graphopt import bench, cli
from graphopt.baseline import BaselineError, is_baseline, load_state_file, open_baseline, order_io
from graphopt.stream import FrameError

FRAME_SHAPE = (1, 1, 36, 36, 3)
TAU = 0.5  # seconds: time constant of the toy's exponential moving average
INIT = [np.array([[0.1, 0.2, 0.3]], np.float32), np.array([[0.5]], np.float32)]
N_FRAMES = 20


# ---- the toy model -------------------------------------------------------------------------------
def toy_numpy_step(frame, dt, state):
    """NumPy re-implementation of the toy: per-channel mean, an EMA of it with a dt-dependent decay
    (state 0, [1,3]), a running dt-weighted sum of the mean (state 1, [1,1])."""
    s0, s1 = (np.asarray(s, np.float64) for s in state)
    m = np.asarray(frame, np.float64).reshape(FRAME_SHAPE).mean(axis=(1, 2, 3)).reshape(1, 3)
    a = np.exp(-float(dt) / TAU)
    ema = a * s0 + (1 - a) * m
    total = s1 + m.sum(axis=1, keepdims=True) * float(dt)
    out = (m - ema).sum(axis=1, keepdims=True) + 0.01 * total
    return out, [ema, total]


def toy_tf_function(tf, n_extra: int = 0):
    sig = [tf.TensorSpec(FRAME_SHAPE, tf.float32, name="input"), tf.TensorSpec((), tf.float32, name="dt"),
           tf.TensorSpec((1, 3), tf.float32, name="state_in_0"), tf.TensorSpec((1, 1), tf.float32, name="state_in_1")]

    @tf.function(input_signature=sig)
    def step(input, dt, state_in_0, state_in_1):  # noqa: A002 (the authors' input name)
        m = tf.reshape(tf.reduce_mean(input, axis=[1, 2, 3]), (1, 3))
        a = tf.exp(-dt / TAU)
        ema = a * state_in_0 + (1.0 - a) * m
        total = state_in_1 + tf.reduce_sum(m, axis=1, keepdims=True) * dt
        out = tf.reduce_sum(m - ema, axis=1, keepdims=True) + 0.01 * total
        return {"output": out, "state_out_0": ema, "state_out_1": total}
    return step, sig


def tflite_convert(tf, concrete_fn, owner) -> bytes:
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], owner)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


def toy_frames(n: int = N_FRAMES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(1,) + FRAME_SHAPE).astype(np.float32)
    drift = rng.normal(0, 0.05, size=(n, 1, 1, 1, 1, 3)).astype(np.float32)
    return np.clip(base + drift + rng.normal(0, 0.01, size=(n,) + FRAME_SHAPE), 0, 1).astype(np.float32)


def toy_reference(frames, dts, state=INIT):
    outs, state = [], [np.asarray(s, np.float64) for s in state]
    for f, dt in zip(frames, dts):
        y, state = toy_numpy_step(f, dt, state)
        outs.append(float(y.reshape(-1)[0]))
    return np.asarray(outs), state


def _interp_io(path):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return ([(d["name"], tuple(int(x) for x in d["shape"])) for d in it.get_input_details()],
            [(d["name"], tuple(int(x) for x in d["shape"])) for d in it.get_output_details()])


def _onnx_io(path):
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = lambda v: tuple(d if isinstance(d, int) else 1 for d in v.shape)
    return [(i.name, shape(i)) for i in s.get_inputs()], [(o.name, shape(o)) for o in s.get_outputs()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    d = tmp_path_factory.mktemp("toy")
    step, sig = toy_tf_function(tf)
    tflite = d / "toy.tflite"
    tflite.write_bytes(tflite_convert(tf, step.get_concrete_function(), step))
    onnx_path = d / "toy.onnx"
    tf2onnx.convert.from_function(step, input_signature=sig, opset=17, output_path=str(onnx_path))
    npz = d / "state.npz"
    np.savez(npz, state_in_0=INIT[0], state_in_1=INIT[1])
    gz = d / "state.json.gz"
    with gzip.open(gz, "wt") as f:
        json.dump([s.tolist() for s in INIT], f)
    return SimpleNamespace(dir=d, tflite=tflite, onnx=onnx_path, npz=npz, json_gz=gz, tf=tf, step=step)


def test_numpy_toy_matches_tf_eager(toy):
    """The NumPy re-implementation the stream tests compare with is the TF function itself."""
    tf = toy.tf
    frames, state = toy_frames(5), [tf.constant(s) for s in INIT]
    ref_state = INIT
    for i, f in enumerate(frames):
        dt = np.float32(1 / 30 if i % 2 else 1 / 15)
        got = toy.step(tf.constant(f), tf.constant(dt), *state)
        want, ref_state = toy_numpy_step(f, dt, ref_state)
        np.testing.assert_allclose(got["output"].numpy(), want, atol=1e-6)
        state = [got["state_out_0"], got["state_out_1"]]
        for g, w in zip(state, ref_state):
            np.testing.assert_allclose(g.numpy(), w, atol=1e-6)


# ---- exported names and their matching ---------------------------------------------------------
def test_toy_export_names_are_matched_to_roles(toy):
    # tf2onnx keeps the signature's names: inputs input, dt, state_in_i; outputs the dict keys.
    ins, outs = _onnx_io(toy.onnx)
    assert [n for n, _ in ins] == ["input", "dt", "state_in_0", "state_in_1"]
    assert sorted(n for n, _ in outs) == ["output", "state_out_0", "state_out_1"]
    assert order_io(ins, outs) == (("input", "dt", ["state_in_0", "state_in_1"]),
                                   ("output", ["state_out_0", "state_out_1"]))
    # The TFLite converter (from_concrete_functions) keeps the input names but renames the outputs
    # Identity, Identity_1, Identity_2, in TF's flattening order of the output dict (sorted keys:
    # output, state_out_0, state_out_1). No output name says its role, so order_io falls back to
    # position: output first, then the states in order -- right for this toy (shapes [1,1], [1,3], [1,1]).
    ins, outs = _interp_io(toy.tflite)
    assert [n for n, _ in ins] == ["input", "dt", "state_in_0", "state_in_1"]
    assert outs == [("Identity", (1, 1)), ("Identity_1", (1, 3)), ("Identity_2", (1, 1))]
    assert order_io(ins, outs) == (("input", "dt", ["state_in_0", "state_in_1"]),
                                   ("Identity", ["Identity_1", "Identity_2"]))
    assert is_baseline(toy.tflite) and is_baseline(toy.onnx)


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
@pytest.mark.parametrize("state_kind", ["npz", "json_gz"])
def test_baseline_stream_matches_toy(toy, kind, state_kind):
    stream = open_baseline(getattr(toy, kind), state_file=str(getattr(toy, state_kind)))
    assert stream.manifest["target"] == kind and stream.manifest["baseline"] is True
    for got, want in zip(stream.state, INIT):
        np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)
    frames = toy_frames()
    # dt varies: None (the default, 1/30 s) and explicit values, so a dropped or mis-wired dt shows.
    dts = [None if i % 3 == 0 else (1 / 15 if i % 3 == 1 else 0.05) for i in range(N_FRAMES)]
    outs = np.array([float(np.asarray(stream.step(f, dt)).reshape(-1)[0]) for f, dt in zip(frames, dts)])
    want, want_state = toy_reference(frames, [1 / 30 if dt is None else dt for dt in dts])
    np.testing.assert_allclose(outs, want, atol=1e-5, rtol=0)
    assert np.ptp(outs) > 1e-2  # the toy's output does move: the comparison is not vacuous
    for got, w in zip(stream.state, want_state):
        np.testing.assert_allclose(np.asarray(got).reshape(w.shape), w, atol=1e-5, rtol=0)
    stream.reset()
    for got, w in zip(stream.state, INIT):
        np.testing.assert_array_equal(np.asarray(got).reshape(w.shape), w)
    first = float(np.asarray(stream.step(frames[0], dts[0])).reshape(-1)[0])
    assert first == pytest.approx(want[0], abs=1e-5)
    before = [np.array(s) for s in stream.state]
    with pytest.raises(FrameError, match="shape"):
        stream.step(np.zeros((1, 1, 36, 36, 4), np.float32))
    with pytest.raises(FrameError):
        stream.step(np.zeros((36, 36), np.float32))
    for b, a in zip(before, stream.state):
        np.testing.assert_array_equal(a, b)  # a rejected frame leaves the state alone


def test_stream_accepts_squeezed_frame(toy):
    stream = open_baseline(toy.onnx, state_file=str(toy.npz))
    f = toy_frames(1)[0]
    y = stream.step(f.reshape(36, 36, 3))
    want, _ = toy_numpy_step(f, 1 / 30, INIT)
    np.testing.assert_allclose(np.asarray(y).reshape(-1), want.reshape(-1), atol=1e-5)


def test_tflite_frame_error_message_shows_plain_shape(toy):
    stream = open_baseline(toy.tflite, state_file=str(toy.npz))
    with pytest.raises(FrameError) as e:
        stream.step(np.zeros((1, 1, 36, 36, 4), np.float32))
    assert "(1, 1, 36, 36, 3)" in str(e.value), str(e.value)


@pytest.mark.slow  # loads the FacePhys reference for its initial state
@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_toy_without_state_file_fails_on_facephys_state(toy, kind):
    """No --state: the FacePhys reference's 46 state tensors do not fit the toy's 2."""
    with pytest.raises(BaselineError, match=r"facephys reference's initial state has 46 state tensors, "
                                            r"the model takes 2"):
        open_baseline(getattr(toy, kind))


def test_load_state_file_orders_numerically(tmp_path):
    arrays = {f"state_in_{i}": np.full((1, i + 1), i, np.float32) for i in range(12)}
    np.savez(tmp_path / "s.npz", **dict(reversed(list(arrays.items()))))
    got = load_state_file(tmp_path / "s.npz")
    assert [a.shape for a in got] == [(1, i + 1) for i in range(12)]
    assert [float(a.flat[0]) for a in got] == list(range(12))
    with gzip.open(tmp_path / "s.json.gz", "wt") as f:  # the authors' gzip-JSON, as a dict
        json.dump({k: v.tolist() for k, v in reversed(list(arrays.items()))}, f)
    assert [float(a.flat[0]) for a in load_state_file(tmp_path / "s.json.gz")] == list(range(12))
    np.savez(tmp_path / "pos.npz", *INIT)  # arr_0, arr_1
    assert [a.shape for a in load_state_file(tmp_path / "pos.npz")] == [(1, 3), (1, 1)]


# ---- order_io ------------------------------------------------------------------------------------
def test_order_io_authors_naming_shuffled():
    n = 12
    rng = np.random.default_rng(1)
    ins = [("input", FRAME_SHAPE), ("dt", ())] + [(f"state_in_{i}", (1, i + 1)) for i in range(n)]
    outs = [("output", (1, 1))] + [(f"state_out_{i}", (1, i + 1)) for i in range(n)]
    ins = [ins[i] for i in rng.permutation(len(ins))]
    outs = [outs[i] for i in rng.permutation(len(outs))]
    (frame, dt, states), (out, out_states) = order_io(ins, outs)
    assert (frame, dt, out) == ("input", "dt", "output")
    assert states == [f"state_in_{i}" for i in range(n)]  # state_in_10 after state_in_9
    assert out_states == [f"state_out_{i}" for i in range(n)]


def test_order_io_unnamed_scalar_dt_found_by_shape():
    ins = [("x", FRAME_SHAPE), ("delta", ()), ("h_a", (1, 3)), ("h_b", (1, 4))]
    outs = [("y", (1, 1)), ("h_a_new", (1, 3)), ("h_b_new", (1, 4))]
    assert order_io(ins, outs) == (("x", "delta", ["h_a", "h_b"]), ("y", ["h_a_new", "h_b_new"]))


def test_order_io_prefers_rank0_dt_over_one_element_state():
    ins = [("x", FRAME_SHAPE), ("h_a", (1, 1)), ("time_step", ()), ("h_b", (1, 3))]
    outs = [("y", (1, 1)), ("h_a_new", (1, 1)), ("h_b_new", (1, 3))]
    assert order_io(ins, outs)[0] == ("x", "time_step", ["h_a", "h_b"])


def test_order_io_mismatched_state_counts():
    ins = [("input", FRAME_SHAPE), ("dt", ()), ("state_in_0", (1, 3)), ("state_in_1", (1, 1))]
    with pytest.raises(BaselineError, match="2 state inputs but 1 state outputs"):
        order_io(ins, [("output", (1, 1)), ("state_out_0", (1, 3))])
    with pytest.raises(BaselineError, match="2 state inputs but 3 state outputs"):
        order_io(ins, [("output", (1, 1))] + [(f"state_out_{i}", (1, 1)) for i in range(3)])


def test_order_io_no_dt():
    with pytest.raises(BaselineError, match="no dt"):
        order_io([("input", FRAME_SHAPE), ("state_in_0", (1, 3))], [("output", (1, 1)), ("state_out_0", (1, 3))])


# ---- exports whose names are lost or rewritten ------------------------------------------------------
def test_tflite_via_saved_model_matches_toy(toy, tmp_path):
    tf = toy.tf
    step, _ = toy_tf_function(tf)
    module = tf.Module()
    module.step = step
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": step.get_concrete_function()})
    conv = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    path = tmp_path / "toy_sm.tflite"
    path.write_bytes(conv.convert())
    stream = open_baseline(path, state_file=str(toy.npz))
    frames = toy_frames()
    outs = np.array([float(np.asarray(stream.step(f)).reshape(-1)[0]) for f in frames])
    np.testing.assert_allclose(outs, toy_reference(frames, [1 / 30] * N_FRAMES)[0], atol=1e-5)


def test_tflite_many_states_misordered_outputs_detected(toy, tmp_path):
    tf = toy.tf
    n = 12
    sig = [tf.TensorSpec(FRAME_SHAPE, tf.float32, name="input"), tf.TensorSpec((), tf.float32, name="dt")] + \
          [tf.TensorSpec((1, i + 1), tf.float32, name=f"state_in_{i}") for i in range(n)]

    @tf.function(input_signature=sig)
    def step(input, dt, *states):  # noqa: A002
        m = tf.reduce_mean(input)
        return {"output": tf.reshape(m, (1, 1)), **{f"state_out_{i}": s + m * dt for i, s in enumerate(states)}}
    path = tmp_path / "many.tflite"
    path.write_bytes(tflite_convert(tf, step.get_concrete_function(), step))
    np.savez(tmp_path / "many.npz", **{f"state_in_{i}": np.zeros((1, i + 1), np.float32) for i in range(n)})
    try:
        stream = open_baseline(path, state_file=str(tmp_path / "many.npz"))
    except BaselineError:
        return  # acceptable: the mismatch is caught when the model is opened
    frames = toy_frames(3)
    for f in frames:
        stream.step(f)
    total = sum(float(f.mean()) for f in frames) / 30
    for i, s in enumerate(stream.state):
        np.testing.assert_allclose(s, np.full((1, i + 1), total), atol=1e-5)


# ---- graphopt verify on baselines ----------------------------------------------------------------
def _tier_line(out: str) -> str:
    m = re.search(r"tier reached\s+(\S+)", out)
    assert m, out
    return m.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_verify_a_state_the_reference_cannot_start_from_is_exit_2(toy, capsys, kind):
    """The reference starts from the baseline's --state: the toy's 2 state tensors are no FacePhys state
    (46 tensors), so verifying it against facephys is a one-line error, not a meaningless tier."""
    rc = cli.main(["verify", str(getattr(toy, kind)), "--state", str(toy.npz), "--frames", "60", "--tier", "signal"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the facephys reference cannot start from the --state: the baseline carries 2 state tensors, the " \
           "reference 46" in err


def test_verify_missing_file(tmp_path, capsys):
    path = tmp_path / "nowhere" / "authors.onnx"
    assert cli.main(["verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "does not exist" in err


@pytest.mark.parametrize("suffix, says", [(".onnx", "not a readable ONNX model"),
                                          (".tflite", "not a TFLite flatbuffer")])
def test_verify_corrupt_model(tmp_path, capsys, suffix, says):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert cli.main(["verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and says in err


def test_open_baseline_other_suffix(toy, tmp_path):
    path = tmp_path / "toy.pb"
    path.write_bytes(toy.onnx.read_bytes())
    assert not is_baseline(path)
    with pytest.raises(BaselineError, match=r"a baseline must be an \.onnx or \.tflite step model"):
        open_baseline(path)


def test_verify_other_suffix_says_onnx_or_tflite(toy, tmp_path, capsys):
    path = tmp_path / "toy.pb"
    path.write_bytes(toy.onnx.read_bytes())
    assert cli.main(["verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert ".onnx" in err and ".tflite" in err and "baseline" in err and "commands that accept" not in err


def test_verify_state_file_errors(toy, tmp_path, capsys):
    three = tmp_path / "three.npz"
    np.savez(three, state_in_0=INIT[0], state_in_1=INIT[1], state_in_2=INIT[1])
    assert cli.main(["verify", str(toy.onnx), "--state", str(three)]) == 2
    assert "the state file has 3 state tensors, the model takes 2" in capsys.readouterr().err

    wrong = tmp_path / "wrong.json.gz"
    with gzip.open(wrong, "wt") as f:
        json.dump([[[0.0] * 4], [[0.0]]], f)
    assert cli.main(["verify", str(toy.onnx), "--state", str(wrong)]) == 2
    assert "state 0 from the state file has shape (1, 4), the model's state input 0 is (1, 3)" in \
        capsys.readouterr().err

    missing = tmp_path / "missing.npz"
    assert cli.main(["verify", str(toy.onnx), "--state", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01not a state")
    assert cli.main(["verify", str(toy.tflite), "--state", str(garbage)]) == 2
    assert "neither npz nor (gzip-)JSON" in capsys.readouterr().err


# ---- FacePhys exported by the authors' route (TF + tf2onnx), verified ----------------------------
@pytest.fixture(scope="module")
def facephys_authors_onnx(tmp_path_factory, facephys):
    """FacePhys's step as a TF function with the authors' I/O names (input, dt, state_in_i -> output,
    state_out_i), converted by tf2onnx: no graphopt emitter involved (tests/onnx_corpus.py)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from onnx_corpus import facephys_tf2onnx
    return facephys_tf2onnx(tmp_path_factory.mktemp("authors"), facephys).path


@pytest.mark.slow
def test_verify_facephys_authors_style_onnx(facephys_authors_onnx, capsys):
    path = facephys_authors_onnx
    assert is_baseline(path)
    ins, outs = _onnx_io(path)
    assert [n for n, _ in ins] == ["input", "dt"] + [f"state_in_{i}" for i in range(46)]
    assert sorted(n for n, _ in outs) == sorted(["output"] + [f"state_out_{i}" for i in range(46)])
    assert [n for n, _ in outs][:4] == ["output", "state_out_0", "state_out_1", "state_out_10"]  # sorted keys
    rc = cli.main(["verify", str(path), "--frames", "600"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert _tier_line(out) == "rounding"
    rc = cli.main(["verify", str(path), "--frames", "600", "--tier", "rounding"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tier reached      rounding (claimed: rounding)" in out


# ---- graphopt bench with baselines --------------------------------------------------------------------
@pytest.mark.slow
def test_bench_rows_with_baselines(toy):
    result = bench.run("facephys", targets=["onnx"], baselines=[str(toy.tflite), str(toy.onnx)],
                       state_file=str(toy.npz), rounds=1, steps_per_round=20, unfused=False, log=lambda m: None)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"graphopt onnx fused", "open-rppg JAX JIT (reference)", "baseline toy.tflite",
                         "baseline toy.onnx"}
    for r in rows.values():
        assert r["fps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0, r
    assert rows["baseline toy.tflite"]["target"] == "baseline-tflite"
    assert rows["baseline toy.onnx"]["backend"] == "onnxruntime (CPU EP)"
    assert rows["open-rppg JAX JIT (reference)"]["x_reference"] == pytest.approx(1.0)
    assert result["sgemm_gflops_1thread"] > 0 and result["compute_bound_fps"] > 0
    md = bench.markdown(result)
    lines = md.splitlines()
    assert lines[0].startswith("| Runtime | FPS | Backend |")
    for name in rows:
        assert sum(line.startswith(f"| {name} |") for line in lines) == 1, md


@pytest.mark.slow
def test_bench_baselines_with_same_file_name(toy, tmp_path, monkeypatch):
    import graphopt.targets.onnx as onnx_target
    monkeypatch.setattr(onnx_target, "available", lambda: (False, "skipped by the test"))  # no build
    paths = []
    for sub in ("authors", "ours"):
        (tmp_path / sub).mkdir()
        paths.append(tmp_path / sub / "model.onnx")
        paths[-1].write_bytes(toy.onnx.read_bytes())
    result = bench.run("facephys", targets=["onnx"], baselines=[str(p) for p in paths], state_file=str(toy.npz),
                       rounds=1, steps_per_round=5, unfused=False, log=lambda m: None)
    assert len([r for r in result["rows"] if r["target"] == "baseline-onnx"]) == 2
