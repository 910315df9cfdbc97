"""Shared fixtures. The FacePhys model takes ~30 s to build, so it is built once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Reference runs and noise floors are cached per test session, never taken from the user's cache."""
    old = os.environ.get("GRAPHOPT_CACHE_DIR")
    os.environ["GRAPHOPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("graphopt-cache"))
    yield
    if old is None:
        os.environ.pop("GRAPHOPT_CACHE_DIR", None)
    else:
        os.environ["GRAPHOPT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def facephys():
    from graphopt import models
    return models.load("facephys")


@pytest.fixture(scope="session")
def facephys_graph(facephys):
    return facephys.trace()


@pytest.fixture(scope="session")
def onnx_unfused(tmp_path_factory, facephys):
    """The unfused FacePhys ONNX artifact, built and verified once."""
    from graphopt.build import build
    out = tmp_path_factory.mktemp("artifacts") / "facephys-onnx-unfused"
    return build("facephys", "onnx", out, fuse=False, log=lambda m: None)


@pytest.fixture(scope="session")
def onnx_fused(tmp_path_factory, facephys):
    """FacePhys ONNX through the default pipeline, built and verified once."""
    from graphopt.build import build
    out = tmp_path_factory.mktemp("artifacts") / "facephys-onnx"
    return build("facephys", "onnx", out, log=lambda m: None)


@pytest.fixture(scope="session")
def onnx_exact(tmp_path_factory, facephys):
    """FacePhys ONNX through the default pipeline's exact passes only (--exact)."""
    from graphopt.build import build
    out = tmp_path_factory.mktemp("artifacts") / "facephys-onnx-exact"
    return build("facephys", "onnx", out, exact=True, log=lambda m: None)
