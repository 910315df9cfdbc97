"""Keras 3 layers (JAX backend) traced by the frontend and run on every CPU target: each layer inside a JAX function,
its graph through the IR interpreter and, through the target's pipeline (as graphopt build runs it), emitted,
loaded as a Stream and stepped, against the layer's own output."""
from __future__ import annotations

import graphopt  # noqa: F401  (first: it sets KERAS_BACKEND=jax before keras is imported)

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from graphopt import artifact
from graphopt.frontends.jax import trace
from graphopt.ir import Interpreter, verify
from graphopt.passes import lowerings_for, pipeline_for, run_pipeline
from graphopt.targets import module_for

TARGETS = ("onnx", "xla", "tflite", "tf", "torch")
RTOL, ATOL = 1e-4, 1e-5
L = keras.layers

ACTIVATIONS = ("relu", "gelu", "silu", "softmax", "tanh", "sigmoid", "elu", "leaky_relu", "selu", "softplus",
               "softsign", "hard_sigmoid", "mish", "relu6", "hard_silu", "log_softmax", "exponential", "celu", "glu",
               "sparse_plus", "squareplus", "tanh_shrink", "hard_tanh", "soft_shrink", "hard_shrink", "log_sigmoid",
               "sparsemax")


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def built(layer, *example):
    """The layer, built for the example's shapes and given random weights (variances positive), so that every
    weight (biases, batch-norm statistics, normalisation scales) matters."""
    keras.utils.set_random_seed(0)
    layer.build(*(np.shape(x) for x in example))
    rng = np.random.default_rng(1)
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if "variance" in w.path
                       else (rng.standard_normal(w.shape) * 0.5).astype(w.dtype) for w in layer.weights])
    return layer


def pieces(fn_by_name: dict, x):
    """One function returning the named functions' outputs on x flattened and concatenated (one emit per
    target for several layers), and the (name, size) of each piece of its output."""
    def fn(x):
        return jnp.concatenate([f(x).reshape(-1) for f in fn_by_name.values()])[None, None, :]
    return fn, [(name, int(np.prod(jax.eval_shape(f, x).shape))) for name, f in fn_by_name.items()]


def run_everywhere(name: str, fn, x: np.ndarray, out_dir, parts: list[tuple[str, int]] | None = None):
    """fn(x) against the IR interpreter and every target's Stream; parts: the (name, size) pieces of the output."""
    want = np.asarray(jax.jit(fn)(x))  # the layer's own output (jit: one compile, not one per eager op)

    def compare(got, where):
        got = np.asarray(got)
        assert got.shape == want.shape and got.dtype == want.dtype, (where, got.shape, want.shape, got.dtype)
        if parts is None:
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} on {where}")
            return
        cuts = np.cumsum([n for _, n in parts])[:-1]
        for (part, _), g, w in zip(parts, np.split(got.reshape(-1), cuts), np.split(want.reshape(-1), cuts)):
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {part} on {where}")

    g = trace(fn, {"frame": x}, name=name, output_names=["y"])
    verify(g)
    (got,), _ = Interpreter(g).run([x], [])
    compare(got, "the IR interpreter")
    g.meta.update(model=name, fps=30.0)
    for target in TARGETS:
        ok, why = module_for(target).available()
        if not ok:
            pytest.skip(f"{target}: {why}")
        graph, _ = run_pipeline(g.clone(), pipeline_for(target) + lowerings_for(target))
        folder = out_dir / f"{name}-{target}"
        folder.mkdir()
        stream = artifact.load(module_for(target).emit(graph, folder, {"stem": name}).path)
        compare(stream.step(x), target)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras")


def self_attention(x):
    mha = built(L.MultiHeadAttention(num_heads=2, key_dim=4), x, x)
    return lambda x: mha(x, x)


CASES = {  # name: (make the function from the example input, example input)
    "Dense": (lambda x: built(L.Dense(4), x), randn(1, 2, 3)),
    "Conv1D": (lambda x: built(L.Conv1D(4, 3, padding="same", dilation_rate=2), x), randn(1, 8, 3)),
    "DepthwiseConv1D": (lambda x: built(L.DepthwiseConv1D(3, strides=2), x), randn(1, 9, 3)),
    "Conv2D": (lambda x: built(L.Conv2D(4, 3, strides=2, padding="same"), x), randn(1, 8, 8, 3)),
    "Conv3D": (lambda x: built(L.Conv3D(4, 3), x), randn(1, 5, 6, 6, 2)),
    "DepthwiseConv2D": (lambda x: built(L.DepthwiseConv2D(3, padding="same", depth_multiplier=1), x),
                        randn(1, 8, 8, 3)),
    "BatchNormalization": (lambda x: built(L.BatchNormalization(), x), randn(2, 4, 3)),
    "LayerNormalization": (lambda x: built(L.LayerNormalization(), x), randn(2, 4, 6)),
    "GroupNormalization": (lambda x: built(L.GroupNormalization(groups=2), x), randn(2, 4, 6)),
    "MultiHeadAttention": (self_attention, randn(1, 5, 8)),
    "GRU": (lambda x: built(L.GRU(5), x), randn(1, 6, 3)),
    "LSTM": (lambda x: built(L.LSTM(5, return_sequences=True), x), randn(1, 6, 3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layer_on_every_target(name, out_dir):
    make, x = CASES[name]
    run_everywhere(name, make(x), x, out_dir)


def test_pooling_layers_on_every_target(out_dir):
    x = randn(1, 8, 8, 3, seed=2)
    max1d, avg3d = L.MaxPooling1D(2), L.AveragePooling3D((2, 1, 2))
    fns = {"MaxPooling2D": L.MaxPooling2D(2), "AveragePooling2D(same)": L.AveragePooling2D(3, 2, padding="same"),
           "GlobalAveragePooling2D": L.GlobalAveragePooling2D(), "GlobalMaxPooling2D": L.GlobalMaxPooling2D(),
           "MaxPooling1D": lambda x: max1d(x.reshape(1, 64, 3)),
           "AveragePooling3D": lambda x: avg3d(x.reshape(1, 4, 2, 8, 3))}
    fn, parts = pieces(fns, x)
    run_everywhere("pooling", fn, x, out_dir, parts)


def test_activations_on_every_target(out_dir):
    fns = {a: (lambda a: lambda x: getattr(keras.activations, a)(x))(a) for a in ACTIVATIONS}
    fns["gelu(approximate)"] = lambda x: keras.activations.gelu(x, approximate=True)
    fns["Softmax layer"] = L.Softmax(axis=1)
    fns["LeakyReLU layer"] = L.LeakyReLU(negative_slope=0.2)
    fns["PReLU layer"] = built(L.PReLU(), randn(1, 2, 6))
    x = randn(1, 2, 6, seed=3) * 3
    fn, parts = pieces(fns, x)
    run_everywhere("activations", fn, x, out_dir, parts)


def test_embedding_on_every_target(out_dir):
    """Integer ids in (the Stream takes integer inputs that match the manifest's dtype)."""
    ids = np.array([[[1, 2, 9], [0, 3, 3]]], np.int32)
    embedding = built(L.Embedding(10, 4), ids)
    run_everywhere("Embedding", embedding, ids, out_dir)
