"""The ONNX frontend's neural-network converters (graphopt/frontends/onnx/ops/nn.py): each op and variant
imported from a small ONNX model, run by the IR interpreter and compared with onnxruntime on the
original file; unsupported forms fail naming the node and the op; a small conv net builds end to end."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from graphopt.frontends.onnx import OnnxImportError, load  # noqa: E402
from graphopt.ir.interpreter import run_graph  # noqa: E402

F = TensorProto.FLOAT
_count = itertools.count()


def rand(*shape, seed=0, lo=None):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(a) + lo if lo is not None else a


def model_of(nodes, inputs, inits=None, outputs=("y",), opset=17, out_types=None):
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    outs = [helper.make_tensor_value_info(o, (out_types or {}).get(o, F), None) for o in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    g = helper.make_graph(nodes, "t", ins, outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def check(tmp_path, nodes, inputs, inits=None, outputs=("y",), opset=17, rtol=1e-4, atol=1e-5, out_types=None,
          reference="onnxruntime"):
    """Import the model, run the IR graph and onnxruntime (or onnx's reference evaluator, for opsets
    onnxruntime does not load yet) on the same inputs; returns the IR graph."""
    m = model_of(nodes, inputs, inits, outputs, opset, out_types)
    path = tmp_path / f"m{next(_count)}.onnx"
    onnx.save(m, str(path))
    g = load(path).trace()
    got, _ = run_graph(g, list(inputs.values()))
    if reference == "onnx":
        from onnx.reference import ReferenceEvaluator
        want = ReferenceEvaluator(m).run(list(outputs), inputs)
    else:
        opts = ort.SessionOptions()  # the file's own arithmetic, as graphopt's reference runs it
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        want = sess.run(list(outputs), inputs)
    for name, a, b in zip(outputs, got, want):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol, err_msg=name)
    return g


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), name=f"the_{op.lower()}_{next(_count)}", **attrs)


def one(tmp_path, op, x, inits=None, opset=17, extra_inputs=(), **kw):
    """A model of one node: x (runtime) then inits by name; kw splits into attrs and check options."""
    opts = {k: kw.pop(k) for k in ("rtol", "atol") if k in kw}
    inits = dict(inits or {})
    n = node(op, ["x", *extra_inputs, *inits], **kw)
    return check(tmp_path, [n], {"x": x}, inits, opset=opset, **opts)


def ops_of(g):
    return [n.op for n in g.nodes]


# ---- MatMul / Gemm ------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb,b_init", [
    ((3, 4), (4, 5), True), ((2, 3, 4), (4, 5), True), ((4,), (4, 5), True), ((2, 3, 4), (4,), True),
    ((4,), (4,), False), ((2, 1, 3, 4), (5, 4, 6), False), ((3, 4), (2, 4, 5), False), ((2, 3, 4), (2, 4, 5), False),
    ((5, 4), (3, 1, 4, 2), True)])
def test_matmul(tmp_path, sa, sb, b_init):
    a, b = rand(*sa), rand(*sb, seed=1)
    if b_init:
        g = check(tmp_path, [node("MatMul", ["a", "b"])], {"a": a}, {"b": b})
        if len(sb) == 2:  # x @ W stays one dot with the weight a parameter
            assert ops_of(g).count("dot") == 1 and "broadcast" not in ops_of(g)
    else:
        check(tmp_path, [node("MatMul", ["a", "b"])], {"a": a, "b": b})


@pytest.mark.parametrize("ta,tb,alpha,beta,c_shape,b_init", [
    (0, 0, 1.0, 1.0, None, True), (0, 1, 1.0, 1.0, (5,), True), (1, 0, 0.5, 2.0, (3, 5), True),
    (1, 1, 1.5, 0.5, (1, 5), False), (0, 0, 1.0, -1.0, (3, 1), False), (0, 1, 2.0, 1.0, (), True)])
def test_gemm(tmp_path, ta, tb, alpha, beta, c_shape, b_init):
    a = rand(*((4, 3) if ta else (3, 4)))
    b = rand(*((5, 4) if tb else (4, 5)), seed=1)
    ins = ["a", "b"] + (["c"] if c_shape is not None else [])
    inits = {"c": rand(*c_shape, seed=2)} if c_shape is not None else {}
    inputs = {"a": a}
    if b_init:
        inits["b"] = b
    else:
        inputs["b"] = b
    g = check(tmp_path, [node("Gemm", ins, transA=ta, transB=tb, alpha=alpha, beta=beta)], inputs, inits)
    if b_init and not ta:
        dot = next(n for n in g.nodes if n.op == "dot")  # the weight folded into x @ W
        assert dot.attrs["rhs_contract"] == (0,) and dot.inputs[1].is_param


# ---- Einsum ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("eq,shapes", [
    ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]), ("bhij,bhjd->bhid", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("bij,jk->bik", [(2, 3, 4), (4, 5)]), ("ij->ji", [(3, 4)]),
    ("bij->bj", [(2, 3, 4)]), ("ij,ij->i", [(3, 4), (3, 4)]), ("i,j->ij", [(3,), (4,)]), ("ij,jk", [(3, 4), (4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]), ("bnc,ck->bkn", [(2, 6, 3), (3, 4)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 2)]), ("bij,bkj->bik", [(1, 3, 4), (2, 5, 4)])])
def test_einsum(tmp_path, eq, shapes):
    names = [f"x{i}" for i in range(len(shapes))]
    inputs = {n: rand(*s, seed=i) for i, (n, s) in enumerate(zip(names, shapes))}
    check(tmp_path, [node("Einsum", names, equation=eq)], inputs)


def test_einsum_with_a_weight(tmp_path):
    g = check(tmp_path, [node("Einsum", ["x", "w"], equation="btc,cd->btd")], {"x": rand(2, 3, 4)},
              {"w": rand(4, 5, seed=1)})
    assert ops_of(g) == ["dot"]


# ---- Conv / ConvTranspose -------------------------------------------------------------------------

CONVS = [  # x shape, w shape, bias, attrs
    ((1, 3, 10), (4, 3, 3), True, dict(pads=[1, 1], strides=[2])),
    ((2, 4, 9, 9), (6, 4, 3, 3), True, dict(pads=[1, 0, 2, 1], dilations=[2, 1], kernel_shape=[3, 3])),
    ((1, 4, 8, 7), (6, 2, 3, 3), False, dict(group=2, strides=[1, 2])),
    ((1, 4, 8, 8), (4, 1, 3, 3), True, dict(group=4, auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 4, 9, 8), (8, 1, 4, 4), True, dict(group=4, auto_pad="SAME_LOWER", strides=[2, 2])),
    ((1, 3, 8, 8), (2, 3, 4, 4), False, dict(auto_pad="SAME_UPPER")),  # onnxruntime: no dilation with SAME
    ((1, 3, 7, 8), (2, 3, 3, 2), True, dict(auto_pad="VALID", strides=[2, 3])),
    ((1, 2, 5, 6, 7), (3, 2, 2, 3, 3), True, dict(strides=[1, 2, 1], pads=[0, 1, 1, 1, 0, 1])),
]


@pytest.mark.parametrize("xs,ws,bias,attrs", CONVS)
def test_conv(tmp_path, xs, ws, bias, attrs):
    inits = {"w": rand(*ws, seed=1)}
    if bias:
        inits["b"] = rand(ws[0], seed=2)
    g = one(tmp_path, "Conv", rand(*xs), inits, **attrs)
    assert ops_of(g) == ["conv"]


def test_conv_with_runtime_weights(tmp_path):
    check(tmp_path, [node("Conv", ["x", "w"], pads=[1, 1, 1, 1])], {"x": rand(1, 3, 6, 6), "w": rand(2, 3, 3, 3, seed=1)})


CONV_TRANSPOSES = [  # x shape, w shape (Cin, Cout/group, *k), bias, attrs
    ((1, 3, 5, 5), (3, 2, 3, 3), True, dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ((1, 4, 4, 5), (4, 3, 3, 3), False, dict(group=2, dilations=[2, 1], strides=[1, 2])),
    ((1, 2, 4, 4), (2, 3, 4, 4), True, dict(strides=[2, 2], output_shape=[9, 8])),
    ((1, 2, 4, 4), (2, 3, 3, 3), True, dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 2, 4, 4), (2, 3, 3, 3), False, dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ((1, 2, 4, 3), (2, 3, 3, 3), False, dict(strides=[2, 2], auto_pad="VALID")),
    ((1, 2, 6), (2, 4, 2), True, dict(strides=[2], pads=[2, 3])),  # pads beyond k - 1: the output is cut
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), True, dict(strides=[2, 1, 2], pads=[0, 1, 0, 0, 1, 1])),
    ((1, 4, 5, 5), (4, 1, 3, 3), False, dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0])),
]


@pytest.mark.parametrize("xs,ws,bias,attrs", CONV_TRANSPOSES)
def test_conv_transpose(tmp_path, xs, ws, bias, attrs):
    inits = {"w": rand(*ws, seed=1)}
    if bias:
        inits["b"] = rand(ws[1] * attrs.get("group", 1), seed=2)
    g = one(tmp_path, "ConvTranspose", rand(*xs), inits, **attrs)
    conv = next(n for n in g.nodes if n.op == "conv")
    assert conv.inputs[1].is_param  # the flipped kernel is a constant


def test_conv_transpose_with_runtime_weights(tmp_path):
    check(tmp_path, [node("ConvTranspose", ["x", "w"], strides=[2, 2], group=2)],
          {"x": rand(1, 4, 3, 3), "w": rand(4, 2, 3, 3, seed=1)})


# ---- pooling ---------------------------------------------------------------------------------------

MAXPOOLS = [  # x shape, attrs, opset
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 17),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1), 17),
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1), 11),
    ((1, 2, 9, 9), dict(kernel_shape=[2, 3], dilations=[2, 2], strides=[1, 2], pads=[1, 1, 0, 1]), 17),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 17),
    ((1, 2, 7, 8), dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"), 22),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], auto_pad="VALID"), 17),
    ((2, 3, 11), dict(kernel_shape=[3], strides=[2]), 17),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 2, 3], strides=[2, 2, 2], pads=[0, 1, 1, 1, 0, 1]), 17),
]


@pytest.mark.parametrize("xs,attrs,opset", MAXPOOLS)
def test_max_pool(tmp_path, xs, attrs, opset):
    one(tmp_path, "MaxPool", rand(*xs), opset=opset, **attrs)


AVGPOOLS = [
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0), 17),
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), 17),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1), 17),
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1,
                          count_include_pad=1), 11),
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1), 19),
    ((1, 2, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2]), 17),
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), 17),
    ((1, 2, 9, 9), dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]), 19),
    ((1, 2, 9, 9), dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), 22),
    ((2, 3, 11), dict(kernel_shape=[4], strides=[3], pads=[2, 1]), 17),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 2, 3], strides=[2, 2, 2], pads=[0, 1, 1, 1, 0, 1]), 17),
]


@pytest.mark.parametrize("xs,attrs,opset", AVGPOOLS)
def test_average_pool(tmp_path, xs, attrs, opset):
    g = one(tmp_path, "AveragePool", rand(*xs), opset=opset, **attrs)
    if not any(k in attrs for k in ("pads", "auto_pad", "ceil_mode")):
        assert ops_of(g) == ["pool"]  # a plain average pool stays one op


@pytest.mark.parametrize("p,attrs,opset", [
    (2, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), 17),
    (1, dict(kernel_shape=[2, 2], strides=[2, 2]), 11),
    (3, dict(kernel_shape=[2, 2]), 17),
    (2, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, dilations=[1, 2]), 18)])
def test_lp_pool(tmp_path, p, attrs, opset):
    one(tmp_path, "LpPool", rand(1, 2, 8, 9), opset=opset, p=p, **attrs)


@pytest.mark.parametrize("op,xs", [("GlobalAveragePool", (2, 3, 5, 6)), ("GlobalMaxPool", (2, 3, 5, 6)),
                                   ("GlobalAveragePool", (1, 3, 7)), ("GlobalMaxPool", (1, 2, 3, 4, 5)),
                                   ("GlobalLpPool", (1, 3, 4, 5))])
def test_global_pools(tmp_path, op, xs):
    one(tmp_path, op, rand(*xs))


# ---- normalisations --------------------------------------------------------------------------------

@pytest.mark.parametrize("xs,opset", [((2, 3, 5, 4), 17), ((4, 3), 11), ((1, 3, 6), 15), ((1, 3, 2, 3, 4), 14)])
def test_batch_norm(tmp_path, xs, opset):
    c = xs[1]
    inits = {"s": rand(c, seed=1), "b": rand(c, seed=2), "m": rand(c, seed=3), "v": rand(c, seed=4, lo=0.1)}
    g = one(tmp_path, "BatchNormalization", rand(*xs), inits, opset=opset, epsilon=1e-3)
    assert sorted(ops_of(g)) == ["add", "mul"]  # folded to x * a + b with constant a, b


def test_batch_norm_with_runtime_statistics(tmp_path):
    c = 3
    check(tmp_path, [node("BatchNormalization", ["x", "s", "b", "m", "v"])],
          {"x": rand(2, c, 4, 4), "m": rand(c, seed=3), "v": rand(c, seed=4, lo=0.1)},
          {"s": rand(c, seed=1), "b": rand(c, seed=2)})


@pytest.mark.parametrize("xs", [(2, 3, 5, 4), (1, 4, 7)])
def test_instance_norm(tmp_path, xs):
    c = xs[1]
    one(tmp_path, "InstanceNormalization", rand(*xs), {"s": rand(c, seed=1), "b": rand(c, seed=2)}, epsilon=1e-4)


@pytest.mark.parametrize("xs,axis,bias,stats", [((2, 3, 8), -1, True, False), ((2, 3, 4, 5), 2, False, True),
                                                ((2, 6), 1, True, True), ((2, 3, 4), 0, True, False)])
def test_layer_norm(tmp_path, xs, axis, bias, stats):
    norm = xs[axis:]
    inits = {"s": rand(*norm, seed=1)}
    if bias:
        inits["b"] = rand(*norm, seed=2)
    outs = ["y", "mean", "inv"] if stats else ["y"]
    check(tmp_path, [node("LayerNormalization", ["x", *inits], outs, axis=axis, epsilon=1e-3)], {"x": rand(*xs)},
          inits, outputs=outs)


def test_layer_norm_broadcast_scale_and_float16(tmp_path):
    x = rand(2, 3, 8).astype(np.float16)
    inits = {"s": rand(8, seed=1).astype(np.float16), "b": rand(1, seed=2).astype(np.float16)}
    outs = ["y", "mean", "inv"]
    check(tmp_path, [node("LayerNormalization", ["x", "s", "b"], outs, stash_type=1)], {"x": x}, inits,
          outputs=outs, out_types={"y": TensorProto.FLOAT16}, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("opset,groups", [(18, 2), (18, 4), (21, 2), (21, 1)])
def test_group_norm(tmp_path, opset, groups):
    c = 4
    n = c if opset >= 21 else groups  # opset 18: scale and bias per group; 21: per channel
    one(tmp_path, "GroupNormalization", rand(2, c, 3, 5), {"s": rand(n, seed=1), "b": rand(n, seed=2)},
        opset=opset, num_groups=groups, epsilon=1e-4)


@pytest.mark.parametrize("size", [3, 5, 1])  # onnxruntime takes odd sizes only
def test_lrn(tmp_path, size):
    one(tmp_path, "LRN", rand(2, 6, 4, 5), size=size, alpha=1e-2, beta=0.75, bias=2.0, opset=13 if size == 5 else 11)


# ---- Resize ---------------------------------------------------------------------------------------

def _resize_case(tmp_path, opset, x, attrs, scales=None, sizes=None, rtol=1e-5, atol=1e-5):
    inits = {"roi": np.zeros(0, np.float32)}
    ins = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.asarray(scales, np.float32)
        ins.append("scales")
    else:
        inits["scales"] = np.zeros(0, np.float32)
        inits["sizes"] = np.asarray(sizes, np.int64)
        ins += ["scales", "sizes"]
    return check(tmp_path, [node("Resize", ins, **attrs)], {"x": x}, inits, opset=opset, rtol=rtol, atol=atol)


RESIZE_NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
RESIZE_CTM = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]


@pytest.mark.parametrize("nearest_mode,ctm", list(itertools.product(RESIZE_NEAREST, RESIZE_CTM))
                         + [("round_prefer_floor", "tf_half_pixel_for_nn")])
@pytest.mark.parametrize("opset", [11, 19])
def test_resize_nearest(tmp_path, nearest_mode, ctm, opset):
    x = rand(1, 2, 5, 6)
    attrs = dict(mode="nearest", nearest_mode=nearest_mode, coordinate_transformation_mode=ctm)
    _resize_case(tmp_path, opset, x, attrs, scales=[1, 1, 2.0, 1.5])
    _resize_case(tmp_path, opset, x, attrs, sizes=[1, 2, 3, 4])  # downscale: rounding ties matter


@pytest.mark.parametrize("ctm,opset", [(c, o) for c in RESIZE_CTM for o in (13, 19)] + [("half_pixel_symmetric", 19)])
def test_resize_linear(tmp_path, ctm, opset):
    x = rand(1, 2, 5, 6)
    attrs = dict(mode="linear", coordinate_transformation_mode=ctm)
    _resize_case(tmp_path, opset, x, attrs, scales=[1, 1, 2.0, 1.5])
    _resize_case(tmp_path, opset, x, attrs, sizes=[1, 2, 3, 11])


@pytest.mark.parametrize("exclude", [0, 1])
def test_resize_cubic(tmp_path, exclude):
    x = rand(1, 2, 5, 6)
    attrs = dict(mode="cubic", coordinate_transformation_mode="half_pixel", exclude_outside=exclude)
    _resize_case(tmp_path, 13, x, attrs, scales=[1, 1, 2.0, 0.5])
    _resize_case(tmp_path, 13, x, dict(attrs, cubic_coeff_a=-0.5), sizes=[1, 2, 9, 4])


def test_resize_axes_aspect_and_trilinear(tmp_path):
    x = rand(1, 2, 5, 6)
    _resize_case(tmp_path, 18, x, dict(mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
                 sizes=[10, 9])
    # (onnxruntime 1.31 ignores the policy with negative axes; the spec and onnx's shape inference do not)
    _resize_case(tmp_path, 18, x, dict(mode="nearest", axes=[3, 2], keep_aspect_ratio_policy="not_smaller"),
                 sizes=[9, 7])
    _resize_case(tmp_path, 18, x, dict(mode="nearest", axes=[-1, -2]), sizes=[9, 7])
    _resize_case(tmp_path, 19, rand(1, 1, 3, 4, 5), dict(mode="linear", coordinate_transformation_mode="asymmetric"),
                 scales=[1, 1, 2, 1.5, 0.6])


def test_resize_integer_upscale_is_a_gather(tmp_path):
    g = _resize_case(tmp_path, 13, rand(1, 2, 3, 4), dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                                          nearest_mode="floor"), scales=[1, 1, 2, 2])
    assert ops_of(g) == ["take", "take"]


# ---- quantisation ------------------------------------------------------------------------------

def test_quantize_dequantize_per_tensor(tmp_path):
    x = rand(2, 3, 4) * 3
    nodes = [node("QuantizeLinear", ["x", "s", "z"], ["q"]), node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = {"s": np.float32(0.05), "z": np.uint8(128)}
    check(tmp_path, nodes, {"x": x}, inits, outputs=["y", "q"], out_types={"q": TensorProto.UINT8}, atol=0, rtol=0)


@pytest.mark.parametrize("opset", [13, 21])
def test_quantize_dequantize_per_axis(tmp_path, opset):
    x = rand(2, 3, 4) * 3
    s, z = np.array([0.02, 0.05, 0.1], np.float32), np.array([-3, 0, 5], np.int8)
    nodes = [node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=-2)]
    check(tmp_path, nodes, {"x": x}, {"s": s, "z": z}, outputs=["y", "q"], opset=opset,
          out_types={"q": TensorProto.INT8}, atol=0, rtol=0)


def test_quantize_blocked_and_no_zero_point(tmp_path):
    x = rand(2, 6) * 3
    s = np.array([[0.02, 0.05], [0.1, 0.03]], np.float32)  # blocks of 4 along axis 1 (the last one short)
    nodes = [node("QuantizeLinear", ["x", "s"], ["q"], axis=1, block_size=4),
             node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=4)]
    check(tmp_path, nodes, {"x": x}, {"s": s}, outputs=["y", "q"], opset=21, out_types={"q": TensorProto.UINT8},
          atol=0, rtol=0)


def test_dequantize_a_runtime_int32_and_a_weight(tmp_path):
    w = np.random.default_rng(1).integers(-128, 127, (4, 3)).astype(np.int8)
    nodes = [node("DequantizeLinear", ["x", "sx"], ["xf"]),
             node("DequantizeLinear", ["w", "sw", "zw"], ["wf"], axis=1),
             node("MatMul", ["xf", "wf"])]
    x = np.random.default_rng(0).integers(-1000, 1000, (2, 4)).astype(np.int32)
    g = check(tmp_path, nodes, {"x": x}, {"sx": np.float32(0.01), "w": w, "sw": np.array([0.1, 0.2, 0.3], np.float32),
                                          "zw": np.zeros(3, np.int8)})
    assert g.nodes[-1].op == "dot" and g.nodes[-1].inputs[1].is_param  # the weight's DQ folded while importing


def test_quantize_output_dtype(tmp_path):
    x = rand(2, 5) * 4
    nodes = [node("QuantizeLinear", ["x", "s"], ["q"], output_dtype=TensorProto.INT8),
             node("DequantizeLinear", ["q", "s"], ["y"])]
    check(tmp_path, nodes, {"x": x}, {"s": np.float32(0.03)}, outputs=["y", "q"], opset=21,
          out_types={"q": TensorProto.INT8}, atol=0, rtol=0)


# ---- the newest opsets ------------------------------------------------------------------------------

NEWEST = onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("opset,reference", [(26, "onnxruntime"), (NEWEST, "onnx")])
def test_newest_opsets(tmp_path, opset, reference):
    """A net of this module's ops at onnxruntime's newest opset, and at onnx's newest (which onnxruntime
    may not load yet: checked against onnx's reference evaluator)."""
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], ceil_mode=1, strides=[2, 2]),
             node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
             node("GroupNormalization", ["a", "gs", "gb"], ["n"], num_groups=2),
             node("Einsum", ["n", "n"], ["e"], equation="bchw,bdhw->bcd"),
             node("QuantizeLinear", ["e", "s", "z"], ["q"]),
             node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             node("LayerNormalization", ["d", "ls"], ["y"])]
    inits = {"w": rand(4, 3, 3, 3, seed=1), "gs": rand(4, seed=2), "gb": rand(4, seed=3), "s": np.float32(0.5),
             "z": np.int8(3), "ls": rand(4, seed=4)}
    check(tmp_path, nodes, {"x": rand(1, 3, 9, 9)}, inits, opset=opset, reference=reference, rtol=1e-4, atol=1e-4)


