"""The target registry: every target module declares a Target (name, backend, capabilities), and the
pass pipeline is chosen from those capabilities, never from target names (issue 14, first step)."""
from __future__ import annotations

import dataclasses

import pytest

from graphopt import targets
from graphopt.passes import LOWERINGS, PASSES, lowerings_for, pipeline_for
from graphopt.targets import Capabilities


@pytest.mark.parametrize("name", targets.names())
def test_every_target_declares_itself(name):
    t = targets.get(name)
    assert t.name == name and t.backend and t.emits
    module = targets.module_for(name)
    assert all(callable(getattr(module, f, None)) for f in ("available", "emit", "open_stream"))


# each capability and the pass that asks for it
ASKED_BY = {"channels_first_convs": ("state-layout", True), "onnx_ops": ("onnx-forms", True),
            "native_transcendentals": ("raise-math", True), "sequential_sums": ("split-long-reductions", True),
            "input_dilated_convs": ("expand-lhs-dilation", False)}


@pytest.mark.parametrize("cap", [f.name for f in dataclasses.fields(Capabilities)])
def test_each_capability_turns_its_pass_on_or_off(cap):
    pass_name, when = ASKED_BY[cap]
    for value in (True, False):
        caps = dataclasses.replace(Capabilities(), **{cap: value})
        chosen = pipeline_for(caps) + lowerings_for(caps)
        assert (pass_name in chosen) == (value == when), (cap, value, chosen)


def test_pipelines_follow_the_declared_capabilities():
    assert "state-layout" in pipeline_for("onnx") and "state-layout" not in pipeline_for("xla")
    assert lowerings_for("xla") == [] and lowerings_for("tflite") == LOWERINGS
    for name in targets.names():  # every pass that runs suits the target by what it declares
        caps = targets.get(name).caps
        for p in pipeline_for(name) + lowerings_for(name):
            assert PASSES[p].suits is None or PASSES[p].suits(caps)


def test_release_variants_come_from_the_descriptors():
    from types import SimpleNamespace

    from graphopt.release import default_variants
    variants = targets.release_variants()
    assert list(variants) == ["onnx", "xla", "tflite", "tflite-io", "tflite-fp16", "tflite-int8",
                              "tflite-int8-dynamic", "tf", "torch", "torch-compile", "tensorrt", "iree", "onnx-web",
                              "litert-web"]
    assert variants["tflite-io"] == ("tflite", targets.Variant("tflite-io", {"state_mode": "io"}, needs_state=True))
    assert all(t in targets.MODULES for t, _ in variants.values())
    # a model without state has no io/variables distinction: no variant that carries the state as I/O
    assert default_variants(SimpleNamespace(initial_state=[])) == [n for n in variants if n != "tflite-io"]
    assert default_variants(SimpleNamespace(initial_state=[1])) == list(variants)


def test_one_unsupported_op_error_for_every_target(tmp_path):
    """Every lowering raises targets.UnsupportedOpError (a ValueError), and build reports it as a build error
    naming the target."""
    from graphopt.ir import Graph, TensorType
    from graphopt.targets import UnsupportedOpError, jax_lowering, onnx, tf_lowering, torch_lowering
    assert {m.UnsupportedOpError for m in (jax_lowering, onnx, tf_lowering, torch_lowering)} == {UnsupportedOpError}
    g = Graph(name="pool4")  # a pool over four axes: onnx and torch pool at most three
    x = g.add_input("frame", TensorType((3, 4, 5, 6), "float32"))
    g.outputs, g.output_names = [g.op("pool", x, mode="max", window=(2, 2, 2, 2), strides=(1, 1, 1, 1),
                                      pads=((0, 0),) * 4)], ["y"]
    with pytest.raises(UnsupportedOpError, match="at most 3"):
        onnx.to_onnx(g)
    assert issubclass(UnsupportedOpError, ValueError)


# ---- a new target is one module: the commands read its descriptor and hooks ----------------------------

def _add_fake_target(monkeypatch, **fields):
    """Register a target the way a new module would: a module declaring TARGET, named in MODULES."""
    import sys
    import types
    mod = types.ModuleType("graphopt.targets._fake")
    mod.TARGET = targets.Target("fake", emits="a fake artifact", backend="fake runtime", **fields)
    mod.available = lambda: (True, "")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(targets.MODULES, "fake", "_fake")
    return mod


FAKE_OPTION = targets.Option("--fake-level", "how fake the artifact is (0-9, default 1)", kind=int, range=(0, 9),
                             default=1)


