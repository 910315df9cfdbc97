"""torch-compile --aot-inductor: the Stream runs an AOTInductor package of the artifact's program, compiled when
it loads into graphopt's cache (nothing compiled travels in the artifact), verified at build like any artifact;
a second load takes the cached package; the state is carried and reset as with torch.compile."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt
from graphopt import artifact as art
from graphopt.builder import build
from graphopt.equivalence import cache_dir

pytest.importorskip("torch", reason="torch is pinned in requirements.txt (the torch targets)")


def small_spec():
    """A conv over the frame and a per-channel mean carried as an EMA with dt (state matters)."""
    import jax
    import jax.numpy as jnp
    w = (np.random.default_rng(0).normal(size=(3, 3, 3, 4)) * 0.3).astype(np.float32)

    def step(frame, dt, state):
        y = jax.lax.conv_general_dilated(frame, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        new = state + jnp.minimum(dt * 3.0, 1.0) * (jnp.mean(jnp.tanh(y), axis=(1, 2)) - state)
        return jnp.sum(new, axis=-1) + 0.1 * jnp.mean(frame[..., 1]), new

    return graphopt.ModelSpec(name="aoti_ema", fn=step, inputs={"frame": np.zeros((1, 12, 12, 3), np.float32),
                                                              "dt": np.float32(1 / 30)},
                              state=np.zeros((1, 4), np.float32), outputs=["bvp"], dt_input="dt", pulse_output="bvp")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from graphopt.targets import module_for
    if not module_for("torch-compile").available()[0]:
        pytest.skip(module_for("torch-compile").available()[1])
    out = tmp_path_factory.mktemp("aoti")
    spec = small_spec()
    aot = build(spec, "torch-compile", out / "aot", exact=True, frames=96, target_options={"aot_inductor": True},
                log=lambda m: None)
    plain = build(spec, "torch-compile", out / "plain", exact=True, frames=96, log=lambda m: None)
    return aot, plain


def test_aot_inductor_artifact_is_verified_and_cached(built):
    aot, plain = built
    m = aot.manifest
    assert m["torch"]["aot_inductor"] is True and "aot_inductor" not in plain.manifest["torch"]
    eq = m["equivalence"]
    assert eq["verified"] and eq["tier_claimed"] == eq["tier"] == "rounding", eq
    packages = list((cache_dir() / "aot-inductor").glob(f"{m['sha256']}-torch*.pt2"))
    assert len(packages) == 1  # compiled once, at the build's verification; no partial file left
    assert not list((cache_dir() / "aot-inductor").glob(f".{m['sha256']}*"))


def test_aot_inductor_stream_matches_torch_compile(built):
    aot, plain = built
    a, p = art.load(aot.path), art.load(plain.path)  # the AOT one from the cache
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 1, (20, 1, 12, 12, 3)).astype(np.float32)
    ya = np.concatenate([np.ravel(a.step(f, 1 / 30)) for f in frames])
    yp = np.concatenate([np.ravel(p.step(f, 1 / 30)) for f in frames])
    np.testing.assert_allclose(ya, yp, rtol=1e-6, atol=1e-6)
    a.reset()  # back to the initial state: the first step again
    np.testing.assert_allclose(np.ravel(a.step(frames[0], 1 / 30)), ya[:1], rtol=1e-6, atol=1e-7)
