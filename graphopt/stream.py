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


def _finite(y) -> bool:
    y = np.asarray(y)
    return y.dtype.kind != "f" or bool(np.isfinite(y).all())


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
        self.input_names = [i["name"] for i in manifest["inputs"]]
        self.input_roles = [i.get("role", "input") for i in manifest["inputs"]]
        self._input_specs = [(tuple(i["shape"]), np.dtype(i["dtype"])) for i in manifest["inputs"]]
        self.output_names = [o["name"] for o in manifest["outputs"]]
        frame = self.input_roles.index("frame") if "frame" in self.input_roles else 0
        self.frame_shape, self.frame_dtype = self._input_specs[frame]
        self.takes_dt = "dt" in self.input_roles
        self.frames_per_step = int(manifest.get("frames_per_step") or 1)
        self.streams = int((manifest.get("streams") or {}).get("n") or 1)  # graphopt.multistream
        self.fixed_dt = (manifest.get("fixed_inputs") or {}).get(
            self.input_names[self.input_roles.index("dt")] if self.takes_dt else "dt")
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
    def step(self, *inputs, **named):
        """One step: the inputs in manifest order or by name (`step(frame)`, `step(frame, dt)`,
        `step(x=..., y=...)`; a dt input may be left out, or given as dt=, for the artifact's default).
        Returns the output, or a dict name -> output for a model with several."""
        feeds, clamped = self._bind(inputs, named)
        with self._lock:
            self.stats["dt_clamped"] += clamped
            before = self._state
            outs, new = self._run(feeds, before)
            if self.check_finite and not (all(_finite(y) for y in outs) and self._state_finite(new)):
                what = self._restore(before)
                self.stats["refused"] += 1
                raise StepError("the step produced NaN/Inf (the frame is far outside the model's input range, "
                                f"or dt is larger than the model can take); {what}: drop the frame and go on "
                                "with the next one")
            self._state = new
            self.stats["steps"] += 1
            outs = [y if isinstance(y, np.ndarray) else np.asarray(y) for y in outs]  # a runtime's 0-d scalar too
            return outs[0] if len(outs) == 1 else dict(zip(self.output_names, outs))

    def _bind(self, inputs: tuple, named: dict) -> tuple[list[np.ndarray], bool]:
        """The checked input values in manifest order, and whether dt was clamped."""
        names, roles = self.input_names, self.input_roles
        if len(inputs) == len(names) + 1 and not self.takes_dt and inputs[-1] is None:
            inputs = inputs[:-1]  # step(chunk, None): no dt, as the model takes none
        if len(inputs) > len(names):
            if not self.takes_dt and len(inputs) == len(names) + 1 and "frame" in roles:
                raise FrameError(f"this model takes no dt (it is a {self.kind} model); call step(frame) alone")
            raise FrameError(f"step() takes {len(names)} input(s) ({', '.join(names)}), got {len(inputs)}")
        given = dict(zip(names, inputs))
        for key, value in named.items():
            if key not in names and key == "dt":
                if not self.takes_dt:
                    if value is None:
                        continue
                    how = "step(frame) alone" if "frame" in roles else f"step() with {', '.join(names)} only"
                    raise FrameError(f"this model takes no dt (it is a {self.kind} model); call {how}")
                key = names[roles.index("dt")]
            if key not in names:
                raise FrameError(f"step() got an unknown input {key!r:.40}; this model takes {', '.join(names)}")
            if key in given:
                raise FrameError(f"step() got input {key} twice (by position and by name)")
            given[key] = value
        feeds, clamped = [], False
        for i, (name, role) in enumerate(zip(names, roles)):
            if name not in given and role != "dt":
                raise FrameError(f"step() is missing input {name}; this model takes {', '.join(names)}")
            value = given.get(name)
            if role == "frame":
                feeds.append(self.check_frame(value))
            elif role == "dt":
                dt, clamped = self._check_dt(value)
                feeds.append(dt.reshape(self._input_specs[i][0]))
            else:
                feeds.append(self.check_input(i, value))
        return feeds, clamped

    @property
    def kind(self) -> str:
        return "chunk" if self.frames_per_step > 1 else "step"

    def run(self, frames, dt: float | None = None) -> np.ndarray:
        """Step through a clip (frames along axis 0); returns the outputs concatenated.

        A chunk model's clip is cut into chunks of frames_per_step frames; its length must divide."""
        if len(self.output_names) != 1 or any(r == "input" for r in self.input_roles):
            raise FrameError("run() steps a face-frame model with one output; call step() for each step of "
                             f"this model (inputs {', '.join(self.input_names)})")
        outs = [np.asarray(self.step(f, dt)).reshape(-1) for f in self._clip_steps(frames)]
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)

    def _clip_steps(self, frames) -> np.ndarray:
        """run()'s clip as one array of steps (a chunk model's frames cut into chunks), or FrameError."""
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
        return frames

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
        feeds = [np.full(shape, 0.5 if role == "frame" else 0, dtype) for (shape, dtype), role
                 in zip(self._input_specs, self.input_roles)]
        feeds = [self.check_dt(None).reshape(f.shape) if role == "dt" else f for f, role in zip(feeds, self.input_roles)]
        with self._lock:
            try:
                outs, new = self._run(feeds, self._state)
                if len(outs) != len(self.manifest["outputs"]):
                    raise ValueError(f"{len(outs)} outputs, the manifest says {len(self.manifest['outputs'])}")
                for got, spec in zip(outs, self.manifest["outputs"]):
                    got = np.asarray(got)
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
    def check_frame(self, frame, shape: tuple | None = None) -> np.ndarray:
        """The frame as the model takes it (shape: another expected shape, e.g. one stream's), else FrameError."""
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
        expect = tuple(shape) if shape is not None else self.frame_shape
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

    def check_input(self, index: int, value) -> np.ndarray:
        """An input other than the face frame and dt, checked against its manifest shape and dtype."""
        name = self.input_names[index]
        shape, dtype = self._input_specs[index]
        if np.ma.isMaskedArray(value) and np.ma.getmaskarray(value).any():
            raise FrameError(f"input {name} has masked values; fill them first")
        try:
            value = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:120]
            raise FrameError(f"input {name} is not an array ({first}); pass {dtype.name} of shape {shape}") from None
        kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}[dtype.kind]
        if value.dtype.kind not in kinds and not (dtype.kind == "f" and value.dtype.kind in "iu"):
            raise FrameError(f"input {name} has dtype {value.dtype}; this model takes {dtype.name}: convert it")
        if value.shape != shape:
            if value.size != int(np.prod(shape)) or tuple(d for d in value.shape if d != 1) != \
                    tuple(d for d in shape if d != 1):
                raise FrameError(f"input {name} has shape {value.shape}, but this model takes {shape}")
            value = value.reshape(shape)
        if dtype.kind in "iu" and value.size and (value.min() < np.iinfo(dtype).min or value.max() > np.iinfo(dtype).max):
            raise FrameError(f"input {name} has values outside {dtype.name}'s range")
        with np.errstate(over="ignore"):
            value = value.astype(dtype, copy=False)
        if dtype.kind == "f" and not np.isfinite(value).all():
            raise FrameError(f"input {name} contains NaN/Inf values; the state was not updated")
        return value

    def check_dt(self, dt):
        """dt as a float32 scalar (None: the artifact's default); a stall above max_dt is clamped."""
        return self._check_dt(dt)[0]

    def _check_dt(self, dt) -> tuple[np.ndarray | None, bool]:
        if not self.takes_dt:
            if dt is not None:
                raise FrameError(f"this model takes no dt (it is a {self.kind} model); call step(frame) alone")
            return None, False
        if self.streams > 1:  # a multi-stream artifact: one dt for all streams, or one per stream
            try:
                n = np.size(dt) if dt is not None and not isinstance(dt, (str, bytes)) else 1
            except (TypeError, ValueError, RuntimeError):
                n = 1
            if n == self.streams:
                got = [self._check_one_dt(d) for d in np.asarray(dt, dtype=object).reshape(-1)]
                return np.asarray([v for v, _ in got], np.float32), any(c for _, c in got)
            if n != 1:
                raise FrameError(f"dt must be one number or {self.streams} numbers (one per stream), got {n}")
            value, clamped = self._check_one_dt(dt)
            return np.full(self.streams, value, np.float32), clamped
        return self._check_one_dt(dt)

    def _check_one_dt(self, dt) -> tuple[np.ndarray, bool]:
        """One stream's dt as a float32 scalar (None: the default), and whether a stall was clamped."""
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

    state_settable = True  # load_native_state works (not for a runtime that keeps the state inside the model)
    state_settable_fix = "rebuild it with the state as inputs and outputs"  # what to do where it does not

    def load_native_state(self, arrays) -> None:
        """Make `arrays` (stored layout, manifest state order) the current state, in the runtime's own form:
        each runtime's _reset turns the initial state into that form, so it is run on these arrays."""
        if not self.state_settable:
            raise RuntimeError(f"{type(self).__name__} keeps its state inside the model: it can only be reset")
        with self._lock:
            saved = self._initial_state
            self._initial_state = [np.array(a, dtype=np.asarray(s).dtype) for a, s in zip(arrays, saved)]
            try:
                self._reset()
            finally:
                self._initial_state = saved

    # ---- for subclasses ------------------------------------------------------------------
    def _run(self, feeds: list[np.ndarray], state: list) -> tuple[list[np.ndarray], list]:
        """One step of the runtime: the checked inputs in manifest order -> (outputs in manifest order,
        new state)."""
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
