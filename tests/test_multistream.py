"""Multi-stream artifacts (build --streams N, graphopt.load_multi): each stream verified against the one-stream
reference on its own clip on every CPU target; slots added, removed and reset without touching the others; a
bad frame or a NaN step in one slot leaves the others running; hostile manifests refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphopt
from graphopt import artifact as art
from graphopt.builder import build
from graphopt.multistream import MultiStreamSpec, batched_shape, load_multi, split, stack
from graphopt.spec import SpecError
from graphopt.stream import FrameError

from conftest import cli_error

N = 4
CPU_TARGETS = ["onnx", "xla", "tflite", "tf", "torch"]


def make_spec(name="conv_ema"):
    """A conv over the frame, a mean per channel carried as an EMA with dt (so dt per stream matters)."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(3, 3, 3, 4)) * 0.3).astype(np.float32)

    def step(frame, dt, state):
        y = jax.lax.conv_general_dilated(frame, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        m = jnp.mean(jnp.tanh(y), axis=(1, 2))  # (1, 4)
        new = state + jnp.minimum(dt * 3.0, 1.0) * (m - state)
        return jnp.sum(new, axis=-1) + 0.1 * jnp.mean(frame[..., 1]), new

    return graphopt.ModelSpec(name=name, fn=step, inputs={"frame": np.zeros((1, 12, 12, 3), np.float32),
                                                          "dt": np.float32(1 / 30)},
                              state=np.zeros((1, 4), np.float32), outputs=["bvp"], dt_input="dt", pulse_output="bvp")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The spec with N streams on every CPU target (exact passes, verified at build), and with one stream."""
    out = tmp_path_factory.mktemp("multistream")
    spec = make_spec()
    arts = {t: build(spec, t, out / t, streams=N, exact=True, frames=96, log=lambda m: None) for t in CPU_TARGETS}
    one = build(spec, "onnx", out / "one", exact=True, frames=96, log=lambda m: None)
    return spec, arts, one


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_every_stream_matches_the_one_stream_reference(built, target):
    _, arts, _ = built
    m = arts[target].manifest
    eq = m["equivalence"]
    assert eq["verified"] and eq["streams"] == N and eq["tier"] == "rounding", eq
    per = eq["per_stream"]
    assert len(per) == N and all(p["tier"] == "rounding" for p in per)
    assert len({p["clip_hr_bpm"] for p in per}) == N  # each stream ran a clip of its own
    assert m["streams"] == {"n": N, "inputs": [[1, 12, 12, 3], []], "outputs": [[1]], "state": [[1, 4]],
                            "batched_by": "graphopt.ir.batching"}
    assert [i["shape"] for i in m["inputs"]] == [[N, 12, 12, 3], [N]]
    assert m["outputs"][0]["shape"] == [N]


def _frames(seed, n=12):
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 12, 12, 3)).astype(np.float32)


def _one_stream_run(path, frames, dts):
    s = art.load(path)
    return [float(np.asarray(s.step(f, d)).ravel()[0]) for f, d in zip(frames, dts)], s.state


@pytest.mark.parametrize("target", ["onnx", "tflite", "torch"])
def test_slots_are_independent(built, target):
    """Interleaved, idle and reset slots: each slot's outputs equal the one-stream artifact on that slot's frames."""
    _, arts, one = built
    ms = load_multi(arts[target].path)
    a, b, c = ms.add(), ms.add(), ms.add()
    assert (a, b, c) == (0, 1, 2) and ms.active == [0, 1, 2]
    fa, fb = _frames(1), _frames(2)
    da, db = [1 / 30] * 12, [1 / 15] * 12
    got_a, got_b = [], []
    for t in range(12):
        frames = {a: fa[t]}
        if t % 3 != 1:  # b skips every third step: its state must stay put then
            frames[b] = fb[len(got_b)]
        out = ms.step(frames, dt={a: da[t], **({b: db[0]} if b in frames else {})})
        got_a.append(float(out[a][0]))
        if b in out:
            got_b.append(float(out[b][0]))
        assert c not in out
    want_a, state_a = _one_stream_run(one.path, fa, da)
    want_b, state_b = _one_stream_run(one.path, fb[:len(got_b)], db[:len(got_b)])
    np.testing.assert_allclose(got_a, want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ms.state(a)[0], state_a[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ms.state(b)[0], state_b[0], rtol=1e-5, atol=1e-6)
    assert not np.any(ms.state(c)[0])  # never stepped: the initial state

    ms.reset(a)  # a starts over; b goes on untouched
    before_b = ms.state(b)[0].copy()
    assert not np.any(ms.state(a)[0])
    np.testing.assert_array_equal(ms.state(b)[0], before_b)
    first = ms.step({a: fa[0]}, dt=da[0])[a]
    assert float(first[0]) == pytest.approx(want_a[0], rel=1e-5, abs=1e-6)

    ms.remove(b)
    assert ms.active == [0, 2]
    with pytest.raises(KeyError, match="not in use"):
        ms.step({b: fb[0]})
    assert ms.add() == 1 and not np.any(ms.state(1)[0])  # a re-added slot starts from the initial state


def test_bad_frame_in_one_slot_leaves_the_others(built):
    _, arts, one = built
    ms = load_multi(arts["onnx"].path)
    a, b = ms.add(), ms.add()
    f = _frames(3)
    ms.step({a: f[0], b: f[0]})
    before_b = ms.state(b)[0].copy()
    nan = f[1].copy()
    nan[0, 0, 0, 0] = np.nan
    out = ms.step({a: f[1], b: nan})
    assert set(out) == {a} and "NaN" in ms.refused[b]
    np.testing.assert_array_equal(ms.state(b)[0], before_b)
    out = ms.step({a: f[2], b: np.zeros((5, 5, 3), np.float32)})
    assert set(out) == {a} and "takes (1, 12, 12, 3)" in ms.refused[b]
    out = ms.step({a: f[3], b: f[1][0]})  # a frame without its batch of one is taken too
    assert set(out) == {a, b} and ms.refused == {}
    huge = np.full((1, 12, 12, 3), 3e38, np.float32)  # finite, but the step overflows: refused, state kept
    before_a = ms.state(a)[0].copy()
    out = ms.step({a: huge, b: f[2]})
    assert set(out) == {b} and "NaN/Inf" in ms.refused[a]
    np.testing.assert_array_equal(ms.state(a)[0], before_a)
    out = ms.step({a: f[0], b: f[3]}, dt={a: -1.0})  # a bad dt refuses its own slot only
    assert set(out) == {b} and "dt must be a positive number" in ms.refused[a]
    np.testing.assert_array_equal(ms.state(a)[0], before_a)
    with pytest.raises(FrameError, match="mapping slot -> frame"):
        ms.step([f[0]])
    with pytest.raises(FrameError, match="has no frame in this step"):
        ms.step({a: f[0]}, dt={b: 0.1})
    with pytest.raises(FrameError, match="one number or a mapping"):
        ms.step({a: f[0]}, dt=np.full(N, 0.1))
    out = ms.step({a: f[0], b: (f[1] * 255).astype(np.uint8)})  # as a one-stream Stream refuses it
    assert set(out) == {a} and "uint8" in ms.refused[b]


def test_full_and_wrong_artifact(built):
    _, arts, one = built
    ms = load_multi(arts["xla"].path)
    for _ in range(N):
        ms.add()
    with pytest.raises(RuntimeError, match=f"all {N} streams"):
        ms.add()
    with pytest.raises(art.ArtifactError, match="one stream per step"):
        load_multi(one.path)


def test_the_batched_stream_takes_one_dt_or_one_per_stream(built):
    _, arts, _ = built
    s = art.load(arts["onnx"].path)
    frames = np.repeat(_frames(4)[0], N, axis=0)
    y1 = s.step(frames, 1 / 30)
    s.reset()
    y2 = s.step(frames, np.full(N, 1 / 30))
    np.testing.assert_array_equal(y1, y2)
    s.reset()
    y3 = s.step(frames, [1 / 30, 1 / 10, 1 / 30, 1 / 30])
    assert y3[0] == y1[0] and y3[1] != y1[1]  # stream 1's dt moved stream 1 only
    with pytest.raises(FrameError, match=f"one number or {N} numbers"):
        s.step(frames, [1 / 30] * (N + 1))


def test_tflite_with_the_state_inside_is_refused_by_load_multi(tmp_path):
    a = build(make_spec(), "tflite", tmp_path / "v", streams=2, target_options={"state_mode": "variables"},
              frames=64, log=lambda m: None)
    assert a.manifest["tflite"]["state_mode"] == "variables"
    with pytest.raises(art.ArtifactError, match="--state-mode io"):
        load_multi(a.path)


def test_stack_and_split_round_trip():
    assert batched_shape((1, 36, 36, 3), 8) == (8, 36, 36, 3)
    assert batched_shape((), 8) == (8,)
    assert batched_shape((2, 5), 3) == (3, 2, 5)
    vals = [np.full((2, 5), i, np.float32) for i in range(3)]
    assert [v[0, 0] for v in split(stack(vals, (2, 5), 3), (2, 5))] == [0, 1, 2]


def test_spec_errors():
    with pytest.raises(SpecError, match="--streams must be a whole number"):
        MultiStreamSpec(make_spec(), 0)
    with pytest.raises(SpecError, match="already has 2 streams"):
        MultiStreamSpec(MultiStreamSpec(make_spec(), 2), 2)


def test_cli_build_and_verify(built, tmp_path, capsys):
    _, arts, _ = built
    assert "argument --streams: must be from 1 to 1024" in cli_error(capsys, "build", "--model", "facephys", "--target", "onnx", "--out",
                                         str(tmp_path / "x"), "--streams", "0")


def test_fps_with_streams_bakes_one_dt_for_all(tmp_path):
    """--fps with --streams: dt is a constant of the one-stream graph (what follows from it folds as in a
    one-stream --fps build), the artifact refuses another dt, and every stream still verifies."""
    a = build(make_spec(), "onnx", tmp_path / "f", streams=3, fps=25, exact=True, frames=64, log=lambda m: None)
    m = a.manifest
    assert m["fixed_inputs"] == {"dt": pytest.approx(0.04)} and m["equivalence"]["tier"] == "rounding"
    ms = load_multi(a.path)
    s = ms.add()
    assert set(ms.step({s: _frames(5)[0]})) == {s}
    with pytest.raises(FrameError, match="built for dt = 0.04"):
        ms.step({s: _frames(5)[1]}, dt=1 / 30)
    ms.step({s: _frames(5)[1]}, dt={s: 1 / 30})  # for one slot: that slot is refused, the call goes on
    assert "built for dt = 0.04" in ms.refused[s]


def _tamper(folder, tmp_path, change):
    import shutil
    dst = tmp_path / "tampered"
    shutil.copytree(folder, dst)
    mpath = next(dst.glob("*.manifest.json"))
    m = json.loads(mpath.read_text())
    change(m)
    mpath.write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("change, message", [
    (lambda m: m["streams"].update(n=3), "do not make the tensor's shape"),
    (lambda m: m["streams"].update(n=True), "n must be a count"),
    (lambda m: m["streams"].update(state=[[1, 4], [2]]), "one per-stream shape"),
    (lambda m: m["streams"].update(inputs="x"), "one per-stream shape"),
    (lambda m: m.update(streams=[4]), "must be an object"),
    (lambda m: m["streams"]["outputs"].__setitem__(0, [1, -1]), "at most 16 dimensions"),
    (lambda m: m["streams"]["inputs"].__setitem__(0, [12, 12, 3, 1]), "do not make the tensor's shape"),
])
def test_hostile_streams_record(built, tmp_path, capsys, change, message):
    _, arts, _ = built
    folder = _tamper(arts["onnx"].path.parent, tmp_path, change)
    with pytest.raises(art.ArtifactError, match=message):
        art.load(folder)
    assert message in cli_error(capsys, "verify", str(folder))


def test_an_onnx_file_gets_streams_too(built, tmp_path):
    """An ONNX model (no JAX step) is batched in the IR: its streams verified against onnxruntime on the file."""
    _, _, one = built
    a = build(str(one.path), "tflite", tmp_path / "t", streams=3, frames=64, log=lambda m: None)
    m = a.manifest
    assert m["streams"]["n"] == 3 and m["streams"]["batched_by"] == "graphopt.ir.batching"
    assert m["equivalence"]["tier"] == "rounding" and len(m["equivalence"]["per_stream"]) == 3
    assert "onnxruntime" in m["equivalence"]["reference"]


def test_ir_batching_matches_one_stream_runs():
    """The IR transform on the FacePhys-like ops of the spec, and on an op it cannot batch."""
    from graphopt.ir.batching import NotBatchable, batch_graph, check_batched
    spec = make_spec()
    g = spec.trace()
    for n in (1, 3):
        b = batch_graph(g, n)
        assert [v.shape for v in b.inputs] == [(n, 12, 12, 3), (n,)]
        assert check_batched(g, b, n) < 1e-6
    assert MultiStreamSpec(spec, 2).trace().meta["streams"]["batched_by"] == "graphopt.ir.batching"
    import jax

    def weird(x, v):  # a pad whose padding value is the state: not batched in the IR, left to jax.vmap
        y = jax.lax.pad(x, v, [(0, 0, 0), (1, 1, 0)])
        return y.sum(axis=1), v * 0.5 + x.mean()
    odd = graphopt.ModelSpec(name="odd", fn=weird, inputs={"x": np.ones((1, 3), np.float32)},
                             state=np.float32(0.25), frame_input=None)
    with pytest.raises(NotBatchable, match="per-stream padding value"):
        batch_graph(odd.trace(), 2)
    graph = MultiStreamSpec(odd, 2).trace()
    assert graph.meta["streams"]["batched_by"] == "jax.vmap (pad with a per-stream padding value)"
    assert [v.shape for v in graph.inputs] == [(2, 3)]


def test_too_many_streams_for_an_artifact_are_refused_before_the_trace():
    with pytest.raises(SpecError, match="use at most --streams"):
        MultiStreamSpec(graphopt.ModelSpec(name="big", fn=lambda x, s: (x + s.sum(), s),
                                           inputs={"x": np.zeros((1, 4), np.float32)},
                                           state=np.zeros((1, 1 << 16), np.float32), frame_input=None), 600)


def test_strided_slices_of_the_batch_of_one_batch_in_the_ir():
    from graphopt.ir.batching import batch_graph, check_batched

    def fn(x):
        return (x[::2, ::2, ::3] * 2.0,)
    g = graphopt.ModelSpec(name="sl", fn=fn, inputs={"x": np.zeros((1, 12, 12, 3), np.float32)}).trace()
    b = batch_graph(g, 3)
    assert b.outputs[0].shape == (3, 6, 4, 3) and check_batched(g, b, 3) == 0.0


def test_bench_rows_for_streams_and_variants():
    """graphopt bench --streams and --variants: multi-stream rows count every stream's frames and give the live
    30-FPS streams per core and the gain over the same target with one stream; a release variant (here the
    dynamic-range int8 build) is a row of its own; all in one interleaved run with the reference."""
    from graphopt import bench
    result = bench.run(make_spec("conv_bench"), targets=["onnx"], streams=[2], variants=["tflite-int8-dynamic"],
                       rounds=1, steps_per_round=5, unfused=False, log=lambda m: None)
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"graphopt onnx fused", "graphopt onnx x2", "graphopt tflite-int8-dynamic",
                         "conv_bench JAX JIT (reference)", "conv_bench JAX JIT (reference) x2 (jax.vmap)"}
    x2 = rows["graphopt onnx x2"]
    assert x2["streams"] == 2 and x2["live_streams_30fps"] == pytest.approx(x2["fps"] / 30)
    assert x2["x_one_stream"] == pytest.approx(x2["fps"] / rows["graphopt onnx fused"]["fps"])
    assert rows["graphopt tflite-int8-dynamic"]["target"] == "tflite"
    md = bench.markdown(result)
    assert "| graphopt onnx x2 | 2 |" in md and "live 30-FPS streams per core" in md
    with pytest.raises(art.ArtifactError, match="is not a release variant"):
        bench.run(make_spec("conv_bench"), targets=["onnx"], variants=["nope"], log=lambda m: None)
