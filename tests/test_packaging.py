"""graphopt as a package: the wheel holds every package, installs into a fresh virtual environment that can
reach only numpy and one runtime (onnxruntime with onnx, which the load-time trust check reads ONNX with; or
LiteRT) and runs an artifact there; the extras match requirements.txt's pins; loading an artifact imports its
own runtime alone."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# what loading and stepping an artifact imports from site-packages, per runtime: for ONNX numpy, onnxruntime,
# and onnx for the load-time trust check (graphopt.trust) with onnx's own imports (protobuf, ml_dtypes,
# typing_extensions); for TFLite numpy and LiteRT (with flatbuffers), no TensorFlow
RUNTIME_FILES = {
    "onnx": ["numpy", "numpy.libs", "onnxruntime", "onnx", "google/protobuf", "google/_upb", "ml_dtypes",
             "typing_extensions.py"],
    "tflite": ["numpy", "numpy.libs", "ai_edge_litert", "flatbuffers"],
}
# what must not be importable there: the other runtimes and everything building needs
ABSENT = {"onnx": ["jax", "jaxlib", "tensorflow", "torch", "keras", "scipy", "ai_edge_litert", "h5py", "einops",
                   "rppg"],
          "tflite": ["jax", "jaxlib", "tensorflow", "torch", "keras", "scipy", "onnx", "onnxruntime", "h5py",
                     "einops", "rppg"]}


def _source_packages() -> set[str]:
    """Every package of the source tree (a folder with __init__.py), as the wheel must name it."""
    roots = {"graphopt": ROOT / "graphopt", "graphopt.models": ROOT / "models", "graphopt.passes": ROOT / "passes"}
    out = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if "__pycache__" not in rel:
                out.add(".".join((name, *rel)))
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel . --no-deps` of a copy of the source tree (setuptools writes build/ and *.egg-info beside the
    sources; the checkout is left alone), with this venv's setuptools (no build isolation: offline, fast)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("graphopt", "models", "passes"):
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    for f in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("graphopt-*.whl")
    return whl


def test_the_wheel_holds_every_package_the_license_and_the_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == _source_packages(), packages ^ _source_packages()
    assert {"graphopt.frontends.onnx.ops", "graphopt.models", "graphopt.passes", "graphopt.targets",
            "graphopt.ir"} <= packages
    for folder, prefix in (("graphopt", "graphopt"), ("models", "graphopt/models"), ("passes", "graphopt/passes")):
        for f in (ROOT / folder).rglob("*.py"):  # every module, not only the packages' __init__
            assert f"{prefix}/{f.relative_to(ROOT / folder).as_posix()}" in names, f
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in meta
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", meta, re.M))
    assert {"onnx", "tflite", "xla", "torch", "tf", "tensorrt", "build", "all"} <= extras
    assert re.findall(r"^Requires-Dist: ([^;\n]+)$", meta, re.M) == ["numpy>=2.0"]  # the rest is in extras


def test_the_license_is_mit_by_the_graphopt_authors():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the graphopt authors" in text
    assert PYPROJECT["project"]["license"] == "MIT" and PYPROJECT["project"]["license-files"] == ["LICENSE"]


def _requirements(extra: str) -> list[str]:
    """An extra's requirements, extras of graphopt itself ("graphopt[a,b]") expanded."""
    out = []
    for r in PYPROJECT["project"]["optional-dependencies"][extra]:
        m = re.fullmatch(r"graphopt\[(.+)\]", r)
        out += [x for e in m.group(1).split(",") for x in _requirements(e.strip())] if m else [r]
    return out


def test_the_extras_agree_with_the_pins_in_requirements_txt():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    extras = PYPROJECT["project"]["optional-dependencies"]
    checked = 0
    for extra in extras:
        for req in map(Requirement, PYPROJECT["project"]["dependencies"] + _requirements(extra)):
            name = canonicalize_name(req.name)
            if name in pins:
                assert req.specifier.contains(pins[name]), f"[{extra}] {req} excludes the pinned {name}=={pins[name]}"
                checked += 1
            else:  # only GPU TensorRT is not pinned: it cannot be installed on the CPU machines the pins are for
                assert name == "tensorrt", f"[{extra}] {req} is not pinned in requirements.txt"
    assert checked > 20
    build = {canonicalize_name(Requirement(r).name) for r in _requirements("build")}
    assert {"jax", "jaxlib", "keras", "tensorflow-cpu", "onnx", "scipy"} <= build
    everything = {canonicalize_name(Requirement(r).name) for r in _requirements("all")}
    for extra in ("build", "onnx", "tflite", "xla", "torch", "tf"):
        assert {canonicalize_name(Requirement(r).name) for r in _requirements(extra)} <= everything


