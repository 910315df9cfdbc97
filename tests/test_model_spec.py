"""The public model API: graphopt.ModelSpec, --model FILE.py:FUNC, graphopt.build, named Streams (issue 15)."""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphopt
from graphopt import ModelSpec, cli
from graphopt.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
CPU_TARGETS = ["onnx", "xla", "tflite", "tf", "torch"]


def readme_model(tmp_path: Path) -> Path:
    """The README's worked example, written out as the user would save it."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n# my_model\.py\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "my_model.py"
    path.write_text(code)
    return path


def load_module(path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"user_{path.stem}_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    path = readme_model(tmp_path_factory.mktemp("readme"))
    return path, load_module(path)


def build_error(capsys, *argv) -> str:
    """A build that fails on bad input: exit 2, the progress lines it printed, then one `error:` line."""
    code = cli.main(list(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines
    assert all(line.startswith(("[", " ")) for line in lines[:-1]), lines  # progress only
    return lines[-1]


def reference_outputs(spec: ModelSpec, feeds: list[dict]):
    """The spec's fn under jax.jit, state carried: per step, the outputs as a list."""
    step = spec.reference()
    state, got = spec.state_leaves, []
    for f in feeds:
        outs, state = step(*(f[n] for n in spec.inputs), *state)
        got.append([np.asarray(o) for o in outs])
    return got, [np.asarray(s) for s in state]


# ---- the README's example on every CPU target ----------------------------------------------------------


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_readme_example_builds_verifies_and_runs_on_every_cpu_target(readme, target, tmp_path, capsys):
    path, module = readme
    out = tmp_path / "a"
    assert cli.main(["build", "--model", f"{path}:spec", "--target", target, "--out", str(out), "--frames", "64"]) == 0
    err = capsys.readouterr().err
    assert "tier reached      rounding (claimed: rounding)" in err
    assert "heart rate [pulse]" in err and "heart rate [features]" not in err  # the HR criterion: pulse only
    assert cli.main(["verify", str(out), "--model", f"{path}:spec", "--frames", "64", "--json"]) == 0
    stream = graphopt.load(out)
    assert stream.input_names == ["frame", "dt"] and stream.output_names == ["pulse", "features"]
    spec = module.spec()
    rng = np.random.default_rng(1)
    feeds = [{"frame": rng.random((1, 1, 8, 8, 3), dtype=np.float32), "dt": np.float32(1 / 30 + 0.01 * i)}
             for i in range(5)]
    want, want_state = reference_outputs(spec, feeds)
    for f, w in zip(feeds, want):
        got = stream.step(f["frame"], dt=f["dt"])  # positional frame, dt by name
        assert set(got) == {"pulse", "features"}
        assert got["pulse"].shape == (1,) and got["features"].shape == (1, 2)
        np.testing.assert_allclose(got["pulse"], w[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["features"], w[1], rtol=1e-4, atol=1e-6)
    state = stream.state
    assert [s.shape for s in state] == [(1, 16), ()]  # pytree leaves in order, a 0-d state kept 0-d
    np.testing.assert_allclose(state[0], want_state[0], rtol=1e-4, atol=1e-6)
    assert float(state[1]) == 5.0


def test_python_build_takes_a_spec_object_and_names_every_input_and_output(readme, tmp_path):
    _, module = readme
    a = graphopt.build(module.spec(), target="onnx", out=tmp_path / "a", frames=64, log=lambda m: None)
    m = a.manifest
    assert [(i["name"], i["role"]) for i in m["inputs"]] == [("frame", "frame"), ("dt", "dt")]
    assert [(o["name"], o.get("role")) for o in m["outputs"]] == [("pulse", "pulse"), ("features", None)]
    assert m["equivalence"]["tier"] == "rounding" and set(m["equivalence"]["outputs"]) == {"pulse", "features"}
    assert re.fullmatch(r"[0-9a-f]{64}", m["source"]["fingerprint"])
    s = graphopt.load(a.path)
    by_name = s.step(frame=np.full((8, 8, 3), 0.5, np.float32), dt=0.05)  # squeezed frame, all by name
    s.reset()
    positional = s.step(np.full((1, 1, 8, 8, 3), 0.5, np.float32), 0.05)
    np.testing.assert_array_equal(by_name["features"], positional["features"])


# ---- multi-input, integer and stateless models ------------------------------------------------------


def two_input_spec() -> ModelSpec:
    import jax.numpy as jnp
    table = np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4)
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10

    def fn(ids, x):
        emb = jnp.take(table, ids, axis=0).sum(axis=1)  # [2, 4]
        return jnp.tanh(emb * x) @ w
    return ModelSpec(name="embed", fn=fn, inputs={"ids": np.zeros((2, 5), np.int32),
                                                  "x": np.zeros((2, 4), np.float32)}, input_range=(0, 10))