# ---- unsupported forms fail naming the node and the op ---------------------------------------------

@pytest.mark.parametrize("nodes,inits,match", [
    ([node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])], {}, "Indices"),
    ([node("BatchNormalization", ["x", "s", "b", "m", "v"], training_mode=1)],
     {k: np.ones(3, np.float32) for k in "sbmv"}, "training_mode"),
    ([node("Einsum", ["x"], equation="bcii->bci")], {}, "diagonal"),
    ([node("Resize", ["x", "roi", "sc"], mode="linear", coordinate_transformation_mode="tf_crop_and_resize")],
     {"roi": np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32), "sc": np.array([1, 1, 2, 2], np.float32)},
     "tf_crop_and_resize"),
    ([node("Resize", ["x", "", "sc"], mode="linear", antialias=1)], {"sc": np.array([1, 1, .5, .5], np.float32)},
     "antialias"),
])
def test_unsupported_forms_fail_clearly(tmp_path, nodes, inits, match):
    m = model_of(nodes, {"x": rand(1, 3, 4, 4)}, inits, outputs=[nodes[0].output[0]], opset=19)
    path = tmp_path / "bad.onnx"
    onnx.save(m, str(path))
    with pytest.raises(OnnxImportError, match=match) as e:
        load(path).trace()
    msg = str(e.value)
    assert nodes[0].name in msg and f"({nodes[0].op_type}, opset 19)" in msg


# ---- end to end ---------------------------------------------------------------------------------------

def conv_net(path):
    r = lambda *s, seed: rand(*s, seed=seed) * 0.3  # noqa: E731
    inits = {"w1": r(8, 3, 3, 3, seed=1), "b1": r(8, seed=2), "s": rand(8, seed=3, lo=0.5), "bb": r(8, seed=4),
             "m": r(8, seed=5), "v": rand(8, seed=6, lo=0.5), "shape": np.array([1, -1], np.int64),
             "w2": r(5, 8 * 8 * 8, seed=7), "b2": r(5, seed=8)}
    nodes = [node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
             node("Relu", ["n"], ["r"]),
             node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Reshape", ["p", "shape"], ["f"]),
             node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    onnx.save(model_of(nodes, {"x": rand(1, 3, 16, 16)}, inits), str(path))
    return load(path)


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_conv_net_builds(tmp_path, target):
    spec = conv_net(tmp_path / "net.onnx")
    x = rand(1, 3, 16, 16, seed=9)
    got, _ = run_graph(spec.trace(), [x])
    want, _ = spec.reference()(x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    import graphopt
    graphopt.build(spec, target=target, out=tmp_path / "a", frames=40, log=lambda m: None)
