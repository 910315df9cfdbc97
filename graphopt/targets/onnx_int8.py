"""onnxruntime int8 with per-layer precision (`graphopt build --target onnx --quantize int8`): static QDQ
quantisation (onnxruntime.quantization.quantize_static: int8 per-channel weights, activation ranges
calibrated on graphopt.quantize's calibration clip) of the conv/matmul layers graphopt.quantize chooses;
the others, and everything that is not a conv or matmul (the state among it), stay float32.

Activations are uint8 and weights int8 (U8S8): on x86 onnxruntime fuses those QDQ groups into its fast
integer kernels (QLinearConv); int8 activations (S8S8) ran FacePhys slower than float32 here.

The model is stateful, so the calibration reader runs the float model itself to carry the state from step to
step and feeds each step's inputs and state to the calibrator. Ranges are computed once (onnxruntime's
calibration cache, a JSON file in a temporary folder) and every candidate set of layers is quantised from
them. Layers are matched to ONNX nodes by their weight: the emitter names every initializer after the IR
parameter it holds.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .. import artifact as art
from .. import quantize
from ..ir import Graph

OP_TYPES = ("Conv", "MatMul", "Gemm")
METHOD = ("per-layer mixed precision: onnxruntime static QDQ (int8 per-channel weights, uint8 activations and "
          "outputs with ranges calibrated on the calibration clip; U8S8, the form onnxruntime's x86 kernels run "
          "fastest) for the chosen layers, float32 for the others")


def _session(model_bytes: bytes):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


class _Steps:
    """Runs a model over the calibration clip with the state carried: yields each step's feeds (inputs and
    state) and then advances the state with the model's outputs."""

    def __init__(self, session, graph: Graph, cal: quantize.Calibration):
        self.session, self.cal = session, cal
        self.inputs = [v.name for v in graph.inputs]
        self.state_in, self.state_out = art.state_io_names(graph)
        self.out_names = list(graph.output_names) + list(self.state_out)
        self.state = [np.asarray(s.init) for s in graph.state]
        self.judged: list[np.ndarray] = []

    def __iter__(self):
        for f in self.cal.feeds:
            feeds = {n: np.asarray(f[n]) for n in self.inputs} | dict(zip(self.state_in, self.state))
            yield feeds
            got = self.session.run(self.out_names, feeds)
            n = len(self.out_names) - len(self.state_out)
            self.judged.append(np.asarray(got[self.cal.output], np.float64).reshape(-1))
            self.state = got[n:]


class _Reader:
    """onnxruntime's CalibrationDataReader over _Steps."""

    def __init__(self, steps: _Steps):
        self._it = iter(steps)

    def get_next(self):
        return next(self._it, None)


def run_clip(model_bytes: bytes, graph: Graph, cal: quantize.Calibration) -> np.ndarray:
    steps = _Steps(_session(model_bytes), graph, cal)
    for _ in steps:
        pass
    return np.concatenate(steps.judged)


def layer_nodes(model, graph: Graph) -> dict[str, str]:
    """IR layer name -> the name of the ONNX Conv/MatMul/Gemm node that computes it (matched by weight)."""
    by_weight = {l.weight: l.name for l in quantize.eligible_layers(graph)}
    out = {}
    for n in model.graph.node:
        if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1] in by_weight:
            out.setdefault(by_weight[n.input[1]], n.name)
    return out


def build(graph: Graph, model, log: Callable[[str], None] = lambda m: None):
    """(the chosen int8 model as an onnx.ModelProto, the manifest's "quantization" record)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    nodes = layer_nodes(model, graph)
    layers = [l for l in quantize.eligible_layers(graph) if l.name in nodes]
    if not layers:
        raise quantize.QuantizeError("the onnx graph has no Conv/MatMul/Gemm with a weight initializer to quantise")
    cal = quantize.calibration(graph)
    float_bytes = model.SerializeToString()
    all_names = {l.name for l in layers}
    log(f"      int8: {len(layers)} conv/matmul layers; calibrating activation ranges on a {cal.frames}-frame clip")
    with tempfile.TemporaryDirectory(prefix="graphopt-int8-") as d:
        src, cache = Path(d) / "float.onnx", Path(d) / "ranges.json"
        onnx.save_model(model, str(src))
        runs: dict[frozenset, np.ndarray] = {}

        def quantised(int8: frozenset):
            out = Path(d) / "int8.onnx"
            reader = _Reader(_Steps(_session(float_bytes), graph, cal)) if not cache.exists() else None
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warnings
            try:
                quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(OP_TYPES), per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                                nodes_to_quantize=sorted(nodes[n] for n in int8) or None,
                                nodes_to_exclude=sorted(nodes[n] for n in all_names - int8))
                # (no CalibMaxIntermediateOutputs: onnxruntime 1.31's MinMax calibrator drops every full batch
                # of outputs instead of merging its range; the ranges it keeps are two scalars per tensor)
            finally:
                root.setLevel(level)
            return onnx.load(str(out))

        def evaluate(int8: frozenset) -> np.ndarray:
            if int8 not in runs:
                runs[int8] = run_clip(float_bytes if not int8 else quantised(int8).SerializeToString(), graph, cal)
            return runs[int8]

        all8 = quantize.compare(evaluate(frozenset()), evaluate(frozenset(all_names)), cal)
        if quantize.meets(all8):
            plan = quantize.all_int8_plan(layers, all8, cal, METHOD, "static")
        else:
            log(f"      int8: every layer int8 gives r {all8['pearson']:.6f} against float32; measuring each of the "
                f"{len(layers)} layers' sensitivity (simulated on the IR)")
            sim = quantize.simulation(graph, layers, cal, "static")
            sens = quantize.sensitivity(layers, sim, cal, log=log)
            plan = quantize.choose(layers, sens, evaluate, cal, method=METHOD, scheme="static", log=log,
                                   measured_on=sim.measured_on)
        chosen = quantised(frozenset(plan.int8_layers))
    record = plan.record()
    if record["int8_flops_fraction"] < 0.5:
        log(f"      note: int8 keeps the signal in {record['int8_layers']} of {len(layers)} layers, "
            f"{100 * record['int8_flops_fraction']:.1f}% of their FLOPs: expect about float32 speed")
    for row in record["layers"]:
        row["onnx_node"] = nodes[row["name"]]
    return chosen, record
