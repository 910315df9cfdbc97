"""Attacks through what an artifact folder holds: manifests that point outside the folder, lie about
the model file, lack keys or carry wrong types; state files that are empty, truncated, pickled, of the
wrong shape or dtype or hold NaN; and `inspect` on broken artifacts. Each is one ArtifactError line,
exit 2 from the CLI, and nothing is opened outside the folder."""
from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import cli_error

import graphopt
from graphopt import artifact as art
from graphopt import cli
from graphopt.errors import ArtifactError


@pytest.fixture
def copy(tmp_path, tiny_onnx):
    """A fresh copy of the tiny ONNX artifact to tamper with: (folder, manifest path, manifest dict)."""
    folder = tmp_path / "art"
    shutil.copytree(tiny_onnx.path.parent, folder)
    m = folder / "tiny.manifest.json"
    return folder, m, json.loads(m.read_text())


def _write(path, manifest):
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("field, value", [
    ("file", "../../outside.onnx"), ("file", "/etc/passwd"), ("file", "~/x.onnx"),
    ("initial_state.file", "/etc/passwd"), ("initial_state.file", "../state.npz"),
])
def test_paths_must_stay_inside_the_folder(copy, capsys, field, value):
    folder, mpath, m = copy
    shutil.copy(folder / "tiny.onnx", folder.parent / "outside.onnx")
    if field == "file":
        m["file"] = value
    else:
        m["initial_state"]["file"] = value
    _write(mpath, m)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        graphopt.load(folder)
    assert "outside the artifact folder" in cli_error(capsys, "inspect", str(folder))


def test_a_link_out_of_the_folder_is_refused(copy):
    folder, mpath, m = copy
    (folder / "tiny.state.npz").unlink()
    (folder / "tiny.state.npz").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="outside the artifact folder.*link"):
        graphopt.load(folder)


def test_model_file_must_match_its_sha256(copy, capsys):
    folder, mpath, m = copy
    other = folder / "tiny.onnx"
    data = bytearray(other.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256 in its manifest"):
        graphopt.load(folder)
    assert "sha256" in cli_error(capsys, "inspect", str(folder))


def test_state_file_must_match_its_sha256(copy):
    folder, mpath, m = copy
    with np.load(folder / "tiny.state.npz") as d:
        arrays = {k: d[k] for k in d.files}
    arrays["state_in_0"] = arrays["state_in_0"] + 1
    np.savez(folder / "tiny.state.npz", **arrays)
    with pytest.raises(ArtifactError, match="initial state file .* does not match the sha256"):
        graphopt.load(folder)


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m.pop("inputs"), "inputs is missing"),
    (lambda m: m.update(inputs="frame"), "inputs must be a list"),
    (lambda m: m["inputs"][0].update(shape=[1, -1]), "non-negative integers"),
    (lambda m: m["inputs"][0].update(shape=[100000, 100000, 100000]), "more than"),
    (lambda m: m["inputs"][0].update(dtype="object"), "dtype"),
    (lambda m: m["state"][0].update(shape="big"), r"state\[0\].shape must be a list"),
    (lambda m: m.update(fps=float("inf")), "fps"),
    (lambda m: m.update(fps=-30), "fps"),
    (lambda m: m.update(fixed_inputs={"dt": 0}), "fixed_inputs.dt"),
    (lambda m: m.update(max_dt="1"), "max_dt"),
    (lambda m: m.update(sha256=None), "sha256"),
    (lambda m: m.update(format="graphopt-artifact/9"), "format"),
    (lambda m: m.update(target=["onnx"]), "target must be a str"),
    (lambda m: m.update(target="caffe"), "unknown target 'caffe'"),
    (lambda m: m["state"][0].update(view=[{"op": "exec", "code": "x"}]), "view"),
    (lambda m: m["state"][0].update(view=[{"op": "transpose", "perm": [0, 0, 1, 2]}]), "permutation"),
    (lambda m: m["pipeline"].update(passes=[3]), "pipeline.passes"),
    (lambda m: m["inputs"][1].update(role="frame"), "at most one frame"),
    (lambda m: m["inputs"][0].update(shape=[36]), r"\(\.\.\., H, W, C\) frames"),
    (lambda m: m["outputs"][0].update(name=m["inputs"][0]["name"]), "names must be distinct"),
])
def test_malformed_manifests_are_one_line_errors(copy, capsys, mutate, match):
    folder, mpath, m = copy
    mutate(m)
    mpath.write_text(json.dumps(m, allow_nan=True))
    with pytest.raises(ArtifactError, match=match):
        graphopt.load(folder)
    cli_error(capsys, "inspect", str(folder))
    cli_error(capsys, "verify", str(folder), "--frames", "100")


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b"[" * 100000 + b"]" * 100000])
def test_unparseable_manifests(copy, capsys, content):
    folder, mpath, m = copy
    mpath.write_bytes(content)
    with pytest.raises(ArtifactError, match="manifest"):
        graphopt.load(folder)
    cli_error(capsys, "inspect", str(folder))


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, state_in_0=np.array([{"a": 1}], dtype=object))
    return buf.getvalue()


