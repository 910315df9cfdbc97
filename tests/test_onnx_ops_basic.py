"""The ONNX frontend's elementwise, shape and reduction converters (graphopt/frontends/onnx/ops/
elementwise.py, shape.py, reduce.py): each op, in each form whose semantics differ (attributes that
became inputs, opset-dependent axes, keepdims, exclusive/reverse, ...), is imported from a one-node
ONNX file whose data inputs are graph inputs (runtime values, not folded while importing) and run in
the IR interpreter against onnxruntime running the same file."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

import graphopt  # noqa: E402
from graphopt.frontends import onnx as onnx_fe  # noqa: E402
from graphopt.frontends.onnx.registry import CONVERTERS, Ctx, OnnxImportError  # noqa: E402
from graphopt.ir import Graph, TensorType  # noqa: E402
from graphopt.ir.interpreter import run_graph  # noqa: E402


NEWEST = onnx.defs.onnx_opset_version()
ORT_MAX_OPSET = 26  # the newest opset onnxruntime 1.31 runs; newer ones are checked with onnx.reference


class In:
    """A runtime graph input and how to fill it: f (normal floats), pos (positive), nz (floats away from
    0), half (multiples of 0.5: rounding ties), small (floats with many ties), special (nan/inf among
    floats), i (int64 in [lo, hi)), nzi (nonzero int64), b (bool)."""

    def __init__(self, shape, kind="f", lo=-5, hi=5, dtype=None):
        self.shape, self.kind, self.lo, self.hi, self.dtype = tuple(shape), kind, lo, hi, dtype

    def sample(self, rng):
        s, k = self.shape, self.kind
        if k == "f":
            a = rng.standard_normal(s) * 2
        elif k == "pos":
            a = np.abs(rng.standard_normal(s)) + 0.1
        elif k == "nz":
            a = (np.abs(rng.standard_normal(s)) + 0.2) * rng.choice([-1, 1], s)
        elif k == "half":
            a = rng.integers(-8, 8, s) / 2
        elif k == "small":
            a = rng.integers(-2, 3, s).astype(np.float64)
        elif k == "special":
            a = rng.standard_normal(s)
            a.flat[::3] = np.inf
            a.flat[1::5] = -np.inf
            a.flat[2::7] = np.nan
        elif k == "i":
            return rng.integers(self.lo, self.hi, s).astype(self.dtype or np.int64)
        elif k == "nzi":
            return (rng.integers(1, self.hi, s) * rng.choice([-1, 1], s)).astype(self.dtype or np.int64)
        elif k == "b":
            return rng.random(s) < 0.5
        else:
            raise ValueError(k)
        return a.astype(self.dtype or np.float32)


def F(*s):
    return In(s)


def P(*s):
    return In(s, "pos")


def NZ(*s):
    return In(s, "nz")


def I(*s, lo=-5, hi=5):  # noqa: E743
    return In(s, "i", lo, hi)


def B(*s):
    return In(s, "b")


def K(*values, dtype=np.int64):
    """A constant (an initializer) of int64 (or dtype) values."""
    return np.array(values, dtype)


def model_file(tmp_path, op, ins, attrs=None, opset=17, outs=1, name="node0"):
    """A one-node ONNX model: In -> graph input, array -> initializer, None -> omitted input."""
    graph_inputs, inits, names = [], [], []
    for k, x in enumerate(ins):
        if x is None:
            names.append("")
        elif isinstance(x, In):
            nm = f"x{k}"
            dt = x.sample(np.random.default_rng(0)).dtype
            graph_inputs.append(helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(dt), x.shape))
            names.append(nm)
        else:
            nm = f"c{k}"
            inits.append(numpy_helper.from_array(np.asarray(x), nm))
            names.append(nm)
    out_names = [f"y{i}" for i in range(outs)]
    node = helper.make_node(op, names, out_names, name=name, **(attrs or {}))
    g = helper.make_graph([node], "g", graph_inputs, [onnx.ValueInfoProto(name=n) for n in out_names], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    path = tmp_path / f"{op}.onnx"
    onnx.save(m, str(path))
    return path


def compare(path, ins, seed=0):
    spec = onnx_fe.load(path)
    g = spec.trace()
    rng = np.random.default_rng(seed)
    feeds = [x.sample(rng) for x in ins if isinstance(x, In)]
    got, _ = run_graph(g, feeds)
    if spec.opset <= ORT_MAX_OPSET:
        want, _ = spec.reference()(*feeds)
    else:  # an opset newer than onnxruntime runs: onnx's reference evaluator
        from onnx.reference import ReferenceEvaluator
        want = ReferenceEvaluator(spec.model_proto).run(None, dict(zip(spec.inputs, feeds)))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (a.shape, b.shape)
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)
    return g


def case(op, ins, attrs=None, opset=17, outs=1, id=None):
    return pytest.param(op, ins, attrs or {}, opset, outs, id=id or op)


INT_MAX = np.iinfo(np.int64).max

ELEMENTWISE = [
    case("Add", [F(2, 3, 4), F(3, 1)]),
    case("Add", [I(2, 3), I(3)], id="Add-int"),
    case("Sub", [F(2, 3), np.float32(1.5) * np.ones((3,), np.float32)], id="Sub-const"),
    case("Mul", [F(4, 1), F(1, 5)]),
    case("Div", [F(2, 3), NZ(2, 3)]),
    case("Div", [I(3, 4, lo=-20, hi=20), In((3, 4), "nzi", hi=6)], id="Div-int-truncates"),
    case("Pow", [P(2, 3), F(2, 3)]),
    case("Pow", [F(2, 3), I(2, 3, lo=0, hi=4)], id="Pow-int-exponent"),
    case("Mod", [I(3, 4, lo=-20, hi=20), In((3, 4), "nzi", hi=6)], id="Mod-int-divisor-sign"),
    case("Mod", [I(3, 4, lo=-20, hi=20), In((3, 4), "nzi", hi=6)], {"fmod": 1}, id="Mod-int-fmod"),
    case("Mod", [F(3, 4), NZ(3, 4)], {"fmod": 1}, id="Mod-float-fmod"),
    case("Neg", [F(2, 3)]), case("Neg", [I(2, 3)], id="Neg-int"),
    case("Abs", [F(2, 3)]), case("Abs", [I(2, 3)], id="Abs-int"),
    case("Exp", [F(2, 3)]), case("Log", [P(2, 3)]), case("Sqrt", [P(2, 3)]),
    case("Reciprocal", [NZ(2, 3)]), case("Tanh", [F(2, 3)]), case("Sigmoid", [F(2, 3)]),
    case("Relu", [F(2, 3)]), case("Relu", [In((2, 3), "i", dtype=np.int32)], opset=14, id="Relu-int32"),
    case("LeakyRelu", [F(2, 3)]), case("LeakyRelu", [F(2, 3)], {"alpha": 0.3}, id="LeakyRelu-alpha"),
    case("Elu", [F(2, 5)], {"alpha": 0.7}), case("Selu", [F(2, 5)]),
    case("Selu", [F(2, 5)], {"alpha": 1.5, "gamma": 2.0}, id="Selu-attrs"),
    case("Celu", [F(2, 5)], {"alpha": 2.0}),
    case("HardSigmoid", [F(3, 5)]), case("HardSigmoid", [F(3, 5)], {"alpha": 0.3, "beta": 0.4}, id="HardSigmoid-ab"),
    case("HardSwish", [F(3, 5)]), case("Softplus", [F(3, 5)]), case("Softsign", [F(3, 5)]),
    case("Gelu", [F(3, 5)], opset=20), case("Gelu", [F(3, 5)], {"approximate": "tanh"}, opset=20, id="Gelu-tanh"),
    case("Mish", [F(3, 5)], opset=18), case("ThresholdedRelu", [F(3, 5)], {"alpha": 0.5}),
    case("PRelu", [F(2, 3, 4, 5), (np.arange(3, dtype=np.float32).reshape(3, 1, 1) - 1) / 4], id="PRelu-channel"),
    case("PRelu", [F(2, 3, 4, 5), F(5)], id="PRelu-runtime-slope"),
    case("Erf", [F(3, 5)]), case("Sin", [F(3, 5)]), case("Cos", [F(3, 5)]), case("Tan", [F(3, 5)]),
    case("Floor", [F(3, 5)]), case("Ceil", [F(3, 5)]),
    case("Round", [In((4, 6), "half")], id="Round-half-even"),
    case("Sign", [F(3, 5)]), case("Sign", [I(3, 5)], id="Sign-int"),
    case("Max", [F(2, 3), F(3), F(1, 3)]), case("Min", [F(2, 3), F(3), F(1, 3)]),
    case("Max", [I(2, 3), I(2, 3)], id="Max-int"), case("Max", [F(2, 3)], id="Max-one"),
    case("Sum", [F(2, 3), F(3), F(1, 3)]), case("Mean", [F(2, 3), F(3), F(1, 3)]),
    case("Clip", [F(3, 5), np.float32(-0.5), np.float32(0.5)], opset=11, id="Clip-11-const"),
    case("Clip", [F(3, 5), None, np.float32(0.5)], id="Clip-max-only"),
    case("Clip", [F(3, 5), F(), F()], id="Clip-runtime-bounds"),
    case("Clip", [F(3, 5)], id="Clip-no-bounds"),
    case("Clip", [F(3, 5), np.float32(1.0), np.float32(-1.0)], id="Clip-min-above-max"),
    case("Clip", [I(3, 5), np.int64(-2), np.int64(3)], id="Clip-int"),
    case("Where", [B(2, 3), F(2, 3), F(3)]),
    case("Where", [B(3), I(2, 3), I(1)], id="Where-int"),
    case("Equal", [I(3, 4, lo=0, hi=3), I(4, lo=0, hi=3)]), case("Equal", [B(3), B(3)], id="Equal-bool"),
    case("Less", [F(3, 4), F(4)]), case("LessOrEqual", [In((3, 4), "small"), In((4,), "small")]),
    case("Greater", [F(3, 4), F(4)]), case("GreaterOrEqual", [In((3, 4), "small"), In((4,), "small")]),
    case("Not", [B(3, 4)]), case("And", [B(3, 4), B(4)]), case("Or", [B(3, 4), B(4)]), case("Xor", [B(3, 4), B(4)]),
    case("IsNaN", [In((4, 5), "special")]), case("IsInf", [In((4, 5), "special")]),
    case("IsInf", [In((4, 5), "special")], {"detect_negative": 0}, id="IsInf-positive"),
    case("IsInf", [In((4, 5), "special")], {"detect_positive": 0}, id="IsInf-negative"),
    case("Cast", [F(3, 4)], {"to": onnx.TensorProto.INT64}, id="Cast-float-int64"),
    case("Cast", [F(3, 4)], {"to": onnx.TensorProto.INT32}, id="Cast-float-int32"),
    case("Cast", [I(3, 4)], {"to": onnx.TensorProto.FLOAT}, id="Cast-int-float"),
    case("Cast", [In((3, 4), "small")], {"to": onnx.TensorProto.BOOL}, id="Cast-float-bool"),
    case("Cast", [B(3, 4)], {"to": onnx.TensorProto.FLOAT}, id="Cast-bool-float"),
    case("Cast", [F(3, 4)], {"to": onnx.TensorProto.FLOAT16}, id="Cast-float16"),
    case("CastLike", [F(3, 4), I(1)]),
    case("Identity", [F(3, 4)]),
    case("Dropout", [F(3, 4)], outs=2, id="Dropout-mask"),
    case("Dropout", [F(3, 4), np.float32(0.3), np.bool_(False)], outs=2, id="Dropout-training-false"),
    case("Dropout", [F(3, 4)], {"ratio": 0.5}, opset=11, id="Dropout-11"),
    case("Expand", [F(3, 1), K(2, 3, 4)]), case("Expand", [F(1, 4), K(3, 1)], id="Expand-bidirectional"),
    case("Expand", [I(3, 1), K(3, 2)], id="Expand-int"),
]

SHAPE = [
    case("Shape", [F(2, 3, 4)]), case("Shape", [F(2, 3, 4)], {"start": 1}, opset=15, id="Shape-start"),
    case("Shape", [F(2, 3, 4)], {"start": -2, "end": -1}, opset=15, id="Shape-start-end"),
    case("Size", [F(2, 3, 4)]),
    case("Reshape", [F(2, 3, 4), K(0, -1)], id="Reshape-0-minus1"),
    case("Reshape", [F(2, 3, 4), K(4, -1, 2)], id="Reshape-minus1"),
    case("Reshape", [F(2, 3, 4), K(3, 8)], {"allowzero": 1}, opset=14, id="Reshape-allowzero"),
    case("Flatten", [F(2, 3, 4, 5)]), case("Flatten", [F(2, 3, 4, 5)], {"axis": 0}, id="Flatten-0"),
    case("Flatten", [F(2, 3, 4, 5)], {"axis": -1}, id="Flatten-neg"),
    case("Squeeze", [F(2, 1, 4, 1)], {"axes": [1, -1]}, opset=11, id="Squeeze-11-attr"),
    case("Squeeze", [F(2, 1, 4, 1), K(-1)], opset=13, id="Squeeze-13-input"),
    case("Squeeze", [F(2, 1, 4, 1)], opset=13, id="Squeeze-all"),
    case("Unsqueeze", [F(2, 3)], {"axes": [0, -1]}, opset=11, id="Unsqueeze-11-attr"),
    case("Unsqueeze", [F(2, 3), K(1, 3)], opset=13, id="Unsqueeze-13-input"),
    case("Transpose", [F(2, 3, 4)], id="Transpose-default"),
    case("Transpose", [F(2, 3, 4)], {"perm": [1, 2, 0]}, id="Transpose-perm"),
    case("Concat", [F(2, 3), np.ones((2, 2), np.float32), F(2, 1)], {"axis": -1}),
    case("Concat", [I(2, 3), I(1, 3)], {"axis": 0}, id="Concat-int"),
    case("Split", [F(6, 4)], {"axis": 0, "split": [1, 2, 3]}, opset=11, outs=3, id="Split-11-attr"),
    case("Split", [F(4, 6), K(4, 2)], {"axis": -1}, opset=13, outs=2, id="Split-13-input"),
    case("Split", [F(4, 6)], {"axis": 1}, opset=13, outs=3, id="Split-equal"),
    case("Split", [F(5, 2)], {"num_outputs": 3}, opset=18, outs=3, id="Split-18-uneven"),
    case("Slice", [F(5, 6), K(1, -4), K(-1, INT_MAX)], opset=11, id="Slice-negative-clamped"),
    case("Slice", [F(5, 6), K(-1, 4), K(-INT_MAX, 0), K(0, 1), K(-2, -1)], id="Slice-negative-steps"),
    case("Slice", [F(5, 6), K(1), K(100), K(-1), K(2)], id="Slice-axes-step"),
    case("Slice", [F(5, 6), K(3), K(1), K(0)], id="Slice-empty"),
    case("Slice", [F(5, 6), K(-10, 9), K(-20, -30), K(0, 1), K(-1, -2)], id="Slice-backwards-clamped"),
    case("Slice", [F(5, 6), K(-INT_MAX - 1), K(INT_MAX), K(1), K(2)], opset=13, id="Slice-int-min-max"),
    case("Gather", [F(5, 4), np.int64(-2)], id="Gather-const-scalar"),
    case("Gather", [F(5, 6), K(1, 3, 5)], {"axis": 1}, id="Gather-const-progression"),
    case("Gather", [F(5, 6), K([0, -1], [2, 2])], {"axis": 1}, id="Gather-const-take"),
    case("Gather", [F(5, 6), I(2, 3, lo=-5, hi=5)], id="Gather-runtime"),
    case("Gather", [np.arange(24, dtype=np.float32).reshape(4, 6), I(3, lo=-6, hi=6, )], {"axis": 1},
         id="Gather-runtime-const-data"),
    case("GatherElements", [F(3, 4), I(3, 2, lo=-4, hi=4)], {"axis": 1}, id="GatherElements-runtime"),
    case("GatherElements", [F(3, 4), K([2, 0, -1, 1], [0, 0, 1, 2])], id="GatherElements-const"),
    case("GatherND", [F(3, 4, 2), K([[0, 1], [2, -1]])], id="GatherND-const"),
    case("GatherND", [F(3, 4, 2), I(5, 1, lo=-3, hi=3)], id="GatherND-runtime"),
    case("GatherND", [F(3, 4, 2), I(3, 2, 1, lo=0, hi=4)], {"batch_dims": 1}, id="GatherND-batch"),
    case("Tile", [F(2, 3), K(2, 3)]),
    case("Pad", [F(3, 4), K(1, 2, 0, 1), np.float32(1.5)], id="Pad-constant"),
    case("Pad", [F(3, 4), K(1, 2, 0, 1), F()], id="Pad-runtime-value"),
    case("Pad", [F(3, 4), K(2, 1, 1, 2)], {"mode": "reflect"}, id="Pad-reflect"),
    case("Pad", [F(3, 4), K(2, 1, 1, 3)], {"mode": "edge"}, id="Pad-edge"),
    case("Pad", [F(3, 4), K(2, 1, 1, 3)], {"mode": "wrap"}, opset=19, id="Pad-wrap"),
    case("Pad", [F(4, 5), K(-1, 2, 1, -2)], id="Pad-negative"),
    case("Pad", [F(4, 5), K(-1, 0, 0, 1)], {"mode": "reflect"}, id="Pad-negative-reflect"),
    case("Pad", [F(2, 4, 5), K(1, 2), None, K(-1)], opset=18, id="Pad-axes"),
    case("Pad", [I(3, 4), K(1, 0, 0, 1), np.int64(7)], opset=11, id="Pad-11-int"),
    case("EyeLike", [F(3, 4)], {"k": 1}), case("EyeLike", [F(4, 3)], {"dtype": onnx.TensorProto.INT64, "k": -1},
                                               id="EyeLike-dtype"),
    case("DepthToSpace", [F(1, 8, 2, 3)], {"blocksize": 2}, id="DepthToSpace-DCR"),
    case("DepthToSpace", [F(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, id="DepthToSpace-CRD"),
    case("SpaceToDepth", [F(1, 2, 4, 6)], {"blocksize": 2}),
    case("Trilu", [F(2, 4, 5)], opset=14, id="Trilu-upper"),
    case("Trilu", [F(4, 5), np.int64(-1)], {"upper": 0}, opset=14, id="Trilu-lower-k"),
    case("OneHot", [I(2, 3, lo=-5, hi=5), np.int64(5), F(2)], id="OneHot-runtime-values"),
    case("OneHot", [I(2, 3, lo=0, hi=4), np.int64(4), K(0, 1)], {"axis": 1}, id="OneHot-axis"),
    case("OneHot", [In((2, 3), "small"), np.float32(3), np.array([-1, 2], np.float32)], {"axis": 0},
         id="OneHot-float-indices"),
]

REDUCERS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
POSITIVE = {"ReduceLogSum"}


def _reduce_cases():
    out = []
    for op in REDUCERS:
        x = P(2, 3, 4) if op in POSITIVE else F(2, 3, 4)
        if op == "ReduceSum":
            out.append(case(op, [x], {"axes": [1]}, opset=11, id=f"{op}-11-attr"))
            out.append(case(op, [x, K(-1, 0)], {"keepdims": 0}, opset=13, id=f"{op}-13-input"))
            out.append(case(op, [x, K()], {"noop_with_empty_axes": 1}, opset=13, id=f"{op}-noop"))
        else:
            out.append(case(op, [x], {"axes": [1]}, opset=17, id=f"{op}-17-attr"))
            out.append(case(op, [x], {"axes": [0, -1], "keepdims": 0}, opset=11, id=f"{op}-11-keepdims0"))
            out.append(case(op, [x, K(-1, 0)], {"keepdims": 0}, opset=18, id=f"{op}-18-input"))
            out.append(case(op, [x], {"noop_with_empty_axes": 1}, opset=18, id=f"{op}-18-noop"))
        out.append(case(op, [x], {"keepdims": 0}, id=f"{op}-all"))
    out += [
        case("ReduceMax", [I(3, 4)], {"axes": [1]}, id="ReduceMax-int"),
        case("ReduceMin", [B(3, 4), K(1)], opset=20, id="ReduceMin-bool"),
        case("ReduceMax", [B(3, 4), K(0)], {"keepdims": 0}, opset=20, id="ReduceMax-bool"),
        case("ReduceSum", [I(3, 4), K(0)], id="ReduceSum-int"),
        case("ReduceProd", [F(3, 5, 7)], {"axes": [0, 2]}, id="ReduceProd-odd"),
        case("ReduceLogSumExp", [F(3, 5)], {"axes": [1]}, id="ReduceLogSumExp-2d"),
    ]
    return out


def _arg_cases():
    out = []
    for op in ("ArgMax", "ArgMin"):
        out += [
            case(op, [F(3, 4, 5)], id=f"{op}-default"),
            case(op, [F(3, 4, 5)], {"axis": -1, "keepdims": 0}, id=f"{op}-keepdims0"),
            case(op, [In((4, 6), "small")], {"axis": 1}, id=f"{op}-ties-first"),
            case(op, [In((4, 6), "small")], {"axis": 1, "select_last_index": 1}, id=f"{op}-ties-last"),
            case(op, [I(4, 6, lo=0, hi=3)], {"axis": 0, "select_last_index": 1, "keepdims": 0}, id=f"{op}-int"),
        ]
    return out


SCAN_SOFTMAX = [
    case("CumSum", [F(3, 5), np.int64(1)]),
    case("CumSum", [F(3, 5), np.int64(-1)], {"exclusive": 1}, id="CumSum-exclusive"),
    case("CumSum", [F(3, 5), np.int64(0)], {"reverse": 1}, id="CumSum-reverse"),
    case("CumSum", [F(3, 5), np.int64(1)], {"exclusive": 1, "reverse": 1}, id="CumSum-exclusive-reverse"),
    case("CumSum", [I(3, 5), np.int32(1)], {"exclusive": 1}, id="CumSum-int"),
]
for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    _x = In((2, 3, 4), "small") if _op == "Hardmax" else F(2, 3, 4)
    SCAN_SOFTMAX += [
        case(_op, [_x], opset=11, id=f"{_op}-11-default-2d"),  # axis 1: [2, 12]
        case(_op, [_x], {"axis": 2}, opset=11, id=f"{_op}-11-axis"),
        case(_op, [_x], {"axis": 0}, opset=12, id=f"{_op}-12-axis0"),
        case(_op, [_x], opset=13, id=f"{_op}-13-default"),
        case(_op, [_x], {"axis": 1}, opset=13, id=f"{_op}-13-axis"),
    ]
SCAN_SOFTMAX += [
    case("TopK", [F(3, 6), K(2)], outs=2, id="TopK-largest"),
    case("TopK", [F(3, 6), K(3)], {"largest": 0, "axis": 0}, outs=2, id="TopK-smallest-axis0"),
    case("TopK", [In((3, 8), "small"), K(4)], outs=2, id="TopK-ties"),
    case("TopK", [In((3, 8), "small"), K(4)], {"largest": 0}, outs=2, id="TopK-ties-smallest"),
    case("TopK", [I(4, 5, lo=0, hi=4), K(5)], {"axis": -1}, outs=2, id="TopK-int"),
    case("TopK", [F(2, 7), K(3)], opset=11, outs=2, id="TopK-11"),
]

# the newest opsets (some past onnxruntime's: checked against onnx's reference evaluator)
NEWEST_CASES = [
    case("SpaceToDepth", [F(1, 2, 4, 6)], {"blocksize": 2, "mode": "CRD"}, opset=max(NEWEST, 28),
         id="SpaceToDepth-CRD-28"),
    case("SpaceToDepth", [F(1, 2, 4, 6)], {"blocksize": 2}, opset=NEWEST, id="SpaceToDepth-newest"),
    case("DepthToSpace", [F(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, opset=NEWEST, id="DepthToSpace-newest"),
    case("OneHot", [I(2, 3, lo=-8, hi=8), np.int64(5), K(0, 1)], opset=NEWEST, id="OneHot-out-of-range-newest"),
    case("Mod", [F(3, 4), NZ(3, 4)], opset=NEWEST, id="Mod-float-floor-newest"),
    case("Mod", [I(3, 4, lo=-20, hi=20), In((3, 4), "nzi", hi=6)], opset=NEWEST, id="Mod-int-newest"),
    case("Celu", [F(2, 5)], opset=NEWEST, id="Celu-newest"),
    case("ReduceLogSumExp", [F(2, 3, 4), K(1)], {"keepdims": 0}, opset=NEWEST, id="ReduceLogSumExp-newest"),
    case("ReduceLogSum", [P(2, 3, 4)], {"noop_with_empty_axes": 1}, opset=NEWEST, id="ReduceLogSum-noop-newest"),
    case("ReduceMax", [F(2, 3, 4), K(0, 2)], opset=NEWEST, id="ReduceMax-newest"),
    case("Cast", [F(3, 4)], {"to": onnx.TensorProto.INT32}, opset=NEWEST, id="Cast-newest"),
    case("TopK", [F(3, 6), K(2)], {"largest": 0}, opset=NEWEST, outs=2, id="TopK-newest"),
    case("Softplus", [F(3, 5)], opset=22, id="Softplus-22"),
    case("Reshape", [F(2, 3, 4), K(0, -1)], opset=ORT_MAX_OPSET, id="Reshape-ort-newest"),
    case("Squeeze", [F(2, 1, 4, 1), K(1)], opset=ORT_MAX_OPSET, id="Squeeze-ort-newest"),
    case("Unsqueeze", [F(2, 3), K(-1)], opset=ORT_MAX_OPSET, id="Unsqueeze-ort-newest"),
    case("Pad", [F(3, 4), K(1, 1), None, K(1)], {"mode": "edge"}, opset=ORT_MAX_OPSET, id="Pad-ort-newest"),
    case("Split", [F(7, 2)], {"num_outputs": 2}, opset=ORT_MAX_OPSET, outs=2, id="Split-ort-newest"),
]

ALL = ELEMENTWISE + SHAPE + _reduce_cases() + _arg_cases() + SCAN_SOFTMAX + NEWEST_CASES


@pytest.mark.parametrize("op, ins, attrs, opset, outs", ALL)
def test_op_matches_onnxruntime(tmp_path, op, ins, attrs, opset, outs):
    path = model_file(tmp_path, op, ins, attrs, opset, outs)
    g = compare(path, ins)
    if op not in ("Shape", "Size", "EyeLike") and all(v.is_param for v in g.outputs):
        pytest.fail(f"{op}: every output folded to a constant; the test's inputs should be runtime values")


def test_every_listed_op_is_covered():
    listed = set("""Add Sub Mul Div Pow Mod Neg Abs Exp Log Sqrt Reciprocal Tanh Sigmoid Relu LeakyRelu Elu Selu
        Celu HardSigmoid HardSwish Softplus Softsign Gelu Mish ThresholdedRelu PRelu Erf Sin Cos Tan Floor Ceil
        Round Sign Max Min Sum Mean Clip Where Equal Less LessOrEqual Greater GreaterOrEqual Not And Or Xor IsNaN
        IsInf Cast CastLike Identity Dropout Expand Shape Size Reshape Flatten Squeeze Unsqueeze Transpose
        Concat Split Slice Gather GatherElements GatherND Tile Pad EyeLike DepthToSpace SpaceToDepth Trilu
        OneHot ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare
        ReduceLogSum ReduceLogSumExp ArgMax ArgMin CumSum Softmax LogSoftmax Hardmax TopK""".split())
    tested = {p.values[0] for p in ALL}
    assert listed - tested == set()
    assert listed | {"ConstantOfShape", "Constant", "Range", "NonZero"} <= set(CONVERTERS)


# ---- constant-only ops: folded while importing; their converters are exercised directly -------------


def _ctx(opset=17):
    return Ctx(Graph("t"), opset, "test.onnx")


def test_constant_only_converters():
    ctx = _ctx()
    ctx.node = helper.make_node("ConstantOfShape", ["s"], ["y"], name="n")
    value = numpy_helper.to_array(numpy_helper.from_array(np.array([2.5], np.float32)))
    out = CONVERTERS["ConstantOfShape"](ctx, [K(2, 3)], {"value": value})
    np.testing.assert_array_equal(out, np.full((2, 3), 2.5, np.float32))
    assert CONVERTERS["ConstantOfShape"](ctx, [K(2)], {}).dtype == np.float32
    np.testing.assert_array_equal(CONVERTERS["Constant"](ctx, [], {"value_ints": [1, 2]}), K(1, 2))
    assert CONVERTERS["Constant"](ctx, [], {"value_float": 1.5}).dtype == np.float32
    np.testing.assert_array_equal(CONVERTERS["Range"](ctx, [np.int64(1), np.int64(9), np.int64(3)], {}), K(1, 4, 7))
    np.testing.assert_array_equal(CONVERTERS["NonZero"](ctx, [np.array([[0, 1], [2, 0]])], {}), K([0, 1], [1, 0]))
    x = ctx.g.add_input("x", TensorType((3,), "int64"))
    with pytest.raises(OnnxImportError, match="Range's start"):
        CONVERTERS["Range"](ctx, [x, np.int64(9), np.int64(1)], {})


def test_shape_arithmetic_chain_folds(tmp_path):
    """Shape -> ConstantOfShape -> Add: the shape folds to a constant, the Add stays a runtime op."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    two = numpy_helper.from_array(np.array([2.0], np.float32))
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["c"], value=two),
             helper.make_node("Range", ["r0", "r1", "r2"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Add", ["x", "c"], ["a"]),
             helper.make_node("Add", ["a", "rf"], ["y"])]
    inits = [numpy_helper.from_array(np.int64(v), n) for v, n in ((0, "r0"), (3, "r1"), (1, "r2"))]
    g = helper.make_graph(nodes, "g", [x], [onnx.ValueInfoProto(name="y")], inits)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    graph = compare(path, [F(2, 3)])
    assert graph.op_histogram() == {"add": 2}


# ---- unsupported forms fail naming the node and the op ----------------------------------------------


@pytest.mark.parametrize("op, ins, attrs, opset, match", [
    ("NonZero", [F(3, 4)], {}, 17, "data-dependent shape"),
    ("Reshape", [F(3, 4), I(2, lo=1, hi=3)], {}, 17, "Reshape's shape must be a constant"),
    ("Range", [I(), np.int64(5), np.int64(1)], {}, 17, "Range's start"),
    ("Cast", [F(3)], {"to": onnx.TensorProto.UINT8}, 17, "UINT8"),
    ("Pad", [F(3, 4), K(3, 0, 0, 0)], {"mode": "reflect"}, 17, "reflect padding of 3"),
    ("Dropout", [F(3), np.float32(0.5), np.bool_(True)], {}, 17, "training_mode"),
    ("TopK", [F(3, 4), I(1, lo=1, hi=2)], {}, 17, "TopK's k must be a constant"),
])
def test_unsupported_form_fails_naming_node_and_op(tmp_path, op, ins, attrs, opset, match):
    path = model_file(tmp_path, op, ins, attrs, opset, name="the_node")
    spec = onnx_fe.load(path)
    with pytest.raises(OnnxImportError, match=match) as e:
        spec.trace()
    msg = str(e.value)
    assert "'the_node'" in msg and f"({op}, opset {opset})" in msg


# ---- end to end: build for the onnx target (verification against onnxruntime runs inside) -----------


def _save(tmp_path, name, nodes, inputs, inits=(), outputs=("y",)):
    g = helper.make_graph(nodes, name, inputs, [onnx.ValueInfoProto(name=o) for o in outputs], list(inits))
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def test_build_end_to_end_signal_ops(tmp_path):
    """A small signal model: normalise, pad, slice, cumulate, softmax-weight and reduce."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("pads", K(0, 0, 2, 0, 0, 2)), ("starts", K(1)), ("ends", K(-1)), ("ax", K(2)), ("ax1", np.int64(2)),
        ("w", rng.standard_normal((1, 4, 1)).astype(np.float32)), ("red", K(2)), ("idx", K(3, 0, 2)),
        ("half", np.float32(0.5))]]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2]),
        helper.make_node("Sub", ["x", "m"], ["xc"]),
        helper.make_node("Pad", ["xc", "pads"], ["xp"], mode="reflect"),
        helper.make_node("Slice", ["xp", "starts", "ends", "ax"], ["xs"]),
        helper.make_node("CumSum", ["xs", "ax1"], ["cs"], exclusive=1),
        helper.make_node("Mul", ["cs", "w"], ["cw"]),
        helper.make_node("LeakyRelu", ["cw"], ["lr"], alpha=0.1),
        helper.make_node("Softmax", ["lr"], ["sm"], axis=1),
        helper.make_node("Mul", ["sm", "xs"], ["wx"]),
        helper.make_node("ReduceSum", ["wx", "red"], ["s"], keepdims=0),
        helper.make_node("Gather", ["s", "idx"], ["g"], axis=1),
        helper.make_node("Clip", ["g", "", "half"], ["y"]),
    ]
    path = _save(tmp_path, "signal", nodes, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16])],
                 inits)
    spec = onnx_fe.load(path)
    a = graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert a.manifest["equivalence"]["verified"] and a.path.is_file()


def test_build_end_to_end_shape_ops(tmp_path):
    """Shape plumbing: reshape, transpose, split, concat, depth-to-space, top-k values and a where."""
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("shp", K(1, 8, 2, 4)), ("k", K(2)), ("zero", np.float32(0.0))]]
    nodes = [
        helper.make_node("Reshape", ["x", "shp"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("DepthToSpace", ["t"], ["d"], blocksize=2, mode="CRD"),  # 1, 2, 8, 4
        helper.make_node("Split", ["d"], ["d0", "d1"], axis=1),
        helper.make_node("Greater", ["d0", "zero"], ["pos"]),
        helper.make_node("Where", ["pos", "d0", "d1"], ["w"]),
        helper.make_node("TopK", ["w", "k"], ["tv", "ti"], axis=-1),
        helper.make_node("HardSwish", ["tv"], ["hs"]),
        helper.make_node("Concat", ["hs", "d1"], ["c"], axis=-1),
        helper.make_node("Flatten", ["c"], ["y"], axis=1),
    ]
    path = _save(tmp_path, "shapes", nodes, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                 inits)
    spec = onnx_fe.load(path)
    a = graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert a.manifest["equivalence"]["verified"] and a.path.is_file()