def test_stateless_model_with_an_integer_input(tmp_path):
    spec = two_input_spec()
    a = graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert a.manifest["state"] == [] and a.manifest["outputs"][0]["name"] == "out0"
    assert a.manifest["equivalence"]["tier"] == "rounding"
    s = graphopt.load(a.path)
    ids = np.array([[1, 2, 3, 4, 5], [9, 0, 0, 9, 1]], np.int32)
    x = np.full((2, 4), 0.3, np.float32)
    want = np.asarray(spec.reference()(ids, x)[0][0])
    np.testing.assert_allclose(s.step(ids, x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.step(x=x, ids=ids.astype(np.int64)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(graphopt.stream.FrameError, match="input ids has dtype float32; this model takes int32"):
        s.step(ids.astype(np.float32), x)
    with pytest.raises(graphopt.stream.FrameError, match="outside int32's range"):
        s.step(ids.astype(np.int64) + 2**40, x)
    with pytest.raises(graphopt.stream.FrameError, match="step\\(\\) is missing input x"):
        s.step(ids)
    with pytest.raises(graphopt.stream.FrameError, match="unknown input 'y'"):
        s.step(ids, y=x)
    with pytest.raises(graphopt.stream.FrameError, match="input x contains NaN"):
        s.step(ids, np.full((2, 4), np.nan, np.float32))


def test_clip_feeds_follow_the_roles_and_the_declared_range():
    from graphopt.equivalence import Clip
    spec = ModelSpec(name="r", fn=lambda a, b, dt, s: (a.sum() + b.sum() * dt, s),
                     inputs={"a": np.zeros((3,), np.float32), "b": np.zeros((2,), np.int32), "dt": np.float32(0.1)},
                     state=np.zeros(1, np.float32), dt_input="dt", fps=25.0, input_range=(-2, 3))
    assert spec.frame_input is None and spec.frames_per_step == 1
    feeds = Clip(frames=50, fps=25.0).feeds(spec)
    a = np.stack([f["a"] for f in feeds])
    b = np.stack([f["b"] for f in feeds])
    assert len(feeds) == 50 and a.dtype == np.float32 and b.dtype == np.int32
    assert a.min() >= -2 and a.max() <= 3 and b.min() >= -2 and b.max() <= 2
    assert all(f["dt"] == np.float32(1 / 25) for f in feeds)
    again = Clip(frames=50, fps=25.0).feeds(spec)
    assert all(np.array_equal(f["a"], g["a"]) for f, g in zip(feeds, again))  # deterministic
    moved = np.stack([f["a"] for f in Clip(frames=50, fps=25.0).feeds(spec, perturbed=True)])
    ulps = np.abs(moved.view(np.int32) - a.view(np.int32))
    assert ulps.max() == 1 and ulps.min() >= 0 and (ulps == 1).mean() > 0.9  # every float input moved one ulp


# ---- the spec contract: errors -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, says", [
    ({"name": "../x"}, "model name '../x' must be"),
    ({"inputs": {}}, "inputs must be a non-empty mapping"),
    ({"inputs": {"x": np.array(["a"])}}, "input x has dtype <U1"),
    ({"inputs": {"bad name": np.zeros(2)}}, "input name 'bad name' must be a Python identifier"),
    ({"dt_input": "t"}, "dt_input 't' is not one of the inputs"),
    ({"dt_input": "x"}, "dt_input x must be one float32 number"),
    ({"frame_input": "nope"}, "frame_input 'nope' is not one of the inputs"),
    ({"fps": 0}, "fps must be a number from 0.1 to 10000"),
    ({"input_range": (1, 1)}, "with low < high"),
    ({"outputs": ["y", "y"]}, "output names must be distinct"),
    ({"outputs": ["y"], "pulse_output": "z"}, "pulse_output 'z' is not one of the outputs"),
    ({"fn": 3}, "fn must be a callable"),
    ({"inputs": {"x": np.zeros(2, np.uint8)}}, "input x has dtype uint8; inputs must be float32, float16"),
    ({"inputs": {"state_in_0": np.zeros(2)}}, "input name 'state_in_0' must be a Python identifier"),
    ({"inputs": {"a-b": np.zeros(2)}}, "input name 'a-b' must be a Python identifier"),
    ({"outputs": ["self"]}, "output name 'self' must be a Python identifier"),
    ({"outputs": "pulse"}, "outputs must be a list of names, not str"),
    ({"inputs": {"x": np.zeros(2), "t": np.zeros((1, 1), np.float32)}, "dt_input": "t"},
     "dt_input t must be one float32 number (shape () or (1,))"),
    ({"inputs": {"f": np.zeros((1, 7, 3, 3), np.float32)}, "frame_input": "f"}, "must be float (..., S, S, 3) face"),
    ({"input_range": (0, 1e40)}, "input_range must be finite, within +-1e30"),
    ({"fps": True}, "fps must be a number"),
    ({"source": {"o": object()}}, "source must hold JSON values only"),
    ({"source": {"v": float("nan")}}, "source must hold JSON values only"),
    ({"pulse_output": 3}, "pulse_output must be a name (str) or None, got int"),
])
def test_bad_specs_name_the_field(kwargs, says):
    base = dict(name="m", fn=lambda x: x * 2, inputs={"x": np.zeros((2,), np.float32)})
    with pytest.raises(SpecError, match=re.escape(says)):
        ModelSpec(**{**base, **kwargs})


USER_FILES = {
    "python_if": """
        import numpy as np, graphopt
        def fn(x):
            if x.sum() > 0:   # Python control flow on a traced value
                return x
            return -x
        def spec():
            return graphopt.ModelSpec(name="bad", fn=fn, inputs={"x": np.zeros(3, np.float32)})
    """,
    "state_shape": """
        import numpy as np, graphopt
        def spec():
            return graphopt.ModelSpec(name="bad", fn=lambda x, s: (x, s.sum()), inputs={"x": np.zeros(3, np.float32)},
                                      state=np.zeros(3, np.float32))
    """,
    "raises": """
        def spec():
            raise RuntimeError("weights not found")
    """,
    "not_a_spec": """
        def spec():
            return 42
    """,
    "syntax": "def spec(:\n",
    "exits": """
        import sys
        def spec():
            sys.exit(0)
    """,
    "dict_out": """
        import numpy as np, graphopt
        def spec():
            return graphopt.ModelSpec(name="bad", fn=lambda x: {"b": x * 2, "a": x + 1}, inputs={"x": np.zeros(3, np.float32)})
    """,
    "import_boom": "raise ValueError('import-time boom')\n",
}


@pytest.mark.parametrize("case, says", [
    ("python_if", r"spec bad: fn does not trace with the example inputs \(\w+Error: "),
    ("state_shape", r"spec bad: fn does not trace .*state tensor 0: input \(3,\)"),
    ("raises", r"spec\(\) failed \(RuntimeError: weights not found\)"),
    ("not_a_spec", r"spec\(\) returned int, not a graphopt.ModelSpec"),
    ("syntax", r"line 1: "),
    ("exits", r"spec\(\) called sys.exit\(0\)"),
    ("dict_out", r"outputs must be an array or a tuple of arrays \(not a dict"),
    ("import_boom", r"importing .*import_boom.py failed \(ValueError: import-time boom\)"),
])
def test_a_spec_that_does_not_trace_is_a_one_line_error_and_writes_nothing(case, says, tmp_path, capsys):
    f = tmp_path / f"{case}.py"
    f.write_text(textwrap.dedent(USER_FILES[case]))
    err = build_error(capsys, "build", "--model", f"{f}:spec", "--target", "onnx", "--out", str(tmp_path / "out"))
    assert re.search(says, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ref, says", [
    ("{tmp}/none.py:spec", "is not a file"),
    ("{tmp}/ok.py:nothing", "has no function nothing"),
    ("{tmp}/ok.py:1x", "is not a Python function name"),
    ("no_such_package_xyz.mod:spec", "cannot import no_such_package_xyz.mod"),
    ("a:b:c", "is not a model name, FILE.py:FUNC"),
])
def test_bad_model_references(ref, says, tmp_path, capsys):
    (tmp_path / "ok.py").write_text("def spec():\n    pass\n")
    err = build_error(capsys, "build", "--model", ref.format(tmp=tmp_path), "--target", "onnx",
                    "--out", str(tmp_path / "out"))
    assert says in err, err