@pytest.mark.parametrize("make, match", [
    (lambda good: b"", "not a readable npz"),
    (lambda good: good[: len(good) // 2], "not a readable npz|truncated"),
    (lambda good: _pickled_npz(), "lacks|not a numeric array"),
    (lambda good: b"PK\x03\x04" + b"\0" * 100, "not a readable npz"),
])
def test_broken_state_files(copy, capsys, make, match):
    folder, mpath, m = copy
    state = folder / "tiny.state.npz"
    state.write_bytes(make(state.read_bytes()))
    m["initial_state"].pop("sha256")  # the check under test is the file's content, not its hash
    _write(mpath, m)
    with pytest.raises(ArtifactError, match=match):
        graphopt.load(folder)
    cli_error(capsys, "inspect", str(folder))


@pytest.mark.parametrize("change, match", [
    (lambda a: a.astype(np.float64), "is float64"),
    (lambda a: a.reshape(-1), "the manifest says"),
    (lambda a: np.full_like(a, np.nan), "NaN/Inf"),
    (lambda a: np.array([{"x": 1}], dtype=object), "not a numeric array"),
])
def test_state_of_the_wrong_kind_is_refused_at_load(copy, change, match):
    folder, mpath, m = copy
    with np.load(folder / "tiny.state.npz") as d:
        arrays = {k: d[k] for k in d.files}
    arrays["state_in_1"] = change(arrays["state_in_1"])
    np.savez(folder / "tiny.state.npz", **arrays)
    m["initial_state"].pop("sha256")
    _write(mpath, m)
    with pytest.raises(ArtifactError, match=match):
        graphopt.load(folder)


def test_object_npz_is_never_unpickled(tmp_path):
    """An npz member whose pickle would run code: refused from its header, never unpickled."""
    marker = tmp_path / "pwned"
    payload = (b"\x80\x04\x95" + b"\0" * 8 + b"cos\nsystem\n(V touch " + str(marker).encode() + b"\ntR.")
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    npy.write(payload)
    with zipfile.ZipFile(tmp_path / "s.npz", "w") as z:
        z.writestr("state_in_0.npy", npy.getvalue())
    with pytest.raises(ArtifactError, match="never unpickles"):
        art.read_npz(tmp_path / "s.npz")
    assert not marker.exists()


def test_inspect_refuses_broken_model_files(copy, capsys):
    folder, mpath, m = copy
    (folder / "tiny.onnx").write_bytes(b"")
    m["sha256"] = art.sha256(folder / "tiny.onnx")
    _write(mpath, m)
    err = cli_error(capsys, "inspect", str(folder))
    assert "tiny.onnx" in err


def test_inspect_refuses_a_missing_state(copy, capsys):
    folder, mpath, m = copy
    (folder / "tiny.state.npz").unlink()
    assert "missing" in cli_error(capsys, "inspect", str(folder))


def test_inspect_reports_a_good_artifact(tiny_onnx, capsys):
    assert cli.main(["inspect", str(tiny_onnx.path.parent)]) == 0
    assert "target      onnx" in capsys.readouterr().out


def test_a_manifest_linked_from_elsewhere_is_refused(copy, tmp_path):
    folder, mpath, m = copy
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(mpath.read_text())
    mpath.unlink()
    mpath.symlink_to(elsewhere)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        graphopt.load(folder)


def test_a_pipe_or_device_is_not_read_as_a_manifest(copy, capsys):
    import os
    folder, mpath, m = copy
    mpath.unlink()
    os.mkfifo(mpath)  # reading it would block forever
    with pytest.raises(ArtifactError, match="not a regular file"):
        graphopt.load(folder)
    mpath.unlink()
    mpath.symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        graphopt.load(folder)


def test_a_pipe_as_model_file_is_refused(copy):
    import os
    folder, mpath, m = copy
    (folder / "tiny.onnx").unlink()
    os.mkfifo(folder / "tiny.onnx")
    with pytest.raises(ArtifactError, match="not a regular file"):
        graphopt.load(folder)


@pytest.mark.parametrize("path", ["/", "", "."])
def test_paths_that_name_no_artifact(tmp_path, monkeypatch, capsys, path):
    monkeypatch.chdir(tmp_path)
    for cmd in (["inspect", path], ["verify", path], ["inspect", "--check", "tensorrt", path]):
        cli_error(capsys, *cmd)


def test_verify_never_takes_its_reference_from_the_manifest(tmp_path):
    """An artifact cannot choose what it is checked against: source.weights (a path in the manifest) is
    never read, and the weights' sha256 it records must match the weights verify uses."""
    from graphopt import equivalence
    from graphopt.models import ModelSourceError
    evil = tmp_path / "evil.weights.h5"
    evil.write_bytes(b"not used")
    with pytest.raises(ModelSourceError, match="does not record the sha256"):
        equivalence.reference_model("physnet", {"weights": str(evil), "precision": "float32"})
    with pytest.raises(ModelSourceError, match="built from other weights.*--weights"):
        equivalence.reference_model("physnet", {"weights": str(evil), "weights_sha256": "0" * 64,
                                                "precision": "float32"})
    with pytest.raises(ModelSourceError, match="precision"):
        equivalence.reference_model("physnet", {"weights_sha256": "0" * 64, "precision": "int3"})


def test_hashing_a_model_folder_follows_no_link(tmp_path):
    """sha256_tree (SavedModel folders) hashes a link as its text: a link to a pipe or a huge file outside
    is never read."""
    import os
    folder = tmp_path / "m.savedmodel"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"x")
    before = art.sha256_tree(folder)
    os.mkfifo(tmp_path / "pipe")
    (folder / "variables").symlink_to(tmp_path / "pipe")  # reading it would block forever
    assert art.sha256_tree(folder) != before
