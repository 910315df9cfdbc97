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
    from graphopt.builder import build
    out = tmp_path_factory.mktemp("artifacts") / "facephys-onnx-unfused"
    return build("facephys", "onnx", out, fuse=False, log=lambda m: None)


@pytest.fixture(scope="session")
def onnx_fused(tmp_path_factory, facephys):
    """FacePhys ONNX through the default pipeline, built and verified once."""
    from graphopt.builder import build
    out = tmp_path_factory.mktemp("artifacts") / "facephys-onnx"
    return build("facephys", "onnx", out, log=lambda m: None)


@pytest.fixture(scope="session")
def onnx_exact(tmp_path_factory, facephys):
    """FacePhys ONNX through the default pipeline's exact passes only (--exact)."""
    from graphopt.builder import build
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


TINY_FRAME = (1, 1, 8, 8, 3)


def tiny_graph():
    """A small streaming step model for attack tests (builds in a second, unlike FacePhys): a running
    mean and variance of the frame (like FacePhys's temporal normalisation), normalised output, and a
    dt-dependent gain exp(40 dt) that overflows float32 for dt above ~2.2 s, and the elapsed time (a
    state that only grows, so a lost update shows). A frame of 1e30 makes the variance Inf (NaN
    state); dt = 3 s makes the output Inf."""
    import jax.numpy as jnp
    import numpy as np

    from graphopt.frontends.jax import trace

    def step(frame, dt, state):
        mean, var, t = state
        x = frame.reshape(1, 8, 8, 3)
        new_mean = 0.9 * mean + 0.1 * x
        new_var = 0.9 * var + 0.1 * (x - new_mean) ** 2
        z = (x - new_mean) / jnp.sqrt(new_var + 1e-3)
        bvp = jnp.mean(z, axis=(1, 2, 3)).reshape(1, 1) * jnp.exp(40.0 * dt) / jnp.exp(40.0 / 30)
        return bvp, (new_mean, new_var, t + dt)

    init = (np.full((1, 8, 8, 3), 0.5, np.float32), np.full((1, 8, 8, 3), 0.01, np.float32),
            np.zeros((1, 1), np.float32))
    g = trace(step, {"frame": np.zeros(TINY_FRAME, np.float32), "dt": np.float32(1 / 30)}, init,
              name="tiny", output_names=["bvp"], state_names=["mean", "var", "t"])
    g.meta.update(model="tiny", fps=30.0, frames_per_step=1)
    return g


def build_tiny(target: str, out, **options):
    """The tiny model emitted by `target` into the folder `out` (written like a build: atomically)."""
    from pathlib import Path

    from graphopt import artifact as art
    from graphopt.targets import module_for
    with art.atomic_dir(Path(out), options.pop("force", False)) as tmp:
        a = module_for(target).emit(tiny_graph(), tmp, {"stem": "tiny", **options})
    return art.Artifact(Path(out).resolve() / a.path.name, a.manifest)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return build_tiny("onnx", tmp_path_factory.mktemp("tiny") / "onnx")


def cli_error(capsys, *argv) -> str:
    """Run the CLI, expecting bad input: exit 2 and exactly one stderr line starting with 'error: '."""
    from graphopt import cli
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err
