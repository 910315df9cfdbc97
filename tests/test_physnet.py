"""PhysNet (open-rppg 0.1.1), graphopt's second model: a chunk model with no state and no dt.

Loading (dtype policy, weights errors), the traced graph against the authors' model, the fusion
passes on it, the chunk Stream API, and a release of every CPU target verified at its tier.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from graphopt import artifact as art
from graphopt import cli, models, passes
from graphopt.ir import Interpreter, verify
from graphopt.stream import FrameError

CHUNK = 128


@pytest.fixture(scope="session")
def physnet():
    return models.load("physnet")


@pytest.fixture(scope="session")
def physnet_graph(physnet):
    return physnet.trace()


@pytest.fixture(scope="module")
def chunk():
    from graphopt.equivalence import Clip
    return Clip(frames=CHUNK).array((1, CHUNK, 32, 32, 3))[0]


def test_loads_in_float32_and_leaves_the_global_dtype_policy_alone(physnet):
    import keras
    # the authors' module sets mixed_float16 globally when imported; the adapter must undo that
    assert keras.config.dtype_policy().name == "float32"
    assert physnet.source["precision"] == "float32" and physnet.source["version"] == "0.1.1"
    assert physnet.frame_shape == (1, CHUNK, 32, 32, 3) and physnet.frames_per_step == CHUNK
    assert physnet.initial_state == [] and physnet.takes_dt is False
    assert len(physnet.source["weights_sha256"]) == 64


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
    with pytest.raises(models.ModelSourceError, match="does not exist; pass --weights"):
        models.adapter("physnet").load(weights=str(tmp_path / "nope.weights.h5"))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(models.ModelSourceError, match="not an HDF5 file"):
        models.adapter("physnet").load(weights=str(bad))
    from graphopt.models.source import locate_package_file
    other = locate_package_file("open-rppg", "0.1.1", "rppg/weights/FacePhys.rlap.weights.h5")
    with pytest.raises(models.ModelSourceError, match="could not be loaded as PhysNet weights .*pass --weights"):
        models.adapter("physnet").load(weights=other)  # valid HDF5, another model's weights


def test_trace_is_a_chunk_graph_matching_the_authors_model(physnet, physnet_graph, chunk):
    g = physnet_graph
    verify(g)
    assert [v.name for v in g.inputs] == ["frame"] and g.state == [] and g.output_names == ["bvp"]
    assert g.outputs[0].shape == (1, CHUNK) and g.meta["frames_per_step"] == CHUNK
    hist = g.op_histogram()
    # 3-D convs (two of them transposed: input dilation), max/avg pools
    assert hist["conv"] == 12 and hist["pool"] == 5 and hist["reverse"] == 6
    assert sum(1 for n in g.nodes if n.op == "conv" and n.attrs["lhs_dilations"]) == 2
    assert 6.5e9 < g.flops() < 7.5e9
    (ref,), _ = physnet.reference()(chunk)
    ref = np.asarray(ref, np.float64)
    (out,), _ = Interpreter(g, "float64").run([chunk.astype(np.float64)], [])
    assert out.shape == (1, CHUNK)
    assert np.max(np.abs(out - ref)) < 1e-4 * np.std(ref)


def test_fusion_folds_batch_norm_and_the_layout_transposes(physnet, chunk):
    g = physnet.trace()  # a fresh graph: the pipeline rewrites it in place
    before = len(g.nodes)
    g, report = passes.run_pipeline(g, passes.pipeline_for("onnx") + passes.lowerings_for("onnx"))
    hist = g.op_histogram()
    assert report["exact"]  # PhysNet has no approximated math: the default pipeline is exact
    assert len(g.nodes) * 3 < before, hist
    # batch norm folded into the convs: no per-channel mul/add is left after any conv
    for node in g.nodes:
        if node.op in ("mul", "add"):
            assert not any(x.producer is not None and x.producer.op == "conv" for x in node.inputs), node
    # the channels-last pools moved between the channels-first convs: one transpose (the input) remains
    assert hist.get("transpose", 0) <= 1 and hist["pool"] == 5
    assert [n.attrs["mode"] for n in g.nodes if n.op == "pool"].count("avg") == 1
    assert all(not n.attrs["lhs_dilations"] for n in g.nodes if n.op == "conv")  # lowered for onnx
    (out,), _ = Interpreter(g, "float64").run([chunk.astype(np.float64)], [])
    (ref,), _ = Interpreter(physnet.trace(), "float64").run([chunk.astype(np.float64)], [])
    # folded kernels (W * scale) are float32 constants, so even in float64 the graphs differ by float32 rounding
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.std(ref))


@pytest.fixture(scope="module")
def physnet_onnx(tmp_path_factory, physnet):
    from graphopt.builder import build
    return build("physnet", "onnx", tmp_path_factory.mktemp("pn") / "onnx", frames=2 * CHUNK, log=lambda m: None)


def test_onnx_build_is_verified_at_the_rounding_tier(physnet_onnx):
    m = physnet_onnx.manifest
    assert m["frames_per_step"] == CHUNK and m["state"] == []
    assert [i["role"] for i in m["inputs"]] == ["frame"]
    eq = m["equivalence"]
    assert eq["verified"] and eq["tier_claimed"] == "rounding" and eq["tier"] == "rounding"
    assert eq["nrmse_over_floor"] <= 4 and eq["hr_bpm"] == eq["hr_ref_bpm"]


def test_chunk_stream_takes_a_chunk_and_returns_a_chunk(physnet_onnx, chunk):
    stream = art.load(physnet_onnx.path)
    assert stream.kind == "chunk" and stream.takes_dt is False
    out = stream.step(chunk)
    assert np.asarray(out).shape == (1, CHUNK)
    np.testing.assert_array_equal(stream.step(chunk[0]), out)  # the batch axis may be left out
    with pytest.raises(FrameError, match=r"chunk of 128 frames has shape \(1, 32, 32, 3\).*\(1, 128, 32, 32, 3\)"):
        stream.step(chunk[0, :1])
    with pytest.raises(FrameError, match="takes no dt"):
        stream.step(chunk, dt=1 / 30)
    nan = chunk.copy()
    nan[0, 5, 3, 3, 1] = np.nan
    with pytest.raises(FrameError, match="1 NaN/Inf"):
        stream.step(nan)
    clip = np.concatenate([chunk[0], chunk[0]])  # 256 frames
    y = stream.run(clip)
    assert y.shape == (2 * CHUNK,)
    np.testing.assert_allclose(y[:CHUNK], np.asarray(out).reshape(-1), rtol=1e-6, atol=1e-6)
    with pytest.raises(FrameError, match="does not split into chunks of 128 frames"):
        stream.run(clip[:200])


@pytest.fixture(scope="module")
def physnet_release(tmp_path_factory, physnet):
    out = tmp_path_factory.mktemp("rel") / "physnet-test"
    # the native CPU runtimes (iree, the web targets and the sensitivity-chosen int8 build have tests of their
    # own: tests/test_iree_target.py, test_web_targets.py, test_release_web.py, test_quantize.py)
    code = cli.main(["release", "--model", "physnet", "--out", str(out), "--frames", str(2 * CHUNK),
                     "--rounds", "1", "--variants", "onnx,xla,tflite,tflite-fp16,tflite-int8-dynamic,tf,torch,"
                     "torch-compile,tensorrt"])
    return code, out


def test_release_builds_every_cpu_target_at_its_tier(physnet_release):
    code, out = physnet_release
    assert code == 0
    r = json.loads((out / "release.json").read_text())
    arts = r["artifacts"]
    # no state: tflite has no io/variables distinction, so there is no tflite-io variant
    assert set(arts) == {"onnx", "xla", "tflite", "tflite-fp16", "tflite-int8-dynamic", "tf", "torch",
                         "torch-compile", "tensorrt", "open-rppg JAX JIT (reference)"}
    for name in ("onnx", "xla", "tflite", "tf", "torch", "torch-compile", "tensorrt"):
        e = arts[name]
        assert e["precision"] == "float32" and e["tier_claimed"] == "rounding" and e["tier"] == "rounding", (name, e)
        assert e["nrmse_over_floor"] <= 4 and (out / e["file"]).exists()
    assert arts["tflite-fp16"]["tier"] in ("rounding", "signal")
    assert arts["tflite-fp16"]["size_bytes"] < 0.6 * arts["tflite"]["size_bytes"]
    # the converter's dynamic-range quantisation skips CONV_3D: the manifest must say what was stored
    for variant, asked in (("tflite-int8-dynamic", "int8-dynamic"),):
        int8 = json.loads((out / variant / "physnet.manifest.json").read_text())
        if int8["tflite"]["tensor_dtypes"].get("int8"):
            assert int8["precision"].startswith("int8") and arts[variant]["tier"] is not None
        else:
            assert int8["precision"] == f"float32 ({asked} asked for; the converter stored no int8 weights)"
            assert arts[variant]["tier_claimed"] == "rounding" and arts[variant]["tier"] == "rounding"
    assert r["frames_per_step"] == CHUNK and r["state_tensors"] == 0
    assert 4e7 < r["flops_per_frame"] < 7e7  # ~7 GFLOP per 128-frame chunk
    for name, e in arts.items():
        if "fps" in e:
            assert e["fps"] > 0 and e["p50_ms"] > 0
    card = (out / "README.md").read_text()
    assert "a chunk of 128 RGB face crops" in card and "no state" in card
    assert "'dt'" not in card and "state.npz" not in card and "| `onnx/physnet.onnx` |" in card


def test_release_model_card_code_runs_on_every_runtime(physnet_release, run_model_card):
    _, out = physnet_release
    sections, last = run_model_card(out)
    assert sections == ["# onnxruntime", "# XLA (jax.export)", "# LiteRT", "# PyTorch",  # registry order
                        "# or, with graphopt installed, any of them:"]
    assert last == "bvp shape (1, 128)"


def test_build_explains_why_a_rule_did_not_fire(tmp_path, capsys):
    """--explain RULE: after the pipeline, each candidate node's reason, counted (PhysNet has no conv
    that reads a conv: its convs read pools, activations and reshapes)."""
    from graphopt import cli
    assert cli.main(["build", "--model", "physnet", "--target", "onnx", "--out", str(tmp_path / "b"),
                     "--no-verify", "--explain", "conv-of-conv"]) == 0
    err = capsys.readouterr().err.splitlines()
    at = err.index("      rule conv-of-conv fired 0 time(s) in the pipeline")
    head = err[at + 1].strip()
    assert head.startswith("rule conv-of-conv: ") and head.endswith(" candidate node(s)")
    counts = [int(line.split(" x ")[0]) for line in err[at + 2:] if " x conv input 0 is " in line]
    assert counts and sum(counts) == int(head.split(": ")[1].split()[0])
