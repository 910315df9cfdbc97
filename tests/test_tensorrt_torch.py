"""Target tensorrt (TensorRT-legal ONNX proved by TensorRT-RTX's parser and builder, no-GPU build
path, inspect --check tensorrt) and targets torch / torch-compile (rounding tier over 600 frames).
GPU tests exist and skip, with the reason, where no CUDA GPU and datacenter TensorRT are present."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import artifact as art
from graphopt import cli
from graphopt.builder import EngineNeedsGpu, build
from graphopt.ir import Graph, TensorType
from graphopt.targets import tensorrt as trt_target
from graphopt.targets import trt_support

HAS_RTX = trt_support.import_tensorrt_rtx() is not None
HAS_GPU = trt_support.import_tensorrt() is not None and trt_support.cuda_gpu_present()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs datacenter TensorRT (pip install tensorrt) and an NVIDIA "
                                                   "GPU; this machine has neither")


@pytest.fixture(scope="module")
def trt_artifact(tmp_path_factory, facephys):
    """FacePhys for tensorrt with the exact pipeline. Without a GPU the build writes the legal ONNX,
    verifies it in onnxruntime and then reports that the engine needs a GPU."""
    out = tmp_path_factory.mktemp("trt") / "facephys-tensorrt"
    try:
        a = build("facephys", "tensorrt", out, exact=True, log=lambda m: None)
        return a.manifest, out, None
    except EngineNeedsGpu as e:
        manifest, base = art.read_manifest(out)
        return manifest, out, str(e)


def test_tensorrt_build_writes_complete_legal_onnx(trt_artifact):
    manifest, out, needs_gpu_msg = trt_artifact
    assert sorted(p.name for p in out.iterdir()) == \
        [".graphopt-files", "facephys.manifest.json", "facephys.onnx", "facephys.state.npz"] \
        + (["facephys.engine"] if HAS_GPU else [])
    onnx.checker.check_model(str(out / "facephys.onnx"))
    assert manifest["target"] == "tensorrt" and manifest["sha256"] == art.sha256(out / "facephys.onnx")
    eq = manifest["equivalence"]
    assert eq["verified"] and eq["tier_claimed"] == eq["tier"] == "rounding", eq
    if not HAS_GPU:
        assert eq["verified_with"] == "OnnxStream"  # the legal ONNX in onnxruntime
        assert manifest["tensorrt"]["engine"] is None
        assert "NVIDIA GPU" in needs_gpu_msg and f"graphopt build --target tensorrt --from {out}" in needs_gpu_msg
        assert "trtexec --onnx=" in needs_gpu_msg


@pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX (tensorrt-rtx-cu12) is not installed")
def test_tensorrt_rtx_parses_and_builds_the_legal_onnx(trt_artifact):
    check = trt_artifact[0]["tensorrt"]["check"]
    assert check["checker"].startswith("TensorRT-RTX") and check["ok"]
    assert check["unsupported"] == [] and check["ops_not_supported_by_parser"] == []
    assert check["rtx_engine_built"] and check["rtx_engine_bytes"] > 1_000_000


def test_no_gpu_cli_exit_status_and_message(facephys, tmp_path, capsys):
    if HAS_GPU:
        pytest.skip("this machine has a GPU: the engine is built and the exit status is 0")
    out = tmp_path / "trt"
    assert cli.main(["build", "--model", "facephys", "--target", "tensorrt", "--out", str(out), "--no-verify"]) == 3
    err = capsys.readouterr().err
    assert "needs datacenter TensorRT on an NVIDIA GPU" in err and "--from" in err and "trtexec" in err
    assert (out / "facephys.onnx").is_file() and (out / "facephys.manifest.json").is_file()
    assert cli.main(["build", "--target", "tensorrt", "--from", str(out)]) == 3
    assert "pip install tensorrt" in capsys.readouterr().err
    assert not (out / "facephys.engine").exists()


def test_from_needs_a_tensorrt_artifact(tmp_path, capsys, onnx_unfused):
    assert cli.main(["build", "--target", "onnx", "--from", str(onnx_unfused.path.parent)]) == 2
    assert "--target onnx has nothing to finish" in capsys.readouterr().err
    with pytest.raises(art.ArtifactError, match="is a onnx artifact, not a tensorrt one"):
        trt_target.build_from(onnx_unfused.path.parent)


@pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX (tensorrt-rtx-cu12) is not installed")
def test_check_unfused_onnx_with_the_parser(onnx_unfused, capsys):
    code = cli.main(["inspect", "--check", "tensorrt", str(onnx_unfused.path)])
    out = capsys.readouterr().out
    assert "TensorRT-RTX" in out
    # the unfused FacePhys parses too; any problem would be listed node by node
    assert code == 0 and "OK for TensorRT" in out and "unsupported" not in out


def _model_with(op_type: str, domain: str = "") -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu_ok"),
             helper.make_node(op_type, ["r"], ["y"], name="the_bad_node", domain=domain)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=imports, ir_version=10)


@pytest.mark.parametrize("op, domain", [("MyPluginOp", "com.example"), ("Unique", "")])
def test_check_names_the_unsupported_node(tmp_path, capsys, op, domain):
    p = tmp_path / "bad.onnx"
    onnx.save_model(_model_with(op, domain), str(p))
    assert cli.main(["inspect", "--check", "tensorrt", str(p)]) == 1
    out = capsys.readouterr().out
    assert "NOT accepted by TensorRT" in out and "the_bad_node" in out
    assert "relu_ok" not in out


def test_check_without_tensorrt_rtx_uses_the_table(tmp_path, capsys, monkeypatch, onnx_unfused):
    monkeypatch.setattr(trt_support, "import_tensorrt_rtx", lambda: None)
    assert cli.main(["inspect", "--check", "tensorrt", str(onnx_unfused.path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checker"].startswith("TensorRT 10 ONNX operator support table") and result["ok"]
    assert "Conv" in result["restrictions"]
    p = tmp_path / "bad.onnx"
    onnx.save_model(_model_with("StringNormalizer"), str(p))
    assert cli.main(["inspect", "--check", "tensorrt", str(p)]) == 1
    out = capsys.readouterr().out
    assert "the_bad_node (StringNormalizer)" in out and "operator support table" in out


def test_check_rejects_a_corrupt_onnx(tmp_path, capsys):
    p = tmp_path / "corrupt.onnx"
    p.write_bytes(b"\x00\x01 not a model")
    assert cli.main(["inspect", "--check", "tensorrt", str(p)]) == 2
    assert "corrupt.onnx" in capsys.readouterr().err


def test_broken_tensorrt_install_is_treated_as_absent(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "tensorrt":
            raise ImportError("libnvonnxparser.so.11: cannot open shared object file")
        return real(name, *a, **k)
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)
    assert trt_support.import_tensorrt() is None


def test_legalize_names_illegal_ops_and_dtypes():
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    g.outputs, g.output_names = [g.op("cumsum", x, axis=0, reverse=False)], ["y"]
    trt_target.legalize(g)  # legal
    idx = g.add_param(np.array([0, 2], np.int64))
    t = g.op("take", x, idx, axis=0)
    g.outputs = [t]
    trt_target.legalize(g)
    assert idx.dtype == "int32" and idx.const.dtype == np.int32  # indices narrowed to int32
    h = Graph()
    y = h.add_input("y", TensorType((3,), "float64"))
    h.outputs, h.output_names = [h.op("exp", y)], ["z"]
    with pytest.raises(art.ArtifactError, match="float64; TensorRT computes in"):
        trt_target.legalize(h)


def test_legalize_runs_a_1d_conv_as_a_2d_conv_over_a_height_of_one():
    """TensorRT has 2-D and 3-D convolutions: a 1-D conv (strided, dilated, padded, grouped, with bias)
    becomes reshape -> 2-D conv -> reshape, computing the same values."""
    from graphopt.ir.interpreter import run_graph
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType((1, 4, 19), "float32"))
    w = g.add_param(rng.standard_normal((6, 2, 3)).astype(np.float32))
    b = g.add_param(rng.standard_normal(6).astype(np.float32))
    y = g.op("conv", x, w, b, strides=(2,), pads=((2, 1),), dilations=(2,), groups=2)
    g.outputs, g.output_names = [g.op("tanh", y)], ["y"]
    xs = rng.standard_normal((1, 4, 19)).astype(np.float32)
    want = run_graph(g, [xs])[0][0]
    trt_target.legalize(g)
    convs = [n for n in g.nodes if n.op == "conv"]
    assert len(convs) == 1 and len(convs[0].inputs[0].shape) == 4 and convs[0].attrs["strides"] == (1, 2)
    np.testing.assert_allclose(run_graph(g, [xs])[0][0], want, rtol=1e-6, atol=1e-6)


# ---- GPU (run where a CUDA GPU and datacenter TensorRT exist) -------------------------------------


@needs_gpu
def test_engine_equivalence_and_fp16(trt_artifact, tmp_path):
    from graphopt import equivalence
    manifest, out, _ = trt_artifact
    stream = art.load(out)
    assert type(stream).__name__ == "TensorRTStream"
    m = stream.manifest
    spec = equivalence.reference_model("facephys", m["source"])
    r = equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec, equivalence.Clip(frames=600))
    assert r["tier"] in ("rounding", "signal") and r["pearson"] >= 0.9999, r
    a16 = trt_target.build_from(out, fp16=True)
    s16 = art.load(a16.path)
    r16 = equivalence.check(equivalence.stream_step(s16, spec), s16.state, spec, equivalence.Clip(frames=600))
    assert r16["pearson"] >= 0.9999 and r16["hr_bpm"] == r16["hr_ref_bpm"], r16


@needs_gpu
def test_engine_fps(trt_artifact):
    from graphopt.benchmark import measure
    from graphopt.equivalence import Clip
    stream = art.load(trt_artifact[1])
    rows = measure({"tensorrt": stream.step}, Clip(frames=64).array(stream.frame_shape), rounds=3)
    print(f"\nTensorRT engine: {rows[0].fps:.0f} FPS (p50 {rows[0].p50_ms:.3f} ms)")
    assert rows[0].fps > 0


# ---- torch and torch-compile ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_artifacts(tmp_path_factory, facephys):
    out = tmp_path_factory.mktemp("torch")
    return {t: build("facephys", t, out / t, exact=True, log=lambda m: None) for t in ("torch", "torch-compile")}


@pytest.mark.parametrize("target", ["torch", "torch-compile"])
def test_torch_targets_rounding_tier(torch_artifacts, target):
    a = torch_artifacts[target]
    m = a.manifest
    assert m["target"] == target and a.path.suffix == ".pt2"
    assert m["torch"]["compiled"] is (target == "torch-compile")
    eq = m["equivalence"]
    assert eq["verified"] and eq["clip"]["frames"] == 600
    assert eq["tier_claimed"] == eq["tier"] == "rounding" and eq["hr_bpm"] == eq["hr_ref_bpm"], eq


def test_torch_stream_keeps_torch_tensors(torch_artifacts):
    import torch
    stream = art.load(torch_artifacts["torch"].path)
    init = stream.state
    y = stream.step(np.full(stream.frame_shape, 0.5, np.float32))
    assert isinstance(y, np.ndarray) and all(isinstance(s, torch.Tensor) for s in stream._state)
    stream.reset()
    assert all(np.array_equal(a, b) for a, b in zip(init, stream.state))
