"""`graphopt verify BASELINE --state FILE`: the reference starts from the state the baseline starts from.

A tiny stateful step model is written in TensorFlow with the authors' I/O names (input, dt, state_in_i ->
output, state_out_i) and exported by tf2onnx (no graphopt emitter involved); its reference is the same
model as a user ModelSpec (--model FILE.py:spec) under jax.jit. The export adds OFFSET to its output (as a
reduced-precision export drifts), so it reaches the signal tier, not rounding, and an elementwise
--atol/--rtol check passes or fails by a known margin. Its state carries a slow exponential moving
average of the frame: started from another state than the reference's, the output carries a transient
the reference does not have, and the baseline falls below every tier (the bug this file is about).
"""
from __future__ import annotations

import json
import re
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import cli_error

from graphopt import cli, equivalence, metrics, models
from graphopt.baseline import BaselineError, open_baseline, reference_state

FRAME_SHAPE = (1, 1, 8, 8, 3)
DECAY = 0.95  # per step, of the moving average (state 0)
OFFSET = 1e-5  # what the export adds to every output
FRAMES = 300
DEFAULT_STATE = [np.array([[0.6, 0.45, 0.4]], np.float32), np.zeros((1, 1), np.float32)]  # the spec's
AUTHORS_STATE = [np.zeros((1, 3), np.float32), np.full((1, 1), 5.0, np.float32)]  # the --state file's

