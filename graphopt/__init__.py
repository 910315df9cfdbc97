"""graphopt: export and optimisation toolchain for streaming rPPG models."""
import os

# The Keras models graphopt traces (open-rppg) run on Keras's JAX backend. Choose it before anything
# (tensorflow included) imports keras; models.source.require_keras_jax() checks it took effect.
os.environ.setdefault("KERAS_BACKEND", "jax")

from .artifact import load  # noqa: E402

__all__ = ["load"]
__version__ = "0.1.0"
