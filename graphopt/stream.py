"""Stream: what a user runs. step(frame, dt=None) -> output, reset(), state.

A step model takes one frame (and dt) per step and carries state; a chunk model (manifest
"frames_per_step" > 1, no dt input) takes a chunk of frames per step and returns a chunk.

What a Stream does with bad input (README, "Security and failure behaviour"):
- a frame of the wrong shape or of a non-float dtype, a frame with NaN/Inf, a dt that is not one
  positive finite number: FrameError, the state is unchanged;
- a dt above `max_dt` (a camera stall; default MAX_DT_FRAMES frame intervals at the artifact's fps):
  the step runs with dt = max_dt, and `stream.stats["dt_clamped"]` counts it;
- a step whose output or new state holds NaN/Inf (e.g. a finite but absurd frame): StepError, and
  the state is kept as it was before the step (the last good state), so the next good frame runs
  normally. No non-finite output is ever returned.
  `check_finite=False` (graphopt.load option, or the attribute) turns this check off, for models whose
  outputs may legitimately be +-Inf (e.g. a max pool over padding alone);
- one Stream may be shared between threads: a lock serialises step/reset/state, so concurrent calls
  run one after another (in an unspecified order) and never interleave inside a step.
"""
from __future__ import annotations

import threading

import numpy as np

from . import state_views

MAX_DT_FRAMES = 4  # a longer gap between frames is stepped as this many frame intervals


class FrameError(ValueError):
    """A frame the model cannot take (wrong shape or dtype, NaN/Inf values); the state is left unchanged."""


class StepError(FrameError):
    """The step produced NaN/Inf; the Stream kept the state it had before the step."""


