"""Numerical equivalence of anything that steps a model against the model's own reference.

The reference is the ModelSpec's `fn` under jax.jit. A run feeds a verification clip step by step with
state carried: the synthetic face clip for the spec's face-frame input (a chunk model: chunk by chunk),
dt = 1/fps for its dt input, and deterministic uniform random values in `input_range` for any other
input. The reference starts from the spec's initial state, or from a given one (`reference_state`: e.g. a
baseline's --state, so that the reference and the candidate start from the same state). The reference's
outputs on the clip, and on the clip with every float input moved by one ulp (the noise floor), are cached
on disk per model fingerprint (its jaxpr, weights and initial state), the state the run starts from, and
the clip.
Every output is compared; the heart-rate criterion applies to the spec's pulse output. With atol/rtol,
every output and the final state are also compared elementwise (|out - ref| <= atol + rtol * |ref|).
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

# step(feeds: input name -> array, state) -> (outputs in the reference's order, new state)
StepFn = Callable[[dict, list], tuple[list, list]]

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
    """A deterministic verification clip: `frames` face frames (see graphopt.clip), or as many steps of a
    model without a face input."""
    frames: int = 600
    hr_bpm: float = 72.0
    seed: int = 0
    fps: float = 30.0

    def array(self, frame_shape: tuple[int, ...], perturbed: bool = False) -> np.ndarray:
        """The face clip as model inputs: (steps, *frame_shape). A frame_shape holding several frames (a
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

    def feeds(self, spec, perturbed: bool = False) -> list[dict]:
        """The spec's inputs for every step of the clip: name -> array."""
        steps = self.frames // spec.frames_per_step
        if steps < 1:
            raise ValueError(f"a clip of {self.frames} frames holds no whole step of {spec.frames_per_step} "
                             f"frames; use at least {spec.frames_per_step} frames")
        lo, hi = spec.input_range
        columns = {}
        for i, (name, example) in enumerate(spec.inputs.items()):
            shape, dtype = tuple(example.shape), example.dtype
            if name == spec.frame_input:
                columns[name] = self.array(shape, perturbed).astype(dtype, copy=False)[:steps]
            elif name == spec.dt_input:
                columns[name] = np.full((steps,) + shape, 1.0 / self.fps, dtype)
            else:
                rng = np.random.default_rng([self.seed, 1000 + i])
                if dtype.kind == "f":
                    x = rng.uniform(lo, hi, (steps,) + shape).astype(dtype)
                    columns[name] = _perturb(x, lo, hi, self.seed + 1 + i) if perturbed else x
                elif dtype.kind == "b":
                    columns[name] = rng.random((steps,) + shape) < 0.5
                else:
                    info = np.iinfo(dtype)
                    low = int(min(max(np.ceil(lo), info.min), info.max))
                    high = int(min(max(np.ceil(hi), low + 1), info.max))
                    columns[name] = rng.integers(low, max(high, low + 1), (steps,) + shape, dtype=np.int64,
                                                 endpoint=high == info.max).astype(dtype)
        return [{k: v[t] for k, v in columns.items()} for t in range(steps)]


def _perturb(values: np.ndarray, lo: float, hi: float, seed: int) -> np.ndarray:
    """Every element moved by one ulp of its dtype, in a random direction, kept inside [lo, hi]."""
    rng = np.random.default_rng(seed)
    up = rng.integers(0, 2, values.shape, dtype=np.int8).astype(bool)
    up = (up | (values <= lo)) & ~(values >= hi)
    target = np.where(up, np.array(np.inf, values.dtype), np.array(-np.inf, values.dtype))
    return np.clip(np.nextafter(values, target), values.dtype.type(lo), values.dtype.type(hi))


def cache_dir() -> Path:
    root = os.environ.get("GRAPHOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphopt")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        from .errors import ArtifactError
        raise ArtifactError(f"the cache folder {path} is not a folder; set GRAPHOPT_CACHE_DIR to a folder "
                            "graphopt may write (or remove what is there)") from None
    return path


def run_steps(step: StepFn, feeds: list[dict], state: list, desc: str = "running the clip") -> tuple[list[np.ndarray], list]:
    """Run a step function over the clip's feeds with state carried; returns (each output's values over the
    clip, flattened and concatenated, float64; the final state). Progress (elapsed, time left) on stderr."""
    from .console import progress
    per_output: list[list[np.ndarray]] | None = None
    for f in progress(feeds, desc=desc):
        outs, state = step(f, state)
        if per_output is None:
            per_output = [[] for _ in outs]
        for acc, y in zip(per_output, outs):
            acc.append(np.asarray(y, dtype=np.float64).reshape(-1))
    return [np.concatenate(a) for a in per_output or []], [np.asarray(s) for s in state]


def spec_step(spec) -> StepFn:
    """The spec's reference (fn under jax.jit) as a StepFn."""
    jitted = spec.reference()
    names = list(spec.inputs)

    def step(feeds, state):
        outs, new = jitted(*(feeds[n] for n in names), *state)
        return [np.asarray(y) for y in outs], [np.asarray(s) for s in new]
    return step


class _StreamState:
    """A Stream's state, read only when iterated: run_steps reads it once, after the clip, instead of
    copying (and re-laying through the views) every state tensor on every frame."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        return iter(self._stream.state)


def stream_step(stream, spec) -> StepFn:
    """Adapt a Stream to a StepFn over the spec's feeds (the Stream carries its own state; reset here).
    The Stream's frame and dt inputs take the spec's by role, its other inputs by name (or by position
    where the names differ); its outputs are matched to the spec's by name, else by position."""
    stream.reset()
    state = _StreamState(stream)
    roles = spec.roles()
    by_role = {r: n for n, r in roles.items() if r != "input"}
    plain = [n for n, r in roles.items() if r == "input"]
    s_plain = [n for n, r in zip(stream.input_names, stream.input_roles) if r == "input"]
    if len(s_plain) != len(plain):
        raise VerificationError(f"the candidate takes inputs {stream.input_names}, the reference {list(roles)}")
    rename = dict(zip(s_plain, plain)) if set(s_plain) != set(plain) else {n: n for n in plain}
    source = [by_role.get(r) if r != "input" else rename[n] for n, r in zip(stream.input_names, stream.input_roles)]
    if None in source:
        raise VerificationError(f"the candidate takes inputs {stream.input_names} with roles {stream.input_roles}; "
                                f"the reference has no input for each of them ({list(roles)})")
    want = spec.output_names(len(stream.output_names)) if spec.outputs is not None else stream.output_names
    order = [stream.output_names.index(n) for n in want] if set(want) == set(stream.output_names) \
        else list(range(len(stream.output_names)))

    def step(feeds, _):
        got = stream.step(*(feeds[n] for n in source))
        outs = list(got.values()) if isinstance(got, dict) else [got]
        return [outs[i] for i in order], state
    return step


def fingerprint(spec) -> str:
    """The spec's fingerprint, computed once per spec object."""
    if getattr(spec, "_fingerprint", None) is None:
        try:
            spec._fingerprint = spec.fingerprint()
        except (Exception, SystemExit) as e:  # the user's fn, traced again: any error type
            from .spec import SpecError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpecError(f"spec {spec.name}: fn failed when traced for its fingerprint ({type(e).__name__}: "
                            f"{first})") from None
    return spec._fingerprint


def _source_key(spec) -> dict:
    """What the reference's outputs on a clip depend on: the model, and how its inputs are fed."""
    import jax
    return {"model": spec.name, "fingerprint": fingerprint(spec), "jax": jax.__version__, "roles": spec.roles(),
            "input_range": list(spec.input_range), "feeds": FEEDS_VERSION}


FEEDS_VERSION = 1  # bump when Clip.feeds changes what it generates
MIN_FLOOR = float(np.finfo(np.float32).eps)  # an output the 1-ulp perturbation does not move: float32 rounding


def _cache_path(kind: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / f"{kind}-{digest}.npz"


def _state_digest(state: list) -> str:
    """What an initial state holds (dtypes, shapes, values), for the cache key."""
    h = hashlib.sha256()
    for s in state:
        a = np.ascontiguousarray(np.asarray(s))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _start_state(spec, initial_state: list | None) -> list:
    """The state the reference starts from: the spec's own, or `initial_state` in the spec's state layout."""
    leaves = spec.state_leaves
    if initial_state is None:
        return leaves
    state = [np.asarray(s) for s in initial_state]
    if len(state) != len(leaves) or any(s.shape != leaf.shape for s, leaf in zip(state, leaves)):
        raise ValueError(f"the reference's initial state must be laid out like the spec's state ({len(leaves)} "
                         f"tensors of its shapes, got {len(state)}); see baseline.reference_state")
    return [np.asarray(s, leaf.dtype) for s, leaf in zip(state, leaves)]


def reference_run(spec, clip: Clip, perturbed: bool = False,
                  initial_state: list | None = None) -> tuple[list[np.ndarray], list]:
    """The spec's reference on the clip (cached), from the spec's initial state or from `initial_state` (in
    the spec's state layout): (each output over the clip, final state)."""
    start = _start_state(spec, initial_state)
    key = {**_source_key(spec), **asdict(clip), "perturbed": perturbed, "initial_state": _state_digest(start)}
    path = _cache_path("reference", key)
    from . import trace_cache  # read and written like a trace entry: the key inside, checked (untrusted)
    hit = trace_cache.read_reference(path, key)
    if hit is not None:
        return hit  # else a missing, damaged, foreign or older entry: computed again below
    try:
        outputs, state = run_steps(spec_step(spec), clip.feeds(spec, perturbed), list(start),
                                   desc="the reference" + (", inputs moved by one ulp" if perturbed else ""))
    except (Exception, SystemExit) as e:  # the user's fn under jax.jit: any error type
        from .spec import SpecError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpecError(f"spec {spec.name}: the reference ({'fn under ' if spec.reference_kind == 'jax.jit' else ''}"
                        f"{spec.reference_kind}) failed on the verification clip "
                        f"({type(e).__name__}: {first})") from None
    trace_cache.write_reference(path, key, outputs, state)
    return outputs, state


def reference_model(model: str, source: dict, weights: str | None = None):
    """The reference for a built-in model: its package's own weights, or the weights file the user names
    (build's and verify's --weights). Never a path from a manifest: an artifact cannot choose what it is
    checked against. Its recorded weights sha256 must match the weights used."""
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


def check_fingerprint(spec, source: dict) -> None:
    """A user's spec must be the model the artifact was built from (the manifest's source.fingerprint)."""
    from .spec import SpecError
    want = source.get("fingerprint")
    if want is not None and want != fingerprint(spec):
        raise SpecError(f"the artifact was built from another model than {spec.name} (fingerprint "
                        f"{str(want)[:12]}..., the spec's {fingerprint(spec)[:12]}...); pass the --model it was "
                        "built from")


def noise_floor(spec, clip: Clip, initial_state: list | None = None) -> list[dict]:
    """Per output: NRMSE and max abs between the reference on the clip and on the clip moved by one ulp
    (both from the same initial state: the spec's, or `initial_state`)."""
    ref, _ = reference_run(spec, clip, initial_state=initial_state)
    perturbed, _ = reference_run(spec, clip, perturbed=True, initial_state=initial_state)
    return [{"nrmse": max(MIN_FLOOR, float(np.sqrt(np.mean((p - r) ** 2)) / max(float(np.std(r)), 1e-30))),
             "max_abs": float(np.max(np.abs(p - r))) if r.size else 0.0} for r, p in zip(ref, perturbed)]


def check(step: StepFn, initial_state: list, spec, clip: Clip = Clip(), *, reference_state: list | None = None,
          atol: float | None = None, rtol: float | None = None) -> dict:
    """Run `step` from `initial_state` over the clip and compare every output with the spec's reference:
    metrics, noise floor and tier reached (the loosest over the outputs; when none is reached, "tier_note"
    says which criterion of the quantised tier failed). The top-level metrics are the pulse output's (else
    the first output's); "outputs" has each output's.

    reference_state: the state the reference starts from, in the spec's state layout (default: the spec's
    initial state); give it when the candidate starts from another state than the spec's (a baseline's
    --state). atol/rtol (either; the other is 0): also compare every output and the final state element
    by element, |out - ref| <= atol + rtol * |ref| ("tolerance": per output and the state, passed or not)."""
    from .stream import StepError
    reference_run(spec, clip, initial_state=reference_state)  # computed (or read) before the candidate runs
    try:
        outs, state = run_steps(step, clip.feeds(spec), list(initial_state), desc="the candidate")
    except StepError as e:
        raise VerificationError(f"the candidate failed on the synthetic clip: {e}") from None
    return judge(spec, clip, outs, state, reference_state=reference_state, atol=atol, rtol=rtol)


def judge(spec, clip: Clip, outs: list, state: list, *, reference_state: list | None = None,
          atol: float | None = None, rtol: float | None = None) -> dict:
    """A candidate's outputs over the clip (each output stacked over the steps) and its final state, compared
    with the spec's reference (see check)."""
    ref_outs, ref_state = reference_run(spec, clip, initial_state=reference_state)
    floors = noise_floor(spec, clip, initial_state=reference_state)
    if len(outs) != len(ref_outs):
        raise VerificationError(f"the candidate has {len(outs)} outputs, the reference {len(ref_outs)}")
    names = spec.output_names(len(ref_outs))
    same_layout = len(state) == len(ref_state) and all(np.shape(a) == np.shape(b) for a, b in zip(state, ref_state))
    per_output = {}
    for name, r, c, floor in zip(names, ref_outs, outs, floors):
        try:
            m = metrics.compare(r, c, fps=clip.fps, hr=name == spec.pulse_output)
        except ValueError as e:
            raise VerificationError(f"output {name}: {e}") from None
        per_output[name] = {**metrics.with_floor(m, floor["nrmse"]), "noise_floor": floor}
        if per_output[name]["tier"] is None:
            per_output[name]["tier_note"] = f"below quantised: {metrics.missed(m, floor['nrmse'], 'quantised')}"
    primary = spec.pulse_output if spec.pulse_output in per_output else names[0]
    result = dict(per_output[primary])
    result["tier"] = metrics.loosest([o["tier"] for o in per_output.values()])
    if result["tier"] is None:
        result["tier_note"] = "below quantised: " + shortfall(per_output, "quantised")
    result["state_max_rel"] = metrics.state_max_rel(ref_state, state) if same_layout else None
    if not same_layout:  # e.g. a baseline model with its own state layout
        result["state_note"] = (f"the candidate's state ({len(state)} tensors) is not laid out like the reference's "
                                f"({len(ref_state)} tensors): final state not compared")
    if len(per_output) > 1:
        result["outputs"] = per_output
    if atol is not None or rtol is not None:
        result["tolerance"] = _tolerance(names, ref_outs, outs, ref_state, state, atol or 0.0, rtol or 0.0)
    result["clip"] = asdict(clip)
    result["reference"] = (f"{spec.name} ({spec.source.get('precision', 'float32')}, its own fn under jax.jit)"
                           if spec.reference_kind == "jax.jit" else f"{spec.name} ({spec.reference_kind})")
    if reference_state is not None:
        result["reference_initial_state"] = "given"  # not the spec's own initial state
    return result


def shortfall(outputs: dict, tier: str) -> str | None:
    """Why outputs (name -> metrics with their noise floor, as check's "outputs") miss `tier`: the failed
    criteria in words, prefixed by the output's name when there are several; None if they all meet it."""
    reasons = [(name, metrics.missed(o, o["noise_floor"]["nrmse"], tier)) for name, o in outputs.items()]
    reasons = [(n, r) for n, r in reasons if r is not None]
    if not reasons:
        return None
    return "; ".join(f"{n}: {r}" if len(outputs) > 1 else r for n, r in reasons)


def result_shortfall(result: dict, tier: str) -> str | None:
    """shortfall over a check result's outputs (its "outputs", or the result itself for one output)."""
    return shortfall(result.get("outputs") or {"": result}, tier)


def _tolerance(names, ref_outs, outs, ref_state, state, atol: float, rtol: float) -> dict:
    """Each output and the final state against the reference, elementwise (metrics.tolerance). A final
    state laid out otherwise than the reference's (tensor count, or a tensor's element count) is not
    compared."""
    report = {"atol": float(atol), "rtol": float(rtol),
              "outputs": {n: metrics.tolerance(r, c, atol, rtol) for n, r, c in zip(names, ref_outs, outs)}}
    if not state and not ref_state:
        report["state"], report["state_note"] = None, "the model has no state"
    elif len(state) == len(ref_state) and all(np.size(c) == np.size(r) for c, r in zip(state, ref_state)):
        per = [metrics.tolerance(r, c, atol, rtol) for r, c in zip(ref_state, state)]
        total = metrics.tolerance(list(ref_state), list(state), atol, rtol)
        total["failing_tensors"] = [i for i, t in enumerate(per) if not t["passed"]]
        report["state"] = total
    else:
        report["state"] = None
        report["state_note"] = (f"the candidate's state ({len(state)} tensors) is not laid out like the "
                                f"reference's ({len(ref_state)} tensors)")
    report["passed"] = all(t["passed"] for t in report["outputs"].values()) and \
        (report["state"] is None or report["state"]["passed"])
    return report


def format_tolerance(report: dict) -> str:
    """A tolerance report (check's "tolerance") as lines: one per output and one for the final state."""
    def line(label, t):
        rel = "n/a (reference all zero)" if t["max_rel"] is None else f"{t['max_rel']:.3g}"
        abs_ = "NaN/Inf" if t["max_abs"] is None else f"{t['max_abs']:.3g}"
        return (f"  {label:<17} {'PASS' if t['passed'] else 'FAIL'}  max abs error {abs_}, max rel "
                f"error {rel}; {t['failing']} of {t['elements']} elements fail ({100 * t['fraction']:.3g}%)")
    lines = [f"  tolerance         |out - ref| <= atol {report['atol']:g} + rtol {report['rtol']:g} * |ref|, "
             "every element over the clip"]
    lines += [line(f"[{name}]", t) for name, t in report["outputs"].items()]
    st = report["state"]
    if st is None:
        lines.append(f"  [final state]     not compared ({report.get('state_note', 'no state')})")
    else:
        bad = st.get("failing_tensors") or []
        more = f" (state tensors {', '.join(map(str, bad[:8]))}{', ...' if len(bad) > 8 else ''})" if bad else ""
        lines.append(line("[final state]", st) + more)
    return "\n".join(lines)


def tolerance_failures(report: dict) -> list[str]:
    """What failed a tolerance report, e.g. ["bvp (600 of 600 elements)", "final state (3 of 12 elements)"]."""
    out = [f"{n} ({t['failing']} of {t['elements']} elements)" for n, t in report["outputs"].items()
           if not t["passed"]]
    st = report["state"]
    if st is not None and not st["passed"]:
        out.append(f"final state ({st['failing']} of {st['elements']} elements)")
    return out
