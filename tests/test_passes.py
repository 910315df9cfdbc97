"""Tests for the pass library (graphopt.passes): simplify rules, cleanup passes, the rewrite driver,
the pass manager's report and --verify-each-pass, and a property test over random small graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphopt.ir import Graph, Interpreter, TensorType, verify
from graphopt.passes import DEFAULT_PIPELINE, PASSES, Pass, PassError, PassManager, in_place, pipeline_for, register, \
    run_pipeline
from graphopt.targets import Capabilities
from graphopt.passes import cleanup
from graphopt.passes.cleanup import FOLD_GROWTH_LIMIT, cse, dce, fold_constants
from graphopt.passes.rewrite import C, P, Rule, X, apply_rules, match
from graphopt.passes.simplify import RULES


# ---- helpers ----------------------------------------------------------------------------------


def f32(*shape: int) -> TensorType:
    return TensorType(shape, "float32")


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def finish(g: Graph, *outs):
    g.outputs = list(outs)
    g.output_names = [f"y{i}" for i in range(len(outs))]
    verify(g)
    return g


def sample_inputs(g: Graph, seed: int = 0) -> list[np.ndarray]:
    return [randn(*v.shape, seed=seed + i).astype(v.dtype) for i, v in enumerate(g.inputs)]


def run64(g: Graph, inputs, state=None):
    state = [s.init for s in g.state] if state is None else state
    return Interpreter(g, "float64").run(list(inputs), list(state))


def simplify_and_check(g: Graph, names=("simplify",)):
    """Run passes, verify, and check the float64 outputs are unchanged; return the histogram."""
    inputs = sample_inputs(g)
    before, before_state = run64(g, inputs)
    types = [v.type for v in g.outputs]
    run_pipeline(g, list(names))
    verify(g)
    after, after_state = run64(g, inputs)
    assert [v.type for v in g.outputs] == types
    for a, b in zip(before + before_state, after + after_state):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
    return g.op_histogram()


# ---- simplify rules that must fire ------------------------------------------------------------


def test_reshape_of_reshape_collapses_to_one():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    y = g.op("reshape", g.op("reshape", x, shape=(6, 4)), shape=(4, 6))
    finish(g, y)
    assert len(g.nodes) == 2
    hist = simplify_and_check(g)
    assert hist == {"reshape": 1}
    assert g.nodes[0].inputs[0] is x and g.nodes[0].attrs["shape"] == (4, 6)


def test_reshape_roundtrip_disappears():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("reshape", g.op("reshape", x, shape=(6,)), shape=(2, 3))
    finish(g, g.op("exp", y))
    hist = simplify_and_check(g)
    assert hist == {"exp": 1}
    assert g.nodes[0].inputs[0] is x


def test_identity_reshape_removed():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, g.op("neg", g.op("reshape", x, shape=(2, 3))))
    assert simplify_and_check(g) == {"neg": 1}


def test_transpose_pair_cancels():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    t = g.op("transpose", g.op("transpose", x, perm=(1, 2, 0)), perm=(2, 0, 1))
    finish(g, g.op("neg", t))
    assert simplify_and_check(g) == {"neg": 1}
    assert g.nodes[0].inputs[0] is x


def test_transpose_pair_that_does_not_cancel_is_composed():
    g = Graph()
    x = g.add_input("x", f32(2, 3, 4))
    t1 = g.op("transpose", x, perm=(1, 0, 2))  # (3, 2, 4)
    t2 = g.op("transpose", t1, perm=(0, 2, 1))  # (3, 4, 2)
    finish(g, t2)
    assert t2.shape == (3, 4, 2)
    hist = simplify_and_check(g)
    assert hist == {"transpose": 1}
    (node,) = g.nodes
    assert node.inputs[0] is x
    assert node.attrs["perm"] == (1, 2, 0)  # inner[outer[j]]
    assert g.outputs[0].shape == (3, 4, 2)


def test_identity_transpose_removed():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, g.op("neg", g.op("transpose", x, perm=(0, 1))))
    assert simplify_and_check(g) == {"neg": 1}


def test_full_slice_removed():
    g = Graph()
    x = g.add_input("x", f32(4, 5))
    s = g.op("slice", x, starts=(0, 0), limits=(4, 5), strides=(1, 1))
    finish(g, g.op("neg", s))
    assert simplify_and_check(g) == {"neg": 1}


def test_identity_broadcast_removed():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    b = g.op("broadcast", x, shape=(2, 3), dims=(0, 1))
    finish(g, g.op("neg", b))
    assert simplify_and_check(g) == {"neg": 1}


def test_identity_cast_removed():
    g = Graph()
    x = g.add_input("x", f32(3))
    finish(g, g.op("neg", g.op("cast", x, to="float32")))
    assert simplify_and_check(g) == {"neg": 1}


def test_broadcast_absorbed_into_elementwise():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = g.add_input("y", f32(2, 3))
    b = g.op("broadcast", x, shape=(2, 3), dims=(1,))
    finish(g, g.op("mul", b, y))
    hist = simplify_and_check(g)
    assert "broadcast" not in hist
    assert hist.get("mul") == 1
    assert g.outputs[0].shape == (2, 3)


def test_broadcast_on_leading_dim_absorbed_via_reshape():
    g = Graph()
    x = g.add_input("x", f32(2))
    y = g.add_input("y", f32(2, 3))
    b = g.op("broadcast", x, shape=(2, 3), dims=(0,))
    finish(g, g.op("sub", y, b))
    hist = simplify_and_check(g)
    assert hist == {"reshape": 1, "sub": 1}
    (r,) = [n for n in g.nodes if n.op == "reshape"]
    assert r.attrs["shape"] == (2, 1)


@pytest.mark.parametrize("op,const,const_first", [
    ("mul", 1.0, False), ("mul", 1.0, True), ("add", 0.0, False), ("add", 0.0, True),
    ("sub", 0.0, False), ("div", 1.0, False),
])
def test_neutral_element_removed(op, const, const_first):
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    c = g.add_param(np.full((2, 3), const, np.float32))
    y = g.op(op, c, x) if const_first else g.op(op, x, c)
    finish(g, g.op("neg", y))
    assert simplify_and_check(g) == {"neg": 1}
    assert g.nodes[0].inputs[0] is x


def test_neutral_scalar_constant_removed():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("add", g.op("mul", x, g.add_param(np.float32(1))), g.add_param(np.float32(0)))
    finish(g, y)
    simplify_and_check(g)
    assert g.nodes == [] and g.outputs[0] is x


# ---- simplify rules that must NOT fire ---------------------------------------------------------


def test_non_identity_reshape_stays():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, g.op("reshape", x, shape=(3, 2)))
    assert simplify_and_check(g) == {"reshape": 1}
    assert g.outputs[0].shape == (3, 2)


def test_partial_slice_stays():
    g = Graph()
    x = g.add_input("x", f32(4, 5))
    for attrs in [dict(starts=(1, 0), limits=(4, 5), strides=(1, 1)),
                  dict(starts=(0, 0), limits=(4, 4), strides=(1, 1)),
                  dict(starts=(0, 0), limits=(4, 5), strides=(2, 1))]:
        g.outputs = [g.op("slice", x, **attrs)]
    g.outputs = [n.outputs[0] for n in g.nodes]
    g.output_names = ["a", "b", "c"]
    verify(g)
    assert simplify_and_check(g) == {"slice": 3}
    assert [v.shape for v in g.outputs] == [(3, 5), (4, 4), (2, 5)]


def test_narrowing_cast_stays():
    g = Graph()
    x = g.add_input("x", f32(3))
    c = g.op("cast", x, to="float16")
    finish(g, c)
    assert simplify_and_check(g) == {"cast": 1}
    assert g.outputs[0].dtype == "float16"


def test_broadcast_kept_when_needed_for_output_shape():
    g = Graph()
    a = g.add_input("a", f32(1))
    b = g.add_input("b", f32(1))
    y = g.op("add", g.op("broadcast", a, shape=(4,), dims=(0,)), g.op("broadcast", b, shape=(4,), dims=(0,)))
    finish(g, y)
    hist = simplify_and_check(g)
    assert g.outputs[0].shape == (4,)
    assert hist == {"add": 1, "broadcast": 1}  # one broadcast may go, not both
    out, _ = run64(g, [np.float32([2]), np.float32([3])])
    np.testing.assert_array_equal(out[0], np.full(4, 5.0))


def test_mul_by_two_stays():
    g = Graph()
    x = g.add_input("x", f32(3))
    finish(g, g.op("mul", x, g.add_param(np.full(3, 2, np.float32))))
    assert simplify_and_check(g) == {"mul": 1}


def test_mul_by_ones_that_broadcasts_stays():
    g = Graph()
    x = g.add_input("x", f32(3))
    finish(g, g.op("mul", x, g.add_param(np.ones((2, 3), np.float32))))
    assert simplify_and_check(g) == {"mul": 1}
    assert g.outputs[0].shape == (2, 3)


# ---- cleanup passes ------------------------------------------------------------------------------


def test_dce_removes_unused_but_keeps_state_feeders():
    g = Graph()
    x = g.add_input("x", f32(3))
    s = g.add_state("acc", np.zeros(3, np.float32))
    g.op("exp", g.op("neg", x))  # dead chain
    new_state = g.op("add", s, g.op("mul", x, x))
    g.state[0].output = new_state
    finish(g, g.op("neg", x))
    assert len(g.nodes) == 5
    assert dce(g) is True
    verify(g)
    assert g.op_histogram() == {"add": 1, "mul": 1, "neg": 1}
    assert dce(g) is False
    xs = randn(3)
    out, st = run64(g, [xs])
    np.testing.assert_allclose(st[0], xs.astype(np.float64) ** 2, rtol=1e-12)


def test_cse_merges_duplicate_nodes_and_constants():
    g = Graph()
    x = g.add_input("x", f32(3))
    c1 = g.add_param(np.float32([1, 2, 3]))
    c2 = g.add_param(np.float32([1, 2, 3]))
    c3 = g.add_param(np.float32([1, 2, 4]))
    a = g.op("mul", x, c1)
    b = g.op("mul", x, c2)  # same as a once c2 == c1
    c = g.op("mul", x, c3)  # different constant
    e1, e2 = g.op("exp", a), g.op("exp", b)
    finish(g, g.op("add", e1, e2), c)
    inputs = sample_inputs(g)
    before, _ = run64(g, inputs)
    assert cse(g) is True
    verify(g)
    assert g.op_histogram() == {"mul": 2, "add": 1, "exp": 1}
    add = g.outputs[0].producer
    assert add.inputs[0] is add.inputs[1]
    assert len(g.params()) == 2
    after, _ = run64(g, inputs)
    for u, v in zip(before, after):
        np.testing.assert_allclose(v, u, rtol=1e-12)
    assert cse(g) is False


def test_cse_keeps_different_attrs_apart():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, g.op("reshape", x, shape=(3, 2)), g.op("reshape", x, shape=(6,)))
    assert cse(g) is False
    assert len(g.nodes) == 2


def test_fold_constants_folds_param_only_subgraph():
    g = Graph()
    x = g.add_input("x", f32(3))
    p = g.add_param(np.float32([1, 2, 3]))
    q = g.add_param(np.float32([4, 5, 6]))
    k = g.op("exp", g.op("mul", p, q))  # params only
    finish(g, g.op("add", x, k))
    inputs = sample_inputs(g)
    before, _ = run64(g, inputs)
    assert fold_constants(g) is True
    verify(g)
    assert g.op_histogram() == {"add": 1}
    const = g.nodes[0].inputs[1]
    assert const.is_param
    np.testing.assert_allclose(const.const, np.exp(np.float32([4, 10, 18])), rtol=1e-6)
    after, _ = run64(g, inputs)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    assert fold_constants(g) is False


def test_fold_constants_does_not_blow_up_a_scalar_broadcast():
    g = Graph()
    n = FOLD_GROWTH_LIMIT * 2
    x = g.add_input("x", f32(n))
    big = g.op("broadcast", g.add_param(np.float32(3)), shape=(n,), dims=())
    small = g.op("broadcast", g.add_param(np.float32(2)), shape=(FOLD_GROWTH_LIMIT,), dims=())
    finish(g, g.op("mul", x, big), small)
    assert fold_constants(g) is True  # the small one folds
    verify(g)
    assert g.op_histogram() == {"broadcast": 1, "mul": 1}
    (bnode,) = [nd for nd in g.nodes if nd.op == "broadcast"]
    assert bnode.attrs["shape"] == (n,)
    assert g.outputs[1].is_param and g.outputs[1].const.shape == (FOLD_GROWTH_LIMIT,)
    # only the folded 4096-element output and the scalar: no 8192-element constant
    assert g.param_bytes() == FOLD_GROWTH_LIMIT * 4 + 4
    # a node whose output is not larger than its input folds whatever its size
    g2 = Graph()
    big_p = g2.add_param(np.ones(n, np.float32))
    finish(g2, g2.op("neg", big_p))
    assert fold_constants(g2) is True
    assert g2.nodes == [] and g2.outputs[0].const.shape == (n,)
    assert float(g2.outputs[0].const[0]) == -1.0


# ---- the rewrite driver --------------------------------------------------------------------------


def test_custom_rules_reach_fixpoint():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = x
    for _ in range(5):
        y = g.op("neg", y)
    finish(g, y)
    rule = Rule("neg-neg", P("neg", P("neg", X("x"))), lambda gr, b: b["x"])
    assert apply_rules(g, [rule]) == {"neg-neg": 2}  # each firing removes two of the five negs
    assert g.op_histogram() == {"neg": 1}
    assert g.nodes[0].inputs[0] is x
    assert not apply_rules(g, [rule])  # already at a fixpoint: nothing fired


def test_rule_that_changes_type_raises():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    finish(g, g.op("neg", x))
    bad = Rule("bad", P("neg", X("x")), lambda gr, b: gr.op("reshape", b["x"], shape=(6,)))
    with pytest.raises(AssertionError, match="bad"):
        apply_rules(g, [bad])


def test_rule_that_never_settles_raises():
    g = Graph()
    x = g.add_input("x", f32(3))
    finish(g, g.op("neg", x))
    forever = Rule("forever", P("neg", X("x")), lambda gr, b: gr.op("neg", b["x"]))
    with pytest.raises(RuntimeError, match="fixpoint"):
        apply_rules(g, [forever], max_sweeps=5)


def test_match_commute_matches_both_orders():
    g = Graph()
    x = g.add_input("x", f32(3))
    one = g.add_param(np.ones(3, np.float32))
    a = g.op("mul", x, one)
    b = g.op("mul", one, x)
    pat_c = P("mul", X("x"), C("c"), commute=True)
    pat_n = P("mul", X("x"), C("c"))
    for v in (a, b):
        bound = {}
        assert match(pat_c, v, bound)
        assert bound["x"] is x and bound["c"] is one
    assert match(pat_n, a, {})
    assert not match(pat_n, b, {})


def test_match_same_name_must_bind_same_value():
    g = Graph()
    x = g.add_input("x", f32(3))
    y = g.add_input("y", f32(3))
    same = g.op("add", x, x)
    diff = g.op("add", x, y)
    pat = P("add", X("a"), X("a"))
    bound = {}
    assert match(pat, same, bound) and bound["a"] is x
    assert not match(pat, diff, {})
    # a pre-bound name is respected too
    assert not match(X("a"), y, {"a": x})
    assert match(X("a"), x, {"a": x})


def test_match_where_and_const():
    g = Graph()
    x = g.add_input("x", f32(3))
    two = g.add_param(np.full(3, 2, np.float32))
    v = g.op("mul", x, two)
    assert not match(P("mul", X(), C(where=lambda c: np.all(c.const == 1))), v, {})
    assert match(P("mul", X(), C(where=lambda c: np.all(c.const == 2))), v, {})
    assert not match(P("mul", C(), X()), v, {})
    assert not match(P("add", X(), X()), v, {})


# ---- run_pipeline ------------------------------------------------------------------------------


def small_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.add_input("y", f32(2, 3))
    s = g.add_state("acc", np.zeros((2, 3), np.float32))
    t = g.op("transpose", g.op("transpose", x, perm=(1, 0)), perm=(1, 0))
    z = g.op("add", g.op("mul", t, g.add_param(np.ones((2, 3), np.float32))), y)
    g.op("neg", z)  # dead
    g.state[0].output = g.op("add", s, z)
    return finish(g, g.op("max", z, g.op("mul", x, y)))


def test_run_pipeline_report():
    g = small_graph()
    n0, f0 = len(g.nodes), g.flops()
    names = ["fold-constants", "simplify", "cse", "dce"]
    _, report = run_pipeline(g, names)
    entries = report["passes"]
    assert [e["name"] for e in entries] == ["(traced)"] + names
    assert entries[0]["nodes"] == n0 and entries[0]["flops"] == f0
    for e in entries[1:]:
        assert set(e) >= {"name", "changed", "exact", "nodes", "flops", "time_s"}
        assert e["time_s"] >= 0 and e["exact"] is True
    assert entries[-1]["nodes"] == len(g.nodes) < n0
    assert entries[-1]["flops"] == g.flops() < f0
    assert report["exact"] is True
    assert entries[2]["changed"] is True  # simplify


@pytest.fixture
def temp_pass():
    added = []

    def add(p: Pass) -> Pass:
        added.append(p.name)
        return register(p)

    yield add
    for name in added:
        PASSES.pop(name, None)


def _add_to_sub(graph: Graph) -> bool:
    changed = False
    for node in graph.nodes:
        if node.op == "add":
            node.op = "sub"
            changed = True
    return changed


def test_report_not_exact_with_value_changing_pass(temp_pass):
    # the report turns inexact once a value-changing pass has changed the graph
    temp_pass(Pass("test-approx", lambda g, o: True, exact=False))
    _, report = run_pipeline(small_graph(), ["simplify", "test-approx"])
    assert report["exact"] is False
    assert report["passes"][-1]["exact"] is False
    # a value-changing pass that changed nothing leaves the result exact (raise-math on a graph
    # without approximated math), though its entry still says the pass itself is not exact
    temp_pass(Pass("test-approx-noop", lambda g, o: False, exact=False))
    _, report = run_pipeline(small_graph(), ["simplify", "test-approx-noop"])
    assert report["exact"] is True
    assert report["passes"][-1]["exact"] is False and report["passes"][-1]["changed"] is False
    _, report = run_pipeline(small_graph(), ["simplify"])
    assert report["exact"] is True


def test_unknown_pass_raises():
    with pytest.raises(PassError) as ei:
        run_pipeline(small_graph(), ["simplify", "no-such-pass"])
    msg = str(ei.value)
    assert "no-such-pass" in msg
    for name in ("dce", "cse", "fold-constants", "simplify"):
        assert name in msg


def test_verify_each_names_the_first_breaking_pass(temp_pass):
    temp_pass(Pass("test-add-to-sub", in_place(_add_to_sub)))
    samples = [[randn(2, 3, seed=s), randn(2, 3, seed=s + 10)] for s in range(3)]
    with pytest.raises(PassError, match="test-add-to-sub") as ei:
        run_pipeline(small_graph(), ["fold-constants", "simplify", "cse", "test-add-to-sub", "dce"],
                     verify_each=True, samples=samples)
    assert "first pass" in str(ei.value)
    # the correct passes alone verify, with errors at float32 rounding level
    _, report = run_pipeline(small_graph(), ["fold-constants", "simplify", "cse", "dce"],
                             verify_each=True, samples=samples)
    for e in report["passes"][1:]:
        assert e["max_rel_error"] <= 1e-6


def test_verify_each_catches_ir_breakage(temp_pass):
    def break_ir(graph):
        graph.nodes.reverse()
        return True
    temp_pass(Pass("test-break-ir", in_place(break_ir)))
    with pytest.raises(PassError, match="test-break-ir broke the IR"):
        run_pipeline(small_graph(), ["simplify", "test-break-ir"], verify_each=True)



def test_pipeline_always_verifies_the_ir(temp_pass):
    """Without verify_each too: the first pass that leaves an invalid graph is named, not a later one."""
    def break_ir(graph):
        graph.nodes.reverse()
        return True
    temp_pass(Pass("test-break-ir-quietly", in_place(break_ir)))
    with pytest.raises(PassError, match="test-break-ir-quietly broke the IR"):
        run_pipeline(small_graph(), ["simplify", "test-break-ir-quietly", "cse", "dce"])
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(PassError, match="input graph is invalid"):
        run_pipeline(g, ["simplify"])

def test_fixpoint_pass_repeats(temp_pass):
    calls = []

    def shrink(graph):
        calls.append(1)
        return len(calls) < 3
    temp_pass(PassManager("test-fix", (Pass("shrink", in_place(shrink)),), fixpoint=True))
    _, report = run_pipeline(small_graph(), ["test-fix"])
    assert len(calls) == 3 and report["passes"][-1]["changed"] is True  # two rounds changed, the third did not


def test_temp_passes_are_removed():
    assert not any(name.startswith("test-") for name in PASSES)


def test_pipeline_for():
    # the fusing pipeline: cleanups, the rewrite passes (value-changing ones first), cleanups again
    assert DEFAULT_PIPELINE[:3] == ["fold-constants", "simplify", "cse"]
    assert DEFAULT_PIPELINE[-4:] == ["simplify", "cse", "fold-constants", "dce"]
    assert [n for n in DEFAULT_PIPELINE if n in ("raise-math", "algebra", "layout")] == \
        ["raise-math", "algebra", "layout"]
    assert pipeline_for("onnx") == DEFAULT_PIPELINE
    assert pipeline_for("onnx") is not DEFAULT_PIPELINE  # a copy: callers may edit it
    # exact_only drops the value-changing passes (raise-math among them) and keeps the order of the rest
    assert PASSES["raise-math"].exact is False
    exact = pipeline_for("onnx", exact_only=True)
    assert "raise-math" not in exact and "algebra" in exact and "layout" in exact
    assert exact == [n for n in DEFAULT_PIPELINE if PASSES[n].exact]
    assert pipeline_for("onnx", fuse=False) == []
    assert pipeline_for("onnx", fixed_inputs=True) == ["specialize-inputs"] + DEFAULT_PIPELINE
    assert pipeline_for("onnx", fixed_inputs=True)[0] == "specialize-inputs"
    assert pipeline_for("onnx", fuse=False, fixed_inputs=True) == ["specialize-inputs", "fold-constants", "dce"]
    assert pipeline_for("onnx", exact_only=True, fixed_inputs=True) == ["specialize-inputs"] + exact
    # a target without native exp/sin/cos (an NPU) gets the default pipeline minus raise-math; passes are
    # chosen by the capabilities a target declares, never by its name
    npu = Capabilities(native_transcendentals=False)
    expected = [n for n in DEFAULT_PIPELINE if PASSES[n].suits is None or PASSES[n].suits(npu)]
    assert pipeline_for(npu) == expected
    assert "raise-math" not in expected and "algebra" in expected and "layout" in expected
    assert pipeline_for(npu, fuse=False) == []
    with pytest.raises(PassError, match="unknown target 'no-such-target'"):
        pipeline_for("no-such-target")
    for names in (pipeline_for("onnx"), pipeline_for("onnx", fixed_inputs=True), pipeline_for(npu)):
        assert all(n in PASSES for n in names)


# ---- property test: random elementwise graphs ------------------------------------------------------

SHAPE = (2, 3)
DYADIC = (0.5, 0.75, 1.25, 1.5, 2.0)
# entries of the constant matrices and scales the algebra rules fold (W1 @ W2, W * c): few-bit dyadic
# numbers, so the folded float32 constant is exact and only float64 reassociation separates the results
WEIGHTS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def _dyadic_array(draw, shape, values=WEIGHTS) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    return np.float32(draw(st.lists(st.sampled_from(values), min_size=n, max_size=n))).reshape(shape)


def _matmul(g: Graph, x, w):
    return g.op("dot", x, w, lhs_contract=(len(x.shape) - 1,), rhs_contract=(0,))


@st.composite
def random_graphs(draw):
    g = Graph(name="random")
    x0 = g.add_input("x0", f32(*SHAPE))
    x1 = g.add_input("x1", f32(*SHAPE))
    row = g.add_input("row", f32(3))
    one = g.add_input("one", f32(1))
    pool = [x0, x1]
    n_steps = draw(st.integers(1, 12))
    for _ in range(n_steps):
        kind = draw(st.sampled_from(["binary", "broadcast", "reshape", "transpose", "mul1", "add0",
                                     "const", "slice", "cast", "constexpr",
                                     "relu6", "dotchain", "scaledot", "transpose-const", "lerp",
                                     "affine-dot", "concat-zero"]))
        a = draw(st.sampled_from(pool))
        if kind == "binary":
            op = draw(st.sampled_from(["add", "sub", "mul", "max", "min"]))
            b = draw(st.sampled_from(pool))
            v = g.op(op, a, b)
        elif kind == "broadcast":
            src = draw(st.sampled_from(["row", "one", "col"]))
            if src == "row":
                bv = g.op("broadcast", row, shape=SHAPE, dims=(1,))
            elif src == "one":
                bv = g.op("broadcast", one, shape=SHAPE, dims=(1,))
            else:
                col = g.op("reshape", g.op("slice", row, starts=(0,), limits=(2,), strides=(1,)), shape=(2,))
                bv = g.op("broadcast", col, shape=SHAPE, dims=(0,))
            op = draw(st.sampled_from(["add", "sub", "mul", "max", "min"]))
            v = g.op(op, bv, a) if draw(st.booleans()) else g.op(op, a, bv)
        elif kind == "reshape":
            mid = draw(st.sampled_from([(6,), (3, 2), (1, 6), (2, 3), (6, 1, 1)]))
            v = g.op("reshape", g.op("reshape", a, shape=mid), shape=SHAPE)
        elif kind == "transpose":
            t = g.op("transpose", a, perm=(1, 0))
            if draw(st.booleans()):
                t = g.op("neg", t)  # a pair separated by an op: must not cancel
            v = g.op("transpose", t, perm=(1, 0))
        elif kind == "mul1":
            c = g.add_param(np.ones(draw(st.sampled_from([(), (3,), SHAPE])), np.float32))
            v = g.op("mul", c, a) if draw(st.booleans()) else g.op("mul", a, c)
        elif kind == "add0":
            c = g.add_param(np.zeros(draw(st.sampled_from([(), (1,), SHAPE])), np.float32))
            v = g.op("add", c, a) if draw(st.booleans()) else g.op(draw(st.sampled_from(["add", "sub"])), a, c)
        elif kind == "const":
            # dyadic, like the other constants: algebra's scale-chain folds (x * c1) * c2 into one float32
            # constant c1 * c2, which arbitrary floats in [0.5, 2] would round
            vals = draw(st.lists(st.sampled_from(DYADIC), min_size=3, max_size=3))
            c = g.add_param(np.float32(vals))
            v = g.op(draw(st.sampled_from(["add", "mul", "max"])), a, c)
        elif kind == "slice":
            v = g.op("slice", a, starts=(0, 0), limits=SHAPE, strides=(1, 1))
        elif kind == "cast":
            v = g.op("cast", a, to="float32")
        elif kind == "relu6":  # algebra: min(max(x, 0), 6) -> clamp, in any operand order
            lo, hi = g.add_param(np.float32(0)), g.add_param(np.float32(6))
            m = g.op("max", a, lo) if draw(st.booleans()) else g.op("max", lo, a)
            v = g.op("min", m, hi) if draw(st.booleans()) else g.op("min", hi, m)
        elif kind == "dotchain":  # algebra: x @ W1 @ W2 -> x @ (W1 @ W2)
            w1 = g.add_param(_dyadic_array(draw, (3, 3)))
            w2 = g.add_param(_dyadic_array(draw, (3, 3)))
            v = _matmul(g, _matmul(g, a, w1), w2)
        elif kind == "scaledot":  # algebra: (x * c) @ W -> x @ (c[:, None] * W)
            c = g.add_param(_dyadic_array(draw, draw(st.sampled_from([(3,), (1, 3), ()])), DYADIC[::2] + (-1.0,)))
            scaled = g.op("mul", a, c) if draw(st.booleans()) else g.op("mul", c, a)
            v = _matmul(g, scaled, g.add_param(_dyadic_array(draw, (3, 3))))
        elif kind == "transpose-const":  # layout sinks the transpose through the op; simplify cancels the pair
            t = g.op("transpose", a, perm=(1, 0))
            c = g.add_param(_dyadic_array(draw, draw(st.sampled_from([(3, 2), (2,), (3, 1), ()])), DYADIC))
            op = draw(st.sampled_from(["add", "sub", "mul", "max", "min"]))
            e = g.op(op, t, c) if draw(st.booleans()) else g.op(op, c, t)
            v = g.op("transpose", e, perm=(1, 0))
        elif kind == "lerp":  # algebra: a*x + (1-a)*y -> y + a*(x - y), a computed (a running mean's rate)
            b = draw(st.sampled_from(pool))
            v = g.op("add", g.op("mul", row, a), g.op("mul", g.op("sub", g.add_param(np.float32(1)), row), b))
        elif kind == "affine-dot":  # (x*s + c) @ W: s moves out of the add (c/s) and into W
            s_ = g.add_param(_dyadic_array(draw, (3,), (0.5, 2.0, -1.0)))
            c = g.add_param(_dyadic_array(draw, (3,)))
            v = _matmul(g, g.op("add", g.op("mul", a, s_), c), g.add_param(_dyadic_array(draw, (3, 3))))
        elif kind == "concat-zero":  # simplify: [a0, a1] + [b0, 0] -> [a0 + b0, a1]
            b = draw(st.sampled_from(pool))
            cut = lambda x, lo, hi: g.op("slice", x, starts=(0, lo), limits=(2, hi), strides=(1, 1))
            v = g.op("add", g.op("concat", cut(a, 0, 1), cut(a, 1, 3), axis=1),
                     g.op("concat", cut(b, 0, 1), g.add_param(np.zeros((2, 2), np.float32)), axis=1))
        else:  # param-only subexpression for fold-constants
            # dyadic values: the folded float32 constant is exact, so the float64 reference
            # interpreter sees the same number before and after folding
            p = g.add_param(np.float32(draw(st.sampled_from(DYADIC))))
            q = g.add_param(np.ones(SHAPE, np.float32))
            v = g.op("mul", a, g.op("add", g.op("broadcast", p, shape=SHAPE, dims=()), q))
        pool.append(v)
    outs = [pool[-1]] + ([draw(st.sampled_from(pool[2:] or pool))] if draw(st.booleans()) else [])
    g.outputs = outs
    g.output_names = [f"y{i}" for i in range(len(outs))]
    verify(g)
    return g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.integers(0, 2**16))
def test_onnx_pipeline_preserves_random_graphs(g, seed):
    r = np.random.default_rng(seed)
    inputs = [(r.uniform(0.5, 2.0, v.shape) * r.choice([-1.0, 1.0], v.shape)).astype(np.float32)
              for v in g.inputs]
    before, _ = run64(g, inputs)
    types = [v.type for v in g.outputs]
    names = pipeline_for("onnx", exact_only=True)
    _, report = run_pipeline(g, names)
    verify(g)
    assert report["exact"] is True
    assert [v.type for v in g.outputs] == types
    after, _ = run64(g, inputs)
    for a, b in zip(before, after):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    # no identities survive the pipeline
    for node in g.nodes:
        assert node.op != "cast"
        if node.op == "slice":  # only the partial slice building the column survives
            assert node.outputs[0].shape != node.inputs[0].shape
        if node.op == "reshape":
            assert node.outputs[0].shape != node.inputs[0].shape
            assert node.inputs[0].producer is None or node.inputs[0].producer.op != "reshape"
        if node.op == "transpose":
            assert node.inputs[0].producer is None or node.inputs[0].producer.op != "transpose"
    # Running the pipeline again keeps the outputs and never grows the graph, and soon changes nothing.
    # It need not be a no-op at once: simplify runs after algebra and layout, and what it cleans up can
    # expose a rule to the next run. transpose(mul(transpose(x), c1)) * c2 ends the first run as
    # (x * c1') * c2, a scale chain the second run folds; a transpose whose second reader was a cancelled
    # transpose pair can only sink through the op after it in the second run.
    for _ in range(3):
        n1, hist1, f1 = len(g.nodes), g.op_histogram(), g.flops()
        _, report2 = run_pipeline(g, names)
        verify(g)
        assert report2["exact"] is True
        assert len(g.nodes) <= n1 and g.flops() <= f1
        assert report2["passes"][-1]["nodes"] == len(g.nodes)
        again, _ = run64(g, inputs)
        for a, b in zip(before, again):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
        if len(g.nodes) == n1 and g.op_histogram() == hist1:
            break
    else:
        pytest.fail(f"the pipeline still changes the graph after 3 more runs:\n{g}")
