"""The manifest's schema: every field graphopt reads from a manifest is checked here, at load, so a
missing key, a wrong type, an absurd number or a path that leaves the artifact folder is one
ArtifactError naming the field, never a traceback at the first step."""
from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath

from .errors import ArtifactError

FORMAT = "graphopt-artifact/1"
DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")
ROLES = ("frame", "dt", "input")
MAX_ELEMENTS = 1 << 28  # 1 GiB of float32 in one tensor: more is not an rPPG model's input or state
MAX_TOTAL_STATE = 1 << 28  # bytes of state (FacePhys: 2 MB)


class _Check:
    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, problem: str):
        raise ArtifactError(f"manifest {self.where}: {field} {problem}; rebuild the artifact (or fix the manifest)")

    def get(self, d: dict, key: str, kind, field: str, optional: bool = False):
        if key not in d or (optional and d[key] is None):
            if optional:
                return None
            self.fail(field, "is missing")
        v = d[key]
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.fail(field, f"must be a finite number, not {v!r:.40}")
            return float(v)
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(field, f"must be an integer, not {v!r:.40}")
            return v
        if not isinstance(v, kind):
            self.fail(field, f"must be a {getattr(kind, '__name__', kind)}, not {type(v).__name__}")
        return v


def safe_relative(c: _Check, value, field: str) -> str:
    """A path inside the artifact folder: relative, no '..', no drive or backslash tricks."""
    if not isinstance(value, str) or not value or "\0" in value or "\\" in value:
        c.fail(field, f"must be a file name inside the artifact folder, not {value!r:.60}")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or value.startswith("~"):
        c.fail(field, f"{value!r} points outside the artifact folder; paths in a manifest must stay inside it")
    return value


def resolve_inside(base: Path, rel: str, field: str) -> Path:
    """base/rel with links followed; ArtifactError if that leaves base."""
    base = Path(base).resolve()
    p = (base / rel).resolve()
    if p != base and base not in p.parents:
        raise ArtifactError(f"manifest {field} {rel!r} resolves to {p}, outside the artifact folder {base} "
                            "(through a link); refusing to open it")
    return p


def _tensor(c: _Check, spec, field: str, role_allowed: bool = False) -> tuple[int, ...]:
    if not isinstance(spec, dict):
        c.fail(field, "must be an object with name, shape and dtype")
    c.get(spec, "name", str, f"{field}.name")
    shape = c.get(spec, "shape", list, f"{field}.shape")
    if len(shape) > 8 or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        c.fail(f"{field}.shape", f"must be a list of at most 8 non-negative integers, not {shape!r:.60}")
    if math.prod(shape) > MAX_ELEMENTS:
        c.fail(f"{field}.shape", f"{shape} has more than {MAX_ELEMENTS} elements")
    dtype = c.get(spec, "dtype", str, f"{field}.dtype")
    if dtype not in DTYPES:
        c.fail(f"{field}.dtype", f"{dtype!r:.40} is not one of {', '.join(DTYPES)}")
    if role_allowed and spec.get("role", "input") not in ROLES:
        c.fail(f"{field}.role", f"{spec.get('role')!r:.40} is not one of {', '.join(ROLES)}")
    return tuple(shape)


def _view(c: _Check, view, shape: tuple, field: str) -> None:
    if not isinstance(view, list):
        c.fail(field, "must be a list of steps")
    for i, step in enumerate(view):
        f = f"{field}[{i}]"
        if not isinstance(step, dict) or step.get("op") not in ("transpose", "reshape"):
            c.fail(f, "must be {'op': 'transpose', 'perm': [...]} or {'op': 'reshape', 'shape': [...]}")
        if step["op"] == "transpose":
            perm = c.get(step, "perm", list, f"{f}.perm")
            if sorted(perm) != list(range(len(shape))) or any(isinstance(a, bool) for a in perm):
                c.fail(f"{f}.perm", f"{perm!r:.60} is not a permutation of the {len(shape)} axes")
            shape = tuple(shape[a] for a in perm)
        else:
            new = c.get(step, "shape", list, f"{f}.shape")
            if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in new) or \
                    math.prod(new) != math.prod(shape):
                c.fail(f"{f}.shape", f"{new!r:.60} does not hold the {math.prod(shape)} elements of {list(shape)}")
            shape = tuple(new)


