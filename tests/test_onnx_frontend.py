"""The ONNX frontend's core and `graphopt optimize`: the file read as untrusted input, state pairing,
names and order kept, verification against onnxruntime on the original, and the command lines."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphopt
from graphopt import cli
from graphopt.frontends import onnx as onnx_frontend
from graphopt.frontends.onnx import OnnxImportError, pairing
from graphopt.ir.interpreter import run_graph

F = TensorProto.FLOAT


def save(tmp_path, nodes, inputs, outputs, inits=(), name="m.onnx", opset=17, **kw) -> str:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10, **kw)
    path = tmp_path / name
    onnx.save(m, str(path))
    return str(path)


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def stateful_model(tmp_path, name="m.onnx", state_first=False):
    """y = reshape(relu((x + h) * w)), h' = relu((x + h) * w): a step with its state fed back."""
    w = helper.make_tensor("w", F, [4], [1, -2, 3, -4])
    nodes = [helper.make_node("Add", ["x", "h_in"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "w"], ["b"], name="scale"),
             helper.make_node("Relu", ["b"], ["h_out"], name="relu"),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.INT64, [3], [0, 2, 2])),
             helper.make_node("Reshape", ["h_out", "c"], ["y"], name="final")]
    ins = [vi("x", ["batch", 4]), vi("h_in", [1, 4])]
    outs = [vi("y", ["batch", 2, 2]), vi("h_out", [1, 4])]
    if state_first:
        ins, outs = ins[::-1], outs[::-1]
    m = save(tmp_path, nodes, ins, outs, [w], name=name)
    model = onnx.load(m)
    helper.set_model_props(model, {"author": "someone", "license": "MIT"})
    onnx.save(model, m)
    return m


def test_a_step_model_imports_with_its_state_and_matches_onnxruntime(tmp_path):
    spec = onnx_frontend.load(stateful_model(tmp_path))
    assert spec.pairs == [("h_in", "h_out")] and list(spec.inputs) == ["x"] and spec.outputs == ["y"]
    assert spec.inputs["x"].shape == (1, 4)  # the dynamic batch is fixed to 1
    g = spec.trace()
    ref = spec.reference()
    rng = np.random.default_rng(0)
    state_g = state_r = [np.zeros((1, 4), np.float32)]
    for _ in range(5):
        x = rng.standard_normal((1, 4)).astype(np.float32)
        outs, state_g = run_graph(g, [x], state_g)
        want, state_r = ref(x, *state_r)
        np.testing.assert_allclose(outs[0], want[0], rtol=1e-6)
        np.testing.assert_allclose(state_g[0], state_r[0], rtol=1e-6)