RUN = """
import importlib.util, json, sys
import numpy as np
import graphopt
s = graphopt.load(sys.argv[1])
outs = [np.asarray(s.step(np.full(s.frame_shape, 0.1 * (i + 1), np.float32))).ravel().tolist() for i in range(5)]
print(json.dumps({"graphopt": graphopt.__file__, "outs": outs, "path": sys.path,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {ABSENT}),
                  "findable": [m for m in {ABSENT} if importlib.util.find_spec(m) is not None]}))
"""


@pytest.mark.parametrize("target", list(RUNTIME_FILES))
def test_the_wheel_installs_into_a_fresh_venv_and_runs_an_artifact_with_only_its_runtime(wheel, tmp_path, target):
    """A venv without system site-packages, the wheel installed with --no-deps (no index), and one .pth
    naming a folder that holds only links to the runtime's packages from this venv (numpy, onnxruntime and
    onnx; numpy and LiteRT): the installed graphopt, not the checkout, loads and steps an artifact there, and
    jax, TensorFlow, torch, Keras, scipy and the other runtime cannot even be found."""
    from graphopt.targets import module_for
    ok, why = module_for(target).available()
    if not ok:
        pytest.skip(why)
    venv, deps = tmp_path / "venv", tmp_path / "deps"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    here = Path(np.__file__).resolve().parent.parent  # this venv's site-packages
    for rel in RUNTIME_FILES[target]:
        if (here / rel).exists():
            (deps / rel).parent.mkdir(parents=True, exist_ok=True)
            (deps / rel).symlink_to(here / rel)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "runtime-only.pth").write_text(str(deps) + "\n")
    assert (venv / "bin" / "graphopt").is_file()  # the console script

    artifact = build_tiny(target, tmp_path / f"tiny-{target}").path.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    code = RUN.replace("{ABSENT}", repr(ABSENT[target]))
    r = subprocess.run([str(py), "-I", "-c", code, str(artifact)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(got["graphopt"]).resolve().is_relative_to(site.resolve()), got["graphopt"]  # the wheel's copy
    assert not any(str(ROOT) in p or p.startswith(str(here)) for p in got["path"]), got["path"]
    assert got["loaded"] == [] and got["findable"] == []
    import graphopt  # the same artifact here gives the same numbers
    s = graphopt.load(artifact)
    want = [np.asarray(s.step(np.full(s.frame_shape, 0.1 * (i + 1), np.float32))).ravel().tolist() for i in range(5)]
    assert got["outs"] == want


LOAD_AND_STEP = """
import sys
import numpy as np
import graphopt
s = graphopt.load(sys.argv[1])
s.step(np.full(s.frame_shape, 0.5, np.float32))
print(*[m in sys.modules for m in ("tensorflow", "jax", "torch", "keras")])
"""
# target -> (tensorflow, jax, torch, keras) imported by loading and stepping one of its artifacts
RUNTIME_ONLY = {"onnx": (False, False, False, False), "tflite": (False, False, False, False),
                "xla": (False, True, False, False), "torch": (False, False, True, False)}


@pytest.mark.parametrize("target", list(RUNTIME_ONLY))
def test_loading_an_artifact_imports_its_runtime_alone(target, tmp_path):
    """graphopt.load of a .tflite runs in LiteRT without importing TensorFlow (seconds, and its log on stderr);
    each target's Stream imports its own runtime and no other."""
    from graphopt.targets import module_for
    ok, why = module_for(target).available()
    if not ok:
        pytest.skip(why)
    artifact = build_tiny(target, tmp_path / target).path.parent
    r = subprocess.run([sys.executable, "-c", LOAD_AND_STEP, str(artifact)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = tuple(w == "True" for w in r.stdout.split()[-4:])
    assert got == RUNTIME_ONLY[target], dict(zip(("tensorflow", "jax", "torch", "keras"), got))
    if target == "tflite":
        # LiteRT's own one line is all stderr gets (TensorFlow logs its oneDNN and CPU-feature notes on import)
        assert [line for line in r.stderr.splitlines() if "XNNPACK delegate" not in line] == [], r.stderr
