"""Unit tests for the rewrite rules of the "algebra" and "layout" passes (passes/algebra.py and
passes/layout.py), on small hand-built graphs.

Every rule gets cases where it must fire (checked on the graph's structure: op histogram, node
attributes, folded constants) and cases where it must not, and every case checks that the float64
interpreter gives the same outputs before and after the pass. Constants that a rule folds (W1 @ W2,
W * c, ...) are small dyadic numbers so that the folded float32 constant is exact and the float64
comparison can be tight.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.ir import Graph, Interpreter, TensorType, verify
from graphopt.passes import run_pipeline
from graphopt.passes import algebra, forms, layout, lowering, numerics
from graphopt.passes.shapes import regrouped

# ---- helpers ----------------------------------------------------------------------------------


def f32(*shape: int) -> TensorType:
    return TensorType(shape, "float32")


def i32(*shape: int) -> TensorType:
    return TensorType(shape, "int32")


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def dyadic(*shape: int, seed: int = 0) -> np.ndarray:
    """Quarter-integers in [-1, 1]: products and short sums of them are exact in float32."""
    return (np.random.default_rng(seed).integers(-4, 5, shape) / 4).astype(np.float32)


def finish(g: Graph, *outs):
    g.outputs = list(outs)
    g.output_names = [f"y{i}" for i in range(len(outs))]
    verify(g)
    return g


def sample_inputs(g: Graph, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    return [(scale * randn(*v.shape, seed=seed + i)).astype(v.dtype) for i, v in enumerate(g.inputs)]


def run64(g: Graph, inputs, state=None):
    state = [s.init for s in g.state] if state is None else state
    return Interpreter(g, "float64").run(list(inputs), list(state))


def rewrite_and_check(g: Graph, names=("algebra",), inputs=None, rtol=1e-9, atol=1e-12):
    """Run passes through run_pipeline, verify, and check the float64 outputs are unchanged.

    Returns (op histogram after, whether any pass reported a change)."""
    inputs = sample_inputs(g) if inputs is None else inputs
    before, before_state = run64(g, inputs)
    types = [v.type for v in g.outputs]
    _, report = run_pipeline(g, list(names))
    verify(g)
    after, after_state = run64(g, inputs)
    assert [v.type for v in g.outputs] == types
    for a, b in zip(before + before_state, after + after_state):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
    return g.op_histogram(), any(e["changed"] for e in report["passes"][1:])


def assert_no_rewrite(g: Graph, names=("algebra",), inputs=None):
    """The passes must leave the graph alone (and the outputs unchanged)."""
    hist0, n0 = g.op_histogram(), len(g.nodes)
    ops0 = [(n.op, n.attrs_key()) for n in g.nodes]
    hist, changed = rewrite_and_check(g, names, inputs)
    assert not changed, f"a rule fired:\n{g}"
    assert hist == hist0 and len(g.nodes) == n0
    assert [(n.op, n.attrs_key()) for n in g.nodes] == ops0


def producer(v):
    assert v.producer is not None, f"{v} has no producer"
    return v.producer


def matmul(g: Graph, x, w, k: int | None = None):
    """x[..., k, ...] @ w[k, n] contracting x's axis k (default: the last)."""
    k = len(x.shape) - 1 if k is None else k
    return g.op("dot", x, w, lhs_contract=(k,), rhs_contract=(0,))


def conv2d(g: Graph, x, w, bias=None):
    ins = [x, w] + ([bias] if bias is not None else [])
    return g.add_node("conv", ins, strides=(1, 1), pads=((0, 0), (0, 0)), dilations=(1, 1), groups=1).outputs[0]


def rule_names(rules) -> set[str]:
    return {r.name for r in rules}


def test_every_rule_is_covered():
    """This file has tests for each rule name; a new rule should get tests too."""
    assert rule_names(algebra.RULES) == {"clamp", "sub-of-sub", "scale-chain", "scalar-regroup", "scale-into-dot",
                                         "dot-of-dot", "slice-of-dot", "mul-reduce-to-dot", "avg-pool", "conv-of-conv",
                                         "scalar-scale-into-dot", "mean-eps-regroup", "window-conv-to-reduce",
                                         "lerp", "scale-out-of-add", "dot-output-scale"}
    assert rule_names(layout.RULES) == {"transpose-as-reshape", "sink-transpose", "transpose-of-concat",
                                        "dot-as-conv1x1", "transpose-into-dot", "transpose-into-reduce",
                                        "conv-bias", "conv-scale", "pool-of-transpose", "dot-of-unit-reshape",
                                        "conv-of-conv", "conv-input-scale", "scale-out-of-add", "dot-output-scale",
                                        "reduce-of-unit-reshape"}
    assert rule_names(lowering.RULES) == {"expand-lhs-dilation"}
    assert rule_names(forms.RULES) == {"vector-dot-as-matmul", "global-mean", "scale-into-dot", "bias-before-reshape"}
    assert rule_names(numerics.RULES) == {"split-long-reduction"}


# ==== algebra ====================================================================================

# ---- clamp -----------------------------------------------------------------------------------------


def _relu6(g, x, lo_v, hi_v, form):
    lo, hi = g.add_param(lo_v), g.add_param(hi_v)
    if form == "min(max(x,lo),hi)":
        return g.op("min", g.op("max", x, lo), hi)
    if form == "min(hi,max(lo,x))":
        return g.op("min", hi, g.op("max", lo, x))
    if form == "max(min(x,hi),lo)":
        return g.op("max", g.op("min", x, hi), lo)
    assert form == "max(lo,min(hi,x))"
    return g.op("max", lo, g.op("min", hi, x))


FORMS = ["min(max(x,lo),hi)", "min(hi,max(lo,x))", "max(min(x,hi),lo)", "max(lo,min(hi,x))"]


@pytest.mark.parametrize("form", FORMS)
def test_relu6_becomes_clamp(form):
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    finish(g, _relu6(g, x, np.float32(0), np.float32(6), form))
    inputs = sample_inputs(g, scale=5.0)  # values on both sides of both bounds
    assert (inputs[0] < 0).any() and (inputs[0] > 6).any()
    hist, changed = rewrite_and_check(g, inputs=inputs)
    assert changed and hist == {"clamp": 1}
    (node,) = g.nodes
    assert node.inputs == [x]
    assert node.attrs == {"lo": 0.0, "hi": 6.0}


@pytest.mark.parametrize("bound_shape", [(), (1,), (1, 1)])
def test_clamp_general_bounds_and_size1_shapes(bound_shape):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    lo, hi = np.full(bound_shape, -1.5, np.float32), np.full(bound_shape, 2.5, np.float32)
    finish(g, _relu6(g, x, lo, hi, "max(min(x,hi),lo)"))
    hist, changed = rewrite_and_check(g, inputs=sample_inputs(g, scale=3.0))
    assert changed and hist == {"clamp": 1}
    assert g.nodes[0].attrs == {"lo": -1.5, "hi": 2.5}


def test_clamp_with_equal_bounds_fires():
    g = Graph()
    x = g.add_input("x", f32(5))
    finish(g, _relu6(g, x, np.float32(1), np.float32(1), "min(max(x,lo),hi)"))
    hist, _ = rewrite_and_check(g)
    assert hist == {"clamp": 1} and g.nodes[0].attrs == {"lo": 1.0, "hi": 1.0}


@pytest.mark.parametrize("form", FORMS)
def test_clamp_not_fired_when_lo_above_hi(form):
    # min(max(x, 6), 0) is the constant 0, not a clamp to an empty range
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, _relu6(g, x, np.float32(6), np.float32(0), form))
    assert_no_rewrite(g, inputs=sample_inputs(g, scale=5.0))


def test_clamp_not_fired_for_non_scalar_bound():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, _relu6(g, x, np.zeros(3, np.float32), np.float32(6), "min(max(x,lo),hi)"),
           _relu6(g, x, np.float32(0), np.full((2, 1), 6, np.float32), "max(min(x,hi),lo)"))
    assert_no_rewrite(g, inputs=sample_inputs(g, scale=5.0))


def test_clamp_not_fired_for_integer_dtype():
    g = Graph()
    x = g.add_input("x", i32(2, 3))
    finish(g, _relu6(g, x, np.int32(0), np.int32(6), "min(max(x,lo),hi)"))
    inputs = [np.int32([[-7, 0, 3], [6, 9, -1]])]
    assert_no_rewrite(g, inputs=inputs)


def test_clamp_not_fired_when_bound_broadcasts_x_up():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = _relu6(g, x, np.zeros((1, 1), np.float32), np.float32(6), "min(max(x,lo),hi)")
    finish(g, y)
    assert y.shape == (1, 3)
    assert_no_rewrite(g, inputs=sample_inputs(g, scale=5.0))


def test_clamp_not_fired_for_non_constant_bound():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    lo = g.add_input("lo", f32())
    finish(g, g.op("min", g.op("max", x, lo), g.add_param(np.float32(6))))
    assert_no_rewrite(g)


# ---- sub-of-sub -----------------------------------------------------------------------------------


def test_sub_of_sub_same_value_cancels():
    g = Graph()
    a = g.add_input("a", f32(2, 3))
    x = g.add_input("x", f32(2, 3))
    finish(g, g.op("exp", g.op("sub", a, g.op("sub", a, x))))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"exp": 1}
    assert g.nodes[0].inputs == [x]


def test_sub_of_sub_equal_constants_cancel():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    a1 = g.add_param(np.float32([1.0, 2.0, 3.0]))
    a2 = g.add_param(np.float32([1.0, 2.0, 3.0]))  # another parameter with the same contents
    finish(g, g.op("sub", a1, g.op("sub", a2, x)))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {} and g.outputs[0] is x


def test_sub_of_sub_not_fired_for_different_a():
    g = Graph()
    a = g.add_input("a", f32(2, 3))
    b = g.add_input("b", f32(2, 3))
    x = g.add_input("x", f32(2, 3))
    c1 = g.add_param(np.float32([1.0, 2.0, 3.0]))
    c2 = g.add_param(np.float32([1.0, 2.0, 4.0]))
    finish(g, g.op("sub", a, g.op("sub", b, x)), g.op("sub", c1, g.op("sub", c2, x)),
           g.op("sub", g.op("sub", a, x), a))  # (a - x) - a is not the pattern
    assert_no_rewrite(g)


def test_sub_of_sub_not_fired_when_x_is_broadcast_up():
    # a - (a - x) has a's shape; x alone is smaller
    g = Graph()
    a = g.add_input("a", f32(2, 3))
    x = g.add_input("x", f32(3))
    finish(g, g.op("sub", a, g.op("sub", a, x)))
    assert_no_rewrite(g)


# ---- scale-chain ------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["(x*c1)*c2", "(c1*x)*c2", "c2*(x*c1)", "c2*(c1*x)"])
def test_scale_chain_folds_constants(order):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    c1v, c2v = np.float32([0.5, -2.0, 1.5]), np.float32([[0.25], [3.0]])
    c1, c2 = g.add_param(c1v), g.add_param(c2v)
    inner = g.op("mul", x, c1) if order.startswith("(x") or order.endswith("(x*c1)") else g.op("mul", c1, x)
    y = g.op("mul", inner, c2) if order.startswith("(") else g.op("mul", c2, inner)
    finish(g, y)
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"mul": 1}
    (node,) = g.nodes
    assert node.inputs[0] is x and node.inputs[1].is_param
    np.testing.assert_array_equal(node.inputs[1].const, c1v * c2v)


