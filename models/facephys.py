"""FacePhys (open-rppg 0.1.1, MIT): the authors' Keras-3-on-JAX SSM rPPG network, as a step model.

    bvp, state' = step(frame[1,1,36,36,3] float32 in 0..1, dt seconds/frame, state)

The authors' code is loaded by file path from the installed open-rppg distribution, without
running the `rppg` package's __init__ (which imports video and face-detection libraries).
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from ..spec import ModelSpec  # noqa: E402
from .source import (check_weights_file, keras_source, load_module, load_weights,  # noqa: E402
                     locate_package_file, require_keras_jax)

PACKAGE, VERSION = "open-rppg", "0.1.1"
CODE = "rppg/models_code/FacePhys.py"
WEIGHTS = "rppg/weights/FacePhys.rlap.weights.h5"
FRAME_SHAPE = (1, 1, 36, 36, 3)
FPS = 30.0


def load(weights: str | None = None, as_published: bool = False) -> ModelSpec:
    """Build the authors' FacePhys([2]*4, [32]*4) with trained weights.

    The authors run their sixteen 3x3 convs under Keras `mixed_float16`; graphopt's canonical form
    is float32, so those layers are switched to float32 unless `as_published` is set.
    """
    code_path = locate_package_file(PACKAGE, VERSION, CODE)
    weights_path = weights or locate_package_file(PACKAGE, VERSION, WEIGHTS)
    check_weights_file(weights_path)
    import jax
    import keras

    require_keras_jax()
    module = load_module("graphopt_facephys_code", code_path)
    model = module.FacePhys([2] * 4, [32] * 4)
    model.build(FRAME_SHAPE)
    load_weights(model, weights_path, "FacePhys", PACKAGE, VERSION)
    mixed = [layer for layer in model._flatten_layers() if layer.dtype_policy.name == "mixed_float16"]
    if not as_published:
        for layer in mixed:
            layer.dtype_policy = keras.DTypePolicy("float32")

    import numpy as np

    def step(frame, dt, state):
        return model.step(frame, state, dt=dt)

    fields = keras_source(model, PACKAGE, VERSION, CODE, weights_path, as_published)
    fields["source"]["mixed_float16_layers"] = len(mixed)
    state = jax.tree_util.tree_map(np.asarray, model.init_state(FRAME_SHAPE))
    return ModelSpec(name="facephys", fn=step, state=state, outputs=["bvp"], fps=FPS, pulse_output="bvp",
                     inputs={"frame": np.zeros(FRAME_SHAPE, np.float32), "dt": np.float32(1.0 / FPS)},
                     dt_input="dt", frame_input="frame", **fields)
