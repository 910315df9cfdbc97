"""Frontend coverage (issue 15 item 4): every JAX primitive family that Keras layers and common jax.numpy /
jax.nn / jax.lax functions emit translates into the IR, checked in the IR interpreter against jax.jit, or fails
with UnsupportedPrimitiveError naming the primitive and the user's source line; one graph of all the
composite translations runs on every CPU target, and a form a target lacks fails at emit time naming it."""
from __future__ import annotations

import graphopt  # noqa: F401  (first: it chooses Keras's JAX backend)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from graphopt import artifact
from graphopt.frontends.jax import SORT_MAX, UnsupportedPrimitiveError, trace
from graphopt.ir import Interpreter, verify
from graphopt.passes import lowerings_for, pipeline_for, run_pipeline
from graphopt.targets import UnsupportedOpError, module_for

THIS = "test_frontend_coverage.py"
CPU_TARGETS = ("onnx", "xla", "tflite", "tf", "torch")


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(fn, inputs: dict, rtol: float = 1e-5, atol: float = 1e-6, exact: bool = False):
    """Trace fn, verify the graph, and compare every output of the interpreter with jax.jit(fn)."""
    g = trace(fn, inputs)
    verify(g)
    expect = jax.tree_util.tree_leaves(jax.jit(fn)(*map(jnp.asarray, inputs.values())))
    got, _ = Interpreter(g).run(list(inputs.values()), [])
    assert len(got) == len(expect) == len(g.outputs)
    for i, (r, e) in enumerate(zip(got, expect)):
        e = np.asarray(e)
        assert r.shape == e.shape and r.dtype == e.dtype, (i, r.shape, e.shape, r.dtype, e.dtype)
        if exact:
            np.testing.assert_array_equal(r, e, err_msg=f"output {i}")
        else:
            np.testing.assert_allclose(r, e, rtol=rtol, atol=atol, err_msg=f"output {i}")
    return g


def ops(g) -> set[str]:
    """The ops of the nodes the outputs depend on (index arithmetic on constants may be left dead)."""
    live, found = {id(v) for v in g.outputs}, set()
    for node in reversed(g.nodes):
        if any(id(o) in live for o in node.outputs):
            found.add(node.op)
            live.update(id(i) for i in node.inputs)
    return found


def refused(fn, inputs: dict, primitive: str, *fragments: str) -> str:
    """trace(fn) raises UnsupportedPrimitiveError naming the primitive and fn's own line in this file."""
    with pytest.raises(UnsupportedPrimitiveError) as info:
        trace(fn, inputs)
    msg = str(info.value)
    assert f"'{primitive}'" in msg, msg
    assert f"{THIS}:{fn.__code__.co_firstlineno}:" in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert isinstance(info.value, NotImplementedError)
    return msg


# ---- control flow --------------------------------------------------------------------------------


def test_scan_is_unrolled():
    w = randn(4, 4, seed=3) * 0.5

    def f(xs, h0):
        def cell(h, x):
            h = jnp.tanh(x @ w + h)
            return h, h * 2

        last, ys = lax.scan(cell, h0, xs)
        back, rys = lax.scan(lambda c, x: (c + x, c * x), jnp.zeros(4), xs, reverse=True)
        return last, ys, back, rys
    g = check(f, {"xs": randn(5, 4, seed=1), "h0": randn(4, seed=2)})
    assert "scan" not in ops(g) and g.op_histogram()["tanh"] == 5


