"""Third-party ONNX files (tests/onnx_corpus.py: tf2onnx, torch.onnx TorchScript and dynamo, jax2onnx,
open-rppg's BlazeFace) through `graphopt optimize` (default: the signal tier or better; --exact: the
rounding tier) and, for a subset, `graphopt build --target tflite`: the output keeps the input's I/O
names and order, and is graphopt's model only where onnxruntime runs it faster (else the input's).

A model graphopt cannot import fails with the frontend's one-line error (it names the node, the op and
the opset); a model whose exporter is not installed here is skipped, naming why.
"""
from __future__ import annotations

import json

import onnx
import pytest

from graphopt import cli
from onnx_corpus import GENERATORS, SLOW, Corpus, CorpusUnavailable

TIER_ORDER = ("rounding", "signal", "quantised")
TFLITE = ["torch-cnn-ts", "torch-gru-ts"]


@pytest.fixture(scope="session")
def onnx_corpus(tmp_path_factory, request):
    """The corpus, each model exported on first use (FacePhys from the session's `facephys` fixture)."""
    return Corpus(tmp_path_factory.mktemp("onnx-corpus"), facephys=lambda: request.getfixturevalue("facephys"))


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _model(corpus, name):
    try:
        return corpus[name]
    except CorpusUnavailable as e:
        pytest.skip(str(e))


def _io(path):
    m = onnx.load(str(path))
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits], [o.name for o in m.graph.output], len(m.graph.node)


def _run(capsys, what, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # the CLI's one-line error
    assert rc == 0, f"{what}: exit {rc}: {errors[-1] if errors else (err.strip() or out.strip())[-3000:]}"
    return out


@pytest.mark.parametrize("exact", [False, True], ids=["default", "exact"])
@pytest.mark.parametrize("name", _params(GENERATORS))
def test_optimize(onnx_corpus, name, exact, tmp_path, capsys):
    m = _model(onnx_corpus, name)
    dst = tmp_path / f"{m.path.stem}.opt.onnx"
    argv = ["optimize", str(m.path), "-o", str(dst), "--json"] + (["--exact"] if exact else []) + m.cli_flags()
    report = json.loads(_run(capsys, f"graphopt optimize{' --exact' if exact else ''} {m.name}", argv))
    assert report["verified"], report
    want = "rounding" if exact else "signal"
    assert report["tier"] in TIER_ORDER and TIER_ORDER.index(report["tier"]) <= TIER_ORDER.index(want), \
        f"{m.name}: tier {report['tier']} (claimed {report['tier_claimed']}), want {want} or better"
    ins, outs, n_in = _io(m.path)
    got_ins, got_outs, n_out = _io(dst)
    assert (got_ins, got_outs) == (ins, outs)
    assert report["nodes_in"] == n_in and report["nodes_out"] == n_out
    # optimize writes graphopt's output only where onnxruntime runs it faster than the input, else the input
    if report["written"] == "input":
        assert n_out == n_in and report["speed"]["ratio"] < 1.02
    else:
        assert report["speed"]["ratio"] >= 1.02, report["speed"]
    if m.stateful:
        assert report["state_pairs"], report


@pytest.mark.parametrize("name", TFLITE)
def test_build_tflite(onnx_corpus, name, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    m = _model(onnx_corpus, name)
    out = tmp_path / "tflite"
    _run(capsys, f"graphopt build --model {m.name} --target tflite",
         ["build", "--model", str(m.path), "--target", "tflite", "--out", str(out)] + m.cli_flags())
    assert list(out.glob("*.tflite")), sorted(p.name for p in out.iterdir())


@pytest.mark.slow
def test_facephys_tf2onnx_state_is_paired_by_name(onnx_corpus):
    """The authors' export names its state state_in_i / state_out_i and its frame and pulse input /
    output: graphopt pairs the 46 states by itself, and not the frame with the pulse."""
    from graphopt.frontends.onnx import pairing
    m = _model(onnx_corpus, "facephys-tf2onnx")
    want = [tuple(p.split(":")) for p in m.state_pairs]
    assert len(want) == 46
    assert sorted(pairing.find(onnx.load(str(m.path)), m.path)) == sorted(want)
