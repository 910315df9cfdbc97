"""Target `tflite`: IR -> TensorFlow ops -> `.tflite` (TFLite converter, builtin ops only), run with
ai-edge-litert and its XNNPACK delegate.

State modes (option `state_mode`, CLI `--state-mode`):
- "variables" (default): the state lives inside the model as resource variables. Signatures:
  `step(frame, dt) -> {bvp}`, `reset() -> {}`, `read_state() -> {state_out_i}`. The user sets
  only the frame each step.
- "io": `step(frame, dt, state_in_i...) -> {bvp, state_out_i...}`, for runtimes without
  resource variables; the caller carries the state.
A graph without state (a chunk model) has nothing to keep in variables: it is always emitted in
io mode (`step(inputs) -> outputs`), and the manifest says so when variables mode was asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from ..stream import Stream
from . import Option, Target, Variant
from .tf_lowering import TABLE  # noqa: F401  (the target's lowering table)
from .tf_module import STATE_CHECK, STATE_MODES, WEIGHT_HELP, WEIGHT_VARIANTS, build_module, to_tflite

NAME = "tflite"
SUFFIX = ".tflite"
TARGET = Target(NAME, emits=".tflite (builtin ops)", backend="LiteRT + XNNPACK",  # convs channels-last
                variants=(Variant("tflite"), Variant("tflite-io", {"state_mode": "io"}, needs_state=True),
                          Variant("tflite-fp16", {"quantize": "fp16"}), Variant("tflite-int8", {"quantize": "int8"}),
                          Variant("tflite-int8-dynamic", {"quantize": "int8-dynamic"})),
                options=(Option("--state-mode", "state inside the model as resource variables (default) or as "
                                "inputs/outputs", choices=STATE_MODES),
                         Option("--quantize", "; ".join(f"{k}: {v}" for k, v in WEIGHT_HELP.items()),
                                choices=tuple(k for k in WEIGHT_VARIANTS if k))),
                packages=("tensorflow-cpu", "ai-edge-litert"))


def available() -> tuple[bool, str]:
    """Whether this machine builds (and runs) TFLite artifacts: the TFLite converter is TensorFlow's."""
    try:
        import tensorflow  # noqa: F401
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError as e:
        return False, f"{e.name} is not installed (pip install tensorflow-cpu ai-edge-litert; see requirements.txt)"
    return True, ""


