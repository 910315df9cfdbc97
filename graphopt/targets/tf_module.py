"""A graph as a tf.Module with named signatures, for the TFLite converter and TF SavedModels.

Two state modes:
- "io": step(frame, dt, state_in_0..N-1) -> {bvp, state_out_0..N-1}; the caller carries the state.
- "variables": the state lives in the model as resource variables; step(frame, dt) -> {bvp,
  state_check} updates them, reset() restores the initial state, read_state() -> {state_out_i} reads
  it. `state_check` is 1.0 when every new state value is finite and 0.0 otherwise, so a Stream
  checks the step without reading the state back.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from .tf_lowering import import_tensorflow, lower_graph

STATE_MODES = ("variables", "io")
STATE_CHECK = "state_check"  # variables mode: step's extra output, finite iff the new state is


def input_specs(graph: Graph, manifest: dict, with_state: bool):
    tf = import_tensorflow()
    specs = [tf.TensorSpec(v.shape, v.dtype, name=spec["name"]) for v, spec in zip(graph.inputs, manifest["inputs"])]
    if with_state:
        specs += [tf.TensorSpec(s.input.shape, s.input.dtype, name=spec["input"])
                  for s, spec in zip(graph.state, manifest["state"])]
    return specs


def build_module(graph: Graph, manifest: dict, state_mode: str, jit_compile: bool = False):
    """(tf.Module, {signature name: concrete function}).

    The step functions trace the lowering as plain Python (autograph off): it has no tensor-dependent
    control flow, and its UnsupportedOpError then reaches the caller as itself, not as a StagingError."""
    tf = import_tensorflow()
    if state_mode not in STATE_MODES:
        raise ValueError(f"state mode {state_mode!r}: choose one of {', '.join(STATE_MODES)}")
    out_names = [o["name"] for o in manifest["outputs"]]
    state_out = [s["output"] for s in manifest["state"]]
    n_in = len(graph.inputs)
    module = tf.Module()
    if state_mode == "io":
        @tf.function(input_signature=input_specs(graph, manifest, True), jit_compile=jit_compile, autograph=False)
        def step(*args):
            outs, new = lower_graph(graph, list(args[:n_in]), list(args[n_in:]), xla=jit_compile)
            return dict(zip(out_names + state_out, outs + new))
        module.step = step
        return module, {"step": step.get_concrete_function()}

    module.state = [tf.Variable(s.init, name=spec["input"]) for s, spec in zip(graph.state, manifest["state"])]
    inits = [s.init for s in graph.state]

    @tf.function(input_signature=input_specs(graph, manifest, False), jit_compile=jit_compile, autograph=False)
    def step(*args):
        outs, new = lower_graph(graph, list(args), [v.read_value() for v in module.state], xla=jit_compile)
        for v, n in zip(module.state, new):
            v.assign(n)
        return {**dict(zip(out_names, outs)), STATE_CHECK: _all_finite(tf, new)}

    @tf.function(input_signature=[])
    def reset():
        for v, init in zip(module.state, inits):
            v.assign(init)
        return {"reset": tf.constant(0, tf.int32)}

    @tf.function(input_signature=[])
    def read_state():
        return dict(zip(state_out, [v.read_value() for v in module.state]))

    module.step, module.reset, module.read_state = step, reset, read_state
    return module, {"step": step.get_concrete_function(), "reset": reset.get_concrete_function(),
                    "read_state": read_state.get_concrete_function()}


def _all_finite(tf, tensors) -> "tf.Tensor":
    """1.0 where every value of every float tensor is finite, else 0.0, computed where XNNPACK runs it: x - x
    is 0 for a finite x and NaN for NaN and +-Inf, a sum of zeros is exactly 0 (no saturation: LiteRT's SUM
    saturates at FLT_MAX, so a sum of the values themselves would be no test) and a sum with a NaN is NaN;
    one scalar comparison at the end. (The earlier form, |x| <= FLT_MAX per element with LESS_EQUAL and CAST,
    ran outside XNNPACK and took about half of an int8 FacePhys step.)"""
    sums = [tf.reduce_sum(t - t) for t in tensors if t.dtype.is_floating]
    if not sums:
        return tf.constant(1.0)
    return tf.cast(tf.equal(tf.add_n(sums), 0.0), tf.float32)


def save(module, signatures: dict, path: Path) -> None:
    tf = import_tensorflow()
    tf.saved_model.save(module, str(path), signatures=signatures)


# weight precision variants (--quantize): name -> (manifest precision, tier it can claim)
WEIGHT_VARIANTS = {None: ("float32", None), "fp16": ("float16 weights", "signal"),
                   "int8": ("int8 mixed precision (dynamic-range int8 layers chosen by measured sensitivity, "
                            "the rest float32)", "signal"),
                   "int8-dynamic": ("int8 dynamic-range weights", "quantised")}
# what the CLI's --quantize help says of each
WEIGHT_HELP = {"fp16": "float16 weights (signal tier)",
               "int8": "int8 where measured sensitivity allows, the most sensitive layers float32 (signal tier)",
               "int8-dynamic": "every layer's weights int8 dynamic-range (quantised tier)"}


def to_tflite(module, signatures: dict, state_mode: str, weights: str | None = None) -> bytes:
    """Convert through a SavedModel (keeps resource variables and their initial values).

    weights: None (float32), "fp16" (float16 weights, dequantised at load) or "int8-dynamic" (every conv/
    matmul weight the converter quantises stored int8, run by dynamic-range kernels: the kind of artifact
    the FacePhys authors published). "int8" (per-layer) is built from the float32 and int8-dynamic
    conversions (graphopt.targets.tflite_int8)."""
    tf = import_tensorflow()
    with tempfile.TemporaryDirectory() as d:
        save(module, signatures, Path(d))
        conv = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=list(signatures))
        conv.experimental_enable_resource_variables = state_mode == "variables"
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: runs on plain LiteRT
        if weights == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif weights == "int8-dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        elif weights is not None:
            raise art.ArtifactError(f"weight precision {weights!r}: choose fp16 or int8-dynamic")
        try:
            return conv.convert()
        except Exception as e:
            raise art.ArtifactError(f"the TFLite converter failed: {converter_error(str(e))}") from None


def _strip_loc(msg: str) -> str:
    """An MLIR diagnostic without its leading loc(...) (nested parentheses) and the colon after it."""
    msg = msg.strip()
    if not msg.startswith("loc("):
        return msg
    depth = 0
    for i, ch in enumerate(msg[3:], 3):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return msg[i + 1:].lstrip(": ").strip()
    return msg


def converter_error(text: str, limit: int = 300) -> str:
    """The TFLite converter's failure in one line: its `error:` diagnostics without their source locations
    (which TF op could not be converted, and why), deduplicated, then the ops it lists as needing TF Select
    (Flex) or custom kernels; the last line of the text where it has no such lines. At most `limit` chars."""
    errors, lists = [], []
    for line in text.splitlines():
        if "error:" in line:
            msg = _strip_loc(line.split("error:", 1)[1])
            if msg.startswith("failed while converting"):
                continue  # the summary; the ops it names come from the lists below
        elif line.strip().startswith(("TF Select ops:", "Custom ops:")):
            lists.append(line.strip())
            continue
        else:
            continue
        if msg and msg not in errors:
            errors.append(msg)
    parts = errors + [x for x in dict.fromkeys(lists)]
    if not parts:
        lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
        parts = lines[-1:] or ["(no message)"]
    one = "; ".join(parts)
    return one if len(one) <= limit else one[:limit - 3].rstrip() + "..."


def initial_state(graph: Graph) -> list[np.ndarray]:
    return [s.init for s in graph.state]
