"""graphopt.trust: artifacts are untrusted input. Each test crafts an attack on one model format (a pickle
that creates a file, a SavedModel resource that writes one, a host callback, a Flex op, external data
outside the folder, ...) and checks that check_model_file refuses it with one line naming the file and
the problem, before any runtime reads it; graphopt's own artifacts of every format pass. The torch, tf and
xla artifacts are built from one graph holding every IR op and every branch of the lowerings, so the
allowlists are checked against what the lowerings can emit, not against one model."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from graphopt import trust
from graphopt.artifact import ArtifactError
from graphopt.ir import OPS, Graph, TensorType, verify
from graphopt.targets import module_for
from graphopt.trust import UntrustedArtifactError, check_model_file

UNARY = ("neg", "exp", "log", "sqrt", "rsqrt", "floor", "ceil", "abs", "sign", "sin", "cos", "tanh", "sigmoid",
         "erf", "log1p", "expm1")
BINARY = ("add", "sub", "mul", "div", "max", "min", "pow", "rem")
COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")
pytestmark = pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64:UserWarning")  # jax without x64
TF_BROKEN = {"rem"}  # tf_lowering calls tf.math.truncatemod/truncatediv, which TF 2.21 lacks (int div, rem)


def every_op_graph(target: str) -> Graph:
    """One small graph with every IR op and every branch of the target's lowering (conv 1-3-D, grouped, padded
    unevenly; pools of each mode on 1, 2 and 3 axes, folded and padded; int and float arithmetic; ...)."""
    tf_like = target in ("tf", "tflite")
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    g = Graph(name="every_op")
    x = g.add_input("frame", TensorType((1, 3, 6, 6), "float32"))
    s = g.add_state("s", np.zeros((1, 3, 6, 6), np.float32))
    pos = g.op("add", g.op("abs", x), g.add_param(np.float32(1.0)))
    outs = [g.op(op, pos) for op in UNARY] + [g.op("round", x, mode=m) for m in ("half_even", "half_away")]
    i32 = g.op("cast", x, to="int32")
    for op in BINARY:
        if tf_like and op in TF_BROKEN:
            continue
        outs.append(g.op(op, pos, g.op("add", s, pos)))
        if op != "pow" and not (tf_like and op == "div"):
            outs.append(g.op("cast", g.op(op, i32, g.op("add", i32, g.add_param(np.int32(7)))), to="float32"))
    b = g.op("lt", x, s)
    outs += [g.op("cast", g.op(op, x, s), to="float32") for op in COMPARE]
    outs += [g.op("cast", g.op(op, b, g.op("gt", x, s)), to="float32") for op in ("and", "or")]
    outs += [g.op("cast", g.op("not", b), to="float32"), g.op("cast", g.op("is_finite", x), to="float32"),
             g.op("clamp", x, lo=-1.0, hi=1.0), g.op("clamp", x, lo=0.0, hi=6.0), g.op("select", b, x, s),
             g.op("cast", g.op("cast", x, to="float16"), to="float32"),
             g.op("cast", g.op("cast", x, to="int64"), to="float32"),
             g.op("cast", g.op("cast", x, to="bool"), to="float32")]
    flat = g.op("reshape", x, shape=(3, 36))
    outs += [flat, g.op("transpose", x, perm=(0, 2, 3, 1)),
             g.op("broadcast", flat, shape=(2, 3, 36), dims=(1, 2)),
             g.op("slice", x, starts=(0, 1, 0, 1), limits=(1, 3, 6, 6), strides=(1, 1, 2, 2)),
             g.op("concat", x, s, axis=1),
             g.op("pad", x, g.add_param(np.float32(0.0)), pads=((0, 0), (0, 0), (1, 2), (0, 1))),
             g.op("pad", x, g.add_param(np.float32(1.5)), pads=((0, 0), (0, 0), (1, 1), (1, 1)))]
    outs += [g.op("take", x, g.add_param(np.array([[0, 2], [5, 1]], dt)), axis=2) for dt in ("int32", "int64")]
    idx = g.op("cast", g.op("slice", g.op("reshape", x, shape=(108,)), starts=(0,), limits=(4,), strides=(1,)),
               to="int32")
    outs.append(g.op("take", x, idx, axis=3))
    outs += [g.op(op, x, axes=axes) for op in ("reduce_sum", "reduce_max", "reduce_min") for axes in ((1, 3), ())]
    outs += [g.op("cumsum", x, axis=2, reverse=False), g.op("cumsum", x, axis=3, reverse=True),
             g.op("dot", x, g.add_param(r(6, 5)), lhs_contract=(3,), rhs_contract=(0,)),
             g.op("dot", x, g.add_param(r(6)), lhs_contract=(3,), rhs_contract=(0,)),
             g.op("dot", x, s, lhs_contract=(3,), rhs_contract=(3,), lhs_batch=(0, 1), rhs_batch=(0, 1)),
             g.op("reverse", x, axes=(1, 3)), g.op("reverse", x, axes=(2,))]
    outs += _convs(g, x, r, tf_like) + _pools(g, x)
    g.state[0].output = g.op("add", s, x)
    g.outputs, g.output_names = outs, [f"out_{i}" for i in range(len(outs))]
    missing = set(OPS) - {n.op for n in g.nodes} - (TF_BROKEN if tf_like else set())
    assert not missing, f"the every-op graph lacks {missing}: add them"
    verify(g)
    return g


def _convs(g, x, r, tf_like):
    w, x5 = g.add_param(r(4, 3, 3, 3)), g.op("reshape", x, shape=(1, 3, 2, 3, 6))
    convs = [g.op("conv", x, w, g.add_param(r(4)), strides=(1, 1), pads=((1, 1), (1, 1)), dilations=(1, 1), groups=1),
             g.op("conv", x, w, strides=(2, 2), pads=((0, 0), (0, 0)), dilations=(1, 1), groups=1),
             g.op("conv", x, w, strides=(1, 2), pads=((0, 1), (2, 1)), dilations=(2, 1), groups=1),
             g.op("conv", x, g.add_param(r(3, 1, 3, 3)), strides=(1, 1), pads=((1, 1),) * 2, dilations=(1, 1),
                  groups=3),
             g.op("conv", x5, g.add_param(r(2, 3, 1, 3, 3)), g.add_param(r(2)), strides=(1, 1, 1),
                  pads=((0, 0), (1, 1), (1, 1)), dilations=(1, 1, 1), groups=1),
             g.op("conv", x5, g.add_param(r(2, 3, 2, 2, 2)), strides=(1, 1, 1), pads=((1, 0), (0, 1), (1, 1)),
                  dilations=(1, 1, 1), groups=1)]
    if not tf_like:  # TF has 2-D and 3-D convs only, and depthwise 2-D ones
        convs += [g.op("conv", g.op("reshape", x, shape=(1, 3, 36)), g.add_param(r(4, 3, 3)), strides=(1,),
                       pads=((1, 1),), dilations=(1,), groups=1),
                  g.op("conv", x5, g.add_param(r(3, 1, 1, 3, 3)), strides=(1, 1, 1), pads=((0, 0), (1, 1), (1, 1)),
                       dilations=(1, 1, 1), groups=3)]
    return convs


def _pools(g, x):
    x5, none4, none5 = g.op("reshape", x, shape=(1, 3, 2, 3, 6)), ((0, 0),) * 4, ((0, 0),) * 5
    pools = []
    for mode in ("max", "avg", "sum"):
        pools += [g.op("pool", x, mode=mode, window=(1, 1, 2, 2), strides=(1, 1, 2, 2), pads=none4),
                  g.op("pool", x, mode=mode, window=(1, 1, 3, 3), strides=(1, 1, 2, 2),
                       pads=((0, 0), (0, 0), (1, 1), (0, 2))),
                  g.op("pool", x, mode=mode, window=(1, 1, 1, 3), strides=(1, 1, 1, 1), pads=none4),
                  g.op("pool", x5, mode=mode, window=(1, 1, 2, 3, 2), strides=(1, 1, 1, 3, 2), pads=none5),
                  g.op("pool", x5, mode=mode, window=(1, 2, 2, 1, 1), strides=(1, 1, 1, 1, 1), pads=none5)]
    return pools + [g.op("pool", x, mode="max", window=(1, 1, 1, 1), strides=(1, 1, 1, 1), pads=none4)]


def small_graph() -> Graph:
    g = Graph(name="small")
    x = g.add_input("frame", TensorType((1, 6, 6, 3), "float32"))
    s = g.add_state("s", np.zeros((1, 6, 6, 3), np.float32))
    y = g.op("add", g.op("mul", x, g.add_param(np.linspace(0.5, 1.5, 3, dtype=np.float32))), s)
    y = g.op("add", y, g.add_param(np.arange(108, dtype=np.float32).reshape(1, 6, 6, 3)))
    g.state[0].output = y
    g.outputs, g.output_names = [g.op("reduce_sum", y, axes=(1, 2))], ["y"]
    return g


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """graphopt artifacts, emitted once per target: torch, tf and xla from the every-op graph, tflite (io state)
    and onnx from a small one. Returns get(target) -> model file."""
    cache: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in cache:
            g = small_graph() if target in ("tflite", "onnx") else every_op_graph(target)
            opts = {"stem": "m", "state_mode": "io"} if target == "tflite" else {"stem": "m"}
            cache[target] = module_for(target).emit(g, tmp_path_factory.mktemp(target), opts).path
        return cache[target]
    return get


def refused(path, *fragments, base=None) -> str:
    """check_model_file refuses path with one line naming it and every fragment; returns the message."""
    with pytest.raises(UntrustedArtifactError) as e:
        check_model_file(path, base)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def copy_artifact(src: Path, dst_dir: Path) -> Path:
    """A copy of a model file (or SavedModel folder) in its own folder."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


