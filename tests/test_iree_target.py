"""Target iree (issue 18): the xla target's StableHLO compiled by IREE (llvm-cpu) into a .vmfb and run on the
local-sync driver. A small stateful model (a conv, an average pool and a running mean and variance) built and
verified through the CLI at the tier its pipeline claims; the Stream carries the state in IREE buffers and
refuses a NaN step; a .vmfb or manifest changed after the build is refused with one line before IREE sees it;
loading imports IREE's runtime alone. FacePhys (slow, ~45 s): the exact pipeline reaches the rounding tier."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_FRAME, build_tiny, cli_error

import graphopt
from graphopt import artifact as art
from graphopt import cli
from graphopt.stream import StepError
from graphopt.targets import module_for

iree = module_for("iree")
_ok, _why = iree.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"the iree target cannot build here: {_why}")

SPEC_SOURCE = '''
import numpy as np
import jax
import jax.numpy as jnp
import graphopt

W = np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.2


def spec():
    """A stream step with a conv (HWIO), a pool and a running mean and variance of its features: state that
    moves. (A model whose output divides by the running deviation amplifies the few-ulp differences of IREE's
    fused conv-mean and FMA contractions to ~3-4.5x the one-ulp noise floor, at the rounding tier's edge;
    FacePhys stays below it, see test_facephys_exact_reaches_the_rounding_tier.)"""
    def step(frame, dt, state):
        mean, var = state
        x = frame.reshape(1, 16, 16, 3)
        y = jax.lax.conv_general_dilated(x, W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        f = jnp.mean(jnp.maximum(y, 0.0), axis=(1, 2))  # (1, 4)
        a = jnp.exp(-dt * 30.0)
        new_mean = a * mean + (1 - a) * f
        new_var = a * var + (1 - a) * (f - new_mean) ** 2
        bvp = jnp.sum(f + new_mean, axis=1, keepdims=True)
        return bvp, (new_mean, new_var)
    return graphopt.ModelSpec(name="convema", fn=step,
                              inputs={"frame": np.zeros((1, 1, 16, 16, 3), np.float32), "dt": np.float32(1 / 30)},
                              state=(np.zeros((1, 4), np.float32), np.full((1, 4), 0.01, np.float32)),
                              outputs=["bvp"], dt_input="dt", pulse_output="bvp")
'''


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("iree-model") / "convema_model.py"
    path.write_text(SPEC_SOURCE)
    return f"{path}:spec"


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    """The small model built through the CLI (exact passes: the rounding tier), verified over 120 frames."""
    out = tmp_path_factory.mktemp("iree-build") / "convema-iree"
    rc = cli.main(["build", "--model", model, "--target", "iree", "--exact", "--frames", "120", "--out", str(out)])
    assert rc == cli.EXIT_OK
    manifest, _ = art.read_manifest(out)
    return out, manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny("iree", tmp_path_factory.mktemp("tiny-iree") / "iree")


def test_build_reaches_the_tier_its_pipeline_claims(built):
    out, m = built
    assert m["target"] == "iree" and m["file"] == "convema.vmfb"
    eq = m["equivalence"]
    assert eq["verified"] and eq["verified_with"] == "IreeStream" and eq["clip"]["frames"] == 120
    assert eq["tier_claimed"] == "rounding" and eq["tier"] == "rounding", eq
    assert eq["state_max_rel"] < 1e-3
    # IREE adds a vectorised reduction's terms lane by lane: long sums are split, unlike for XLA's tree sums
    assert "split-long-reductions" in [p["name"] for p in m["pipeline"]["passes"]]
    i = m["iree"]
    assert i["driver"] == "local-sync" and i["backend"] == "llvm-cpu" and i["target_cpu"] == "host"
    assert i["compile_flags"] == ["--iree-llvmcpu-target-cpu=host", "--iree-opt-data-tiling"]
    assert set(i["cpu_features"]) <= iree.cpu_features() and i["flat_arguments"] == ["frame", "dt", "state_in_0",
                                                                                     "state_in_1"]
    mlir = (out / i["mlir"]).read_text()  # the module compiled: CPU alone, no platform-index argument
    assert "func.func public @main" in mlir and "_platform_index" not in mlir and "stablehlo.convolution" in mlir
    assert str(out.parent) not in mlir  # no path of the building machine
    assert m["sha256"] == art.sha256(out / "convema.vmfb")
    assert {"iree-base-compiler", "iree-base-runtime"} <= set(m["tools"])


def test_graphopt_verify_passes(built, model, capsys):
    out, _ = built
    rc = cli.main(["verify", str(out), "--model", model, "--frames", "120", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == cli.EXIT_OK, result
    assert result["tier"] == "rounding" and result["same_hr"]


def test_matches_the_xla_artifact_step_by_step(built, model, tmp_path):
    """The same StableHLO: IREE's steps equal XLA's to float32 rounding (outputs and carried state)."""
    out, _ = built
    assert cli.main(["build", "--model", model, "--target", "xla", "--exact", "--no-verify",
                     "--out", str(tmp_path / "xla")]) == cli.EXIT_OK
    a, b = graphopt.load(out), graphopt.load(tmp_path / "xla")
    frames = np.random.default_rng(1).uniform(0.2, 0.8, (40,) + a.frame_shape).astype(np.float32)
    got = np.array([np.asarray(a.step(f)).ravel()[0] for f in frames])
    want = np.array([np.asarray(b.step(f)).ravel()[0] for f in frames])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for s, t in zip(a.state, b.state):
        np.testing.assert_allclose(s, t, rtol=1e-4, atol=1e-6)


def test_the_stream_carries_the_state(tiny):
    import iree.runtime as rt
    stream = graphopt.load(tiny.path)
    init = [s.copy() for s in stream.state]
    frames = (0.5 + 0.1 * np.random.default_rng(0).standard_normal((8,) + TINY_FRAME)).astype(np.float32)
    first = np.array([np.asarray(stream.step(f)).ravel()[0] for f in frames])
    assert all(isinstance(s, rt.DeviceArray) for s in stream._state)  # kept in IREE buffers between steps
    assert stream.state[2][0, 0] == pytest.approx(8 / 30, rel=1e-6)  # the elapsed time: every step counted
    assert any(not np.array_equal(a, b) for a, b in zip(init, stream.state))
    stream.reset()
    assert all(np.array_equal(a, b) for a, b in zip(init, stream.state))
    again = np.array([np.asarray(stream.step(f)).ravel()[0] for f in frames])
    np.testing.assert_array_equal(again, first)  # deterministic after reset


def test_a_nan_step_is_refused_and_the_state_kept(tiny):
    stream = graphopt.load(tiny.path)
    frames = (0.5 + 0.1 * np.random.default_rng(0).standard_normal((4,) + TINY_FRAME)).astype(np.float32)
    for f in frames:
        stream.step(f)
    before = stream.state
    with pytest.raises(StepError, match="NaN/Inf.*kept"):
        stream.step(np.full(TINY_FRAME, 1e30, np.float32))  # the running variance overflows
    assert stream.stats["refused"] == 1
    for a, b in zip(before, stream.state):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(np.asarray(stream.step(frames[0]))).all()
    stream.check_finite = False  # the guard off: the step is kept, Inf and all
    stream.step(np.full(TINY_FRAME, 1e30, np.float32))
    assert not all(np.isfinite(s).all() for s in stream.state)


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_a_tampered_vmfb_is_refused(built, model, tmp_path, capsys):
    folder = _copy(built[0], tmp_path / "tampered")
    vmfb = folder / "convema.vmfb"
    data = bytearray(vmfb.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the code or the module
    vmfb.write_bytes(bytes(data))
    with pytest.raises(art.ArtifactError, match="does not match the sha256 in its manifest"):
        graphopt.load(folder)
    assert "sha256" in cli_error(capsys, "verify", str(folder), "--model", model)


def test_a_vmfb_swapped_after_the_check_is_refused_by_the_stream(tiny, tmp_path):
    """The Stream hashes the bytes it hands IREE: a file swapped between open_artifact's check and the load
    (or a Stream opened on a file the manifest does not describe) is refused."""
    folder = _copy(tiny.path.parent, tmp_path / "swapped")
    opened = art.open_artifact(folder)
    (folder / "tiny.vmfb").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(art.ArtifactError, match="does not match the sha256"):
        iree.open_stream(opened.model_file, opened.manifest, opened.state)


@pytest.mark.parametrize("change, says", [
    (lambda p: p.write_bytes(b"not a module at all"), "no zip header"),
    (lambda p: p.write_bytes(p.read_bytes().replace(b"module.fb", b"module.xx", 1)), "not a stored module.fb"),
    (lambda p: p.write_bytes(p.read_bytes().replace(b"IREE", b"EVIL", 1)), "no IREE identifier"),
])
def test_a_file_that_is_no_iree_module_is_refused_before_iree_reads_it(tiny, tmp_path, change, says):
    folder = _copy(tiny.path.parent, tmp_path / "bad")
    change(folder / "tiny.vmfb")
    m = json.loads((folder / "tiny.manifest.json").read_text())
    m["sha256"] = art.sha256(folder / "tiny.vmfb")  # a consistent manifest: the trust check still refuses
    (folder / "tiny.manifest.json").write_text(json.dumps(m))
    with pytest.raises(art.ArtifactError, match=says):
        graphopt.load(folder)


@pytest.mark.parametrize("field, value, says", [
    ("cpu_features", ["avx512f", "no-such-feature"], "compiled for a CPU with no-such-feature, which this CPU lacks"),
    ("cpu_features", "avx512f", "iree.cpu_features is not a list"),
    ("function", "main; rm -rf /", "iree.function .* is not a function name"),
    ("function", "missing", "IREE cannot load"),
])
def test_a_manifest_the_vmfb_does_not_fit_is_refused_with_one_line(tiny, tmp_path, field, value, says):
    folder = _copy(tiny.path.parent, tmp_path / "manifest")
    path = folder / "tiny.manifest.json"
    m = json.loads(path.read_text())
    m["iree"][field] = value
    path.write_text(json.dumps(m))
    with pytest.raises(art.ArtifactError, match=says) as e:
        graphopt.load(folder)
    assert "\n" not in str(e.value)


def test_generic_cpu_option_and_unknown_value(tmp_path, capsys):
    a = build_tiny("iree", tmp_path / "generic", iree_cpu="generic")
    assert a.manifest["iree"]["target_cpu"] == "generic" and a.manifest["iree"]["cpu_features"] == []
    assert a.manifest["iree"]["compile_flags"] == ["--iree-llvmcpu-target-cpu=generic", "--iree-opt-data-tiling"]
    s = graphopt.load(a.path)
    assert np.isfinite(np.asarray(s.step(np.full(TINY_FRAME, 0.5, np.float32)))).all()
    assert "--iree-cpu: invalid choice" in cli_error(capsys, "build", "--model", "facephys", "--target", "iree",
                                                      "--iree-cpu", "pentium", "--out", str(tmp_path / "x"))


LOAD_AND_STEP = """
import sys
import numpy as np
import graphopt
s = graphopt.load(sys.argv[1])
s.step(np.full(s.frame_shape, 0.5, np.float32))
print(*[m in sys.modules for m in ("iree.runtime", "iree.compiler", "jax", "tensorflow", "torch")])
"""


def test_loading_imports_the_iree_runtime_alone(tiny):
    r = subprocess.run([sys.executable, "-c", LOAD_AND_STEP, str(tiny.path.parent)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "False", "False", "False", "False"]


@pytest.mark.slow
def test_facephys_exact_reaches_the_rounding_tier(facephys, tmp_path):
    """FacePhys through the exact passes, verified over 600 frames at build time against the authors' step."""
    from graphopt.builder import build
    a = build("facephys", "iree", tmp_path / "facephys-iree", exact=True, log=lambda m: None)
    eq = a.manifest["equivalence"]
    assert eq["verified"] and eq["clip"]["frames"] == 600 and eq["hr_bpm"] == eq["hr_ref_bpm"]
    assert eq["tier_claimed"] == "rounding" and eq["tier"] == "rounding", eq
    assert eq["nrmse_over_floor"] <= 4 and eq["state_max_rel"] < 1e-3
    stream = graphopt.load(a.path)
    assert len(stream.state) == 46 and [s.shape for s in stream.state] == [tuple(s["shape"]) for s in
                                                                            stream.manifest["state"]]
