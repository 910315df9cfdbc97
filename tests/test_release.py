"""graphopt release (end to end on a subset of variants, fewer frames), precision variants at their
tiers, a failing target leaving nothing behind, and deterministic builds per target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphopt import artifact as art
from graphopt import cli, release
from graphopt.builder import EngineNeedsGpu, build
from graphopt.targets import trt_support


@pytest.fixture(scope="module")
def small_release(tmp_path_factory, facephys):
    out = tmp_path_factory.mktemp("rel") / "facephys-test"
    code = cli.main(["release", "--model", "facephys", "--out", str(out), "--frames", "300", "--rounds", "1",
                     "--variants", "onnx,tflite,tflite-fp16,tflite-int8-dynamic,tensorrt"])
    return code, out


def test_release_folder_is_complete(small_release):
    code, out = small_release
    assert code == 0
    r = json.loads((out / "release.json").read_text())
    assert set(r["artifacts"]) == {"onnx", "tflite", "tflite-fp16", "tflite-int8-dynamic", "tensorrt",
                                   "open-rppg JAX JIT (reference)"}
    for name in ("onnx", "tflite-fp16", "tflite-int8-dynamic", "tensorrt"):
        e = r["artifacts"][name]
        assert (out / e["file"]).exists() and (out / name / f"facephys.manifest.json").is_file()
        assert e["tier"] is not None and e["size_bytes"] > 0 and e["sha256"]
    assert r["artifacts"]["onnx"]["fps"] > 0 and r["artifacts"]["open-rppg JAX JIT (reference)"]["x_reference"] == 1
    assert r["source"]["package"] == "open-rppg" and len(r["source"]["weights_sha256"]) == 64
    assert r["graphopt_version"] and r["tools"]["onnxruntime"] and r["flops_per_frame"] > 1e8
    assert r["state_tensors"] == 46 and r["state_bytes"] == 2_000_896
    assert set(r["timestamps"]) == set(release.TIMESTAMP_FIELDS)
    if not (trt_support.import_tensorrt() and trt_support.cuda_gpu_present()):
        engine = r["artifacts"]["tensorrt"]["engine"]
        assert "needs an NVIDIA GPU" in engine and "from the release folder" in engine and "--from tensorrt " in engine
        assert "--onnx=tensorrt/facephys.onnx" in engine and ".tmp" not in engine
    card = (out / "README.md").read_text()
    assert "| `onnx/facephys.onnx` |" in card and "tflite-int8-dynamic/facephys.tflite" in card
    assert "## Running each artifact" in card and "get_signature_runner('step')" in card


def test_model_card_code_runs(small_release, run_model_card):
    """The card's snippets run as printed (with this release's folders: onnx, tflite, graphopt)."""
    _, out = small_release
    sections, last = run_model_card(out)
    assert sections == ["# onnxruntime", "# LiteRT (state inside the model)", "# or, with graphopt installed, any of them:"]
    assert last == "bvp shape (1, 1)"


def test_precision_variants_claim_and_reach_their_tiers(small_release):
    _, out = small_release
    r = json.loads((out / "release.json").read_text())["artifacts"]
    fp16, int8, fp32 = r["tflite-fp16"], r["tflite-int8-dynamic"], r["tflite"]
    assert fp16["precision"] == "float16 weights" and fp16["tier_claimed"] == "signal"
    assert int8["precision"] == "int8 dynamic-range weights" and int8["tier_claimed"] == "quantised"
    dtypes = json.loads((out / "tflite-int8-dynamic" / "facephys.manifest.json").read_text())["tflite"]["tensor_dtypes"]
    assert dtypes["int8"] > 0 and dtypes["float32"] > 0  # every subgraph counted, the weights among them
    for e in (fp16, int8):
        assert e["tier"] in ("rounding", "signal", "quantised") and e["hr_bpm"] == fp32["hr_bpm"]
    assert fp32["precision"] == "float32" and fp32["tier_claimed"] == "signal"
    # dynamic-range quantisation stores only the large conv/matmul weights as int8, the rest stay float32
    assert int8["size_bytes"] < 0.75 * fp32["size_bytes"] and fp16["size_bytes"] < 0.75 * fp32["size_bytes"]
    assert int8["pearson"] >= 0.999 and fp16["pearson"] >= 0.9999


def test_failing_target_fails_the_release_and_leaves_nothing(facephys, tmp_path, monkeypatch, capsys):
    from graphopt.targets import onnx as onnx_target

    def broken(*a, **k):
        raise RuntimeError("forced failure for the test")
    monkeypatch.setattr(onnx_target, "emit", broken)
    out = tmp_path / "rel"
    assert cli.main(["release", "--model", "facephys", "--out", str(out), "--frames", "60", "--rounds", "1",
                     "--variants", "xla,onnx"]) == 1
    err = capsys.readouterr().err
    assert "onnx: RuntimeError: forced failure for the test" in err and "nothing was written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---- deterministic builds -------------------------------------------------------------------------------

DETERMINISTIC = ["onnx", "xla", "tflite", "torch", "tensorrt"]
# tf: a SavedModel's saved_model.pb and fingerprint.pb differ between saves of the same function
# (TensorFlow names traced functions with process-global counters), so it is not byte-reproducible.
NOT_DETERMINISTIC = {"tf": "SavedModel protos carry per-trace function names from process-global counters"}


def _strip_timings(m: dict) -> dict:
    m = json.loads(json.dumps(m))
    for p in m.get("pipeline", {}).get("passes", []):
        p.pop("time_s", None)  # measured durations, not content
    m.get("pipeline", {}).pop("build_time_s", None)
    m.get("pipeline", {}).pop("trace", None)  # how long the trace took and whether the trace cache held it
    for key in ("rtx_build_s",):
        m.get("tensorrt", {}).get("check", {}).pop(key, None)
    return m


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_builds_identical(model: str, target: str, tmp_path):
    outs = []
    for i in range(2):
        try:
            build(model, target, tmp_path / f"b{i}", verify=False, log=lambda m: None)
        except EngineNeedsGpu:
            pass
        outs.append(tmp_path / f"b{i}")
    a, b = _files(outs[0]), _files(outs[1])
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".manifest.json"):
            assert _strip_timings(json.loads(a[name])) == _strip_timings(json.loads(b[name])), name
        else:
            assert a[name] == b[name], f"{model} {target}: {name} differs between two builds"


@pytest.mark.parametrize("target", DETERMINISTIC)
def test_builds_are_byte_identical(facephys, tmp_path, target):
    _assert_builds_identical("facephys", target, tmp_path)


@pytest.mark.parametrize("target", ["onnx", "xla", "tflite"])
def test_physnet_builds_are_byte_identical(tmp_path, target):
    """The chunk model too (its pools, 3-D convs and lowerings are emitted deterministically)."""
    _assert_builds_identical("physnet", target, tmp_path)


@pytest.mark.parametrize("target", sorted(NOT_DETERMINISTIC))
def test_non_deterministic_targets_are_known(facephys, tmp_path, target):
    """Documents, and checks, that these targets differ only where NOT_DETERMINISTIC says."""
    for i in range(2):
        build("facephys", target, tmp_path / f"b{i}", verify=False, log=lambda m: None)
    a, b = _files(tmp_path / "b0"), _files(tmp_path / "b1")
    differing = sorted(n for n in a if a[n] != b.get(n) and not n.endswith(".manifest.json"))
    assert differing and all(n.endswith(".pb") for n in differing), differing
    np.testing.assert_array_equal(*[np.load(tmp_path / f"b{i}" / "facephys.state.npz")["state_in_0"] for i in range(2)])


def test_model_card_marks_an_artifact_below_its_claim(small_release):
    """release --tier signal accepts an artifact below its build's claim; the card says which and why."""
    _, out = small_release
    r = json.loads((out / "release.json").read_text())
    assert r["tier_required"] is None and "[*]" not in release.model_card(r)
    r["tier_required"] = "signal"
    r["artifacts"]["onnx"].update(tier="signal", tier_claimed="rounding", tier_required="signal")
    card = release.model_card(r)
    assert "| `onnx/facephys.onnx` | onnxruntime (CPU EP) | float32 | signal (claims rounding) [*] |" in card
    assert "[*] reaches a looser tier than its build's passes claim (the release accepted down to `--tier signal`)" in card