def test_scale_chain_of_three_folds_to_one_mul():
    g = Graph()
    x = g.add_input("x", f32(4))
    y = x
    for c in (2.0, 0.5, -4.0):
        y = g.op("mul", y, g.add_param(np.float32(c)))
    finish(g, y)
    hist, _ = rewrite_and_check(g)
    assert hist == {"mul": 1}
    assert float(g.nodes[0].inputs[1].const) == -4.0


def test_scale_chain_not_fired_when_inner_has_second_reader():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    inner = g.op("mul", x, g.add_param(np.float32([0.5, 2.0, 1.5])))
    y = g.op("mul", inner, g.add_param(np.float32(3.0)))
    finish(g, y, g.op("exp", inner))
    assert_no_rewrite(g)


def test_scale_chain_not_fired_when_inner_is_an_output():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    inner = g.op("mul", x, g.add_param(np.float32(0.5)))
    finish(g, g.op("mul", inner, g.add_param(np.float32(3.0))), inner)
    assert_no_rewrite(g)


# ---- scalar-regroup ------------------------------------------------------------------------------------


@pytest.mark.parametrize("s_shape", [(), (1,), (1, 1)])
def test_scalar_regroup_groups_the_scalars(s_shape):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    s = g.add_input("s", f32(*s_shape))
    c = g.add_param(np.float32(0.5))
    y = g.op("mul", g.op("mul", x, s), c)
    finish(g, y)
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"mul": 2}
    out = producer(g.outputs[0])
    assert out.op == "mul" and out.inputs[0] is x
    sc = producer(out.inputs[1])
    assert sc.op == "mul" and set(map(id, sc.inputs)) == {id(s), id(c)}


def test_scalar_regroup_fires_with_the_scalar_first():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    s = g.add_input("s", f32())
    c = g.add_param(np.float32(0.5))
    finish(g, g.op("mul", g.op("mul", s, x), c))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"mul": 2}
    out = producer(g.outputs[0])
    assert out.inputs[0] is x and producer(out.inputs[1]).op == "mul"


def test_scalar_regroup_shares_the_scalar_product_after_cse():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    z = g.add_input("z", f32(3))
    s = g.add_input("s", f32(1))
    c = g.add_param(np.float32(0.5))
    finish(g, g.op("mul", g.op("mul", x, s), c), g.op("mul", g.op("mul", z, s), c))
    assert g.op_histogram() == {"mul": 4}
    hist, _ = rewrite_and_check(g, ["algebra", "cse"])
    assert hist == {"mul": 3}  # s * c once, then x * (s*c) and z * (s*c)


def test_scalar_regroup_not_fired_when_inner_has_second_reader():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    s = g.add_input("s", f32(1))
    inner = g.op("mul", x, s)
    finish(g, g.op("mul", inner, g.add_param(np.float32(0.5))), g.op("neg", inner))
    assert_no_rewrite(g)


def test_scalar_regroup_not_fired_for_non_scalar_s_or_c():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    s = g.add_input("s", f32(3))  # not size 1
    t = g.add_input("t", f32(1))
    finish(g, g.op("mul", g.op("mul", x, s), g.add_param(np.float32(0.5))),
           g.op("mul", g.op("mul", x, t), g.add_param(np.float32([0.5, 2.0, 4.0]))))  # c not size 1
    assert_no_rewrite(g)


# ---- scale-into-dot ------------------------------------------------------------------------------------


@pytest.mark.parametrize("c_shape", [(3,), (1, 3), (), (1,)])
@pytest.mark.parametrize("commuted", [False, True])
def test_scale_into_dot_folds_scale_into_weight(c_shape, commuted):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    cv = dyadic(*c_shape, seed=1) + np.float32(2)  # nonzero
    Wv = dyadic(3, 4, seed=2)
    c, W = g.add_param(cv), g.add_param(Wv)
    scaled = g.op("mul", c, x) if commuted else g.op("mul", x, c)
    finish(g, matmul(g, scaled, W))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"dot": 1}
    (node,) = g.nodes
    assert node.inputs[0] is x
    np.testing.assert_array_equal(node.inputs[1].const, Wv * cv.reshape(-1, 1))


def test_scale_into_dot_division_by_powers_of_two():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    cv = np.float32([0.5, 2.0, -4.0])
    Wv = dyadic(3, 4, seed=3)
    finish(g, matmul(g, g.op("div", x, g.add_param(cv)), g.add_param(Wv)))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"dot": 1}
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, Wv / cv[:, None])


def test_scale_into_dot_on_a_middle_contracting_axis():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    cv = np.float32([[0.5], [2.0], [-1.5]])  # (3, 1): constant along axes 0 and 2
    Wv = dyadic(3, 5, seed=4)
    y = matmul(g, g.op("mul", x, g.add_param(cv)), g.add_param(Wv), k=1)
    finish(g, y)
    assert y.shape == (2, 4, 5)
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1}
    node = g.nodes[0]
    assert node.inputs[0] is x and node.attrs["lhs_contract"] == (1,)
    np.testing.assert_array_equal(node.inputs[1].const, Wv * cv)


def test_scale_into_dot_not_fired_when_scale_varies_along_free_axis():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, matmul(g, g.op("mul", x, g.add_param(np.float32([[0.5], [2.0]]))), g.add_param(dyadic(3, 4))),
           matmul(g, g.op("mul", x, g.add_param(dyadic(2, 3, seed=5) + 2)), g.add_param(dyadic(3, 4, seed=6))))
    assert_no_rewrite(g)


def test_scale_into_dot_not_fired_when_scale_broadcasts_x_up():
    g = Graph()
    x = g.add_input("x", f32(3))
    scaled = g.op("mul", x, g.add_param(np.float32([[0.5, 2.0, 1.0], [1.5, 0.25, 4.0]])))
    assert scaled.shape == (2, 3)
    finish(g, matmul(g, scaled, g.add_param(dyadic(3, 4))))
    assert_no_rewrite(g)


def test_scale_into_dot_with_a_second_reader_keeps_the_product_for_it():
    """Folding the scale into the dot duplicates no work: the dot reads x, the other reader the product (a
    global mean's factor read by several projections folds into each of them)."""
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    scaled = g.op("mul", x, g.add_param(np.float32([0.5, 2.0, 1.5])))
    finish(g, matmul(g, scaled, g.add_param(dyadic(3, 4))), scaled)
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"mul": 1, "dot": 1}
    dot = producer(g.outputs[0])
    assert dot.inputs[0] is x and g.outputs[1].producer.op == "mul"


def test_scale_into_dot_not_fired_for_non_constant_weight_or_scale():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    w = g.add_input("w", f32(3, 4))
    s = g.add_input("s", f32(3))
    finish(g, matmul(g, g.op("mul", x, g.add_param(np.float32([0.5, 2.0, 1.5]))), w),
           matmul(g, g.op("mul", x, s), g.add_param(dyadic(3, 4))))
    assert_no_rewrite(g)


def test_scale_into_dot_integer_division_is_not_folded():
    g = Graph()
    x = g.add_input("x", i32(1, 2))
    y = matmul(g, g.op("div", x, g.add_param(np.int32([2, 2]))), g.add_param(np.int32([[1], [1]])))
    finish(g, y)
    inputs = [np.int32([[3, 3]])]
    assert run64(g, inputs)[0][0].tolist() == [[2]]  # 3 // 2 + 3 // 2
    hist, _ = rewrite_and_check(g, inputs=inputs)  # folding 1/c into W would give [[0]]
    assert hist == {"div": 1, "dot": 1}


def test_scale_into_dot_integer_multiplication_is_exact():
    g = Graph()
    x = g.add_input("x", i32(2, 3))
    cv, Wv = np.int32([2, -3, 1]), np.int32([[1, 2], [0, -1], [3, 1]])
    finish(g, matmul(g, g.op("mul", x, g.add_param(cv)), g.add_param(Wv)))
    inputs = [np.int32([[1, 2, 3], [-4, 5, 6]])]
    hist, _ = rewrite_and_check(g, inputs=inputs, rtol=0, atol=0)
    assert hist == {"dot": 1}
    assert g.nodes[0].inputs[1].dtype == "int32"
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, Wv * cv[:, None])


# ---- dot-of-dot -------------------------------------------------------------------------------------


def test_dot_of_dot_folds_weights():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    W1v, W2v = dyadic(3, 3, seed=1), dyadic(3, 3, seed=2)
    finish(g, matmul(g, matmul(g, x, g.add_param(W1v)), g.add_param(W2v)))
    f0 = g.flops()
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"dot": 1}
    (node,) = g.nodes
    assert node.inputs[0] is x
    np.testing.assert_array_equal(node.inputs[1].const, W1v @ W2v)
    assert g.flops() < f0


def test_dot_of_dot_chain_of_three():
    g = Graph()
    x = g.add_input("x", f32(2, 4))
    Ws = [dyadic(4, 3, seed=1), dyadic(3, 3, seed=2), dyadic(3, 2, seed=3)]
    y = x
    for W in Ws:
        y = matmul(g, y, g.add_param(W))
    finish(g, y)
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1}
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, Ws[0] @ Ws[1] @ Ws[2])


def test_dot_of_dot_through_a_unit_reshape():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    W1v, W2v = dyadic(3, 3, seed=1), dyadic(3, 2, seed=2)
    mid = g.op("reshape", matmul(g, x, g.add_param(W1v)), shape=(2, 1, 3))
    y = matmul(g, mid, g.add_param(W2v))
    finish(g, y)
    assert y.shape == (2, 1, 2)
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1, "reshape": 1}
    dot = g.outputs[0].producer.inputs[0].producer
    assert dot.op == "dot" and dot.inputs[0] is x
    np.testing.assert_array_equal(dot.inputs[1].const, W1v @ W2v)


def test_dot_of_dot_on_rank3_input():
    g = Graph()
    x = g.add_input("x", f32(2, 2, 3))
    W1v, W2v = dyadic(3, 2, seed=1), dyadic(2, 2, seed=2)  # k*n = 6 <= k*m + m*n = 10
    finish(g, matmul(g, matmul(g, x, g.add_param(W1v)), g.add_param(W2v)))
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1}


def test_dot_of_dot_not_fired_when_it_adds_flops():
    # x @ (64x2) @ (2x64): a rank-2 bottleneck; W1 @ W2 would be a dense 64x64
    g = Graph()
    x = g.add_input("x", f32(2, 64))
    finish(g, matmul(g, matmul(g, x, g.add_param(dyadic(64, 2, seed=1))), g.add_param(dyadic(2, 64, seed=2))))
    assert_no_rewrite(g)


def test_dot_of_dot_not_fired_when_intermediate_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    mid = matmul(g, x, g.add_param(dyadic(3, 3, seed=1)))
    finish(g, matmul(g, mid, g.add_param(dyadic(3, 3, seed=2))), g.op("neg", mid))
    assert_no_rewrite(g)


