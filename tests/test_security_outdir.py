"""Attacks on output folders: --out pointing at a user's folder or file, an unwritable place, a kill -9
in the middle of a build, and the permissions of what graphopt creates."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny

import graphopt
from graphopt import artifact as art
from graphopt import cli
from graphopt.errors import ArtifactError
from graphopt.outdir import FILES_LIST, PARTIAL_MARKER, atomic_dir, check_destination, remove_stale_partials


def test_a_users_folder_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match="graphopt did not write.*thesis.tex"):
        build_tiny("onnx", out)
    with pytest.raises(ArtifactError, match="did not write"):
        build_tiny("onnx", out, force=True)  # --force replaces graphopt's own artifacts only
    assert (out / "thesis.tex").read_text() == "years of work" and os.listdir(out) == ["thesis.tex"]
    # the CLI refuses before any work: exit 2, one line
    assert cli.main(["build", "--model", "physnet", "--target", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did not write" in err
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no partial folder either


def test_a_file_is_refused_not_swapped(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    with pytest.raises(ArtifactError, match="is a file"):
        build_tiny("onnx", out)
    assert out.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_link_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ArtifactError, match="link"):
        build_tiny("onnx", tmp_path / "link")
    assert os.listdir(target) == []


def test_an_earlier_artifact_needs_force(tmp_path):
    out = tmp_path / "a"
    first = build_tiny("onnx", out)
    with pytest.raises(ArtifactError, match="already holds a graphopt artifact; pass --force"):
        build_tiny("onnx", out)
    second = build_tiny("onnx", out, force=True)
    assert second.manifest["sha256"] == first.manifest["sha256"]
    assert graphopt.load(out).stats["steps"] == 0
    # a file the user added to the artifact folder makes it theirs: refused even with --force
    (out / "my-notes.md").write_text("notes")
    with pytest.raises(ArtifactError, match="my-notes.md"):
        build_tiny("onnx", out, force=True)
    assert (out / "my-notes.md").read_text() == "notes"


def test_an_empty_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    a = build_tiny("onnx", out)
    listed = (out / FILES_LIST).read_text()
    assert a.path.name in listed and "tiny.state.npz" in listed and "tiny.manifest.json" in listed


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    if os.geteuid() == 0:
        bad = Path("/proc/graphopt-out")  # not writable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        bad = ro / "out"
    with pytest.raises(ArtifactError, match="not a writable folder|cannot write"):
        check_destination(bad)
    t0 = time.perf_counter()
    assert cli.main(["build", "--model", "facephys", "--target", "onnx", "--out", str(bad)]) == 2
    assert time.perf_counter() - t0 < 5  # refused before tracing the model
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "writable" in err


def test_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "perm"
        build_tiny("onnx", out)
        assert (out.stat().st_mode & 0o777) == 0o755
        assert ((out / "tiny.onnx").stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_a_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "x") as tmp:
            (tmp / "half.onnx").write_bytes(b"\x08")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_a_partial_folder_is_never_loaded(tmp_path, tiny_onnx):
    """What an interrupted run leaves (a complete-looking artifact in a partial folder) is refused by
    load, inspect and verify, and the next run beside it removes it."""
    import shutil
    partial = tmp_path / f".out.graphopt-partial-{2**22 + 12345}"  # a PID that is not running
    shutil.copytree(tiny_onnx.path.parent, partial)
    (partial / FILES_LIST).unlink()
    (partial / PARTIAL_MARKER).write_text("")
    with pytest.raises(ArtifactError, match="unfinished or interrupted"):
        graphopt.load(partial)
    assert cli.main(["inspect", str(partial)]) == 2
    assert cli.main(["verify", str(partial / "tiny.onnx")]) == 2
    assert remove_stale_partials(tmp_path / "out") == [partial]
    assert not partial.exists()


KILLED_BUILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import tiny_graph
from graphopt import artifact as art
from graphopt.targets import onnx
with art.atomic_dir(Path(sys.argv[1])) as tmp:
    onnx.emit(tiny_graph(), tmp, {"stem": "tiny"})  # the artifact is complete but not yet verified ...
    print("emitted", flush=True)
    time.sleep(60)                                  # ... when the process is killed
"""


def test_kill_9_during_a_build_then_a_clean_run(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(out), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "emitted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".out.graphopt-partial-") and (left[0] / "tiny.onnx").is_file()
    with pytest.raises(ArtifactError, match="unfinished or interrupted"):
        graphopt.load(left[0])
    a = build_tiny("onnx", out)  # the next run cleans up after the dead one
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    stream = graphopt.load(a.path)
    assert np.isfinite(stream.step(np.full(stream.frame_shape, 0.5, np.float32))).all()


def test_release_refuses_a_users_folder(tmp_path, capsys):
    out = tmp_path / "rel"
    out.mkdir()
    (out / "data.csv").write_text("1,2,3")
    assert cli.main(["release", "--model", "physnet", "--out", str(out), "--variants", "onnx"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert os.listdir(out) == ["data.csv"]


def test_read_manifest_does_not_follow_a_partial_parent(tmp_path, tiny_onnx):
    import shutil
    partial = tmp_path / ".rel.graphopt-partial-1"
    shutil.copytree(tiny_onnx.path.parent, partial / "onnx")
    (partial / PARTIAL_MARKER).write_text("")
    with pytest.raises(ArtifactError, match="unfinished"):
        art.read_manifest(partial / "onnx")


def test_a_users_empty_folder_inside_an_artifact_blocks_force(tmp_path):
    out = tmp_path / "a"
    build_tiny("onnx", out)
    (out / "my-results").mkdir()
    with pytest.raises(ArtifactError, match="my-results"):
        build_tiny("onnx", out, force=True)
    assert (out / "my-results").is_dir()


def test_a_crash_after_the_rename_leaves_a_refused_folder_force_replaces(tmp_path):
    """Killed between the rename and the marker's removal: the folder is refused as unfinished, and
    --force may replace it (its file list names the marker)."""
    out = tmp_path / "a"
    build_tiny("onnx", out)
    (out / PARTIAL_MARKER).write_text("")
    with pytest.raises(ArtifactError, match="unfinished"):
        graphopt.load(out)
    build_tiny("onnx", out, force=True)
    assert graphopt.load(out).stats["steps"] == 0


def test_a_big_foreign_folder_is_refused_at_once(tmp_path):
    import time
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match="did not write"):
        check_destination(Path("/usr"))
    assert time.perf_counter() - t0 < 1


def test_an_empty_folder_graphopt_wrote_is_its_own_and_a_foreign_one_is_not(tmp_path):
    """A SavedModel's empty assets/ folder: the files list cannot name it, so it is listed apart; --force
    replaces the folder, and an empty folder someone else added is still refused."""
    out = tmp_path / "rel"
    for _ in range(2):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "tf" / "m.savedmodel" / "assets").mkdir(parents=True)
            (tmp / "tf" / "m.savedmodel" / "saved_model.pb").write_bytes(b"x")
    assert (out / "tf" / "m.savedmodel" / "assets").is_dir()
    (out / "notes").mkdir()
    with pytest.raises(ArtifactError, match="a folder graphopt did not write \\(it holds 'notes'\\)"):
        check_destination(out, force=True)
    assert (out / "notes").is_dir()