def test_scan_with_a_scalar_carry_stacks_scalar_outputs():
    """0-d carries and per-step outputs: each step's scalar is stacked as a [1] piece (concat has no rank 0)."""
    def f(x):
        last, ys = lax.scan(lambda c, a: (c + a.sum(), c * 2.0), 0.0, x)
        back, zs = lax.scan(lambda c, a: (c * 0.5 + a, (a * c, c)), 1.0, x.sum(1), reverse=True)
        one = lax.scan(lambda c, a: (c - a.max(), c), 0.0, x[:1])[1]  # length 1: a single [1] piece
        return last, ys, back, zs, one
    g = check(f, {"x": randn(5, 3)})
    for node in g.nodes:
        if node.op == "concat":
            assert {len(v.shape) for v in node.inputs} == {1}, node


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_scan_with_a_scalar_carry_survives_the_pipeline(target):
    """The stacked [1] pieces of scalar steps stay [1] through the passes (layout's unit-reshape hoisting once
    computed the scalar region in () and handed the concat rank-0 pieces)."""
    x = randn(5, 3)
    for f in (lambda x: lax.scan(lambda c, a: (c + a.sum(), c * 2.0), 0.0, x),
              lambda x: lax.scan(lambda c, a: (c + a, a * c), 0.0, x.sum(1))):
        g = trace(f, {"x": x})
        built, _ = run_pipeline(g, pipeline_for(target) + lowerings_for(target), verify_each=True, samples=[[x]])
        got, _ = Interpreter(built).run([x], [])
        for r, e in zip(got, jax.jit(f)(x)):
            np.testing.assert_allclose(r, e, rtol=1e-5, atol=1e-6)


def test_fori_loop_with_constant_bounds_folds_its_index():
    """fori_loop(0, 3, ...) is a scan with a counter: the counter folds, so x[i] becomes a static slice."""
    g = check(lambda x: lax.fori_loop(0, 3, lambda i, c: c * 2 + x[i] * i, x[0]), {"x": randn(4, 5)})
    assert not ops(g) & {"take", "select", "lt"}  # no gather, no index arithmetic left
    assert g.op_histogram()["slice"] == 4


def test_while_with_a_static_trip_count_is_unrolled():
    def f(x):
        return lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]
    g = check(f, {"x": randn(2, 3)})
    assert g.op_histogram() == {"mul": 3}  # the counter and the condition are folded away
    # a fori_loop whose bound is a traced value of constants: a while loop with a constant condition
    g = check(lambda x: lax.fori_loop(0, jnp.int32(4) - 1, lambda i, c: c + i, x), {"x": randn(3)})
    assert "while" not in ops(g) and len(g.nodes) <= 8


def test_while_with_an_input_dependent_condition_is_refused():
    x = {"x": randn(3)}
    refused(lambda x: lax.while_loop(lambda c: c.sum() < 30.0, lambda c: c * 2.0, x), x, "while",
            "trip count is not static")


@pytest.mark.parametrize("x", [randn(2, 3, seed=1) + 3, randn(2, 3, seed=1) - 3])
def test_cond_computes_both_branches_and_selects(x):
    g = check(lambda x: lax.cond(x.sum() > 0, lambda a: jnp.sin(a) * 2, lambda a: a - 1.0, x), {"x": x})
    assert "select" in ops(g) and {"sin", "sub"} <= ops(g)
    g = check(lambda x: lax.switch(jnp.argmax(x[0]), [jnp.sin, jnp.cos, jnp.exp], x), {"x": x})
    assert {"sin", "cos", "exp"} <= ops(g)


def test_cond_with_a_constant_predicate_takes_its_branch():
    g = check(lambda x: (lax.cond(True, jnp.sin, jnp.cos, x), lax.switch(5, [jnp.exp, jnp.tanh], x)),
              {"x": randn(4)})
    assert ops(g) == {"sin", "tanh"}  # switch clamps its index


def test_cond_with_side_effects_is_refused():
    def f(x):
        return lax.cond(x.sum() > 0, lambda a: (jax.debug.print("{}", a), a)[1], lambda a: -a, x)
    with pytest.raises(UnsupportedPrimitiveError, match=rf"'cond' \(from .*{THIS}:\d+.*side effects"):
        trace(f, {"x": randn(3)})


# ---- fft and complex values ------------------------------------------------------------------------