def validate(m, where: str) -> dict:
    """Check a parsed manifest; returns it. `where` names the file in messages."""
    c = _Check(where)
    if not isinstance(m, dict):
        c.fail("the document", "must be a JSON object")
    fmt = m.get("format")
    if fmt != FORMAT:
        raise ArtifactError(f"manifest {where} has format {fmt!r:.40}, expected {FORMAT!r}; it was not written by "
                            "this graphopt")
    c.get(m, "target", str, "target")
    c.get(m, "model", str, "model")
    safe_relative(c, c.get(m, "file", str, "file"), "file")
    sha = c.get(m, "sha256", str, "sha256")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        c.fail("sha256", "must be 64 lowercase hex digits")
    inputs = c.get(m, "inputs", list, "inputs")
    outputs = c.get(m, "outputs", list, "outputs")
    if not inputs or not outputs:
        c.fail("inputs/outputs", "must not be empty")
    for i, spec in enumerate(inputs):
        _tensor(c, spec, f"inputs[{i}]", role_allowed=True)
    roles = [s.get("role", "input") for s in inputs]
    if roles.count("frame") > 1 or roles.count("dt") > 1:
        c.fail("inputs", f"must have at most one frame and at most one dt input (roles {roles})")
    for s in inputs:
        if s.get("role") == "frame" and len(s["shape"]) < 3:
            c.fail("inputs (frame)", f"must be (..., H, W, C) frames, not shape {s['shape']}")
    for i, spec in enumerate(outputs):
        _tensor(c, spec, f"outputs[{i}]")
    names = [s["name"] for s in inputs] + [s["name"] for s in outputs]
    if len(set(names)) != len(names):
        c.fail("inputs/outputs", "names must be distinct")
    state = c.get(m, "state", list, "state")
    total = 0
    for i, spec in enumerate(state):
        shape = _tensor(c, spec, f"state[{i}]")
        c.get(spec, "input", str, f"state[{i}].input")
        c.get(spec, "output", str, f"state[{i}].output")
        total += math.prod(shape) * 8
        if spec.get("view"):
            _view(c, spec["view"], shape, f"state[{i}].view")
    from .multistream import manifest_streams
    streams = manifest_streams(m)["n"] if m.get("streams") is not None else 1  # a multi-stream artifact
    for s in inputs:
        if s.get("role") == "dt" and math.prod(s["shape"]) != streams:
            c.fail("inputs (dt)", f"must hold one number per stream ({streams}), not shape {s['shape']}")
    if total > MAX_TOTAL_STATE:
        c.fail("state", f"holds more than {MAX_TOTAL_STATE >> 20} MiB")
    init = c.get(m, "initial_state", dict, "initial_state")
    safe_relative(c, c.get(init, "file", str, "initial_state.file"), "initial_state.file")
    if init.get("sha256") is not None and not re.fullmatch(r"[0-9a-f]{64}", str(init["sha256"])):
        c.fail("initial_state.sha256", "must be 64 lowercase hex digits")
    fps = c.get(m, "fps", float, "fps", optional=True)
    if fps is not None and not 0.1 <= fps <= 10000:
        c.fail("fps", f"must be a frame rate from 0.1 to 10000, not {fps}")
    per = c.get(m, "frames_per_step", int, "frames_per_step", optional=True)
    if per is not None and not 1 <= per <= 1 << 20:
        c.fail("frames_per_step", f"must be a positive count, not {per}")
    for key in ("max_dt",):
        v = c.get(m, key, float, key, optional=True)
        if v is not None and not 0 < v <= 3600:
            c.fail(key, f"must be a positive number of seconds, not {v}")
    fixed = c.get(m, "fixed_inputs", dict, "fixed_inputs", optional=True) or {}
    for k in fixed:
        v = c.get(fixed, k, float, f"fixed_inputs.{k}")
        if k == "dt" and not 0 < v <= 3600:
            c.fail("fixed_inputs.dt", f"must be a positive number of seconds, not {v}")
    graph = c.get(m, "graph", dict, "graph", optional=True) or {}
    for k in ("nodes", "params", "param_bytes", "state_bytes", "flops_per_step"):
        if k in graph:
            v = c.get(graph, k, float, f"graph.{k}")
            if v < 0:
                c.fail(f"graph.{k}", "must not be negative")
    pipeline = c.get(m, "pipeline", dict, "pipeline", optional=True) or {}
    for i, p in enumerate(c.get(pipeline, "passes", list, "pipeline.passes", optional=True) or []):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            c.fail(f"pipeline.passes[{i}]", "must be an object with a name")
    c.get(m, "source", dict, "source", optional=True)
    eq = c.get(m, "equivalence", dict, "equivalence", optional=True) or {}
    for k in ("tier_claimed", "tier"):
        if eq.get(k) is not None and eq[k] not in ("rounding", "signal", "quantised"):
            c.fail(f"equivalence.{k}", f"{eq[k]!r:.40} is not a tier (rounding, signal, quantised)")
    from .targets import MODULES, get
    files = [f.split(".", 1) for name in MODULES for f in get(name).manifest_files]  # e.g. xla.mlir
    for section, key in files:
        sec = m.get(section)
        if sec is not None:
            if not isinstance(sec, dict):
                c.fail(section, "must be an object")
            if sec.get(key) is not None:
                safe_relative(c, sec[key], f"{section}.{key}")
    return m