# ---- graphopt's own artifacts pass --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["torch", "tf", "xla", "tflite", "onnx"])
def test_graphopt_artifacts_pass(built, target):
    path = built(target)
    check_model_file(path)
    check_model_file(path, path.parent)
    assert issubclass(UntrustedArtifactError, ArtifactError) and issubclass(UntrustedArtifactError, ValueError)


def test_torch_allowlist_is_what_the_lowering_emits(built):
    with zipfile.ZipFile(built("torch")) as z:
        program = json.loads(z.read("m/models/model.json"))
    emitted = {n["target"].removeprefix("torch.ops.aten.") for n in program["graph_module"]["graph"]["nodes"]}
    assert emitted == trust.TORCH_OPS, (f"new: {sorted(emitted - trust.TORCH_OPS)}, "
                                        f"no longer emitted: {sorted(trust.TORCH_OPS - emitted)}")


def test_tf_allowlist_is_what_the_lowering_emits(built):
    meta = trust._savedmodel_meta(built("tf"))
    emitted = {n.op for f in meta.graph_def.library.function if "_traced_" not in f.signature.name
               for n in f.node_def}
    assert emitted <= trust.TF_OPS, sorted(emitted - trust.TF_OPS)
    assert trust.TF_OPS - emitted <= {"TruncateDiv", "TruncateMod", "StatefulPartitionedCall", "NoOp"}


