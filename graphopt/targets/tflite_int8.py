"""TFLite int8 with per-layer precision (`--quantize int8`): the converter's dynamic-range kernels for the
layers graphopt.quantize chooses, float32 for the rest.

The TFLite converter has no per-layer switch for dynamic-range quantisation; QuantizationDebugger's denylists
are for full-integer (static) quantisation, which on FacePhys quantises the normalisations' elementwise math
too (r 0.44 against float32) and ran 5x slower than float32 here (11 ms a step against 2.0). So the graph is
converted twice, float32 and all-layers dynamic-range int8, from the same
tf.Module: the two flatbuffers have the same operators in the same order, and an operator whose weight
the converter stored as int8 is switched back to float32 by giving it the float model's weight tensor
(type, buffer, no quantisation parameters): LiteRT then runs its float kernel. Every int8 weight is
matched to its IR layer by value (the float model's weight holds the IR parameter's values in TFLite's
layout), so the manifest names IR layers and the choice is the target-neutral one of graphopt.quantize.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import quantize
from ..ir import Graph


def _fingerprint(a: np.ndarray) -> bytes:
    """A layout-independent key of a weight: its float32 values, sorted (a transpose keeps them)."""
    import hashlib
    return hashlib.sha256(np.sort(np.asarray(a, np.float32).reshape(-1)).tobytes()).digest()


class MixedModel:
    """The all-int8 model with a switch per int8 weight: `bytes(float_layers)` is the flatbuffer with those IR
    layers' weights float32."""

    def __init__(self, float_bytes: bytes, int8_bytes: bytes, graph: Graph):
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils as fbu
        self._fbu, INT8, FLOAT32 = fbu, schema.TensorType.INT8, schema.TensorType.FLOAT32
        F, Q = fbu.convert_bytearray_to_object(float_bytes), fbu.convert_bytearray_to_object(int8_bytes)
        self.model = Q
        code = lambda M, op: max(M.operatorCodes[op.opcodeIndex].builtinCode,
                                 M.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
        if len(F.subgraphs) != len(Q.subgraphs) or any(
                [code(F, o) for o in sf.operators or []] != [code(Q, o) for o in sq.operators or []]
                for sf, sq in zip(F.subgraphs, Q.subgraphs)):
            raise ValueError("the float32 and int8 conversions of the graph differ in their operators")
        by_key: dict[tuple, list] = {}
        for layer in quantize.eligible_layers(graph):
            w = next(n.inputs[1].const for n in graph.nodes if n.outputs and n.outputs[0].name == layer.name)
            by_key.setdefault(_fingerprint(w), []).append(layer)
        refs: dict[int, int] = {}
        for sg in Q.subgraphs:
            for t in sg.tensors or []:
                refs[t.buffer] = refs.get(t.buffer, 0) + 1
        self.slots: list[dict] = []  # one per int8 weight tensor: its IR layer and both versions
        self.unmatched = 0
        seen: set[tuple] = set()
        for si, (sf, sq) in enumerate(zip(F.subgraphs, Q.subgraphs)):
            for of, oq in zip(sf.operators or [], sq.operators or []):
                for tf_i, tq_i in zip(of.inputs, oq.inputs):
                    if tq_i < 0 or (si, tq_i) in seen or sq.tensors[tq_i].type != INT8 \
                            or sf.tensors[tf_i].type != FLOAT32:
                        continue
                    seen.add((si, tq_i))
                    tq, tf_ = sq.tensors[tq_i], sf.tensors[tf_i]
                    fdata = np.frombuffer(np.asarray(F.buffers[tf_.buffer].data, np.uint8).tobytes(), np.float32)
                    layer = next(iter(by_key.get(_fingerprint(fdata), [])), None)
                    if layer is None:
                        self.unmatched += 1
                        continue
                    Q.buffers.append(type(Q.buffers[0])())
                    self.slots.append({"layer": layer, "tensor": tq, "int8": (tq.type, tq.quantization, tq.buffer),
                                       "float": (FLOAT32, None, len(Q.buffers) - 1),
                                       "float_data": np.asarray(F.buffers[tf_.buffer].data, np.uint8),
                                       "int8_data": Q.buffers[tq.buffer].data,
                                       "int8_shared": refs.get(tq.buffer, 0) > 1})
        self.layers = [s["layer"] for s in self.slots]

    def bytes(self, float_layers: set[str] | frozenset = frozenset()) -> bytes:
        """The flatbuffer with these IR layers' weights float32, every other matched layer's int8."""
        Q = self.model
        for s in self.slots:
            t, is_float = s["tensor"], s["layer"].name in float_layers
            t.type, t.quantization, t.buffer = s["float"] if is_float else s["int8"]
            Q.buffers[s["float"][2]].data = s["float_data"] if is_float else None
            if not s["int8_shared"]:  # an int8 weight no float layer reads stays out of the file
                Q.buffers[s["int8"][2]].data = None if is_float else s["int8_data"]
        return self._fbu.convert_object_to_bytearray(Q)


def run_clip(model: bytes, state_mode: str, manifest: dict, initial_state: list,
             cal: quantize.Calibration) -> np.ndarray:
    """The judged output of a TFLite model over the calibration clip, state carried, run as the artifact will
    be (graphopt's TfliteStream: LiteRT, 1 thread, XNNPACK). A candidate whose step produces NaN/Inf gives NaN
    (it then meets no criterion)."""
    import tempfile
    from pathlib import Path

    from ..stream import StepError
    from .tflite import TfliteStream
    from .tf_module import STATE_CHECK
    man = dict(manifest, tflite={"state_mode": state_mode,
                                 **({"state_check": STATE_CHECK} if state_mode == "variables" else {})})
    with tempfile.TemporaryDirectory(prefix="graphopt-int8-") as d:
        path = Path(d) / "candidate.tflite"
        path.write_bytes(model)
        stream = TfliteStream(path, man, initial_state, threads=1)
        names = stream.input_names
        ys = []
        try:
            for f in cal.feeds:
                got = stream.step(*(f[n] for n in names))
                ys.append(np.asarray(got[man["outputs"][cal.output]["name"]] if isinstance(got, dict) else got,
                                     np.float64).reshape(-1))
        except StepError:
            return np.full(len(cal.feeds) * ys[0].size if ys else len(cal.feeds), np.nan)
        finally:
            del stream
    return np.concatenate(ys)


METHOD = ("per-layer mixed precision: TFLite dynamic-range int8 kernels (int8 per-channel weights, activations "
          "quantised per step) for the chosen layers, float32 for the others")


def build(graph: Graph, manifest: dict, float_bytes: bytes, int8_bytes: bytes, state_mode: str,
          log: Callable[[str], None] = lambda m: None) -> tuple[bytes, dict]:
    """(the chosen model's bytes, the manifest's "quantization" record)."""
    mixed = MixedModel(float_bytes, int8_bytes, graph)
    if not mixed.slots:
        return float_bytes, {"method": METHOD, "layers": [], "int8_layers": 0,
                             "note": "the converter quantised none of this graph's layers (e.g. CONV_3D is "
                                     "not dynamic-range quantised): the artifact is float32"}
    cal = quantize.calibration(graph)
    init = [s.init for s in graph.state]
    runs: dict[frozenset, np.ndarray] = {}
    all_names = {l.name for l in mixed.layers}

    def evaluate(int8: frozenset) -> np.ndarray:
        if int8 not in runs:
            runs[int8] = run_clip(mixed.bytes(all_names - int8) if int8 else float_bytes, state_mode, manifest,
                                  init, cal)
        return runs[int8]

    layers = mixed.layers
    all8 = quantize.compare(evaluate(frozenset()), evaluate(frozenset(all_names)), cal)
    if quantize.meets(all8):  # every layer int8 keeps the signal: nothing to keep float, nothing to rank
        plan = quantize.all_int8_plan(layers, all8, cal, METHOD, "dynamic")
    else:
        log(f"      int8: every layer int8 gives r {all8['pearson']:.6f} against float32; measuring each of the "
            f"{len(layers)} int8 layers' sensitivity on a {cal.frames}-frame calibration clip (LiteRT)")
        sens = quantize.sensitivity(layers, evaluate, cal, log=log)
        plan = quantize.choose(layers, sens, evaluate, cal, method=METHOD, scheme="dynamic", log=log,
                               measured_on="LiteRT with XNNPACK, 1 thread (the artifact's own runtime)")
    record = plan.record()
    if record["int8_flops_fraction"] < 0.5:
        log(f"      note: int8 keeps the signal in {record['int8_layers']} of {len(layers)} layers, "
            f"{100 * record['int8_flops_fraction']:.1f}% of their FLOPs: expect about float32 speed")
    if mixed.unmatched:
        record["unmatched_int8_weights"] = mixed.unmatched  # left int8: no IR layer has these values
    return mixed.bytes(plan.float_layers), record