def test_fft_family_as_dft_matrices():
    def f(x, y):
        r = jnp.fft.rfft(x)
        return (r.real, r.imag, jnp.abs(jnp.fft.fft(x, axis=0)), jnp.fft.irfft(r * (1 + 0.5j)),
                jnp.fft.irfft(jnp.fft.rfft(y), n=7), jnp.abs(jnp.fft.fft2(x)),
                jnp.fft.ifft2(jnp.fft.fft2(x)).real, jnp.fft.irfftn(jnp.fft.rfftn(x)), jnp.abs(jnp.fft.rfft(y)))
    g = check(f, {"x": randn(6, 8, seed=1), "y": randn(3, 7, seed=2)}, rtol=1e-4, atol=2e-5)
    assert "dot" in ops(g)
    # the power spectrum of a sine peaks at its frequency
    t = np.arange(64, dtype=np.float32)
    g = trace(lambda s: jnp.abs(jnp.fft.rfft(s)) ** 2, {"s": np.sin(2 * np.pi * 5 * t / 64)})
    (power,), _ = Interpreter(g).run([np.sin(2 * np.pi * 5 * t / 64)], [])
    assert int(np.argmax(power)) == 5 and power[5] == pytest.approx(32 ** 2, rel=1e-4)


def test_complex_arithmetic_as_real_pairs():
    def f(x, y):
        z = lax.complex(x, y)
        w = z * (2 - 1j) + x
        return (jnp.abs(w), jnp.real(z / (w + 3j)), jnp.imag(jnp.conj(z) * z + z ** 3), jnp.real(jnp.exp(1j * x)),
                jnp.imag(jnp.square(z) - z), jnp.abs(z @ jnp.conj(z).T), jnp.real(jnp.sum(z, axis=0)),
                jnp.imag(jnp.concatenate([z, jnp.flip(z, 1)], axis=0)), jnp.real(z.T.reshape(-1)))
    check(f, {"x": randn(3, 4, seed=1), "y": randn(3, 4, seed=2)}, rtol=1e-5, atol=1e-5)


def test_complex_outputs_inputs_and_unsupported_primitives_are_refused():
    x = {"x": randn(8)}
    refused(lambda x: jnp.fft.rfft(x), x, "fft", "output 0 of the traced function is complex")
    refused(lambda x: jnp.sqrt(x + 1j), x, "sqrt", "on complex values")
    with pytest.raises(TypeError, match="input 'z' is complex64: graphopt graphs take real tensors"):
        trace(lambda z: jnp.abs(z), {"z": np.ones(3, np.complex64)})


# ---- reductions, scans, slices ---------------------------------------------------------------------


def test_argmax_argmin_first_index_and_nan():
    x = np.array([[1, 3, 3, 0], [2, 2, -1, -1], [0, np.nan, 5, np.nan]], np.float32)

    def f(x, i):
        return jnp.argmax(x, axis=1), jnp.argmin(x, axis=1), jnp.argmax(x[:2], axis=0), jnp.argmax(x[:2]), \
            jnp.argmin(i, axis=0), jnp.argmax(i > 0, axis=1)
    g = check(f, {"x": x, "i": np.array([[3, -1, 2], [3, 7, -5]], np.int32)}, exact=True)
    assert not ops(g) & {"argmax", "argmin"}


def test_cumulative_reductions():
    x = randn(3, 7, seed=1)

    def f(x, i):
        return (jnp.cumsum(x, axis=1), jnp.cumprod(x, axis=1), lax.cumprod(x, axis=0, reverse=True),
                lax.cummax(x, axis=1), lax.cummax(x, axis=1, reverse=True), lax.cummin(x, axis=0),
                lax.cumlogsumexp(x, axis=1), lax.cumlogsumexp(x, axis=0, reverse=True), lax.cummax(i, axis=0),
                jnp.cumprod(i, axis=1))
    check(f, {"x": x, "i": np.array([[3, -1, 2], [1, 7, -5], [4, 0, 9]], np.int32)}, rtol=2e-6, atol=1e-6)


