"""Hostile input to the newer tools: the reference cache (damaged, foreign or others' entries are misses; a cache
folder that is a file is one error line), `inspect FILE.tflite` (an inconsistent or enormous model is one error
line, before LiteRT allocates it), state files (numbers float32 cannot hold, strings), the console (a closed
stderr, control characters in messages, tracebacks still shown) and the release's model card (YAML front
matter and SVG pictures stay well-formed whatever the model's names and files are called)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from test_trace_cache import cache  # noqa: F401 (fixture: a cache root of the test's own)

from graphopt import cli, trace_cache
from graphopt.baseline import BaselineError, load_state_file

GRAPHOPT = str(Path(sys.executable).parent / "graphopt")

SPEC_SOURCE = '''
import numpy as np
import jax.numpy as jnp
import graphopt


def spec():
    def step(frame, dt, state):
        m = 0.9 * state + 0.1 * jnp.mean(frame, axis=(1, 2, 3, 4))[..., None]
        return m * dt * 30, m
    return graphopt.ModelSpec(name="ema", fn=step, inputs={"frame": np.zeros((1, 1, 8, 8, 3), np.float32),
                                                           "dt": np.float32(1 / 30)},
                              state=np.zeros((1, 1), np.float32), outputs=["bvp"], dt_input="dt", pulse_output="bvp")
'''


def one_error_line(err: str, says: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error:"), err
    assert sum(line.startswith("error:") for line in lines) == 1 and says in lines[-1], err


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "ema_model.py"
    path.write_text(SPEC_SOURCE)
    return f"{path}:spec"


def build(model, out, capsys) -> tuple[int, str]:
    rc = cli.main(["build", "--model", model, "--target", "onnx", "--out", str(out), "--frames", "32", "--force"])
    return rc, capsys.readouterr().err


# ---- the reference cache ---------------------------------------------------------------------------------

def _poison(entry: Path, other: Path, how: str) -> None:
    if how == "empty":
        entry.write_bytes(b"")
    elif how == "bad checksum":
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    elif how == "older format, wrong shapes":
        with open(entry, "wb") as f:
            np.savez(f, n_out=1, n_state=1, o0=np.zeros(3), s0=np.zeros((7, 7)))
    elif how == "older format, NaN":
        with open(entry, "wb") as f:
            np.savez(f, n_out=1, n_state=1, o0=np.full(32, np.nan), s0=np.zeros((1, 1), np.float32))
    elif how == "another run's entry":
        entry.write_bytes(other.read_bytes())
    elif how == "writable by others":
        os.chmod(entry, 0o666)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["empty", "bad checksum", "older format, wrong shapes", "older format, NaN",
                                 "another run's entry", "writable by others"])
def test_a_damaged_or_foreign_reference_entry_is_a_miss(cache, model, tmp_path, capsys, how):
    assert build(model, tmp_path / "a", capsys)[0] == 0
    entries = sorted(cache.glob("reference-*.npz"))
    assert len(entries) == 2  # the clip, and the clip moved by one ulp
    victim, other = entries
    _poison(victim, other, how)
    rc, err = build(model, tmp_path / "b", capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert json.loads((tmp_path / "b" / "ema.manifest.json").read_text())["equivalence"]["verified"]
    assert (victim.stat().st_mode & 0o077) == 0  # written again, by this user only
    assert all(trace_cache.read_reference(e, {}) is None for e in entries)  # keys compared


def test_an_entry_owned_by_someone_else_is_a_miss(tmp_path, monkeypatch):
    path = tmp_path / "e.npz"
    trace_cache.write(path, {"k": 1}, {}, {"a0": np.zeros(3)})
    assert trace_cache.read(path, {"k": 1}) is not None
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    assert trace_cache.read(path, {"k": 1}) is None


def test_a_cache_folder_that_is_a_file_is_one_error_line(tmp_path, monkeypatch, model, capsys):
    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cachefile"))
    rc, err = build(model, tmp_path / "out", capsys)
    assert rc == 2 and not (tmp_path / "out").exists()
    one_error_line(err, "is not a folder; set GRAPHOPT_CACHE_DIR to a folder")
    assert (tmp_path / "cachefile").read_text() == "not a folder"


def test_a_trace_entry_that_is_not_the_model_is_a_one_line_error():
    from graphopt.models import ModelSourceError  # the CLI's one-line errors, exit 2
    assert issubclass(trace_cache.TraceCacheError, ModelSourceError)


# ---- inspect FILE.tflite ---------------------------------------------------------------------------------

def _tflite(shape=(1, 4), bad_index=False) -> bytes:
    """A one-ADD TFLite model, written with LiteRT's own flatbuffer schema."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    import flatbuffers
    m = schema.ModelT()
    m.version = 3
    oc = schema.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    oc.version = 1
    m.operatorCodes, m.buffers = [oc], [schema.BufferT() for _ in range(3)]
    sg = schema.SubGraphT()
    sg.name, sg.tensors = b"main", []
    for i, name in enumerate([b"x", b"y"]):
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), schema.TensorType.FLOAT32, i + 1
        sg.tensors.append(t)
    sg.inputs, sg.outputs = np.array([0], np.int32), np.array([1], np.int32)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs = 0, np.array([0, 9999 if bad_index else 0], np.int32)
    op.outputs = np.array([1], np.int32)
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    sg.operators, m.subgraphs = [op], [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("kw, says", [
    ({"bad_index": True}, "LiteRT cannot load"),
    ({"shape": (1 << 20, 1 << 20)}, "more than the 4 GiB inspect lets LiteRT allocate"),
])
def test_inspect_an_inconsistent_or_enormous_tflite_file_is_one_error_line(tmp_path, capsys, kw, says):
    path = tmp_path / "m.tflite"
    path.write_bytes(_tflite(**kw))
    assert cli.main(["inspect", str(path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    one_error_line(cap.err, says)
    path.write_bytes(_tflite())  # the same model, well formed
    assert cli.main(["inspect", str(path)]) == 0
    assert "ADD 1" in capsys.readouterr().out


# ---- state files -----------------------------------------------------------------------------------------

def test_state_files_with_numbers_float32_cannot_hold_or_strings_are_refused(tmp_path):
    big = tmp_path / "big.npz"
    np.savez(big, state_in_0=np.full((1, 3), 1e300), state_in_1=np.zeros((1, 1)))
    with pytest.raises(BaselineError, match="too large for float32"):
        load_state_file(big)
    strings = tmp_path / "strings.json"
    strings.write_text('[["1.5", "2", "3"], [[0]]]')
    with pytest.raises(BaselineError, match="not a rectangular array of numbers"):
        load_state_file(strings)
    fine = tmp_path / "fine.json"
    fine.write_text("[[[1, 2.5, 3]], [[0]]]")
    assert [a.shape for a in load_state_file(fine)] == [(1, 3), (1, 1)]


# ---- the console -----------------------------------------------------------------------------------------

def test_control_characters_in_an_error_are_escaped(capsys):
    assert cli.main(["inspect", "/nonexistent/x\x1b[31m\ry"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "x\\x1b[31m" in err
    one_error_line(err, "does not exist")


def test_with_stderr_closed_an_error_does_not_go_to_stdout(tmp_path):
    p = subprocess.run(["bash", "-c", 'exec "$0" inspect "$1" 2>&-', GRAPHOPT, str(tmp_path / "missing.onnx")],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""


def test_the_console_entry_point_shows_errors_and_tracebacks(tmp_path):
    p = subprocess.run([GRAPHOPT, "--quiet", "inspect", str(tmp_path / "missing.onnx")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    one_error_line(p.stderr, "does not exist")
    code = ("import os, sys, graphopt.cli as c\n"
            "def boom(a):\n    os.write(2, b'native noise\\n')\n    raise RuntimeError('an unexpected bug')\n"
            "c.cmd_inspect = boom\nsys.argv = ['graphopt', 'inspect', 'x']\nsys.exit(c.main())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" in p.stderr and "RuntimeError: an unexpected bug" in p.stderr
    assert "native noise" not in p.stderr


# ---- the release's model card ----------------------------------------------------------------------------

NASTY = 'bvp"\'<&>]]> key: [x] #&amp;|`'


def test_front_matter_and_pictures_stay_well_formed(tmp_path):
    yaml = pytest.importorskip("yaml")
    from graphopt import card_plots, release
    names = ['we"ird\n---\nkey: <&>\x1b\x01.onnx', "😀.onnx", "\x7f\x85\u2028\udcff\ufffe"]
    for name in names:
        r = {"source": {"file": name}, "license": {"license": "unknown"}, "model": name,
             "graphopt_version": "0.1.0", "artifacts": {}}
        lines = release._front_matter(r)
        meta = yaml.safe_load("\n".join(lines[1:lines.index("---", 1)]))
        assert meta["model_name"] == meta["model_source"] and "\x1b" not in meta["model_name"]
        if name.isprintable():
            assert meta["model_name"] == name  # kept as it is, emoji included (no surrogate pairs)
        svg = card_plots.line_plot(name, [0, 1], [(name, np.zeros(2))], name, name, marks=[(0.5, name)]) + \
            card_plots.bar_chart(name, [(name, 1.0, 0.5, 2.0)], name)
        for doc in svg.split("</svg>\n")[:2]:
            ET.fromstring(doc + "</svg>")
        md = release._md(name)
        assert md.isprintable() and "`" not in md


def test_a_release_of_an_onnx_file_with_hostile_names(tmp_path, cache, capsys):
    yaml = pytest.importorskip("yaml")
    from onnx import TensorProto as TP
    from onnx import helper as h
    g = h.make_graph([h.make_node("ReduceMean", ["frame"], ["m"], axes=[1, 2, 3, 4], keepdims=0),
                      h.make_node("Mul", ["m", "dt"], [NASTY])], "g",
                     [h.make_tensor_value_info("frame", TP.FLOAT, [1, 1, 8, 8, 3]),
                      h.make_tensor_value_info("dt", TP.FLOAT, [])], [h.make_tensor_value_info(NASTY, TP.FLOAT, [1])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
    m.producer_name = 'evil"\n---\n<&>\x1b\x01'
    src = tmp_path / 'we"ird\n<&>\'.onnx'
    src.write_bytes(m.SerializeToString())
    out = tmp_path / "release"
    assert cli.main(["release", "--model", str(src), "--out", str(out), "--variants", "onnx", "--frames", "32",
                     "--rounds", "1"]) == 0
    capsys.readouterr()
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["model_source"] == 'we"ird\\n<&>\'.onnx' and meta["graphopt_version"]
    assert "\x1b" not in card and "\x01" not in card
    svgs = glob.glob(str(out / "card" / "*.svg"))
    assert len(svgs) == 3
    for f in svgs:
        ET.parse(f)
