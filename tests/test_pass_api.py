"""The pass API (passes/infra.py, passes/rewrite.py): results instead of side channels, options as
arguments, nested pass managers, rule patterns with attributes and optional inputs, rule fire counts,
and rules that say why they do not fire. Also: the IR and pass modules import without cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from graphopt.ir import Graph, TensorType, verify
from graphopt.passes import (PASSES, Pass, PassError, PassManager, PassOptions, PassResult, get_pass, in_place,
                             run_pipeline)
from graphopt.passes import algebra
from graphopt.passes.rewrite import C, P, Reject, Rule, X, apply_rules, match, why_not

ROOT = Path(__file__).resolve().parents[1]


def f32(*shape):
    return TensorType(shape, "float32")


def finish(g: Graph, *outs) -> Graph:
    g.outputs, g.output_names = list(outs), [f"y{i}" for i in range(len(outs))]
    verify(g)
    return g


def conv(g, x, cout, k=1, bias=True, groups=1, seed=0):
    rng = np.random.default_rng(seed)
    cin = x.shape[1] // groups
    w = g.add_param(rng.standard_normal((cout, cin, k, k)).astype(np.float32))
    ins = [x, w] + ([g.add_param(rng.standard_normal(cout).astype(np.float32))] if bias else [])
    pads = ((k // 2, k // 2),) * 2
    return g.add_node("conv", ins, strides=(1, 1), pads=pads, dilations=(1, 1), groups=groups).outputs[0]


# ---- results, options, managers ------------------------------------------------------------------


def test_manager_runs_to_a_fixpoint_and_tidies_only_after_a_change():
    calls = []

    def shrink(g):  # changes the graph on its first two calls
        calls.append("shrink")
        return calls.count("shrink") <= 2

    def tidy(g):
        calls.append("tidy")
        return False
    mgr = PassManager("m", (Pass("shrink", in_place(shrink)),), fixpoint=True,
                      then=PassManager("t", (Pass("tidy", in_place(tidy)),)))
    g = Graph()
    finish(g, g.op("neg", g.add_input("x", f32(2))))
    r = mgr(g, PassOptions())
    assert r.changed is True and r.graph is g
    assert calls == ["shrink", "shrink", "shrink", "tidy"]  # third round changed nothing: stop, then tidy once
    calls.clear()
    r = PassManager("m2", (Pass("noop", lambda g, o: False),), then=PassManager("t", (Pass("tidy", in_place(tidy)),)))(
        g, PassOptions())
    assert r.changed is False and calls == []  # nothing changed: no tidy-up


def test_manager_bounds_its_rounds():
    n = []
    always = Pass("always", in_place(lambda g: n.append(1) or True))
    g = Graph()
    finish(g, g.add_input("x", f32(1)))
    PassManager("m", (always,), fixpoint=True, max_rounds=4)(g, PassOptions())
    assert len(n) == 4


def test_manager_is_exact_only_when_all_its_passes_are():
    exact, inexact = Pass("a", lambda g, o: False), Pass("b", lambda g, o: False, exact=False)
    assert PassManager("m", (exact,)).exact is True
    assert PassManager("m", (exact, inexact)).exact is False
    assert PassManager("m", (exact,), then=PassManager("t", (inexact,))).exact is False
    assert get_pass("layout").exact is True and get_pass("raise-math").exact is False


def test_a_pass_may_return_a_new_graph_and_the_pipeline_goes_on_with_it():
    g = Graph()
    x = g.add_input("x", f32(3))
    finish(g, g.op("neg", g.op("neg", x)))

    def rebuild(graph, options):
        new = graph.clone()
        new.outputs = [new.inputs[0]]
        return PassResult(new, True)
    PASSES["test-rebuild"] = Pass("test-rebuild", rebuild)
    try:
        out, report = run_pipeline(g, ["test-rebuild", "dce"])
    finally:
        PASSES.pop("test-rebuild")
    assert out is not g and out.nodes == [] and len(g.nodes) == 2  # the input graph is untouched
    assert [e["nodes"] for e in report["passes"]] == [2, 2, 0]


def test_fixed_inputs_come_as_an_option_not_through_graph_meta():
    def scaled():
        g = Graph()
        x, dt = g.add_input("x", f32(3)), g.add_input("dt", f32())
        return finish(g, g.op("mul", x, dt))
    out, report = run_pipeline(scaled(), ["specialize-inputs", "fold-constants", "dce"],
                               options=PassOptions(fixed_inputs={"dt": 0.5}))
    assert "fixed_inputs" not in out.meta  # the pass neither reads nor writes meta
    (node,) = out.nodes
    c = next(v for v in node.inputs if v.is_param)
    assert float(c.const) == 0.5 and report["passes"][1]["changed"] is True
    # without the option the input stays live
    out, _ = run_pipeline(scaled(), ["specialize-inputs"])
    assert not any(v.is_param for v in out.nodes[0].inputs)
    with pytest.raises(ValueError, match="cannot fix inputs"):
        run_pipeline(scaled(), ["specialize-inputs"], options=PassOptions(fixed_inputs={"fps": 30.0}))


def test_no_pass_reads_or_writes_graph_meta():
    for f in sorted((ROOT / "passes").glob("*.py")):
        uses = [n.lineno for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Attribute) and n.attr == "meta"]
        assert not uses, f"{f.name}:{uses} uses graph.meta: take options, return a PassResult instead"


def test_state_layout_returns_a_new_graph_and_leaves_its_input_alone():
    from tests.test_state_layout import running_mean_net
    g = running_mean_net()
    text = str(g)
    out, report = run_pipeline(g, ["layout", "state-layout"])
    assert report["passes"][2]["changed"] is True
    assert out is not g and str(g) != str(out)
    g2 = running_mean_net()
    out2, _ = run_pipeline(g2, ["layout"])
    assert str(out2) == str(g)  # state-layout did not touch the graph it was given
    assert text != str(out)


# ---- rule patterns -------------------------------------------------------------------------------


def test_rule_fire_counts_reach_the_pipeline_report():
    g = Graph()
    x = g.add_input("x", f32(2, 3))
    y = g.op("reshape", g.op("reshape", x, shape=(3, 2)), shape=(6,))
    z = g.op("transpose", g.op("transpose", x, perm=(1, 0)), perm=(1, 0))
    finish(g, y, g.op("add", z, g.add_param(np.zeros((2, 3), np.float32))))
    _, report = run_pipeline(g, ["simplify"])
    fired = report["passes"][1]["fired"]
    assert fired["reshape-of-reshape"] == 1 and fired["add-zero"] == 1
    assert sum(fired.values()) >= 3 and all(v > 0 for v in fired.values())


def test_attribute_patterns_and_optional_inputs():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 5, 5))
    with_bias, without = conv(g, x, 4), conv(g, x, 4, bias=False, seed=1)
    t = g.op("transpose", x, perm=(0, 1, 3, 2))
    finish(g, with_bias, without, t)
    pat = P("conv", X("x"), C("w"), more=C())  # a conv with a constant kernel, with or without a constant bias
    assert match(pat, with_bias, {}) and match(pat, without, {})
    assert not match(P("conv", X(), C()), with_bias, {})  # exact arity unless `more`
    b = {}
    assert match(P("transpose", X("x"), attrs={"perm": (0, 1, 3, 2)}), t, b) and b["x"] is x
    assert not match(P("transpose", X(), attrs={"perm": (0, 2, 1, 3)}), t, {})
    assert match(P("conv", X(), C(), more=True, attrs={"groups": lambda n: n == 1}), with_bias, {})
    # a computed bias does not match more=C()
    g2 = Graph()
    x2 = g2.add_input("x", f32(1, 4, 5, 5))
    bias = g2.op("neg", g2.add_input("b", f32(4)))
    w = g2.add_param(np.ones((4, 4, 1, 1), np.float32))
    y = g2.add_node("conv", [x2, w, bias], strides=(1, 1), pads=((0, 0),) * 2, dilations=(1, 1), groups=1).outputs[0]
    finish(g2, y)
    assert not match(pat, y, {})


def test_why_not_names_the_first_part_of_the_pattern_that_does_not_match():
    g = Graph()
    x = g.add_input("x", f32(1, 4, 5, 5))
    t = g.op("transpose", x, perm=(0, 1, 3, 2))
    c = conv(g, x, 4)
    finish(g, t, c)
    r = Rule("r", P("transpose", P("transpose", X())), lambda g, b: b["_node"].inputs[0])
    assert why_not(r, g, t) == "transpose input 0 is a graph input or state, not transpose"
    r2 = Rule("r2", P("transpose", X(), attrs={"perm": (1, 0, 2, 3)}), lambda g, b: None)
    assert why_not(r2, g, t) == "the value: attribute perm=(0, 1, 3, 2) does not match"
    r3 = Rule("r3", P("conv", X(), C()), lambda g, b: None)
    assert why_not(r3, g, c) == "the value (conv) has 3 inputs, the pattern 2"
    r4 = Rule("r4", P("conv", X(), C(), more=True), lambda g, b: Reject("not today"))
    assert why_not(r4, g, c) == "not today"
    assert why_not(r3, g, x) == "the value is not computed by a node"


def test_library_rules_say_why_they_do_not_fire():
    """conv-of-conv: a 1x1 conv after a conv is merged, unless the inner conv has another reader."""
    rule = next(r for r in algebra.RULES if r.name == "conv-of-conv")
    g = Graph()
    x = g.add_input("x", f32(1, 4, 6, 6))
    inner = conv(g, x, 8, k=3)
    outer = conv(g, inner, 2, seed=3)
    finish(g, outer, g.op("neg", inner))  # the inner conv is read twice
    assert why_not(rule, g.clone(), g.clone().outputs[0]) == "the inner conv has other readers"
    g2 = Graph()
    x = g2.add_input("x", f32(1, 4, 6, 6))
    finish(g2, conv(g2, conv(g2, x, 8, k=3), 2, seed=3))
    assert why_not(rule, g2, g2.outputs[0]) is None  # it fires
    assert apply_rules(g2, [rule]) == {"conv-of-conv": 1} and g2.op_histogram() == {"conv": 1}
    wc = next(r for r in algebra.RULES if r.name == "window-conv-to-reduce")
    g3 = Graph()
    x = g3.add_input("x", f32(1, 4, 6, 6))
    finish(g3, conv(g3, x, 4, k=3, groups=4))  # depthwise, padded: the attribute pattern refuses it
    assert why_not(wc, g3, g3.outputs[0]).startswith("the value: attribute pads=")


def test_explain_counts_reasons_over_every_candidate_and_leaves_the_graph_alone():
    from graphopt.passes import explain_rule, find_rule
    g = Graph()
    x = g.add_input("x", f32(1, 4, 6, 6))
    shared = conv(g, x, 8, k=3)
    blocked = conv(g, shared, 2, seed=3)  # its inner conv is read twice: refused
    fires = conv(g, conv(g, x, 8, k=3, seed=5), 2, seed=6)  # a private inner conv: merged
    finish(g, blocked, g.op("neg", shared), fires)
    before = str(g)
    lines = explain_rule(g, "conv-of-conv")
    assert str(g) == before  # the rewrite that would fire ran on a copy
    assert lines[0] == "rule conv-of-conv: 4 candidate node(s)"
    reasons = {line.split(" x ", 1)[1]: int(line.split(" x ", 1)[0]) for line in lines[1:]}
    assert reasons["the inner conv has other readers"] == 1 and reasons["fires"] == 1
    assert sum(reasons.values()) == 4  # the two inner convs read a graph input: another reason each
    with pytest.raises(PassError, match="unknown rule 'nope'; rules: .*conv-of-conv"):
        find_rule("nope")
    assert explain_rule(Graph(), "conv-of-conv") == ["rule conv-of-conv: no node has an op its pattern starts with"]


# ---- imports -------------------------------------------------------------------------------------


def _imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports (anywhere in the file but `if TYPE_CHECKING:`)."""
    graph = {}
    for f in package_dir.glob("*.py"):
        tree = ast.parse(f.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
            elif node.module and node.module.startswith(package + "."):
                deps.add(node.module.split(".")[-1])
        graph[f.stem] = {d.split(".")[0] for d in deps} - {"__init__"}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path + [m, d]
            if d in graph and not state.get(d):
                found = visit(d, path + [m])
                if found:
                    return found
        state[m] = 2
        return None
    for m in sorted(graph):
        if not state.get(m):
            found = visit(m, [])
            if found:
                return found
    return None


@pytest.mark.parametrize("folder,package", [("graphopt/ir", "graphopt.ir"), ("passes", "graphopt.passes")])
def test_no_import_cycles(folder, package):
    graph = _imports(ROOT / folder, package)
    graph.pop("__init__", None)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