def test_dot_of_dot_not_fired_through_reshape_that_changes_last_dim():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    mid = g.op("reshape", matmul(g, x, g.add_param(dyadic(3, 4, seed=1))), shape=(4, 2))
    finish(g, matmul(g, mid, g.add_param(dyadic(2, 2, seed=2))))
    assert_no_rewrite(g)


def test_dot_of_dot_not_fired_when_inner_contracts_a_non_last_axis():
    g = Graph()
    x = g.add_input("x", f32(3, 2))
    mid = matmul(g, x, g.add_param(dyadic(3, 3, seed=1)), k=0)  # (2, 3)
    finish(g, matmul(g, mid, g.add_param(dyadic(3, 3, seed=2))))
    assert_no_rewrite(g)


# ---- slice-of-dot ------------------------------------------------------------------------------------


def test_slice_of_dot_splits_the_weight():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    Wv = randn(3, 6, seed=1)
    d = matmul(g, x, g.add_param(Wv))
    s1 = g.op("slice", d, starts=(0, 0), limits=(2, 2), strides=(1, 1))
    s2 = g.op("slice", d, starts=(0, 2), limits=(2, 6), strides=(1, 2))
    finish(g, s1, s2)
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"dot": 2}
    d1, d2 = (producer(v) for v in g.outputs)
    assert d1.op == d2.op == "dot" and d1.inputs[0] is x and d2.inputs[0] is x
    np.testing.assert_array_equal(d1.inputs[1].const, Wv[:, 0:2])
    np.testing.assert_array_equal(d2.inputs[1].const, Wv[:, 2:6:2])


def test_slice_of_dot_with_non_last_contracting_axis():
    g = Graph()
    x = g.add_input("x", f32(3, 2))
    Wv = randn(3, 5, seed=1)
    d = matmul(g, x, g.add_param(Wv), k=0)  # (2, 5)
    finish(g, g.op("slice", d, starts=(0, 1), limits=(2, 4), strides=(1, 1)))
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1}
    assert g.nodes[0].attrs["lhs_contract"] == (0,)
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, Wv[:, 1:4])


def test_slice_of_dot_not_fired_when_a_non_slice_reads_the_dot():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    d = matmul(g, x, g.add_param(randn(3, 6, seed=1)))
    finish(g, g.op("slice", d, starts=(0, 0), limits=(2, 2), strides=(1, 1)), g.op("exp", d))
    assert_no_rewrite(g)


def test_slice_of_dot_not_fired_when_the_dot_is_an_output():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    d = matmul(g, x, g.add_param(randn(3, 6, seed=1)))
    finish(g, g.op("slice", d, starts=(0, 0), limits=(2, 2), strides=(1, 1)), d)
    assert_no_rewrite(g)


def test_slice_of_dot_not_fired_for_slice_on_non_last_axis():
    g = Graph()
    x = g.add_input("x", f32(4, 3))
    d = matmul(g, x, g.add_param(randn(3, 5, seed=1)))
    finish(g, g.op("slice", d, starts=(1, 0), limits=(3, 5), strides=(1, 1)),
           g.op("slice", d, starts=(1, 1), limits=(3, 4), strides=(1, 1)))  # both axes
    assert_no_rewrite(g)


# ---- mul-reduce-to-dot -----------------------------------------------------------------------------------


@pytest.mark.parametrize("v_first", [False, True])
def test_mul_reduce_to_dot_with_vector_input(v_first):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    v = g.add_input("v", f32(3))
    prod = g.op("mul", v, x) if v_first else g.op("mul", x, v)
    finish(g, g.op("reduce_sum", prod, axes=(1,)))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"dot": 1}
    (node,) = g.nodes
    assert node.inputs == [x, v]
    assert node.attrs["lhs_contract"] == (1,) and node.attrs["rhs_contract"] == (0,)


def test_mul_reduce_to_dot_with_row_constant_reshapes_it():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    c = g.add_param(randn(1, 3, seed=1))
    finish(g, g.op("reduce_sum", g.op("mul", x, c), axes=(1,)))
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1, "reshape": 1}


def test_mul_reduce_to_dot_over_leading_axis():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    col = g.add_input("col", f32(2, 1))
    y = g.op("reduce_sum", g.op("mul", x, col), axes=(0,))
    finish(g, y)
    assert y.shape == (3,)
    hist, _ = rewrite_and_check(g)
    assert hist == {"dot": 1, "reshape": 1}
    dot = producer(g.outputs[0])
    assert dot.op == "dot" and dot.inputs[0] is x and dot.attrs["lhs_contract"] == (0,)


def test_mul_reduce_to_dot_not_fired_when_reducing_two_axes():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    v = g.add_input("v", f32(3))
    finish(g, g.op("reduce_sum", g.op("mul", x, v), axes=(0, 1)))
    assert_no_rewrite(g)


def test_mul_reduce_to_dot_not_fired_when_vector_varies_along_kept_axis():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    col = g.add_input("col", f32(2, 1))
    y = g.add_input("y", f32(2, 3))
    finish(g, g.op("reduce_sum", g.op("mul", x, col), axes=(1,)),
           g.op("reduce_sum", g.op("mul", x, y), axes=(1,)))  # both operands full
    assert_no_rewrite(g)


def test_mul_reduce_to_dot_not_fired_for_a_sum_of_squares():
    # x * x with x (1, 3): x is "a vector along the reduced axis", but dot(x, reshape(x)) saves nothing
    g = Graph()
    x = g.add_input("x", f32(1, 3))
    finish(g, g.op("reduce_sum", g.op("mul", x, x), axes=(1,)))
    assert_no_rewrite(g)


def test_mul_reduce_to_dot_not_fired_when_product_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    v = g.add_input("v", f32(3))
    prod = g.op("mul", x, v)
    finish(g, g.op("reduce_sum", prod, axes=(1,)), prod)
    assert_no_rewrite(g)


# ==== layout =====================================================================================

# ---- transpose-as-reshape --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,perm", [((2, 1, 3), (1, 0, 2)), ((1, 4, 3, 1), (0, 3, 1, 2)),
                                        ((3, 1), (1, 0))])
def test_transpose_as_reshape(shape, perm):
    g = Graph()
    x = g.add_input("x", f32(*shape))
    t = g.op("transpose", x, perm=perm)
    finish(g, g.op("neg", t))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"neg": 1, "reshape": 1}
    r = producer(g.outputs[0]).inputs[0].producer
    assert r.op == "reshape" and r.inputs[0] is x and r.attrs["shape"] == t.shape


@pytest.mark.parametrize("shape,perm", [((2, 3), (1, 0)), ((2, 1, 3), (2, 1, 0)), ((1, 2, 3), (0, 1, 2))])
def test_transpose_as_reshape_not_fired(shape, perm):
    # a transpose that reorders non-unit dims moves data; the identity is simplify's business
    g = Graph()
    x = g.add_input("x", f32(*shape))
    finish(g, g.op("transpose", x, perm=perm))
    assert_no_rewrite(g, ["layout"])


# ---- sink-transpose -----------------------------------------------------------------------------------


def test_sink_transpose_through_add_with_constant():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    cv = randn(3, 2, seed=1)
    finish(g, g.op("add", g.op("transpose", x, perm=(1, 0)), g.add_param(cv)))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"add": 1, "transpose": 1}
    t = producer(g.outputs[0])
    assert t.op == "transpose" and t.attrs["perm"] == (1, 0)
    add = producer(t.inputs[0])
    assert add.op == "add" and add.inputs[0] is x
    np.testing.assert_array_equal(add.inputs[1].const, cv.T)


def test_sink_transpose_with_lower_rank_constant_and_scalar():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    s = g.add_input("s", f32(1))
    cv = randn(3, seed=1)  # broadcasts along the last axis of the transposed (2, 4, 3)
    t = g.op("transpose", x, perm=(0, 2, 1))
    y = g.op("mul", g.op("sub", t, g.add_param(cv)), s)
    finish(g, y)
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"mul": 1, "sub": 1, "transpose": 1}
    assert producer(g.outputs[0]).op == "transpose"  # sunk past both ops
    sub = next(n for n in g.nodes if n.op == "sub")
    assert sub.inputs[0] is x and sub.inputs[1].const.shape == (1, 3, 1)
    np.testing.assert_array_equal(sub.inputs[1].const.reshape(3), cv)


def test_sink_transpose_with_a_perm_that_is_not_its_own_inverse():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    t = g.op("transpose", x, perm=(1, 2, 0))  # (3, 4, 2)
    cv, rv = randn(3, 4, 2, seed=1), randn(4, 1, seed=2)
    finish(g, g.op("mul", g.op("add", t, g.add_param(cv)), g.add_param(rv)))
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"add": 1, "mul": 1, "transpose": 1}
    tr = producer(g.outputs[0])
    assert tr.op == "transpose" and tr.attrs["perm"] == (1, 2, 0)
    mul = producer(tr.inputs[0])
    add = producer(mul.inputs[0])
    assert add.inputs[0] is x
    np.testing.assert_array_equal(add.inputs[1].const, np.transpose(cv, (2, 0, 1)))
    np.testing.assert_array_equal(mul.inputs[1].const, np.transpose(rv[None], (2, 0, 1)))


def test_sink_transpose_merges_like_transposes():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.add_input("y", f32(2, 3))
    finish(g, g.op("max", g.op("transpose", x, perm=(1, 0)), g.op("transpose", y, perm=(1, 0))))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"max": 1, "transpose": 1}  # one transpose fewer
    mx = producer(producer(g.outputs[0]).inputs[0])
    assert mx.op == "max" and mx.inputs == [x, y]


def test_sink_transpose_through_unary_ops_and_clamp():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 2, 2))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    y = g.op("clamp", g.op("neg", t), lo=0.0, hi=6.0)
    finish(g, y)
    hist, _ = rewrite_and_check(g, ["layout"], inputs=sample_inputs(g, scale=5.0))
    assert hist == {"clamp": 1, "neg": 1, "transpose": 1}
    t2 = producer(g.outputs[0])
    assert t2.op == "transpose" and t2.attrs["perm"] == (0, 2, 3, 1)
    assert producer(t2.inputs[0]).op == "clamp" and producer(t2.inputs[0]).attrs == {"lo": 0.0, "hi": 6.0}


def test_sink_transpose_then_simplify_cancels_a_transpose_pair():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    t = g.op("transpose", x, perm=(1, 0))
    y = g.op("transpose", g.op("mul", t, g.add_param(randn(3, 1, seed=1))), perm=(1, 0))
    finish(g, y)
    hist, _ = rewrite_and_check(g, ["layout", "simplify"])
    assert hist == {"mul": 1}
    assert g.nodes[0].inputs[0] is x


def test_sink_transpose_not_fired_for_other_non_constant_operand():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.add_input("y", f32(3, 2))
    t = g.op("transpose", x, perm=(1, 0))
    finish(g, g.op("add", t, y))
    assert_no_rewrite(g, ["layout"])
    g2 = Graph()
    x = g2.add_input("x", f32(2, 3))
    row = g2.add_input("row", f32(2))
    finish(g2, g2.op("mul", g2.op("transpose", x, perm=(1, 0)), row))  # broadcast, not size 1
    assert_no_rewrite(g2, ["layout"])


