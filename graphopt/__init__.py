"""graphopt: export and optimisation toolchain for streaming rPPG models."""
import os

# The Keras models graphopt traces (open-rppg) run on Keras's JAX backend. Choose it before anything
# (tensorflow included) imports keras; models.source.require_keras_jax() checks it took effect.
os.environ.setdefault("KERAS_BACKEND", "jax")

from .artifact import load  # noqa: E402
from .multistream import MultiStream, load_multi  # noqa: E402
from .spec import ModelSpec, from_keras  # noqa: E402

__all__ = ["ModelSpec", "MultiStream", "build", "from_keras", "load", "load_multi"]
__version__ = "0.1.0"


def build(model, target: str, out, **options):
    """Build `model` (a ModelSpec, a built-in model's name, or "FILE.py:FUNC") for `target` into the folder
    `out`, verified against the model's own reference; returns the Artifact. Options as
    graphopt.builder.build (verify, frames, exact, fps, fuse, target_options, force, log, ...)."""
    from .builder import build as _build
    return _build(model, target, out, **options)
