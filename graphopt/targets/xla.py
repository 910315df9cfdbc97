"""Target `xla`: IR -> JAX function -> jax.jit -> serialized jax.export (StableHLO), and its Stream.

The artifact is `<stem>.jaxexport` (jax.export's serialization: StableHLO bytecode plus the
calling convention), `<stem>.stablehlo.mlir` (the same module as text, for reading), the manifest
and the initial state. Loading needs only jax: neither the IR nor the model code.

The Stream keeps the state on the device between steps: each call's state outputs are the next
call's state inputs, so only the frame goes in and only the output comes back.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from ..stream import Stream
from . import Capabilities, Target
from .jax_lowering import TABLE  # noqa: F401  (the target's lowering table)

NAME = "xla"
SUFFIX = ".jaxexport"
PLATFORMS = ("cpu", "cuda")
TARGET = Target(NAME, emits="serialized jax.export (StableHLO)", backend="XLA CPU (jax.export)",
                caps=Capabilities(sequential_sums=False, input_dilated_convs=True),  # XLA sums in a tree
                packages=("jax", "jaxlib"), manifest_files=("xla.mlir",))


def available() -> tuple[bool, str]:
    try:
        import jax  # noqa: F401
        from jax import export  # noqa: F401
    except ImportError as e:
        return False, f"{e.name} is not installed (pip install jax jaxlib; see requirements.txt)"
    return True, ""


def export(graph: Graph, platforms=PLATFORMS):
    """jax.export of the graph's step function for the given platforms (falls back to cpu alone if
    this jaxlib cannot lower for the others)."""
    import jax
    from jax import export as jex

    from .jax_lowering import to_jax_function
    f = jax.jit(to_jax_function(graph))
    args = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in graph.inputs + [s.input for s in graph.state]]
    # source locations name files by their base name only: no path of the building machine in the artifact
    with _no_source_paths():
        try:
            return jex.export(f, platforms=platforms)(*args)
        except Exception:  # e.g. a CPU-only jaxlib without the CUDA lowering rules
            if tuple(platforms) == ("cpu",):
                raise
            return jex.export(f, platforms=("cpu",))(*args)


@contextmanager
def _no_source_paths():
    """MLIR source locations name a file by its base name (graphopt's lowering), never its path on this machine."""
    import jax
    keys = {"jax_hlo_source_file_canonicalization_regex": r".*[/\\]", "jax_include_full_tracebacks_in_locations": False}
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in keys.items():
        jax.config.update(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    options = options or {}
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_file = out_dir / f"{stem}{SUFFIX}"
    exported = export(graph)
    model_file.write_bytes(exported.serialize())
    mlir_file = out_dir / f"{stem}.stablehlo.mlir"
    mlir_file.write_text(exported.mlir_module())
    manifest = art.describe_graph(graph, model_file.name, NAME, options.get("precision", "float32"))
    manifest["sha256"] = art.sha256(model_file)
    manifest["xla"] = {"platforms": list(exported.platforms), "mlir": mlir_file.name,
                       "calling_convention_version": exported.calling_convention_version,
                       "flat_arguments": [v.name for v in graph.inputs] + [s["input"] for s in manifest["state"]]}
    manifest["tools"] = art.tool_versions("jax", "jaxlib")
    return art.finish(graph, model_file, manifest)


class XlaStream(Stream):
    def __init__(self, model_file: Path, manifest: dict, initial_state):
        import jax
        from jax import export as jex
        super().__init__(manifest, initial_state)
        try:
            exported = jex.deserialize(bytearray(Path(model_file).read_bytes()))
        except Exception as e:
            raise art.ArtifactError(f"jax cannot deserialize {model_file}: {e}; rebuild the artifact") from None
        self._jax = jax
        self._n_out = len(manifest["outputs"])
        # no buffer donation: the state before a step must survive it, so a step that produces NaN/Inf
        # can be refused and the last good state kept (Stream.step)
        n_out = self._n_out

        def call(*args):  # the step and, in the same XLA computation, whether its results are finite
            out = exported.call(*args)
            flags = [jax.numpy.isfinite(x).all() for x in out if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
            return out[:n_out], out[n_out:], jax.numpy.all(jax.numpy.stack(flags)) if flags else True
        self._call = jax.jit(call)
        self._finite = True
        self._device = jax.devices("cpu")[0] if "cpu" in exported.platforms else jax.devices()[0]
        self._reset()

    def _run(self, feeds, state):
        outs, new, self._finite = self._call(*feeds, *state)
        return [np.asarray(y) for y in outs], list(new)

    def _state_finite(self, state) -> bool:
        return bool(self._finite)  # outputs and state, checked inside the step's computation

    def _reset(self) -> None:
        self._state = [self._jax.device_put(s, self._device) for s in self._initial_state]


def open_stream(model_file: Path, manifest: dict, initial_state, **options) -> XlaStream:
    return XlaStream(model_file, manifest, initial_state)


def card_snippet(c) -> list[str]:
    """The model card's code that runs the artifact (c: release.Snippet)."""
    return ["# XLA (jax.export)", "from jax import export",
            f"exp = export.deserialize(bytearray(open('{c.folder}/{c.model}.jaxexport', 'rb').read()))",
            f"bvp, *new_state = exp.call({', '.join(c.inputs)}{', *state.values()' if c.stateful else ''})"]