def test_sink_transpose_not_fired_when_transpose_has_two_readers():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    t = g.op("transpose", x, perm=(1, 0))
    finish(g, g.op("neg", t), g.op("exp", t))
    assert_no_rewrite(g, ["layout"])


def test_sink_transpose_not_fired_for_different_perms():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    y = g.add_input("y", f32(4, 3, 2))
    finish(g, g.op("add", g.op("transpose", x, perm=(2, 0, 1)), g.op("transpose", y, perm=(0, 2, 1))))
    assert_no_rewrite(g, ["layout"])


# ---- transpose-of-concat ---------------------------------------------------------------------------------


def test_transpose_of_concat_with_constant_and_unit_parts():
    g = Graph()
    x = g.add_input("x", f32(1, 3))
    cv = randn(2, 3, seed=1)
    cat = g.op("concat", x, g.add_param(cv), axis=0)  # (3, 3)
    finish(g, g.op("transpose", cat, perm=(1, 0)))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"concat": 1, "reshape": 1}
    c = producer(g.outputs[0])
    assert c.op == "concat" and c.attrs["axis"] == 1
    assert producer(c.inputs[0]).op == "reshape" and c.inputs[0].shape == (3, 1)
    np.testing.assert_array_equal(c.inputs[1].const, cv.T)


def test_transpose_of_concat_rank3_axis_mapping():
    g = Graph()
    x = g.add_input("x", f32(2, 1, 3))
    y = g.add_input("y", f32(2, 1, 3))
    cat = g.op("concat", x, y, axis=1)  # (2, 2, 3)
    t = g.op("transpose", cat, perm=(1, 0, 2))  # moves data, but for each part only a unit dim
    finish(g, t)
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"concat": 1, "reshape": 2}
    c = producer(g.outputs[0])
    assert c.op == "concat" and c.attrs["axis"] == 0  # inverse(perm)[1]
    assert [producer(v).inputs[0] for v in c.inputs] == [x, y]
    assert all(v.shape == (1, 2, 3) for v in c.inputs)


def test_transpose_of_concat_with_a_perm_that_is_not_its_own_inverse():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 1))
    cv = randn(2, 3, 2, seed=1)
    cat = g.op("concat", x, g.add_param(cv), axis=2)  # (2, 3, 3)
    finish(g, g.op("transpose", cat, perm=(2, 0, 1)))  # (3, 2, 3)
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"concat": 1, "reshape": 1}
    c = producer(g.outputs[0])
    assert c.attrs["axis"] == 0  # inverse((2, 0, 1)) = (1, 2, 0); 2 -> 0
    np.testing.assert_array_equal(c.inputs[1].const, np.transpose(cv, (2, 0, 1)))


def test_transpose_of_concat_not_fired_when_a_part_moves_non_unit_dims():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    c = g.add_param(randn(1, 3, seed=1))
    finish(g, g.op("transpose", g.op("concat", x, c, axis=0), perm=(1, 0)))
    assert_no_rewrite(g, ["layout"])


def test_transpose_of_concat_not_fired_when_concat_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(1, 3))
    cat = g.op("concat", x, g.add_param(randn(2, 3, seed=1)), axis=0)
    finish(g, g.op("transpose", cat, perm=(1, 0)), g.op("neg", cat))
    assert_no_rewrite(g, ["layout"])


# ---- dot-as-conv1x1 -----------------------------------------------------------------------------------


def test_dot_as_conv1x1_on_channels_last_transpose():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    Wv = randn(4, 5, seed=1)
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    y = matmul(g, t, g.add_param(Wv))
    finish(g, y)
    assert y.shape == (1, 3, 3, 5)
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"conv": 1, "transpose": 1}
    tr = producer(g.outputs[0])
    assert tr.op == "transpose" and tr.attrs["perm"] == (0, 2, 3, 1)
    conv = producer(tr.inputs[0])
    assert conv.op == "conv" and conv.inputs[0] is x and len(conv.inputs) == 2
    np.testing.assert_array_equal(conv.inputs[1].const, Wv.T.reshape(5, 4, 1, 1))


def test_dot_as_conv1x1_rank3():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    finish(g, matmul(g, g.op("transpose", x, perm=(0, 2, 1)), g.add_param(randn(3, 2, seed=1))))
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"conv": 1, "transpose": 1}


def test_dot_as_conv1x1_not_fired_for_other_perms():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    t = g.op("transpose", x, perm=(0, 3, 2, 1))  # (N, W, H, C): channels last, spatial dims swapped
    finish(g, matmul(g, t, g.add_param(randn(4, 5, seed=1))))
    assert_no_rewrite(g, ["layout"])


def test_dot_as_conv1x1_not_fired_when_transpose_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    finish(g, matmul(g, t, g.add_param(randn(4, 5, seed=1))), t)
    assert_no_rewrite(g, ["layout"])


# ---- transpose-into-dot ---------------------------------------------------------------------------------


@pytest.mark.parametrize("const_rhs", [True, False])
def test_transpose_into_dot_makes_a_matmul(const_rhs):
    # dot(a^T, W) contracting a^T's axis 0 is a matmul contracting a's last axis
    g = Graph()
    a = g.add_input("a", f32(2, 3))
    W = g.add_param(randn(3, 4, seed=1)) if const_rhs else g.add_input("w", f32(3, 4))
    finish(g, matmul(g, g.op("transpose", a, perm=(1, 0)), W, k=0))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"dot": 1}
    (node,) = g.nodes
    assert node.inputs == [a, W] and node.attrs["lhs_contract"] == (1,)


def test_transpose_into_dot_moving_a_contracted_axis():
    g = Graph()
    a = g.add_input("a", f32(2, 3, 4))
    t = g.op("transpose", a, perm=(1, 0, 2))  # (3, 2, 4)
    finish(g, matmul(g, t, g.add_param(randn(3, 5, seed=1)), k=0))  # free dims: a's 0 and 2, in order
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"dot": 1}
    assert g.nodes[0].inputs[0] is a and g.nodes[0].attrs["lhs_contract"] == (1,)


def test_transpose_into_dot_not_fired_when_matmul_would_become_general_contraction():
    g = Graph()
    a = g.add_input("a", f32(4, 3))
    t = g.op("transpose", a, perm=(1, 0))  # (3, 4)
    finish(g, matmul(g, t, g.add_input("w", f32(4, 5))))  # contracts t's last axis = a's axis 0
    assert_no_rewrite(g, ["layout"])


def test_transpose_into_dot_not_fired_when_free_dims_would_reorder():
    g = Graph()
    a = g.add_input("a", f32(2, 3, 4))
    t = g.op("transpose", a, perm=(1, 0, 2))  # (3, 2, 4)
    finish(g, matmul(g, t, g.add_param(randn(4, 5, seed=1))))
    assert_no_rewrite(g, ["layout"])


def test_transpose_into_dot_not_fired_when_transpose_has_another_reader():
    g = Graph()
    a = g.add_input("a", f32(2, 3))
    t = g.op("transpose", a, perm=(1, 0))
    finish(g, matmul(g, t, g.add_param(randn(3, 4, seed=1)), k=0), t)
    assert_no_rewrite(g, ["layout"])


# ---- transpose-into-reduce --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_max", "reduce_min"])
def test_transpose_into_reduce(op):
    g = Graph()
    a = g.add_input("a", f32(2, 3, 4))
    t = g.op("transpose", a, perm=(0, 2, 1))  # (2, 4, 3)
    finish(g, g.op(op, t, axes=(1,)))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {op: 1}
    (node,) = g.nodes
    assert node.inputs == [a] and node.attrs["axes"] == (2,)


def test_transpose_into_reduce_of_several_axes():
    g = Graph()
    a = g.add_input("a", f32(2, 3, 4))
    t = g.op("transpose", a, perm=(2, 0, 1))  # (4, 2, 3)
    finish(g, g.op("reduce_sum", t, axes=(0, 2)))  # keeps a's axis 0
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"reduce_sum": 1}
    assert g.nodes[0].inputs == [a] and g.nodes[0].attrs["axes"] == (1, 2)


def test_transpose_into_reduce_not_fired_when_kept_dims_reorder():
    g = Graph()
    a = g.add_input("a", f32(2, 3, 4))
    t = g.op("transpose", a, perm=(2, 1, 0))  # (4, 3, 2)
    finish(g, g.op("reduce_max", t, axes=(1,)))  # would keep (a2, a0)
    assert_no_rewrite(g, ["layout"])


def test_transpose_into_reduce_not_fired_when_transpose_has_another_reader():
    g = Graph()
    a = g.add_input("a", f32(2, 3, 4))
    t = g.op("transpose", a, perm=(0, 2, 1))
    finish(g, g.op("reduce_sum", t, axes=(1,)), t)
    assert_no_rewrite(g, ["layout"])


# ---- conv-bias ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias_shape", [(1, 5, 1, 1), (5, 1, 1), (), (1,)])
@pytest.mark.parametrize("bias_first", [False, True])
def test_conv_bias_fuses_into_conv(bias_shape, bias_first):
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    W = g.add_param(randn(5, 4, 1, 1, seed=1))
    bv = randn(*bias_shape, seed=2)
    c, b = conv2d(g, x, W), g.add_param(bv)
    finish(g, g.op("add", b, c) if bias_first else g.op("add", c, b))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"conv": 1}
    (node,) = g.nodes
    assert node.inputs[:2] == [x, W] and len(node.inputs) == 3
    np.testing.assert_array_equal(node.inputs[2].const, np.broadcast_to(bv.reshape(-1), (5,)))


def test_conv_bias_adds_to_an_existing_bias():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    b0, b1 = dyadic(5, seed=1), dyadic(1, 5, 1, 1, seed=2)
    c = conv2d(g, x, g.add_param(randn(5, 4, 3, 3, seed=3)), g.add_param(b0))
    finish(g, g.op("add", c, g.add_param(b1)))
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"conv": 1}
    np.testing.assert_array_equal(g.nodes[0].inputs[2].const, b0 + b1.reshape(5))


def test_conv_bias_not_fired_for_spatially_varying_bias():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    c = conv2d(g, x, g.add_param(randn(4, 4, 1, 1, seed=1)))
    finish(g, g.op("add", c, g.add_param(randn(4, 3, 1, seed=2))),  # varies along H
           g.op("add", conv2d(g, x, g.add_param(randn(4, 4, 1, 1, seed=3))), g.add_param(randn(3, seed=4))))  # W
    assert_no_rewrite(g, ["layout"])


def test_conv_bias_not_fired_when_conv_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    c = conv2d(g, x, g.add_param(randn(5, 4, 1, 1, seed=1)))
    finish(g, g.op("add", c, g.add_param(randn(5, 1, 1, seed=2))), g.op("neg", c))
    assert_no_rewrite(g, ["layout"])


def test_conv_bias_not_fired_for_non_constant_bias():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    b = g.add_input("b", f32(5, 1, 1))
    finish(g, g.op("add", conv2d(g, x, g.add_param(randn(5, 4, 1, 1, seed=1))), b))
    assert_no_rewrite(g, ["layout"])


def test_conv_bias_not_fired_when_bias_broadcasts_batch_up():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 3))
    finish(g, g.op("add", conv2d(g, x, g.add_param(randn(5, 4, 1, 1, seed=1))),
                   g.add_param(randn(2, 5, 1, 1, seed=2))))
    assert_no_rewrite(g, ["layout"])


