"""An ONNX file as a graphopt.ModelSpec: traced by the ONNX frontend, checked against onnxruntime
running the original file (the reference for verify, the noise floor and the release rows)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ...spec import ModelSpec, SpecError
from . import importer, pairing, reader
from .registry import OnnxImportError

MAX_NAME = 256
SOURCE_FORMAT = "onnx"  # source["format"] of a model imported from an ONNX file


def _stem(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64].lstrip(".-") or "model"
    return stem


class OnnxModel(ModelSpec):
    """A ModelSpec whose model is an ONNX file (see graphopt.frontends.onnx.load). Its inputs, outputs
    and state keep the file's names; `reference()` runs the original file in onnxruntime."""

    def _io_name(self, what: str, n) -> str:  # ONNX names are free text: kept as the file has them
        if not isinstance(n, str) or not n or len(n) > MAX_NAME or not n.isprintable():
            raise SpecError(f"{self.path}: {what} name {n!r:.40} must be 1 to {MAX_NAME} printable characters")
        return n

    # set by load()
    path: Path = None
    model_proto = None
    opset: int = 0
    pairs: list = ()
    fixed_shapes: dict = None

    def trace(self):
        graph = importer.to_ir(self.model_proto, self.opset, str(self.path), input_shapes=self.fixed_shapes,
                               state_pairs=self.pairs,
                               initial_state={i: s for (i, _), s in zip(self.pairs, self.state or [])},
                               name=self.name)
        graph.meta["onnx_metadata"] = {p.key: p.value for p in self.model_proto.metadata_props}
        inits = {t.name for t in self.model_proto.graph.initializer}
        graph.meta["io_order"] = {"inputs": [v.name for v in self.model_proto.graph.input if v.name not in inits],
                                  "outputs": [v.name for v in self.model_proto.graph.output]}
        graph.meta.update(model=self.name, fps=self.fps, source=self.source, frames_per_step=self.frames_per_step,
                          roles={"frame": self.frame_input, "dt": self.dt_input, "pulse": self.pulse_output})
        return graph

    @property
    def reference_kind(self) -> str:
        return f"onnxruntime on {self.path.name}"

    def reference(self) -> Callable:
        """onnxruntime on the original file: (*inputs, *state) -> (outputs, new state), one thread, graph
        optimisations off (the file's own arithmetic, node by node)."""
        if getattr(self, "_session", None) is None:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                self._session = ort.InferenceSession(self.model_proto.SerializeToString(), opts,
                                                     providers=["CPUExecutionProvider"])
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise OnnxImportError(f"{self.path}: onnxruntime cannot load the original model ({first}); "
                                      "the reference is onnxruntime running it") from None
        session = self._session
        names = list(self.inputs) + [i for i, _ in self.pairs]
        out_names = list(self.outputs) + [o for _, o in self.pairs]
        dtypes = [np.asarray(a).dtype for a in self.inputs.values()] + [s.dtype for s in self.state or []]
        n_out = len(self.outputs)

        def step(*args):
            feeds = {n: np.asarray(a, dt) for n, a, dt in zip(names, args, dtypes)}
            got = session.run(out_names, feeds)
            return tuple(got[:n_out]), tuple(got[n_out:])
        return step

    def fingerprint(self) -> str:
        """The file's bytes (external data included), the fixed shapes, the pairing and the initial state."""
        h = hashlib.sha256(self.model_proto.SerializeToString(deterministic=True))
        for k, a in self.inputs.items():
            h.update(f"{k}:{a.dtype.str}{a.shape}".encode())
        for (i, o), s in zip(self.pairs, self.state or []):
            h.update(f"{i}->{o}".encode())
            h.update(np.ascontiguousarray(s).tobytes())
        return h.hexdigest()


def _not_traced(*args):
    raise SpecError("an ONNX model is imported by the ONNX frontend, not traced by JAX")