@pytest.mark.slow
def test_physnet_artifacts_pass(tmp_path):
    """Real PhysNet artifacts pass (FacePhys's pass this check in every graphopt.load of test_targets,
    test_tensorrt_torch and the e2e tests, which load through it)."""
    from graphopt.builder import build
    for model in ("physnet",):
        for target in ("torch", "tf", "xla"):
            a = build(model, target, tmp_path / f"{model}-{target}", verify=False, log=lambda m: None)
            check_model_file(a.path, a.path.parent)


# ---- .pt2 -----------------------------------------------------------------------------------------


class CreatesFile:
    """Unpickling this creates the file `marker` (what a real attack would use to run anything)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def rewrite_zip(src: Path, dst: Path, edit) -> Path:
    """A copy of a zip archive with its members {name: bytes} passed through edit."""
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in edit(members).items():
            z.writestr(name, data)
    return dst


def _edit_json(members: dict, name: str, edit) -> dict:
    members[name] = json.dumps(edit(json.loads(members[name]))).encode()
    return members


def pickled_weight(marker: Path):
    """The weights config asks torch to unpickle weight c0, and weight_0 is a pickle that creates marker."""
    def edit(m):
        def config(c):
            c["config"]["c0"]["use_pickle"] = True
            return c
        m = _edit_json(m, "m/data/weights/model_weights_config.json", config)
        m["m/data/weights/weight_0"] = pickle.dumps(CreatesFile(marker), protocol=2)
        return m
    return edit


def guards_code(marker: Path):
    def edit(m):
        def program(p):
            p["guards_code"] = [f"open({str(marker)!r}, 'w').close() is None"]
            return p
        return _edit_json(m, "m/models/model.json", program)
    return edit


def test_pt2_with_pickled_weights_is_refused_without_unpickling(built, tmp_path):
    marker = tmp_path / "pwned"
    evil = rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", pickled_weight(marker))
    refused(evil, "asks for 'c0' to be unpickled", "use_pickle", "rebuild the artifact")
    assert not marker.exists()


def test_pt2_guards_code_is_refused(built, tmp_path):
    marker = tmp_path / "pwned"
    evil = rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", guards_code(marker))
    refused(evil, "guards_code", "exec")
    assert not marker.exists()


PROVE_PT2 = """
import sys, torch
pickled, guarded = sys.argv[1:]
try:
    torch.export.load(pickled)  # unpickles the weight (and then fails on what the pickle returned)