# ---- the rules together: a traced NHWC conv block ---------------------------------------------------------


def test_nhwc_conv_block_fuses_conv_bias_and_relu6():
    """NHWC model: transpose -> conv (NCHW) -> transpose back -> + bias -> relu6 (min/max).
    algebra makes the clamp, layout sinks the transpose past bias and clamp and fuses the bias."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 3, 4))
    xc = g.op("transpose", x, perm=(0, 3, 1, 2))
    c = conv2d(g, xc, g.add_param(randn(5, 4, 1, 1, seed=1)))  # (1, 5, 3, 3)
    y = g.op("transpose", c, perm=(0, 2, 3, 1))
    y = g.op("add", y, g.add_param(randn(5, seed=2)))
    y = g.op("min", g.op("max", y, g.add_param(np.float32(0))), g.add_param(np.float32(6)))
    finish(g, y)
    hist, _ = rewrite_and_check(g, ["algebra", "layout"], inputs=sample_inputs(g, scale=3.0))
    assert hist == {"transpose": 2, "conv": 1, "clamp": 1}
    tr = producer(g.outputs[0])
    assert tr.op == "transpose"
    clamp = producer(tr.inputs[0])
    assert clamp.op == "clamp" and producer(clamp.inputs[0]).op == "conv"
    assert len(producer(clamp.inputs[0]).inputs) == 3


# ---- conv-scale ------------------------------------------------------------------------------------------


def conv3d(g: Graph, x, w, bias=None, **attrs):
    ins = [x, w] + ([bias] if bias is not None else [])
    a = dict(strides=(1, 1, 1), pads=((1, 1), (0, 0), (1, 1)), dilations=(1, 1, 1), groups=1)
    return g.add_node("conv", ins, **{**a, **attrs}).outputs[0]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("scale_shape", [(1, 5, 1, 1, 1), (5, 1, 1, 1), ()])
def test_conv_scale_folds_a_per_channel_scale_into_the_kernel(with_bias, scale_shape):
    """batch norm's scale after a conv: conv(x, W, b) * s -> conv(x, W*s, b*s)."""
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 4, 4))
    W, bv, sv = dyadic(5, 4, 3, 1, 3, seed=1), dyadic(5, seed=2), dyadic(*scale_shape, seed=3)
    c = conv3d(g, x, g.add_param(W), g.add_param(bv) if with_bias else None)
    finish(g, g.op("mul", g.add_param(sv), c))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"conv": 1}
    s = np.broadcast_to(sv.reshape(-1), (5,))
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const, W * s.reshape(5, 1, 1, 1, 1))
    if with_bias:
        np.testing.assert_array_equal(g.nodes[0].inputs[2].const, bv * s)


def test_conv_scale_then_bias_is_batch_norm_folded_away():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 4, 4))
    c = conv3d(g, x, g.add_param(dyadic(5, 4, 3, 1, 3, seed=1)))
    bn = g.op("add", g.op("mul", c, g.add_param(dyadic(1, 5, 1, 1, 1, seed=2))), g.add_param(dyadic(5, 1, 1, 1, seed=3)))
    finish(g, g.op("max", bn, g.add_param(np.float32(0))))
    hist, _ = rewrite_and_check(g, ["layout"])
    assert hist == {"conv": 1, "max": 1}


def test_conv_scale_not_fired_for_a_spatially_varying_scale_or_a_shared_conv():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 4, 4))
    c1 = conv3d(g, x, g.add_param(dyadic(5, 4, 3, 1, 3, seed=1)))
    c2 = conv3d(g, x, g.add_param(dyadic(5, 4, 3, 1, 3, seed=2)))
    finish(g, g.op("mul", c1, g.add_param(dyadic(5, 1, 1, 4, seed=3))),  # varies along W
           g.op("mul", c2, g.add_param(dyadic(5, 1, 1, 1, seed=4))), g.op("neg", c2))  # c2 read twice
    assert_no_rewrite(g, ["layout"])


# ---- pool-of-transpose -----------------------------------------------------------------------------------


def test_pool_of_transpose_moves_the_window_and_cancels_the_transposes():
    """A channels-last pool between channels-first ops: the transposes around it cancel."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 6, 6))  # N C T H W
    t = g.op("transpose", x, perm=(0, 2, 3, 4, 1))  # N T H W C
    p = g.op("pool", t, mode="max", window=(1, 2, 2, 2, 1), strides=(1, 2, 2, 2, 1),
             pads=((0, 0), (0, 0), (0, 1), (0, 0), (0, 0)))
    finish(g, g.op("neg", g.op("transpose", p, perm=(0, 4, 1, 2, 3))))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and hist == {"pool": 1, "neg": 1}
    a = next(n for n in g.nodes if n.op == "pool").attrs
    assert a["window"] == (1, 1, 2, 2, 2) and a["strides"] == (1, 1, 2, 2, 2)
    assert a["pads"] == ((0, 0), (0, 0), (0, 0), (0, 1), (0, 0))


def test_pool_of_transpose_not_fired_when_the_transpose_has_another_reader():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 4))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    finish(g, g.op("pool", t, mode="sum", window=(1, 2, 2, 1), strides=(1, 2, 2, 1), pads=((0, 0),) * 4), t)
    assert_no_rewrite(g, ["layout"])


# ---- region sinking (part of the layout pass) -----------------------------------------------------------


def _elu(g, v):
    pos = g.op("gt", v, g.add_param(np.float32(0)))
    neg = g.op("expm1", g.op("select", pos, g.add_param(np.float32(0)), v))
    return g.op("select", pos, v, neg)


def test_region_sinking_moves_a_transpose_past_elu_so_it_cancels():
    """ELU reads its input three times, so the one-op rule cannot move the transpose; the region can."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    finish(g, g.op("transpose", _elu(g, t), perm=(0, 3, 1, 2)))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and "transpose" not in hist and hist["select"] == 2


def test_region_sinking_not_fired_when_it_would_add_transposes():
    """t read by two ops whose results both leave: two transposes would replace one."""
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    t = g.op("transpose", x, perm=(1, 0))
    finish(g, g.op("neg", t), g.op("exp", t))
    assert_no_rewrite(g, ["layout"])


def test_region_sinking_not_fired_when_an_operand_is_not_transposed_alike():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.add_input("y", f32(3, 2))
    t = g.op("transpose", x, perm=(1, 0))
    finish(g, g.op("mul", g.op("add", t, y), t))
    assert_no_rewrite(g, ["layout"])


# ---- avg-pool --------------------------------------------------------------------------------------------


def _sum_pool(g, x, window=(1, 2, 2, 1)):
    return g.op("pool", x, mode="sum", window=window, strides=window, pads=((0, 0),) * len(window))


def test_avg_pool_from_sum_pool_divided_by_the_window_size():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 4, 3))
    finish(g, g.op("div", _sum_pool(g, x), g.add_param(np.float32(4))))
    hist, changed = rewrite_and_check(g, ["algebra"])
    assert changed and hist == {"pool": 1} and g.nodes[0].attrs["mode"] == "avg"


def test_avg_pool_not_fired_for_another_divisor_or_a_shared_sum():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 4, 3))
    s = _sum_pool(g, x)
    finish(g, g.op("div", _sum_pool(g, x, (1, 2, 1, 1)), g.add_param(np.float32(4))),  # window of 2
           g.op("div", s, g.add_param(np.float32(4))), s)  # the sum is an output too
    assert_no_rewrite(g, ["algebra"])


# ---- expand-lhs-dilation (lowering) ------------------------------------------------------------------


@pytest.mark.parametrize("pads,factors", [(((2, 2), (0, 0)), (2, 1)), (((0, 0), (1, 0)), (3, 2)),
                                          (((1, 3), (2, 2)), (2, 2))])
def test_expand_lhs_dilation_gives_a_plain_conv(pads, factors):
    """A transposed conv (input dilation) becomes zero insertion + conv with the same outputs."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 5, 4))
    W = g.add_param(randn(2, 3, 3, 2, seed=1))
    y = g.add_node("conv", [x, W], strides=(1, 1), pads=pads, dilations=(1, 1), groups=1,
                   lhs_dilations=factors).outputs[0]
    finish(g, y)
    hist, changed = rewrite_and_check(g, ["expand-lhs-dilation"])
    conv = next(n for n in g.nodes if n.op == "conv")
    assert changed and conv.attrs["lhs_dilations"] == () and hist["pad"] == sum(f > 1 for f in factors)
    g2 = Graph()
    x2 = g2.add_input("x", f32(1, 3, 5, 4))
    finish(g2, conv2d(g2, x2, g2.add_param(randn(2, 3, 1, 1, seed=1))))
    assert_no_rewrite(g2, ["expand-lhs-dilation"])


# ---- split-long-reduction (numerics lowering) ---------------------------------------------------------


def test_split_long_reduction_sums_in_short_runs_and_is_more_accurate():
    g = Graph()
    x = g.add_input("x", f32(1, 64, 32, 32, 3))
    finish(g, g.op("reduce_sum", x, axes=(1, 2, 3)))
    data = (np.random.default_rng(0).random((1, 64, 32, 32, 3)) * 0.5 + 0.25).astype(np.float32)
    exact = data.astype(np.float64).sum(axis=(1, 2, 3))
    (before,), _ = Interpreter(g, "float32").run([data], [])
    hist, changed = rewrite_and_check(g, ["split-long-reductions"], inputs=[data], rtol=1e-12)
    assert changed and hist == {"reduce_sum": 3}
    assert all(len(n.attrs["axes"]) == 1 and n.inputs[0].shape[n.attrs["axes"][0]] <= numerics.BLOCK
               for n in g.nodes)
    (after,), _ = Interpreter(g, "float32").run([data], [])
    assert np.max(np.abs(after - exact)) < np.max(np.abs(before - exact)) / 4


def test_split_long_reduction_cuts_a_long_axis_into_blocks():
    g = Graph()
    x = g.add_input("x", f32(3, 100_000))
    finish(g, g.op("reduce_sum", x, axes=(1,)))
    hist, changed = rewrite_and_check(g, ["split-long-reductions"], rtol=1e-12)
    assert changed and hist["reshape"] >= 1 and hist["reduce_sum"] >= 2
    for n in g.nodes:
        if n.op == "reduce_sum":
            assert n.inputs[0].shape[n.attrs["axes"][0]] <= numerics.BLOCK


def test_split_long_reduction_not_fired_for_short_integer_or_prime_length_sums():
    g = Graph()
    x = g.add_input("x", f32(1, 64, 64, 2))  # 8192 terms: short enough
    i = g.add_input("i", i32(1, 128, 128))
    p = g.add_input("p", f32(2, 8209))  # prime length: nothing to split on
    finish(g, g.op("reduce_sum", x, axes=(1, 2, 3)), g.op("reduce_sum", i, axes=(1, 2)),
           g.op("reduce_sum", p, axes=(1,)))
    assert_no_rewrite(g, ["split-long-reductions"], inputs=[randn(1, 64, 64, 2), np.ones((1, 128, 128), np.int32),
                                                            randn(2, 8209)])


# ---- reshape hoisting (part of the layout pass) ---------------------------------------------------------


def _per_channel_chain(g, v):
    """v[1, C] -> exp(v + b) -> (e*2, e*3) read as [1, C, 1, 1] three times, like an SSM head's rates."""
    e = g.op("exp", g.op("add", v, g.add_param(dyadic(1, 4, seed=3))))
    a, b = g.op("mul", e, g.add_param(np.float32(2))), g.op("mul", e, g.add_param(dyadic(4, seed=4)))
    return [g.op("reshape", x, shape=(1, 4, 1, 1)) for x in (e, a, b)]


