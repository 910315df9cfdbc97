"""Tests for the graph IR: construction, verifier, type inference, interpreter, printer, helpers."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from graphopt.ir import (
    Graph,
    Interpreter,
    IRTypeError,
    Node,
    TensorType,
    Value,
    VerificationError,
    format_graph,
    format_node,
    run_graph,
    verify,
)


def f32(*shape: int) -> TensorType:
    return TensorType(shape, "float32")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def run1(g: Graph, *inputs, precision: str = "float32"):
    """Run one step of a stateless graph and return its outputs."""
    outs, _ = Interpreter(g, precision).run(list(inputs), [])
    return outs


def single_op_graph(op: str, in_types: list[TensorType], **attrs) -> Graph:
    g = Graph(name=op)
    ins = [g.add_input(f"x{i}", t) for i, t in enumerate(in_types)]
    g.outputs = [g.op(op, *ins, **attrs)]
    g.output_names = ["y"]
    return g


# ---- construction and the verifier -----------------------------------------------------------


def good_graph() -> Graph:
    """x[2,3] -> relu-ish(x @ W + b) accumulated into a state, using params and a state pair."""
    g = Graph(name="good")
    x = g.add_input("x", f32(2, 3))
    acc = g.add_state("acc", np.zeros((2, 4), np.float32))
    w = g.add_param(randn(3, 4), "w")
    b = g.add_param(np.float32(0.5), "b")
    y = g.op("dot", x, w, lhs_contract=(1,), rhs_contract=(0,))
    y = g.op("add", y, b)
    y = g.op("max", y, g.add_param(np.float32(0.0)))
    new = g.op("add", acc, y)
    g.outputs = [y]
    g.output_names = ["y"]
    g.state[0].output = new
    return g


def test_verify_accepts_good_graph():
    g = good_graph()
    verify(g)  # no exception
    assert [v.name for v in g.inputs] == ["x"]
    assert g.outputs[0].type == f32(2, 4)
    assert g.state[0].output.type == g.state[0].input.type


def test_op_infers_output_type_and_records_producer():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("transpose", x, perm=(1, 0))
    assert y.type == f32(3, 2)
    assert y.producer is g.nodes[-1]
    assert g.nodes[-1].op == "transpose"
    assert g.nodes[-1].attrs == {"perm": (1, 0)}
    # defaults are filled in and lists are frozen to tuples
    c = g.op("cumsum", x, axis=1)
    assert c.producer.attrs == {"axis": 1, "reverse": False}
    z = g.op("reshape", x, shape=[3, 2])
    assert z.producer.attrs["shape"] == (3, 2)


def test_input_names_are_unique():
    g = Graph()
    a = g.add_input("x", f32(1))
    b = g.add_input("x", f32(1))
    assert a.name != b.name


def test_verify_rejects_use_before_definition():
    g = Graph()
    x = g.add_input("x", f32(3))
    a = g.op("neg", x)
    b = g.op("exp", a)
    g.outputs, g.output_names = [b], ["y"]
    verify(g)
    g.nodes.reverse()  # exp now reads %a before neg defines it
    with pytest.raises(VerificationError, match=rf"uses %{a.name} before it is defined"):
        verify(g)


def test_verify_rejects_undefined_graph_output():
    g = Graph()
    g.add_input("x", f32(3))
    stray = Value("stray", f32(3))
    g.outputs, g.output_names = [stray], ["y"]
    with pytest.raises(VerificationError, match=r"graph output uses %stray before it is defined"):
        verify(g)


def test_verify_rejects_wrong_recorded_output_type():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("add", x, x)
    g.outputs, g.output_names = [y], ["y"]
    y.type = TensorType((2, 3), "float64")
    with pytest.raises(VerificationError, match=r"node 0 \(add\).*f64\[2,3\].*!= inferred.*f32\[2,3\]"):
        verify(g)
    y.type = f32(3, 2)
    with pytest.raises(VerificationError, match=r"node 0 \(add\): output types"):
        verify(g)


def test_verify_rejects_state_output_type_mismatch():
    g = Graph()
    x = g.add_input("x", f32(3))
    h = g.add_state("h", np.zeros(3, np.float32))
    g.outputs, g.output_names = [x], ["y"]
    g.state[0].output = g.op("reshape", g.op("add", h, x), shape=(3, 1))
    with pytest.raises(VerificationError, match=r"state 'h': output f32\[3,1\] != input f32\[3\]"):
        verify(g)
    g.state[0].output = g.op("cast", h, to="float64")
    with pytest.raises(VerificationError, match=r"state 'h': output f64\[3\] != input f32\[3\]"):
        verify(g)


def test_verify_rejects_missing_state_output():
    g = Graph()
    g.add_state("h", np.zeros(3, np.float32))
    with pytest.raises(VerificationError, match=r"state 'h' has no output"):
        verify(g)


def test_verify_rejects_state_init_mismatch():
    g = Graph()
    h = g.add_state("h", np.zeros(3, np.float32))
    g.state[0].output = h
    verify(g)
    g.state[0].init = np.zeros(4, np.float32)
    with pytest.raises(VerificationError, match=r"state 'h': initial value"):
        verify(g)


def test_verify_rejects_unknown_op():
    g = Graph()
    x = g.add_input("x", f32(3))
    node = Node("frobnicate", [x], {}, [])
    node.outputs = [Value("y", f32(3), producer=node)]
    g.nodes.append(node)
    g.outputs, g.output_names = node.outputs, ["y"]
    with pytest.raises(VerificationError, match=r"node 0 \(frobnicate\).*'frobnicate' is not in the graphopt op registry"):
        verify(g)


def test_add_node_rejects_unknown_op():
    g = Graph()
    x = g.add_input("x", f32(3))
    with pytest.raises(IRTypeError, match="frobnicate"):
        g.op("frobnicate", x)


def test_verify_rejects_wrong_attribute_set():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("transpose", x, perm=(1, 0))
    g.outputs, g.output_names = [y], ["y"]
    verify(g)
    y.producer.attrs["alpha"] = 1.0  # extra attribute
    with pytest.raises(VerificationError, match=r"node 0 \(transpose\): attributes \['alpha', 'perm'\] != \['perm'\]"):
        verify(g)
    del y.producer.attrs["alpha"]
    del y.producer.attrs["perm"]  # missing attribute
    with pytest.raises(VerificationError, match=r"node 0 \(transpose\): attributes \[\] != \['perm'\]"):
        verify(g)


def test_add_node_rejects_wrong_attributes():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    with pytest.raises(IRTypeError, match=r"unknown attributes \['alpha'\]"):
        g.op("transpose", x, perm=(1, 0), alpha=1)
    with pytest.raises(IRTypeError, match=r"missing \['perm'\]"):
        g.op("transpose", x)


def test_verify_rejects_wrong_arity():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = g.op("add", x, x)
    g.outputs, g.output_names = [y], ["y"]
    y.producer.inputs.append(x)
    with pytest.raises(VerificationError, match=r"node 0 \(add\): takes 2 inputs, has 3"):
        verify(g)


def test_verify_rejects_duplicate_definition_and_bad_producer():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = g.op("neg", x)
    g.outputs, g.output_names = [y], ["y"]
    g.nodes.append(g.nodes[0])  # the same node twice defines %y twice
    with pytest.raises(VerificationError, match=rf"%{y.name} is defined twice"):
        verify(g)
    g.nodes.pop()
    y.producer = None
    with pytest.raises(VerificationError, match=rf"output %{y.name} does not name this node as producer"):
        verify(g)


def test_verify_rejects_output_name_count_mismatch():
    g = Graph()
    x = g.add_input("x", f32(3))
    g.outputs, g.output_names = [x], ["a", "b"]
    with pytest.raises(VerificationError, match="output_names"):
        verify(g)


def test_verify_rejects_node_whose_types_no_longer_infer():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("reshape", x, shape=(3, 2))
    g.outputs, g.output_names = [y], ["y"]
    y.producer.attrs["shape"] = (4, 2)
    with pytest.raises(VerificationError, match=r"node 0 \(reshape\): op reshape: cannot reshape"):
        verify(g)


# ---- type inference errors -----------------------------------------------------------------


def test_reshape_bad_size():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    with pytest.raises(IRTypeError, match=r"op reshape: cannot reshape \(2, 3\) to \(4, 2\)"):
        g.op("reshape", x, shape=(4, 2))
    assert g.op("reshape", x, shape=(6,)).shape == (6,)
    assert g.op("reshape", x, shape=(1, 3, 2, 1)).shape == (1, 3, 2, 1)


@pytest.mark.parametrize("a,b", [((2, 3), (4,)), ((2, 3), (3, 3)), ((5, 1, 4), (2, 3))])
def test_non_broadcastable_shapes(a, b):
    g = Graph()
    x, y = g.add_input("x", f32(*a)), g.add_input("y", f32(*b))
    with pytest.raises(IRTypeError, match="do not broadcast"):
        g.op("add", x, y)
    with pytest.raises(IRTypeError, match="do not broadcast"):
        g.op("lt", x, y)


def test_mixed_dtype_elementwise_rejected():
    g = Graph()
    x, y = g.add_input("x", f32(3)), g.add_input("y", TensorType((3,), "int32"))
    with pytest.raises(IRTypeError, match="mixed dtypes"):
        g.op("mul", x, y)


def test_float_only_unary_rejects_int():
    g = Graph()
    x = g.add_input("x", TensorType((3,), "int32"))
    with pytest.raises(IRTypeError, match="op exp needs a float input"):
        g.op("exp", x)


@pytest.mark.parametrize("perm", [(0, 0), (0, 1, 2), (1,), (0, 2), (-1, 0)])
def test_bad_transpose_perm(perm):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    with pytest.raises(IRTypeError, match="not a permutation of rank 2"):
        g.op("transpose", x, perm=perm)


def test_conv_channel_mismatch():
    g = Graph()
    x = g.add_input("x", f32(1, 3, 5, 5))
    conv_attrs = dict(strides=(1, 1), pads=((0, 0), (0, 0)), dilations=(1, 1))
    with pytest.raises(IRTypeError, match=r"op conv: 3 input channels do not match kernel \(4, 2, 3, 3\) with 1 groups"):
        g.op("conv", x, g.add_param(np.zeros((4, 2, 3, 3), np.float32)), groups=1, **conv_attrs)
    x4 = g.add_input("x4", f32(1, 4, 5, 5))
    with pytest.raises(IRTypeError, match="input channels do not match"):  # 4 != 1 * 2
        g.op("conv", x4, g.add_param(np.zeros((4, 1, 3, 3), np.float32)), groups=2, **conv_attrs)
    with pytest.raises(IRTypeError, match="input channels do not match"):  # 3 outputs not divisible by 2 groups
        g.op("conv", x4, g.add_param(np.zeros((3, 2, 3, 3), np.float32)), groups=2, **conv_attrs)
    with pytest.raises(IRTypeError, match="disagree on rank"):
        g.op("conv", x, g.add_param(np.zeros((4, 3, 3), np.float32)), groups=1, **conv_attrs)
    with pytest.raises(IRTypeError, match="bias shape"):
        g.op("conv", x, g.add_param(np.zeros((4, 3, 3, 3), np.float32)), g.add_param(np.zeros(3, np.float32)),
             groups=1, **conv_attrs)


def test_other_type_errors():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    i = g.add_input("i", TensorType((2,), "int32"))
    with pytest.raises(IRTypeError, match="op slice: bad range"):
        g.op("slice", x, starts=(0, 2), limits=(2, 4), strides=(1, 1))
    with pytest.raises(IRTypeError, match="op slice: starts/limits/strides must have rank 2"):
        g.op("slice", x, starts=(0,), limits=(2,), strides=(1,))
    with pytest.raises(IRTypeError, match="op concat"):
        g.op("concat", x, g.add_input("z", f32(3, 3)), axis=1)
    with pytest.raises(IRTypeError, match="op take: indices must be int32/int64"):
        g.op("take", x, x, axis=0)
    with pytest.raises(IRTypeError, match="op broadcast"):
        g.op("broadcast", x, shape=(2, 4), dims=(0, 1))
    with pytest.raises(IRTypeError, match="op reduce: axes"):
        g.op("reduce_sum", x, axes=(2,))
    with pytest.raises(IRTypeError, match="op dot: contracting/batch dims disagree"):
        g.op("dot", x, x, lhs_contract=(1,), rhs_contract=(0,))
    with pytest.raises(IRTypeError, match="op select: condition must be bool"):
        g.op("select", i, x, x)
    with pytest.raises(IRTypeError, match="op pad"):
        g.op("pad", x, g.add_param(np.zeros(2, np.float32)), pads=((0, 0), (0, 0)))


# ---- interpreter vs NumPy ---------------------------------------------------------------------


def test_elementwise_broadcasting():
    a, b = randn(2, 1, 3, seed=1), randn(4, 1, seed=2)
    g = Graph()
    x, y = g.add_input("a", f32(2, 1, 3)), g.add_input("b", f32(4, 1))
    outs = [g.op(op, x, y) for op in ("add", "sub", "mul", "div", "max", "min")]
    cmp = g.op("lt", x, y)
    outs += [cmp, g.op("select", cmp, x, y), g.op("tanh", g.op("exp", x)), g.op("sigmoid", y)]
    g.outputs, g.output_names = outs, [f"o{i}" for i in range(len(outs))]
    verify(g)
    res = run1(g, a, b)
    expect = [a + b, a - b, a * b, a / b, np.maximum(a, b), np.minimum(a, b), a < b,
              np.where(a < b, a, b), np.tanh(np.exp(a)), 1 / (1 + np.exp(-b))]
    for r, e, v in zip(res, expect, outs):
        assert r.shape == e.shape == v.shape and r.dtype == np.dtype(v.dtype)
        np.testing.assert_allclose(r, e, rtol=1e-6, atol=1e-7)
    assert res[6].dtype == np.bool_


def test_integer_div_and_rem_truncate_toward_zero():
    a = np.array([7, -7, 7, -7, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    g = Graph()
    x, y = g.add_input("a", TensorType((5,), "int32")), g.add_input("b", TensorType((5,), "int32"))
    g.outputs, g.output_names = [g.op("div", x, y), g.op("rem", x, y)], ["q", "r"]
    q, r = run1(g, a, b)
    np.testing.assert_array_equal(q, [3, -3, -3, 3, 0])
    np.testing.assert_array_equal(r, [1, -1, 1, -1, 0])
    assert q.dtype == np.int32 and r.dtype == np.int32
    np.testing.assert_array_equal(q, np.asarray(lax.div(jnp.asarray(a), jnp.asarray(b))))
    np.testing.assert_array_equal(r, np.asarray(lax.rem(jnp.asarray(a), jnp.asarray(b))))


def test_shape_ops():
    a = randn(2, 3, 4)
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    neg_one = g.add_param(np.float32(-1.0))
    outs = [
        g.op("reshape", x, shape=(6, 4)),
        g.op("reshape", x, shape=(4, 1, 6)),
        g.op("transpose", x, perm=(2, 0, 1)),
        g.op("broadcast", g.op("reshape", x, shape=(2, 1, 3, 4)), shape=(2, 5, 3, 4), dims=(0, 1, 2, 3)),
        g.op("broadcast", x, shape=(2, 7, 3, 4), dims=(0, 2, 3)),
        g.op("slice", x, starts=(0, 1, 0), limits=(2, 3, 4), strides=(1, 1, 3)),
        g.op("slice", x, starts=(1, 0, 1), limits=(2, 3, 4), strides=(1, 2, 2)),
        g.op("concat", x, g.op("neg", x), x, axis=1),
        g.op("concat", x, g.op("slice", x, starts=(0, 0, 0), limits=(2, 3, 1), strides=(1, 1, 1)), axis=2),
        g.op("pad", x, neg_one, pads=((0, 1), (2, 0), (1, 1))),
    ]
    g.outputs, g.output_names = outs, [f"o{i}" for i in range(len(outs))]
    verify(g)
    expect = [
        a.reshape(6, 4),
        a.reshape(4, 1, 6),
        a.transpose(2, 0, 1),
        np.broadcast_to(a[:, None], (2, 5, 3, 4)),
        np.broadcast_to(a[:, None], (2, 7, 3, 4)),
        a[0:2, 1:3, 0:4:3],
        a[1:2, 0:3:2, 1:4:2],
        np.concatenate([a, -a, a], axis=1),
        np.concatenate([a, a[:, :, :1]], axis=2),
        np.pad(a, ((0, 1), (2, 0), (1, 1)), constant_values=-1.0),
    ]
    for v, r, e in zip(outs, run1(g, a), expect):
        assert r.shape == v.shape == e.shape
        assert r.dtype == np.float32
        np.testing.assert_array_equal(r, e)


def test_broadcast_matches_lax_broadcast_in_dim():
    a = randn(1, 3, 1)
    g = Graph()
    x = g.add_input("x", f32(1, 3, 1))
    cases = [((2, 3, 5, 4), (0, 1, 3)), ((3, 3, 2), (0, 1, 2)), ((4, 1, 3, 2), (1, 2, 3))]
    outs = [g.op("broadcast", x, shape=s, dims=d) for s, d in cases]
    with pytest.raises(IRTypeError, match="cannot broadcast"):  # operand dim 1 (3) vs output dim 6
        g.op("broadcast", x, shape=(3, 6, 2), dims=(0, 1, 2))
    with pytest.raises(IRTypeError, match="cannot broadcast"):  # dims must increase
        g.op("broadcast", x, shape=(3, 3, 2), dims=(0, 2, 1))
    g.outputs, g.output_names = outs, [f"o{i}" for i in range(len(outs))]
    for (s, d), r in zip(cases, run1(g, a)):
        np.testing.assert_array_equal(r, np.asarray(lax.broadcast_in_dim(a, s, d)))


def test_broadcast_of_scalar():
    g = Graph()
    y = g.op("broadcast", g.add_param(np.float32(2.5)), shape=(2, 3), dims=())
    g.outputs, g.output_names = [y], ["y"]
    (r,), _ = run_graph(g, [])
    np.testing.assert_array_equal(r, np.full((2, 3), 2.5, np.float32))


def test_take_with_clamping():
    a = randn(4, 5)
    idx = np.array([[0, 3], [-2, 9], [2, 4]], np.int32)  # -2 clamps to 0, 9 clamps to 3 (axis 0) / 4 (axis 1)
    g = Graph()
    x = g.add_input("x", f32(4, 5))
    i = g.add_input("i", TensorType((3, 2), "int32"))
    t0 = g.op("take", x, i, axis=0)
    t1 = g.op("take", x, i, axis=1)
    i64 = g.op("cast", i, to="int64")
    t2 = g.op("take", x, i64, axis=1)
    g.outputs, g.output_names = [t0, t1, t2], ["t0", "t1", "t2"]
    verify(g)
    assert t0.shape == (3, 2, 5) and t1.shape == (4, 3, 2)
    r0, r1, r2 = run1(g, a, idx)
    np.testing.assert_array_equal(r0, a[np.clip(idx, 0, 3)])
    np.testing.assert_array_equal(r1, a[:, np.clip(idx, 0, 4)])
    np.testing.assert_array_equal(r2, r1)
    # spelled out: out-of-range indices read the nearest edge row
    np.testing.assert_array_equal(r0[1, 0], a[0])
    np.testing.assert_array_equal(r0[1, 1], a[3])
    np.testing.assert_array_equal(r1[:, 1, 1], a[:, 4])


def test_reductions():
    a = randn(2, 3, 4)
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    outs = [g.op("reduce_sum", x, axes=(1,)), g.op("reduce_sum", x, axes=(0, 2)),
            g.op("reduce_sum", x, axes=(0, 1, 2)), g.op("reduce_max", x, axes=(2,)),
            g.op("reduce_min", x, axes=(0,))]
    g.outputs, g.output_names = outs, [f"o{i}" for i in range(len(outs))]
    expect = [a.sum(1), a.sum((0, 2)), a.sum(), a.max(2), a.min(0)]
    for v, r, e in zip(outs, run1(g, a), expect):
        assert r.shape == v.shape == e.shape and r.dtype == np.float32
        np.testing.assert_allclose(r, e, rtol=1e-6, atol=1e-6)


def test_cumsum_both_directions():
    a = randn(3, 5)
    g = Graph()
    x = g.add_input("x", f32(3, 5))
    outs = [g.op("cumsum", x, axis=1), g.op("cumsum", x, axis=1, reverse=True),
            g.op("cumsum", x, axis=0), g.op("cumsum", x, axis=0, reverse=True)]
    g.outputs, g.output_names = outs, ["f1", "r1", "f0", "r0"]
    f1, r1, f0, r0 = run1(g, a)
    np.testing.assert_allclose(f1, np.cumsum(a, axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r1, np.cumsum(a[:, ::-1], axis=1)[:, ::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f0, np.cumsum(a, axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r0, np.cumsum(a[::-1], axis=0)[::-1], rtol=1e-6, atol=1e-6)
    # reverse cumsum's first element is the total, last is the last element
    np.testing.assert_allclose(r1[:, 0], a.sum(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r1[:, -1], a[:, -1])
    i = np.arange(1, 6, dtype=np.int32)
    gi = single_op_graph("cumsum", [TensorType((5,), "int32")], axis=0, reverse=True)
    (ri,) = run1(gi, i)
    np.testing.assert_array_equal(ri, [15, 14, 12, 9, 5])
    assert ri.dtype == np.int32


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims,einsum", [
    ((3, 4), (4, 5), dict(lhs_contract=(1,), rhs_contract=(0,)), "mk,kn->mn"),
    ((4, 3), (5, 4), dict(lhs_contract=(0,), rhs_contract=(1,)), "km,nk->mn"),
    ((2, 3, 4), (2, 4, 5), dict(lhs_contract=(2,), rhs_contract=(1,), lhs_batch=(0,), rhs_batch=(0,)),
     "bmk,bkn->bmn"),
    ((3, 2, 4), (4, 5, 2), dict(lhs_contract=(2,), rhs_contract=(0,), lhs_batch=(1,), rhs_batch=(2,)),
     "mbk,knb->bmn"),
    ((2, 6, 3, 4, 5), (5, 2, 4, 7), dict(lhs_contract=(3, 4), rhs_contract=(2, 0), lhs_batch=(0,), rhs_batch=(1,)),
     "bpmkl,lbkn->bpmn"),
    ((3,), (3,), dict(lhs_contract=(0,), rhs_contract=(0,)), "k,k->"),
    ((2, 3), (4,), dict(lhs_contract=(), rhs_contract=()), "ab,c->abc"),
])
def test_dot_general(lhs_shape, rhs_shape, dims, einsum):
    a, b = randn(*lhs_shape, seed=3), randn(*rhs_shape, seed=4)
    g = single_op_graph("dot", [f32(*lhs_shape), f32(*rhs_shape)], **dims)
    verify(g)
    (r,) = run1(g, a, b)
    e = np.einsum(einsum, a.astype(np.float64), b.astype(np.float64))
    assert r.shape == e.shape == g.outputs[0].shape and r.dtype == np.float32
    np.testing.assert_allclose(r, e, rtol=1e-5, atol=1e-5)
    lax_dims = ((dims["lhs_contract"], dims["rhs_contract"]), (dims.get("lhs_batch", ()), dims.get("rhs_batch", ())))
    ref = lax.dot_general(a, b, lax_dims, precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(r, np.asarray(ref), rtol=1e-5, atol=1e-5)


CONV_CASES = [
    # (x shape NCHW, w shape OIHW, strides, pads, dilations, groups, bias)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, False),
    ((1, 3, 8, 8), (5, 3, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),
    ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), 2, False),
    ((1, 6, 10, 11), (12, 1, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 6, True),  # depthwise, multiplier 2
    ((1, 4, 12, 12), (4, 4, 3, 3), (3, 2), ((2, 0), (3, 1)), (2, 3), 1, False),
    ((2, 8, 5, 7), (4, 2, 1, 3), (1, 2), ((0, 0), (2, 2)), (1, 1), 4, True),
]


@pytest.mark.parametrize("xs,ws,strides,pads,dil,groups,bias", CONV_CASES)
def test_conv2d_vs_lax(xs, ws, strides, pads, dil, groups, bias):
    x, w = randn(*xs, seed=5), randn(*ws, seed=6)
    bvec = randn(ws[0], seed=7)
    g = Graph()
    ins = [g.add_input("x", f32(*xs)), g.add_param(w, "w")] + ([g.add_param(bvec, "b")] if bias else [])
    y = g.op("conv", *ins, strides=strides, pads=pads, dilations=dil, groups=groups)
    g.outputs, g.output_names = [y], ["y"]
    verify(g)
    (r,) = run1(g, x)
    ref = lax.conv_general_dilated(x, w, window_strides=strides, padding=pads, rhs_dilation=dil,
                                   feature_group_count=groups, precision=lax.Precision.HIGHEST)
    ref = np.asarray(ref)
    if bias:
        ref = ref + bvec.reshape(1, -1, 1, 1)
    assert r.shape == ref.shape == y.shape and r.dtype == np.float32
    np.testing.assert_allclose(r, ref, rtol=1e-5, atol=1e-5)


def test_conv1d_vs_lax():
    x, w = randn(2, 4, 17, seed=8), randn(6, 2, 5, seed=9)
    g = single_op_graph("conv", [f32(2, 4, 17), f32(6, 2, 5)], strides=(2,), pads=((3, 1),), dilations=(2,),
                        groups=2)
    (r,) = run1(g, x, w)
    ref = lax.conv_general_dilated(x, w, (2,), ((3, 1),), rhs_dilation=(2,), feature_group_count=2,
                                   precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(r, np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_float64_mode_computes_in_float64():
    # (x + 2^24) - 2^24: in float32 adding 2^24 loses everything below 2 (ulp is 2 there).
    big = np.float32(2.0 ** 24)
    g = Graph()
    x = g.add_input("x", f32(3))
    c = g.add_param(big, "big")
    y = g.op("sub", g.op("add", x, c), c)
    g.outputs, g.output_names = [y], ["y"]
    a = np.array([1.0, 0.75, 3.0], np.float32)
    (r32,) = run1(g, a)
    (r64,) = run1(g, a, precision="float64")
    np.testing.assert_array_equal(r32, (a + big) - big)  # NumPy in float32
    np.testing.assert_array_equal(r32, [0.0, 0.0, 4.0])
    assert r32.dtype == np.float32
    assert r64.dtype == np.float64
    np.testing.assert_array_equal(r64, a.astype(np.float64))


def test_float64_mode_sum_and_casts():
    # 1 + 1e-8 + ... : float32 drops each small term, float64 keeps them.
    g = Graph()
    x = g.add_input("x", f32(4))
    ints = g.op("cast", x, to="int32")
    back = g.op("cast", ints, to="float32")
    half = g.op("cast", g.op("cast", x, to="float16"), to="float32")
    s = g.op("reduce_sum", g.op("cumsum", x, axis=0), axes=(0,))
    g.outputs, g.output_names = [s, back, half], ["s", "back", "half"]
    a = np.array([1.0, 1e-8, 1e-8, 0.1], np.float32)
    s32, b32, h32 = run1(g, a)
    s64, b64, h64 = run1(g, a, precision="float64")
    assert s32.dtype == b32.dtype == h32.dtype == np.float32
    assert s64.dtype == b64.dtype == h64.dtype == np.float64  # casts to float32 become float64
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(s64, np.cumsum(a64).sum(), rtol=1e-15)
    assert s64 != np.float64(s32)
    np.testing.assert_array_equal(b64, [1.0, 0.0, 0.0, 0.0])
    # an explicit float16 cast still rounds to float16 in float64 mode
    np.testing.assert_array_equal(h64, a.astype(np.float16).astype(np.float64))
    np.testing.assert_array_equal(h32, a.astype(np.float16).astype(np.float32))


def test_interpreter_rejects_bad_precision_and_inputs():
    g = single_op_graph("neg", [f32(3)])
    with pytest.raises(ValueError, match="precision"):
        Interpreter(g, "float16")
    it = Interpreter(g)
    with pytest.raises(ValueError, match="expected 1 inputs and 0 state tensors"):
        it.run([], [])
    with pytest.raises(ValueError, match=r"expected shape \(3,\), got \(4,\)"):
        it.run([np.zeros(4, np.float32)], [])


def accumulator_graph() -> Graph:
    """acc' = acc + x; count' = count + 1; outputs acc' * 0.5 and count'."""
    g = Graph(name="accum")
    x = g.add_input("x", f32(3))
    acc = g.add_state("acc", np.array([10.0, 0.0, -1.0], np.float32))
    cnt = g.add_state("count", np.zeros((), np.int32))
    new_acc = g.op("add", acc, x)
    new_cnt = g.op("add", cnt, g.add_param(np.int32(1)))
    g.outputs = [g.op("mul", new_acc, g.add_param(np.float32(0.5))), new_cnt]
    g.output_names = ["half_sum", "steps"]
    g.state[0].output = new_acc
    g.state[1].output = new_cnt
    return g


def test_state_carried_across_steps():
    g = accumulator_graph()
    verify(g)
    it = Interpreter(g)
    state = [s.init for s in g.state]
    xs = [randn(3, seed=s) for s in range(6)]
    acc = g.state[0].init.copy()
    for step, x in enumerate(xs, start=1):
        (half, steps), state = it.run([x], state)
        acc = acc + x
        np.testing.assert_allclose(state[0], acc, rtol=1e-6)
        np.testing.assert_allclose(half, acc * 0.5, rtol=1e-6)
        assert int(steps) == step and int(state[1]) == step
        assert state[0].dtype == np.float32 and state[1].dtype == np.int32
    np.testing.assert_allclose(state[0], g.state[0].init + np.sum(xs, axis=0), rtol=1e-5)
    # the graph's initial state is untouched
    np.testing.assert_array_equal(g.state[0].init, [10.0, 0.0, -1.0])
    # run_graph defaults to the initial state
    (half, steps), new = run_graph(g, [xs[0]])
    np.testing.assert_allclose(half, (g.state[0].init + xs[0]) * 0.5, rtol=1e-6)
    assert int(steps) == 1


def test_cast_float_to_int_truncates_toward_zero():
    a = np.array([-2.7, -2.5, -1.0, -0.5, -0.0, 0.5, 0.99, 1.5, 2.7, -3.0, 1e6 + 0.5], np.float32)
    g = Graph()
    x = g.add_input("x", f32(a.size))
    outs = [g.op("cast", x, to="int32"), g.op("cast", x, to="int64"), g.op("cast", x, to="bool")]
    g.outputs, g.output_names = outs, ["i32", "i64", "b"]
    i32, i64, b = run1(g, a)
    np.testing.assert_array_equal(i32, [-2, -2, -1, 0, 0, 0, 0, 1, 2, -3, 1000000])
    assert i32.dtype == np.int32 and i64.dtype == np.int64 and b.dtype == np.bool_
    np.testing.assert_array_equal(i64, i32)
    np.testing.assert_array_equal(b, a != 0)
    np.testing.assert_array_equal(i32, np.asarray(jnp.asarray(a).astype(jnp.int32)))


ROUND_INPUTS = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -2.4, 2.6, 0.0,
                         0.49999997, -0.49999997,  # largest float32 below 0.5
                         8388609.0, -8388609.0, 4194304.5], np.float32)  # odd integers past 2^23


def test_round_half_even():
    g = single_op_graph("round", [f32(ROUND_INPUTS.size)], mode="half_even")
    (r,) = run1(g, ROUND_INPUTS)
    np.testing.assert_array_equal(
        r, np.array([-2, -2, -0, 0, 2, 2, -2, 3, 0, 0, -0, 8388609, -8388609, 4194304], np.float32))
    np.testing.assert_array_equal(r, np.asarray(lax.round(ROUND_INPUTS, lax.RoundingMethod.TO_NEAREST_EVEN)))
    assert single_op_graph("round", [f32(1)]).nodes[0].attrs == {"mode": "half_even"}  # the default


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_round_half_away(precision):
    g = single_op_graph("round", [f32(ROUND_INPUTS.size)], mode="half_away")
    (r,) = run1(g, ROUND_INPUTS, precision=precision)
    np.testing.assert_array_equal(
        r, np.array([-3, -2, -1, 1, 2, 3, -2, 3, 0, 0, -0, 8388609, -8388609, 4194305], np.float32))
    np.testing.assert_array_equal(r, np.asarray(lax.round(ROUND_INPUTS, lax.RoundingMethod.AWAY_FROM_ZERO)))


def test_round_rejects_int():
    with pytest.raises(IRTypeError, match="op round needs a float input"):
        single_op_graph("round", [TensorType((2,), "int32")])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_elementwise_broadcast_property(shape, data):
    """Any NumPy-broadcastable pair of shapes infers and computes like NumPy."""
    other = [data.draw(st.sampled_from([1, d])) for d in shape]
    other = other[data.draw(st.integers(0, len(other))):]
    a, b = randn(*shape, seed=len(shape)), randn(*other, seed=len(other) + 10)
    g = Graph()
    x, y = g.add_input("a", f32(*shape)), g.add_input("b", f32(*other))
    out = g.op("sub", y, x)
    g.outputs, g.output_names = [out], ["y"]
    verify(g)
    (r,) = run1(g, a, b)
    assert out.shape == np.broadcast_shapes(a.shape, b.shape)
    np.testing.assert_array_equal(r, b - a)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 6), st.integers(0, 6), st.integers(1, 3)),
                min_size=1, max_size=3))
def test_slice_property(spec):
    shape = [d for d, *_ in spec]
    starts = [min(s, d) for d, s, _, _ in spec]
    limits = [max(st_, min(l, d)) for (d, _, l, _), st_ in zip(spec, starts)]
    strides = [k for *_, k in spec]
    a = randn(*shape)
    g = single_op_graph("slice", [f32(*shape)], starts=starts, limits=limits, strides=strides)
    (r,) = run1(g, a)
    e = a[tuple(slice(s, l, k) for s, l, k in zip(starts, limits, strides))]
    assert g.outputs[0].shape == e.shape
    np.testing.assert_array_equal(r, e)


# ---- printer ---------------------------------------------------------------------------------


def test_printer_text_form():
    g = accumulator_graph()
    w = g.add_param(np.ones((2, 3), np.float32), "w")
    z = g.op("reshape", g.op("dot", w, g.inputs[0], lhs_contract=(1,), rhs_contract=(0,)), shape=(1, 2))
    g.outputs.append(z)
    g.output_names.append("z")
    text = format_graph(g)
    assert text == str(g)
    lines = text.splitlines()
    assert lines[0] == "graph accum(%x: f32[3]) {"
    assert lines[-1] == "}"
    assert lines[-2] == f"  return half_sum=%{g.outputs[0].name}, steps=%{g.outputs[1].name}, z=%{z.name}"
    # state lines: name, type, and the value written back
    assert f"  state %acc: f32[3] -> %{g.state[0].output.name}" in lines
    assert f"  state %count: i32[] -> %{g.state[1].output.name}" in lines
    # a non-scalar parameter gets a line; scalars are printed inline
    assert "  param %w: f32[2,3]" in lines
    # one line per node, in order, each naming its op
    node_lines = [ln.strip() for ln in lines if " = " in ln]
    assert len(node_lines) == len(g.nodes)
    for ln, node in zip(node_lines, g.nodes):
        assert ln == format_node(node)
        assert re.search(rf"= {node.op}\(", ln)
    assert f"%{z.name}: f32[1,2] = reshape(%{z.producer.inputs[0].name}) {{shape=(1,2)}}" in node_lines
    dot_line = format_node(z.producer.inputs[0].producer)
    assert dot_line.startswith(f"%{z.producer.inputs[0].name}: f32[2] = dot(%w, %x) {{")
    assert "lhs_contract=(1)" in dot_line and "rhs_contract=(0)" in dot_line and "lhs_batch=()" in dot_line
    assert "mul(" in text and "0.5:f32[]" in text and "1:i32[]" in text


def test_printer_string_attrs_and_shapes():
    g = Graph(name="p")
    x = g.add_input("x", TensorType((2, 3), "float16"))
    y = g.op("round", g.op("cast", x, to="float32"), mode="half_away")
    g.outputs, g.output_names = [y], ["y"]
    text = str(g)
    assert "f16[2,3]" in text and "f32[2,3]" in text
    assert "{to='float32'}" in text and "{mode='half_away'}" in text
    assert str(TensorType((), "bool")) == "i1[]"
    assert str(TensorType((4, 1, 5), "int64")) == "i64[4,1,5]"


# ---- graph helpers ---------------------------------------------------------------------------


def test_op_histogram():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = g.op("add", g.op("mul", x, x), x)
    y = g.op("add", y, g.op("neg", y))
    y = g.op("mul", y, y)
    y = g.op("add", y, y)
    g.outputs, g.output_names = [y], ["y"]
    hist = g.op_histogram()
    assert hist == {"add": 3, "mul": 2, "neg": 1}
    assert list(hist) == ["add", "mul", "neg"]  # most frequent first, ties by name
    assert Graph().op_histogram() == {}


def test_flops():
    g = Graph()
    a = g.add_input("a", f32(4, 5))  # M=4, K=5
    b = g.add_input("b", f32(5, 6))  # N=6
    d = g.op("dot", a, b, lhs_contract=(1,), rhs_contract=(0,))
    assert g.flops() == 2 * 4 * 6 * 5
    bb = g.add_input("bb", f32(3, 7, 2))
    bc = g.add_input("bc", f32(3, 2, 8))
    g.op("dot", bb, bc, lhs_contract=(2,), rhs_contract=(1,), lhs_batch=(0,), rhs_batch=(0,))
    assert g.flops() == 2 * 4 * 6 * 5 + 2 * 3 * 7 * 8 * 2
    before = g.flops()
    x = g.add_input("x", f32(2, 6, 9, 9))
    w = g.add_param(np.zeros((4, 3, 3, 3), np.float32))
    y = g.op("conv", x, w, strides=(2, 2), pads=((1, 1), (1, 1)), dilations=(1, 1), groups=2)
    assert y.shape == (2, 4, 5, 5)
    out_elems = 2 * 4 * 5 * 5
    assert g.flops() - before == 2 * out_elems * (6 // 2) * 3 * 3
    before = g.flops()
    g.op("add", d, d)  # elementwise: one per output element
    g.op("reshape", d, shape=(24,))  # data movement: free
    assert g.flops() - before == 4 * 6
    g.outputs, g.output_names = [d], ["d"]
    verify(g)


def test_param_and_state_bytes():
    g = Graph()
    x = g.add_input("x", f32(3, 4))
    w = g.add_param(np.ones((3, 4), np.float32), "w")  # 48 bytes
    k = g.add_param(np.int32(7), "k")  # 4 bytes
    g.add_param(np.ones(1000, np.float32), "unused")  # never read: not counted
    h = g.add_state("h", np.zeros((3, 4), np.float32))  # 48 bytes
    n = g.add_state("n", np.zeros((2, 2), np.int32))  # 16 bytes
    y = g.op("mul", g.op("add", x, w), w)  # w read twice: counted once
    n2 = g.op("add", n, k)
    g.state[0].output, g.state[1].output = g.op("add", h, y), n2
    g.outputs, g.output_names = [y], ["y"]
    verify(g)
    assert [p.name for p in g.params()] == ["w", "k"]
    assert g.param_bytes() == 48 + 4
    assert g.state_bytes() == 48 + 16
    assert Graph().param_bytes() == 0 and Graph().state_bytes() == 0


def test_replace_all_uses():
    g = Graph()
    x = g.add_input("x", f32(3))
    h = g.add_state("h", np.zeros(3, np.float32))
    old = g.op("neg", x)
    y = g.op("add", old, old)
    g.outputs, g.output_names = [old, y], ["old", "y"]
    g.state[0].output = old
    new = g.op("exp", x)
    # keep SSA order: the replacement must be defined before its users
    g.nodes.remove(new.producer)
    g.nodes.insert(1, new.producer)
    g.replace_all_uses(old, new)
    assert y.producer.inputs == [new, new]
    assert g.outputs == [new, y]
    assert g.state[0].output is new
    assert not any(old in n.inputs for n in g.nodes)
    verify(g)
    a = randn(3)
    (o, yy), (s,) = Interpreter(g).run([a], [np.zeros(3, np.float32)])
    np.testing.assert_allclose(o, np.exp(a), rtol=1e-6)
    np.testing.assert_allclose(yy, 2 * np.exp(a), rtol=1e-6)
    np.testing.assert_allclose(s, np.exp(a), rtol=1e-6)
    assert h is g.state[0].input  # state input untouched
