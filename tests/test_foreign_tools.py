"""What foreign tools (Netron, onnx, onnxruntime's profiler, TensorRT's parser messages) see in graphopt's ONNX
files without the manifest: every node named after the IR (unique per model, a name from an imported ONNX
model kept), graphopt's essentials in metadata_props (state pairs, roles, the claimed tier, the version),
producer "graphopt" and its version."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import build_tiny, tiny_graph
from onnx import TensorProto, helper

import graphopt
from graphopt.targets import onnx as onnx_target


def props(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def leaky_spec():
    """A small step model with two outputs, a pulse, a dt and a pytree state (the README's example)."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    w_in = rng.standard_normal((3, 16)).astype(np.float32) * 0.3
    w_out = rng.standard_normal((16, 2)).astype(np.float32) * 0.3

    def step(frame, dt, state):
        h = jnp.tanh(frame.mean(axis=(1, 2, 3)) @ w_in)
        decay = jnp.exp(-dt / 0.5)
        mean = decay * state["mean"] + (1 - decay) * h
        trend = jax.nn.relu(h - mean) @ w_out
        return (trend[:, 0], trend), {"mean": mean, "steps": state["steps"] + 1.0}

    return graphopt.ModelSpec(
        name="leaky", fn=step, inputs={"frame": np.zeros((1, 1, 8, 8, 3), np.float32), "dt": np.float32(1 / 30)},
        state={"mean": np.zeros((1, 16), np.float32), "steps": np.zeros((), np.float32)},
        outputs=["pulse", "features"], dt_input="dt", fps=30.0, pulse_output="pulse")


@pytest.fixture(scope="module")
def leaky_onnx(tmp_path_factory):
    """The leaky model built and verified like `graphopt build --target onnx` (through the pass pipeline)."""
    out = tmp_path_factory.mktemp("leaky") / "onnx"
    return graphopt.build(leaky_spec(), "onnx", out, frames=32, log=lambda m: None)


def check_node_names(model) -> list[str]:
    names = [n.name for n in model.graph.node]
    assert all(names), [n.op_type for n in model.graph.node if not n.name]
    assert len(set(names)) == len(names), "node names must be unique"
    return names


def test_a_built_artifact_opened_with_onnx_names_nodes_and_carries_the_manifest_essentials(leaky_onnx):
    m, manifest = onnx.load(str(leaky_onnx.path)), leaky_onnx.manifest
    onnx.checker.check_model(m)
    assert m.producer_name == "graphopt" and m.producer_version == graphopt.__version__
    names = check_node_names(m)
    for n, name in zip(m.graph.node, names):  # "<IR op>/<output>", or a fused group's "fused.<ONNX op>/<output>"
        op, _, rest = name.partition("/")
        assert rest.split("/")[0] in n.output or op == "output", name
        assert op.startswith("fused.") or op.replace("_", "").isalnum(), name
    p = props(m)
    assert p["graphopt.version"] == graphopt.__version__ and p["graphopt.model"] == "leaky"
    pairs = json.loads(p["graphopt.state_pairs"])
    assert pairs == [[s["input"], s["output"]] for s in manifest["state"]] and len(pairs) == 2
    assert json.loads(p["graphopt.input_roles"]) == {"frame": "frame", "dt": "dt"}
    assert json.loads(p["graphopt.output_roles"]) == {"pulse": "pulse", "features": "output"}
    assert float(p["graphopt.fps"]) == manifest["fps"] == 30.0
    assert p["graphopt.frames_per_step"] == "1"
    # the claim is what the build claimed before verifying; the tier reached stays in the manifest
    eq = manifest["equivalence"]
    assert eq["verified"] and p["graphopt.tier_claimed"] == eq["tier_claimed"]
    assert "equivalence.tier" in p["graphopt.tier_note"]
    # the file the manifest's sha256 names is the one that carries them (load checks the hash)
    s = graphopt.load(leaky_onnx.path.parent)
    out = s.step(np.full((1, 1, 8, 8, 3), 0.5, np.float32))
    assert np.isfinite(np.asarray(out["pulse"] if isinstance(out, dict) else out[0])).all()


def test_onnxruntime_profiles_by_the_node_names(leaky_onnx, tmp_path):
    """A profiler (onnxruntime's own) reports each node under the name graphopt gave it."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(leaky_onnx.path), opts, providers=["CPUExecutionProvider"])
    m = onnx.load(str(leaky_onnx.path))
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32) for i in m.graph.input}
    s.run(None, feeds)
    events = json.loads(open(s.end_profiling()).read())
    profiled = {e["name"].removesuffix("_kernel_time") for e in events if e.get("cat") == "Node"}
    assert profiled and profiled <= {n.name for n in m.graph.node}, sorted(profiled)[:5]


def test_every_node_of_a_multi_node_lowering_is_named_after_its_ir_node():
    """An IR op lowered as several ONNX nodes: the one computing the IR value is "<op>/<value>", the
    helpers "<op>/<value>/<ONNX op>" (a repeat gets _1)."""
    from graphopt.frontends.jax import trace

    def step(x):
        return (jnp.isfinite(x).astype(np.float32) + jnp.log1p(x),)

    import jax.numpy as jnp
    g = trace(step, {"x": np.zeros((1, 4), np.float32)}, None, name="m", output_names=["y"])
    ops = {n.op for n in g.nodes}
    assert {"is_finite", "log1p"} <= ops, ops
    m = onnx_target.to_onnx(g, fuse=False)
    names = check_node_names(m)
    fin = [n for n in names if n.startswith("is_finite/")]
    assert len(fin) == 4 and sum(n.count("/") == 1 for n in fin) == 1  # IsNaN, IsInf, Or: helpers; Not: the value
    assert {n.rsplit("/", 1)[1] for n in fin if n.count("/") == 2} == {"IsNaN", "IsInf", "Or"}
    by_name = {n.name: n for n in m.graph.node}
    main = next(n for n in fin if n.count("/") == 1)
    assert by_name[main].op_type == "Not" and by_name[main].output[0] == main.split("/")[1]


def test_fused_groups_and_output_identities_are_named():
    from graphopt.frontends.jax import trace
    from jax import lax

    def step(x, y):
        z = jnp.tanh(x * lax.rsqrt(y))  # x * rsqrt(y): one fused group, Div(x, Sqrt(y))
        return z, z  # a value that is two outputs: the second is an Identity
    import jax.numpy as jnp
    g = trace(step, {"x": np.zeros((2, 4), np.float32), "y": np.ones((2, 4), np.float32)}, None, name="m",
              output_names=["a", "b"])
    m = onnx_target.to_onnx(g)
    names = check_node_names(m)
    assert {n.split("/")[0] for n in names} == {"fused.Sqrt", "fused.Div", "tanh", "output"}, names
    ident = [n for n in m.graph.node if n.op_type == "Identity"]
    assert ident and ident[0].name == f"output/{ident[0].output[0]}"


def test_a_graph_without_a_pipeline_claims_no_tier_and_emission_is_deterministic(tmp_path):
    g = tiny_graph()
    m = onnx_target.to_onnx(g)
    p = props(m)
    assert "graphopt.tier_claimed" not in p  # emitted outside a build: nothing was claimed
    assert json.loads(p["graphopt.state_pairs"]) == [[f"state_in_{i}", f"state_out_{i}"] for i in range(3)]
    assert m.SerializeToString() == onnx_target.to_onnx(tiny_graph()).SerializeToString()
    a, b = build_tiny("onnx", tmp_path / "a"), build_tiny("onnx", tmp_path / "b")
    assert a.path.read_bytes() == b.path.read_bytes()


def test_the_tensorrt_onnx_is_named_and_described_too():
    from graphopt.targets import tensorrt
    m = onnx_target.to_onnx(tiny_graph(), table=tensorrt.TABLE)
    check_node_names(m)
    assert m.producer_name == "graphopt" and "graphopt.state_pairs" in props(m)


def test_an_imported_onnx_model_keeps_its_node_names_and_metadata(tmp_path):
    """Nodes that survive keep the source's names, the others get IR names (unique against the kept ones);
    the source's metadata_props are kept as they are (graphopt optimize writes a drop-in replacement, and
    adds none of its own keys)."""
    from graphopt.frontends import onnx as onnx_frontend
    F = TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["x", "h_in"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "a"], ["b"]),  # unnamed in the source
             helper.make_node("Relu", ["b"], ["h_out"], name="mul/b"),  # a name the IR naming could pick
             helper.make_node("Neg", ["h_out"], ["y"], name="final")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 4]),
                                       helper.make_tensor_value_info("h_in", F, [1, 4])],
                          [helper.make_tensor_value_info("y", F, [1, 4]), helper.make_tensor_value_info("h_out", F, [1, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    helper.set_model_props(model, {"author": "someone"})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    graph = onnx_frontend.load(path).trace()
    m = onnx_target.to_onnx(graph, fuse=False)
    names = check_node_names(m)
    assert {"add", "final", "mul/b"} <= set(names)
    assert props(m) == {"author": "someone"}
    assert m.producer_name == "graphopt"