def test_prod_all_any_tile_exp2_tan():
    def f(x):
        return (jnp.prod(x, axis=1), jnp.prod(x), jnp.prod(x[:, :3], axis=(0, 1)), jnp.all(x > -1.5, axis=0),
                jnp.any(x > 1.0), jnp.tile(x, (2, 1, 3)), jnp.exp2(x), jnp.tan(x))
    check(f, {"x": randn(3, 5, seed=2)})


def test_dynamic_slice_with_constant_starts_folds_to_a_slice():
    def f(x):  # starts clamp so the slice fits, as in JAX
        return lax.dynamic_slice(x, (1, 2), (2, 3)), lax.dynamic_slice(x, (-4, 7), (2, 3)), x[jnp.int32(2) - 1]
    g = check(f, {"x": randn(4, 8)}, exact=True)
    assert not ops(g) & {"take", "select"}


def test_dynamic_slice_and_update_with_computed_starts():
    def f(x):
        i, j = jnp.argmax(x[0]), jnp.argmin(x[1])
        return (lax.dynamic_slice(x, (i, j), (2, 3)), lax.dynamic_slice_in_dim(x, i * 3, 2, axis=1),
                lax.dynamic_update_slice(x, -jnp.ones((2, 3)), (i, j)),
                lax.dynamic_update_slice(x, x[:1, :2] * 10, (1, j)), lax.dynamic_update_slice(x, x[:2] + 1, (i, 0)))
    for seed in range(4):  # starts inside and past the ends
        g = check(f, {"x": randn(4, 8, seed=seed)}, exact=True)
    assert "take" in ops(g)


def test_dynamic_update_slice_with_constant_starts():
    g = check(lambda x: (lax.dynamic_update_slice(x, jnp.zeros((1, 2)), (2, 9)),
                         lax.dynamic_update_slice(x, jnp.full((4, 2), 7.0), (jnp.int32(-1), 3))), {"x": randn(4, 8)},
              exact=True)
    assert ops(g) <= {"pad", "select", "broadcast"}


def test_scatter_with_static_indices():
    """x.at[...].set/add/multiply/min/max with constant indices: static slices (strided, negative, in fori_loop
    bodies) are padded into place, other index patterns taken from the flat updates; repeated indices combine
    round by round; out-of-range updates are dropped or clipped as JAX does."""
    def f(x):
        return (x.at[1:3].set(7.0), x.at[:, 2:4, ::2].add(x[:, :2, ::2]), x.at[jnp.array([0, 2])].set(x[1:3] * 2),
                x.at[jnp.array([0, 2, 0, 0])].add(x), x.at[..., 1].multiply(3.0), x.at[1, 2].max(x[0, 0]),
                x.at[jnp.array([1, 1, 3])].min(x[:3]), x.at[-1, :, 1:4:2].set(-x[0, :, :2]),
                x.at[jnp.array([0, 9])].set(1.0, mode="drop"), x.at[jnp.array([0, 9])].add(1.0, mode="clip"),
                x.at[1:3, 0].subtract(x[0, 1:3]), x.astype(jnp.int32).at[::3, 1].set(5),
                x.at[jnp.array([0, 3]), jnp.array([1, 5])].set(-1.0), x.at[:, 1, :].set(x[:, 0, :] + 1),
                lax.fori_loop(0, 3, lambda i, c: c.at[i].set(c[i + 1] * 2), x), x.at[2:2].set(5.0))
    g = check(f, {"x": randn(4, 6, 5)}, exact=True)
    assert not ops(g) & {"scatter", "scatter-add"}
    # static slices need no gather
    g = check(lambda x: (x.at[:, 1:3].set(x[:, :2] * 2), x.at[::2, 4].add(1.0), x.at[1].multiply(x[0])),
              {"x": randn(5, 6)}, exact=True)
    assert "take" not in ops(g) and ops(g) <= {"pad", "select", "add", "mul", "slice", "reshape", "broadcast"}