def test_release_holds_no_machine_path_and_a_card_people_expect(small_release):
    """No absolute path of this machine anywhere in the release (text or binary files); the card has
    Hugging Face-style YAML metadata, the license from the model's package, the intended use, and its
    pictures exist and are referenced."""
    import sys
    from pathlib import Path

    import graphopt
    _, out = small_release
    machine = {str(out.parent).encode(), sys.prefix.encode(), str(Path(graphopt.__file__).resolve().parents[1]).encode()}
    for f in out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not [m for m in machine if m in data], f"{f.relative_to(out)} holds a machine path"
    card = (out / "README.md").read_text()
    head = card.split("---\n")[1]
    assert 'license: "mit"' in head and "library_name: graphopt" in head and '- "onnx"' in head
    assert 'model_source: "open-rppg==0.1.1"' in head
    assert "## Intended use and limitations" in card and "**synthetic** face clip" in card
    assert "under its license: **MIT**" in card
    r = json.loads((out / "release.json").read_text())
    pics = r["pictures"]
    for file in [pics["fps"], pics["spectrum"], *pics["waveforms"].values()]:
        assert (out / file).is_file() and (out / file).read_text().startswith("<svg") and f"]({file})" in card
    assert set(pics["waveforms"]) == {"onnx", "tflite", "tflite-fp16", "tflite-int8-dynamic"}
    onnx = r["artifacts"]["onnx"]
    assert onnx["fps_min"] <= onnx["fps"] <= onnx["fps_max"] and f"| {onnx['fps']:.0f} ({onnx['fps_min']:.0f}-" in card