SPECS = f'''
import jax.numpy as jnp
import numpy as np
from graphopt import ModelSpec

FRAME = np.zeros({FRAME_SHAPE}, np.float32)


def _step(decay):
    def step(frame, dt, state):
        ema, t = state
        m = jnp.mean(frame, axis=(1, 2, 3)).reshape(1, 3)
        ema = decay * ema + (1.0 - decay) * m
        return jnp.sum(m - ema, axis=1, keepdims=True), (ema, t + dt)
    return step


def _spec(name, decay, state):
    return ModelSpec(name=name, fn=_step(decay), inputs={{"frame": FRAME, "dt": np.float32(1 / 30)}}, state=state,
                     outputs=["bvp"], dt_input="dt", pulse_output="bvp")


def spec():  # the model the export is an export of
    return _spec("tinyema", {DECAY}, (np.array({DEFAULT_STATE[0].tolist()}, np.float32), np.zeros((1, 1), np.float32)))


def other():  # another model with the same state layout: a faster average
    return _spec("otherema", 0.5, (np.array({DEFAULT_STATE[0].tolist()}, np.float32), np.zeros((1, 1), np.float32)))


def three():  # a state of three tensors
    step = _step({DECAY})
    def fn(frame, dt, state):
        out, (ema, t) = step(frame, dt, state[:2])
        return out, (ema, t, state[2])
    return ModelSpec(name="three", fn=fn, inputs={{"frame": FRAME, "dt": np.float32(1 / 30)}},
                     state=(np.zeros((1, 3), np.float32), np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)),
                     outputs=["bvp"], dt_input="dt", pulse_output="bvp")


def wide():  # state 1 has two elements
    def fn(frame, dt, state):
        out, (ema, t) = _step({DECAY})(frame, dt, (state[0], state[1][:, :1]))
        return out, (ema, jnp.concatenate([t, t], axis=1))
    return ModelSpec(name="wide", fn=fn, inputs={{"frame": FRAME, "dt": np.float32(1 / 30)}},
                     state=(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)),
                     outputs=["bvp"], dt_input="dt", pulse_output="bvp")
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    d = tmp_path_factory.mktemp("verify_state")
    sig = [tf.TensorSpec(FRAME_SHAPE, tf.float32, name="input"), tf.TensorSpec((), tf.float32, name="dt"),
           tf.TensorSpec((1, 3), tf.float32, name="state_in_0"), tf.TensorSpec((1, 1), tf.float32, name="state_in_1")]

    @tf.function(input_signature=sig)
    def step(input, dt, state_in_0, state_in_1):  # noqa: A002 (the authors' input name)
        m = tf.reshape(tf.reduce_mean(input, axis=[1, 2, 3]), (1, 3))
        ema = DECAY * state_in_0 + (1.0 - DECAY) * m
        out = tf.reduce_sum(m - ema, axis=1, keepdims=True) + OFFSET
        return {"output": out, "state_out_0": ema, "state_out_1": state_in_1 + dt}
    onnx_path = d / "tiny_authors.onnx"
    tf2onnx.convert.from_function(step, input_signature=sig, opset=17, output_path=str(onnx_path))
    npz = d / "authors_state.npz"
    np.savez(npz, state_in_0=AUTHORS_STATE[0], state_in_1=AUTHORS_STATE[1])
    specs = d / "tiny_specs.py"
    specs.write_text(textwrap.dedent(SPECS))
    return SimpleNamespace(onnx=onnx_path, npz=npz, model=lambda func="spec": f"{specs}:{func}")


def verify(capsys, *argv):
    """graphopt verify: (exit status, stdout, stderr)."""
    rc = cli.main(["verify", *map(str, argv)])
    got = capsys.readouterr()
    return rc, got.out, got.err


def verify_json(capsys, *argv):
    rc, out, err = verify(capsys, *argv, "--json")
    return rc, json.loads(out), err


# ---- the reference starts from --state -------------------------------------------------------------------
def test_verify_with_state_reaches_the_tier_of_the_default_state(tiny, capsys):
    base = [tiny.onnx, "--model", tiny.model(), "--frames", FRAMES]
    rc, default, err = verify_json(capsys, *base)
    assert rc == 0, err
    assert default["tier"] == "signal"  # the export's OFFSET: above the noise floor, the same waveform
    assert default["pairing"]["initial_state"] == "the tinyema reference's own"
    assert "reference_initial_state" not in default

    rc, with_state, err = verify_json(capsys, *base, "--state", tiny.npz)
    assert rc == 0, err
    assert with_state["tier"] == default["tier"]
    assert with_state["pearson"] > 0.9999 and with_state["state_max_rel"] < 1e-5
    assert with_state["reference_initial_state"] == "given"
    # the pairing it chose: in the JSON, and on stderr before the metrics
    p = with_state["pairing"]
    assert (p["frame"], p["dt"], p["output"], p["reference_output"]) == ("input", "dt", "output", "bvp")
    assert p["state"] == [["state_in_0", "state_out_0"], ["state_in_1", "state_out_1"]]
    assert p["matched"] == {"frame": "by name", "dt": "by name", "state inputs": "by index in name",
                            "outputs": "by name"}
    assert p["initial_state"] == f"{tiny.npz} (the reference starts from it too)"
    lines = err.splitlines()
    assert lines[1] == ("pairing: frame = input, dt = dt, output = output -> reference bvp; state_in_<i> -> "
                        "state_out_<i> for i = 0..1 (state input i is the reference's state leaf i); matched by "
                        f"name; initial state: {tiny.npz} (the reference starts from it too)"), err

    rc, out, _ = verify(capsys, *base, "--state", tiny.npz)
    assert rc == 0 and "tier reached      signal\n" in out + "\n", out


def test_without_the_fix_the_reference_starts_from_another_state(tiny):
    """What verify did before: the baseline from the --state, the reference from the spec's own initial state
    -- the transient the state file starts puts the baseline below every tier. From the same state: signal."""
    spec = models.resolve(tiny.model())
    stream = open_baseline(tiny.onnx, spec, str(tiny.npz))
    for got, want in zip(stream.state, AUTHORS_STATE):
        np.testing.assert_array_equal(got, want)
    same = reference_state(stream.state, spec)  # the baseline's initial state, in the reference's layout
    assert [s.shape for s in same] == [s.shape for s in spec.state_leaves]
    clip = equivalence.Clip(frames=FRAMES)
    before = equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec, clip)
    assert before["tier"] is None and before["state_max_rel"] > 1e-3
    assert before["tier_note"].startswith("below quantised: r ")
    after = equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec, clip, reference_state=same)
    assert after["tier"] == "signal" and after["state_max_rel"] < 1e-5
    # the on-disk reference cache is keyed by the initial state: the default state's entry is not reused
    ref_default, _ = equivalence.reference_run(spec, clip)
    ref_state, _ = equivalence.reference_run(spec, clip, initial_state=same)
    assert np.max(np.abs(ref_default[0] - ref_state[0])) > 0.1
    again, _ = equivalence.reference_run(spec, clip, initial_state=same)
    np.testing.assert_array_equal(again[0], ref_state[0])


@pytest.mark.parametrize("func, says", [
    ("three", "error: the three reference cannot start from the --state: the baseline carries 2 state tensors, "
              "the reference 3"),
    ("wide", "error: the wide reference cannot start from the --state: state 1 has shape (1, 1), the reference's "
             "state leaf 1 (1, 2)"),
])
def test_verify_state_that_the_reference_cannot_start_from_exits_2(tiny, capsys, func, says):
    err = cli_error(capsys, "verify", str(tiny.onnx), "--model", tiny.model(func), "--state", str(tiny.npz),
                    "--frames", str(FRAMES))
    assert err.startswith(says), err
    with pytest.raises(BaselineError):
        reference_state(AUTHORS_STATE, models.resolve(tiny.model(func)))


# ---- a tier not reached -------------------------------------------------------------------------------
def test_verify_tier_not_reached_says_which_criterion(tiny, capsys):
    base = [tiny.onnx, "--model", tiny.model("other"), "--state", tiny.npz, "--frames", FRAMES]
    rc, out, err = verify(capsys, *base)
    assert rc == 0, err  # a baseline without --tier: no tier is required
    m = re.search(r"^  tier reached      none \(below quantised: r (\S+) < 0\.999(; heart rate \S+ bpm vs the "
                  r"reference's \S+ bpm, more than one \S+ bpm bin apart)?\)$", out, re.M)
    assert m, out
    assert float(m.group(1)) < 0.999
    assert "None" not in out

    rc, out, err = verify(capsys, *base, "--tier", "quantised")
    assert rc == 1
    assert "(claimed: quantised)" in out
    assert re.search(r"^error: the baseline reaches no tier, below the quantised tier required \(r \S+ < 0\.999",
                     err, re.M), err


def test_verify_tier_required_and_missed_exits_1(tiny, capsys):
    rc, out, err = verify(capsys, tiny.onnx, "--model", tiny.model(), "--state", tiny.npz, "--frames", FRAMES,
                          "--tier", "rounding")
    assert rc == 1
    assert "tier reached      signal (claimed: rounding)" in out
    assert re.search(r"^error: the baseline reaches tier signal, below the rounding tier required \(NRMSE \S+ > "
                     r"4x the noise floor", err, re.M), err
    rc, out, err = verify(capsys, tiny.onnx, "--model", tiny.model(), "--state", tiny.npz, "--frames", FRAMES,
                          "--tier", "signal")
    assert rc == 0, err
    assert "tier reached      signal (claimed: signal)" in out


# ---- --atol / --rtol ------------------------------------------------------------------------------------
def _tol_line(out: str, label: str) -> str:
    m = re.search(rf"^  \[{re.escape(label)}\]\s+(PASS|FAIL)  max abs error (\S+), max rel error (\S+); (\d+) of "
                  rf"(\d+) elements fail \((\S+)%\)", out, re.M)
    assert m, out
    return m


def test_verify_atol_rtol_pass(tiny, capsys):
    base = [tiny.onnx, "--model", tiny.model(), "--state", tiny.npz, "--frames", FRAMES]
    rc, out, err = verify(capsys, *base, "--atol", "2e-5", "--rtol", "1e-6")
    assert rc == 0, err
    assert "  tolerance         |out - ref| <= atol 2e-05 + rtol 1e-06 * |ref|, every element over the clip" in out
    bvp = _tol_line(out, "bvp")
    assert bvp.group(1) == "PASS" and OFFSET / 2 < float(bvp.group(2)) < 2e-5
    assert (bvp.group(4), bvp.group(5), bvp.group(6)) == ("0", str(FRAMES), "0")
    state = _tol_line(out, "final state")
    assert state.group(1) == "PASS" and state.group(5) == "4"  # a (1, 3) and a (1, 1) tensor
    rc, report, _ = verify_json(capsys, *base, "--atol", "2e-5", "--rtol", "1e-6")
    t = report["tolerance"]
    assert rc == 0 and t["passed"] and t["outputs"]["bvp"]["passed"] and t["state"]["passed"]
    assert (t["atol"], t["rtol"]) == (2e-5, 1e-6)
    rc, out, _ = verify(capsys, *base)
    assert rc == 0 and "tolerance" not in out  # asked for only


@pytest.mark.parametrize("flags, all_fail", [
    (["--atol", "5e-6"], True), (["--rtol", "1e-6"], True),
    # rtol 1e-5 covers the OFFSET where |ref| > ~0.9 (the start of the transient the state file starts): those pass
    (["--atol", "1e-6", "--rtol", "1e-5"], False)])
def test_verify_atol_rtol_fail(tiny, capsys, flags, all_fail):
    rc, out, err = verify(capsys, tiny.onnx, "--model", tiny.model(), "--state", tiny.npz, "--frames", FRAMES, *flags)
    assert rc == 1  # the tier (signal) is not required: the tolerance alone fails it
    assert "tier reached      signal" in out
    bvp = _tol_line(out, "bvp")
    failing = int(bvp.group(4))
    assert bvp.group(1) == "FAIL" and bvp.group(5) == str(FRAMES)
    assert (failing == FRAMES and bvp.group(6) == "100") if all_fail else 0 < failing < FRAMES
    assert float(bvp.group(6)) == pytest.approx(100 * failing / FRAMES, rel=1e-2)
    assert OFFSET / 2 < float(bvp.group(2)) < 2 * OFFSET
    assert _tol_line(out, "final state").group(1) == "PASS"  # the state is not offset
    atol, rtol = (dict(zip(flags[::2], flags[1::2])).get(k, "0") for k in ("--atol", "--rtol"))
    assert err.strip().splitlines()[-1] == (f"error: outside --atol {float(atol):g} --rtol {float(rtol):g}: "
                                            f"bvp ({failing} of {FRAMES} elements)"), err


@pytest.mark.parametrize("flag, value", [("--atol", "-1"), ("--atol", "nan"), ("--atol", "inf"), ("--rtol", "1e9"),
                                         ("--atol", "abc"), ("--rtol", "-0.5")])
def test_verify_bad_tolerance_exits_2(tmp_path, capsys, flag, value):
    err = cli_error(capsys, "verify", str(tmp_path / "model.onnx"), f"{flag}={value}")
    assert f"argument {flag}: must be" in err and repr(value) in err, err


# ---- the metrics underneath ------------------------------------------------------------------------------
def test_tolerance_counts_elements_outside_atol_plus_rtol():
    ref = np.array([1.0, -2.0, 0.0, 4.0])
    got = metrics.tolerance(ref, ref + np.array([0.1, 0.0, 0.05, -1.0]), atol=0.05, rtol=0.01)
    # bounds 0.06, 0.07, 0.05, 0.09: elements 0 and 3 fail
    assert got == {"passed": False, "max_abs": 1.0, "max_rel": 0.25, "failing": 2, "elements": 4, "fraction": 0.5}
    assert metrics.tolerance([ref[:2], ref[2:]], [ref[:2], ref[2:]])["passed"]  # a state: tensors in order
    nan = metrics.tolerance(ref, np.array([1.0, np.nan, 0.0, 4.0]), atol=1.0)
    assert nan["failing"] == 1 and not nan["passed"]
    for bad in (-1.0, float("nan"), float("inf"), 1e9, True):
        with pytest.raises(ValueError, match="atol must be a finite number from 0"):
            metrics.tolerance(ref, ref, atol=bad)


def test_missed_names_the_failed_criterion():
    m = {"nrmse": 0.2, "pearson": 0.977, "same_hr": True, "hr_bpm": 72.0, "hr_ref_bpm": 72.0, "hr_bin_bpm": 3.0}
    assert metrics.missed(m, 1e-4, "quantised") == "r 0.977 < 0.999"
    assert metrics.missed({**m, "pearson": 0.99995}, 1e-4, "quantised") is None
    assert metrics.missed({**m, "pearson": 0.99995}, 1e-4, "rounding").startswith("NRMSE 0.2 > 4x the noise floor")
    wrong_hr = metrics.missed({**m, "pearson": 0.9995, "same_hr": False, "hr_bpm": 90.0}, 1e-4, "signal")
    assert wrong_hr == ("r 0.9995 < 0.9999; heart rate 90.0 bpm vs the reference's 72.0 bpm, more than one 3.0 bpm "
                        "bin apart")
