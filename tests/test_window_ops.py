"""Window ops (pool, reverse) and 3-D / input-dilated convolutions in the onnx, xla, torch and tensorrt
targets: small hand-built graphs emitted, loaded as Streams and compared with the float64 interpreter;
the interpreter's pool against jax.lax.reduce_window (the IR's semantics)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from graphopt import artifact as art
from graphopt.ir import Graph, Interpreter, TensorType
from graphopt.passes import run_pipeline
from graphopt.targets import module_for
from graphopt.targets import onnx as onnx_target
from graphopt.targets import torch_lowering, trt_support

TARGETS = ("onnx", "xla", "torch", "tensorrt")
NO_PAD = ((0, 0),) * 5


def pool(mode, window, strides, pads=NO_PAD):
    return "pool", {"mode": mode, "window": window, "strides": strides, "pads": pads[:len(window)]}


# name -> (frame shape, op, attributes); conv kernels are added by the graph builder
CASES = {
    "max-2d-overlapping-padded": ((2, 3, 7, 6), *pool("max", (1, 1, 3, 3), (1, 1, 2, 1),
                                                       ((0, 0), (0, 0), (1, 1), (1, 0)))),
    "sum-3d": ((1, 2, 6, 5, 4), *pool("sum", (1, 1, 2, 2, 2), (1, 1, 2, 2, 2))),
    "sum-3d-overlapping-padded": ((1, 2, 6, 5, 4), *pool("sum", (1, 1, 3, 3, 2), (1, 1, 1, 2, 1),
                                                         ((0, 0), (0, 0), (1, 1), (0, 1), (1, 0)))),
    "avg-2d-overlapping-padded": ((2, 3, 7, 6), *pool("avg", (1, 1, 3, 2), (1, 1, 2, 1),
                                                       ((0, 0), (0, 0), (1, 1), (0, 1)))),
    "avg-3d-channels-last": ((1, 4, 6, 6, 3), *pool("avg", (1, 2, 2, 2, 1), (1, 2, 2, 2, 1))),
    "max-2d-channels-last": ((1, 4, 6, 6, 3), *pool("max", (1, 1, 2, 2, 1), (1, 1, 2, 2, 1))),
    "sum-batch-axis-windowed": ((4, 3, 5), *pool("sum", (2, 1, 2), (1, 1, 2), ((1, 0), (0, 0), (0, 1)))),
    "avg-1d-pads-beyond-window": ((2, 3, 9), *pool("avg", (1, 1, 3), (1, 1, 2), ((0, 0), (0, 0), (3, 2)))),
    "max-pads-beyond-window": ((2, 5, 5), *pool("max", (1, 2, 2), (1, 1, 1), ((0, 0), (2, 2), (0, 3)))),
    "max-trivial-window": ((2, 3), *pool("max", (1, 1), (1, 1))),  # the identity
    "reverse": ((2, 3, 4, 5), "reverse", {"axes": (1, 3)}),
    "reverse-no-axes": ((2, 3), "reverse", {"axes": ()}),
    "conv-3d-padded-strided": ((1, 3, 6, 7, 5), "conv", {"strides": (1, 2, 1), "pads": ((1, 1), (0, 1), (2, 0)),
                                                        "dilations": (1, 1, 2), "groups": 1}),
    "conv-3d-grouped": ((2, 4, 5, 5, 5), "conv", {"strides": (2, 1, 1), "pads": ((1, 1),) * 3,
                                                  "dilations": (1, 1, 1), "groups": 2}),
}
# PhysNet's upsampling: Conv3DTranspose(kernel (4, 1, 1), strides (2, 1, 1), 'same') as JAX traces it
UPSAMPLE = {"strides": (1, 1, 1), "pads": ((2, 2), (0, 0), (0, 0)), "dilations": (1, 1, 1), "groups": 1,
            "lhs_dilations": (2, 1, 1)}


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def one_op_graph(shape, op: str, attrs: dict, kernel=(4, 3, 3, 2, 3)) -> Graph:
    """frame -> op -> y; a conv gets a seeded kernel of the given shape (channels fitted) and a bias."""
    g = Graph(name=op)
    x = g.add_input("frame", TensorType(shape, "float32"))
    ins = [x]
    if op == "conv":
        w = (kernel[0], shape[1] // attrs["groups"]) + tuple(kernel[2:])
        ins += [g.add_param(rand(*w, seed=1), "w"), g.add_param(rand(kernel[0], seed=2), "b")]
    g.outputs, g.output_names = [g.op(op, *ins, **attrs)], ["y"]
    return g


def reference(g: Graph, x: np.ndarray) -> np.ndarray:
    return Interpreter(g, "float64").run([x], [])[0][0]


def emit_and_step(g: Graph, target: str, out_dir, x: np.ndarray) -> tuple[np.ndarray, dict]:
    out_dir.mkdir()
    a = module_for(target).emit(g, out_dir, {"stem": g.name})
    # -inf is a legitimate output here (a max window over padding alone): no finiteness guard
    return np.asarray(art.load(a.path, check_finite=False).step(x)), a.manifest


def assert_close(y, ref):
    """float32 tolerance relative to the largest value; -inf (a max window all padding) must match exactly."""
    assert y.shape == ref.shape
    scale = float(np.max(np.abs(ref), where=np.isfinite(ref), initial=1.0))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(CASES))
def test_targets_match_the_interpreter(case, target, tmp_path):
    shape, op, attrs = CASES[case]
    g = one_op_graph(shape, op, attrs)
    x = rand(*shape)
    ref = reference(g, x)
    y, manifest = emit_and_step(g, target, tmp_path / target, x)
    assert_close(y, ref)
    if target == "tensorrt":  # emit raises where the check fails; without a GPU the ONNX ran in onnxruntime
        check = manifest["tensorrt"]["check"]
        assert check["ok"] and check["unsupported"] == [], check
        if trt_support.import_tensorrt_rtx() is not None:
            assert check["checker"].startswith("TensorRT-RTX") and check["rtx_engine_built"], check


def test_torch_compile_pools_channels_last(tmp_path):
    shape, op, attrs = CASES["avg-3d-channels-last"]
    g = one_op_graph(shape, op, attrs)
    x = rand(*shape)
    y, manifest = emit_and_step(g, "torch-compile", tmp_path / "tc", x)
    assert manifest["torch"]["compiled"]
    assert_close(y, reference(g, x))


@pytest.mark.parametrize("case, ops", [
    ("max-2d-overlapping-padded", ["MaxPool"]),  # already [N, C, H, W]: no transpose, no reshape
    ("sum-3d", ["AveragePool", "Mul"]),
    ("max-2d-channels-last", ["Transpose", "Reshape", "MaxPool", "Reshape", "Transpose"]),
    ("avg-3d-channels-last", ["Transpose", "AveragePool", "Transpose"]),  # two trivial axes: N and C, no reshape
    ("sum-batch-axis-windowed", ["Transpose", "Reshape", "AveragePool", "Mul", "Reshape", "Transpose"]),
    ("avg-1d-pads-beyond-window", ["Pad", "AveragePool"]),  # onnxruntime takes pads smaller than the window only
    ("max-trivial-window", ["Identity"]),
    ("reverse", ["Slice"]),
])
def test_onnx_pool_and_reverse_nodes(case, ops):
    shape, op, attrs = CASES[case]
    model = onnx_target.to_onnx(one_op_graph(shape, op, attrs))
    assert [n.op_type for n in model.graph.node] == ops


def test_pool_plan_folds_trivial_axes():
    a = {"window": (1, 1, 2, 2, 1), "strides": (1, 1, 2, 2, 1), "pads": NO_PAD}
    plan = onnx_target.pool_plan((2, 4, 6, 6, 3), (2, 4, 3, 3, 3), a)
    assert plan.perm == (0, 1, 4, 2, 3) and plan.inverse == (0, 1, 3, 4, 2)
    assert plan.folded == (8, 3, 6, 6) and plan.unfolded == (2, 4, 3, 3, 3)
    assert (plan.window, plan.strides, plan.pads) == ((2, 2), (2, 2), ((0, 0), (0, 0)))
    nchw = onnx_target.pool_plan((2, 3, 6, 6), (2, 3, 3, 3), {"window": (1, 1, 2, 2), "strides": (1, 1, 2, 2),
                                                             "pads": NO_PAD[:4]})
    assert nchw.inverse is None and nchw.folded is None


def test_pool_over_four_axes(tmp_path):
    """ONNX and torch pool at most 3 spatial axes and say so; XLA's reduce_window takes any number."""
    shape, attrs = (3, 4, 5, 6), {"mode": "max", "window": (2, 2, 2, 2), "strides": (1, 1, 1, 1), "pads": NO_PAD[:4]}
    x = rand(*shape)
    for target, error in [("onnx", onnx_target.UnsupportedOpError), ("torch", torch_lowering.UnsupportedOpError)]:
        with pytest.raises(error, match="window on 4 axes; .* at most 3"):
            emit_and_step(one_op_graph(shape, "pool", attrs), target, tmp_path / target, x)
    g = one_op_graph(shape, "pool", attrs)
    assert_close(emit_and_step(g, "xla", tmp_path / "xla", x)[0], reference(g, x))