def test_an_xla_artifact_names_no_path_of_this_machine(tmp_path):
    """jax.export records source locations: they name files by base name only (no builder path)."""
    import sys
    from pathlib import Path

    import jax.numpy as jnp

    import graphopt
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    spec = graphopt.ModelSpec(name="tiny", fn=lambda x: jnp.tanh(x @ w), inputs={"x": np.zeros((2, 4), np.float32)})
    a = build(spec, "xla", tmp_path / "x", frames=32, log=lambda m: None)
    machine = {sys.prefix.encode(), str(Path(graphopt.__file__).resolve().parents[1]).encode(), str(tmp_path).encode()}
    for f in Path(a.path).parent.iterdir():
        data = f.read_bytes()
        assert not [m for m in machine if m in data], f.name
    assert b'loc("' in (Path(a.path).parent / "tiny.stablehlo.mlir").read_bytes()


def test_a_model_too_large_to_hold_every_runtime_is_benchmarked_one_at_a_time(tmp_path, monkeypatch):
    """Above MAX_INTERLEAVED_BYTES of activations a step, the release opens one runtime at a time for the
    benchmark and the pictures (PhysMamba's interleaved benchmark took ~17 GB); every row is still there."""
    import jax.numpy as jnp

    import graphopt
    monkeypatch.setattr(release, "MAX_INTERLEAVED_BYTES", 0)
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    spec = graphopt.ModelSpec(name="tiny", fn=lambda x: jnp.tanh(x @ w), inputs={"x": np.zeros((2, 4), np.float32)})
    lines = []
    out = release.run(spec, tmp_path / "rel", variants=["onnx", "tflite"], frames=32, rounds=1, steps_per_round=5,
                      log=lines.append)
    assert any("one runtime at a time" in m for m in lines)
    r = json.loads((out / "release.json").read_text())
    assert {n for n, e in r["artifacts"].items() if e.get("fps", 0) > 0} == {"onnx", "tflite", "tiny JAX JIT (reference)"}
    assert set(r["pictures"]["waveforms"]) == {"onnx", "tflite"}
    assert r["benchmark"] == "one runtime at a time" and "rounds run one runtime at a time" in (out / "README.md").read_text()
