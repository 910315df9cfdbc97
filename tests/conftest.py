"""Shared fixtures. The FacePhys model takes ~30 s to build, so it is built once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
# every runtime runs on one thread, as graphopt's Streams and benchmarks do; TensorFlow sizes its pools
# when its runtime starts, which another library (tf2onnx) may do before any graphopt Stream
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


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


def _run_model_card(folder):
    """Run the python block of a release's README in a fresh interpreter from the release folder,
    section by section (blank-line separated), leaving out sections whose artifact folder is absent.
    Returns the last bvp's shape as printed; fails with the interpreter's stderr."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    folder = Path(folder)
    code = (folder / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    prelude, *sections = code.strip().split("\n\n")
    uses = lambda s: re.findall(r"'([\w-]+)/", s) + re.findall(r"load\('([\w-]+)'\)", s)
    kept = [s for s in sections if all((folder / d).is_dir() for d in uses(s))]
    src = "\n\n".join([prelude] + kept) + "\nprint('bvp shape', tuple(np.asarray(bvp).shape))\n"
    r = subprocess.run([sys.executable, "-c", src], cwd=folder, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"the model card's code failed:\n{src}\n{r.stderr[-3000:]}"
    return [s.splitlines()[0] for s in kept], r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def run_model_card():
    return _run_model_card
