"""Tests for graphopt.clip (synthetic inputs) and graphopt.metrics (equivalence tiers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.signal import detrend

from graphopt.clip import perturb_one_ulp, random_clip, synthetic_clip
from graphopt.metrics import (
    QUANTISED_MIN_PEARSON,
    ROUNDING_FLOOR_FACTOR,
    SIGNAL_MIN_PEARSON,
    TIERS,
    compare,
    estimate_hr,
    hr_bin_bpm,
    meets,
    tier_reached,
    with_floor,
)

FPS = 30.0


def sine(hr_bpm: float, n: int = 600, fps: float = FPS, phase: float = 0.0) -> np.ndarray:
    """A pure sinusoid at hr_bpm."""
    t = np.arange(n) / fps
    return np.sin(2.0 * np.pi * hr_bpm / 60.0 * t + phase)


def green_trace(frames: np.ndarray) -> np.ndarray:
    """Spatial mean of the green channel, normalised and linearly detrended."""
    g = frames[..., 1].mean(axis=(1, 2), dtype=np.float64)
    return detrend(g / g.mean() - 1.0)


# --- clip -------------------------------------------------------------------


def test_synthetic_clip_shape_dtype_range() -> None:
    clip = synthetic_clip(n_frames=50, size=24)
    assert clip.shape == (50, 24, 24, 3)
    assert clip.dtype == np.float32
    assert clip.min() >= 0.0 and clip.max() <= 1.0


def test_synthetic_clip_face_is_brighter_and_skin_toned() -> None:
    clip = synthetic_clip(n_frames=10, size=36)
    centre = clip[:, 18, 18].mean(axis=0)
    corner = clip[:, 0, 0].mean(axis=0)
    assert centre[0] > centre[1] > centre[2]  # skin: red > green > blue
    assert np.all(centre > corner + 0.2)


def test_synthetic_clip_is_deterministic() -> None:
    a = synthetic_clip(n_frames=60, seed=3)
    b = synthetic_clip(n_frames=60, seed=3)
    assert a.tobytes() == b.tobytes()


def test_synthetic_clip_seed_changes_noise() -> None:
    a = synthetic_clip(n_frames=60, seed=0)
    b = synthetic_clip(n_frames=60, seed=1)
    diff = (a - b).astype(np.float64)
    assert np.mean(diff != 0.0) > 0.9  # nearly every pixel differs
    assert 0.005 < diff.std() < 0.05  # ... by about the sensor noise, not the content


@pytest.mark.parametrize("bad", [dict(n_frames=0), dict(size=0), dict(fps=0.0), dict(hr_bpm=-1.0)])
def test_synthetic_clip_rejects_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        synthetic_clip(**bad)


def test_random_clip_shape_range_determinism() -> None:
    a = random_clip(5, size=8, seed=2)
    assert a.shape == (5, 8, 8, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert a.tobytes() == random_clip(5, size=8, seed=2).tobytes()
    assert a.tobytes() != random_clip(5, size=8, seed=3).tobytes()


def test_perturb_one_ulp_moves_interior_elements_exactly_one_ulp() -> None:
    frames = random_clip(4, size=16, seed=5)
    out = perturb_one_ulp(frames, seed=1)
    assert out.dtype == np.float32 and out.shape == frames.shape
    up = np.nextafter(frames, np.float32(np.inf))
    down = np.nextafter(frames, np.float32(-np.inf))
    interior = (frames > 0.0) & (frames < 1.0)
    assert interior.all()
    assert np.all((out == up) | (out == down))
    assert np.all(out != frames)
    went_up = np.mean(out == up)
    assert 0.45 < went_up < 0.55  # random sign per element
    assert out.tobytes() == perturb_one_ulp(frames, seed=1).tobytes()
    assert out.tobytes() != perturb_one_ulp(frames, seed=2).tobytes()


def test_perturb_one_ulp_moves_boundary_elements_inward() -> None:
    frames = np.array([0.0, 1.0] * 50, dtype=np.float32)
    out = perturb_one_ulp(frames, seed=0)
    assert np.all(out[0::2] == np.nextafter(np.float32(0.0), np.float32(1.0)))
    assert np.all(out[1::2] == np.nextafter(np.float32(1.0), np.float32(0.0)))
    assert out.min() >= 0.0 and out.max() <= 1.0


# --- estimate_hr ------------------------------------------------------------


def test_hr_bin_bpm() -> None:
    assert hr_bin_bpm(600, 30.0) == pytest.approx(3.0)
    assert hr_bin_bpm(1200, 30.0) == pytest.approx(3.0)  # segment capped at 600
    assert hr_bin_bpm(300, 30.0) == pytest.approx(6.0)


@pytest.mark.parametrize("hr", [54.0, 72.0, 75.0, 90.0, 120.0])
def test_estimate_hr_pure_sine(hr: float) -> None:
    assert abs(estimate_hr(sine(hr, phase=0.4)) - hr) <= hr_bin_bpm(600, FPS)


def test_estimate_hr_ignores_out_of_band_power() -> None:
    x = 5.0 * sine(20.0) + sine(72.0) + 0.5 * sine(300.0)
    assert abs(estimate_hr(x) - 72.0) <= hr_bin_bpm(600, FPS)


def test_estimate_hr_rejects_band_without_bins() -> None:
    with pytest.raises(ValueError, match="no PSD bin"):
        estimate_hr(sine(72.0, n=10), band=(1.0, 1.1))


@pytest.mark.parametrize("hr", [54.0, 72.0, 90.0, 120.0])
def test_estimate_hr_recovers_synthetic_clip_rate(hr: float) -> None:
    trace = green_trace(synthetic_clip(n_frames=600, hr_bpm=hr, seed=int(hr)))
    assert abs(estimate_hr(trace) - hr) <= hr_bin_bpm(600, FPS)


def test_pulse_is_strongest_in_green() -> None:
    frames = synthetic_clip(n_frames=600, hr_bpm=72.0)
    t = np.arange(600) / FPS
    ref = np.exp(-2j * np.pi * 1.2 * t)
    power = []
    for ch in range(3):
        x = frames[..., ch].mean(axis=(1, 2), dtype=np.float64)
        power.append(abs(np.dot(detrend(x / x.mean() - 1.0), ref)))
    assert power[1] > 1.5 * max(power[0], power[2])


# --- compare ----------------------------------------------------------------


def test_compare_identical_signals() -> None:
    x = sine(72.0)
    m = compare(x, x.copy())
    assert m["max_abs"] == 0.0 and m["nrmse"] == 0.0
    assert m["pearson"] == pytest.approx(1.0)
    assert m["hr_ref_bpm"] == m["hr_bpm"] == pytest.approx(72.0)
    assert m["hr_bin_bpm"] == pytest.approx(3.0)
    assert m["same_hr"] is True
    assert m["state_max_rel"] is None


def test_compare_known_numbers() -> None:
    ref = np.array([1.0, -1.0] * 300)  # std 1
    cand = ref + np.array([0.1, -0.1] * 300)  # a 10% scale error
    m = compare(ref, cand)
    assert m["max_abs"] == pytest.approx(0.1)
    assert m["nrmse"] == pytest.approx(0.1)
    assert m["pearson"] == pytest.approx(1.0)  # scale does not affect r

    cand = ref + np.array([0.5, 0.5, 0.0, 0.0] * 150)  # offset on half the samples
    m = compare(ref, cand)
    assert m["max_abs"] == pytest.approx(0.5)
    assert m["nrmse"] == pytest.approx(np.sqrt(0.125))
    # the offset is uncorrelated with ref and has variance 1/16, so r = 1 / std(cand)
    assert m["pearson"] == pytest.approx(1.0 / np.sqrt(1.0 + 1.0 / 16.0))


def test_compare_negated_and_shifted_hr() -> None:
    x = sine(72.0)
    m = compare(x, -x)
    assert m["pearson"] == pytest.approx(-1.0)
    assert m["nrmse"] == pytest.approx(2.0)
    m = compare(x, sine(90.0))
    assert m["hr_bpm"] == pytest.approx(90.0) and m["same_hr"] is False
    m = compare(x, sine(75.0))  # exactly one bin away still counts as the same HR
    assert m["same_hr"] is True


def test_compare_constant_candidate_has_zero_pearson() -> None:
    m = compare(sine(72.0), np.zeros(600))
    assert m["pearson"] == 0.0
    assert m["nrmse"] == pytest.approx(1.0)


def test_compare_flattens_inputs() -> None:
    x = sine(72.0)
    m = compare(x.reshape(1, -1, 1), x.reshape(-1, 1))
    assert m["max_abs"] == 0.0


def test_compare_is_json_serialisable() -> None:
    x = sine(72.0)
    m = compare(x.astype(np.float32), x + 1e-3, ref_state=[np.ones(3)], cand_state=[np.ones(3)])
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert all(type(v) in (float, bool) for v in m.values())


def test_compare_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"length mismatch: candidate has 599 samples, reference 600"):
        compare(sine(72.0), sine(72.0, n=599))


def test_compare_rejects_non_finite_candidate() -> None:
    cand = sine(72.0)
    cand[[7, 9, 20]] = np.nan
    cand[11] = np.inf
    with pytest.raises(ValueError, match=r"candidate .* 3 NaN, 1 Inf, first at index 7"):
        compare(sine(72.0), cand)


def test_compare_rejects_constant_reference() -> None:
    with pytest.raises(ValueError, match="constant"):
        compare(np.ones(600), sine(72.0))


def test_compare_state_max_rel() -> None:
    x = sine(72.0)
    ref_state = {"h": np.array([2.0, -4.0]), "c": np.array([[0.5]])}
    cand_state = {"h": np.array([2.0, -4.2]), "c": np.array([[0.6]])}
    m = compare(x, x, ref_state=ref_state, cand_state=cand_state)
    assert m["state_max_rel"] == pytest.approx(0.2)  # c: 0.1 / 0.5 beats h: 0.2 / 4
    m = compare(x, x, ref_state=[np.zeros(2)], cand_state=[np.zeros(2)])
    assert m["state_max_rel"] == 0.0


@pytest.mark.parametrize(
    ("ref_state", "cand_state", "message"),
    [
        ({"h": np.zeros(2)}, None, "both"),
        ({"h": np.zeros(2)}, {"c": np.zeros(2)}, "keys differ"),
        ([np.zeros(2)], [np.zeros(2), np.zeros(2)], "count differs"),
        ([np.zeros(2)], [np.zeros(3)], "shape"),
        ([np.zeros(2)], {"h": np.zeros(2)}, "both be mappings"),
        ([np.zeros(2)], [np.array([0.0, np.nan])], "candidate state 0 .* 1 NaN"),
    ],
)
def test_compare_rejects_bad_states(ref_state, cand_state, message: str) -> None:
    x = sine(72.0)
    with pytest.raises(ValueError, match=message):
        compare(x, x, ref_state=ref_state, cand_state=cand_state)


# --- tiers ------------------------------------------------------------------


def metrics(nrmse: float, pearson: float, same_hr: bool = True) -> dict:
    """Minimal metrics dict for the tier functions."""
    return {"nrmse": nrmse, "pearson": pearson, "same_hr": same_hr}


FLOOR = 1e-6


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (metrics(0.0, 1.0), "rounding"),
        (metrics(ROUNDING_FLOOR_FACTOR * FLOOR, 1.0), "rounding"),  # boundary is inclusive
        (metrics(ROUNDING_FLOOR_FACTOR * FLOOR * 1.01, 1.0), "signal"),
        (metrics(1e-3, SIGNAL_MIN_PEARSON), "signal"),  # boundary is inclusive
        (metrics(1e-3, np.nextafter(SIGNAL_MIN_PEARSON, 0.0)), "quantised"),
        (metrics(1e-2, QUANTISED_MIN_PEARSON), "quantised"),
        (metrics(1e-1, np.nextafter(QUANTISED_MIN_PEARSON, 0.0)), None),
        (metrics(1e-3, 1.0, same_hr=False), None),  # a wrong HR fails both signal tiers
        (metrics(FLOOR, 0.5, same_hr=False), "rounding"),  # rounding is judged on NRMSE alone
    ],
)
def test_tier_reached(m: dict, expected: str | None) -> None:
    assert tier_reached(m, FLOOR) == expected


def test_tier_reached_zero_floor_needs_exact_match() -> None:
    assert tier_reached(metrics(0.0, 1.0), 0.0) == "rounding"
    assert tier_reached(metrics(1e-12, 1.0), 0.0) == "signal"


@pytest.mark.parametrize("floor", [-1e-6, float("nan"), float("inf")])
def test_tier_reached_rejects_bad_floor(floor: float) -> None:
    with pytest.raises(ValueError, match="noise_floor_nrmse"):
        tier_reached(metrics(0.0, 1.0), floor)


def test_meets_orders_tiers_strictest_first() -> None:
    assert TIERS == ("rounding", "signal", "quantised")
    for i, claimed in enumerate(TIERS):
        for j, reached in enumerate(TIERS):
            assert meets(claimed, reached) is (j <= i)
        assert meets(claimed, None) is False


def test_meets_rejects_unknown_tier() -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        meets("exact", "rounding")
    with pytest.raises(ValueError, match="unknown tier"):
        meets("signal", "bitwise")


def test_with_floor_adds_ratio_and_tier_without_mutating() -> None:
    x = sine(72.0)
    m = compare(x, x + 1e-4 * sine(31.0))
    out = with_floor(m, m["nrmse"] / 2.0)
    assert "tier" not in m and "nrmse_over_floor" not in m
    assert out["nrmse_over_floor"] == pytest.approx(2.0)
    assert out["tier"] == "rounding"
    assert {k: out[k] for k in m} == m
    json.dumps(out, allow_nan=False)
    assert with_floor(m, m["nrmse"] / 10.0)["tier"] == "signal"


def test_with_floor_zero_floor() -> None:
    assert with_floor(metrics(0.0, 1.0), 0.0)["nrmse_over_floor"] == 0.0
    out = with_floor(metrics(1e-9, 1.0), 0.0)
    assert out["nrmse_over_floor"] is None and out["tier"] == "signal"


def test_one_ulp_noise_floor_end_to_end() -> None:
    """A toy 'model' (green mean): another one-ulp draw is 'rounding', 1% noise is 'signal'."""
    frames = synthetic_clip(n_frames=600, hr_bpm=72.0)

    def model(x: np.ndarray) -> np.ndarray:
        return x[..., 1].mean(axis=(1, 2), dtype=np.float64)

    ref = model(frames)
    floor = compare(ref, model(perturb_one_ulp(frames, seed=0)))["nrmse"]
    assert 0.0 < floor < 1e-5
    assert tier_reached(compare(ref, model(perturb_one_ulp(frames, seed=1))), floor) == "rounding"
    noise = np.random.default_rng(0).normal(0.0, 0.01 * ref.std(), ref.size)
    assert tier_reached(compare(ref, ref + noise), floor) == "signal"


def test_benchmark_rounds_give_a_slow_step_fewer_steps_not_fewer_rows() -> None:
    """measure(round_budget_s=...): a step slower than the budget gets one timed step per round, a fast one
    the full round; every row keeps its name and order."""
    import time
    from graphopt.benchmark import measure
    calls = {"slow": 0, "fast": 0}

    def slow(frame):
        calls["slow"] += 1
        time.sleep(0.2)

    def fast(frame):
        calls["fast"] += 1
    rows = measure({"slow": slow, "fast": fast}, np.zeros((4, 1)), rounds=2, steps_per_round=5, warmup=1,
                   round_budget_s=0.1)
    assert [r.name for r in rows] == ["slow", "fast"]
    assert calls == {"slow": 1 + 2 * 1, "fast": 1 + 2 * 5}
    assert len(rows[0].latencies_s) == 2 and len(rows[1].latencies_s) == 10