def load(path: str | Path, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
         state_pairs: Sequence[str] | None = None, state: Sequence[np.ndarray] | Mapping[str, np.ndarray] | None = None,
         name: str | None = None, fps: float = 30.0, log=lambda m: None) -> OnnxModel:
    """An ONNX file as a ModelSpec.

    input_shapes: name -> shape for inputs with dynamic dimensions (a dynamic leading dim is 1 otherwise);
    state_pairs: "in:out" names of the recurrent state (default: found by name; see pairing);
    state: the initial state (a list in pair order, or input name -> array; default zeros)."""
    p = Path(path)
    model, opset = reader.read(p)
    pairs = pairing.find(model, p, pairing.parse_pairs(",".join(state_pairs)) if state_pairs is not None else None)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    fixed = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    unknown = sorted(set(fixed) - {vi.name for vi in graph_inputs})
    if unknown:
        raise OnnxImportError(f"{p}: --input-shape names {unknown}, which are not inputs of the model (its inputs: "
                              f"{[vi.name for vi in graph_inputs]})")
    state_names = [i for i, _ in pairs]
    inputs, state_vis = {}, {}
    for vi in graph_inputs:
        dtype = importer.np_dtype(vi.type.tensor_type.elem_type)
        if dtype is None or dtype.kind not in "fiub":
            raise OnnxImportError(f"{p}: input {vi.name!r} is not a tensor of numbers or booleans")
        shape = importer.io_shape(vi, fixed, p)
        if vi.name in state_names:
            state_vis[vi.name] = (shape, dtype)
        else:
            inputs[vi.name] = np.zeros(shape, dtype)
    if not inputs:
        raise OnnxImportError(f"{p}: the model has no input other than its state; graphopt compiles a step that takes "
                              "at least one (a frame, a sample)")
    init = _initial_state(p, state, pairs, state_vis)
    outputs = [vo.name for vo in model.graph.output if vo.name not in {o for _, o in pairs}]
    dt = next((k for k, a in inputs.items() if k.lower() == "dt" and a.size == 1 and a.dtype == np.float32
               and a.ndim <= 1), None)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    source = {"format": SOURCE_FORMAT, "file": p.name, "sha256": sha, "opset": opset,
              "producer": f"{model.producer_name} {model.producer_version}".strip()[:120]}
    spec = OnnxModel.__new__(OnnxModel)
    spec.path, spec.model_proto, spec.opset, spec.pairs, spec.fixed_shapes = p, model, opset, pairs, fixed
    ModelSpec.__init__(spec, name=name or _stem(p), fn=_not_traced, inputs=inputs,
                       state=init if pairs else None, outputs=outputs, dt_input=dt, fps=fps, source=source)
    if spec.frame_input is not None and spec.pulse_output is None:
        first = next(iter(outputs), None)  # an rPPG model's waveform: one sample per frame
        shape = _output_shape(model, first)
        if shape is not None and int(np.prod(shape)) == spec.frames_per_step:
            spec.pulse_output = first
    return spec


def _output_shape(model, name):
    for vo in model.graph.output:
        if vo.name == name and vo.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vo.type.tensor_type.shape.dim]
            return tuple(dims)
    return None


def _initial_state(p, state, pairs, state_vis) -> list[np.ndarray]:
    names = [i for i, _ in pairs]
    if state is None:
        return [np.zeros(*state_vis[n]) for n in names]
    if isinstance(state, Mapping):
        missing = [n for n in names if n not in state]
        if missing:
            raise OnnxImportError(f"{p}: the initial state has no tensor for state input(s) {missing[:4]}")
        state = [state[n] for n in names]
    state = list(state)
    if len(state) != len(names):
        raise OnnxImportError(f"{p}: the initial state has {len(state)} tensors, the model {len(names)} state "
                              f"inputs ({', '.join(names[:4])}{'...' if len(names) > 4 else ''})")
    out = []
    for n, s in zip(names, state):
        shape, dtype = state_vis[n]
        a = np.asarray(s)
        if a.size != int(np.prod(shape)):
            raise OnnxImportError(f"{p}: the initial state for {n!r} has shape {a.shape}, the input is {shape}")
        out.append(a.reshape(shape).astype(dtype))
    return out
