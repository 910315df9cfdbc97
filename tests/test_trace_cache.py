"""The traced-IR cache (graphopt.trace_cache, graphopt.ir.serialize): a second build of a model loads its IR
instead of building and tracing it, and emits byte-identical files; damaged or foreign entries are misses;
keys change with what the trace depends on; bench traces once, reuses artifacts and cleans up after itself."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from graphopt import cli, models, trace_cache
from graphopt.builder import build
from graphopt.ir import serialize
from graphopt.spec import ModelSpec

SPEC_SOURCE = '''
import numpy as np
import jax.numpy as jnp
import graphopt

W = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))


def spec(name="ema"):
    def step(frame, dt, state):
        m = 0.9 * state + 0.1 * jnp.mean(frame, axis=(1, 2, 3, 4))[..., None] @ jnp.ones((1, 4))
        y = jnp.tanh(m @ W.T).sum(axis=-1, keepdims=True) * dt * 30
        return y, m
    return graphopt.ModelSpec(name=name, fn=step, inputs={"frame": np.zeros((1, 1, 8, 8, 3), np.float32),
                                                          "dt": np.float32(1 / 30)},
                              state=np.zeros((1, 4), np.float32), outputs=["bvp"], dt_input="dt",
                              pulse_output="bvp", param_names={id(W): "w"})


def other():
    return spec("other")
'''


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache root of the test's own (the trace cache lives under it, in trace/)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(root))
    return root


@pytest.fixture
def user_spec(tmp_path):
    path = tmp_path / "ema_model.py"
    path.write_text(SPEC_SOURCE)
    return f"{path}:spec"


def entries(root: Path) -> list[Path]:
    return sorted((root / "trace").glob("*.npz")) if (root / "trace").is_dir() else []


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def without_times(x):
    """A manifest less what differs between two builds of the same artifact: timings and the cache report."""
    if isinstance(x, dict):
        return {k: without_times(v) for k, v in x.items() if k not in ("time_s", "build_time_s", "trace")}
    if isinstance(x, list):
        return [without_times(v) for v in x]
    return x


def same_artifact(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name.endswith(".manifest.json"):
            assert without_times(json.loads(fa[name])) == without_times(json.loads(fb[name])), name
        else:
            assert fa[name] == fb[name], f"{name} differs with and without the cache"


def manifest(folder: Path) -> dict:
    return json.loads(next(Path(folder).glob("*.manifest.json")).read_text())


# ---- the IR's JSON + npz form ------------------------------------------------------------------------------

def _roundtrip(graph):
    doc, arrays = serialize.to_doc(graph)
    doc = json.loads(json.dumps(doc, allow_nan=False))  # what the cache file holds
    return serialize.from_doc(doc, {k: np.array(a) for k, a in arrays.items()})


def test_ir_roundtrip_keeps_names_types_attrs_meta_and_the_name_counter(tmp_path):
    from conftest import tiny_graph

    from graphopt.targets import module_for
    g = tiny_graph()
    g.meta.update(extra={"t": (1, 2.5, None), "nan": float("nan"), "f32": np.float32(0.1), 3: [True, "x"]})
    h = _roundtrip(g)
    assert [v.name for v in h.inputs] == [v.name for v in g.inputs] and h.output_names == g.output_names
    assert [(n.op, n.attrs, [v.name for v in n.inputs], [(v.name, v.type) for v in n.outputs]) for n in h.nodes] == \
        [(n.op, n.attrs, [v.name for v in n.inputs], [(v.name, v.type) for v in n.outputs]) for n in g.nodes]
    for a, b in zip(h.nodes, g.nodes):  # tuples stay tuples, ints ints
        assert [type(v) for v in a.attrs.values()] == [type(v) for v in b.attrs.values()]
    extra = h.meta["extra"]
    assert extra["t"] == (1, 2.5, None) and np.isnan(extra["nan"]) and extra[3] == [True, "x"]
    assert type(extra["f32"]) is np.float32 and extra["f32"] == np.float32(0.1)
    assert h._names == g._names and h.fresh_name() == g.fresh_name()
    for a, b in zip(h.params(), g.params()):
        assert a.name == b.name and a.const.dtype == b.const.dtype and not a.const.flags.writeable
        np.testing.assert_array_equal(a.const, b.const)
    for a, b in zip(h.state, g.state):
        assert a.name == b.name and a.view == b.view
        np.testing.assert_array_equal(a.init, b.init)
    del g.meta["extra"], h.meta["extra"]
    outs = []
    for i, graph in enumerate((g, h)):
        (tmp_path / str(i)).mkdir()
        module_for("onnx").emit(graph, tmp_path / str(i), {"stem": "tiny"})
        outs.append(files(tmp_path / str(i)))
    assert outs[0]["tiny.onnx"] == outs[1]["tiny.onnx"] and outs[0]["tiny.state.npz"] == outs[1]["tiny.state.npz"]


@pytest.mark.parametrize("damage", ["unknown op", "wrong output type", "bad value index", "unknown tag",
                                    "param shape", "name not claimed", "format"])
def test_a_malformed_ir_document_is_refused(damage):
    from conftest import tiny_graph
    doc, arrays = serialize.to_doc(tiny_graph())
    doc = json.loads(json.dumps(doc))
    if damage == "unknown op":
        doc["nodes"][0][0] = "os.system"
    elif damage == "wrong output type":
        out = doc["nodes"][0][3][0]
        doc["values"][out][1] = [7, 7]
    elif damage == "bad value index":
        doc["nodes"][0][1] = [10 ** 6]
    elif damage == "unknown tag":
        doc["meta"] = {"d": [["x", {"pickle": "..."}]]}
    elif damage == "param shape":
        i = next(i for i, v in enumerate(doc["values"]) if v[3] is not None)
        doc["values"][i][1] = [1 << 40, 1 << 40]
    elif damage == "name not claimed":
        doc["names"] = doc["names"][1:]
    else:
        doc["version"] = 99
    with pytest.raises(serialize.IRFormatError):
        serialize.from_doc(doc, arrays)


# ---- builds: a hit, byte-identical files, the report ---------------------------------------------------------

def test_a_second_build_of_a_spec_loads_its_ir_and_writes_the_same_files(cache, user_spec, tmp_path):
    logs = {}
    for run, use in (("first", True), ("second", True), ("no-cache", False)):
        lines = []
        build(user_spec, "onnx", tmp_path / run, cache=use, log=lines.append)
        logs[run] = "\n".join(lines)
    assert "      traced 15 nodes" in logs["first"] and "from the cache" not in logs["first"]
    assert "loaded the traced IR from the cache (" in logs["second"] and "      traced " not in logs["second"]
    assert "      traced " in logs["no-cache"]
    reports = {run: manifest(tmp_path / run)["pipeline"] for run in logs}
    assert [reports[r]["trace"]["cache"] for r in logs] == ["miss", "hit", "off"]
    for r in reports.values():  # the report has the trace's time and the build's own
        assert r["trace"]["time_s"] >= 0 and r["build_time_s"] >= r["trace"]["time_s"]
    same_artifact(tmp_path / "first", tmp_path / "second")
    same_artifact(tmp_path / "first", tmp_path / "no-cache")
    assert len(entries(cache)) == 1
    other = user_spec.replace(":spec", ":other")  # another name: another entry
    build(other, "onnx", tmp_path / "other", verify=False, log=lambda m: None)
    assert len(entries(cache)) == 2 and manifest(tmp_path / "other")["pipeline"]["trace"]["cache"] == "miss"


def test_physnet_second_build_needs_neither_the_model_nor_a_trace(cache, tmp_path, monkeypatch):
    """The acceptance case on a built-in: the second build's report says it hit the cache, in a fraction of the
    first's trace time, without building the Keras model; a new clip builds the model for its reference."""
    build("physnet", "onnx", tmp_path / "cold", frames=256, log=lambda m: None)
    cold = manifest(tmp_path / "cold")["pipeline"]

    def refuse(*a, **k):
        raise AssertionError("the model was built or traced on a cache hit")
    with monkeypatch.context() as m:
        m.setattr(models, "resolve", refuse)
        m.setattr(models, "_load", refuse)
        m.setattr(ModelSpec, "trace", refuse)
        lines = []
        build("physnet", "onnx", tmp_path / "warm", frames=256, log=lines.append)
    warm = manifest(tmp_path / "warm")["pipeline"]
    assert cold["trace"]["cache"] == "miss" and warm["trace"]["cache"] == "hit"
    assert warm["trace"]["time_s"] >= 0 and warm["build_time_s"] >= warm["trace"]["time_s"]  # the times are reported
    assert any(line.startswith("      loaded the traced IR from the cache (") for line in lines)
    same_artifact(tmp_path / "cold", tmp_path / "warm")
    assert manifest(tmp_path / "warm")["equivalence"]["tier"] == manifest(tmp_path / "cold")["equivalence"]["tier"]

    lines = []  # another clip: the reference cache misses, so the model is built for its reference, lazily
    build("physnet", "onnx", tmp_path / "clip", frames=320, log=lines.append)
    assert manifest(tmp_path / "clip")["pipeline"]["trace"]["cache"] == "hit"
    assert any("building physnet for its reference" in line for line in lines)
    assert manifest(tmp_path / "clip")["equivalence"]["verified"]