def test_reshape_hoisting_computes_the_region_in_the_shape_its_readers_want():
    g = Graph()
    v = g.add_input("v", f32(1, 4))
    big = g.add_input("big", f32(1, 4, 3, 5))
    finish(g, *[g.op("mul", big, r) for r in _per_channel_chain(g, v)])
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist["reshape"] == 1  # one, on the way in, instead of three on the way out
    assert next(n for n in g.nodes if n.op == "reshape").inputs[0] is v


def test_reshape_hoisting_keeps_a_value_that_is_also_read_in_its_own_shape():
    g = Graph()
    v = g.add_input("v", f32(1, 4))
    big = g.add_input("big", f32(1, 4, 3, 5))
    rs = _per_channel_chain(g, v)
    e = rs[0].producer.inputs[0]
    finish(g, *[g.op("mul", big, r) for r in rs], e)  # e is also an output in [1, 4]
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist["reshape"] == 2  # one in, one back out for the output


def test_reshape_hoisting_not_fired_for_a_single_reader_or_a_reordering_reshape():
    g = Graph()
    v = g.add_input("v", f32(1, 4))
    w = g.add_input("w", f32(2, 3))
    x = g.op("reshape", g.op("exp", v), shape=(1, 4, 1))  # one reshape out for one in: no gain
    y = g.op("exp", w)
    finish(g, x, g.op("reshape", y, shape=(3, 2)), g.op("reshape", y, shape=(6,)), g.op("neg", y))
    assert_no_rewrite(g, ["layout"])


# ---- conv-of-conv ----------------------------------------------------------------------------------------


def _strided_conv(g, x, w, bias=None):
    ins = [x, g.add_param(w)] + ([g.add_param(bias)] if bias is not None else [])
    return g.add_node("conv", ins, strides=(2, 2), pads=((0, 0), (0, 0)), dilations=(1, 1), groups=1).outputs[0]


@pytest.mark.parametrize("outer_bias", [False, True])
def test_conv_of_conv_folds_a_pointwise_projection_into_the_conv_before(outer_bias):
    """A 2x2 stride-2 downsampling conv followed by a 1x1 projection: one conv, fewer FLOPs."""
    g = Graph()
    x = g.add_input("x", f32(1, 4, 6, 6))
    W1, b1, W2 = dyadic(4, 4, 2, 2, seed=1), dyadic(4, seed=2), dyadic(4, 4, 1, 1, seed=3)
    b2 = g.add_param(dyadic(4, seed=4)) if outer_bias else None
    finish(g, conv2d(g, _strided_conv(g, x, W1, b1), g.add_param(W2), b2))
    f0 = g.flops()
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"conv": 1}
    (node,) = g.nodes
    assert node.attrs["strides"] == (2, 2) and node.inputs[0] is x
    np.testing.assert_array_equal(node.inputs[1].const, np.tensordot(W2[:, :, 0, 0], W1, axes=(1, 0)))
    assert g.flops() < f0


def test_conv_of_conv_not_fired_when_flops_grow_or_the_inner_conv_has_another_reader():
    # 3x3 conv 4 -> 4 then 1x1 4 -> 16: the folded 3x3 conv 4 -> 16 costs more than both
    g = Graph()
    x = g.add_input("x", f32(1, 4, 5, 5))
    inner = g.add_node("conv", [x, g.add_param(dyadic(4, 4, 3, 3, seed=1))], strides=(1, 1), pads=((1, 1), (1, 1)),
                       dilations=(1, 1), groups=1).outputs[0]
    finish(g, conv2d(g, inner, g.add_param(dyadic(16, 4, 1, 1, seed=2))))
    assert_no_rewrite(g)
    g = Graph()
    x = g.add_input("x", f32(1, 4, 6, 6))
    inner = _strided_conv(g, x, dyadic(4, 4, 2, 2, seed=1))
    finish(g, conv2d(g, inner, g.add_param(dyadic(4, 4, 1, 1, seed=2))), g.op("neg", inner))
    assert_no_rewrite(g)


def test_conv_of_conv_not_fired_for_a_non_pointwise_outer_conv():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 6, 6))
    inner = _strided_conv(g, x, dyadic(4, 4, 2, 2, seed=1))
    finish(g, _strided_conv(g, inner, dyadic(4, 4, 1, 1, seed=2)))  # a 1x1 kernel, but stride 2
    assert_no_rewrite(g)


# ---- dot-of-unit-reshape ----------------------------------------------------------------------------------


def test_dot_of_unit_reshape_moves_the_reshape_after_the_dot():
    """dot(reshape(transpose(x))) -> reshape(dot(transpose(x))): the transpose then meets the dot and the
    channels-last projection of a channels-first conv output becomes a 1x1 conv."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))  # [1, 4, 5, 3]
    r = g.op("reshape", t, shape=(1, 1, 4, 5, 3))
    finish(g, matmul(g, r, g.add_param(dyadic(3, 6, seed=1))))
    hist, changed = rewrite_and_check(g, ["layout"])
    assert changed and hist == {"conv": 1, "transpose": 1, "reshape": 1}


def test_dot_of_unit_reshape_not_fired_when_the_reshape_regroups_the_contracted_axis():
    g = Graph()
    x = g.add_input("x", f32(2, 6))
    r = g.op("reshape", x, shape=(4, 3))
    finish(g, matmul(g, r, g.add_param(dyadic(3, 2, seed=1))))
    assert_no_rewrite(g, ["layout"])


# ---- layout regions with computed per-channel operands -----------------------------------------------------


def test_region_sinking_relays_a_computed_per_channel_operand_with_one_reshape():
    """x_nhwc * s[C] + state-like operands: s is computed (not a constant), so it is re-laid by a reshape."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    s = g.op("exp", g.add_input("s", f32(3)))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    y = g.op("mul", g.op("add", t, s), t)
    finish(g, g.op("transpose", y, perm=(0, 3, 1, 2)))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and "transpose" not in hist and hist["reshape"] == 1


def test_region_sinking_counts_an_exit_read_by_transposes_as_free():
    """A region value read by a transpose back to the untransposed layout costs nothing to move."""
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    m = g.add_input("m", f32(1, 3, 4, 5))
    tx, tm = g.op("transpose", x, perm=(0, 2, 3, 1)), g.op("transpose", m, perm=(0, 2, 3, 1))
    d = g.op("sub", tx, tm)
    y = g.op("mul", d, d)
    finish(g, g.op("transpose", d, perm=(0, 3, 1, 2)), g.op("transpose", y, perm=(0, 3, 1, 2)))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and "transpose" not in hist


def test_reshape_hoisting_reads_an_operand_already_in_the_wanted_shape():
    """A region in [1,1,H,W,C] that mixes in a [1,H,W,C] value and reshapes of [1,H,W,C] values is
    computed in [1,H,W,C]: no reshape is left."""
    g = Graph()
    a = g.add_input("a", f32(1, 4, 5, 3))
    b = g.add_input("b", f32(1, 4, 5, 3))
    b5 = g.op("reshape", b, shape=(1, 1, 4, 5, 3))
    y = g.op("sub", a, g.op("mul", b5, g.add_param(dyadic(3, seed=1))))
    z = g.op("mul", y, y)
    finish(g, g.op("reshape", y, shape=(1, 4, 5, 3)), g.op("reshape", z, shape=(1, 4, 5, 3)))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and "reshape" not in hist



@pytest.mark.parametrize("readers", [1, 2])
def test_reshape_hoisting_keeps_dst_shape_when_no_operand_has_its_rank(readers):
    """A region whose operands all broadcast against [1,H,W,C] as they are (none has the wanted
    [1,1,H,W,C]'s rank) comes out in [1,H,W,C]: its readers that wanted [1,1,H,W,C] (here batched dots,
    as in ME-chunk's attention) still get that shape. Hoisting once broke the dots' types."""
    g = Graph()
    a = g.add_input("a", f32(1, 6, 4, 8))
    s = g.add_input("s", f32(1, 6, 4, 1))
    p = g.add_input("p", f32(1, 1, 6, 4, 6))
    m = g.op("mul", a, s)  # [1, 6, 4, 8]
    outs = [g.op("dot", p, g.op("reshape", m, shape=(1, 1, 6, 4, 8)), lhs_batch=(0, 1, 3), rhs_batch=(0, 1, 3),
                 lhs_contract=(2,), rhs_contract=(2,)) for _ in range(readers)]  # [1, 1, 4, 6, 8]
    finish(g, *outs)
    hist, changed = rewrite_and_check(g, ["layout"])
    assert hist["reshape"] == 1  # one reshape to [1,1,6,4,8] either way
    assert changed == (readers == 2)
    for d in (n for n in g.nodes if n.op == "dot"):
        assert d.inputs[1].shape == (1, 1, 6, 4, 8)

# ---- RMS norm: mean-eps-regroup and scalar-scale-into-dot ------------------------------------------------


def _rms_norm_projection(g, y, n_form="div"):
    """y * rsqrt(mean(y*y) + eps) @ W, with the mean written as a sum over n (div) or times 1/n (mul)."""
    n = y.shape[-1]
    s = g.op("reduce_sum", g.op("mul", y, y), axes=(1,))
    s = g.op("reshape", s, shape=(1, 1))
    mean = g.op("div", s, g.add_param(np.float32(n))) if n_form == "div" else \
        g.op("mul", s, g.add_param(np.float32(1 / n)))
    r = g.op("rsqrt", g.op("add", mean, g.add_param(np.float32(1e-5))))
    return matmul(g, g.op("mul", y, r), g.add_param(dyadic(n, 3, seed=2)))


@pytest.mark.parametrize("n_form", ["div", "mul"])
def test_mean_eps_regroup_moves_the_mean_into_the_projection(n_form):
    g = Graph()
    y = g.add_input("y", f32(1, 16))
    finish(g, _rms_norm_projection(g, y, n_form))
    hist, changed = rewrite_and_check(g, rtol=1e-6)
    assert changed and "div" not in hist and hist["mul"] == 2  # y*y and y*r: the 1/sqrt(n) went into W
    add = next(n for n in g.nodes if n.op == "add")
    assert float(add.inputs[1].const) == pytest.approx(16 * 1e-5)
    dot = next(n for n in g.nodes if n.op == "dot")
    np.testing.assert_allclose(dot.inputs[1].const, dyadic(16, 3, seed=2) * 4)  # sqrt(16)


def test_mean_eps_regroup_not_fired_for_a_non_positive_count_or_a_vector_eps():
    for n_value, eps in ((np.float32(-4), np.float32(1e-5)), (np.float32(4), dyadic(1, 4, seed=1) + 2)):
        g = Graph()
        s = g.add_input("s", f32(1, 4))
        finish(g, g.op("rsqrt", g.op("add", g.op("div", s, g.add_param(n_value)), g.add_param(eps))))
        assert_no_rewrite(g, inputs=[np.full((1, 4), 3 * np.sign(n_value), np.float32)])  # s / n > 0