def test_a_new_target_brings_its_own_build_flags(monkeypatch, capsys, tmp_path):
    from graphopt import cli
    _add_fake_target(monkeypatch, options=(FAKE_OPTION,))
    assert cli.main(["build", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--fake-level FAKE_LEVEL fake: how fake the artifact is (0-9, default 1)" in out
    assert "litert-web or fake" in out  # --target's help lists it, after the registered targets
    assert "--opt-level OPT_LEVEL tensorrt: builder optimization level" in out  # the others' flags stay
    build = ["build", "--model", "facephys", "--out", str(tmp_path / "a")]
    for argv, message in ((["--target", "onnx", "--fake-level", "3"], "--fake-level applies to --target fake only"),
                          (["--target", "fake", "--state-mode", "io"], "--state-mode applies to --target tflite only"),
                          (["--target", "onnx", "--opt-level", "0"], "--opt-level applies to --target tensorrt only")):
        assert cli.main(build + argv) == cli.EXIT_USAGE
        assert capsys.readouterr().err.strip() == f"error: {message}"
    assert cli.main(build + ["--target", "fake", "--fake-level", "10"]) == cli.EXIT_USAGE
    assert "--fake-level: must be from 0 to 9" in capsys.readouterr().err
    # the values reach emit() as options, with the declared defaults
    options = lambda *argv: cli._target_options(cli._parser().parse_args(build + list(argv)))
    assert options("--target", "fake") == {"fake_level": 1}
    assert options("--target", "fake", "--fake-level", "0") == {"fake_level": 0}
    assert options("--target", "tensorrt") == {"fp16": False, "opt_level": 3}
    assert options("--target", "tflite", "--quantize", "int8") == {"quantize": "int8"}
    assert options("--target", "onnx") == {}


def test_a_new_target_in_release_bench_and_inspect(monkeypatch, capsys, tmp_path):
    from graphopt import bench, cli, release
    mod = _add_fake_target(monkeypatch, packages=("fake-runtime",), check=targets.Check("any .fake file",
                                                                                           "check a fake file"))
    mod.inspect_check = lambda path: ({"ok": path.suffix == ".fake"}, f"checked {path.name}")
    assert "fake" in targets.release_variants() and bench.backend("fake") == "fake runtime"
    assert release.tool_packages()[-2:] == ["fake-runtime", "open-rppg"]
    (tmp_path / "m.fake").write_text("x")
    assert cli.main(["inspect", "--check", "fake", str(tmp_path / "m.fake")]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == "checked m.fake"
    assert cli.main(["inspect", "--check", "fake", str(tmp_path / "m.onnx"), "--json"]) == cli.EXIT_FAILED
    assert json_out(capsys) == {"ok": False}
    assert cli.main(["inspect", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(any .onnx file with --check tensorrt) (any .fake file with --check fake)" in out
    # a target without a device part has nothing for --from to finish
    assert cli.main(["build", "--target", "fake", "--from", str(tmp_path)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == ("error: --from finishes an artifact on this machine (a TensorRT "
                                               "engine); --target fake has nothing to finish")


def json_out(capsys):
    import json
    return json.loads(capsys.readouterr().out)


def test_the_model_card_runs_each_artifact_by_its_target_hook(monkeypatch):
    from graphopt import release
    mod = _add_fake_target(monkeypatch)
    mod.card_snippet = lambda c: ["# fake runtime", f"bvp = fake.run('{c.folder}/{c.model}.fake', {', '.join(c.inputs)})"]
    r = {"model": "m", "state_tensors": 0, "inputs": [{"name": "frame", "shape": [1, 4], "dtype": "float32"}],
         "artifacts": {"onnx": {"target": "onnx", "file": "onnx/m.onnx"},
                       "tflite": {"target": "tflite", "skipped": "not installed"},  # not built: no section
                       "tflite-fp16": {"target": "tflite", "file": "tflite-fp16/m.tflite"},  # a variant: none
                       "fake": {"target": "fake", "file": "fake/m.fake"},
                       "open-rppg JAX JIT (reference)": {"target": "reference"}}}
    lines = release._run_snippets(r)
    assert [s.splitlines()[0] for s in "\n".join(lines[3:-1]).strip().split("\n\n")] == [
        "# onnxruntime", "# fake runtime", "# or, with graphopt installed, any of them:"]
    assert "bvp = fake.run('fake/m.fake', frame)" in lines and "s = ort.InferenceSession('onnx/m.onnx')" in lines
    assert lines[-2] == "stream = graphopt.load('onnx'); bvp = stream.step(frame)"


# ---- nothing outside graphopt/targets/ names a target ------------------------------------------------------

# files that may still hold a target's name in a string literal, and why
ALLOWED_MENTIONS = {
    # checks each file format before the library that reads it runs; names libraries (torch, tf, onnx)
    "graphopt/trust.py": {"torch", "tf", "onnx"},
    # a baseline is a foreign ONNX or TFLite step model, run on that target's runtime: its Stream's manifest
    # names the target (bench then looks the backend up in the registry)
    "graphopt/baseline.py": {"onnx", "tflite"},
    # the ONNX file format (source["format"] of an imported model)
    "graphopt/frontends/onnx/model.py": {"onnx"},
    # ONNX in, ONNX out: optimize is the onnx target's pipeline and emitter by definition
    "graphopt/optimize.py": {"onnx"},
    # library names: the loggers the console quiets, the library versions a cached trace depends on
    "graphopt/console.py": {"torch", "onnx"},
    "graphopt/trace_cache.py": {"onnx"},
}


def _string_literals(path):
    """(line, text) of every string literal in a Python file but its docstrings (prose may name targets)."""
    import ast
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_outside_targets_names_a_target():
    """A target's or release variant's name as a word in a string literal ("onnx", 'tflite/...', "--target
    tensorrt") outside graphopt/targets/; a file suffix (".onnx") or a module path (torch.export) is not one."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    words = sorted(set(targets.MODULES) | set(targets.release_variants()), key=len, reverse=True)
    name = re.compile(r"(?<![\w.\-])(" + "|".join(map(re.escape, words)) + r")(?![\w\-]|\.\w)")
    files = [p for p in (root / "graphopt").rglob("*.py") if "targets" not in p.relative_to(root).parts]
    files += list((root / "passes").glob("*.py")) + list((root / "models").glob("*.py"))
    found = []
    for path in sorted(files):
        rel = path.relative_to(root).as_posix()
        for line, text in _string_literals(path):
            found += [f"{rel}:{line}: {m!r} in {text[:60]!r}" for m in name.findall(text)
                      if m not in ALLOWED_MENTIONS.get(rel, ())]
    assert not found, "target names outside graphopt/targets/ (ask the registry):\n" + "\n".join(found)
