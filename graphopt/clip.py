"""Deterministic synthetic input clips for equivalence and throughput checks.

`synthetic_clip` renders a small face-like video with a known heart rate, so an
rPPG model's output has a ground truth to recover. `random_clip` and
`perturb_one_ulp` give fuzz inputs and the one-ulp input perturbation used to
measure a model's numerical noise floor. Every function is driven by
`np.random.default_rng(seed)`: the same arguments give byte-identical arrays.
"""

from __future__ import annotations

import numpy as np

SKIN_RGB = np.array([0.80, 0.60, 0.48])  # mean skin reflectance, RGB
BACKGROUND_RGB = np.array([0.22, 0.20, 0.19])  # darker, flat background
PULSE_AMPLITUDE_RGB = np.array([0.003, 0.008, 0.002])  # relative pulse depth; green carries most
SECOND_HARMONIC = 0.35  # second-harmonic amplitude relative to the fundamental
BEAT_JITTER_RAD = 0.08  # std of the per-beat phase jitter, radians
NOISE_SIGMA = 0.008  # per-pixel Gaussian sensor noise, intensity units
DRIFT_RAMP_PER_S = 0.05 / 20.0  # linear illumination ramp: 5% over 20 s
DRIFT_SINE_AMPLITUDE = 0.02  # relative amplitude of the slow illumination sinusoid
DRIFT_SINE_HZ = (0.05, 0.25)  # range the slow sinusoid's frequency is drawn from


def _face_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (static RGB image, skin weight map) for a centred elliptical face.

    The face has a soft edge and radial shading (brighter centre); the skin
    weight is 1 inside the face and falls smoothly to 0 on the background.
    """
    coords = (np.arange(size) + 0.5) / size - 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    radius = np.sqrt((x / 0.32) ** 2 + ((y + 0.03) / 0.42) ** 2)
    skin = np.clip((1.1 - radius) / 0.2, 0.0, 1.0)
    skin = skin * skin * (3.0 - 2.0 * skin)  # smoothstep edge
    shading = 1.0 - 0.3 * np.minimum(radius, 1.0) ** 2
    face = SKIN_RGB * shading[..., None]
    image = skin[..., None] * face + (1.0 - skin[..., None]) * BACKGROUND_RGB
    return image, skin


def _pulse(t: np.ndarray, hr_bpm: float, rng: np.random.Generator) -> np.ndarray:
    """Blood-volume pulse at `hr_bpm`, roughly unit amplitude, with beat jitter.

    A phase offset is drawn per beat and interpolated linearly between beats,
    so the instantaneous rate wanders slightly while the mean rate is exact.
    """
    beat_hz = hr_bpm / 60.0
    n_beats = int(np.ceil(t[-1] * beat_hz)) + 2
    jitter = rng.normal(0.0, BEAT_JITTER_RAD, n_beats)
    phase = 2.0 * np.pi * beat_hz * t + np.interp(t * beat_hz, np.arange(n_beats), jitter)
    harmonic_phase = rng.uniform(0.0, 2.0 * np.pi)
    wave = np.sin(phase) + SECOND_HARMONIC * np.sin(2.0 * phase + harmonic_phase)
    return wave / (1.0 + SECOND_HARMONIC)


def _illumination(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slow multiplicative illumination gain: a linear ramp plus a sinusoid below 0.3 Hz."""
    freq = rng.uniform(*DRIFT_SINE_HZ)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    return 1.0 + DRIFT_RAMP_PER_S * t + DRIFT_SINE_AMPLITUDE * np.sin(2.0 * np.pi * freq * t + phase)


def synthetic_clip(
    n_frames: int = 600,
    hr_bpm: float = 72.0,
    fps: float = 30.0,
    size: int = 36,
    seed: int = 0,
) -> np.ndarray:
    """Render a synthetic face clip with a heart pulse at `hr_bpm`.

    Returns float32 frames of shape (n_frames, size, size, 3) in [0, 1]: a
    shaded skin-tone ellipse on a darker background, a pulse modulating mostly
    the green channel of the skin, slow illumination drift and per-pixel
    Gaussian sensor noise.
    """
    if n_frames < 1 or size < 1:
        raise ValueError(f"n_frames and size must be >= 1, got {n_frames} and {size}")
    if fps <= 0 or hr_bpm <= 0:
        raise ValueError(f"fps and hr_bpm must be > 0, got {fps} and {hr_bpm}")
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    image, skin = _face_image(size)
    pulse = _pulse(t, hr_bpm, rng)
    gain = _illumination(t, rng)
    modulation = 1.0 + pulse[:, None, None, None] * skin[None, :, :, None] * PULSE_AMPLITUDE_RGB
    frames = gain[:, None, None, None] * image[None] * modulation
    frames += rng.normal(0.0, NOISE_SIGMA, frames.shape)
    return np.clip(frames, 0.0, 1.0).astype(np.float32)


def random_clip(n_frames: int, size: int = 36, seed: int = 0) -> np.ndarray:
    """Uniform random float32 frames in [0, 1) of shape (n_frames, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return rng.random((n_frames, size, size, 3), dtype=np.float32)


def perturb_one_ulp(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """Move every element of `frames` by exactly one float32 ulp, in a random direction.

    The direction (up or down) is drawn per element from `seed`; elements at 0
    or 1 always move inward, so the result stays in [0, 1]. Returns float32.
    """
    values = np.asarray(frames, dtype=np.float32)
    rng = np.random.default_rng(seed)
    up = rng.integers(0, 2, values.shape, dtype=np.int8).astype(bool)
    up = (up | (values <= 0.0)) & ~(values >= 1.0)
    target = np.where(up, np.float32(np.inf), np.float32(-np.inf))
    return np.clip(np.nextafter(values, target), np.float32(0.0), np.float32(1.0))