def test_builtin_keys_need_no_model_and_change_with_what_the_trace_depends_on(cache, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the key built the model")
    monkeypatch.setattr(models, "_load", refuse)
    t0 = time.perf_counter()
    key = trace_cache.builtin_key("physnet")
    assert time.perf_counter() - t0 < 5
    assert key["model"] == "physnet" and key["package"] == "open-rppg" and len(key["weights_sha256"]) == 64
    assert key["graphopt_code"] == trace_cache.code_sha256() and key["libraries"]["jax"]
    path = trace_cache.entry_path(key)
    assert path.parent == cache / "trace"
    assert trace_cache.entry_path(trace_cache.builtin_key("physnet", as_published=True)) != path
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(Path(key["weights"]).read_bytes())
    assert trace_cache.builtin_key("physnet", str(weights))["weights_sha256"] == key["weights_sha256"]
    assert trace_cache.entry_path(trace_cache.builtin_key("physnet", str(weights))) != path  # the path is recorded
    zoo = trace_cache.builtin_key("ME-flow.rlap")
    assert zoo["model"] == "ME-flow.rlap" and len(zoo["state_sha256"]) == 64
    assert trace_cache.builtin_key("me-flow.rlap") == zoo
    monkeypatch.setattr(trace_cache, "code_sha256", lambda: "changed")  # a graphopt code change misses
    assert trace_cache.entry_path(trace_cache.builtin_key("physnet")) != path
    assert trace_cache.builtin_key("no-such-model") is None


def test_a_spec_key_covers_weights_names_and_roles(user_spec):
    from graphopt.spec import load_spec
    base = load_spec(user_spec)
    key = trace_cache.spec_key(base)
    assert key["param_names"] == ["w"] and key["fingerprint"]
    renamed = load_spec(user_spec)
    renamed.param_names = {k: "weight" for k in renamed.param_names}
    assert trace_cache.spec_key(renamed)["fingerprint"] == key["fingerprint"]
    assert trace_cache.entry_path(trace_cache.spec_key(renamed)) != trace_cache.entry_path(key)
    other_fps = load_spec(user_spec)
    other_fps.fps = 25.0
    assert trace_cache.entry_path(trace_cache.spec_key(other_fps)) != trace_cache.entry_path(key)


def test_an_onnx_model_is_cached_by_its_file(cache, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4], [1, 2, 3, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    first = trace_cache.load_traced(str(path))
    second = trace_cache.load_traced(str(path))
    assert (first.cache, second.cache) == ("miss", "hit")
    assert serialize.to_doc(first.graph)[0] == serialize.to_doc(second.graph)[0]
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    assert trace_cache.load_traced(str(path)).cache == "miss"  # another file: another key


# ---- the cache as untrusted input ------------------------------------------------------------------------

def _rewrite(path: Path, edit) -> None:
    """Rewrite an entry with its JSON document passed through edit(doc, arrays)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(arrays.pop("doc").tobytes())
    edit(doc, arrays)
    with open(path, "wb") as f:
        np.savez(f, doc=np.frombuffer(json.dumps(doc).encode(), np.uint8), **arrays)


def _damage(path: Path, how: str, tmp_path: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "foreign key":
        _rewrite(path, lambda d, a: d["key"].update(fingerprint="0" * 64))
    elif how == "older format":
        _rewrite(path, lambda d, a: d.update(version=0))
    elif how == "graph fails the verifier":
        def edit(d, a):
            node = d["graph"]["nodes"][0]
            d["graph"]["values"][node[3][0]][1] = [9, 9, 9]
        _rewrite(path, edit)
    elif how == "array shape lies":
        def edit(d, a):
            k = next(iter(d["arrays"]))
            d["arrays"][k]["shape"] = [1 << 30, 1 << 30]
        _rewrite(path, edit)
    elif how == "object array":
        def edit(d, a):
            k = next(iter(a))
            a[k] = np.array([{"x": 1}], dtype=object)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = arrays.pop("doc")
        edit(None, arrays)
        with open(path, "wb") as f:
            np.savez(f, doc=doc, **arrays)  # pickled inside the .npy: np.load(allow_pickle=False) refuses it
    elif how == "compressed":
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
    elif how == "a link":
        elsewhere = tmp_path / "elsewhere.npz"
        elsewhere.write_bytes(data)
        path.unlink()
        path.symlink_to(elsewhere)
    elif how == "a folder":
        path.unlink()
        path.mkdir()
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "foreign key", "older format",
                                 "graph fails the verifier", "array shape lies", "object array", "compressed",
                                 "a link", "a folder"])
def test_a_damaged_or_foreign_entry_is_a_miss_and_is_overwritten(cache, user_spec, tmp_path, how):
    assert trace_cache.load_traced(user_spec).cache == "miss"
    entry, = entries(cache)
    assert trace_cache.load_traced(user_spec).cache == "hit"
    _damage(entry, how, tmp_path)
    got = trace_cache.load_traced(user_spec)
    if how == "a folder":  # cannot be replaced by a file: traced, and the note says the cache was not written
        assert got.cache == "unavailable" and "cannot be written" in got.note
        return
    assert got.cache == "miss" and len(got.graph.nodes) == 15
    assert trace_cache.load_traced(user_spec).cache == "hit"  # the entry was written again
    assert not entry.is_symlink()


def test_no_cache_neither_reads_nor_writes(cache, user_spec):
    got = trace_cache.load_traced(user_spec, cache=False)
    assert got.cache == "off" and entries(cache) == []
    trace_cache.load_traced(user_spec)
    entry, = entries(cache)
    before = entry.stat().st_mtime_ns
    assert trace_cache.load_traced(user_spec, cache=False).cache == "off"
    assert entry.stat().st_mtime_ns == before


def test_an_unwritable_cache_is_a_note_not_an_error(tmp_path, monkeypatch, user_spec):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "trace").write_text("a file where the folder goes")
    got = trace_cache.load_traced(user_spec)
    assert got.cache == "unavailable" and "cannot be written" in got.note and len(got.graph.nodes) == 15


def test_eviction_removes_old_entries_then_the_least_recently_used(cache, tmp_path, monkeypatch):
    root = cache / "trace"
    root.mkdir(parents=True)
    now = time.time()
    paths = []
    for i, age_days in enumerate([40, 3, 2, 1]):
        p = root / f"{i:032x}.npz"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age_days * 86400, now - age_days * 86400))
        paths.append(p)
    stale_tmp = root / ".tmp-abc.npz"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (now - 2 * 86400, now - 2 * 86400))
    monkeypatch.setattr(trace_cache, "MAX_TOTAL_BYTES", 2500)
    removed = trace_cache.evict(root, keep=paths[1], now=now)
    assert set(removed) == {paths[0], paths[2], stale_tmp}  # 40 days old; then the oldest but the kept one
    assert [p.exists() for p in paths] == [False, True, False, True]


# ---- the command line ------------------------------------------------------------------------------------

def test_build_and_bench_flags():
    p = cli._parser()
    a = p.parse_args(["build", "--model", "physnet", "--target", "onnx", "--out", "o", "--no-cache"])
    assert a.no_cache is True
    assert p.parse_args(["build", "--model", "physnet", "--target", "onnx", "--out", "o"]).no_cache is False
    b = p.parse_args(["bench", "--artifacts", "a", "b", "--artifacts", "c", "--no-cache"])
    assert b.artifacts == ["a", "b", "c"] and b.no_cache is True
    assert p.parse_args(["bench"]).artifacts == []


# ---- bench: one trace, existing artifacts, nothing left in the temporary folder ---------------------------

def test_bench_traces_once_reuses_artifacts_and_leaves_no_temporary_files(cache, user_spec, tmp_path, monkeypatch):
    import onnxruntime  # noqa: F401  (onnxruntime writes its own $TMPDIR/.ses marker when first imported)

    import graphopt.benchmark
    import graphopt.builder
    from graphopt import artifact as art
    from graphopt import bench
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    traces = []
    real_trace = ModelSpec.trace
    monkeypatch.setattr(ModelSpec, "trace", lambda self: traces.append(self.name) or real_trace(self))
    quick = dict(rounds=1, steps_per_round=5, log=lambda m: None)

    result = bench.run(user_spec, ["onnx"], **quick)
    assert traces == ["ema"]  # one trace for the fused and the unfused build
    assert {r["name"] for r in result["rows"]} == {"graphopt onnx fused", "graphopt onnx unfused",
                                                   "ema JAX JIT (reference)"}
    assert result["flops_per_frame"] > 0
    assert list(tmp.iterdir()) == []  # the temporary builds are gone

    def fail(*a, **k):
        raise RuntimeError("measurement failed")
    with monkeypatch.context() as m:
        m.setattr(graphopt.benchmark, "measure", fail)
        with pytest.raises(RuntimeError, match="measurement failed"):
            bench.run(user_spec, ["onnx"], **quick)
    assert list(tmp.iterdir()) == []  # removed on failure too

    out = tmp_path / "bench-out"
    bench.run(user_spec, ["onnx"], out_dir=str(out), **quick)
    built = sorted(d.name for d in out.iterdir() if not d.name.startswith("."))
    assert built == ["ema-onnx-fused", "ema-onnx-unfused"]

    def no_build(*a, **k):
        raise AssertionError("bench rebuilt an artifact it could reuse")
    monkeypatch.setattr(graphopt.builder, "build", no_build)
    log = []
    result = bench.run(user_spec, ["onnx"], out_dir=str(out), rounds=1, steps_per_round=5, log=log.append)
    assert sum(line.startswith("reusing graphopt onnx") for line in log) == 2
    assert {r["name"] for r in result["rows"]} >= {"graphopt onnx fused", "graphopt onnx unfused"}

    result = bench.run(user_spec, artifacts=[str(out / "ema-onnx-fused")], **quick)  # measured as given
    assert sorted(r["name"] for r in result["rows"]) == ["ema JAX JIT (reference)", "graphopt onnx fused"]
    result = bench.run(user_spec, artifacts=[str(out)], **quick)  # a folder of artifacts
    assert len(result["rows"]) == 3
    with pytest.raises(art.ArtifactError, match="is a 'ema' artifact, not other"):
        bench.run(user_spec.replace(":spec", ":other"), artifacts=[str(out)], **quick)
    with pytest.raises(art.ArtifactError, match="holds no graphopt artifact"):
        bench.run(user_spec, artifacts=[str(tmp_path)], **quick)
    assert list(tmp.iterdir()) == []


@pytest.mark.slow
def test_facephys_second_build_is_fast_and_identical(facephys, cache, tmp_path, monkeypatch):
    """FacePhys (the issue's case): a warm build takes its IR from the cache, without the Keras model, and
    writes the same files (the session's model is reused, so the cold build here pays the trace but not the
    Keras build, which is most of a cold build's time in a fresh process)."""
    build("facephys", "onnx", tmp_path / "cold", frames=64, log=lambda m: None)

    def refuse(*a, **k):
        raise AssertionError("the model was built or traced on a cache hit")
    with monkeypatch.context() as m:
        m.setattr(models, "resolve", refuse)
        m.setattr(ModelSpec, "trace", refuse)
        build("facephys", "onnx", tmp_path / "warm", frames=64, log=lambda m: None)
    cold, warm = manifest(tmp_path / "cold")["pipeline"], manifest(tmp_path / "warm")["pipeline"]
    assert (cold["trace"]["cache"], warm["trace"]["cache"]) == ("miss", "hit")
    same_artifact(tmp_path / "cold", tmp_path / "warm")
    print(f"facephys onnx: cold build {cold['build_time_s']:.1f} s, warm {warm['build_time_s']:.1f} s",
          file=sys.stderr)