except Exception:
    pass
ep = torch.export.load(guarded)
ep.module()(*ep.example_inputs[0])  # exec()s the guard
"""


def test_pt2_attacks_are_real(built, tmp_path):
    # what check_model_file prevents: torch.export.load runs the pickle, .module() the guard code
    markers = [tmp_path / "by-pickle", tmp_path / "by-guard"]
    pickled = rewrite_zip(built("torch"), tmp_path / "a" / "m.pt2", pickled_weight(markers[0]))
    guarded = rewrite_zip(built("torch"), tmp_path / "b" / "m.pt2", guards_code(markers[1]))
    subprocess.run([sys.executable, "-c", PROVE_PT2, str(pickled), str(guarded)], capture_output=True, timeout=300)
    assert [m.exists() for m in markers] == [True, True]


def test_pt2_sample_inputs_that_import_anything_are_refused(built, tmp_path):
    # torch.loads the sample inputs with weights_only=True and retries with weights_only=False when that fails
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(CreatesFile(marker), protocol=2))
        z.writestr("archive/version", "3\n")

    def edit(m):
        m["m/data/sample_inputs/model.pt"] = buf.getvalue()
        return m
    evil = rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", edit)
    refused(evil, "data/sample_inputs/model.pt/data.pkl", "the pickle imports", "open")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["m/../../escape.txt", "/etc/escape.txt", "m/data/../../escape.txt"])
def test_pt2_path_traversal_member_is_refused(built, tmp_path, name):
    evil = rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", lambda m: {**m, name: b"x"})
    refused(evil, "path traversal")


@pytest.mark.parametrize("member, why", [
    ("m/data/aotinductor/model/model.so", "AOTInductor"),
    ("m/data/constants/opaque_obj_0", "pickle.loads"),
    ("m/data/weights/model.pt", "legacy pickled weights"),
    ("serialized_state_dict.pt", "outside the archive's root folder"),
])
def test_pt2_members_torch_would_execute_are_refused(built, tmp_path, member, why):
    evil = rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", lambda m: {**m, member: b"\x80\x02N."})
    refused(evil, why)


@pytest.mark.parametrize("target", ["torch.serialization.os.system", "torch.ops.mylib.evil.default",
                                    "torch.ops.higher_order.cond", "_operator.getitem"])
def test_pt2_graph_calling_a_non_allowlisted_op_is_refused(built, tmp_path, target):
    def edit(m):
        def program(p):
            node = next(n for n in p["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.exp.default")
            node["target"] = target
            return p
        return _edit_json(m, "m/models/model.json", program)
    evil = rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", edit)
    refused(evil, repr(target), "not an aten op graphopt's torch lowering emits")


def test_pt2_symbolic_expression_is_refused(built, tmp_path):
    def edit(m):
        def program(p):  # sympy.sympify parses expr_str with eval
            meta = next(m for m in p["graph_module"]["graph"]["tensor_values"].values() if m["sizes"])
            meta["sizes"][0] = {"as_expr": {"expr_str": "__import__('os').getpid()", "hint": None}}
            return p
        return _edit_json(m, "m/models/model.json", program)
    refused(rewrite_zip(built("torch"), tmp_path / "evil" / "m.pt2", edit), "as_expr")


def test_pt2_that_is_not_a_zip_is_refused(tmp_path):
    p = tmp_path / "m.pt2"
    p.write_bytes(pickle.dumps(CreatesFile(tmp_path / "pwned")))
    refused(p, "not a readable zip archive")


# ---- SavedModel ----------------------------------------------------------------------------------------


def malicious_savedmodel(out: Path, marker: Path) -> Path:
    """A SavedModel holding a resource whose initializer writes `marker`; tf.saved_model.load runs it."""
    import tensorflow as tf

    class WritesFile(tf.saved_model.experimental.TrackableResource):
        def __init__(self):
            super().__init__()

        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

        def _initialize(self):
            return tf.io.write_file(str(marker), "written by the SavedModel")

    m = tf.Module()
    m.table = WritesFile()
    m.step = tf.function(lambda x: x + 1, input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(m, str(out))
    assert not marker.exists()  # saving does not run the initializer
    return out


@pytest.fixture(scope="module")
def evil_savedmodel(tmp_path_factory, built):
    built("tf")  # TensorFlow is imported and configured by the tf target first
    d = tmp_path_factory.mktemp("evil-tf")
    return malicious_savedmodel(d / "m.savedmodel", d / "pwned"), d / "pwned"


def test_savedmodel_resource_writing_a_file_is_refused(evil_savedmodel):
    path, marker = evil_savedmodel
    refused(path, "uses TF op WriteFile (writes files)", "tf.saved_model.load may run it")
    assert not marker.exists()


def test_savedmodel_attack_is_real(evil_savedmodel):
    # what check_model_file prevents: plain tf.saved_model.load runs the resource's initializer
    path, marker = evil_savedmodel
    code = "import sys, tensorflow as tf; tf.saved_model.load(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=300)
    assert marker.exists()
    marker.unlink()


def edit_savedmodel(src: Path, dst_dir: Path, edit) -> Path:
    from tensorflow.core.protobuf import saved_model_pb2
    dst = copy_artifact(src, dst_dir)
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((dst / "saved_model.pb").read_bytes())
    edit(sm.meta_graphs[0])
    (dst / "saved_model.pb").write_bytes(sm.SerializeToString())
    return dst


def test_savedmodel_calling_its_saver_function_is_refused(built, tmp_path):
    # the saver functions may hold SaveV2/MergeV2Checkpoints only because TF2's loader never runs them
    def edit(meta):
        save = next(f.signature.name for f in meta.graph_def.library.function if "_traced_save" in f.signature.name)
        wrapper = next(f for f in meta.graph_def.library.function if "signature_wrapper" in f.signature.name)
        next(n for n in wrapper.node_def if n.op.endswith("PartitionedCall")).attr["f"].func.name = save
    refused(edit_savedmodel(built("tf"), tmp_path / "evil", edit), "saver function", "is also called")


def test_tf1_savedmodel_is_refused(built, tmp_path):
    refused(edit_savedmodel(built("tf"), tmp_path / "evil", lambda meta: meta.ClearField("object_graph_def")),
            "TF1 loader")


def test_savedmodel_file_linked_outside_is_refused(built, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret")
    path = copy_artifact(built("tf"), tmp_path / "evil")
    shard = next((path / "variables").glob("variables.data-*"))
    shard.unlink()
    shard.symlink_to(secret)
    refused(path, "outside the SavedModel")


# ---- .jaxexport ------------------------------------------------------------------------------------


def _with_module(exported, fn, *args):
    """exported with its StableHLO replaced by the lowering of fn (jax.export refuses to serialize host
    callbacks, an attacker writes the bytes directly)."""
    import jax
    from jax.interpreters import mlir
    module = jax.jit(fn).lower(*args).compiler_ir("stablehlo")
    return dataclasses.replace(exported, mlir_module_serialized=mlir.module_to_bytecode(module))


def test_jaxexport_with_host_callbacks_is_refused(tmp_path):
    import jax
    from jax import export as jex
    spec = jax.ShapeDtypeStruct((3,), np.float32)
    legit = jex.export(jax.jit(lambda a: a + 1), platforms=("cpu",))(spec)

    def calls_python(a):
        jax.debug.callback(lambda v: print("host code", v), a)
        return jax.pure_callback(lambda v: np.asarray(v) * 2, spec, a)
    evil = tmp_path / "m.jaxexport"
    evil.write_bytes(_with_module(legit, calls_python, spec).serialize())
    refused(evil, "stablehlo.custom_call @xla_ffi_python_cpu_callback")
    unsafe = tmp_path / "unsafe" / "m.jaxexport"
    unsafe.parent.mkdir()
    checks = (jex.DisabledSafetyCheck.custom_call("my_target"),)
    unsafe.write_bytes(dataclasses.replace(legit, disabled_safety_checks=checks).serialize())
    refused(unsafe, "disables jax.export safety checks")


def test_unreadable_jaxexport_is_refused(tmp_path):
    p = tmp_path / "m.jaxexport"
    p.write_bytes(b"\x00" * 64)
    refused(p, "not a readable jax.export serialization")


# ---- .tflite ---------------------------------------------------------------------------------------


def edit_tflite(src: Path, dst: Path, edit) -> Path:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    model = schema.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    edit(model, schema)
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(b.Output()))
    return dst


def test_tflite_with_a_flex_op_is_refused(built, tmp_path):
    def flex(model, schema):
        oc = model.operatorCodes[0]
        oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        oc.customCode = "FlexWriteFile"
    refused(edit_tflite(built("tflite"), tmp_path / "m.tflite", flex), "custom op 'FlexWriteFile'")


def test_tflite_buffer_outside_the_file_is_refused(built, tmp_path):
    def far(model, schema):
        buf = next(b for b in model.buffers if b.data is not None)
        buf.data, buf.offset, buf.size = None, 1 << 30, 64
    refused(edit_tflite(built("tflite"), tmp_path / "m.tflite", far), "past the end of the")


# ---- .onnx -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_external(built, tmp_path_factory):
    """The onnx artifact's model with its initializers in an external data file m.bin beside it."""
    import onnx
    d = tmp_path_factory.mktemp("onnx-external")
    onnx.save_model(onnx.load(str(built("onnx"))), str(d / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.bin", size_threshold=0)
    return d / "m.onnx"


def relocate(src: Path, dst_dir: Path, location: str) -> Path:
    """A copy of an external-data ONNX model (with m.bin) whose first external tensor reads `location`."""
    import onnx
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.with_name("m.bin"), dst_dir / "m.bin")
    model = onnx.load(str(src), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    next(e for e in tensor.external_data if e.key == "location").value = location
    (dst_dir / "m.onnx").write_bytes(model.SerializeToString())
    return dst_dir / "m.onnx"


def test_onnx_external_data_inside_the_folder_passes(onnx_external):
    check_model_file(onnx_external, onnx_external.parent)
    sub = relocate(onnx_external, onnx_external.parent / "sub", "m.bin")
    check_model_file(sub, onnx_external.parent)


def test_onnx_external_data_outside_the_folder_is_refused(onnx_external, tmp_path):
    outside = tmp_path / "outside.bin"
    shutil.copy(onnx_external.with_name("m.bin"), outside)
    art = tmp_path / "artifact"
    refused(relocate(onnx_external, art, "../outside.bin"), "'../outside.bin'", "outside", base=art)
    refused(relocate(onnx_external, tmp_path / "abs", str(outside)), "absolute path", base=tmp_path / "abs")
    linked = relocate(onnx_external, tmp_path / "linked", "data.bin")
    (linked.parent / "data.bin").symlink_to(outside)
    refused(linked, "'data.bin'", "resolves to", str(outside), base=linked.parent)
    refused(relocate(onnx_external, tmp_path / "mem", "*/_ORT_MEM_ADDR_/*"), "_ORT_MEM_ADDR_",
            base=tmp_path / "mem")
    refused(relocate(onnx_external, tmp_path / "missing", "gone.bin"), "not a file", base=tmp_path / "missing")
    refused(relocate(onnx_external, tmp_path / "nul", "m.bin\0/../../x"), "NUL byte", base=tmp_path / "nul")


def test_onnx_external_constant_in_a_subgraph_is_refused(tmp_path):
    from onnx import TensorProto, helper
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="../../secret.bin")
    branch = lambda name, node: helper.make_graph([node], name, [], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [1])])
    then = branch("then", helper.make_node("Constant", [], ["y"], value=value))
    other = branch("else", helper.make_node("Constant", [], ["y"], value_floats=[0.0]))
    graph = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    refused(path, "subgraph 'then'", "'../../secret.bin'")


@pytest.mark.parametrize("content", [b"", b"\xff" * 32, b"\x0a\x00"])
def test_unreadable_onnx_is_refused(tmp_path, content):
    p = tmp_path / "m.onnx"
    p.write_bytes(content)
    refused(p, "empty" if not content else "not a readable ONNX model")


# ---- dispatch -------------------------------------------------------------------------------------


def test_model_file_linked_out_of_its_folder_is_refused(built, tmp_path):
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "m.onnx").symlink_to(built("onnx"))
    refused(art / "m.onnx", "outside the artifact folder")


def test_unknown_formats_and_engines(tmp_path):
    refused(tmp_path / "m.pkl", "does not exist")
    (tmp_path / "m.pkl").write_bytes(b"\x80\x02N.")
    refused(tmp_path / "m.pkl", ".pkl is not a model format graphopt loads")
    (tmp_path / "m.engine").mkdir()
    refused(tmp_path / "m.engine", "it is a folder")
    with pytest.raises(UntrustedArtifactError, match="m.engine: it is not a regular file"):
        trust.check_engine(tmp_path / "m.engine")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "m.engine").write_bytes(b"serialized engine")
    check_model_file(tmp_path / "e" / "m.engine")  # engines are checked by sha256 and loaded without host code
