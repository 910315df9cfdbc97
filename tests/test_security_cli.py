"""Attacks through command-line numbers and files: --fps inf, absurd --frames, --state files that are
empty, truncated, pickled or not numbers. Each is a one-line message and exit 2, before any work."""
from __future__ import annotations

import gzip
import io
import re
import shutil

import numpy as np
import pytest
from conftest import cli_error

from graphopt import cli
from graphopt.builder import BuildUsageError, build


@pytest.mark.parametrize("fps", ["inf", "-inf", "nan", "0", "-30", "1e-300", "1e300", "thirty"])
def test_build_fps_must_be_a_frame_rate(tmp_path, capsys, fps):
    err = cli_error(capsys, "build", "--model", "facephys", "--target", "onnx", "--out", str(tmp_path / "o"),
                       "--fps", fps)
    assert "--fps" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 0.0, 1e-300])
def test_build_api_refuses_fps(tmp_path, fps):
    with pytest.raises(BuildUsageError, match="--fps must be a frame rate"):
        build("facephys", "onnx", tmp_path / "o", fps=fps, log=lambda m: None)


@pytest.mark.parametrize("frames", ["0", "-5", "100000000", "1.5", "many"])
def test_frames_out_of_range_are_refused_by_the_parser(tiny_onnx, capsys, frames):
    err = cli_error(capsys, "verify", str(tiny_onnx.path.parent), "--frames", frames)
    assert "--frames" in err


def test_too_few_frames_for_a_heart_rate(tiny_onnx, capsys):
    assert "from 32 to" in cli_error(capsys, "verify", str(tiny_onnx.path.parent), "--frames", "1")


@pytest.mark.parametrize("argv", [
    ["verify", "X", "--hr", "nan"], ["verify", "X", "--hr", "1e9"], ["verify", "X", "--seed", "-1"],
    ["bench", "--rounds", "0"], ["bench", "--steps", "-3"], ["release", "--model", "physnet", "--frames", "0"],
    ["release", "--model", "physnet", "--rounds", "1e9"], ["build", "--target", "tensorrt", "--opt-level", "9"],
])
def test_numbers_out_of_range(capsys, argv):
    cli_error(capsys, *argv)


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("name, content, match", [
    ("s.npz", b"", "not a readable npz"),
    ("s.npz", _npz_bytes(a=np.zeros(100, np.float32))[:60], "not a readable npz|truncated"),
    ("s.npz", _npz_bytes(a=np.array([None, {"x": 1}], dtype=object)), "not a numeric array"),
    ("s.npz", _npz_bytes(a=np.array([np.nan], np.float32)), "NaN/Inf"),
    ("s.json.gz", gzip.compress(b'[[1, 2], "x"]', mtime=0), "not a rectangular array"),
    ("s.json.gz", gzip.compress(b"[[1e999]]", mtime=0), "NaN/Inf"),
    ("s.json.gz", gzip.compress(b"{}", mtime=0), "no list"),
    ("s.json.gz", b"\x1f\x8b garbage", "neither npz nor"),
    ("s.json", b"[" * 100000, "neither npz nor"),
], ids=["empty", "truncated", "object", "nan", "ragged-json", "inf-json", "dict-json", "bad-gzip", "deep-json"])
def test_baseline_state_files(tmp_path, tiny_onnx, capsys, name, content, match):
    model = tmp_path / "foreign.onnx"  # an ONNX step model without a graphopt manifest: a baseline
    shutil.copy(tiny_onnx.path, model)
    (tmp_path / name).write_bytes(content)
    err = cli_error(capsys, "verify", str(model), "--state", str(tmp_path / name))
    assert re.search(match, err), err


@pytest.mark.parametrize("argv, says", [
    (["release", "--model", "physnet", "--variants", "bogus", "--out", "{tmp}/r"], "unknown release variants"),
    (["build", "--model", "physnet", "--target", "onnx", "--out", "{tmp}/b", "--passes", "bogus"], "unknown pass"),
    (["build", "--model", "physnet", "--target", "onnx", "--out", "{tmp}/b", "--explain", "bogus"],
     "unknown rule 'bogus'; rules: "),
    (["build", "--model", "nosuch", "--target", "onnx", "--out", "{tmp}/b"], "unknown model"),
    (["build", "--model", "physnet", "--target", "onnx", "--out", "{tmp}/b", "--weights", "{tmp}/none.h5"],
     "not a file"),
    (["build", "--model", "physnet", "--target", "onnx", "--out", "{tmp}/b", "--state-mode", "io"], "tflite only"),
    (["bench", "--baseline", "{tmp}/none.onnx"], "not a file"),
    (["bench", "--json-out", "{tmp}", "--targets", "onnx"], "--json-out"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, argv, says):
    import time
    t0 = time.perf_counter()
    err = cli_error(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert says in err
    assert time.perf_counter() - t0 < 10  # no model traced, nothing built
    assert sorted(p.name for p in tmp_path.iterdir()) == []
