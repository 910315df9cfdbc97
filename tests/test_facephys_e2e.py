"""FacePhys end to end: authors' model -> IR -> interpreter / ONNX -> onnxruntime, verified."""
from __future__ import annotations

import importlib.metadata
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphopt import artifact as art
from graphopt import cli, equivalence, metrics
from graphopt.builder import BuildError
from graphopt.ir import Interpreter, verify
from graphopt.stream import FrameError

pytestmark = pytest.mark.slow
CLIP = equivalence.Clip(frames=600, hr_bpm=72.0)


def interpreter_step(graph, precision):
    """The IR interpreter as an equivalence StepFn (feeds by input name)."""
    it = Interpreter(graph, precision)
    names = [v.name for v in graph.inputs]

    def step(feeds, state):
        return it.run([feeds[n] for n in names], state)
    return step


def test_trace_structure(facephys, facephys_graph):
    g = facephys_graph
    verify(g)
    assert [v.name for v in g.inputs] == ["frame", "dt"]
    assert g.inputs[0].shape == (1, 1, 36, 36, 3)
    assert len(g.state) == 46
    assert g.state_bytes() == sum(s.nbytes for s in facephys.initial_state) == 500224 * 4
    assert 2000 < len(g.nodes) < 3500
    assert 140e6 < g.flops() < 160e6  # ~147 MFLOP per frame, mostly 3x3 convs
    assert g.op_histogram()["conv"] == 30


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_interpreter_matches_reference_fp32(facephys, facephys_graph, precision):
    result = equivalence.check(interpreter_step(facephys_graph, precision), list(facephys.initial_state),
                               facephys, CLIP)
    assert result["nrmse_over_floor"] <= metrics.ROUNDING_FLOOR_FACTOR, result
    assert result["tier"] == "rounding"
    assert result["same_hr"]


def test_interpreter_matches_published_mixed_precision():
    from graphopt import models
    published = models.load("facephys", None, True)
    assert published.source["precision"] == "mixed_float16"
    assert published.source["mixed_float16_layers"] == 16
    graph = published.trace()
    assert graph.op_histogram()["cast"] > 76  # the float16 casts around the 16 convs are traced
    assert any(n.op == "cast" and n.attrs["to"] == "float16" for n in graph.nodes)
    result = equivalence.check(interpreter_step(graph, "float32"), list(published.initial_state), published, CLIP)
    assert result["tier"] == "rounding", result
    # the published step differs from the canonical fp32 one by more than the fp32 noise floor
    fp32 = models.load("facephys")
    (ref32,), _ = equivalence.reference_run(fp32, CLIP)
    (ref16,), _ = equivalence.reference_run(published, CLIP)
    assert np.sqrt(np.mean((ref16 - ref32) ** 2)) / np.std(ref32) > \
        4 * equivalence.noise_floor(fp32, CLIP)[0]["nrmse"]


def test_onnx_artifact_rounding_tier_and_hr(onnx_unfused, facephys):
    m = onnx_unfused.manifest
    eq = m["equivalence"]
    assert eq["verified"] and eq["tier_claimed"] == "rounding" and eq["tier"] == "rounding"
    assert eq["nrmse_over_floor"] <= 4.0
    ref_hr = eq["hr_ref_bpm"]
    assert eq["hr_bpm"] == ref_hr
    assert abs(ref_hr - 72.0) <= 5.0
    # and independently of the build: a fresh 1-thread Stream over the same clip
    stream = art.load(onnx_unfused.path, threads=1)
    (out,), _ = equivalence.run_steps(equivalence.stream_step(stream, facephys), CLIP.feeds(facephys),
                                      stream.state)
    assert abs(metrics.estimate_hr(out) - 72.0) <= 5.0