# ---- special functions -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")  # erf_inv(+-1): log(0)
def test_erf_erfc_erf_inv():
    x = np.linspace(-6, 9, 301, dtype=np.float32)
    u = np.concatenate([np.linspace(-0.999999, 0.999999, 301), [-1.0, 1.0, 0.0]]).astype(np.float32)
    check(lambda x, u: (lax.erf(x), lax.erfc(x), lax.erf_inv(u), jax.nn.gelu(x, approximate=False)),
          {"x": x, "u": u}, rtol=3e-5, atol=1e-7)
    from scipy.special import erfc
    g = trace(lambda x: lax.erfc(x), {"x": x})
    (got,), _ = Interpreter(g).run([x], [])
    want = erfc(x.astype(np.float64))
    keep = want > 1e-30  # the far tail keeps its relative accuracy (1 - erf(x) would be 0 from x = 4)
    np.testing.assert_allclose(got[keep], want[keep], rtol=2e-5)


# ---- sort and top_k ------------------------------------------------------------------------------


def test_sort_argsort_top_k():
    x = np.array([[3, 1, 2, 1, np.nan, -0.5], [0, 0, 0, -1, 2, 2], [5, 4, np.inf, -np.inf, 1, 1]], np.float32)

    def f(x, k):
        vals, idx = lax.top_k(x, 3)
        return (jnp.sort(x, axis=1), jnp.argsort(x, axis=1), jnp.sort(x, axis=0), jnp.argsort(x[:, 2]), vals,
                idx, lax.sort((k, x[:2, :4]), num_keys=1)[1], lax.sort((k, -k, x[:2, :4]), num_keys=2)[2],
                jnp.sort(k, axis=1))
    k = np.array([[2, 1, 2, 1], [0, 0, -3, 0]], np.int32)
    g = check(f, {"x": x, "k": k}, exact=True)
    assert not ops(g) & {"sort", "top_k"}


def test_sort_past_the_size_limit_is_refused():
    x = {"x": randn(SORT_MAX + 1)}
    refused(lambda x: jnp.sort(x) + 1, x, "sort", f"up to {SORT_MAX}")  # inside jnp.sort's jit: the user's line


@pytest.mark.parametrize("fn,prim", [
    (lambda x: jnp.arctan2(x, 1.0), "atan2"),
    (lambda x: jax.jit(lambda y: jnp.arcsin(y))(x), "asin"),
    (lambda x: lax.reduce_and(x.astype(jnp.int32), (0,)), "reduce_and"),
    (lambda x: lax.cumlogsumexp(x.astype(jnp.int32)), "cumlogsumexp"),
    (lambda x: jax.random.uniform(jax.random.key(0), x.shape) * x, "random_seed"),
    (lambda x: x.at[jnp.argmax(x)].set(7.0), "scatter"),
    (lambda x: x.at[jnp.argsort(x)[:2]].add(x[:2]), "scatter-add"),
])
def test_unsupported_primitives_name_themselves_and_the_line(fn, prim):
    refused(fn, {"x": randn(5)}, prim)


# ---- every composite translation on every target ---------------------------------------------------


