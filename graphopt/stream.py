"""Stream: what a user runs. step(frame, dt=None) -> output, reset(), state.

A step model takes one frame (and dt) per step and carries state; a chunk model (manifest
"frames_per_step" > 1, no dt input) takes a chunk of frames per step and returns a chunk.
"""
from __future__ import annotations

import numpy as np

from . import state_views


class FrameError(ValueError):
    """A frame the model cannot take (wrong shape, NaN/Inf values); the state is left unchanged."""


class Stream:
    """Base class: validates frames and carries state. Subclasses implement `_run`.

    `manifest` is the artifact's manifest dict (see graphopt.artifact); `initial_state` the arrays
    in manifest state order.
    """

    def __init__(self, manifest: dict, initial_state: list[np.ndarray]):
        self.manifest = manifest
        frame_spec = manifest["inputs"][0]
        self.frame_shape = tuple(frame_spec["shape"])
        self.frame_dtype = np.dtype(frame_spec["dtype"])
        self.input_names = [i["name"] for i in manifest["inputs"]]
        self.input_roles = [i.get("role", "input") for i in manifest["inputs"]]
        self.takes_dt = "dt" in self.input_roles
        self.frames_per_step = int(manifest.get("frames_per_step") or 1)
        self.fixed_dt = (manifest.get("fixed_inputs") or {}).get("dt")
        self.default_dt = self.fixed_dt or 1.0 / float(manifest.get("fps") or 30.0)
        self._initial_state = [np.array(s) for s in initial_state]
        views = [s.get("view") or [] for s in manifest.get("state", [])]
        self._views = views if any(views) else None
        self._state = [s.copy() for s in self._initial_state]

    # ---- user API ------------------------------------------------------------------------
    def step(self, frame, dt: float | None = None) -> np.ndarray:
        frame = self.check_frame(frame)
        if not self.takes_dt:
            if dt is not None:
                raise FrameError(f"this model takes no dt (it is a {self.kind} model); call step(frame) alone")
            out, self._state = self._run(frame, None, self._state)
            return out
        dt = np.asarray(self.default_dt if dt is None else dt, dtype=np.float32)
        if not np.isfinite(dt) or dt <= 0:
            raise FrameError(f"dt must be a positive number of seconds per frame, got {float(dt)}")
        if self.fixed_dt is not None and not np.isclose(dt, self.fixed_dt, rtol=1e-6, atol=0):
            raise FrameError(f"this artifact was built for dt = {self.fixed_dt:.6g} s (--fps "
                             f"{1 / self.fixed_dt:g}), got dt = {float(dt):.6g}; rebuild without --fps to vary dt")
        out, self._state = self._run(frame, dt, self._state)
        return out

    @property
    def kind(self) -> str:
        return "chunk" if self.frames_per_step > 1 else "step"

    def run(self, frames, dt: float | None = None) -> np.ndarray:
        """Step through a clip (frames along axis 0); returns the outputs concatenated.

        A chunk model's clip is cut into chunks of frames_per_step frames; its length must divide."""
        frames = np.asarray(frames)
        n = self.frames_per_step
        if n > 1:
            if len(frames) % n:
                raise FrameError(f"a clip of {len(frames)} frames does not split into chunks of {n} frames; "
                                 f"pass a multiple of {n} frames")
            frames = frames.reshape((-1,) + self.frame_shape)
        return np.concatenate([np.asarray(self.step(f, dt)).reshape(-1) for f in frames])

    def feeds(self, frame: np.ndarray, dt) -> list[np.ndarray]:
        """The model's input values in manifest order (frame and dt placed by their roles)."""
        by_role = {"frame": frame, "dt": dt}
        return [by_role[r] for r in self.input_roles]

    def reset(self) -> None:
        self._state = [s.copy() for s in self._initial_state]

    @property
    def state(self) -> list[np.ndarray]:
        """The state as the model holds it (the manifest's views applied to the stored tensors)."""
        native = self.native_state
        if not self._views:
            return native
        return [state_views.apply(s, v) for s, v in zip(native, self._views)]

    @property
    def native_state(self) -> list[np.ndarray]:
        """The state tensors as the artifact stores them (manifest "state" order and shapes)."""
        return [np.asarray(s) for s in self._state]

    # ---- helpers -----------------------------------------------------------------------
    def check_frame(self, frame) -> np.ndarray:
        frame = np.asarray(frame)
        expect = self.frame_shape
        if frame.shape != expect:
            squeezed = tuple(d for d in expect if d != 1)
            if tuple(d for d in frame.shape if d != 1) != squeezed or frame.size != int(np.prod(expect)):
                what = "frame" if self.kind == "step" else f"chunk of {self.frames_per_step} frames"
                raise FrameError(f"{what} has shape {frame.shape}, but this model takes {expect} "
                                 f"({self.frame_dtype.name} in 0..1); pass one {what} of shape "
                                 f"{squeezed} or {expect}")
            frame = frame.reshape(expect)
        if frame.dtype == np.uint8:
            raise FrameError("frame is uint8; this model takes float frames in 0..1: pass frame / 255.0")
        frame = frame.astype(self.frame_dtype, copy=False)
        if not np.isfinite(frame).all():
            bad = int((~np.isfinite(frame)).sum())
            raise FrameError(f"frame contains {bad} NaN/Inf values; the state was not updated. "
                             "Drop or repair the frame (e.g. repeat the previous one) before calling step()")
        return frame

    def _run(self, frame: np.ndarray, dt: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        raise NotImplementedError
