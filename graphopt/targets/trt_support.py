"""What TensorRT's ONNX parser accepts, checked two ways:

- with TensorRT-RTX installed (`tensorrt_rtx`, CPU-importable): its own OnnxParser parses the file
  (real messages per unsupported node) and, on request, its builder builds a serialized engine;
- otherwise against a table of TensorRT 10's documented ONNX operator support (opset 9-20), written
  from onnx-tensorrt's docs/operators.md.

TensorRT-RTX is a different product from datacenter TensorRT (engines are not interchangeable and
op support may differ): it proves that the graph parses and builds, not TensorRT's numerics.
"""
from __future__ import annotations

import time
from pathlib import Path

OPSET_RANGE = (9, 20)
# ONNX operators TensorRT 10 supports (some with restrictions, noted in RESTRICTIONS)
SUPPORTED = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DFT DeformConv DepthToSpace DequantizeLinear Div Dropout
DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN
LSTM MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
""".split())
RESTRICTIONS = {
    "Conv": "2D or 3D only; weights must be an initializer",
    "ConvTranspose": "2D or 3D only; weights must be an initializer",
    "CumSum": "axis must be an initializer",
    "Einsum": "no ellipsis, no diagonal operations, no broadcasting between inputs",
    "Slice": "axes must be an initializer",
    "Squeeze": "axes must be an initializer",
    "Unsqueeze": "axes must be a constant",
    "MaxPool": "2D or 3D only; no Indices output",
    "AveragePool": "2D or 3D only",
}
# ONNX tensor element types TensorRT computes in (DOUBLE is cast down to FLOAT with clamping)
SUPPORTED_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL"})


def import_tensorrt():
    """The datacenter `tensorrt` module, or None. Broken installs raise ImportError on import
    (e.g. `libnvonnxparser.so.11` missing from tensorrt-cu12-bindings), not only ModuleNotFoundError."""
    try:
        import tensorrt
        return tensorrt
    except (ImportError, OSError):
        return None


def import_tensorrt_rtx():
    try:
        import tensorrt_rtx
        return tensorrt_rtx
    except (ImportError, OSError):
        return None


def cuda_gpu_present() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def check_onnx(path: Path, build_engine: bool = False) -> dict:
    """Check an ONNX file for TensorRT. Returns {"checker", "ok", "unsupported": [{node, op, message}], ...}."""
    rtx = import_tensorrt_rtx()
    if rtx is not None:
        return _check_with_parser(rtx, path, build_engine)
    return _check_with_table(path)


def _check_with_parser(trt, path: Path, build_engine: bool) -> dict:
    import onnx
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    model = onnx.load(str(path))
    names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)]
    ok = parser.parse(model.SerializeToString(), str(Path(path).parent))
    unsupported = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        idx = e.node()
        unsupported.append({"node": e.node_name() or (names[idx] if 0 <= idx < len(names) else "?"),
                            "op": e.node_operator() or (model.graph.node[idx].op_type if 0 <= idx < len(names) else "?"),
                            "message": e.desc()})
    ops = sorted({n.op_type for n in model.graph.node})
    result = {"checker": f"TensorRT-RTX {trt.__version__} OnnxParser (no GPU needed)", "ok": bool(ok) and not unsupported,
              "unsupported": unsupported, "ops": ops,
              "ops_not_supported_by_parser": [op for op in ops if not parser.supports_operator(op)],
              "nodes": len(model.graph.node)}
    if build_engine and result["ok"]:
        config = builder.create_builder_config()
        t0 = time.perf_counter()
        engine = builder.build_serialized_network(network, config)
        result["rtx_engine_built"] = engine is not None
        result["rtx_engine_bytes"] = int(engine.nbytes) if engine is not None else 0
        result["rtx_build_s"] = round(time.perf_counter() - t0, 2)
        if engine is None:
            result["ok"] = False
            result["unsupported"].append({"node": "(network)", "op": "(build)",
                                          "message": "TensorRT-RTX parsed the model but could not build an engine"})
    return result


def _check_with_table(path: Path) -> dict:
    import onnx
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    unsupported = []
    for i, n in enumerate(model.graph.node):
        if n.domain not in ("", "ai.onnx"):
            unsupported.append({"node": n.name or f"{n.op_type}_{i}", "op": f"{n.domain}::{n.op_type}",
                                "message": f"custom-domain op {n.domain}::{n.op_type} would need a TensorRT plugin"})
        elif n.op_type not in SUPPORTED:
            unsupported.append({"node": n.name or f"{n.op_type}_{i}", "op": n.op_type,
                                "message": f"{n.op_type} is not in TensorRT 10's ONNX operator support table"})
    for t in list(model.graph.input) + list(model.graph.output):
        elem = onnx.TensorProto.DataType.Name(t.type.tensor_type.elem_type)
        if elem not in SUPPORTED_TYPES:
            unsupported.append({"node": t.name, "op": "(graph I/O)", "message": f"element type {elem} is not supported"})
    notes = []
    if opset is not None and not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        notes.append(f"opset {opset} is outside TensorRT 10's range {OPSET_RANGE[0]}-{OPSET_RANGE[1]}")
    ops = sorted({n.op_type for n in model.graph.node})
    return {"checker": "TensorRT 10 ONNX operator support table (TensorRT-RTX not installed: no parse)",
            "ok": not unsupported and not notes, "unsupported": unsupported, "notes": notes, "ops": ops,
            "restrictions": {op: RESTRICTIONS[op] for op in ops if op in RESTRICTIONS},
            "nodes": len(model.graph.node)}


def format_check(result: dict, path) -> str:
    lines = [f"{path}: {'OK for TensorRT' if result['ok'] else 'NOT accepted by TensorRT'}",
             f"  check       {result['checker']}",
             f"  nodes       {result['nodes']} ({len(result['ops'])} op types)"]
    for u in result["unsupported"]:
        lines.append(f"  unsupported {u['node']} ({u['op']}): {u['message']}")
    for n in result.get("notes", []):
        lines.append(f"  note        {n}")
    for op, r in result.get("restrictions", {}).items():
        lines.append(f"  restriction {op}: {r}")
    if result.get("rtx_engine_built"):
        lines.append(f"  engine      TensorRT-RTX built a {result['rtx_engine_bytes'] / 1e6:.1f} MB engine in "
                     f"{result['rtx_build_s']} s")
    return "\n".join(lines)
