"""FacePhys (open-rppg 0.1.1, MIT): the authors' Keras-3-on-JAX SSM rPPG network, as a step model.

    bvp, state' = step(frame[1,1,36,36,3] float32 in 0..1, dt seconds/frame, state)

The authors' code is loaded by file path from the installed open-rppg distribution, without
running the `rppg` package's __init__ (which imports video and face-detection libraries).
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from .source import (StepModel, check_weights_file, keras_source, load_module, load_weights,  # noqa: E402
                     locate_package_file, require_keras_jax)

PACKAGE, VERSION = "open-rppg", "0.1.1"
CODE = "rppg/models_code/FacePhys.py"
WEIGHTS = "rppg/weights/FacePhys.rlap.weights.h5"
FRAME_SHAPE = (1, 1, 36, 36, 3)
FPS = 30.0


def load(weights: str | None = None, as_published: bool = False) -> StepModel:
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

    state = model.init_state(FRAME_SHAPE)
    leaves, treedef = jax.tree_util.tree_flatten(state)

    def step(frame, dt, state_leaves):
        bvp, new_state = model.step(frame, jax.tree_util.tree_unflatten(treedef, state_leaves), dt=dt)
        return bvp, jax.tree_util.tree_leaves(new_state)

    fields = keras_source(model, PACKAGE, VERSION, CODE, weights_path, as_published)
    fields["source"]["mixed_float16_layers"] = len(mixed)
    return StepModel(
        name="facephys",
        step=step,
        initial_state=[jax.device_get(x) for x in leaves],
        frame_shape=FRAME_SHAPE,
        fps=FPS,
        output_name="bvp",
        **fields,
    )
