"""Multi-stream artifacts: one step advances N independent streams, each with its own frame, dt and state.

A server with many calls (or a lab going through a dataset of videos) runs many streams at once; a step over
N frames lets the runtime run every conv as one batch-N conv instead of N batch-1 convs (better use of the
GEMM kernels and of each weight load).

How: `MultiStreamSpec(base, n)` is the base model under `jax.vmap` over a stream axis, traced like any other
spec, so every pass and every target sees an ordinary graph with N in its shapes. Every input, output and
state tensor of the base model gets the stream axis in front; where the base tensor's first axis is 1 (a
batch of one) the stream axis takes its place, so a FacePhys frame (1, 36, 36, 3) becomes (N, 36, 36, 3) and a
runtime's conv sees batch N. dt becomes one number per stream, shape (N,).

The manifest's "streams" records N and each tensor's per-stream shape (the base model's), so
    stream value s  =  batched[s].reshape(per_stream_shape)
for inputs, outputs and the state in the model's layout (the state views applied). `MultiStream` wraps a
loaded multi-stream artifact: slots that are added, removed and reset one at a time without touching the
others, each slot verified against the batch-1 reference on its own clip (`check`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping

import numpy as np

from . import state_views
from .spec import ModelSpec, SpecError

MAX_STREAMS = 1024


def check_streams(n) -> int:
    """The number of streams a build asks for (--streams), or SpecError naming the range."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_STREAMS:
        raise SpecError(f"--streams must be a whole number of streams from 1 to {MAX_STREAMS}, got {n!r:.40}")
    return int(n)


def batched_shape(shape, n: int) -> tuple[int, ...]:
    """The shape of n streams' tensors of `shape`: the stream axis in front, in place of a leading 1."""
    shape = tuple(int(d) for d in shape)
    return (n,) + (shape[1:] if shape and shape[0] == 1 else shape)


def stack(values, shape, n: int) -> np.ndarray:
    """n per-stream values of `shape` as one batched tensor."""
    return np.stack([np.asarray(v).reshape(shape) for v in values]).reshape(batched_shape(shape, n))


def split(batched, shape) -> list[np.ndarray]:
    """A batched tensor as its per-stream values of `shape`."""
    batched = np.asarray(batched)
    return [batched[s].reshape(shape) for s in range(batched.shape[0])]