def test_onnx_reduce_over_no_axes_is_the_identity(tmp_path):
    """The IR's reduce over axes=() keeps the tensor; ONNX's ReduceSum with no axes would sum everything."""
    x = rand(2, 3)
    g = one_op_graph((2, 3), "reduce_sum", {"axes": ()})
    y, manifest = emit_and_step(g, "onnx", tmp_path / "onnx", x)
    assert manifest["onnx"]["ops"] == {"Identity": 1}
    assert_close(y, reference(g, x))


def test_build_turns_an_unlowerable_op_into_a_build_error(tmp_path, monkeypatch):
    """An op a target cannot lower fails the build with BuildError (exit 1), naming the op, and leaves nothing."""
    from graphopt import builder as build_mod
    from graphopt.targets import onnx as onnx_mod
    monkeypatch.delitem(onnx_mod.TABLE.lowerings, "conv")
    with pytest.raises(build_mod.BuildError, match=r"cannot emit this graph: op 'conv' \(%\S+\) has no ONNX lowering "
                                                   r"\(targets? onnx(, onnx-web)?\): graphopt/targets/onnx.py declares none"):
        build_mod.build("physnet", "onnx", tmp_path / "out", verify=False, log=lambda m: None)
    assert not (tmp_path / "out").exists()


# ---- the IR's pool semantics ----------------------------------------------------------------------


