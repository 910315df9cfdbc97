"""Numerical equivalence of anything that steps a model against the authors' reference step.

A run feeds a clip frame by frame with state carried (a chunk model: chunk by chunk). The reference is the authors' step under
jax.jit; its output on the clip, and on the clip with every pixel moved by one ulp (the noise
floor), are cached on disk per model, weights, precision and clip.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics
from .clip import perturb_one_ulp, synthetic_clip

StepFn = Callable[[np.ndarray, np.ndarray, list], tuple[np.ndarray, list]]


MIN_FRAMES, MAX_FRAMES = 32, 9000  # a clip long enough for a heart rate, short enough to fit in memory


def check_frames(frames, frames_per_step: int = 1, fps: float = 30.0) -> int:
    """The clip length for verification, or ArtifactError saying the allowed range (the heart-rate
    metric needs one PSD bin in its band: at least fps / 3.5 Hz samples)."""
    from .errors import ArtifactError
    lo = max(MIN_FRAMES, frames_per_step, int(np.ceil(fps / metrics.HR_BAND_HZ[1])) + 1)
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not lo <= frames <= MAX_FRAMES:
        raise ArtifactError(f"--frames must be a whole number of frames from {lo} to {MAX_FRAMES}, got {frames!r}")
    return int(frames)


class VerificationError(RuntimeError):
    """The candidate could not be run over the clip (e.g. it produced NaN/Inf): verification failed."""


@dataclass(frozen=True)
class Clip:
    """A deterministic synthetic face clip (see graphopt.clip)."""
    frames: int = 600
    hr_bpm: float = 72.0
    seed: int = 0
    fps: float = 30.0

    def array(self, frame_shape: tuple[int, ...], perturbed: bool = False) -> np.ndarray:
        """The clip as model inputs: (steps, *frame_shape). A frame_shape holding several frames (a
        chunk model's) takes as many whole chunks as the clip has; the frames left over are dropped."""
        per_step = int(np.prod(frame_shape[:-3], dtype=np.int64))
        steps = self.frames // per_step
        if steps < 1:
            raise ValueError(f"a clip of {self.frames} frames holds no whole step of {per_step} frames; "
                             f"use at least {per_step} frames")
        clip = synthetic_clip(self.frames, hr_bpm=self.hr_bpm, fps=self.fps, size=frame_shape[-2], seed=self.seed)
        if perturbed:
            clip = perturb_one_ulp(clip, seed=self.seed + 1)
        return clip[:steps * per_step].reshape((steps,) + tuple(frame_shape))


def cache_dir() -> Path:
    root = os.environ.get("GRAPHOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphopt")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_steps(step: StepFn, frames: np.ndarray, dt: float, state: list) -> tuple[np.ndarray, list]:
    """Run a step function over frames with state carried; returns (outputs concatenated, final state)."""
    dt = np.float32(dt)
    outs = []
    for frame in frames:
        y, state = step(frame, dt, state)
        outs.append(np.asarray(y, dtype=np.float64).reshape(-1))
    return np.concatenate(outs), [np.asarray(s) for s in state]


class _StreamState:
    """A Stream's state, read only when iterated: run_steps reads it once, after the clip, instead of
    copying (and re-laying through the views) every state tensor on every frame."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        return iter(self._stream.state)


def stream_step(stream) -> StepFn:
    """Adapt a Stream to a StepFn (the Stream carries its own state; reset before use)."""
    stream.reset()
    state = _StreamState(stream)

    def step(frame, dt, _):
        return stream.step(frame, dt if stream.takes_dt else None), state
    return step


def _source_key(model: str, source: dict) -> dict:
    import jax
    return {"model": model, "weights_sha256": source.get("weights_sha256"),
            "precision": source.get("precision", "float32"), "jax": jax.__version__}


def _cache_path(kind: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"{kind}-{key['model']}-{digest}.npz"


def reference_run(model: str, source: dict, clip: Clip, perturbed: bool = False,
                  weights: str | None = None) -> tuple[np.ndarray, list]:
    """The authors' step on the clip (cached): (outputs[N], final state). The cache is keyed by the
    weights' sha256, and an entry is only ever written from weights whose sha256 was computed here."""
    key = {**_source_key(model, source), **asdict(clip), "perturbed": perturbed}
    path = _cache_path("reference", key)
    if path.is_file():
        with np.load(path) as data:
            return data["outputs"], [data[f"s{i}"] for i in range(int(data["n_state"]))]
    step_model = reference_model(model, source, weights)
    outputs, state = run_steps(step_model.reference(), clip.array(step_model.frame_shape, perturbed),
                               1.0 / clip.fps, list(step_model.initial_state))
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, outputs=outputs, n_state=len(state), **{f"s{i}": s for i, s in enumerate(state)})
    os.replace(tmp, path)
    return outputs, state