def test_package_module_reference_and_weights_flag(tmp_path, capsys, monkeypatch):
    from conftest import cli_error
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent("""
        import numpy as np, graphopt
        def small():
            return graphopt.ModelSpec(name="small", fn=lambda x: (x * 2.0, x.sum()), inputs={"x": np.zeros((4,), np.float32)},
                                      outputs=["double", "total"], input_range=(-1, 1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["build", "--model", "userpkg.models:small", "--target", "xla", "--out", str(tmp_path / "a"),
                     "--frames", "40"]) == 0
    assert "tier reached      rounding" in capsys.readouterr().err
    err = cli_error(capsys, "build", "--model", "userpkg.models:small", "--target", "onnx", "--out",
                    str(tmp_path / "b"), "--weights", __file__)
    assert "--weights and --as-published apply to facephys and physnet; userpkg.models:small carries its own" in err


def test_verify_needs_the_spec_an_artifact_was_built_from(readme, tmp_path, capsys):
    from conftest import cli_error
    path, _ = readme
    out = tmp_path / "a"
    assert cli.main(["build", "--model", f"{path}:spec", "--target", "onnx", "--out", str(out), "--no-verify"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "verify", str(out))
    assert "was built from a user's model ('leaky'); pass the spec it was built from: --model FILE.py:FUNC" in err
    other = tmp_path / "other.py"
    other.write_text(path.read_text().replace("* 0.3  # weights", "* 0.31  # weights"))
    err = cli_error(capsys, "verify", str(out), "--model", f"{other}:spec")
    assert "was built from another model than leaky (fingerprint" in err
    assert cli.main(["verify", str(out), "--model", f"{path}:spec", "--frames", "64"]) == 0


# ---- Keras -------------------------------------------------------------------------------------------


def test_from_keras_stateless_model_keeps_batch_norm_statistics_as_weights(tmp_path):
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    bn = model.layers[1]
    bn.moving_mean.assign(np.full(4, 0.1, np.float32))
    bn.moving_variance.assign(np.full(4, 2.0, np.float32))
    x = np.random.default_rng(0).random((1, 6, 6, 3), dtype=np.float32)
    spec = graphopt.from_keras(model, {"image": x}, name="kcnn", outputs=["logits"], frame_input=None)
    assert spec.state is None  # the BN statistics are not changed by an inference call
    a = graphopt.build(spec, target="tflite", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert a.manifest["equivalence"]["tier"] == "rounding"
    np.testing.assert_allclose(graphopt.load(a.path).step(x), np.asarray(model(x)), rtol=1e-4, atol=1e-5)


def test_from_keras_model_with_state_in_variables(tmp_path):
    import keras

    class RunningMean(keras.layers.Layer):
        """Holds a running mean of its input in a non-trainable variable it assigns on every call."""

        def build(self, shape):
            self.mean = self.add_weight(shape=shape[1:], initializer="zeros", trainable=False, name="mean")
            self.scale = self.add_weight(shape=shape[1:], initializer="ones", trainable=True, name="scale")

        def call(self, x):
            new = 0.9 * self.mean + 0.1 * x[0]
            self.mean.assign(new)
            return (x - new) * self.scale

    inp = keras.Input((5,))
    model = keras.Model(inp, RunningMean()(inp))
    spec = graphopt.from_keras(model, {"x": np.zeros((1, 5), np.float32)}, name="krm", outputs=["y"],
                               input_range=(-1, 1))
    assert [s.shape for s in spec.state_leaves] == [(5,)]  # the assigned variable, found automatically
    a = graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert a.manifest["equivalence"]["tier"] == "rounding" and len(a.manifest["state"]) == 1
    s = graphopt.load(a.path)
    xs = np.random.default_rng(2).uniform(-1, 1, (6, 1, 5)).astype(np.float32)
    mean = np.zeros(5, np.float32)
    for x in xs:
        mean = 0.9 * mean + 0.1 * x[0]
        np.testing.assert_allclose(s.step(x), x - mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.state[0], mean, rtol=1e-5, atol=1e-6)


# ---- verification edge cases found by attacking the API --------------------------------------------------


def test_fps_build_verifies_at_the_baked_dt(readme, tmp_path, capsys):
    path, _ = readme
    out = tmp_path / "a"
    assert cli.main(["build", "--model", f"{path}:spec", "--target", "onnx", "--out", str(out), "--fps", "25",
                     "--frames", "64"]) == 0
    assert "tier reached      rounding" in capsys.readouterr().err
    assert graphopt.load(out).fixed_dt == pytest.approx(1 / 25)
    assert cli.main(["verify", str(out), "--model", f"{path}:spec", "--frames", "64"]) == 0


def test_reference_cache_tells_input_ranges_apart(tmp_path):
    """Two specs of one function differ only by input_range: each is checked against its own reference."""
    import jax.numpy as jnp
    fn = lambda x: jnp.tanh(3.0 * x) * x
    for lo, hi in ((0.0, 1.0), (-1.0, 0.0)):
        spec = ModelSpec(name="rng", fn=fn, inputs={"x": np.zeros((4,), np.float32)}, input_range=(lo, hi))
        a = graphopt.build(spec, target="onnx", out=tmp_path / f"a{lo}", frames=40, log=lambda m: None)
        assert a.manifest["equivalence"]["tier"] == "rounding"


def test_outputs_the_one_ulp_perturbation_does_not_move_and_constant_outputs(tmp_path):
    """dt-only, integer-only and constant outputs: the floor is at least float32's eps, a constant is compared
    by its magnitude; a (1,)-shaped dt is fed in its own shape."""
    import jax.numpy as jnp

    def fn(x, ids, dt, state):
        return (jnp.exp(-dt * 3.0) * jnp.ones(2), jnp.sin(ids.astype(jnp.float32)), jnp.full((3,), 2.5),
                x * 2.0), state + dt
    spec = ModelSpec(name="odd", fn=fn, inputs={"x": np.zeros((2,), np.float32), "ids": np.zeros((3,), np.int32),
                                                 "dt": np.zeros((1,), np.float32)},
                     state=np.zeros((1,), np.float32), dt_input="dt", input_range=(0, 50))
    for target in ("onnx", "tflite", "xla"):
        a = graphopt.build(spec, target=target, out=tmp_path / target, frames=40, log=lambda m: None)
        eq = a.manifest["equivalence"]
        assert eq["tier"] in ("rounding", "signal"), eq
        assert eq["outputs"]["out2"]["nrmse"] == 0.0 and eq["outputs"]["out2"]["pearson"] == 1.0
        assert all(o["noise_floor"]["nrmse"] >= np.finfo(np.float32).eps for o in eq["outputs"].values())
        s = graphopt.load(a.path)
        assert s.step(np.ones(2), np.arange(3), dt=0.1)["out3"].tolist() == [2.0, 2.0]


def test_a_reference_that_fails_is_a_spec_error(tmp_path, capsys):
    f = tmp_path / "late.py"
    f.write_text(textwrap.dedent("""
        import numpy as np, graphopt
        calls = [0]
        def fn(x):
            calls[0] += 1
            if calls[0] > 2:   # traced by the build, for the fingerprint, then by jax.jit for the reference
                raise RuntimeError("boom on the second trace")
            return x * 2.0
        def spec():
            return graphopt.ModelSpec(name="late", fn=fn, inputs={"x": np.zeros(3, np.float32)})
    """))
    err = build_error(capsys, "build", "--model", f"{f}:spec", "--target", "onnx", "--out", str(tmp_path / "o"))
    assert "the reference (fn under jax.jit) failed on the verification clip (RuntimeError: boom" in err, err
    assert not (tmp_path / "o").exists()


def test_python_build_refuses_unknown_target_options_and_a_bool_fps(readme, tmp_path):
    from graphopt.builder import BuildUsageError
    _, module = readme
    with pytest.raises(BuildUsageError, match="target onnx takes no option state_mode; its options: quantize"):
        graphopt.build(module.spec(), target="onnx", out=tmp_path / "a", target_options={"state_mode": "io"})
    with pytest.raises(BuildUsageError, match="--fps must be a frame rate"):
        graphopt.build(module.spec(), target="onnx", out=tmp_path / "b", fps=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dt_for_a_model_without_one_names_its_inputs(tmp_path):
    spec = two_input_spec()
    s = graphopt.load(graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None).path)
    with pytest.raises(graphopt.stream.FrameError, match=r"takes no dt .*call step\(\) with ids, x only"):
        s.step(np.zeros((2, 5), np.int32), np.zeros((2, 4), np.float32), dt=0.1)


def test_tier_accepts_a_runtime_that_rounds_differently_and_records_it(tmp_path, monkeypatch):
    """An artifact whose runtime adds error beyond the rounding tier (simulated: its outputs moved by
    1e-4 of their size) fails the pipeline's claim; with tier="signal" it is written, and the manifest
    keeps the claim, the tier required and the tier reached."""
    from graphopt import artifact as art
    from graphopt.builder import BuildError, BuildUsageError
    real_load = art.load

    def noisy_load(path, *a, **k):
        s = real_load(path, *a, **k)
        run = s._run
        rng = np.random.default_rng(0)

        def _run(feeds, state):
            outs, new = run(feeds, state)
            return [o + 1e-4 * np.std(o) * rng.standard_normal(o.shape).astype(o.dtype) for o in outs], new
        s._run = _run
        return s
    monkeypatch.setattr(art, "load", noisy_load)
    spec = two_input_spec()
    with pytest.raises(BuildError, match="reaches tier signal, not the rounding tier it claims"):
        graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert not (tmp_path / "a").exists()
    lines = []
    a = graphopt.build(spec, target="onnx", out=tmp_path / "b", frames=40, tier="signal", log=lines.append)
    eq = a.manifest["equivalence"]
    assert (eq["tier_claimed"], eq["tier_required"], eq["tier"]) == ("rounding", "signal", "signal")
    assert any("below the rounding tier the pipeline claims (accepted: --tier signal)" in m for m in lines)
    with pytest.raises(BuildError, match="not the rounding tier it must reach \\(--tier\\)"):
        graphopt.build(spec, target="onnx", out=tmp_path / "c", frames=40, tier="rounding", log=lambda m: None)
    with pytest.raises(BuildUsageError, match="--tier must be one of rounding, signal, quantised, got 'close'"):
        graphopt.build(spec, target="onnx", out=tmp_path / "d", tier="close")
