"""Targets: one module per runtime (emit an artifact, load it as a Stream), each declaring a `Target`:
its name, the runtime it needs, and the capabilities the pass pipeline asks about instead of target
names. The registry (`MODULES`) is the one place that lists them; `get(name)` imports a target's module
and returns its descriptor.

Adding a target: write its module with `TARGET = Target(...)`, `available()`, `emit()` and
`open_stream()` (optionally `after_build(final, manifest, log)`, run after a build, and
`build_from(folder, **options)` for `graphopt build --from`), and add its name to MODULES.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# target name -> module in this package
MODULES = {"onnx": "onnx", "xla": "xla", "tflite": "tflite", "tf": "tf", "torch": "torch_target",
           "torch-compile": "torch_compile", "tensorrt": "tensorrt"}


class UnsupportedOpError(ValueError):
    """The graph has an op, or an op configuration, that a target cannot lower; the message names the op and
    what to do. Every target's lowering raises this one class; build reports it as a build error."""


class NeedsDevice(RuntimeError):
    """The artifact is written and verified but for a part that needs a device this machine lacks (a
    TensorRT engine without a GPU); the message says how to finish it there. The CLI exits 3."""


@dataclass(frozen=True)
class Capabilities:
    """What a target's runtime can do, as the passes ask it."""
    channels_first_convs: bool = False  # convs run in the IR's channels-first layout (state-layout suits)
    native_transcendentals: bool = True  # exp, sin and cos are native ops (raise-math suits)
    sequential_sums: bool = True  # sums add their terms one after another in float32 (split-long-reductions)
    input_dilated_convs: bool = False  # a conv with input (lhs) dilation runs as it is (else expand-lhs-dilation)
    onnx_ops: bool = False  # the graph is emitted as onnxruntime ops (onnx-forms suits)


@dataclass(frozen=True)
class Variant:
    """An artifact `graphopt release` builds for a target: its folder name and build options."""
    name: str
    options: dict = field(default_factory=dict)  # target options (build's target_options)
    needs_state: bool = False  # only for models with recurrent state (e.g. TFLite with the state as I/O)


@dataclass(frozen=True)
class Target:
    """A target's descriptor (see the module docstring)."""
    name: str
    emits: str  # what the artifact holds, in words
    backend: str  # the runtime a Stream uses, for benchmark tables
    caps: Capabilities = Capabilities()
    variants: tuple[Variant, ...] = ()  # what a release builds (default: one artifact named after the target)

    def release_variants(self) -> tuple[Variant, ...]:
        return self.variants or (Variant(self.name),)


def names() -> list[str]:
    return list(MODULES)


def module_for(target: str):
    if target not in MODULES:
        raise KeyError(target)
    return importlib.import_module(f"{__name__}.{MODULES[target]}")


def get(target: str) -> Target:
    """The descriptor of a target (KeyError for an unknown name)."""
    return module_for(target).TARGET


def release_variants() -> dict[str, tuple[str, Variant]]:
    """Every target's release variants in registry order: variant name -> (target name, variant)."""
    return {v.name: (name, v) for name in MODULES for v in get(name).release_variants()}