class MultiStreamSpec(ModelSpec):
    """`base` with n streams: fn is the base step under jax.vmap (see the module docstring). Verification
    compares each stream with the base model's reference (`check`), never this spec's own fn."""

    def __init__(self, base: ModelSpec, n: int, fixed_inputs: dict | None = None):
        import jax
        if not isinstance(base, ModelSpec):
            raise SpecError(f"--streams needs a ModelSpec, got {type(base).__name__}")
        if base.streams != 1:
            raise SpecError(f"spec {base.name} already has {base.streams} streams")
        n = check_streams(n)
        self.streams, self.base = n, base
        self.fixed_inputs = dict(fixed_inputs or {})  # e.g. dt = 1/fps of a --fps build, the same for every stream
        self._base_graph = None
        in_shapes = [tuple(a.shape) for a in base.inputs.values()]
        state_shapes = [tuple(s.shape) for s in base.state_leaves]
        from .manifest import MAX_TOTAL_STATE
        from .spec import MAX_ELEMENTS
        per = sum(math.prod(s) for s in state_shapes)
        big = max([math.prod(s) for s in in_shapes + state_shapes] or [0])
        if n * per * 8 > MAX_TOTAL_STATE or n * big > MAX_ELEMENTS:  # an artifact load would refuse: say so now
            most = max(1, min(MAX_TOTAL_STATE // max(per * 8, 1), MAX_ELEMENTS // max(big, 1)))
            raise SpecError(f"spec {base.name}: {n} streams hold more than an artifact may (state {MAX_TOTAL_STATE >> 20} "
                            f"MiB, {MAX_ELEMENTS} elements per tensor); use at most --streams {most}")
        self.jax_fn = type(base).trace is ModelSpec.trace  # else e.g. an ONNX file: the IR transform alone
        if self.jax_fn:
            flat = base.flat_fn()
            try:
                outs, _ = jax.eval_shape(flat, *base.inputs.values(), *base.state_leaves)
            except Exception as e:  # the user's fn: any error type
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise SpecError(f"spec {base.name}: fn does not trace with the example inputs ({type(e).__name__}: "
                                f"{first})") from None
            out_shapes = [tuple(o.shape) for o in outs]
        else:
            out_shapes = [tuple(v.shape) for v in self.base_graph().outputs]
        self.stream_shapes = {"inputs": in_shapes, "outputs": out_shapes, "state": state_shapes}
        n_in = len(in_shapes)

        def one_stream(*args):  # one stream's values without the stream axis -> the base model's step
            full = [a.reshape(s) for a, s in zip(args, in_shapes + state_shapes)]
            o, new = flat(*full)
            return ([x.reshape(batched_shape(s, 1)[1:]) for x, s in zip(o, out_shapes)],
                    [x.reshape(batched_shape(s, 1)[1:]) for x, s in zip(new, state_shapes)])

        vmapped = jax.vmap(one_stream) if self.jax_fn else _no_fn(base)
        if base.stateful:
            def fn(*args):
                o, new = vmapped(*args[:n_in], *args[n_in])
                return tuple(o), list(new)
            state = [stack([s] * n, s.shape, n) for s in base.state_leaves]
        else:
            def fn(*args):
                return tuple(vmapped(*args)[0])
            state = None
        inputs = {k: stack([a] * n, a.shape, n) for k, a in base.inputs.items()}
        if base.dt_input is not None:
            inputs[base.dt_input] = inputs[base.dt_input].reshape(n)
        ModelSpec.__init__(self, name=base.name, fn=fn, inputs=inputs, state=state,
                           outputs=base.output_names(len(out_shapes)), dt_input=base.dt_input, fps=base.fps,
                           pulse_output=base.pulse_output, frame_input=base.frame_input,
                           input_range=base.input_range, source=dict(base.source), param_names=base.param_names)

    def _io_name(self, what: str, n) -> str:  # the base model's rules (an ONNX file's names are free text)
        return self.base._io_name(what, n)

    @property
    def frames_per_step(self) -> int:  # per stream
        return self.base.frames_per_step

    @property
    def reference_kind(self) -> str:
        return self.base.reference_kind

    def fingerprint(self) -> str:
        """The base model's: what an artifact is checked against (verify --model) is the one-stream model."""
        return self.base.fingerprint()

    def meta(self) -> dict:
        """What the manifest records ("streams"): N and every tensor's per-stream shape."""
        return {"n": self.streams, **{k: [list(s) for s in v] for k, v in self.stream_shapes.items()}}

    def base_graph(self):
        """The one-stream model's traced graph (traced once)."""
        if self._base_graph is None:
            self._base_graph = self.base.trace()
        return self._base_graph

    def trace(self, log=lambda m: None):
        """The one-stream graph batched in the IR (graphopt.ir.batching), checked against the one-stream
        graph on random inputs; where an op does not batch there (or the check fails), the step under
        jax.vmap traced (JAX models only)."""
        from .ir.batching import NotBatchable, batch_graph, check_batched
        from .ir.verify import verify
        base = self.base_graph()
        how = "graphopt.ir.batching"
        try:
            graph = batch_graph(base, self.streams, self.fixed_inputs)
            verify(graph)
            err = check_batched(base, graph, self.streams, fixed=self.fixed_inputs)
            if not err <= 1e-5:
                raise NotBatchable(f"the batched graph differs from the one-stream graph by {err:.2g} (relative)")
        except NotBatchable as e:
            if not self.jax_fn:
                raise SpecError(f"spec {self.base.name}: --streams cannot batch this model: {e}") from None
            how = f"jax.vmap ({e})"
            try:
                graph = super().trace()
            except SpecError as v:
                raise SpecError(f"spec {self.base.name}: --streams {self.streams} cannot batch this model ({e}; and "
                                f"under jax.vmap: {str(v).split(': ', 1)[-1][:200]}); build it with one stream and run "
                                "one Stream per stream") from None
        graph.meta["streams"] = {**self.meta(), "batched_by": how}
        graph.output_names = self.output_names(len(graph.outputs))
        graph.meta.update(model=self.name, fps=self.fps, source=self.source, frames_per_step=self.frames_per_step,
                          roles={"frame": self.frame_input, "dt": self.dt_input, "pulse": self.pulse_output})
        return graph


def _no_fn(base):
    def fn(*args):
        raise SpecError(f"spec {base.name} ({base.reference_kind}) has no JAX step to batch with jax.vmap")
    return fn


def manifest_streams(manifest: dict) -> dict | None:
    """The manifest's "streams" record, checked against its tensors (untrusted: ArtifactError), or None."""
    from .errors import ArtifactError
    rec = manifest.get("streams")
    if rec is None:
        return None
    where = "manifest streams"

    def bad(msg):
        raise ArtifactError(f"{where} {msg}; rebuild the artifact with graphopt build --streams N")
    if not isinstance(rec, dict):
        bad("must be an object")
    n = rec.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STREAMS:
        bad(f"n must be a count from 1 to {MAX_STREAMS}")
    for key in ("inputs", "outputs", "state"):
        shapes, tensors = rec.get(key), manifest.get(key) or []
        if not isinstance(shapes, list) or len(shapes) != len(tensors):
            bad(f"{key} must list one per-stream shape for each of the {len(tensors)} {key}")
        for i, (shape, t) in enumerate(zip(shapes, tensors)):
            if not isinstance(shape, list) or len(shape) > 16 or not all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 28 for d in shape):
                bad(f"{key}[{i}] must be a list of at most 16 dimensions")
            full = t["shape"]
            if key == "state" and t.get("view"):
                full = state_views.model_shape(full, t["view"])
            if tuple(full) not in (batched_shape(shape, n), (n,) + tuple(shape)):
                bad(f"{key}[{i}]: {n} streams of {shape} do not make the tensor's shape {list(full)}")
    return rec


class MultiStream:
    """N stream slots over one multi-stream artifact (`graphopt.load_multi(path)`).

        ms = graphopt.load_multi("out/facephys.onnx-x8")
        a = ms.add()                       # a free slot, at the model's initial state
        outs = ms.step({a: frame})         # {slot: output}; slots not given keep their state
        ms.reset(a); ms.remove(a)

    A step runs every slot of the artifact (the batch is fixed); slots not in `frames` (free, or with no frame
    this time) get a mid-grey frame and their state is put back afterwards. A slot whose frame is refused
    (shape, dtype, NaN/Inf) or whose step produces NaN/Inf keeps its state; its message is in `refused` after
    the step and it has no output; the other slots go on.
    """

    def __init__(self, stream):
        rec = manifest_streams(stream.manifest)
        if rec is None:
            from .errors import ArtifactError
            raise ArtifactError("this artifact advances one stream per step (no \"streams\" in its manifest); "
                                "load it with graphopt.load, or build it with --streams N")
        if not stream.state_settable:
            from .errors import ArtifactError
            raise ArtifactError("this artifact keeps its state inside the model, so one stream's state cannot be "
                                f"put back alone; {stream.state_settable_fix}")
        self.stream = stream
        self.capacity = rec["n"]
        self._shapes = {k: [tuple(s) for s in rec[k]] for k in ("inputs", "outputs", "state")}
        self._lock = threading.RLock()
        self._active: set[int] = set()
        self._slot_of = self._slot_index()
        self._local = threading.local()  # refused: per calling thread (a MultiStream may be shared)
        self._grey = [np.full(s, 0.5, np.dtype(i["dtype"])) for s, i in
                      zip(self._shapes["inputs"], stream.manifest["inputs"])]

    def _slot_index(self) -> list[np.ndarray]:
        """Per stored state tensor: the slot each element belongs to (the views inverted, so a state the
        passes re-laid out, e.g. channels-first, is still split by slot)."""
        out = []
        for t in self.stream.manifest["state"]:
            native = tuple(t["shape"])
            view = t.get("view") or []
            model = state_views.model_shape(native, view)
            idx = np.broadcast_to(np.arange(model[0]).reshape((-1,) + (1,) * (len(model) - 1)), model)
            out.append(state_views.unapply(idx, view, native))
        return out

    @property
    def refused(self) -> dict[int, str]:
        """slot -> why, for the slots this thread's last step refused (they got no output)."""
        return getattr(self._local, "refused", {})

    # ---- slots --------------------------------------------------------------------------------------
    @property
    def active(self) -> list[int]:
        return sorted(self._active)

    def add(self) -> int:
        """A free slot, its state set to the model's initial state. RuntimeError when all are in use."""
        with self._lock:
            free = [s for s in range(self.capacity) if s not in self._active]
            if not free:
                raise RuntimeError(f"all {self.capacity} streams of this artifact are in use; remove one first, or "
                                   "build with a larger --streams")
            slot = free[0]
            self._active.add(slot)
            self._set_slots({slot}, self.stream._initial_state)
            return slot

    def remove(self, slot: int) -> None:
        with self._lock:
            self._check_slot(slot)
            self._active.discard(slot)

    def reset(self, slot: int) -> None:
        """Put one slot back at the model's initial state; the others are not touched."""
        with self._lock:
            self._check_slot(slot)
            self._set_slots({slot}, self.stream._initial_state)

    def state(self, slot: int) -> list[np.ndarray]:
        """One slot's state, laid out as the base (one-stream) model holds it."""
        with self._lock:
            self._check_slot(slot)
            return [split(s, shape)[slot] for s, shape in zip(self.stream.state, self._shapes["state"])]

    def _check_slot(self, slot) -> None:
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or slot not in self._active:
            raise KeyError(f"slot {slot!r:.20} is not in use (active slots: {self.active}); add() one")

    def _set_slots(self, slots: set[int], source: list[np.ndarray]) -> None:
        """Copy `slots`' elements of every stored state tensor from `source` (stored layout) into the
        stream's state; the other slots keep theirs."""
        if not slots:
            return
        state = self.stream.native_state
        for i, (cur, src, idx) in enumerate(zip(state, source, self._slot_of)):
            mask = np.isin(idx, list(slots))
            state[i] = np.where(mask, np.asarray(src).reshape(cur.shape), cur).astype(cur.dtype, copy=False)
        self.stream.load_native_state(state)

    # ---- stepping -----------------------------------------------------------------------------------
    def step(self, frames: Mapping, dt=None) -> dict:
        """Advance the slots in `frames` (slot -> frame; for a model with several inputs, slot -> dict of
        input name -> value). dt: None (each slot's default), one number for all, or slot -> number.
        Returns slot -> output (a dict name -> output for a model with several outputs)."""
        from .stream import FrameError
        s = self.stream
        with self._lock:
            if not isinstance(frames, Mapping):
                raise FrameError("MultiStream.step takes a mapping slot -> frame")
            for slot in frames:
                self._check_slot(slot)
            if isinstance(dt, Mapping):
                stray = [k for k in dt if k not in frames]
                if stray:
                    raise FrameError(f"dt names slot {stray[0]!r:.20}, which has no frame in this step; give dt for "
                                     "the slots in frames only")
            elif dt is not None:  # one dt for every slot: checked once, for the whole call
                if not s.takes_dt:
                    raise FrameError("this model takes no dt; call step(frames) alone")
                if np.ndim(dt) != 0:
                    raise FrameError("MultiStream.step takes dt as one number or a mapping slot -> number, got an "
                                     f"array of shape {np.shape(dt)}")
                s._check_one_dt(dt)
            refused = self._local.refused = {}
            per_input = [[g] * self.capacity for g in self._grey]
            dts = [None] * self.capacity
            ran = set()
            for slot, value in frames.items():
                named = value if isinstance(value, Mapping) else {s.input_names[s.input_roles.index("frame")]
                                                                  if "frame" in s.input_roles else s.input_names[0]: value}
                d = dt.get(slot) if isinstance(dt, Mapping) else dt
                try:
                    values, dts[slot] = self._check_slot_inputs(named, d)
                except FrameError as e:
                    refused[slot] = str(e)
                    continue
                for i, v in enumerate(values):
                    if v is not None:
                        per_input[i][slot] = v
                ran.add(slot)
            feeds, clamped = [], 0
            for i, (name, role) in enumerate(zip(s.input_names, s.input_roles)):
                shape, dtype = s._input_specs[i]
                if role == "dt":
                    vals = []
                    for d in dts:
                        v, c = s._check_one_dt(d)
                        vals.append(v)
                        clamped += c
                    feeds.append(np.asarray(vals, dtype).reshape(shape))
                else:
                    feeds.append(stack(per_input[i], self._shapes["inputs"][i], self.capacity).astype(dtype, copy=False))
            before = s.native_state  # what idle and refused streams are put back to
            with s._lock:
                outs, new = s._run(feeds, s._state)
                s._state = new
            outs = [np.asarray(o) for o in outs]
            per_out = [split(o, shape) for o, shape in zip(outs, self._shapes["outputs"])]
            model_new = s.state
            for slot in sorted(ran):
                finite = all(np.isfinite(o[slot]).all() for o in per_out if o[slot].dtype.kind == "f") and all(
                    np.isfinite(split(x, shape)[slot]).all() for x, shape in zip(model_new, self._shapes["state"])
                    if x.dtype.kind == "f")
                if s.check_finite and not finite:
                    refused[slot] = ("the step produced NaN/Inf for this stream; its state was kept as it was "
                                          "before the step: drop the frame and go on with the next one")
            keep = set(range(self.capacity)) - (ran - set(refused))
            if keep:
                self._set_slots(keep, before)
            s.stats["steps"] += 1
            s.stats["dt_clamped"] += clamped
            s.stats["refused"] += len(refused)
            result = {}
            for slot in sorted(ran - set(refused)):
                got = [o[slot] for o in per_out]
                result[slot] = got[0] if len(got) == 1 else dict(zip(s.output_names, got))
            return result

    def _check_slot_inputs(self, named: Mapping, dt) -> tuple[list, object]:
        """One slot's inputs, checked like a one-stream Stream checks them (FrameError names the problem)."""
        from .stream import FrameError
        s = self.stream
        values = []
        for i, (name, role) in enumerate(zip(s.input_names, s.input_roles)):
            if role == "dt":
                values.append(None)
                if name in named:
                    dt = named[name]
                continue
            if name not in named:
                raise FrameError(f"missing input {name} (this model takes {', '.join(s.input_names)})")
            shape, dtype = self._shapes["inputs"][i], s._input_specs[i][1]
            if role == "frame":  # as a one-stream Stream checks a frame, against one stream's shape
                values.append(s.check_frame(named[name], shape=shape))
                continue
            if np.ma.isMaskedArray(named[name]):
                raise FrameError(f"input {name} is a masked array; fill it (x.filled(...))")
            try:
                v = np.asarray(named[name])
            except (TypeError, ValueError, RuntimeError):
                raise FrameError(f"input {name} is not an array") from None
            if v.dtype == object:
                raise FrameError(f"input {name} is not an array of numbers")
            if v.shape not in (tuple(shape), batched_shape(shape, 1)[1:]):  # with or without its batch of one
                raise FrameError(f"input {name} of one stream must have shape {tuple(shape)}, got {v.shape}")
            v = v.reshape(shape)
            if dtype.kind == "f":
                if v.dtype.kind != "f":
                    raise FrameError(f"input {name} has dtype {v.dtype}; this model takes {dtype} (convert it)")
                with np.errstate(over="ignore"):
                    v = v.astype(dtype, copy=False)
                if not np.isfinite(v).all():
                    raise FrameError(f"input {name} holds NaN/Inf")
            elif v.dtype != dtype:
                raise FrameError(f"input {name} must be {dtype}, got {v.dtype}")
            values.append(v)
        unknown = set(named) - set(s.input_names)
        if unknown:
            raise FrameError(f"unknown input {sorted(unknown)[0]!r:.40}; this model takes {', '.join(s.input_names)}")
        if s.takes_dt:
            s._check_one_dt(dt)  # raises FrameError before the step
        elif dt is not None:
            raise FrameError("this model takes no dt")
        return values, dt


def load_multi(path, **options) -> MultiStream:
    """A multi-stream artifact (built with --streams N) as N stream slots (see MultiStream)."""
    from .artifact import load
    return MultiStream(load(path, **options))


# ---- verification ------------------------------------------------------------------------------------
def slot_clips(n: int, frames: int, fps: float, seed: int = 0, hr_bpm: float = 60.0):
    """A different clip per stream (heart rate and seed; stream 0 gets seed and hr_bpm), so a slot that read
    another slot's data shows: heart rates step by 37 bpm through 40-180 bpm."""
    from .equivalence import Clip
    return [Clip(frames=frames, fps=fps, seed=seed + s, hr_bpm=40.0 + (hr_bpm - 40.0 + 37.0 * s) % 140.0)
            for s in range(n)]


def stacked_samples(spec: MultiStreamSpec, frames: int, fps: float) -> list[list[np.ndarray]]:
    """The batched inputs of a few steps (each stream its own clip), for build --verify-each-pass."""
    base, n = spec.base, spec.streams
    feeds = [c.feeds(base) for c in slot_clips(n, frames, fps)]
    shapes = spec.stream_shapes["inputs"]
    return [[np.asarray([float(np.asarray(f[t][k]).reshape(())) for f in feeds], np.float32) if k == base.dt_input
             else stack([f[t][k] for f in feeds], shapes[i], n) for i, k in enumerate(base.inputs)]
            for t in range(len(feeds[0]))]


def check(stream, spec: MultiStreamSpec, frames: int, fps: float | None = None, log=lambda m: None,
          seed: int = 0, hr_bpm: float = 60.0) -> dict:
    """Every stream of a multi-stream artifact against the base model's reference on that stream's own clip
    (equivalence.judge): the result of the worst stream, with "per_stream" the tier and NRMSE of each."""
    from . import equivalence, metrics
    from .console import progress
    base, n = spec.base, spec.streams
    clips = slot_clips(n, frames, fps or base.fps, seed, hr_bpm)
    feeds = [c.feeds(base) for c in clips]
    steps = len(feeds[0])
    names = list(base.inputs)
    outs: list[list] = [[] for _ in range(n)]
    shapes = spec.stream_shapes
    from .stream import StepError
    for t in progress(range(steps), desc=f"the candidate, {n} streams"):
        named = {}
        for i, k in enumerate(names):
            if k == base.dt_input:
                named["dt"] = np.asarray([float(np.asarray(f[t][k]).reshape(())) for f in feeds], np.float32)
            else:
                named[k] = stack([f[t][k] for f in feeds], shapes["inputs"][i], n)
        try:
            y = stream.step(**named)
        except StepError as e:
            raise equivalence.VerificationError(f"the candidate failed on the synthetic clips: {e}") from None
        ys = [y] if not isinstance(y, dict) else [y[k] for k in stream.output_names]
        per = [split(o, s) for o, s in zip(ys, shapes["outputs"])]
        for slot in range(n):
            outs[slot].append([p[slot] for p in per])
    final = [split(x, s) for x, s in zip(stream.state, shapes["state"])]
    results = []
    for slot in range(n):
        o = [np.concatenate([np.asarray(step[j], np.float64).reshape(-1) for step in outs[slot]])
             for j in range(len(shapes["outputs"]))]
        r = equivalence.judge(base, clips[slot], o, [f[slot] for f in final])
        results.append(r)
    worst = max(range(n), key=lambda s: (metrics.TIERS.index(results[s]["tier"]) if results[s]["tier"] else 99,
                                         results[s].get("nrmse", 0)))
    result = dict(results[worst])
    result["tier"] = metrics.loosest([r["tier"] for r in results])
    result["streams"] = n
    result["worst_stream"] = worst
    result["per_stream"] = [{"tier": r["tier"], "nrmse": r.get("nrmse"), "hr_bpm": r.get("hr_bpm"),
                             "clip_hr_bpm": c.hr_bpm} for r, c in zip(results, clips)]
    return result