@st.composite
def pool_configs(draw):
    """(mode, shape, window, strides, pads) of rank 1-4; windows may cover padding only."""
    mode = draw(st.sampled_from(["max", "sum", "avg"]))
    shape, window, strides, pads = [], [], [], []
    for _ in range(draw(st.integers(1, 4))):
        d, lo, hi = draw(st.integers(1, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
        shape.append(d)
        window.append(draw(st.integers(1, min(4, d + lo + hi))))
        strides.append(draw(st.integers(1, 3)))
        pads.append((lo, hi))
    return mode, tuple(shape), tuple(window), tuple(strides), tuple(pads)


@settings(max_examples=40, deadline=None)
@given(pool_configs(), st.integers(0, 2 ** 16))
def test_interpreter_pool_matches_lax_reduce_window(config, seed):
    mode, shape, window, strides, pads = config
    g = one_op_graph(shape, "pool", {"mode": mode, "window": window, "strides": strides, "pads": pads})
    x = rand(*shape, seed=seed)
    (y,), _ = Interpreter(g, "float32").run([x], [])
    init, combine = (-jnp.inf, lax.max) if mode == "max" else (0.0, lax.add)
    ref = np.asarray(lax.reduce_window(jnp.asarray(x), jnp.float32(init), combine, window, strides, pads))
    if mode == "avg":
        ref = ref / np.float32(np.prod(window))
    assert y.dtype == np.float32
    assert_close(y, ref)