def composites(x):
    v = x[0, 0]  # (8, 6)
    flat = lambda a: a.astype(jnp.float32).reshape(-1)
    vals, idx = lax.top_k(v, 3)
    i = jnp.argmax(v[0])
    return jnp.concatenate([
        flat(jnp.argmax(v, axis=1)), flat(jnp.argmin(v, axis=0)), flat(vals), flat(idx), flat(jnp.sort(v, axis=0)),
        flat(jnp.argsort(v[:, 1])), flat(jnp.cumprod(v, axis=1)), flat(lax.cummax(v, axis=0)),
        flat(lax.cummin(v, axis=1, reverse=True)), flat(lax.cumlogsumexp(v, axis=1)), flat(lax.erfc(v)),
        flat(lax.erf_inv(jnp.tanh(v))), flat(jnp.abs(jnp.fft.rfft(v, axis=1))),
        flat(jnp.fft.irfft(jnp.fft.rfft(v, axis=0), n=8, axis=0)), flat(lax.dynamic_slice(v, (i, 2), (3, 2))),
        flat(lax.dynamic_update_slice(v, jnp.ones((2, 2)), (1, i))),
        flat(lax.cond(v.sum() > 0, lambda a: a * 2, lambda a: a - 1, v)),
        flat(lax.scan(lambda c, a: (c * 0.5 + a, c), jnp.zeros(6), v)[1]), flat(jnp.all(v > -1, axis=1)),
        flat(jnp.prod(v, axis=0)), flat(jnp.tile(v[:2], (1, 2))), flat(v.at[2:4, ::2].set(v[:2, :3])),
        flat(v.at[jnp.array([0, 5, 0])].add(v[:3]))])[None, None, :]


@pytest.fixture(scope="module")
def composite_graph():
    x = randn(1, 1, 8, 6, seed=1)
    g = trace(composites, {"frame": x}, name="composites", output_names=["y"])
    verify(g)
    g.meta.update(model="composites", fps=30.0)
    return g, x, np.asarray(jax.jit(composites)(x))


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_composite_translations_run_on_every_target(target, composite_graph, tmp_path):
    ok, why = module_for(target).available()
    if not ok:
        pytest.skip(why)
    g, x, want = composite_graph
    built, _ = run_pipeline(g.clone(), pipeline_for(target) + lowerings_for(target))  # as graphopt build does
    a = module_for(target).emit(built, tmp_path, {"stem": "composites"})
    got = artifact.load(a.path).step(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5, err_msg=target)


def test_a_form_a_target_lacks_fails_at_emit_naming_op_and_targets(tmp_path):
    """A grouped (not depthwise) 2-D conv traces into the IR; TensorFlow has no such conv, so emitting it for
    tflite is an UnsupportedOpError naming the op, the runtime and the targets that share the lowering."""
    w = randn(3, 3, 2, 4, seed=1)
    g = trace(lambda x: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                 feature_group_count=2), {"frame": randn(1, 6, 6, 4)})
    g.meta.update(model="grouped", fps=30.0)
    with pytest.raises(UnsupportedOpError, match=r"^op 'conv' \(%\w+\) has no TensorFlow lowering in this form "
                                                 r"\(targets (?=[^)]*\btflite\b)(?=[^)]*\btf\b)[a-z, -]+\): conv %\w+ is a 2-D conv with 2 groups"):
        module_for("tflite").emit(g, tmp_path, {"stem": "grouped"})


def test_tflite_converter_errors_name_the_ops():
    """The converter's `error:` diagnostics, without their MLIR locations and deduplicated, make the one-line
    message (its last line alone would only say which error code it gave up with)."""
    from graphopt.targets.tf_module import converter_error
    loc = 'loc(callsite(fused["Conv3D:", "Conv3D@__inference_step_10"] at fused["PartitionedCall:", "P"]))'
    text = (f"Could not translate MLIR to FlatBuffer.<unknown>:0: error: {loc}: 'tf.Conv3D' op is neither a custom "
            f"op nor a flex op\n<unknown>:0: note: {loc}: called from\n<unknown>:0: note: {loc}: Error code: "
            f"ERROR_NEEDS_FLEX_OPS\n<unknown>:0: error: {loc}: 'tf.Conv3D' op is neither a custom op nor a flex "
            "op\n<unknown>:0: error: failed while converting: 'main': \nSome ops are not supported by the native "
            "TFLite runtime\nTF Select ops: Conv3D\nDetails:\n\ttf.Conv3D(tensor<2x3xf32>) -> tensor<2x3xf32>\n"
            "\n}) {tf.entry_function = {}} : () -> ()")
    assert converter_error(text) == ("'tf.Conv3D' op is neither a custom op nor a flex op; TF Select ops: Conv3D")
    assert converter_error("a\nlast line\n") == "last line"
    long = converter_error("\n".join(f"error: op {i} " + "x" * 50 for i in range(20)))
    assert len(long) == 300 and long.endswith("...") and "\n" not in long