def test_scalar_scale_into_dot_not_fired_for_a_vector_factor():
    g = Graph()
    x = g.add_input("x", f32(2, 4))
    s = g.add_input("s", f32(2, 1))  # one value per row: not a size-1 value
    q = g.op("mul", s, g.add_param(np.float32(2)))
    finish(g, matmul(g, g.op("mul", x, q), g.add_param(dyadic(4, 3, seed=1))))
    assert_no_rewrite(g)


# ---- window-conv-to-reduce -------------------------------------------------------------------------------


def _depthwise(g, x, w, pads=((0, 0), (0, 0)), bias=None):
    ins = [x, g.add_param(w)] + ([g.add_param(bias)] if bias is not None else [])
    return g.add_node("conv", ins, strides=(1, 1), pads=pads, dilations=(1, 1), groups=x.shape[1]).outputs[0]


@pytest.mark.parametrize("with_bias", [False, True])
def test_window_conv_to_reduce_for_a_kernel_covering_the_input(with_bias):
    """An SSM's causal conv over its state window [1, C, 1, 4] with a [C, 1, 1, 4] kernel: a weighted sum."""
    g = Graph()
    x = g.add_input("x", f32(1, 6, 1, 4))
    finish(g, _depthwise(g, x, dyadic(6, 1, 1, 4, seed=1), bias=dyadic(6, seed=2) if with_bias else None))
    hist, changed = rewrite_and_check(g)
    assert changed and "conv" not in hist and hist["reduce_sum"] == 1 and hist["mul"] == 1
    assert hist.get("add", 0) == int(with_bias)


def test_window_conv_to_reduce_not_fired_for_a_sliding_or_padded_or_dense_conv():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 1, 5))
    finish(g, _depthwise(g, x, dyadic(3, 1, 1, 4, seed=1)))  # slides over 2 positions
    assert_no_rewrite(g)
    g = Graph()
    x = g.add_input("x", f32(1, 3, 1, 4))
    finish(g, _depthwise(g, x, dyadic(3, 1, 1, 4, seed=1), pads=((0, 0), (1, 0))))
    assert_no_rewrite(g)
    g = Graph()
    x = g.add_input("x", f32(1, 3, 1, 4))
    finish(g, conv2d(g, x, g.add_param(dyadic(3, 3, 1, 4, seed=1))))  # dense (groups=1)
    assert_no_rewrite(g)


# ---- vector-dot-as-matmul ---------------------------------------------------------------------------------


def test_vector_dot_as_matmul_takes_the_vector_as_a_column():
    g = Graph()
    s = g.add_input("s", f32(1, 3, 2, 8))
    c = g.op("exp", g.add_input("c", f32(8)))
    finish(g, matmul(g, s, c))
    hist, changed = rewrite_and_check(g, ["onnx-forms"])
    assert changed and hist == {"exp": 1, "reshape": 2, "dot": 1}
    dot = next(n for n in g.nodes if n.op == "dot")
    assert dot.inputs[1].shape == (8, 1) and dot.outputs[0].shape == (1, 3, 2, 1)


def test_vector_dot_as_matmul_not_fired_for_a_matrix_or_a_batched_dot():
    g = Graph()
    s = g.add_input("s", f32(2, 8))
    finish(g, matmul(g, s, g.add_input("w", f32(8, 3))),
           g.op("dot", s, g.add_input("v", f32(2, 8)), lhs_contract=(1,), rhs_contract=(1,), lhs_batch=(0,),
                rhs_batch=(0,)))
    assert_no_rewrite(g, ["onnx-forms"])


# ---- lerp --------------------------------------------------------------------------------------------------


def test_lerp_drops_one_minus_a():
    """a*x + (1-a)*m (a running mean) -> m + a*(x - m)."""
    g = Graph()
    x, m = g.add_input("x", f32(2, 4)), g.add_input("m", f32(2, 4))
    a = g.op("exp", g.add_input("a", f32(4)))
    one_minus = g.op("sub", g.add_param(np.float32(1)), a)
    finish(g, g.op("add", g.op("mul", a, x), g.op("mul", one_minus, m)))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"exp": 1, "sub": 1, "mul": 1, "add": 1}
    sub = next(n for n in g.nodes if n.op == "sub")
    assert sub.inputs == [x, m]


def test_lerp_not_fired_for_two_different_weights_or_another_constant():
    g = Graph()
    x, m = g.add_input("x", f32(2, 4)), g.add_input("m", f32(2, 4))
    a, c = g.add_input("a", f32(4)), g.add_input("c", f32(4))
    finish(g, g.op("add", g.op("mul", a, x), g.op("mul", g.op("sub", g.add_param(np.float32(1)), c), m)),
           g.op("add", g.op("mul", a, x), g.op("mul", g.op("sub", g.add_param(np.float32(2)), a), m)))
    assert_no_rewrite(g)


# ---- reshape sinking (part of the layout pass) ----------------------------------------------------------------


def test_reshape_sinking_computes_a_region_in_the_shape_its_operands_come_from():
    """y [1,4,2,3] and x [1,4,2,3] viewed as [1,8,3] for a per-(row) scale D[8,1]: computed in [1,4,2,3]."""
    g = Graph()
    y, x = g.add_input("y", f32(1, 4, 2, 3)), g.add_input("x", f32(1, 4, 2, 3))
    ya, xa = g.op("reshape", y, shape=(1, 8, 3)), g.op("reshape", x, shape=(1, 8, 3))
    z = g.op("add", ya, g.op("mul", g.add_param(dyadic(8, 1, seed=1)), xa))
    finish(g, g.op("reshape", z, shape=(1, 24)))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and hist == {"mul": 1, "add": 1, "reshape": 1}
    mul = next(n for n in g.nodes if n.op == "mul")
    assert mul.inputs[0].shape == (1, 4, 2, 1) and mul.inputs[1] is x


def test_reshape_sinking_not_fired_for_a_constant_the_reshape_would_cut():
    """[1,4,6] viewed as [1,8,3] times c[3]: c varies along the 3 that the 6 -> 8 x 3 regrouping cuts."""
    g = Graph()
    y = g.add_input("y", f32(1, 4, 6))
    z = g.op("mul", g.op("reshape", y, shape=(1, 8, 3)), g.add_param(dyadic(3, seed=1)))
    finish(g, g.op("reshape", z, shape=(1, 24)))
    assert regrouped((3,), (1, 8, 3), (1, 4, 6)) is None
    assert regrouped((8, 1), (1, 8, 3), (1, 4, 2, 3)) == (1, 4, 2, 1)
    assert_no_rewrite(g, ["layout"])


# ---- distribute-over-concat ----------------------------------------------------------------------------------


def test_distribute_over_concat_adds_a_skip_term_to_the_real_part_only():
    """[yr, yi] + D * [x, 0] -> [yr + D_r x, yi]."""
    g = Graph()
    yr, yi, x = (g.add_input(n, f32(1, 3, 1, 4)) for n in ("yr", "yi", "x"))
    y = g.op("concat", yr, yi, axis=2)
    dx = g.op("mul", g.add_param(dyadic(1, 3, 2, 1, seed=1)), g.op("concat", x, g.add_param(np.zeros((1, 3, 1, 4),
                                                                                                   np.float32)), axis=2))
    finish(g, g.op("add", y, dx))
    hist, changed = rewrite_and_check(g, ["simplify"])
    assert changed and hist == {"mul": 1, "add": 1, "concat": 1}
    cat = producer(g.outputs[0])
    assert cat.op == "concat" and cat.inputs[1] is yi


def test_distribute_over_concat_not_fired_when_nothing_folds_or_the_splits_differ():
    g = Graph()
    a, b, c, d = (g.add_input(n, f32(2, 2)) for n in "abcd")
    e = g.add_input("e", f32(2, 3))
    finish(g, g.op("add", g.op("concat", a, b, axis=1), g.op("concat", c, d, axis=1)),
           g.op("mul", g.op("concat", a, b, axis=1), g.add_param(dyadic(2, 4, seed=1))),
           g.op("add", g.op("concat", a, e, axis=1), g.op("concat", e, a, axis=1)))
    assert_no_rewrite(g, ["simplify"])


# ---- concat-of-reshapes ---------------------------------------------------------------------------------------


def test_concat_of_reshapes_concatenates_the_unreshaped_pieces():
    """An SSM readout: two [1, H, 4, 1] dot results viewed as [1, H, 1, 4], stacked on axis 2 and
    flattened, is the flat concat of the [1, H, 4, 1] results along axis 2 (same element order)."""
    g = Graph()
    a, c = (g.add_input(n, f32(1, 3, 4, 1)) for n in ("a", "c"))
    ra, rc = (g.op("reshape", v, shape=(1, 3, 1, 4)) for v in (a, c))
    finish(g, g.op("reshape", g.op("concat", ra, rc, axis=2), shape=(1, 24)))
    hist, changed = rewrite_and_check(g, ["simplify"])
    assert changed and hist == {"concat": 1, "reshape": 1}
    cat = producer(producer(g.outputs[0]).inputs[0])
    assert cat.op == "concat" and cat.attrs["axis"] == 2 and cat.inputs == [a, c]
    assert cat.outputs[0].shape == (1, 3, 8, 1)


def test_concat_of_reshapes_keeps_a_reshape_read_elsewhere():
    g = Graph()
    a, c = (g.add_input(n, f32(1, 3, 4, 1)) for n in ("a", "c"))
    ra, rc = (g.op("reshape", v, shape=(1, 3, 1, 4)) for v in (a, c))
    finish(g, g.op("reshape", g.op("concat", ra, rc, axis=2), shape=(1, 24)), g.op("mul", ra, ra))
    hist, changed = rewrite_and_check(g, ["simplify"])
    assert changed and hist == {"concat": 1, "reshape": 2, "mul": 1}  # rc went, ra stays for the mul
    assert producer(producer(g.outputs[0]).inputs[0]).inputs == [a, c]


def test_concat_of_reshapes_not_fired_when_the_blocks_differ_or_the_concat_is_read_elsewhere():
    g = Graph()
    a, c = (g.add_input(n, f32(3, 2)) for n in ("a", "c"))
    # [3, 2] viewed as [2, 3]: the concat along axis 1 interleaves rows of 3, which [3, 2] has no axis for
    finish(g, g.op("reshape", g.op("concat", *(g.op("reshape", v, shape=(2, 3)) for v in (a, c)), axis=1),
                   shape=(12,)))
    assert_no_rewrite(g, ["simplify"])
    g = Graph()
    a, c = (g.add_input(n, f32(1, 3, 4, 1)) for n in ("a", "c"))
    cat = g.op("concat", *(g.op("reshape", v, shape=(1, 3, 1, 4)) for v in (a, c)), axis=2)
    finish(g, g.op("reshape", cat, shape=(1, 24)), g.op("mul", cat, cat))  # the [1, 3, 2, 4] concat is kept
    assert_no_rewrite(g, ["simplify"])


