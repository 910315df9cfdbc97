"""PhysNet (open-rppg 0.1.1, MIT): the authors' Keras-3-on-JAX 3-D CNN, as a chunk model.

    bvp[1,128] = step(chunk[1,128,32,32,3] float32 in 0..1)

A chunk model has no state and no dt: 128 frames in, 128 standardised waveform samples out.
The authors' code (`rppg/models.py`) is imported by file path under a stand-in package, so its
relative imports resolve without running the `rppg` package's __init__ (which imports video and
face-detection libraries). Importing it sets Keras's global dtype policy to mixed_float16; the
adapter restores the previous policy straight away and builds the model in float32 (graphopt's
canonical form), or under mixed_float16 with `as_published`.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from ..spec import ModelSpec  # noqa: E402
from .source import (check_weights_file, keras_source, load_package_module, load_weights,  # noqa: E402
                     locate_package_file, require_keras_jax)

PACKAGE, VERSION = "open-rppg", "0.1.1"
CODE = "rppg/models.py"
WEIGHTS = "rppg/weights/physnet.rlap.weights.h5"
CHUNK = 128
FRAME_SHAPE = (1, CHUNK, 32, 32, 3)
FPS = 30.0


def _authors_module(code_path: str):
    import keras
    previous = keras.config.dtype_policy()
    try:
        return load_package_module("graphopt_rppg", os.path.dirname(code_path), "models",
                                   stub_missing=("pkg_resources",))
    finally:
        keras.config.set_dtype_policy(previous)  # the module sets mixed_float16 globally on import


def load(weights: str | None = None, as_published: bool = False) -> ModelSpec:
    """Build the authors' PhysNet with trained weights (rlap by default), in float32 unless as_published."""
    code_path = locate_package_file(PACKAGE, VERSION, CODE)
    weights_path = weights or locate_package_file(PACKAGE, VERSION, WEIGHTS)
    check_weights_file(weights_path)
    import keras
    import numpy as np

    require_keras_jax()
    module = _authors_module(code_path)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if as_published else "float32")
    try:
        model = module.PhysNet()
        model(np.zeros(FRAME_SHAPE, np.float32))
    finally:
        keras.config.set_dtype_policy(previous)
    load_weights(model, weights_path, "PhysNet", PACKAGE, VERSION)

    fields = keras_source(model, PACKAGE, VERSION, CODE, weights_path, as_published)
    return ModelSpec(name="physnet", fn=model, inputs={"frame": np.zeros(FRAME_SHAPE, np.float32)},
                     outputs=["bvp"], fps=FPS, pulse_output="bvp", frame_input="frame", **fields)