@pytest.mark.parametrize("target", ["tflite", "tf"])
def test_depthwise_3d_conv_lowers_for_tensorflow(target, tmp_path):
    """TF's Conv3D has no groups: a depthwise 3-D conv (PhysFormer's 3x3x3) is one depthwise 2-D conv per
    temporal kernel offset over the frames folded into the batch, summed; strides and dilations included."""
    ok, why = module_for(target).available()
    if not ok:
        pytest.skip(why)
    c = 6
    w1, w2, b = randn(3, 3, 3, 1, c, seed=1), randn(2, 3, 1, 1, c, seed=2), randn(c, seed=3)

    def f(x):
        dn = ("NDHWC", "DHWIO", "NDHWC")
        y = lax.conv_general_dilated(x, w1, (1, 1, 1), "SAME", dimension_numbers=dn, feature_group_count=c) + b
        z = lax.conv_general_dilated(jax.nn.relu(y), w2, (2, 2, 1), ((1, 0), (0, 1), (0, 0)), rhs_dilation=(2, 1, 1),
                                     dimension_numbers=dn, feature_group_count=c)
        return y.mean(axis=(1, 2, 3)) + z.mean(axis=(1, 2, 3))
    x = randn(1, 8, 7, 5, c, seed=4)
    g = trace(f, {"frame": x}, name="dw3d", output_names=["y"])
    g.meta.update(model="dw3d", fps=30.0)
    built, _ = run_pipeline(g, pipeline_for(target) + lowerings_for(target))
    assert any(n.op == "conv" and n.attrs["groups"] == c and len(n.inputs[0].shape) == 5 for n in built.nodes)
    a = module_for(target).emit(built, tmp_path, {"stem": "dw3d"})
    np.testing.assert_allclose(artifact.load(a.path).step(x), np.asarray(jax.jit(f)(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["tflite", "tf"])
def test_batched_outer_products_lower_for_tensorflow(target, tmp_path):
    """A dot with no contracted dims (RhythmMamba's selective scan: a [192, 48] x [4, 80, 192] outer product batched
    over the rhs's last dim) lowers as a broadcast multiply: TFLite's converter rejects the BatchMatMul it makes of
    that Einsum ("invalid output dimension")."""
    ok, why = module_for(target).available()
    if not ok:
        pytest.skip(why)
    m = randn(12, 5, seed=1)

    def f(x):
        return jnp.concatenate([
            lax.dot_general(m, x, (((), ()), ((0,), (2,)))).reshape(-1),
            lax.dot_general(x, x[..., :5], (((), ()), ((0, 1), (0, 1)))).reshape(-1),
            lax.dot_general(x[0, :, :3], m[:4, :2], (((), ()), ((), ()))).reshape(-1),
            lax.dot_general(x, m[:, :3], (((), ()), ((2,), (0,)))).reshape(-1)])[None]
    x = randn(2, 7, 12, seed=2)
    g = trace(f, {"frame": x}, name="outer", output_names=["y"])
    g.meta.update(model="outer", fps=30.0)
    assert g.op_histogram()["dot"] == 4
    a = module_for(target).emit(g, tmp_path, {"stem": "outer"})
    np.testing.assert_array_equal(artifact.load(a.path).step(x), np.asarray(jax.jit(f)(x)))