# ---- global-mean (onnx-forms) ----------------------------------------------------------------------------------


def test_global_mean_pools_a_conv_output_and_folds_the_factor_into_the_dots():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    y = g.op("clamp", conv2d(g, x, g.add_param(dyadic(6, 3, 1, 1, seed=1))), lo=0.0, hi=6.0)
    u = g.op("reduce_sum", y, axes=(2, 3))
    finish(g, matmul(g, u, g.add_param(dyadic(6, 2, seed=2))), matmul(g, u, g.add_param(dyadic(6, 3, seed=3))))
    hist, changed = rewrite_and_check(g, ["onnx-forms"], rtol=1e-6)
    assert changed and hist == {"conv": 1, "clamp": 1, "pool": 1, "reshape": 1, "dot": 2}
    pool = next(n for n in g.nodes if n.op == "pool")
    assert pool.attrs["mode"] == "avg" and pool.attrs["window"] == (1, 1, 4, 5)


def test_global_mean_not_fired_for_a_partial_reduction_or_another_producer():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 4, 5))
    y = conv2d(g, x, g.add_param(dyadic(6, 3, 1, 1, seed=1)))
    finish(g, g.op("reduce_sum", y, axes=(3,)), g.op("reduce_sum", g.op("exp", x), axes=(2, 3)))
    assert_no_rewrite(g, ["onnx-forms"])


# ---- a normalisation's gamma and beta folded into the convs that read it ------------------------------------


def _conv3x3(g, x, w):
    return g.add_node("conv", [x, g.add_param(w)], strides=(1, 1), pads=((1, 1), (1, 1)), dilations=(1, 1),
                      groups=1).outputs[0]


def test_gamma_and_beta_fold_into_both_convs_reading_the_normalised_value():
    """y = t*gamma + beta read by conv1(y) and conv2(y + x2), x2 a projection: gamma goes into both kernels,
    beta/gamma stays an add, x2's 1/gamma goes into the projection; no product with gamma is left."""
    g = Graph()
    t = g.add_input("t", f32(1, 4, 5, 5))
    u = g.add_input("u", f32(1, 6))
    gamma, beta = np.float32([0.5, 2, -1, 4]).reshape(1, 4, 1, 1), dyadic(1, 4, 1, 1, seed=2)
    y = g.op("add", g.op("mul", t, g.add_param(gamma)), g.add_param(beta))
    x2 = g.op("reshape", matmul(g, u, g.add_param(dyadic(6, 4, seed=3))), shape=(1, 4, 1, 1))
    finish(g, _conv3x3(g, y, dyadic(4, 4, 3, 3, seed=4)), _conv3x3(g, g.op("add", y, x2), dyadic(4, 4, 3, 3, seed=5)))
    hist, changed = rewrite_and_check(g, ["layout"], rtol=1e-6, atol=1e-6)
    assert changed and "mul" not in hist and hist == {"add": 2, "conv": 2, "dot": 1, "reshape": 1}


def test_scale_out_of_add_not_fired_for_a_scale_with_a_zero_or_a_reader_that_cannot_fold_it():
    g = Graph()
    t = g.add_input("t", f32(1, 4, 5, 5))
    gamma = np.float32([0.5, 0, -1, 4]).reshape(1, 4, 1, 1)  # a zero: beta / gamma does not exist
    y = g.op("add", g.op("mul", t, g.add_param(gamma)), g.add_param(dyadic(1, 4, 1, 1, seed=2)))
    finish(g, _conv3x3(g, y, dyadic(4, 4, 3, 3, seed=4)))
    assert_no_rewrite(g, ["algebra"])
    g = Graph()
    t, z = g.add_input("t", f32(1, 4, 5, 5)), g.add_input("z", f32(1, 4, 1, 1))
    y = g.op("add", g.op("mul", t, g.add_param(np.float32([0.5, 2, -1, 4]).reshape(1, 4, 1, 1))), z)
    finish(g, g.op("exp", y))  # a computed offset and a reader that cannot take the scale
    assert_no_rewrite(g, ["algebra"])
    g = Graph()
    t = g.add_input("t", f32(1, 4, 5, 5))
    scaled = g.op("mul", t, g.add_param(np.float32([0.5, 2, -1, 4]).reshape(1, 4, 1, 1)))
    y = g.op("add", scaled, g.add_param(dyadic(1, 4, 1, 1, seed=2)))
    finish(g, _conv3x3(g, y, dyadic(4, 4, 3, 3, seed=4)), g.op("exp", scaled))  # t * gamma is read elsewhere
    assert_no_rewrite(g, ["algebra"])


def test_dot_output_scale_folds_a_per_column_scale_into_the_weights():
    g = Graph()
    u = g.add_input("u", f32(2, 6))
    finish(g, g.op("mul", matmul(g, u, g.add_param(dyadic(6, 4, seed=1))), g.add_param(dyadic(4, seed=2))))
    hist, changed = rewrite_and_check(g)
    assert changed and hist == {"dot": 1}
    g = Graph()  # a scale per row (not per output column) stays
    u = g.add_input("u", f32(2, 6))
    finish(g, g.op("mul", matmul(g, u, g.add_param(dyadic(6, 4, seed=1))), g.add_param(dyadic(2, 1, seed=2))))
    assert_no_rewrite(g)


def test_conv_input_scale_not_fired_for_a_spatially_varying_scale_or_a_grouped_conv():
    g = Graph()
    t = g.add_input("t", f32(1, 4, 5, 5))
    finish(g, _conv3x3(g, g.op("mul", t, g.add_param(dyadic(1, 1, 5, 5, seed=1))), dyadic(4, 4, 3, 3, seed=4)))
    assert_no_rewrite(g, ["layout"])
    g = Graph()
    t = g.add_input("t", f32(1, 4, 5, 5))
    scaled = g.op("mul", t, g.add_param(dyadic(1, 4, 1, 1, seed=1)))
    finish(g, g.add_node("conv", [scaled, g.add_param(dyadic(4, 1, 3, 3, seed=2))], strides=(1, 1),
                         pads=((1, 1), (1, 1)), dilations=(1, 1), groups=4).outputs[0])
    assert_no_rewrite(g, ["layout"])


# ---- bias-before-reshape (onnx-forms) ---------------------------------------------------------------------------


def test_bias_before_reshape_puts_the_bias_next_to_its_dot():
    g = Graph()
    u = g.add_input("u", f32(1, 6))
    r = g.op("reshape", matmul(g, u, g.add_param(dyadic(6, 4, seed=1))), shape=(1, 4, 1, 1))
    finish(g, g.op("exp", g.op("add", r, g.add_param(dyadic(1, 4, 1, 1, seed=2)))))
    hist, changed = rewrite_and_check(g, ["onnx-forms"])
    assert changed
    add = next(n for n in g.nodes if n.op == "add")
    assert add.inputs[0].producer.op == "dot" and add.outputs[0].shape == (1, 4)


def test_bias_before_reshape_not_fired_for_a_bias_varying_across_rows_or_a_shared_reshape():
    g = Graph()
    u = g.add_input("u", f32(2, 6))
    r = g.op("reshape", matmul(g, u, g.add_param(dyadic(6, 4, seed=1))), shape=(2, 4, 1))
    finish(g, g.op("add", r, g.add_param(dyadic(2, 1, 1, seed=2))))  # one bias per row
    assert_no_rewrite(g, ["onnx-forms"])
    g = Graph()
    u = g.add_input("u", f32(1, 6))
    r = g.op("reshape", matmul(g, u, g.add_param(dyadic(6, 4, seed=1))), shape=(1, 4, 1, 1))
    finish(g, g.op("add", r, g.add_param(dyadic(1, 4, 1, 1, seed=2))), g.op("neg", r))
    assert_no_rewrite(g, ["onnx-forms"])


def test_reshape_sinking_reuses_a_view_that_another_op_reads():
    """yr[1,32,4,1] + D * x viewed as [1,32,1,4]: x already has a [1,32,4,1] view (read elsewhere), so the sum
    is computed in [1,32,4,1] and reshaped once, for the concat that reads it."""
    g = Graph()
    x, yr, yi = g.add_input("x", f32(1, 128)), g.add_input("yr", f32(1, 32, 4, 1)), g.add_input("yi", f32(1, 32, 1, 4))
    other = g.op("exp", g.op("reshape", x, shape=(1, 32, 4, 1)))
    a = g.op("add", g.op("reshape", yr, shape=(1, 32, 1, 4)),
             g.op("mul", g.add_param(dyadic(1, 32, 1, 1, seed=1)), g.op("reshape", x, shape=(1, 32, 1, 4))))
    finish(g, g.op("concat", a, yi, axis=2), other)
    hist, changed = rewrite_and_check(g, ["layout", "simplify", "cse"])
    assert changed and hist["reshape"] == 2  # x's one view, and the sum's way into the concat


# ---- reduce-of-unit-reshape ----------------------------------------------------------------------------------


def test_reduce_of_unit_reshape_lets_the_reduction_absorb_a_transpose():
    """A channels-first conv output moved channels-last, given the model's [1,1,H,W,C] shape and summed over
    H and W: the sum moves before the reshape and absorbs the transpose."""
    g = Graph()
    x = g.add_input("x", f32(1, 4, 3, 5))
    t = g.op("transpose", x, perm=(0, 2, 3, 1))
    r = g.op("reshape", t, shape=(1, 1, 3, 5, 4))
    finish(g, g.op("reduce_sum", r, axes=(2, 3)))
    hist, changed = rewrite_and_check(g, ["layout", "simplify"])
    assert changed and hist == {"reduce_sum": 1, "reshape": 1}
    red = next(n for n in g.nodes if n.op == "reduce_sum")
    assert red.inputs[0] is x and red.attrs["axes"] == (2, 3)


def test_reduce_of_unit_reshape_not_fired_for_a_regrouping_reshape():
    g = Graph()
    x = g.add_input("x", f32(2, 6))
    finish(g, g.op("reduce_sum", g.op("reshape", x, shape=(2, 2, 3)), axes=(2,)))
    assert_no_rewrite(g, ["layout"])


def test_a_broadcast_above_the_max_rank_drops_its_unit_dims():
    """broadcast to rank 10 (an outer product as a JAX einsum traces it) then reshape: the broadcast runs
    at rank 3 and the reshapes fold, so no tensor exceeds 8 dims (TensorRT's limit); rank <= 8 is left."""
    from graphopt.passes.simplify import MAX_RANK
    g = Graph()
    x = g.add_input("x", f32(1, 1, 6, 1, 5))
    b = g.op("broadcast", x, shape=(1, 1, 1, 1, 1, 6, 4, 1, 1, 5), dims=(1, 3, 5, 7, 9))
    finish(g, g.op("mul", g.op("reshape", b, shape=(6, 4, 5)), g.add_param(randn(6, 4, 5))))
    _, changed = rewrite_and_check(g, ("simplify",))
    assert changed and max(len(v.shape) for n in g.nodes for v in n.inputs + n.outputs) <= MAX_RANK
    h = Graph()
    x = h.add_input("x", f32(1, 6, 1, 5))
    finish(h, h.op("broadcast", x, shape=(1, 6, 4, 1, 5), dims=(0, 1, 3, 4)))
    assert_no_rewrite(h, ("simplify",))
