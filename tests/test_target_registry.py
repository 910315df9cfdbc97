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
    assert list(variants) == ["onnx", "xla", "tflite", "tflite-io", "tflite-fp16", "tflite-int8", "tf", "torch",
                              "torch-compile", "tensorrt"]
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
