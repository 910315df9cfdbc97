"""Equivalence metrics between a reference and a candidate rPPG waveform, and tiers.

`compare` measures how far a candidate's output (a compiled or optimised graph)
is from the reference's, both as raw numbers (max abs error, NRMSE, Pearson r)
and as what matters downstream (the heart rate estimated from each). The tiers
turn those numbers into a claim, strictest first:

* 'rounding'  -- NRMSE within a small factor of the noise floor, i.e. the NRMSE
  the reference itself shows when its input moves by one ulp;
* 'signal'    -- the waveform is the same signal (r >= 0.9999) with the same HR;
* 'quantised' -- close enough for a reduced-precision build (r >= 0.999), same HR.

`missed` says in words which of a tier's criteria a comparison fails. `tolerance` is the elementwise
check in the style of Polygraphy's `--atol/--rtol`: |candidate - reference| <= atol + rtol * |reference|
for every element.

All results are plain Python floats/bools/None, so they serialise to JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.signal import welch

HR_BAND_HZ = (0.7, 3.5)  # plausible heart rates, 42-210 bpm
MAX_NPERSEG = 600  # Welch segment length cap: 20 s at 30 fps, a 3 bpm bin
HR_EPS_BPM = 1e-6  # slack on the one-bin HR tolerance, for float round-off
ROUNDING_FLOOR_FACTOR = 4.0  # 'rounding': NRMSE <= this many times the noise-floor NRMSE
SIGNAL_MIN_PEARSON = 0.9999  # 'signal': minimum Pearson r (plus the same HR)
QUANTISED_MIN_PEARSON = 0.999  # 'quantised': minimum Pearson r (plus the same HR)

TIERS = ("rounding", "signal", "quantised")

StateTensors = Mapping[str, Any] | Sequence[Any]


def _nperseg(n: int) -> int:
    """Welch segment length (and FFT length) for a signal of n samples."""
    return min(n, MAX_NPERSEG)


def hr_bin_bpm(n: int, fps: float = 30.0) -> float:
    """Width in bpm of one PSD bin that `estimate_hr` uses for n samples at `fps`."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    return float(60.0 * fps / _nperseg(n))


def estimate_hr(
    signal: np.ndarray,
    fps: float = 30.0,
    band: tuple[float, float] = HR_BAND_HZ,
) -> float:
    """Heart rate in bpm: the peak of the Welch PSD of `signal` within `band` (Hz).

    The signal is flattened and linearly detrended per segment; the segment and
    FFT length are min(len(signal), 600), so the resolution is `hr_bin_bpm`.
    """
    x = np.asarray(signal, dtype=np.float64).ravel()
    nperseg = _nperseg(x.size)
    freqs, power = welch(x, fs=fps, nperseg=nperseg, nfft=nperseg, detrend="linear")
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    if not in_band.any():
        raise ValueError(
            f"no PSD bin in band {band} Hz for {x.size} samples at {fps} fps "
            f"(bin width {hr_bin_bpm(x.size, fps) / 60.0:.3g} Hz)"
        )
    return float(60.0 * freqs[in_band][np.argmax(power[in_band])])


def _check_finite(x: np.ndarray, name: str) -> None:
    """Raise ValueError naming how many NaN/Inf `x` holds and the first flat index."""
    bad = ~np.isfinite(x)
    if bad.any():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        first = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(
            f"{name} has non-finite values: {n_nan} NaN, {n_inf} Inf, first at index {first}"
        )


def _as_waveform(x: np.ndarray, name: str) -> np.ndarray:
    """Flatten to a finite, non-empty float64 1-D array."""
    w = np.asarray(x, dtype=np.float64).ravel()
    if w.size == 0:
        raise ValueError(f"{name} is empty")
    _check_finite(w, name)
    return w