def runtime_available() -> tuple[bool, str]:
    """Whether this machine runs TFLite artifacts (graphopt.load): LiteRT alone, TensorFlow is not imported
    (importing it takes seconds and fills stderr with its start-up log)."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError as e:
        return False, f"{e.name} is not installed (pip install ai-edge-litert, or graphopt[tflite])"
    return True, ""


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    options = options or {}
    state_mode = options.get("state_mode", "variables")
    if state_mode not in STATE_MODES:
        raise art.ArtifactError(f"tflite state mode {state_mode!r} is not one of {', '.join(STATE_MODES)}")
    requested = state_mode
    if not graph.state:
        state_mode = "io"  # the converter drops a read_state signature with no outputs
    elif graph.meta.get("streams") and "state_mode" not in options:
        state_mode = "io"  # a multi-stream step puts back the state of idle streams: the state must be I/O
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_file = out_dir / f"{stem}{SUFFIX}"
    weights = options.get("quantize")
    if weights not in WEIGHT_VARIANTS:
        raise art.ArtifactError(f"tflite weight precision {weights!r} is not one of "
                                f"{', '.join(k for k in WEIGHT_VARIANTS if k)}")
    precision, tier = WEIGHT_VARIANTS[weights]
    manifest = art.describe_graph(graph, model_file.name, NAME,
                                  precision if weights else options.get("precision", "float32"))
    if tier:
        manifest["precision_tier"] = tier  # the loosest tier this precision can claim
    module, signatures = build_module(graph, manifest, state_mode)
    if weights == "int8":  # per layer, chosen by measured sensitivity (graphopt.quantize)
        from . import tflite_int8
        from .. import quantize
        try:
            model, manifest["quantization"] = tflite_int8.build(
                graph, manifest, to_tflite(module, signatures, state_mode),
                to_tflite(module, signatures, state_mode, "int8-dynamic"), state_mode, log=options.get("log") or _log)
        except quantize.QuantizeError as e:
            raise art.ArtifactError(f"{e}; build --quantize int8-dynamic (quantised tier) or fp16 instead") from None
        model_file.write_bytes(model)
    else:
        model_file.write_bytes(to_tflite(module, signatures, state_mode, weights))
    if state_mode == "io":
        delegation = delegate_summary(model_file)
    else:  # LiteRT's Python API lists the ops of the first subgraph only: measure the io-mode twin
        twin = out_dir / f".{stem}.io-twin.tflite"
        twin.write_bytes(to_tflite(*build_module(graph, manifest, "io"), "io"))
        delegation = dict(delegate_summary(twin), measured_on="io-mode twin (the variables-mode step adds "
                          "VAR_HANDLE/READ_VARIABLE/ASSIGN_VARIABLE around it, which run outside XNNPACK)")
        twin.unlink()
    manifest["sha256"] = art.sha256(model_file)
    manifest["tflite"] = {"state_mode": state_mode, "signatures": sorted(signatures),
                          **({"state_check": STATE_CHECK} if state_mode == "variables" else {}),
                          "tensor_dtypes": tensor_dtypes(model_file), **delegation}
    stored = {"fp16": "float16", "int8": "int8", "int8-dynamic": "int8"}.get(weights)
    if stored and not manifest["tflite"]["tensor_dtypes"].get(stored):
        # e.g. dynamic-range quantisation skips CONV_3D: nothing was stored narrower, so claim nothing looser
        manifest["precision"] = f"float32 ({weights} asked for; the converter stored no {stored} weights)"
        manifest.pop("precision_tier", None)
    if requested != state_mode and graph.state:
        manifest["tflite"]["state_mode_note"] = ("a multi-stream step puts back the state of idle streams: "
                                                 "emitted in io mode")
    elif requested != state_mode:
        manifest["tflite"]["state_mode_note"] = (f"state mode {requested!r} was asked for, but the graph has no "
                                                 "state: emitted in io mode (step alone)")
    manifest["tools"] = art.tool_versions("tensorflow-cpu", "ai-edge-litert")
    return art.finish(graph, model_file, manifest)


def _log(msg: str) -> None:
    from ..console import log
    log(msg)


def tensor_dtypes(model_file: Path) -> dict[str, int]:
    """How many tensors of every subgraph (weights included) have each dtype, read from the flatbuffer
    (LiteRT's Python API lists the first subgraph's tensors only)."""
    from tensorflow.lite.python import schema_py_generated as schema
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(Path(model_file).read_bytes(), 0)
    counts: dict[str, int] = {}
    for i in range(model.SubgraphsLength()):
        sub = model.Subgraphs(i)
        for j in range(sub.TensorsLength()):
            name = names.get(sub.Tensors(j).Type(), "unknown")
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def interpreter(model_file: Path, threads: int = 1, resolver=None):
    from ai_edge_litert.interpreter import Interpreter
    kw = {"experimental_op_resolver_type": resolver} if resolver is not None else {}
    try:
        return Interpreter(model_path=str(model_file), num_threads=threads, **kw)
    except (ValueError, RuntimeError) as e:
        raise art.ArtifactError(f"LiteRT cannot load {model_file}: {e}") from None


def delegate_summary(model_file: Path, threads: int = 1) -> dict:
    """Ops of the step subgraph, and into how many XNNPACK delegate partitions LiteRT cuts it.

    (LiteRT's Python API lists the nodes of the first subgraph only, and after delegation it still
    lists the replaced nodes next to the DELEGATE nodes, so the partition count is what it tells.)"""
    from ai_edge_litert.interpreter import OpResolverType
    plain = interpreter(model_file, threads, resolver=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    ops: dict[str, int] = {}
    for o in plain._get_ops_details():
        ops[o["op_name"]] = ops.get(o["op_name"], 0) + 1
    it = interpreter(model_file, threads)
    it.allocate_tensors()  # applies the XNNPACK delegate
    partitions = sum(o["op_name"] == "DELEGATE" for o in it._get_ops_details())
    return {"ops": sum(ops.values()), "op_histogram": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "xnnpack_partitions": partitions}


class TfliteStream(Stream):
    """In variables mode the state lives inside the interpreter: a step is checked by reading it back
    (`read_state`), and a refused step (NaN/Inf) resets it to the initial state, since LiteRT has no
    way to put the previous state back; in io mode the Stream carries the state like the others."""

    def __init__(self, model_file: Path, manifest: dict, initial_state, threads: int = 1):
        super().__init__(manifest, initial_state)
        self.interpreter = interpreter(model_file, threads)
        self.state_mode = manifest.get("tflite", {}).get("state_mode", "io")
        try:
            self._step = self.interpreter.get_signature_runner("step")
            if self.state_mode == "variables":
                self._reset_runner = self.interpreter.get_signature_runner("reset")
                self._read = self.interpreter.get_signature_runner("read_state")
        except ValueError as e:
            raise art.ArtifactError(f"{model_file} lacks a signature its manifest names ({e}); rebuild the "
                                    "artifact") from None
        self._out = [o["name"] for o in manifest["outputs"]]
        self._check_name, self._check = manifest.get("tflite", {}).get("state_check"), None
        self._check_signature(model_file)
        self._state_in = [s["input"] for s in manifest["state"]]
        self._state_out = [s["output"] for s in manifest["state"]]
        self.state_settable = self.state_mode != "variables"
        self.state_settable_fix = "build it with --state-mode io"
        self._bind_buffers()
        self._reset()

    def _bind_buffers(self) -> None:
        """The step's inputs and outputs as NumPy views of the interpreter's own tensors, so a step writes the
        frame (and dt) in place and invokes (LiteRT's signature runner resizes and re-allocates every input and
        copies every tensor in and out on each call: in io mode two copies of the whole state a step). In io
        mode the new state is read from the output tensors and copied into the state inputs only before the
        next step; LiteRT keeps graph inputs intact through a step (its arena never reuses them), so after a
        refused step the state inputs still hold the last good state. The views stay valid because nothing
        resizes or re-allocates the step's tensors after this. Where a tensor cannot be bound the Stream keeps
        the signature runner (self._fast False)."""
        self._fast = False
        try:
            w, sub = self.interpreter._interpreter, self._step._subgraph_index
            w.AllocateTensors(sub)
            ins, outs = self._step._inputs, dict(self._step._outputs)
            view = lambda name, table: w.tensor(w, table[name], sub)
            self._in_views = [view(n, ins) for n in self.input_names]
            self._out_views = [view(n, outs) for n in self._out]
            self._check_view = view(self._check_name, outs) if self.state_mode == "variables" and \
                self._check_name else None
            # a 0-d tensor comes back as a NumPy scalar, not a view: set and read it through the wrapper
            self._setters = [(lambda x, v=v: v.__setitem__(..., x)) if isinstance(v, np.ndarray) else
                             (lambda x, i=ins[n]: w.SetTensor(i, np.asarray(x), sub))
                             for n, v in zip(self.input_names, self._in_views)]
            self._getters = [(lambda v=v: np.array(v)) if isinstance(v, np.ndarray) else
                             (lambda i=outs[n]: np.array(w.GetTensor(i, sub)))
                             for n, v in zip(self._out, self._out_views)]
            if self._check_view is not None and not isinstance(self._check_view, np.ndarray):
                self._check_view = np.asarray(0.0)  # read below through the wrapper
                self._check_get = lambda i=outs[self._check_name]: np.array(w.GetTensor(i, sub))
            else:
                self._check_get = lambda: np.array(self._check_view)
            self._state_in_views = [view(n, ins) for n in self._state_in] if self.state_mode == "io" else []
            self._state_out_views = [view(n, outs) for n in self._state_out] if self.state_mode == "io" else []
            specs = self._input_specs + [(tuple(s["shape"]), np.dtype(s["dtype"])) for s in self.manifest["state"]
                                         if self.state_mode == "io"]
            if any(np.shape(v) != shape or np.asarray(v).dtype != dtype for v, (shape, dtype) in
                   zip(self._in_views + self._state_in_views, specs)) or \
                    not all(isinstance(v, np.ndarray) for v in self._state_in_views + self._state_out_views):
                return
            self._invoke, self._sub = w.Invoke, sub
            self._zeros = {v.size: np.zeros(v.size, v.dtype) for v in self._state_out_views}
            self._fast = True
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError):
            self._fast = False  # another LiteRT version: the signature runner's path

    def _check_signature(self, model_file: Path) -> None:
        """The step signature's inputs are the manifest's, with its shapes and dtypes (LiteRT's runner would
        otherwise resize an input to whatever it is given)."""
        specs = list(self.manifest["inputs"])
        if self.state_mode == "io":
            specs += [{"name": s["input"], "shape": s["shape"], "dtype": s["dtype"]} for s in self.manifest["state"]]
        have = self._step.get_input_details()
        for spec in specs:
            d = have.get(spec["name"])
            if d is None or tuple(int(x) for x in d["shape"]) != tuple(spec["shape"]) or \
                    np.dtype(d["dtype"]) != np.dtype(spec["dtype"]):
                got = "absent" if d is None else f"{np.dtype(d['dtype'])} {tuple(int(x) for x in d['shape'])}"
                raise art.ArtifactError(f"{model_file}: input {spec['name']} is {got} in the model, "
                                        f"{spec['dtype']} {tuple(spec['shape'])} in the manifest; rebuild the artifact")

    def _run(self, feeds, state):
        if self._fast:
            for put, view, x in zip(self._setters, self._in_views, feeds):
                put(np.asarray(x).reshape(np.shape(view)))
            if self.state_mode == "io" and state is not self._state_in_views:
                for view, x in zip(self._state_in_views, state):
                    np.copyto(view, x)
            self._invoke(self._sub)
            outs = [get() for get in self._getters]
            if self.state_mode == "variables":
                self._check = None if self._check_view is None else self._check_get()
                return outs, None
            return outs, self._state_out_views
        if self.state_mode == "variables":
            got = self._step(**dict(zip(self.input_names, feeds)))
            self._check = got.get(self._check_name) if self._check_name else None
            return [got[n] for n in self._out], None
        out = self._step(**dict(zip(self.input_names, feeds)), **dict(zip(self._state_in, state)))
        return [out[n] for n in self._out], [out[n] for n in self._state_out]

    def _state_finite(self, state) -> bool:
        if self.state_mode != "variables":
            if self._fast and state is self._state_out_views:  # x @ 0 is NaN for a NaN or +-Inf x, else 0
                with np.errstate(invalid="ignore"):
                    return bool(np.isfinite(sum(float(v.reshape(-1) @ self._zeros[v.size]) for v in state)))
            return super()._state_finite(state)
        if self._check is not None:  # computed by the step itself: no read-back of the state
            return bool(np.all(np.asarray(self._check) == 1.0))
        return super()._state_finite(self._read_variables())  # artifacts built before state_check

    def _restore(self, before) -> str:
        if self.state_mode == "variables":
            self._reset()  # the interpreter's variables already hold the refused step's state
            return "the state was reset to the initial state (LiteRT keeps it inside the model)"
        if self._fast:  # the state inputs still hold the state the refused step started from
            return super()._restore(self._state_in_views)
        return super()._restore(before)

    def _reset(self) -> None:
        if self.state_mode == "variables":
            self._reset_runner()
            self._state = None
        else:
            super()._reset()

    def _read_variables(self) -> list[np.ndarray]:
        got = self._read()
        return [np.asarray(got[n]) for n in self._state_out]

    @property
    def native_state(self) -> list[np.ndarray]:
        if self.state_mode == "variables":
            with self._lock:
                return self._read_variables()
        return super().native_state


def open_stream(model_file: Path, manifest: dict, initial_state, threads: int = 1) -> TfliteStream:
    return TfliteStream(model_file, manifest, initial_state, threads=threads)


def inspect_summary(manifest: dict) -> dict:
    """What `graphopt inspect` adds for a TFLite artifact: its own op count and histogram, XNNPACK's cut."""
    if "tflite" not in manifest:
        return {}
    t = manifest["tflite"]
    q = manifest.get("quantization") or {}
    return dict(state_mode=t["state_mode"], xnnpack_partitions=t["xnnpack_partitions"], tflite_ops=t["ops"],
                ops=t["op_histogram"], nodes=t["ops"], tensor_dtypes=t.get("tensor_dtypes"),
                **({"int8_layers": q["int8_layers"], "float_layers": q["float_layers"],
                    "int8_flops_fraction": q["int8_flops_fraction"]} if q.get("layers") else {}))


def inspect_lines(s: dict) -> list[str]:
    if "xnnpack_partitions" not in s:
        return []
    lines = [f"  XNNPACK     {s['tflite_ops']} TFLite ops cut into {s['xnnpack_partitions']} delegate "
             f"partitions (state mode {s['state_mode']})"]
    if "int8_layers" in s:  # --quantize int8: the per-layer choice (the manifest's "quantization" has each layer)
        lines.append(f"  int8        {s['int8_layers']} conv/matmul layers int8, {s['float_layers']} float32 "
                     f"({100 * s['int8_flops_fraction']:.0f}% of their FLOPs int8)")
    return lines


def card_snippet(c) -> list[str]:
    """The model card's code that runs the artifact (c: release.Snippet)."""
    return ["# LiteRT" + (" (state inside the model)" if c.stateful else ""),
            "from ai_edge_litert.interpreter import Interpreter",
            f"it = Interpreter('{c.folder}/{c.model}.tflite', num_threads=1); step = it.get_signature_runner('step')",
            f"bvp = step({', '.join(f'{n}={n}' for n in c.inputs)})['bvp']"
            + ("  # reset: it.get_signature_runner('reset')()" if c.stateful else "")]
