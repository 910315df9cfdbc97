"""Fuzzing what graphopt reads (hypothesis): manifests, state files, frames and dt values, and output
folders. Every generated input ends in a result or in graphopt's own error (exit 2 from the CLI, one
line) — never another exception, never a traceback, never a partial artifact or a lost user file."""
from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FRAME, build_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import graphopt
from graphopt import cli
from graphopt.errors import ArtifactError
from graphopt.stream import FrameError

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["../x", "/etc/passwd", "tiny.onnx", "float32", "dt", "frame"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def _paths(tree, prefix=()):
    """Every key path into a JSON tree."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(tree, path, value, delete):
    tree = copy.deepcopy(tree)
    if not path:
        return value
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1])
    else:
        parent[path[-1]] = value
    return tree


def _load_and_inspect(folder, capsys):
    """Load the artifact (a Stream that steps, or one ArtifactError line) and inspect it (exit 0 or 2)."""
    try:
        stream = graphopt.load(folder)
    except ArtifactError as e:
        assert "\n" not in str(e)
    else:
        _step_once(stream)
    _expect_clean(capsys, ["inspect", str(folder)])


def _step_once(stream):
    try:
        y = stream.step(np.full(stream.frame_shape, 0.5, np.float32))
    except FrameError:
        return
    assert np.isfinite(y).all()


def _expect_clean(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return code


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny("onnx", tmp_path_factory.mktemp("fuzz") / "art").path.parent


@SETTINGS
@given(data=st.data())
def test_fuzz_manifests(tiny_folder, capsys, data):
    manifest = json.loads((tiny_folder / "tiny.manifest.json").read_text())
    paths = _paths(manifest)
    path = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(json_values, label="value")
    delete = data.draw(st.booleans(), label="delete")
    mutated = _mutate(manifest, path, value, delete)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "art"
        shutil.copytree(tiny_folder, folder)
        (folder / "tiny.manifest.json").write_text(json.dumps(mutated, allow_nan=True))
        _load_and_inspect(folder, capsys)


@SETTINGS
@given(data=st.data())
def test_fuzz_state_files(tiny_folder, capsys, data):
    good = (tiny_folder / "tiny.state.npz").read_bytes()
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "arrays"]), label="kind")
    if kind == "flip":
        b = bytearray(good)
        for i in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=8), label="at"):
            b[i] ^= data.draw(st.integers(1, 255))
        content = bytes(b)
    elif kind == "truncate":
        content = good[:data.draw(st.integers(0, len(good) - 1), label="length")]
    elif kind == "random":
        content = data.draw(st.binary(max_size=2000), label="bytes")
    else:
        arrays = data.draw(st.dictionaries(
            st.sampled_from(["state_in_0", "state_in_1", "state_in_2", "other"]),
            hnp.arrays(st.sampled_from([np.float32, np.float64, np.int32, np.bool_, np.complex64]),
                       hnp.array_shapes(max_dims=4, max_side=8)), max_size=4), label="arrays")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        content = buf.getvalue()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "art"
        shutil.copytree(tiny_folder, folder)
        (folder / "tiny.state.npz").write_bytes(content)
        m = json.loads((folder / "tiny.manifest.json").read_text())
        m["initial_state"].pop("sha256")  # reach the content checks behind the hash
        (folder / "tiny.manifest.json").write_text(json.dumps(m))
        _load_and_inspect(folder, capsys)


frames = hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_, np.complex64]),
    st.sampled_from([TINY_FRAME, (8, 8, 3), (8, 8), (1, 8, 8, 3), (2,) + TINY_FRAME[1:], (0,), ()]),
    elements=None)
dts = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10) | st.text(max_size=4) \
    | st.lists(st.floats(0, 1), max_size=3) | st.booleans()


@SETTINGS
@given(frame=frames, dt=dts)
def test_fuzz_frames_and_dt(tiny_folder, frame, dt):
    stream = graphopt.load(tiny_folder)
    before = stream.state
    try:
        y = stream.step(frame, dt)
    except FrameError as e:
        assert "\n" not in str(e)
        for a, b in zip(before, stream.state):
            np.testing.assert_array_equal(a, b)  # a refused step leaves the state alone
    else:
        assert np.isfinite(y).all()
        assert all(np.isfinite(s).all() for s in stream.state)


@SETTINGS
@given(kind=st.sampled_from(["absent", "empty", "file", "user-folder", "artifact", "artifact+user-file", "link"]),
       force=st.booleans())
def test_fuzz_output_folders(kind, force):
    """Whatever --out is, a build either makes a loadable artifact there or refuses, leaving it as it was
    and no partial folder beside it."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        if kind == "empty":
            out.mkdir()
        elif kind == "file":
            out.write_text("user data")
        elif kind == "user-folder":
            out.mkdir()
            (out / "data.txt").write_text("user data")
        elif kind.startswith("artifact"):
            build_tiny("onnx", out)
            if kind.endswith("user-file"):
                (out / "data.txt").write_text("user data")
        elif kind == "link":
            (Path(d) / "real").mkdir()
            out.symlink_to(Path(d) / "real")
        before = _snapshot(Path(d))
        try:
            build_tiny("onnx", out, force=force)
        except ArtifactError as e:
            assert "\n" not in str(e)
            assert _snapshot(Path(d)) == before
        else:
            assert kind in ("absent", "empty") or (kind == "artifact" and force)
            assert graphopt.load(out).stats["steps"] == 0
        assert not [p for p in os.listdir(d) if "partial" in p]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}