class Stream:
    """Base class: validates frames, carries state, guards every step. Subclasses implement `_run`.

    `manifest` is the artifact's manifest dict (see graphopt.artifact); `initial_state` the arrays
    in manifest state order (kept, never written: Streams of one artifact may share them).
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
        self.max_dt = float(manifest.get("max_dt") or MAX_DT_FRAMES * self.default_dt)
        self._initial_state = list(initial_state)
        views = [s.get("view") or [] for s in manifest.get("state", [])]
        self._views = views if any(views) else None
        self._state = None  # each subclass's __init__ ends with self._reset()
        self._lock = threading.RLock()
        self.check_finite = True  # refuse steps that produce NaN/Inf (see the module docstring)
        self.stats = {"steps": 0, "dt_clamped": 0, "refused": 0}

    # ---- user API ------------------------------------------------------------------------
    def step(self, frame, dt: float | None = None) -> np.ndarray:
        frame = self.check_frame(frame)
        dt, clamped = self._check_dt(dt)
        with self._lock:
            self.stats["dt_clamped"] += clamped
            before = self._state
            out, new = self._run(frame, dt, before)
            if self.check_finite and not (np.isfinite(out).all() and self._state_finite(new)):
                what = self._restore(before)
                self.stats["refused"] += 1
                raise StepError("the step produced NaN/Inf (the frame is far outside the model's input range, "
                                f"or dt is larger than the model can take); {what}: drop the frame and go on "
                                "with the next one")
            self._state = new
            self.stats["steps"] += 1
            return out

    @property
    def kind(self) -> str:
        return "chunk" if self.frames_per_step > 1 else "step"

    def run(self, frames, dt: float | None = None) -> np.ndarray:
        """Step through a clip (frames along axis 0); returns the outputs concatenated.

        A chunk model's clip is cut into chunks of frames_per_step frames; its length must divide."""
        if not hasattr(frames, "__len__") and hasattr(frames, "__iter__"):  # a generator of frames
            frames = list(frames)
        try:
            frames = np.asarray(frames)
        except (TypeError, ValueError, RuntimeError) as e:
            raise FrameError(f"run() takes a clip as one array with frames along axis 0 ({e})") from None
        if frames.ndim == 0:
            raise FrameError(f"run() takes a clip with frames along axis 0, got {type(frames).__name__} of no axes")
        n = self.frames_per_step
        if n > 1:
            if len(frames) % n:
                raise FrameError(f"a clip of {len(frames)} frames does not split into chunks of {n} frames; "
                                 f"pass a multiple of {n} frames")
            frames = frames.reshape((-1,) + self.frame_shape)
        outs = [np.asarray(self.step(f, dt)).reshape(-1) for f in frames]
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)

    def feeds(self, frame: np.ndarray, dt) -> list[np.ndarray]:
        """The model's input values in manifest order (frame and dt placed by their roles)."""
        by_role = {"frame": frame, "dt": dt}
        return [by_role[r] for r in self.input_roles]

    def reset(self) -> None:
        with self._lock:
            self._reset()

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
        with self._lock:
            return [np.array(s) for s in self._state]

    def self_check(self, where: str) -> None:
        """One step from the initial state on a mid-grey frame, then reset: the model file must take the
        inputs and give the output and state its manifest describes (names, shapes, dtypes), so a manifest
        that does not fit its model is an error at load, not at the first frame. Raises ArtifactError."""
        from .errors import ArtifactError
        frame = np.full(self.frame_shape, 0.5, self.frame_dtype)
        spec = self.manifest["outputs"][0]
        with self._lock:
            try:
                out, new = self._run(frame, self.check_dt(None), self._state)
                got = np.asarray(out)
                if got.shape != tuple(spec["shape"]) or got.dtype != np.dtype(spec["dtype"]):
                    raise ValueError(f"output {spec['name']} is {got.dtype} {got.shape}, the manifest says "
                                     f"{spec['dtype']} {tuple(spec['shape'])}")
                if self.manifest["state"]:
                    shapes = [tuple(np.shape(s)) for s in (new if new is not None else self.native_state)]
                    want = [tuple(s["shape"]) for s in self.manifest["state"]]
                    if shapes != want:
                        raise ValueError(f"the new state is {len(shapes)} tensors of shapes {shapes[:3]}..., the "
                                         f"manifest says {len(want)} of {want[:3]}...")
            except FrameError as e:
                raise ArtifactError(f"{where}: the manifest's inputs cannot be fed ({e}); rebuild the artifact") \
                    from None
            except Exception as e:  # the runtime's own error types: a name, shape or dtype the model does not have
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise ArtifactError(f"{where} does not run as its manifest describes it ({type(e).__name__}: "
                                    f"{first}); rebuild the artifact") from None
            finally:
                self._reset()

    # ---- checks --------------------------------------------------------------------------
    def check_frame(self, frame) -> np.ndarray:
        what = "frame" if self.kind == "step" else f"chunk of {self.frames_per_step} frames"
        if np.ma.isMaskedArray(frame) and np.ma.getmaskarray(frame).any():
            raise FrameError(f"{what} has masked values; fill them (frame.filled(...)) or drop the frame")
        try:
            frame = np.asarray(frame)
        except (TypeError, ValueError, RuntimeError) as e:  # ragged nested lists, tensors needing grad, ...
            first = (str(e).strip().splitlines() or [""])[0][:120]
            raise FrameError(f"{what} is not an array ({first}); pass a float array of shape {self.frame_shape}") \
                from None
        if frame.dtype == np.uint8:
            raise FrameError("frame is uint8; this model takes float frames in 0..1: pass frame / 255.0")
        if frame.dtype.kind != "f":
            raise FrameError(f"{what} has dtype {frame.dtype}; this model takes float frames in 0..1 "
                             f"({self.frame_dtype.name}): convert it, e.g. frame.astype(np.float32)")
        expect = self.frame_shape
        if frame.shape != expect:
            squeezed = tuple(d for d in expect if d != 1)
            if tuple(d for d in frame.shape if d != 1) != squeezed or frame.size != int(np.prod(expect)):
                raise FrameError(f"{what} has shape {frame.shape}, but this model takes {expect} "
                                 f"({self.frame_dtype.name} in 0..1); pass one {what} of shape "
                                 f"{squeezed} or {expect}")
            frame = frame.reshape(expect)
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf: refused just below
            frame = frame.astype(self.frame_dtype, copy=False)
        if not np.isfinite(frame).all():
            bad = int((~np.isfinite(frame)).sum())
            raise FrameError(f"frame contains {bad} NaN/Inf values; the state was not updated. "
                             "Drop or repair the frame (e.g. repeat the previous one) before calling step()")
        return frame

    def check_dt(self, dt):
        """dt as a float32 scalar (None: the artifact's default); a stall above max_dt is clamped."""
        return self._check_dt(dt)[0]

    def _check_dt(self, dt) -> tuple[np.ndarray | None, bool]:
        if not self.takes_dt:
            if dt is not None:
                raise FrameError(f"this model takes no dt (it is a {self.kind} model); call step(frame) alone")
            return None, False
        if dt is None:
            dt = self.default_dt
        if isinstance(dt, (str, bytes, bool, np.bool_)):
            raise FrameError(f"dt must be a positive number of seconds per frame, got {dt!r:.40}")
        try:
            arr = np.asarray(dt, dtype=np.float64)
        except (TypeError, ValueError, OverflowError, RuntimeError):
            raise FrameError(f"dt must be a positive number of seconds per frame, got {type(dt).__name__}") from None
        if arr.size != 1:
            raise FrameError(f"dt must be one number (seconds since the previous frame), got an array of shape "
                             f"{arr.shape}")
        value = float(arr.reshape(()))
        with np.errstate(over="ignore"):  # above float32's range: Inf, clamped to max_dt below
            tiny = not np.float32(value) > 0  # 1e-300 is 0 in float32
        if not np.isfinite(value) or tiny:
            raise FrameError(f"dt must be a positive number of seconds per frame, got {value}")
        clamped = False
        if self.fixed_dt is not None:
            if not np.isclose(value, self.fixed_dt, rtol=1e-6, atol=0):
                raise FrameError(f"this artifact was built for dt = {self.fixed_dt:.6g} s (--fps "
                                 f"{1 / self.fixed_dt:g}), got dt = {value:.6g}; rebuild without --fps to vary dt")
        elif value > self.max_dt:
            value, clamped = self.max_dt, True
        return np.asarray(value, dtype=np.float32), clamped

    # ---- for subclasses ------------------------------------------------------------------
    def _run(self, frame: np.ndarray, dt: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        raise NotImplementedError

    def _state_finite(self, state) -> bool:
        """Whether every value of a state (as `_run` returned it) is finite."""
        return all(np.isfinite(np.asarray(s)).all() for s in state)

    def _restore(self, before) -> str:
        """Make `before` (the state before a refused step) current again; says what was done."""
        self._state = before
        return "the state was kept as it was before this step"

    def _reset(self) -> None:
        self._state = [np.array(s) for s in self._initial_state]