@pytest.mark.parametrize("state_first", [False, True])
def test_optimize_keeps_names_order_metadata_and_verifies(tmp_path, capsys, state_first):
    src = stateful_model(tmp_path, state_first=state_first)
    dst = tmp_path / "out.onnx"
    assert cli.main(["optimize", src, "-o", str(dst), "--exact", "--json", "--no-speed-check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tier"] == "rounding" and report["verified"] and report["state_pairs"] == [["h_in", "h_out"]]
    a, b = onnx.load(src), onnx.load(str(dst))
    assert [i.name for i in b.graph.input] == [i.name for i in a.graph.input]
    assert [o.name for o in b.graph.output] == [o.name for o in a.graph.output]
    assert {p.key: p.value for p in b.metadata_props} == {"author": "someone", "license": "MIT"}
    assert b.producer_name == "graphopt"
    names = {n.name for n in b.graph.node}
    assert {"add", "final"} <= names  # nodes that survive keep their names
    assert report["nodes_in"] == 5 and report["nodes_out"] < 5
    import onnxruntime as ort
    feeds = {"x": np.ones((1, 4), np.float32), "h_in": np.full((1, 4), 0.5, np.float32)}
    got = ort.InferenceSession(str(dst)).run(None, feeds)
    want = ort.InferenceSession(src).run(None, feeds)
    for g_, w_ in zip(got, want):
        np.testing.assert_array_equal(g_, w_)


def test_optimize_refuses_to_overwrite_or_replace_its_input(tmp_path, capsys):
    src = stateful_model(tmp_path)
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"the user's file")
    assert cli.main(["optimize", src, "-o", str(dst)]) == 2
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    assert dst.read_bytes() == b"the user's file"
    assert cli.main(["optimize", src, "-o", src, "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert cli.main(["optimize", src, "-o", str(tmp_path / "out.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert cli.main(["optimize", src, "-o", str(dst), "--force"]) == 0
    assert onnx.load(str(dst)).graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]  # no temporary left


@pytest.mark.parametrize("content, says", [
    (b"\x00\x01garbage" * 10, "is not an ONNX model"),
    (b"", "holds no ONNX graph"),
])
def test_a_file_that_is_not_onnx_is_one_line_exit_2(tmp_path, capsys, content, says):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    assert cli.main(["optimize", str(bad), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_must_stay_beside_the_model(tmp_path, capsys):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "m").mkdir()
    w = TensorProto(name="w", data_type=F, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    path = save(tmp_path / "m", [helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])],
                [w])
    with pytest.raises(OnnxImportError, match="external data must be a file beside the model"):
        onnx_frontend.load(path)
    w.external_data[0].value = "weights.bin"
    path = save(tmp_path / "m", [helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])],
                [w])
    with pytest.raises(OnnxImportError, match="is missing"):
        onnx_frontend.load(path)
    (tmp_path / "m" / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    spec = onnx_frontend.load(path)
    out, _ = run_graph(spec.trace(), [np.ones((1, 4), np.float32)])
    np.testing.assert_array_equal(out[0], [[1, 2, 3, 4]])


def test_unsupported_operator_opset_and_domain_name_the_node(tmp_path, capsys):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["r"]),
                           helper.make_node("Bogus", ["r"], ["y"], name="the_node")],
                [vi("x", [1, 4])], [vi("y", [1, 4])])
    dst = tmp_path / "o.onnx"
    assert cli.main(["optimize", path, "-o", str(dst)]) == 2
    err = capsys.readouterr().err
    assert "node 'the_node' (Bogus, opset 17): operator Bogus is not supported" in err and not dst.exists()
    path = save(tmp_path, [helper.make_node("FusedThing", ["x"], ["y"], domain="com.microsoft")],
                [vi("x", [1, 4])], [vi("y", [1, 4])], name="ms.onnx")
    with pytest.raises(OnnxImportError, match="com.microsoft.FusedThing is not a standard ONNX operator"):
        onnx_frontend.load(path).trace()
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])],
                name="old.onnx", opset=9)
    with pytest.raises(OnnxImportError, match="uses opset 9; graphopt reads opsets 11 to"):
        onnx_frontend.load(path)


def test_dynamic_dims_need_input_shape(tmp_path, capsys):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, "seq", 4])],
                [vi("y", [1, "seq", 4])])
    with pytest.raises(OnnxImportError, match="dynamic dimension 'seq' \\(axis 1\\); fix it with --input-shape x:"):
        onnx_frontend.load(path)
    spec = onnx_frontend.load(path, input_shapes={"x": (1, 7, 4)})
    assert spec.inputs["x"].shape == (1, 7, 4) and spec.trace().outputs[0].shape == (1, 7, 4)
    out = tmp_path / "b"
    assert cli.main(["build", "--model", path, "--target", "onnx", "--out", str(out), "--input-shape", "x:1,7,4",
                     "--frames", "32"]) == 0
    capsys.readouterr()
    assert cli.main(["build", "--model", path, "--target", "onnx", "--out", str(tmp_path / "c"),
                     "--input-shape", "x:1,seven,4"]) == 2
    assert "--input-shape 'x:1,seven,4' must be NAME:D0,D1,..." in capsys.readouterr().err
    assert cli.main(["build", "--model", path, "--target", "onnx", "--out", str(tmp_path / "d"),
                     "--input-shape", "y:1,7,4"]) == 2
    assert "--input-shape names ['y'], which are not inputs" in capsys.readouterr().err
    assert cli.main(["build", "--model", "facephys", "--target", "onnx", "--out", str(tmp_path / "e"),
                     "--input-shape", "x:1,7,4"]) == 2
    assert "apply to an ONNX --model" in capsys.readouterr().err


def test_pairing_by_names_by_the_authors_positions_and_given(tmp_path):
    def model(ins, outs):
        nodes = [helper.make_node("Identity", [i], [o]) for i, o in zip(ins, outs)]
        return onnx.load(save(tmp_path, nodes, [vi(n, s) for n, s in ins.items()], [vi(n, s) for n, s in outs.items()]))
    m = model({"x": [1, 2], "past_key.0": [1, 3], "h_in": [1, 4], "c0": [1, 5]},
              {"y": [1, 2], "present_key.0": [1, 3], "h_out": [1, 4], "cn": [1, 5]})
    assert pairing.find(m, "m") == [("past_key.0", "present_key.0"), ("h_in", "h_out"), ("c0", "cn")]
    m = model({"input": [1, 4], "h_in": [1, 3]}, {"output": [1, 1], "h_out": [1, 3]})
    assert pairing.find(m, "m") == [("h_in", "h_out")]  # input -> output by name, but not of one type
    # the authors' tf2onnx export: state_in_i -> the i-th output of the state's shape, the waveform skipped
    m = model({"input": [1, 36, 36, 3], "state_in_0": [1, 8], "state_in_1": [1, 9]},
              {"Identity:0": [1, 1], "Identity_1:0": [1, 8], "Identity_2:0": [1, 9]})
    m.graph.node[0].output[0] = "Identity:0"  # (only the names matter here)
    assert pairing.find(m, "m") == [("state_in_0", "Identity_1:0"), ("state_in_1", "Identity_2:0")]
    assert pairing.find(m, "m", ["state_in_1:Identity_2:0"]) == [("state_in_1", "Identity_2:0")]
    with pytest.raises(OnnxImportError, match="differ in shape or dtype"):
        pairing.find(m, "m", ["state_in_0:Identity_2:0"])
    with pytest.raises(OnnxImportError, match="does not name an input and an output"):
        pairing.find(m, "m", ["state_in_0:nothing"])