def test_manifest_describes_artifact(onnx_unfused, facephys_graph):
    m = onnx_unfused.manifest
    base = onnx_unfused.path.parent
    assert m["target"] == "onnx" and m["precision"] == "float32"
    assert m["sha256"] == art.sha256(onnx_unfused.path)
    assert [i["name"] for i in m["inputs"]] == ["frame", "dt"]
    assert [o["name"] for o in m["outputs"]] == ["bvp"]
    assert [s["input"] for s in m["state"]] == [f"state_in_{i}" for i in range(46)]
    assert [s["output"] for s in m["state"]] == [f"state_out_{i}" for i in range(46)]
    for s, pair in zip(m["state"], facephys_graph.state):
        assert tuple(s["shape"]) == pair.input.shape
    assert {"onnx", "onnxruntime", "numpy", "python", "graphopt"} <= set(m["tools"])
    assert m["source"]["package"] == "open-rppg" and m["source"]["version"] == "0.1.1"
    # a tool that knows nothing of graphopt can run the artifact from the manifest alone
    import onnxruntime as ort
    sess = ort.InferenceSession(str(base / m["file"]), providers=["CPUExecutionProvider"])
    init = np.load(base / m["initial_state"]["file"])
    feed = {"frame": np.full(m["inputs"][0]["shape"], 0.5, np.float32), "dt": np.array(1 / 30, np.float32)}
    feed.update({s["input"]: init[s["input"]] for s in m["state"]})
    outs = sess.run([o["name"] for o in m["outputs"]] + [s["output"] for s in m["state"]], feed)
    stream = art.load(onnx_unfused.path)
    np.testing.assert_array_equal(stream.step(np.full((36, 36, 3), 0.5, np.float32)), outs[0])
    assert len(outs) == 47


def _perturbed_copy(artifact, tmp_path):
    dst = tmp_path / "perturbed"
    shutil.copytree(artifact.path.parent, dst)
    model_file = dst / artifact.path.name
    model = onnx.load(str(model_file))
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:  # every weight matrix / kernel moves by ~0.1% of itself
        arr = numpy_helper.to_array(t)
        if arr.dtype == np.float32 and arr.size >= 1000:
            arr = arr * (1 + np.float32(1e-3) * rng.standard_normal(arr.shape).astype(np.float32))
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    onnx.save(model, str(model_file))
    # a consistent artifact whose weights are wrong (not a tampered file: that fails the sha256 check at load)
    manifest_file = dst / artifact.manifest_path.name
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = art.sha256(model_file)
    manifest_file.write_text(json.dumps(manifest))
    return dst


def test_verify_cli_passes_and_fails_on_perturbed_weights(onnx_unfused, tmp_path, capsys):
    assert cli.main(["verify", str(onnx_unfused.path.parent), "--frames", "600"]) == 0
    out = capsys.readouterr().out
    assert "tier reached      rounding" in out
    bad = _perturbed_copy(onnx_unfused, tmp_path)
    assert cli.main(["verify", str(bad), "--frames", "600"]) == 1
    err = capsys.readouterr().err
    assert "below the rounding tier its manifest claims" in err


