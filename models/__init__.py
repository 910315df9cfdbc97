"""Model adapters: where each model's code and weights come from (imports as graphopt.models)."""
from __future__ import annotations

import functools
import importlib

from .source import ModelSourceError, StepModel

MODELS = {"facephys": "graphopt.models.facephys", "physnet": "graphopt.models.physnet"}


def adapter(name: str):
    if name not in MODELS:
        raise ModelSourceError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return importlib.import_module(MODELS[name])


def load(name: str, weights: str | None = None, as_published: bool = False) -> StepModel:
    """Build a model once per process (building the authors' Keras model takes tens of seconds)."""
    return _load(name, weights, bool(as_published))


@functools.lru_cache(maxsize=4)
def _load(name: str, weights: str | None, as_published: bool) -> StepModel:
    return adapter(name).load(weights=weights, as_published=as_published)


__all__ = ["MODELS", "ModelSourceError", "StepModel", "adapter", "load"]