def test_inspect_reports_the_pairing(tmp_path, capsys):
    src = stateful_model(tmp_path)
    assert cli.main(["inspect", src]) == 0
    out = capsys.readouterr().out
    assert "state       h_in -> h_out" in out and "inputs      x float32[batch,4], h_in float32[1,4]" in out
    assert cli.main(["inspect", src, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state_pairs"] == [["h_in", "h_out"]]


def test_initial_state_from_a_file_and_build_for_other_targets(tmp_path, capsys):
    src = stateful_model(tmp_path)
    np.savez(tmp_path / "s.npz", state_in_0=np.full((1, 4), 0.25, np.float32))
    spec = onnx_frontend.load(src, state=[np.full((1, 4), 0.25, np.float32)])
    np.testing.assert_array_equal(spec.state[0], 0.25)
    for target in ("onnx", "tflite", "xla", "torch"):
        out = tmp_path / target
        assert cli.main(["build", "--model", src, "--target", target, "--out", str(out), "--state",
                         str(tmp_path / "s.npz"), "--frames", "32", "--exact"]) == 0, target
        s = graphopt.load(next(p for p in out.iterdir() if p.suffix in (".onnx", ".tflite", ".jaxexport", ".pt2")))
        np.testing.assert_array_equal(s.state[0], 0.25)
        x = np.ones((1, 4), np.float32)
        np.testing.assert_allclose(s.step(x), spec.reference()(x, spec.state[0])[0][0], rtol=1e-6)
    with pytest.raises(OnnxImportError, match="the initial state has 2 tensors, the model 1"):
        onnx_frontend.load(src, state=[np.zeros((1, 4)), np.zeros((1, 4))])


def test_verify_an_artifact_against_the_onnx_file_it_was_built_from(tmp_path, capsys):
    src = stateful_model(tmp_path)
    out = tmp_path / "a"
    assert cli.main(["build", "--model", src, "--target", "tflite", "--out", str(out), "--frames", "32"]) == 0
    capsys.readouterr()
    artifact = str(out / "m.tflite")
    assert cli.main(["verify", artifact, "--frames", "32"]) == 2
    assert "was built from the ONNX file 'm.onnx'; pass it" in capsys.readouterr().err
    assert cli.main(["verify", artifact, "--model", src, "--frames", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tier"] == "rounding" and r["reference"] == "m (onnxruntime on m.onnx)"
    other = stateful_model(tmp_path, name="other.onnx")  # the same model started from another state: another model
    np.savez(tmp_path / "s.npz", a=np.ones((1, 4), np.float32))
    assert cli.main(["verify", artifact, "--model", other, "--state", str(tmp_path / "s.npz")]) == 2
    assert "was built from another model" in capsys.readouterr().err


@pytest.mark.parametrize("margin, written", [(0.0, "output"), (1e9, "input")])
def test_optimize_writes_the_faster_of_input_and_output(tmp_path, capsys, monkeypatch, margin, written):
    """Both models are timed in onnxruntime; the output is written only where it is faster (here the
    margin forces each outcome), else the input's model: optimize never makes a model slower."""
    from graphopt import optimize as opt
    monkeypatch.setattr(opt, "SPEED_MARGIN", margin)
    src = stateful_model(tmp_path)
    dst = tmp_path / "out.onnx"
    assert cli.main(["optimize", src, "-o", str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    speed = report["speed"]
    assert report["written"] == speed["kept"] == written and speed["input_fps"] > 0 and speed["output_fps"] > 0
    assert speed["ratio"] == pytest.approx(speed["output_fps"] / speed["input_fps"])
    got = onnx.load(str(dst))
    assert len(got.graph.node) == (5 if written == "input" else report["nodes_out"])
    assert [o.name for o in got.graph.output] == ["y", "h_out"]
