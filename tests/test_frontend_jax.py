"""Tests for the JAX frontend: trace small JAX functions and run the IR interpreter against JAX itself."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from graphopt.frontends.jax import UnsupportedPrimitiveError, trace
from graphopt.ir import Interpreter, TensorType, verify

RTOL, ATOL = 1e-5, 1e-6
HIGHEST = lax.Precision.HIGHEST


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_ir(g, *inputs):
    outs, _ = Interpreter(g).run(list(inputs), [])
    return outs


def check(fn, inputs: dict, exact: bool = False, **trace_kw):
    """Trace fn, verify the graph, and compare every output of one interpreter step with JAX."""
    g = trace(fn, inputs, **trace_kw)
    verify(g)
    expect = jax.tree_util.tree_leaves(fn(*map(jnp.asarray, inputs.values())))
    got = run_ir(g, *inputs.values())
    assert len(got) == len(expect) == len(g.outputs)
    for v, r, e in zip(g.outputs, got, expect):
        e = np.asarray(e)
        assert r.shape == e.shape == v.shape
        assert r.dtype == e.dtype, (r.dtype, e.dtype)
        if exact:
            np.testing.assert_array_equal(r, e)
        else:
            np.testing.assert_allclose(r, e, rtol=RTOL, atol=ATOL)
    return g


# ---- shapes and elementwise ------------------------------------------------------------------


def test_reshape_squeeze_expand_transpose_chain():
    def f(x):
        y = x.reshape(2, 3, 1, 4)
        y = jnp.squeeze(y, axis=2)
        y = jnp.expand_dims(y, 0)
        y = jnp.transpose(y, (0, 3, 1, 2))
        z = jnp.swapaxes(y, 1, 3).reshape(-1)
        return y, z, x.T, x[None, :, None]
    g = check(f, {"x": randn(6, 4)}, exact=True)
    assert g.outputs[0].shape == (1, 4, 2, 3)
    assert {"reshape", "transpose"} <= set(g.op_histogram())


def test_broadcasting_arithmetic():
    def f(a, b, c):
        return (a + b) * c - a / (jnp.abs(b) + 1.0), jnp.maximum(a, c) ** 2, -b * 3.0, jnp.exp(a) * jnp.tanh(c)
    check(f, {"a": randn(2, 1, 4, seed=1), "b": randn(3, 1, seed=2), "c": randn(4, seed=3)})


def test_elementwise_math():
    def f(x):
        return (jax.nn.sigmoid(x), jnp.sqrt(jnp.abs(x)), lax.rsqrt(jnp.abs(x) + 1), jnp.log1p(jnp.abs(x)),
                jnp.expm1(x), jnp.sign(x), jnp.floor(x), jnp.ceil(x), jax.nn.relu(x), jnp.sin(x) + jnp.cos(x),
                jnp.square(x), x % 0.7, jnp.minimum(x, 0.25))
    check(f, {"x": randn(3, 5, seed=4) * 3})


def test_comparisons_and_logic():
    def f(x, y):
        m = (x > y) & ~(x == 0.0) | (y <= -1.0)
        return m, jnp.where(m, x, y), (x != y), (x >= 0.5)
    check(f, {"x": randn(4, 3, seed=5), "y": randn(4, 3, seed=6)}, exact=True)


# ---- contractions ---------------------------------------------------------------------------


def test_matmul_and_einsum_with_batch_dims():
    def f(a, b, c, d):
        return (a @ b,
                jnp.einsum("bik,bkj->bij", c, d, precision=HIGHEST),
                jnp.einsum("ikb,bjk->bji", jnp.transpose(c, (1, 2, 0)), jnp.transpose(d, (0, 2, 1)), precision=HIGHEST),
                jnp.matmul(c, d, precision=HIGHEST),
                jnp.dot(a[0], b, precision=HIGHEST),
                jnp.einsum("i,i->", a[0], a[1], precision=HIGHEST))
    check(f, {"a": randn(3, 4, seed=1), "b": randn(4, 5, seed=2), "c": randn(2, 3, 4, seed=3),
              "d": randn(2, 4, 5, seed=4)})


def test_dot_general_direct():
    def f(x, y):
        return lax.dot_general(x, y, (((3, 1), (0, 2)), ((0,), (1,))), precision=HIGHEST)
    g = check(f, {"x": randn(2, 3, 6, 4, seed=1), "y": randn(4, 2, 3, 5, seed=2)})
    assert g.op_histogram().get("dot") == 1


# ---- convolutions (Keras layout: NHWC activations, HWIO kernels) ---------------------------------

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("cin,cout,k,strides,padding,groups,dil", [
    (3, 5, 3, (1, 1), "SAME", 1, (1, 1)),
    (4, 6, 3, (2, 2), "SAME", 1, (1, 1)),
    (4, 4, 3, (2, 2), "SAME", 4, (1, 1)),      # depthwise
    (3, 6, 5, (1, 2), "SAME", 3, (1, 1)),      # depthwise with channel multiplier 2
    (4, 6, 3, (1, 1), "VALID", 2, (2, 1)),     # grouped, dilated
    (2, 3, 2, (2, 1), ((1, 0), (2, 1)), 1, (1, 1)),
])
def test_conv_nhwc(cin, cout, k, strides, padding, groups, dil):
    w = randn(k, k, cin // groups, cout, seed=7)
    b = randn(cout, seed=8)

    def f(x):
        y = lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dil, dimension_numbers=NHWC,
                                     feature_group_count=groups, precision=HIGHEST)
        return y + b
    g = check(f, {"x": randn(2, 9, 8, cin, seed=9)})
    (conv,) = [n for n in g.nodes if n.op == "conv"]
    assert conv.attrs["groups"] == groups and conv.attrs["strides"] == strides
    assert conv.inputs[0].shape == (2, cin, 9, 8)  # channels first inside the IR


def test_conv_1d_nwc():
    w = randn(5, 3, 4, seed=1)

    def f(x):
        return lax.conv_general_dilated(x, w, (2,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
                                        precision=HIGHEST)
    check(f, {"x": randn(1, 16, 3, seed=2)})


# ---- selection, gathers, scans, rounding and casts ----------------------------------------------


def test_select_n_and_where():
    def f(x, y, i):
        return (lax.select_n(x > 0, x, y), jnp.where(x > y, x * 2, 0.0), lax.select_n(i, x, y, x + y),
                jnp.where(i == 1, 1, -1))
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.int32)
    check(f, {"x": randn(2, 3, seed=1), "y": randn(2, 3, seed=2), "i": idx}, exact=True)


def test_gather_indexing():
    idx = np.array([3, 0, -1, 2, 2], np.int32)  # -1 wraps, as in NumPy

    def f(x, i):
        return x[i], x[:, i], x[i][:, 1:3], x[jnp.clip(i * 3, -4, 3)], x[:, 2], x[1]
    check(f, {"x": randn(4, 5, seed=1), "i": idx}, exact=True)


def test_gather_out_of_range_clamps():
    # x[i] clamps out-of-range indices (JAX's retrieval semantics)
    idx = np.array([[0, 9], [-1, -7]], np.int32)
    g = check(lambda x, i: x[i], {"x": randn(4, 3, seed=1), "i": idx}, exact=True)
    (r,) = run_ir(g, randn(4, 3, seed=1), idx)
    np.testing.assert_array_equal(r[0, 1], randn(4, 3, seed=1)[3])


def test_take_along_axis_1():
    idx = np.array([[4, 0], [1, 3], [2, 2]], np.int32)

    def f(x, i):
        return jnp.take(x, i, axis=1), jnp.take(x, i[1], axis=0), jnp.take(x, i, axis=1, mode="clip")
    check(f, {"x": randn(3, 5, seed=2), "i": idx}, exact=True)


def test_take_out_of_range_fills_nan():
    # jnp.take's default mode is "fill": out-of-range indices give NaN
    idx = np.array([0, 7, -9, 2], np.int32)
    f = lambda x, i: jnp.take(x, i, axis=1)
    x = randn(2, 3, seed=3)
    g = check(f, {"x": x, "i": idx}, exact=True)
    (r,) = run_ir(g, x, idx)
    assert np.isnan(r[:, 1]).all() and np.isnan(r[:, 2]).all()
    np.testing.assert_array_equal(r[:, 3], x[:, 2])


def test_cumsum_forward_and_reverse():
    def f(x):
        return (jnp.cumsum(x, axis=1), lax.cumsum(x, axis=0, reverse=True), lax.cumsum(x, axis=1, reverse=True),
                jnp.cumsum(x))
    check(f, {"x": randn(4, 6, seed=1)})


def test_round():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -3.7, 3.2, 8388609.0], np.float32)

    def f(x):
        return jnp.round(x), lax.round(x), lax.round(x, lax.RoundingMethod.TO_NEAREST_EVEN), jnp.rint(x)
    check(f, {"x": x}, exact=True)


def test_casts_to_int_truncate():
    x = np.array([-2.7, -2.5, -1.0, -0.5, 0.0, 0.3, 1.9, -3.0, 100.99], np.float32)

    def f(x):
        i = x.astype(jnp.int32)
        return i, i.astype(jnp.float32) * 2, (x > 0).astype(jnp.float32), x.astype(jnp.bool_), jnp.trunc(x)
    g = check(f, {"x": x}, exact=True)
    np.testing.assert_array_equal(run_ir(g, x)[0], [-2, -2, -1, 0, 0, 0, 1, -3, 100])


def test_clip():
    def f(x):
        return jnp.clip(x, -0.5, 0.75), jnp.clip(x, min=0.0), lax.clamp(-1.0, x, 1.0)
    check(f, {"x": randn(3, 4, seed=1) * 2}, exact=True)


def test_split_stack_concatenate():
    def f(x, y):
        a, b, c = jnp.split(x, [1, 3], axis=1)
        parts = jnp.split(y, 2, axis=0)
        return (jnp.concatenate([c, a, b], axis=1), jnp.stack([x, x * 2], axis=1), jnp.stack(parts, axis=-1),
                jnp.concatenate([x, y[:, :5]], axis=0), jnp.hstack([a, c]), jnp.pad(x, ((1, 0), (0, 2))))
    check(f, {"x": randn(3, 5, seed=1), "y": randn(4, 6, seed=2)}, exact=True)


def test_reductions():
    def f(x):
        return jnp.sum(x, axis=1), jnp.max(x, axis=(0, 2)), jnp.min(x), jnp.mean(x, axis=-1, keepdims=True), \
            jnp.arange(4, dtype=jnp.float32) * x[0, 0, :4], jnp.var(x, axis=0)
    check(f, {"x": randn(2, 3, 4, seed=1)})


def test_softmax():
    check(lambda x: (jax.nn.softmax(x, axis=-1), jax.nn.logsumexp(x, axis=0)), {"x": randn(2, 3, 4, seed=1)})


# ---- nested and custom calls ----------------------------------------------------------------


@jax.custom_jvp
def relu6(x):
    return jnp.minimum(jnp.maximum(x, 0.0), 6.0)


relu6.defjvp(lambda primals, tangents: (relu6(primals[0]), tangents[0] * ((primals[0] > 0) & (primals[0] < 6))))


@jax.custom_jvp
def softplus(x):
    return jnp.logaddexp(x, 0.0)


softplus.defjvp(lambda p, t: (softplus(p[0]), t[0] * jax.nn.sigmoid(p[0])))


def test_custom_jvp():
    g = check(lambda x: (relu6(x * 4), softplus(x), jax.nn.softplus(x), jax.nn.gelu(x)), {"x": randn(3, 4, seed=1)})
    assert not any("custom" in n.op for n in g.nodes)


def test_nested_jit():
    @jax.jit
    def inner(a, b):
        return a * b + jnp.sin(a)

    @functools.partial(jax.jit, static_argnums=1)
    def middle(a, n):
        return inner(a, a) * n

    check(lambda x: (middle(x, 3), inner(x, 2.0 * x)), {"x": randn(2, 3, seed=1)})


def test_checkpoint():
    def block(x):
        return jnp.tanh(x @ jnp.ones((3, 3), jnp.float32)) * x

    check(lambda x: jax.checkpoint(block)(x) + jax.remat(jnp.exp)(x), {"x": randn(2, 3, seed=1)})


def test_integer_pow():
    x = randn(3, 4, seed=1) + 3.0  # away from zero for x**-2
    g = check(lambda x: (x ** 3, x ** -2, x ** 2, x ** 1, x ** 0, lax.integer_pow(x, 5), x ** -1), {"x": x})
    assert "pow" not in g.op_histogram()  # lowered to multiplications
    i = np.array([-3, -1, 0, 2, 5], np.int32)
    check(lambda i: (i ** 3, i ** 2), {"i": i}, exact=True)


def test_closed_over_constants_become_params():
    w = jnp.asarray(randn(3, 4, seed=1))
    g = check(lambda x: jnp.dot(x, w, precision=HIGHEST), {"x": randn(2, 3, seed=2)}, param_names={id(w): "w"})
    assert [p.name for p in g.params()] == ["w"]
    np.testing.assert_array_equal(g.params()[0].const, np.asarray(w))
    assert g.param_bytes() == 3 * 4 * 4


# ---- graph interface ------------------------------------------------------------------------


def test_names_and_types():
    def f(frame, mask):
        return frame * mask, jnp.sum(frame)
    g = trace(f, {"frame": randn(2, 3), "mask": np.ones((2, 3), np.float32)}, name="step",
              output_names=["masked", "total"])
    verify(g)
    assert g.name == "step"
    assert [v.name for v in g.inputs] == ["frame", "mask"]
    assert [v.type for v in g.inputs] == [TensorType((2, 3), "float32")] * 2
    assert g.output_names == ["masked", "total"]
    assert g.outputs[1].type == TensorType((), "float32")
    g2 = trace(f, {"frame": randn(2, 3), "mask": np.ones((2, 3), np.float32)})
    assert g2.output_names == ["output_0", "output_1"]
    with pytest.raises(ValueError, match="output names"):
        trace(f, {"frame": randn(2, 3), "mask": randn(2, 3)}, output_names=["only_one"])


def test_float64_examples_follow_jax_dtype_canonicalization():
    # With x64 disabled (the default), JAX computes float64 NumPy inputs in float32; so does the graph.
    assert not jax.config.jax_enable_x64
    x = np.linspace(-1, 1, 6).reshape(2, 3)  # float64
    g = trace(lambda x: jnp.sin(x) * 2, {"x": x})
    verify(g)
    assert g.inputs[0].type == TensorType((2, 3), "float32")
    (r,) = run_ir(g, x)
    np.testing.assert_allclose(r, np.asarray(jnp.sin(x) * 2), rtol=RTOL, atol=ATOL)
    gs = trace(lambda x, s: (x + s, s + 1.0), {"x": np.ones(3, np.float32)}, state=np.zeros(3))
    verify(gs)
    assert gs.state[0].input.type == TensorType((3,), "float32")


# ---- state ---------------------------------------------------------------------------------


def running_mean_dict(x, state):
    total = state["sum"] + x
    count = state["count"] + 1
    mean = total / count.astype(jnp.float32)
    return mean, {"sum": total, "count": count}


def running_mean_tuple(x, state):
    total, count, history = state
    total = total + x
    count = count + 1.0
    history = jnp.concatenate([history[1:], jnp.mean(x, keepdims=True)[None]], axis=0)
    return (total / count, history.sum()), (total, count, history)


@pytest.mark.parametrize("fn,state0", [
    (running_mean_dict, {"sum": np.zeros(3, np.float32), "count": np.zeros((), np.int32)}),
    (running_mean_tuple, (np.zeros(3, np.float32), np.zeros((), np.float32), np.zeros((4, 1), np.float32))),
])
def test_stateful_running_mean(fn, state0):
    g = trace(fn, {"x": np.zeros(3, np.float32)}, state=state0, name="running_mean")
    verify(g)
    leaves, treedef = jax.tree_util.tree_flatten(state0)
    assert len(g.state) == len(leaves)
    for pair, leaf in zip(g.state, leaves):
        assert pair.input.type == pair.output.type == TensorType(leaf.shape, leaf.dtype.name)
        np.testing.assert_array_equal(pair.init, leaf)
    it = Interpreter(g)
    ir_state = [p.init for p in g.state]
    py_state = state0
    for step in range(6):
        x = randn(3, seed=step)
        outs, ir_state = it.run([x], ir_state)
        py_out, py_state = fn(x, py_state)
        for r, e in zip(outs, jax.tree_util.tree_leaves(py_out)):
            np.testing.assert_allclose(r, np.asarray(e), rtol=RTOL, atol=ATOL)
        for r, e in zip(ir_state, jax.tree_util.tree_leaves(py_state)):
            assert r.dtype == np.asarray(e).dtype
            np.testing.assert_allclose(r, np.asarray(e), rtol=RTOL, atol=ATOL)
    total = ir_state[1] if fn is running_mean_dict else ir_state[0]  # dict leaves flatten in key order
    np.testing.assert_allclose(total, sum(randn(3, seed=s) for s in range(6)), rtol=1e-5, atol=1e-6)


def test_state_names():
    g = trace(running_mean_dict, {"x": np.zeros(3, np.float32)},
              state={"sum": np.zeros(3, np.float32), "count": np.zeros((), np.int32)}, state_names=["n", "s"])
    # dict leaves are flattened in key order: count, sum
    assert [p.name for p in g.state] == ["n", "s"]
    assert g.state[0].input.type == TensorType((), "int32")


def test_state_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"state tensor 0: input \(3,\) float32 but output \(1, 3\) float32"):
        trace(lambda x, s: (x, (s + x)[None]), {"x": np.zeros(3, np.float32)}, state=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"state tensor 1: input \(\) int32 but output \(\) float32"):
        trace(lambda x, s: (x, (s[0] + x, s[1] + 0.5)), {"x": np.zeros(3, np.float32)},
              state=(np.zeros(3, np.float32), np.zeros((), np.int32)))
    with pytest.raises(ValueError, match="returns 1 state tensors but takes 2"):
        trace(lambda x, s: (x, s[0]), {"x": np.zeros(3, np.float32)},
              state=(np.zeros(3, np.float32), np.zeros(3, np.float32)))


# ---- unsupported primitives -------------------------------------------------------------------


@pytest.mark.parametrize("fn,prim", [  # scan, cond, sort, cummax, ... translate now: tests/test_frontend_coverage.py
    (lambda x: jnp.arctan2(x, 1.0), "atan2"),
    (lambda x: lax.while_loop(lambda c: c.sum() < 30.0, lambda c: c * 2.0, x), "while"),  # trip count not static
    (lambda x: jnp.sort(jnp.tile(x, 1000)) + 1, "sort"),  # too long to sort, inside jnp.sort's own jit: the location
    (lambda x: jax.jit(lambda y: jnp.arcsin(y))(x), "asin"),  # is still the user's line
    (lambda x: x.at[jnp.argmax(x)].set(7.0), "scatter"),  # static indices translate: tests/test_frontend_coverage.py
])
def test_unsupported_primitive(fn, prim):
    with pytest.raises(UnsupportedPrimitiveError) as info:
        trace(fn, {"x": randn(5)})
    msg = str(info.value)
    assert f"'{prim}'" in msg
    assert "test_frontend_jax.py" in msg
    assert isinstance(info.value, NotImplementedError)