def reference_model(model: str, source: dict, weights: str | None = None):
    """The reference: the model package's own weights, or the weights file the user names (build's and
    verify's --weights). Never a path from a manifest: an artifact cannot choose what it is checked
    against. Its recorded weights sha256 must match the weights used."""
    from graphopt import models
    precision = source.get("precision", "float32")
    if precision not in ("float32", "mixed_float16"):
        raise models.ModelSourceError(f"the artifact's source precision {precision!r:.40} is not float32 or "
                                      "mixed_float16; rebuild the artifact")
    want = source.get("weights_sha256")
    if not isinstance(want, str):
        raise models.ModelSourceError("the artifact does not record the sha256 of the weights it was built from "
                                      "(source.weights_sha256); rebuild it with graphopt build")
    m = models.load(model, weights, precision == "mixed_float16")
    if m.source["weights_sha256"] != want:
        raise models.ModelSourceError(f"the artifact was built from other weights (sha256 {want[:12]}...) than "
                                      f"{weights or 'the ones ' + model + ' ships'} (sha256 "
                                      f"{m.source['weights_sha256'][:12]}...); pass its weights with --weights PATH")
    return m


def noise_floor(model: str, source: dict, clip: Clip, weights: str | None = None) -> dict:
    """NRMSE and max abs between the reference on the clip and on the clip moved by one ulp."""
    ref, _ = reference_run(model, source, clip, weights=weights)
    perturbed, _ = reference_run(model, source, clip, perturbed=True, weights=weights)
    return {"nrmse": float(np.sqrt(np.mean((perturbed - ref) ** 2)) / np.std(ref)),
            "max_abs": float(np.max(np.abs(perturbed - ref)))}


def check(step: StepFn, initial_state: list, model: str, source: dict, clip: Clip = Clip(),
          weights: str | None = None) -> dict:
    """Run `step` over the clip and compare with the reference: metrics, noise floor and tier reached.
    weights: the reference's weights file (default: the model package's)."""
    ref_out, ref_state = reference_run(model, source, clip, weights=weights)
    floor = noise_floor(model, source, clip, weights)
    frame_shape = tuple(reference_frame_shape(model))
    from .stream import StepError
    try:
        out, state = run_steps(step, clip.array(frame_shape), 1.0 / clip.fps, list(initial_state))
    except StepError as e:
        raise VerificationError(f"the candidate failed on the synthetic clip: {e}") from None
    same_layout = len(state) == len(ref_state) and all(np.shape(a) == np.shape(b) for a, b in zip(state, ref_state))
    result = metrics.with_floor(metrics.compare(ref_out, out, fps=clip.fps, ref_state=ref_state if same_layout else None,
                                                cand_state=state if same_layout else None), floor["nrmse"])
    if not same_layout:  # e.g. a baseline model with its own state layout
        result["state_note"] = (f"the candidate's state ({len(state)} tensors) is not laid out like the reference's "
                                f"({len(ref_state)} tensors): final state not compared")
    result["noise_floor"] = floor
    result["clip"] = asdict(clip)
    result["reference"] = f"{model} authors' step ({source.get('precision', 'float32')}, jax.jit)"
    return result


def reference_frame_shape(model: str) -> tuple[int, ...]:
    from graphopt import models
    return tuple(models.adapter(model).FRAME_SHAPE)
