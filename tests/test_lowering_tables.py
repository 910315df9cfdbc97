"""Every target's lowering table (graphopt/targets/lowering.py) against the op registry: each op is lowered
or declared unsupported with a reason, and an op a target cannot lower is a build-time UnsupportedOpError
naming the op, its output, the runtime and the target."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from graphopt.ir import OPS, Graph, TensorType
from graphopt.targets import UnsupportedOpError, get, module_for, names
from graphopt.targets.lowering import LOWERED, MISSING, UNSUPPORTED, LoweringTable


@pytest.mark.parametrize("target", names())
def test_every_op_is_lowered_or_declared_unsupported_with_a_reason(target):
    table = get(target).lowering_table()
    assert isinstance(table, LoweringTable)
    coverage = table.coverage(OPS)
    assert not [op for op, (state, _) in coverage.items() if state == MISSING], f"{target}: ops in no table state"
    for op, (state, reason) in coverage.items():
        assert state in (LOWERED, UNSUPPORTED)
        assert (state == UNSUPPORTED) == bool(reason.strip()), (target, op, reason)
    # a table declares only registry ops (a renamed op would leave a dead entry)
    t = table
    while t is not None:
        assert set(t.lowerings) | set(t.reasons) <= set(OPS), target
        t = t.base


def test_which_targets_share_a_table():
    """tf and tflite emit through the TF lowering, torch and torch-compile through the fx one; TensorRT's table
    is ONNX's less the ops TensorRT's parser does not take."""
    table = {name: get(name).lowering_table() for name in names()}
    assert table["tf"] is table["tflite"] and table["torch"] is table["torch-compile"]
    assert len({id(table[n]) for n in ("onnx", "xla", "tf", "torch", "tensorrt")}) == 5
    assert table["tensorrt"].base is table["onnx"]
    assert [op for op in OPS if table["tensorrt"].status(op)[0] != LOWERED] == ["rem"]
    assert table["onnx"].targets() == ["onnx", "onnx-web"] and sorted(table["tf"].targets()) == ["litert-web", "tf", "tflite"]


def test_reading_the_tables_imports_no_runtime():
    code = ("import sys\nfrom graphopt import targets\n"
            "[targets.get(n).lowering_table() for n in targets.names()]\n"
            "print(sorted(m for m in ('jax', 'tensorflow', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def node(op: str, out: str = "y"):
    return SimpleNamespace(op=op, outputs=[SimpleNamespace(name=out)])


def test_table_lookup_status_and_messages():
    base = LoweringTable("Base", "base.py")
    lower = base.register("exp", "log")(lambda *a: "lowered")
    base.unsupported("sin", "no sine here; use cos")
    assert base.lookup(node("exp")) is lower and base.status("log") == (LOWERED, "")
    assert base.status("sin") == (UNSUPPORTED, "no sine here; use cos") and base.status("cos") == (MISSING, "")
    with pytest.raises(UnsupportedOpError, match=r"^op 'sin' \(%s1\) has no Base lowering: no sine here; use cos$"):
        base.lookup(node("sin", "s1"))
    with pytest.raises(UnsupportedOpError, match=r"^op 'cos' \(%c\) has no Base lowering: base.py declares none; "
                                                  r"add one to its table, or build for a target that lowers it$"):
        base.lookup(node("cos", "c"))
    with pytest.raises(ValueError, match="needs a reason"):
        base.unsupported("tan", " ")
    derived = LoweringTable("Derived", "derived.py", base=base)
    derived.unsupported("log", "log is out")
    assert derived.lookup(node("exp")) is lower and "exp" in derived and "log" not in derived
    with pytest.raises(UnsupportedOpError, match=r"has no Derived lowering: log is out"):
        derived.lookup(node("log"))
    with pytest.raises(UnsupportedOpError, match=r"derived.py \(based on base.py\) declares none"):
        derived.lookup(node("cos"))
    g = Graph(name="g")
    x = g.add_input("x", TensorType((3,), "float32"))
    y = g.op("exp", x)
    g.outputs, g.output_names = [g.op("sin", y)], ["z"]
    with pytest.raises(UnsupportedOpError, match=rf"^op 'sin' \(%{g.outputs[0].name}\) has no Base lowering"):
        base.check(g)


def one_op(op: str, dtype: str = "float32") -> Graph:
    g = Graph(name=op)
    x = g.add_input("x", TensorType((2, 3), dtype))
    ins = [x, g.add_param(np.full((2, 3), 2, dtype))] if OPS[op].arity == 2 else [x]
    g.outputs, g.output_names = [g.op(op, *ins)], ["y"]
    return g


def test_an_op_declared_unsupported_is_a_build_error(tmp_path):
    """TensorRT declares `rem` unsupported: its emit fails before writing anything, naming op, target and why."""
    g = one_op("rem")
    out = g.outputs[0].name
    with pytest.raises(UnsupportedOpError, match=rf"^op 'rem' \(%{out}\) has no TensorRT lowering \(target tensorrt\): "
                                                 r"its ONNX lowering \(Mod with fmod=1\) is not in graphopt's "
                                                 r"TensorRT-legal set .*; use the onnx target$"):
        module_for("tensorrt").emit(g, tmp_path, {"stem": "rem"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", names())
def test_an_op_missing_from_a_table_is_a_build_error(target, tmp_path, monkeypatch):
    ok, why = module_for(target).available()
    if not ok:
        pytest.skip(why)
    table = root = get(target).lowering_table()
    while root.base is not None:
        root = root.base
    monkeypatch.delitem(root.lowerings, "tanh")
    g = one_op("tanh")
    with pytest.raises(UnsupportedOpError) as e:
        module_for(target).emit(g, tmp_path, {"stem": "tanh"})
    message = str(e.value)
    assert message.startswith(f"op 'tanh' (%{g.outputs[0].name}) has no {table.runtime} lowering (target")
    assert target in message.split(":")[0] and root.where in message
    assert message.endswith("declares none; add one to its table, or build for a target that lowers it")
