"""The open-rppg zoo (graphopt.models.rppg_zoo) and the pickle reader its ME state goes through.

safe_pickle: open-rppg's state.pkl read without unpickling; NumPy's own pickles (protocols 2-5) read
back equal; hostile pickles (os.system and other globals, object-building opcodes, truncated streams,
huge declared sizes, self-referencing or absurdly deep containers) refused with a message naming what
was refused, and nothing in them imported or run.

The zoo: the 17 names are open-rppg's `supported_models`; one model per family is traced and its IR,
run by the interpreter, matches jax.jit of the spec's fn on a deterministic random input in 0..1. The
interpreter runs in float64 (the graph's exact semantics; jit's float32 rounding is then all that
differs): its float32 mode sums long reductions one term after another (np.sum over non-innermost axes)
and the models that standardise their whole input chunk amplify that to NRMSE 3e-5 (PhysNet) and 1e-3
(PhysFormer), which is the interpreter's rounding, not the graph's. The three heavy networks are traced
at full size and compared at a smaller input the same fn takes (PhysMamba, RhythmMamba: H = T = 32;
PhysFormer: T = 32), so the file stays within a couple of minutes on two cores.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import pickle
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from graphopt import safe_pickle

RPPG = "open-rppg", "0.1.1"


def _package_file(rel: str) -> str:
    from graphopt.models.source import locate_package_file
    return locate_package_file(*RPPG, rel)


# ---- safe_pickle: what it reads -------------------------------------------------------------------

STATE_SHA256 = "d894487c5f0162dd798a8e7f8aabedb958b48cab8e4a31abdd433f97826c57f4"
# sha256 over (shape, bytes) of its 36 leaves, as pickle.load gives them (computed once, with open-rppg's jax)
STATE_LEAVES_SHA256 = "aaa243fc6fa3de887d02dcb5aa8b72db51db2702a6128863b2e7022c018f335c"


def test_reads_open_rppgs_state_pkl_without_unpickling():
    import jax
    path = _package_file("rppg/weights/state.pkl")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == STATE_SHA256
    before = set(sys.modules)
    state = safe_pickle.load(path)
    assert not {m for m in set(sys.modules) - before if m.startswith(("jax._src.array", "pickle"))}
    # 4 blocks of 2 SSConv layers ({'mamba': [ssd, conv], 'tn': {xmean, x2mean}}), then the head's 2 Mamba2 states
    assert isinstance(state, list) and len(state) == 6
    assert all(isinstance(b, list) and len(b) == 2 and set(b[0]) == {"mamba", "tn"} for b in state[:4])
    assert [a.shape for a in state[0][0]["mamba"]] == [(1, 1, 4, 32, 128), (1, 12, 384)]
    assert state[0][0]["tn"]["xmean"].shape == (1, 1, 36, 36, 32)
    assert state[3][1]["tn"]["x2mean"].shape == (1, 1, 5, 5, 32)
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == 36 and all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in leaves)
    h = hashlib.sha256()
    for a in leaves:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest() == STATE_LEAVES_SHA256
    assert all(np.isfinite(a).all() for a in leaves)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
                and a.flags.f_contiguous == b.flags.f_contiguous)
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        return type(a) is type(b) and (a == b or (a != a and b != b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_numpys_own_pickles_back_equal(protocol):
    rng = np.random.default_rng(0)
    shared = [1, 2]
    value = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64_fortran": np.asfortranarray(rng.standard_normal((2, 5))),
        "be_i2": np.arange(6, dtype=">i2").reshape(2, 3),
        "u1": np.arange(250, 256, dtype=np.uint8), "bool": np.array([True, False]),
        "c8": np.array([1 + 2j], np.complex64),
        "f16": np.array([0.5, -1.0], np.float16), "scalar0d": np.array(3.5), "empty": np.zeros((0, 3), np.float32),
        "strided": rng.standard_normal((4, 4)).astype(np.float32)[::2, ::-1],
        "np_scalars": (np.float32(1.5), np.int64(-3), np.bool_(True), np.float64("nan")),
        "plain": [None, True, False, 0, -1, 2 ** 80, 1.25, "text \u00e9", b"\x00\xff", b"", (), (1,), {"k": {}}],
        "sets": ({1, 2}, frozenset({"a"})), 7: "int key", ("t", 1): "tuple key",
        "shared": [shared, shared],
    }
    got = safe_pickle.loads(pickle.dumps(value, protocol=protocol))
    assert list(got) == list(value)
    for k in value:
        assert _same(got[k], value[k]), k
    assert got["shared"][0] is got["shared"][1]  # shared containers stay shared
    assert got["f32"].flags.writeable


# ---- safe_pickle: what it refuses ----------------------------------------------------------------

def _global_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-0 pickle calling module.name(arg) (GLOBAL + REDUCE), as a hostile file would."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def _stack_global_pickle(module: str, name: str, arg: str) -> bytes:
    def u(s: str) -> bytes:
        b = s.encode()
        return b"\x8c" + bytes([len(b)]) + b
    return b"\x80\x04" + u(module) + u(name) + b"\x93" + u(arg) + b"\x85R."


@pytest.mark.parametrize("make", [_global_pickle, _stack_global_pickle])
@pytest.mark.parametrize("target", [("os", "system"), ("posix", "system"), ("subprocess", "getoutput"),
                                    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
                                    ("numpy", "load"), ("numpy.core.multiarray", "fromstring")])
def test_refuses_any_other_global_and_runs_nothing(tmp_path, make, target):
    marker = tmp_path / "ran"
    data = make(*target, f"touch {marker}")
    with pytest.raises(ValueError, match=rf"refusing global {target[0]}\.{target[1]}\b"):
        safe_pickle.loads(data)
    assert not marker.exists()


def test_refuses_a_reduce_payload_pickle_made_by_pickle_itself(tmp_path):
    import os
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for protocol in range(6):
        with pytest.raises(ValueError, match=r"refusing global (posix|os|nt)\.system"):
            safe_pickle.loads(pickle.dumps({"state": [Evil()]}, protocol=protocol))
    assert not marker.exists()


def test_never_imports_the_module_a_global_names(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "graphopt_zoo_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(*a): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="refusing global graphopt_zoo_evil.f"):
        safe_pickle.loads(_global_pickle("graphopt_zoo_evil", "f", "x"))
    assert "graphopt_zoo_evil" not in sys.modules and not marker.exists()


@pytest.mark.parametrize("data, message", [
    (b"\x80\x02c__main__\nX\n)\x81.", "refusing global __main__.X"),  # NEWOBJ of a class
    (b"\x80\x02cnumpy\nndarray\n)\x81.", "refusing opcode NEWOBJ"),  # an allowed global, an object-building opcode
    (b"(cnumpy\ndtype\no.", "refusing opcode OBJ"),
    (b"(inumpy\ndtype\n.", "refusing opcode INST"),
    (b"\x80\x02Pfile\n.", "refusing opcode PERSID"),
    (b"\x80\x02\x82\x01.", "refusing opcode EXT1"),
    (b"\x80\x05\x97.", "refusing opcode NEXT_BUFFER"),
    (b"\x80\x02}K\x01b.", "refusing BUILD .*on a dict"),  # __setstate__ on a plain dict
    (b"\x80\x02X\x01\x00\x00\x00a)R.", "refusing calling a str"),  # REDUCE on something not a global
    (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.", "refusing dtype 'O8'"),  # object arrays
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85C\x01b\x87R.",
     "only ndarray subtype"),  # _reconstruct of anything but ndarray
    (b"\x80\x02cnumpy\ndtype\n.", "refusing global numpy.dtype as a value"),  # a callable handed back
    (b"\x80\x02]\x94h\x00a.", "refusing a container that holds itself"),  # l = []; l.append(l)
])
def test_refuses_object_building_and_misused_allowed_globals(data, message):
    with pytest.raises(ValueError, match=message):
        safe_pickle.loads(data)


def test_refuses_truncated_and_malformed_streams():
    data = open(_package_file("rppg/weights/state.pkl"), "rb").read()
    for cut in (0, 1, 2, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError, match="safe_pickle: .*(truncated|malformed)"):
            safe_pickle.loads(data[:cut])
    for bad in (b"\x80\x02h\x05.", b"\x80\x02.", b"\x80\x02K\x01K\x02.", b"\x80\x02t.", b"\x80\x02\xff."):
        with pytest.raises(ValueError, match="safe_pickle: "):
            safe_pickle.loads(bad)


def test_refuses_huge_declared_sizes_without_allocating_them():
    import tracemalloc
    tracemalloc.start()
    try:
        cases = [
            b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"abc.",  # BINBYTES8 of 4 EiB
            b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"abc.",  # BINUNICODE8 of 1 TiB
            b"\x80\x03B" + struct.pack("<I", 0xFFFFFFFF) + b"abc.",  # BINBYTES of 4 GiB
            b"\x80\x02\x8b" + struct.pack("<i", 1 << 30) + b"\x01.",  # LONG4 of 1 GiB
        ]
        for data in cases:
            with pytest.raises(ValueError, match="truncated|malformed"):
                safe_pickle.loads(data)
        # an ndarray that declares 2**80 elements but holds 4 bytes
        huge = pickle.dumps(np.zeros(1, np.float32), protocol=4).replace(
            b"K\x01\x85", b"\x8a\x0b" + (1 << 80).to_bytes(11, "little") + b"\x85")
        with pytest.raises(ValueError, match=r"refusing array shape|needs \d+ bytes"):
            safe_pickle.loads(huge)
        lie = pickle.dumps(np.zeros(4, np.float32), protocol=4).replace(b"K\x04\x85", b"M\x00\x10\x85")
        with pytest.raises(ValueError, match=r"shape \(4096,\) float32 needs 16384 bytes but the pickle holds 16"):
            safe_pickle.loads(lie)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()


def test_refuses_deep_nesting_and_oversized_files(tmp_path):
    deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."
    with pytest.raises(ValueError, match="nested more than"):
        safe_pickle.loads(deep)
    deep_key = b"\x80\x02}" + b")" + b"\x85" * 3000 + b"K\x01s."  # {((((...)),): 1}: hashing it recurses in C
    with pytest.raises(ValueError, match="dict key nested more than 100 deep"):
        safe_pickle.loads(deep_key)
    # t = (); 60 times t = (t, t) through the memo: a 2**60-item key that hash() would never finish
    shared = b"\x80\x04})" + b"".join(b"\x94h" + bytes([i]) + b"\x86" for i in range(60)) + b"K\x01s."
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="dict key .*more than 10000 items"):
        safe_pickle.loads(shared)
    assert time.perf_counter() - t0 < 5
    assert safe_pickle.loads(b"\x80\x04})\x94h\x00\x86\x94h\x01\x86K\x01s.") == {(((), ()), ((), ())): 1}
    big = tmp_path / "big.pkl"
    big.write_bytes(pickle.dumps(b"x" * 2048))
    with pytest.raises(ValueError, match="more than the 1024"):
        safe_pickle.load(big, max_bytes=1024)
    assert safe_pickle.load(big) == b"x" * 2048


# ---- the zoo --------------------------------------------------------------------------------------

def test_names_are_open_rppgs_supported_models_and_every_file_is_there():
    from graphopt.models import rppg_zoo as zoo
    main = open(_package_file("rppg/main.py")).read()
    tree = ast.parse(main)
    listed = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "supported_models" for t in n.targets))
    assert zoo.NAMES == listed and len(zoo.NAMES) == 17
    for name in zoo.NAMES:
        fam, variant = zoo.family_of(name)
        assert variant in ("rlap", "pure")
        _package_file(fam.weights.format(v=variant))
        _package_file(fam.code)
        assert zoo.canonical(name.upper()) == name and zoo.spec_name(name) == name.lower()
    with pytest.raises(zoo.ModelSourceError, match="unknown open-rppg model 'PhysNet.v2'; choose one of: FacePhys"):
        zoo.spec("PhysNet.v2")


def test_importing_the_zoo_loads_no_model():
    code = ("import sys, graphopt.models.rppg_zoo as z; "
            "print(sorted(m for m in sys.modules if m.startswith('graphopt_rppg')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# name -> the smaller input the numeric check runs at (None: the spec's own input)
FAMILY_CASES = {
    "FacePhys.rlap": None,
    "ME-flow.rlap": None,
    "ME-chunk.rlap": None,
    "PhysMamba.rlap": (1, 32, 32, 32, 3),  # the authors' last reshape takes T from H: keep H == T
    "RhythmMamba.pure": (1, 32, 32, 32, 3),
    "PhysFormer.pure": (1, 32, 128, 128, 3),  # its attention reshapes 128x128 frames into 4x4 patches
    "TSCAN.pure": None,
    "PhysNet.pure": None,
    "EfficientPhys.rlap": None,
}
STEPS = 6  # frames a step model is run for
# NRMSE allowed between the float64 interpreter and jit's float32, and the new state's max error relative
# to its largest value (1e-5 unless stated): FacePhys's step
# amplifies float32 rounding on random frames (its own suite compares against a measured noise floor)
TOLERANCE = {"FacePhys.rlap": 1e-4}


def _trace(spec):
    from graphopt.frontends.jax import trace
    return trace(spec.fn, spec.inputs, spec.state, name=spec.name, output_names=spec.outputs,
                 param_names=spec.param_names)


def _nrmse(got, ref) -> float:
    got, ref = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return float(np.sqrt(np.mean((got - ref) ** 2)) / np.std(ref))


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")  # ME's inf * 0 mask
@pytest.mark.parametrize("name", list(FAMILY_CASES))
def test_one_model_per_family_traces_and_matches_jit(name, record_property):
    import jax
    import keras

    from graphopt.ir import Interpreter, verify
    from graphopt.models import rppg_zoo as zoo

    fam, variant = zoo.family_of(name)
    t0 = time.perf_counter()
    spec = zoo.spec(name)
    t_load = time.perf_counter() - t0
    assert zoo.spec(name.lower()) is spec  # loaded once per process
    assert keras.config.dtype_policy().name == "float32"  # the authors' module's mixed_float16 is undone
    assert spec.name == name.lower() and spec.outputs == ["bvp"] and spec.pulse_output == "bvp" and spec.fps == 30
    assert spec.frame_input == "frame" and spec.inputs["frame"].shape == fam.shape
    assert spec.inputs["frame"].dtype == np.float32
    src = spec.source
    assert (src["package"], src["version"], src["precision"]) == (*RPPG, "float32")
    assert src["weights"] == fam.weights.format(v=variant) and len(src["weights_sha256"]) == 64
    assert src["class"] == fam.cls and src["code"] == fam.code
    if fam.kind == "step":
        assert list(spec.inputs) == ["frame", "dt"] and spec.dt_input == "dt" and spec.stateful
        assert spec.frames_per_step == 1
    else:
        assert list(spec.inputs) == ["frame"] and spec.dt_input is None
        assert spec.stateful == (fam.kind == "chunk-state") and spec.frames_per_step == fam.shape[1]
    if fam.name.startswith("ME-"):
        assert src["state"] == "rppg/weights/state.pkl" and src["state_sha256"] == STATE_SHA256
        assert len(spec.state_leaves) == 36

    t0 = time.perf_counter()
    g = _trace(spec)
    t_trace = time.perf_counter() - t0
    verify(g)
    n_out = fam.shape[1] if fam.kind != "step" else 1
    assert [v.name for v in g.inputs] == list(spec.inputs) and g.output_names == ["bvp"]
    assert g.outputs[0].shape == (1, n_out) and len(g.state) == len(spec.state_leaves)
    record_property("load_s", round(t_load, 2))
    record_property("trace_s", round(t_trace, 2))
    record_property("nodes", len(g.nodes))
    print(f"{name}: load {t_load:.1f} s, trace {t_trace:.1f} s, {len(g.nodes)} nodes, {g.flops() / 1e9:.2f} GFLOP")

    small = FAMILY_CASES[name]
    if small is not None:
        spec = dataclasses.replace(spec, inputs={"frame": np.zeros(small, np.float32)})
        g = _trace(spec)
    rng = np.random.default_rng(15)
    flat = jax.jit(spec.flat_fn())
    interp = Interpreter(g, "float64")
    state = [np.asarray(s) for s in spec.state_leaves]
    ref_state = got_state = state
    refs, gots = [], []
    for _ in range(STEPS if fam.kind == "step" else 1):
        feeds = [rng.random(a.shape, np.float32) if k == "frame" else a for k, a in spec.inputs.items()]
        outs, ref_state = flat(*feeds, *ref_state)
        refs.append(np.asarray(outs[0]))
        (got,), got_state = interp.run([f.astype(np.float64) for f in feeds], [s.astype(np.float64) for s in got_state])
        assert got.shape == refs[-1].shape == (1, (small or fam.shape)[1] if fam.kind != "step" else 1)
        gots.append(got)
    err = _nrmse(np.concatenate(gots), np.concatenate(refs))
    record_property("nrmse", err)
    print(f"{name}: interpreter (float64) vs jit NRMSE {err:.2g}")
    assert err < TOLERANCE.get(name, 1e-5), f"{name}: interpreter vs jit NRMSE {err:.3g}"
    for r, c in zip(ref_state, got_state):
        r = np.asarray(r, np.float64)
        assert np.max(np.abs(c - r)) <= TOLERANCE.get(name, 1e-5) * max(np.max(np.abs(r)), 1e-6)


def test_the_abstract_build_gives_the_network_open_rppg_builds():
    """The zoo creates a network's variables under jax.eval_shape (seconds, not the tens of seconds an
    eager build takes); with the weights loaded it is the network open-rppg's load_TSCAN builds."""
    import jax
    import keras

    from graphopt.models import rppg_zoo as zoo
    spec = zoo.spec("TSCAN.rlap")
    ours = zoo._network("TSCAN", "rppg/weights/TSCAN.rlap.weights.h5", (1, 160, 36, 36, 3))[0]
    module = zoo._authors_module()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        theirs = module.TSCANToEnd(module.TSCAN())  # rppg.models.load_TSCAN, in float32
        theirs(np.zeros((1, 160, 36, 36, 3)))
    finally:
        keras.config.set_dtype_policy(previous)
    theirs.load_weights(_package_file("rppg/weights/TSCAN.rlap.weights.h5"))
    assert [v.shape for v in ours.variables] == [v.shape for v in theirs.variables]
    assert all(np.array_equal(a.value, b.value) for a, b in zip(ours.variables, theirs.variables)
               if not a.path.endswith("seed_generator_state"))  # dropout seeds: random in either build
    x = np.random.default_rng(3).random((1, 160, 36, 36, 3), np.float32)
    want = np.asarray(jax.jit(lambda x: theirs(x))(x)[0])
    y = np.cumsum(want)
    y = (y - y.mean()) / (y.std() + 1e-6)
    want = np.diff(np.concatenate([[0.0], y]))  # load_TSCAN_rlap's call, after the network
    got = np.asarray(jax.jit(spec.fn)(x))[0]
    assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))