def _pair_states(
    ref_state: StateTensors, cand_state: StateTensors
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Match reference and candidate state tensors by key (mappings) or position."""
    if isinstance(ref_state, Mapping) and isinstance(cand_state, Mapping):
        if set(ref_state) != set(cand_state):
            raise ValueError(
                f"state keys differ: reference {sorted(ref_state)}, candidate {sorted(cand_state)}"
            )
        names = sorted(ref_state)
        pairs = [(ref_state[k], cand_state[k]) for k in names]
    elif not isinstance(ref_state, Mapping) and not isinstance(cand_state, Mapping):
        if len(ref_state) != len(cand_state):
            raise ValueError(
                f"state count differs: reference {len(ref_state)}, candidate {len(cand_state)}"
            )
        names = [str(i) for i in range(len(ref_state))]
        pairs = list(zip(ref_state, cand_state))
    else:
        raise ValueError("ref_state and cand_state must both be mappings or both be sequences")
    return [
        (name, np.asarray(r, dtype=np.float64), np.asarray(c, dtype=np.float64))
        for name, (r, c) in zip(names, pairs)
    ]


def state_max_rel(ref_state: StateTensors, cand_state: StateTensors) -> float:
    """Max over state tensors of max|c - r| / max(max|r|, 1e-12); 0.0 if there are none."""
    worst = 0.0
    for name, r, c in _pair_states(ref_state, cand_state):
        if r.shape != c.shape:
            raise ValueError(f"state {name}: shape {c.shape} != reference shape {r.shape}")
        _check_finite(c, f"candidate state {name}")
        if r.size:
            scale = max(float(np.max(np.abs(r))), 1e-12)
            worst = max(worst, float(np.max(np.abs(c - r))) / scale)
    return worst


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    fps: float = 30.0,
    ref_state: StateTensors | None = None,
    cand_state: StateTensors | None = None,
    hr: bool = True,
) -> dict[str, float | bool | None]:
    """Compare a candidate waveform (and optionally final states) with the reference.

    Returns max_abs, nrmse (RMS error over the reference's std), pearson (0.0 if
    the candidate is constant), hr_ref_bpm, hr_bpm, hr_bin_bpm, same_hr (HRs
    within one bin) and state_max_rel (None unless both states are given).
    hr=False (an output that is not a pulse waveform): the heart-rate fields are None.
    """
    ref = _as_waveform(reference, "reference")
    cand = np.asarray(candidate, dtype=np.float64).ravel()
    if cand.size != ref.size:
        raise ValueError(f"length mismatch: candidate has {cand.size} samples, reference {ref.size}")
    _check_finite(cand, "candidate")
    ref_std = float(np.std(ref))
    if ref_std == 0.0 and hr:
        raise ValueError("reference is constant: nrmse and pearson are undefined")
    if (ref_state is None) != (cand_state is None):
        raise ValueError("give both ref_state and cand_state, or neither")

    err = cand - ref
    if ref_std == 0.0:  # a constant output (not a pulse): errors relative to its magnitude; r is 1 iff equal
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        return {"max_abs": float(np.max(np.abs(err))), "nrmse": float(np.sqrt(np.mean(err**2)) / scale),
                "pearson": 1.0 if float(np.max(np.abs(err))) <= 1e-6 * scale else 0.0, "hr_ref_bpm": None,
                "hr_bpm": None, "hr_bin_bpm": None, "same_hr": None,
                "state_max_rel": None if ref_state is None else state_max_rel(ref_state, cand_state)}
    pearson = float(np.corrcoef(ref, cand)[0, 1]) if np.std(cand) > 0.0 else 0.0
    if hr:
        hr_ref, hr_cand, bin_bpm = estimate_hr(ref, fps), estimate_hr(cand, fps), hr_bin_bpm(ref.size, fps)
        same_hr = bool(abs(hr_cand - hr_ref) <= bin_bpm + HR_EPS_BPM)
    else:
        hr_ref = hr_cand = bin_bpm = same_hr = None
    return {
        "max_abs": float(np.max(np.abs(err))),
        "nrmse": float(np.sqrt(np.mean(err**2)) / ref_std),
        "pearson": pearson,
        "hr_ref_bpm": hr_ref,
        "hr_bpm": hr_cand,
        "hr_bin_bpm": bin_bpm,
        "same_hr": same_hr,
        "state_max_rel": None if ref_state is None else state_max_rel(ref_state, cand_state),
    }


def _check_floor(noise_floor_nrmse: float) -> None:
    """Reject a negative or non-finite noise floor."""
    if not np.isfinite(noise_floor_nrmse) or noise_floor_nrmse < 0.0:
        raise ValueError(f"noise_floor_nrmse must be finite and >= 0, got {noise_floor_nrmse}")


def tier_reached(metrics: Mapping[str, Any], noise_floor_nrmse: float) -> str | None:
    """The strictest tier whose criteria `metrics` (from `compare`) meet, or None."""
    _check_floor(noise_floor_nrmse)
    if metrics["nrmse"] <= ROUNDING_FLOOR_FACTOR * noise_floor_nrmse:
        return "rounding"
    same_hr = metrics["same_hr"] is not False  # None: not a pulse waveform, no heart-rate criterion
    if same_hr and metrics["pearson"] >= SIGNAL_MIN_PEARSON:
        return "signal"
    if same_hr and metrics["pearson"] >= QUANTISED_MIN_PEARSON:
        return "quantised"
    return None


def meets(tier_claimed: str, tier_reached: str | None) -> bool:
    """Whether the reached tier satisfies the claim (a stricter tier satisfies a looser one)."""
    for tier in (tier_claimed, tier_reached):
        if tier is not None and tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    if tier_reached is None:
        return False
    return TIERS.index(tier_reached) <= TIERS.index(tier_claimed)


def loosest(tiers: Sequence[str | None]) -> str | None:
    """The loosest of several outputs' tiers (None if any output reaches none)."""
    if any(t is None for t in tiers):
        return None
    return max(tiers, key=TIERS.index) if tiers else None


def with_floor(metrics: Mapping[str, Any], noise_floor_nrmse: float) -> dict[str, Any]:
    """Copy of `metrics` with 'nrmse_over_floor' and 'tier' added.

    nrmse_over_floor is nrmse / noise_floor_nrmse; with a zero floor it is 0.0
    for a zero nrmse and None (undefined, not JSON's Infinity) otherwise.
    """
    _check_floor(noise_floor_nrmse)
    nrmse = float(metrics["nrmse"])
    if noise_floor_nrmse > 0.0:
        ratio: float | None = nrmse / noise_floor_nrmse
    else:
        ratio = 0.0 if nrmse == 0.0 else None
    return {
        **metrics,
        "nrmse_over_floor": ratio,
        "tier": tier_reached(metrics, noise_floor_nrmse),
    }


def missed(metrics: Mapping[str, Any], noise_floor_nrmse: float, tier: str) -> str | None:
    """Which of `tier`'s criteria `metrics` (from `compare`) fail, in words (e.g. "r 0.977 < 0.999"), or
    None if the metrics meet the tier."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
    if meets(tier, tier_reached(metrics, noise_floor_nrmse)):
        return None
    if tier == "rounding":
        bound = ROUNDING_FLOOR_FACTOR * noise_floor_nrmse
        return (f"NRMSE {metrics['nrmse']:.3g} > {ROUNDING_FLOOR_FACTOR:g}x the noise floor {noise_floor_nrmse:.3g}"
                f" (= {bound:.3g})")
    reasons = []
    least = SIGNAL_MIN_PEARSON if tier == "signal" else QUANTISED_MIN_PEARSON
    if metrics["pearson"] < least:
        reasons.append(f"r {metrics['pearson']:.6g} < {least:g}")
    if metrics["same_hr"] is False:
        reasons.append(f"heart rate {metrics['hr_bpm']:.1f} bpm vs the reference's {metrics['hr_ref_bpm']:.1f} bpm, "
                       f"more than one {metrics['hr_bin_bpm']:.1f} bpm bin apart")
    return "; ".join(reasons)


MAX_TOLERANCE = 1e6  # atol and rtol above this accept anything a float32 model computes


def _check_tolerance(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) <= MAX_TOLERANCE:  # also refuses NaN
        raise ValueError(f"{name} must be a finite number from 0 to {MAX_TOLERANCE:g}, got {value!r:.40}")
    return float(value)


def tolerance(reference: Any, candidate: Any, atol: float = 0.0, rtol: float = 0.0) -> dict[str, Any]:
    """Elementwise |candidate - reference| <= atol + rtol * |reference| (Polygraphy's --atol/--rtol check).

    Returns passed, max_abs (max |c - r|), max_rel (max |c - r| / |r| over the elements where r != 0;
    None if there are none), failing (elements outside the tolerance; NaN/Inf in the candidate fails),
    elements and fraction (failing / elements). Sequences of arrays (a state) are checked as one set of
    elements, flattened in order."""
    atol, rtol = _check_tolerance("atol", atol), _check_tolerance("rtol", rtol)
    flat = lambda x: (np.concatenate([np.asarray(a, np.float64).ravel() for a in x]) if len(x) else np.zeros(0)) \
        if isinstance(x, (list, tuple)) else np.asarray(x, np.float64).ravel()
    ref, cand = flat(reference), flat(candidate)
    if ref.size != cand.size:
        raise ValueError(f"length mismatch: candidate has {cand.size} elements, reference {ref.size}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(cand - ref)
        ok = diff <= atol + rtol * np.abs(ref)  # NaN: False
        nonzero = ref != 0
        rel = diff[nonzero] / np.abs(ref[nonzero])
    failing = int(ref.size - np.count_nonzero(ok))
    finite = lambda v: float(v) if np.isfinite(v) else None
    return {"passed": failing == 0, "max_abs": finite(np.max(diff)) if diff.size else 0.0,
            "max_rel": finite(np.max(rel)) if rel.size else None, "failing": failing, "elements": int(ref.size),
            "fraction": failing / ref.size if ref.size else 0.0}
