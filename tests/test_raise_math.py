"""Tests for raise-math: approximations of exp/sin/cos with range reduction, written in JAX the way
NPU-targeted models write them, traced through the frontend, recognised and raised to native ops."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from graphopt.frontends.jax import trace
from graphopt.ir import Interpreter, verify
from graphopt.passes import PASSES, pipeline_for, run_pipeline
from graphopt import targets
from graphopt.targets import Capabilities

TABLE = np.exp2(np.arange(-20, 20)).astype(np.float32)


def exp_lut(x):
    """exp by k = int(x/ln2 + 0.5), a degree-5 polynomial of the remainder and a 2^k table."""
    k = (x * 1.44269504089 + 0.5).astype(jnp.int32)
    r = x - k * 0.69314718056
    poly = 1 + r * (1.0 + r * (0.5 + r * (0.166666667 + r * (0.041666667 + r * 0.008333333))))
    return poly * jnp.asarray(TABLE)[jnp.clip(k, -20, 19) + 20]


def exp_floor(x):
    """exp by floor-based reduction and 2^k computed by a second polynomial-free path (ldexp-like)."""
    k = jnp.floor(x * 1.4426950408889634)
    r = x - k * 0.6931471805599453
    poly = 1 + r * (1 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r / 720)))))
    return poly * jnp.asarray(TABLE)[jnp.clip(k.astype(jnp.int32), -20, 19) + 20]


def sin_round(x):
    """sin by quadrant reduction (round to multiples of pi/2) and parity-selected polynomials."""
    q = jnp.round(x * 0.6366197723675813)
    r = x - q * 1.5707963267948966
    r2 = r * r
    m_cos = q - 2.0 * jnp.floor(q * 0.5)
    m_neg = jnp.floor((q - 4.0 * jnp.floor(q * 0.25)) * 0.5)
    c1 = -0.166666667 + m_cos * (-0.5 + 0.166666667)
    c2 = 0.008333333 + m_cos * (0.041666667 - 0.008333333)
    head = r + m_cos * (1.0 - r)
    return (1.0 - 2.0 * m_neg) * head * (1.0 + r2 * (c1 + r2 * c2))


def cos_round(x):
    return sin_round(x + 1.57079632679)


def trace_fn(fn, n=8):
    x = np.linspace(-3, 3, n, dtype=np.float32).reshape(1, n)
    return trace(lambda v: [fn(v)], {"x": x}, name="approx"), x


def run(g, x):
    return Interpreter(g, "float32").run([x], [])[0][0]


def raise_only(g):
    _, report = run_pipeline(g, ["fold-constants", "simplify", "cse", "raise-math", "dce"])
    verify(g)
    return report


@pytest.mark.parametrize("fn, native", [(exp_lut, "exp"), (exp_floor, "exp"), (sin_round, "sin"),
                                        (cos_round, "cos")])
def test_approximation_is_raised_to_native_op(fn, native):
    g, x = trace_fn(fn)
    before = run(g, x)
    n_before = len(g.nodes)
    report = raise_only(g)
    hist = g.op_histogram()
    assert hist.get(native) == 1, hist
    assert len(g.nodes) <= 3, f"{n_before} -> {hist}"  # the native op (plus at most a reshape or two)
    for op in ("round", "floor", "take", "cast"):
        assert op not in hist
    after = run(g, x)
    want = getattr(np, native)(x.astype(np.float64))
    np.testing.assert_allclose(after, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after, before, rtol=1e-2, atol=1e-3)  # it was an approximation of it
    assert report["exact"] is False
    [entry] = report["notes"]["raise_math"]
    assert entry["op"] == native and 0 < entry["max_error"] < 1e-2


def test_exp_feeding_clip_is_raised_with_the_clip_kept():
    g, x = trace_fn(lambda v: jnp.clip(exp_lut(v), 0.0, 6.0))
    raise_only(g)
    hist = g.op_histogram()
    assert hist.get("exp") == 1
    got = run(g, x)
    np.testing.assert_allclose(got, np.clip(np.exp(x.astype(np.float64)), 0, 6), rtol=1e-6)
    assert got.max() == pytest.approx(6.0)  # the clip above 6 survived


def test_sin_and_cos_of_one_root_both_raised():
    g, x = trace_fn(lambda v: sin_round(v * 2.0) * cos_round(v * 2.0))
    raise_only(g)
    hist = g.op_histogram()
    assert hist.get("sin") == 1 and hist.get("cos") == 1, hist
    np.testing.assert_allclose(run(g, x), np.sin(2 * x) * np.cos(2 * x), rtol=1e-5, atol=1e-6)


def test_taylor_series_without_range_reduction_is_left_alone():
    g, x = trace_fn(lambda v: 1 + v * (1 + v * (0.5 + v * (1 / 6 + v / 24))))
    n = len(g.nodes)
    report = raise_only(g)
    assert "exp" not in g.op_histogram()
    assert len(g.nodes) == n and report["exact"] is True


def test_range_reduced_function_that_is_not_exp_sin_or_cos_is_left_alone():
    # 2^x by the same construction: range reduction and a table, but not one of the native candidates
    def exp2_lut(v):
        k = jnp.floor(v)
        r = (v - k) * 0.6931471805599453
        poly = 1 + r * (1 + r * (0.5 + r * (1 / 6 + r / 24)))
        return poly * jnp.asarray(TABLE)[jnp.clip(k.astype(jnp.int32), -20, 19) + 20]
    g, x = trace_fn(exp2_lut)
    before = run(g, x)
    raise_only(g)
    hist = g.op_histogram()
    assert not {"exp", "sin", "cos"} & set(hist)
    np.testing.assert_array_equal(run(g, x), before)


def test_two_variable_cone_is_not_raised():
    # the polynomial mixes in a second input, so the cone is not a function of x alone
    def f(v, w):
        k = jnp.floor(v * 1.4426950408889634)
        r = v - k * 0.6931471805599453
        return (1 + r * (1 + r * (0.5 + r * w))) * jnp.asarray(TABLE)[jnp.clip(k.astype(jnp.int32), -20, 19) + 20]
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(1, 8)
    g = trace(lambda v, w: [f(v, w)], {"x": x, "w": np.full((1, 8), 1 / 6, np.float32)})
    raise_only(g)
    assert "exp" not in g.op_histogram()


def test_raise_math_is_value_changing_and_only_for_native_targets():
    p = PASSES["raise-math"]
    assert p.exact is False
    assert p.suits(targets.get("onnx").caps) and not p.suits(Capabilities(native_transcendentals=False))
    assert "raise-math" in pipeline_for("onnx")
    assert "raise-math" not in pipeline_for("onnx", exact_only=True)
    assert "raise-math" not in pipeline_for(Capabilities(native_transcendentals=False))  # an NPU without sin
