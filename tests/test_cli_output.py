"""The console: third-party log noise off unless --verbose, --quiet, --version (through the real
entry point, in a subprocess: the native runtimes write to file descriptor 2 directly)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import graphopt

GRAPHOPT = str(Path(sys.executable).parent / "graphopt")
SPEC = '''
import numpy as np, jax.numpy as jnp, graphopt
def spec():
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    return graphopt.ModelSpec(name="tiny", fn=lambda x: jnp.tanh(x @ w), inputs={"x": np.zeros((2, 4), np.float32)})
'''
NOISE = ("WARNING:", "INFO:", "W0000", "I0000", "UserWarning", "absl::InitializeLog")


def run(*args, cwd):
    return subprocess.run([GRAPHOPT, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    (d / "tiny.py").write_text(SPEC)
    return d


def test_version():
    r = subprocess.run([GRAPHOPT, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"graphopt {graphopt.__version__}"


def test_a_tflite_build_prints_graphopt_lines_only_and_all_of_them_with_verbose(spec_file):
    r = run("build", "--model", "tiny.py:spec", "--target", "tflite", "--out", "a", "--frames", "32", cwd=spec_file)
    assert r.returncode == 0, r.stderr
    noisy = [line for line in r.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy
    assert "[4/4] verifying over 32 frames" in r.stderr and "wrote " in r.stderr
    r = run("--verbose", "build", "--model", "tiny.py:spec", "--target", "tflite", "--out", "b", "--frames", "32",
            cwd=spec_file)
    assert r.returncode == 0 and any(n in r.stderr for n in NOISE)  # the runtimes' own lines are back


def test_quiet_keeps_errors_and_drops_progress(spec_file):
    r = run("--quiet", "build", "--model", "tiny.py:spec", "--target", "onnx", "--out", "q", "--frames", "32",
            cwd=spec_file)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (spec_file / "q" / "tiny.onnx").is_file()
    r = run("--quiet", "build", "--model", "tiny.py:nothing", "--target", "onnx", "--out", "r", cwd=spec_file)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_progress_lines_without_a_terminal_say_elapsed_and_time_left(monkeypatch, capsys):
    import time
    from graphopt import console
    monkeypatch.setattr(console, "HEARTBEAT_S", 0.0)
    monkeypatch.setattr(console, "QUIET", False)
    assert list(console.progress(range(4), desc="verifying", unit="frame")) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.strip().startswith("verifying: ") and " s left" in line for line in lines)
    assert lines[-1].strip().startswith("verifying: 3/4 frames")
    monkeypatch.setattr(console, "HEARTBEAT_S", 0.05)
    with console.working("loading facephys"):
        time.sleep(0.3)
    assert "loading facephys ... 0 s" in capsys.readouterr().err
    monkeypatch.setattr(console, "QUIET", True)
    assert list(console.progress(range(3), desc="x")) == [0, 1, 2]
    with console.working("y"):
        time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_build_json_prints_the_result_on_stdout(spec_file, tmp_path, capsys):
    import json

    from graphopt import cli
    assert cli.main(["build", "--model", f"{spec_file / 'tiny.py'}:spec", "--target", "onnx", "--out",
                     str(tmp_path / "j"), "--frames", "32", "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert r["artifact"].endswith("tiny.onnx") and r["equivalence"]["tier"] == "rounding" and r["nodes"] > 0
    assert "[4/4] verifying" in err  # progress stays on stderr


def test_inspect_a_tflite_file_without_a_manifest(spec_file, tmp_path, capsys):
    import json
    import shutil

    from graphopt import cli
    assert cli.main(["build", "--model", f"{spec_file / 'tiny.py'}:spec", "--target", "tflite", "--out",
                     str(tmp_path / "t"), "--frames", "32"]) == 0
    plain = tmp_path / "plain.tflite"
    shutil.copy(tmp_path / "t" / "tiny.tflite", plain)
    capsys.readouterr()
    assert cli.main(["inspect", str(plain), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["inputs"][0]["shape"] == [2, 4] and s["xnnpack_partitions"] >= 1 and sum(s["ops"].values()) == s["nodes"]
    assert cli.main(["inspect", str(plain)]) == 0
    out = capsys.readouterr().out
    assert "format      TFLite (no graphopt manifest)" in out and "XNNPACK" in out
    plain.write_bytes(b"not a flatbuffer" * 4)
    assert cli.main(["inspect", str(plain)]) == 2