def test_inspect(onnx_unfused, capsys):
    assert cli.main(["inspect", str(onnx_unfused.path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    model = onnx.load(str(onnx_unfused.path))
    assert s["nodes"] == len(model.graph.node)
    assert s["ops"]["Conv"] == 30
    assert s["state_bytes"] == 500224 * 4 and s["state_tensors"] == 46
    assert 140e6 < s["flops_per_step"] < 160e6
    assert s["params"] > 100 and s["param_bytes"] > 1e6
    assert cli.main(["inspect", str(onnx_unfused.path)]) == 0
    assert "FLOPs/step" in capsys.readouterr().out


def test_stream_rejects_bad_frames(onnx_unfused):
    stream = art.load(onnx_unfused.path)
    before = stream.state
    with pytest.raises(FrameError, match=r"shape \(36, 36\).*takes \(1, 1, 36, 36, 3\)"):
        stream.step(np.zeros((36, 36), np.float32))
    frame = np.full((36, 36, 3), 0.5, np.float32)
    frame[3, 4, 1] = np.nan
    with pytest.raises(FrameError, match="1 NaN/Inf values; the state was not updated"):
        stream.step(frame)
    with pytest.raises(FrameError, match="uint8.*frame / 255"):
        stream.step(np.zeros((36, 36, 3), np.uint8))
    with pytest.raises(FrameError, match="dt must be a positive"):
        stream.step(np.zeros((36, 36, 3), np.float32), dt=0.0)
    for a, b in zip(before, stream.state):
        np.testing.assert_array_equal(a, b)
    y1 = stream.step(np.full((36, 36, 3), 0.4, np.float32))
    stream.reset()
    y2 = stream.step(np.full((36, 36, 3), 0.4, np.float32))
    np.testing.assert_array_equal(y1, y2)


def test_build_fails_cleanly_without_open_rppg(monkeypatch, tmp_path, capsys):
    real = importlib.metadata.distribution

    def missing(name):
        if name == "open-rppg":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    out = tmp_path / "out"
    # weights given explicitly (a file, so that build's own check passes) so the per-process model cache cannot answer
    (tmp_path / "w.h5").write_bytes(b"\x89HDF\r\n")
    code = cli.main(["build", "--model", "facephys", "--target", "onnx", "--out", str(out),
                     "--weights", str(tmp_path / "w.h5")])
    assert code == 2
    assert "open-rppg is not installed; install it with `pip install --no-deps open-rppg==0.1.1`" \
        in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["w.h5"]


def test_build_fails_cleanly_with_corrupt_weights(tmp_path, capsys):
    weights = tmp_path / "corrupt.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    out = tmp_path / "out"
    code = cli.main(["build", "--model", "facephys", "--target", "onnx", "--out", str(out),
                     "--weights", str(weights)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"weights file {weights} is not an HDF5 file" in err and "--weights PATH" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.weights.h5"]


def test_build_fails_cleanly_with_wrong_hdf5_weights(tmp_path, capsys):
    import h5py
    weights = tmp_path / "other.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    out = tmp_path / "out"
    code = cli.main(["build", "--model", "facephys", "--target", "onnx", "--out", str(out),
                     "--weights", str(weights)])
    assert code == 2
    assert "could not be loaded as FacePhys weights" in capsys.readouterr().err
    assert not out.exists()


def test_load_errors(tmp_path, onnx_unfused):
    with pytest.raises(art.ArtifactError, match="does not exist"):
        art.load(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(onnx_unfused.path.parent, broken)
    (broken / onnx_unfused.path.name).write_bytes(b"not an onnx model")
    with pytest.raises(art.ArtifactError, match="does not match the sha256 in its manifest"):
        art.load(broken)
    assert cli.main(["inspect", str(broken)]) == 2
    manifest_file = broken / onnx_unfused.manifest_path.name  # the hash made to match: the content is checked
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = art.sha256(broken / onnx_unfused.path.name)
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(art.ArtifactError, match="not a readable ONNX model"):
        art.load(broken)


def test_default_pipeline_raises_math_and_reaches_signal_tier(onnx_fused, onnx_unfused):
    fused, unfused = onnx_fused.manifest, onnx_unfused.manifest
    assert fused["pipeline"]["name"] == "default" and unfused["pipeline"]["name"] == "none"
    steps = [p["name"] for p in fused["pipeline"]["passes"]]
    assert steps[0] == "(traced)" and {"simplify", "cse", "raise-math", "algebra", "layout"} <= set(steps)
    assert fused["pipeline"]["passes"][0]["nodes"] == unfused["graph"]["nodes"]
    assert fused["graph"]["nodes"] == fused["pipeline"]["passes"][-1]["nodes"]
    # measured 2026-12-03: 2575 -> 702 IR nodes, 2643 -> 641 ONNX nodes, 4.1x (the goal of 6x is not reached)
    assert unfused["onnx"]["nodes"] / fused["onnx"]["nodes"] > 4.0
    assert fused["onnx"]["fused_lowering"] and not unfused["onnx"]["fused_lowering"]
    # the 16 normalisation states are stored channels-first next to the convs; every transpose but the
    # frame's and one in the head cancels
    relaid = [st for st in fused["state"] if st.get("view")]
    assert len(relaid) == 16 and all(len(st["shape"]) == 4 and st["shape"][1] == 32 for st in relaid)
    assert all(st["model_shape"] == [1, 1] + st["shape"][2:] + [32] for st in relaid)
    assert fused["onnx"]["ops"].get("Transpose", 0) <= 2
    stream = art.load(onnx_fused.path)
    assert [s.shape for s in stream.state] == [tuple(st["shape"]) for st in unfused["state"]]
    raised = {r["op"]: r for r in fused["pipeline"]["raise_math"]}
    assert set(raised) == {"exp", "sin", "cos"}
    assert raised["exp"]["count"] == 20 and raised["sin"]["count"] == raised["cos"]["count"] == 10
    assert all(0 < r["max_error"] < 1e-2 for r in raised.values())
    eq = fused["equivalence"]
    assert fused["pipeline"]["exact"] is False and eq["tier_claimed"] == "signal" and eq["tier"] == "signal"
    assert eq["pearson"] >= 0.9999 and eq["hr_bpm"] == eq["hr_ref_bpm"]
    assert eq["nrmse_over_floor"] > 4  # value-changing: above the rounding level, and reported
    assert "Exp" in fused["onnx"]["ops"] and "Round" not in fused["onnx"]["ops"]


def test_exact_pipeline_keeps_rounding_tier(onnx_exact, onnx_unfused):
    m = onnx_exact.manifest
    assert m["pipeline"]["name"] == "default (exact only)" and m["pipeline"]["exact"] is True
    assert "raise-math" not in [p["name"] for p in m["pipeline"]["passes"]]
    assert m["graph"]["nodes"] < onnx_unfused.manifest["graph"]["nodes"]
    eq = m["equivalence"]
    assert eq["tier_claimed"] == eq["tier"] == "rounding" and eq["nrmse_over_floor"] <= 4
    assert eq["hr_bpm"] == eq["hr_ref_bpm"]


def test_fps_specialisation_bakes_dt(facephys, onnx_fused, tmp_path):
    from graphopt.builder import build
    a = build("facephys", "onnx", tmp_path / "fps30", fps=30, log=lambda m: None)
    m = a.manifest
    assert m["fixed_inputs"] == {"dt": pytest.approx(1 / 30)}
    assert m["pipeline"]["passes"][1]["name"] == "specialize-inputs"
    assert m["graph"]["nodes"] < onnx_fused.manifest["graph"]["nodes"]
    assert m["equivalence"]["tier"] == "signal"
    stream = art.load(a.path)
    frame = np.full(stream.frame_shape, 0.5, np.float32)
    stream.step(frame)
    stream.step(frame, dt=1 / 30)
    with pytest.raises(FrameError, match="built for dt = 0.0333333 s"):
        stream.step(frame, dt=1 / 25)
    with pytest.raises(BuildError, match="--fps must be a frame rate from 0.1 to 10000, got 0"):
        build("facephys", "onnx", tmp_path / "bad", fps=0, log=lambda m: None)
    assert not (tmp_path / "bad").exists()


def test_verify_each_pass_names_a_broken_pass(facephys, tmp_path, capsys):
    from graphopt import passes
    from graphopt.builder import build

    def break_adds(graph):  # a wrong "optimisation": add -> sub
        hit = [n for n in graph.nodes if n.op == "add"]
        for n in hit:
            n.op = "sub"
        return bool(hit)
    passes.register(passes.Pass("test-break-adds", passes.in_place(break_adds)))
    try:
        with pytest.raises(BuildError, match="pass test-break-adds changed the graph's outputs"):
            build("facephys", "onnx", tmp_path / "out", pass_names=["simplify", "test-break-adds"],
                  verify_each_pass=True, log=lambda m: None)
    finally:
        passes.PASSES.pop("test-break-adds")
    assert not (tmp_path / "out").exists()
