"""Baseline artifacts: ONNX or TFLite step models graphopt did not build (e.g. the authors' own
tf2onnx and TFLite exports), run as Streams so that `verify` and `bench` treat them like ours.

A baseline step model has the signature (frame, dt, state_0..N-1) -> (output, state_0..N-1).
Inputs and outputs are matched by name where the names say their role (`input`/`frame`, `dt`,
`state_in_<i>`, `state_out_<i>`; the authors' convention), otherwise by position. The initial state
comes from a file (`--state`: npz, or the authors' gzip-JSON) or else from the reference model's
initial state, matched by position and checked by shape. With a state file, the reference starts from it
too (`reference_state`: the baseline's state in the reference's layout, by position, checked by shape), so
both start from the same state. `Stream.pairing` (see `pairing`) says which input is the frame, which is
dt, and which output each state input is carried to; `format_pairing` says it in one line.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np

from . import artifact as art
from .stream import Stream

FRAME_NAMES = ("frame", "input", "x", "image", "input_1")
SUFFIXES = (".onnx", ".tflite")  # the step-model files a baseline may be


class BaselineError(art.ArtifactError):
    """A baseline model that does not have the step signature, or a state that does not fit it."""


def _index(name: str) -> int | None:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else None


def order_io(inputs: list[tuple[str, tuple]], outputs: list[tuple[str, tuple]]):
    """(frame, dt, states) input names and (output, states) output names."""
    names = [n for n, _ in inputs]
    frame = next((n for n in names if n.lower() in FRAME_NAMES), None) or \
        next((n for n in names if "state" not in n.lower() and n.lower() != "dt"), names[0])
    dt = next((n for n in names if n.lower() == "dt"), None)
    if dt is None:  # unnamed: a rank-0 input, else a one-element one
        dt = next((n for n, s in inputs if n != frame and len(s) == 0), None) or \
            next((n for n, s in inputs if n != frame and int(np.prod(s)) == 1), None)
    if dt is None:
        raise BaselineError(f"the model's inputs {names} have no dt (a scalar seconds-per-frame input)")
    states = [n for n in names if n not in (frame, dt)]
    if all(_index(n) is not None for n in states):
        states.sort(key=_index)
    outs = [n for n, _ in outputs]
    state_like = [n for n in outs if "state" in n.lower() and _index(n) is not None]
    if len(state_like) == len(states):
        out = next(n for n in outs if n not in state_like)
        out_states = sorted(state_like, key=_index)
    else:
        out, out_states = outs[0], outs[1:]
    if len(out_states) != len(states):
        raise BaselineError(f"the model has {len(states)} state inputs but {len(out_states)} state outputs; "
                            "a step model returns (output, new state...) in the order of its state inputs")
    in_shapes, out_shapes = dict(inputs), dict(outputs)
    bad = [(i, o) for i, o in zip(states, out_states) if tuple(in_shapes[i]) != tuple(out_shapes[o])]
    if bad:
        i, o = bad[0]
        raise BaselineError(f"state input {i} {tuple(in_shapes[i])} is paired with output {o} "
                            f"{tuple(out_shapes[o])}: the outputs are not in state order and their names do not say "
                            "which is which (name them state_out_<i>, or export with signatures)")
    return (frame, dt, states), (out, out_states)


def pairing(frame: str, dt: str, states: list[str], out: str, out_states: list[str]) -> dict:
    """The roles order_io chose, and how: {"frame", "dt", "output", "state": [[state input, state output],
    ...], "matched": {"frame": "by name" | "by position", "dt": "by name" | "by shape", "state inputs":
    "by index in name" | "in input order", "outputs": "by name" | "by position"}}."""
    by_name_out = len(out_states) > 0 and all("state" in n.lower() and _index(n) is not None for n in out_states) \
        and "state" not in out.lower()
    return {"frame": frame, "dt": dt, "output": out, "state": [[i, o] for i, o in zip(states, out_states)],
            "matched": {"frame": "by name" if frame.lower() in FRAME_NAMES else "by position",
                        "dt": "by name" if dt.lower() == "dt" else "by shape",
                        "state inputs": "by index in name" if states and all(_index(n) is not None for n in states)
                        else "in input order",
                        "outputs": "by name" if by_name_out or not out_states else "by position"}}


def format_pairing(p: dict) -> str:
    """One line: e.g. "pairing: frame = input, dt = dt, output = output -> reference bvp; state_in_<i> ->
    state_out_<i> for i = 0..45 (state i = the reference's state leaf i); matched by name"."""
    pairs = p["state"]
    stem_i, stem_o = (re.sub(r"\d+$", "", n) for n in pairs[0]) if pairs else ("", "")
    if not pairs:
        states = "no state"
    elif all(i == f"{stem_i}{k}" and o == f"{stem_o}{k}" for k, (i, o) in enumerate(pairs)):  # in_k -> out_k
        states = f"{stem_i}<i> -> {stem_o}<i> for i = 0..{len(pairs) - 1}"
    else:
        states = ", ".join(f"{i} -> {o}" for i, o in pairs)
    if pairs and "reference_state" in p:
        states += " (state input i is the reference's state leaf i)"
    matched = p["matched"]
    how = "matched by name" if list(matched.values()) == ["by name", "by name", "by index in name", "by name"] \
        else "matched " + ", ".join(f"{k} {v}" for k, v in matched.items())
    ref = f" -> reference {p['reference_output']}" if p.get("reference_output") else ""
    start = f"; initial state: {p['initial_state']}" if p.get("initial_state") else ""
    return f"pairing: frame = {p['frame']}, dt = {p['dt']}, output = {p['output']}{ref}; {states}; {how}{start}"


def reference_state(state: list, spec, source: str = "the --state") -> list[np.ndarray]:
    """A baseline's initial state in the reference's state layout (matched by position, checked by shape:
    the same element count and the same dimensions apart from unit ones), so the reference's step starts
    from the state the baseline starts from. BaselineError says why it cannot."""
    leaves = spec.state_leaves
    why = f"the {spec.name} reference cannot start from {source}"
    if len(state) != len(leaves):
        raise BaselineError(f"{why}: the baseline carries {len(state)} state tensors, the reference {len(leaves)} "
                            "(is --model the model the baseline is an export of?)")
    out = []
    squeeze = lambda shape: tuple(d for d in shape if d != 1)
    for i, (s, leaf) in enumerate(zip(state, leaves)):
        s = np.asarray(s)
        if s.size != leaf.size or squeeze(s.shape) != squeeze(leaf.shape):
            raise BaselineError(f"{why}: state {i} has shape {tuple(s.shape)}, the reference's state leaf {i} "
                                f"{tuple(leaf.shape)} (the state is matched by position)")
        out.append(s.reshape(leaf.shape).astype(leaf.dtype))
    return out


MAX_STATE_JSON_BYTES = 32 << 20  # decompressed gzip-JSON state (FacePhys: about 6 MB); parsing costs ~10x in memory


def load_state_file(path: str | Path) -> list[np.ndarray]:
    """Initial state from an npz (arrays in key order state_in_0.. or arr_0..; never unpickled) or the
    authors' gzip-JSON (a list of nested lists of numbers, or a dict of them, in state order). Every
    tensor must be numeric and finite; the decompressed JSON is bounded (MAX_STATE_JSON_BYTES)."""
    p = Path(path)
    if not p.is_file():
        raise BaselineError(f"state file {p} does not exist")
    fix = "pass an npz of numeric arrays or the authors' gzip-JSON state"
    if p.suffix == ".npz":
        data = art.read_npz(p, None, "state file", fix)
        keys = sorted(data, key=lambda k: (_index(k) is None, _index(k) or 0, k))
        out = []
        for k in keys:
            with np.errstate(over="ignore"):
                a = np.asarray(data[k], np.float32)
            if not np.isfinite(a).all():  # finite in its own dtype (read_npz), not in float32: e.g. float64 1e300
                raise BaselineError(f"state file {p}: {k} holds numbers too large for float32; {fix}")
            out.append(a)
        return out
    try:
        with open(p, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
            text = f.read(MAX_STATE_JSON_BYTES + 1)
        if len(text) > MAX_STATE_JSON_BYTES:
            raise BaselineError(f"state file {p} decompresses to more than {MAX_STATE_JSON_BYTES >> 20} MiB; {fix}")
        data = json.loads(text)
    except BaselineError:
        raise
    except (OSError, ValueError, EOFError, RecursionError) as e:
        raise BaselineError(f"state file {p} is neither npz nor (gzip-)JSON ({type(e).__name__}); {fix}") from None
    if isinstance(data, dict):
        keys = sorted(data, key=lambda k: (_index(k) is None, _index(k) or 0, k))
        data = [data[k] for k in keys]
    if not isinstance(data, list) or not data:
        raise BaselineError(f"state file {p} holds no list of state tensors; {fix}")
    out = []
    for i, x in enumerate(data):
        try:
            if np.asarray(x).dtype.kind not in "biuf":  # strings ("1.5"), nulls, mixed lists: not numbers
                raise TypeError
            with np.errstate(over="ignore"):
                a = np.asarray(x, np.float32)
        except (ValueError, TypeError, RecursionError, OverflowError):
            raise BaselineError(f"state file {p}: tensor {i} is not a rectangular array of numbers; {fix}") from None
        if not np.isfinite(a).all():
            raise BaselineError(f"state file {p}: tensor {i} holds NaN/Inf (or numbers too large for float32); {fix}")
        out.append(a)
    return out


def fit_state(state: list[np.ndarray], shapes: list[tuple], source: str) -> list[np.ndarray]:
    if len(state) != len(shapes):
        raise BaselineError(f"{source} has {len(state)} state tensors, the model takes {len(shapes)}")
    out = []
    for i, (s, shape) in enumerate(zip(state, shapes)):
        if s.size != int(np.prod(shape)):
            raise BaselineError(f"state {i} from {source} has shape {s.shape}, the model's state input {i} "
                                f"is {tuple(shape)}")
        out.append(s.reshape(shape).astype(np.float32))
    return out


def _manifest(model: str, target: str, file: Path, frame_shape, out_shape, state_shapes, state_names) -> dict:
    return {"format": art.FORMAT, "model": getattr(model, "name", model), "target": target, "precision": "as exported", "file": file.name,
            "fps": 30.0, "baseline": True,
            "inputs": [{"name": "frame", "shape": list(frame_shape), "dtype": "float32", "role": "frame"},
                       {"name": "dt", "shape": [], "dtype": "float32", "role": "dt"}],
            "outputs": [{"name": "bvp", "shape": list(out_shape), "dtype": "float32"}],
            "state": [{"name": n, "shape": list(s), "dtype": "float32", "input": n, "output": n}
                      for n, s in zip(state_names, state_shapes)],
            "pipeline": {"passes": []}, "fixed_inputs": {}}


class OnnxBaseline(Stream):
    def __init__(self, path: Path, model: str, state: list | None, threads: int = 1):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BaselineError(f"onnxruntime cannot load {path}: {e}") from None
        ins = [(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape)) for i in self.session.get_inputs()]
        outs = [(o.name, tuple(d if isinstance(d, int) else 1 for d in o.shape)) for o in self.session.get_outputs()]
        (self._frame, self._dt, self._states), (self._out, self._out_states) = order_io(ins, outs)
        self.pairing = pairing(self._frame, self._dt, self._states, self._out, self._out_states)
        shapes = dict(ins)
        self._dt_shape = shapes[self._dt]
        state_shapes = [shapes[n] for n in self._states]
        super().__init__(_manifest(model, "onnx", path, shapes[self._frame], dict(outs)[self._out], state_shapes,
                                   self._states), _initial_state(model, state, state_shapes))
        self._reset()

    def _run(self, feeds, state):
        frame, dt = feeds
        feed = {self._frame: frame, self._dt: np.asarray(dt, np.float32).reshape(self._dt_shape)}
        feed.update(zip(self._states, state))
        res = self.session.run([self._out] + self._out_states, feed)
        return [res[0]], res[1:]


class TfliteBaseline(Stream):
    def __init__(self, path: Path, model: str, state: list | None, threads: int = 1):
        from .targets.tflite import interpreter
        self.interpreter = interpreter(path, threads)
        sigs = self.interpreter.get_signature_list()
        self._runner = None
        if sigs:  # signature names are the exporter's own (tensor names get prefixes and :0 suffixes)
            self._runner = self.interpreter.get_signature_runner(next(iter(sigs)))
            ins, outs = self._runner.get_input_details(), self._runner.get_output_details()
        else:
            self.interpreter.allocate_tensors()
            ins = {d["name"]: d for d in self.interpreter.get_input_details()}
            outs = {d["name"]: d for d in self.interpreter.get_output_details()}
        shape = lambda d: tuple(int(x) for x in d["shape"])
        (self._frame, self._dt, self._states), (self._out, self._out_states) = order_io(
            [(n, shape(d)) for n, d in ins.items()], [(n, shape(d)) for n, d in outs.items()])
        self.pairing = pairing(self._frame, self._dt, self._states, self._out, self._out_states)
        self._in = {n: d["index"] for n, d in ins.items()}
        self._outs = {n: d["index"] for n, d in outs.items()}
        self._dt_shape = shape(ins[self._dt])
        state_shapes = [shape(ins[n]) for n in self._states]
        super().__init__(_manifest(model, "tflite", path, shape(ins[self._frame]), shape(outs[self._out]),
                                   state_shapes, self._states), _initial_state(model, state, state_shapes))
        self._reset()

    def _run(self, feeds, state):
        frame, dt = feeds
        dt = np.asarray(dt, np.float32).reshape(self._dt_shape)
        if self._runner is not None:
            res = self._runner(**{self._frame: frame, self._dt: dt}, **dict(zip(self._states, state)))
            return [res[self._out]], [res[n] for n in self._out_states]
        it = self.interpreter
        it.set_tensor(self._in[self._frame], frame)
        it.set_tensor(self._in[self._dt], dt)
        for n, s in zip(self._states, state):
            it.set_tensor(self._in[n], s)
        it.invoke()
        return [it.get_tensor(self._outs[self._out])], [it.get_tensor(self._outs[n]) for n in self._out_states]


def _initial_state(model, state: list | None, shapes: list[tuple]) -> list[np.ndarray]:
    """The baseline's initial state: the state file's, or the reference model's (a name or a ModelSpec)."""
    if state is not None:
        return fit_state(state, shapes, "the state file")
    from . import models
    ref = models.resolve(model)
    return fit_state([np.asarray(s) for s in ref.initial_state], shapes, f"the {ref.name} reference's initial state")


def open_baseline(path: str | Path, model="facephys", state_file: str | None = None,
                  threads: int = 1) -> Stream:
    from . import trust
    p = Path(path)
    if not p.is_file():
        raise BaselineError(f"baseline model {p} does not exist")
    if p.suffix in SUFFIXES:
        trust.check_model_file(p, p.parent)  # what loading it may execute or read, before a runtime sees it
    state = load_state_file(state_file) if state_file else None
    if p.suffix == ".onnx":
        return OnnxBaseline(p, model, state, threads)
    if p.suffix == ".tflite":
        return TfliteBaseline(p, model, state, threads)
    raise BaselineError(f"{p}: a baseline must be an {' or '.join(SUFFIXES)} step model")


def is_baseline(path: str | Path) -> bool:
    """A model file with no graphopt manifest beside it."""
    p = Path(path)
    return p.is_file() and p.suffix in SUFFIXES and not art.manifest_path_for(p).is_file()
