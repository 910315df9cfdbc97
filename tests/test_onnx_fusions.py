"""Tests for the ONNX emitter's fused lowerings (graphopt/targets/onnx_fusions.py): each pattern is
emitted as fewer ONNX nodes, gives the interpreter's numbers in onnxruntime, and is left alone where
it must not apply; without fusion (--no-fuse) every IR node is lowered on its own."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from graphopt.ir import Graph, Interpreter, TensorType, verify
from graphopt.targets.onnx import to_onnx

pytest.importorskip("onnxruntime")


def f32(*shape):
    return TensorType(shape, "float32")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def finish(g, *outs):
    g.outputs, g.output_names = list(outs), [f"y{i}" for i in range(len(outs))]
    verify(g)
    return g


def ops_and_check(g: Graph, fuse: bool = True) -> Counter:
    """The ONNX op histogram, after checking onnxruntime against the float32 interpreter."""
    import onnxruntime as ort
    model = to_onnx(g, fuse=fuse)
    inputs = [np.abs(rand(*v.shape, seed=i)) + 0.5 for i, v in enumerate(g.inputs)]  # positive: rsqrt, sqrt
    want, _ = Interpreter(g, "float32").run(inputs, [])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(g.output_names, {v.name: x for v, x in zip(g.inputs, inputs)})
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return Counter(n.op_type for n in model.graph.node)


def slices(g, x, axis, bounds):
    out = []
    for lo, hi in bounds:
        starts, limits = [0] * len(x.shape), list(x.shape)
        starts[axis], limits[axis] = lo, hi
        out.append(g.op("slice", x, starts=tuple(starts), limits=tuple(limits), strides=(1,) * len(x.shape)))
    return out


def matmul(g, x, w):
    return g.op("dot", x, w, lhs_contract=(len(x.shape) - 1,), rhs_contract=(0,))


def test_slices_that_partition_an_axis_are_one_split():
    g = Graph()
    x = g.add_input("x", f32(2, 9))
    a, b, c = slices(g, x, 1, [(0, 2), (2, 6), (6, 9)])
    finish(g, g.op("neg", a), b, g.op("exp", c))
    assert ops_and_check(g) == Counter({"Split": 1, "Neg": 1, "Exp": 1})
    assert ops_and_check(g, fuse=False)["Slice"] == 3


def test_slices_that_leave_a_gap_or_cut_two_axes_stay_slices():
    g = Graph()
    x = g.add_input("x", f32(4, 9))
    a, b = slices(g, x, 1, [(0, 2), (3, 9)])  # a gap at 2
    c = g.op("slice", x, starts=(0, 0), limits=(2, 2), strides=(1, 1))  # cuts both axes
    finish(g, a, b, c)
    ops = ops_and_check(g)
    assert "Split" not in ops and ops["Slice"] == 3


def test_sibling_dots_are_one_matmul_and_a_split():
    g = Graph()
    u = g.add_input("u", f32(1, 6))
    ys = [matmul(g, u, g.add_param(rand(6, n, seed=n))) for n in (3, 5, 2)]
    finish(g, g.op("exp", ys[0]), ys[1], g.op("neg", ys[2]))
    ops = ops_and_check(g)
    assert ops["MatMul"] == 1 and ops["Split"] == 1 and "Gemm" not in ops


def test_dot_plus_bias_is_one_gemm_but_not_when_the_bias_varies_by_row():
    g = Graph()
    x = g.add_input("x", f32(2, 4))
    finish(g, g.op("add", matmul(g, x, g.add_param(rand(4, 3, seed=1))), g.add_param(rand(3, seed=2))))
    assert ops_and_check(g) == Counter({"Gemm": 1})
    g = Graph()
    x = g.add_input("x", f32(2, 4))
    finish(g, g.op("add", matmul(g, x, g.add_param(rand(4, 3, seed=1))), g.add_param(rand(2, 1, seed=2))))
    assert ops_and_check(g) == Counter({"MatMul": 1, "Add": 1})


def test_reduce_then_keepdims_reshape_is_one_reduce_and_sum_of_squares_is_reduce_sum_square():
    g = Graph()
    x = g.add_input("x", f32(2, 5))
    s = g.op("reshape", g.op("reduce_sum", g.op("mul", x, x), axes=(1,)), shape=(2, 1))
    m = g.op("reshape", g.op("reduce_max", x, axes=(1,)), shape=(2, 1))
    finish(g, g.op("add", s, m))
    assert ops_and_check(g) == Counter({"ReduceSumSquare": 1, "ReduceMax": 1, "Add": 1})


def test_sum_of_squares_stays_apart_where_the_square_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(2, 5))
    sq = g.op("mul", x, x)
    finish(g, g.op("reduce_sum", sq, axes=(1,)), sq)
    assert ops_and_check(g) == Counter({"Mul": 1, "ReduceSum": 1})


def test_product_with_rsqrt_is_a_division_by_sqrt_unless_the_rsqrt_is_shared():
    g = Graph()
    x, y = g.add_input("x", f32(2, 5)), g.add_input("y", f32(2, 1))
    finish(g, g.op("mul", x, g.op("rsqrt", y)))
    assert ops_and_check(g) == Counter({"Sqrt": 1, "Div": 1})
    assert ops_and_check(g, fuse=False) == Counter({"Sqrt": 1, "Reciprocal": 1, "Mul": 1})
    g = Graph()
    x, y = g.add_input("x", f32(2, 5)), g.add_input("y", f32(2, 1))
    r = g.op("rsqrt", y)
    finish(g, g.op("mul", x, r), r)
    assert ops_and_check(g) == Counter({"Sqrt": 1, "Reciprocal": 1, "Mul": 1})


def test_a_fused_value_that_is_a_graph_output_keeps_its_name():
    g = Graph()
    x = g.add_input("x", f32(2, 6))
    a, b = slices(g, x, 1, [(0, 3), (3, 6)])
    finish(g, a, b)
    model = to_onnx(g)
    (split,) = model.graph.node
    assert split.op_type == "Split" and list(split.output) == ["y0", "y1"]


def test_a_pool_over_the_whole_image_is_a_global_pool():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    w = (1, 1, 4, 5)
    finish(g, g.op("pool", x, mode="avg", window=w, strides=w, pads=((0, 0),) * 4),
           g.op("pool", x, mode="max", window=w, strides=w, pads=((0, 0),) * 4),
           g.op("pool", x, mode="avg", window=(1, 1, 2, 5), strides=(1, 1, 2, 5), pads=((0, 0),) * 4))
    assert ops_and_check(g) == Counter({"GlobalAveragePool": 1, "GlobalMaxPool": 1, "AveragePool": 1})


def test_sibling_dots_with_a_bias_on_one_are_one_gemm_and_a_split():
    g = Graph()
    u = g.add_input("u", f32(1, 6))
    a = matmul(g, u, g.add_param(rand(6, 3, seed=1)))
    b = g.op("add", matmul(g, u, g.add_param(rand(6, 4, seed=2))), g.add_param(rand(4, seed=3)))
    finish(g, g.op("exp", a), b)
    assert ops_and_check(g) == Counter({"Gemm": 1, "Split": 1, "Exp": 1})


def test_dots_that_share_a_weight_but_not_their_input_are_not_siblings():
    """Sibling dots read one x: x1 @ W and x2 @ W stay two MatMuls (they were once fused as one MatMul of x1)."""
    g = Graph()
    x1, x2 = g.add_input("x1", f32(1, 6)), g.add_input("x2", f32(1, 6))
    w = g.add_param(rand(6, 3, seed=3))
    finish(g, matmul(g, x1, w), matmul(g, x2, w))
    assert ops_and_check(g) == Counter({"MatMul": 2})


def test_the_plan_counts_the_groups_each_rule_takes():
    """The fusions are rules (onnx_fusions.RULES), applied in order; a node joins one group at most."""
    from graphopt.targets import onnx_fusions
    assert [r.name for r in onnx_fusions.RULES] == ["sibling-dots", "split", "gemm", "reduce-keepdims", "div-by-sqrt"]
    g = Graph()
    x, y = g.add_input("x", f32(2, 4)), g.add_input("y", f32(2, 1))
    gemm = g.op("add", matmul(g, x, g.add_param(rand(4, 3, seed=1))), g.add_param(rand(3, seed=2)))
    a, b = slices(g, x, 1, [(0, 1), (1, 4)])
    div = g.op("mul", g.op("rsqrt", y), g.op("exp", y))  # rsqrt first: the rule tries both orders
    finish(g, gemm, a, b, div)
    assert dict(onnx_fusions.plan(g).fired) == {"gemm": 1, "split": 1, "div-by-sqrt": 1}
    assert ops_and_check(g) == Counter({"Gemm": 1, "Split": 1, "Exp": 1, "Sqrt": 1, "Div": 1})
