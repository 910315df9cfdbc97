"""Target `tf`: the TF lowering saved as a SavedModel and run as tf.function(jit_compile=True), the
"TensorFlow JIT" baseline row of the authors' table.

The artifact is the folder `<stem>.savedmodel` (signature `step(frame, dt, state_in_i...) -> {bvp,
state_out_i...}`), the manifest and the initial state. The Stream keeps the state as TF tensors
between steps and converts only the output to NumPy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from ..stream import Stream
from . import Capabilities, Target
from .tf_lowering import TABLE, import_tensorflow  # noqa: F401  (TABLE: the target's lowering table)
from .tf_module import build_module, save

NAME = "tf"
SUFFIX = ".savedmodel"
TARGET = Target(NAME, emits="SavedModel", backend="TensorFlow XLA JIT",  # convs channels-last
                packages=("tensorflow-cpu",))


def available() -> tuple[bool, str]:
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        return False, f"{e.name} is not installed (pip install tensorflow-cpu; see requirements.txt)"
    return True, ""


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    options = options or {}
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_dir = out_dir / f"{stem}{SUFFIX}"
    manifest = art.describe_graph(graph, model_dir.name, NAME, options.get("precision", "float32"))
    module, signatures = build_module(graph, manifest, "io", jit_compile=True)
    save(module, signatures, model_dir)
    manifest["sha256"] = art.sha256_tree(model_dir)
    manifest["tf"] = {"signature": "step", "jit_compile": True, "state_mode": "io"}
    manifest["tools"] = art.tool_versions("tensorflow-cpu")
    return art.finish(graph, model_dir, manifest)


class TfStream(Stream):
    def __init__(self, model_dir: Path, manifest: dict, initial_state, threads: int = 1):
        tf = import_tensorflow(threads)
        super().__init__(manifest, initial_state)
        try:
            self._loaded = tf.saved_model.load(str(model_dir))
        except Exception as e:
            raise art.ArtifactError(f"TensorFlow cannot load the SavedModel {model_dir}: {e}") from None
        sig = self._loaded.signatures["step"]
        self._out = [o["name"] for o in manifest["outputs"]]
        self._state_out = [s["output"] for s in manifest["state"]]
        names = [i["name"] for i in manifest["inputs"]] + [s["input"] for s in manifest["state"]]
        state_out = self._state_out

        def step(*args):  # the step and, compiled with it, whether its new state is finite
            out = sig(**dict(zip(names, args)))
            flags = [tf.reduce_all(tf.math.is_finite(out[n])) for n in state_out if out[n].dtype.is_floating]
            return out, tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)
        self._fn = tf.function(step, jit_compile=True)
        self._tf = tf
        self._reset()

    def _run(self, feeds, state):
        out, self._finite = self._fn(*feeds, *state)
        return [out[n].numpy() for n in self._out], [out[n] for n in self._state_out]

    def _state_finite(self, state) -> bool:
        return bool(self._finite)

    def _reset(self) -> None:
        self._state = [self._tf.constant(s) for s in self._initial_state]


def open_stream(model_dir: Path, manifest: dict, initial_state, threads: int = 1) -> TfStream:
    return TfStream(model_dir, manifest, initial_state, threads=threads)
