"""Targets: one module per runtime (emit an artifact, load it as a Stream), each declaring a `Target`:
its name, the runtime it needs, and the capabilities the pass pipeline asks about instead of target
names. The registry (`MODULES`) is the one place that lists them; `get(name)` imports a target's module
and returns its descriptor.

Adding a target: write its module with `TARGET = Target(...)`, `TABLE` (its `lowering.LoweringTable`,
declared in the module or imported from the lowering module it shares), `available()`, `emit()` and
`open_stream()`, and add its name to MODULES. Nothing outside this package names a target: build,
release, bench, inspect and the CLI read the descriptor (its `options` become `graphopt build` flags,
its `device_part`, `check`, `packages` and `manifest_files` what the commands do with it) and call
these optional module hooks where present:
- `after_build(final, manifest, log)`: run after a build (raise NeedsDevice when a device part is missing);
- `build_from(folder, **options)`: `graphopt build --target NAME --from ARTIFACT` (with a `device_part`);
- `release_pending(folder, file_name, manifest) -> dict`: release entry fields of an artifact whose device
  part is still to be built, and `card_lines(name, entry) -> list[str]`: the model card's note on it;
- `card_snippet(c) -> list[str]`: model-card code that runs the artifact (c: release.Snippet);
- `release_extras(folder, entry, log) -> dict`: release entry fields a target adds once its artifact (in
  `folder`) is built, verified and benchmarked (the web targets: the demo page's screenshot and heart rate;
  files it writes go in `folder`); raising fails the release;
- `inspect_check(path) -> (result, text)`: `graphopt inspect --check NAME` (with a `check`);
- `inspect_summary(manifest) -> dict` and `inspect_lines(summary) -> list[str]`: what inspect adds;
- `bench_in_page(stream, frames, rounds=, steps_per_round=, warmup=) -> [(label, latencies_s, round_medians)]`:
  bench rows the runtime times in its own loop (the web targets: in the browser page), instead of a Python
  step per frame; None where it cannot (then the row is measured as any other).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# target name -> module in this package
MODULES = {"onnx": "onnx", "xla": "xla", "tflite": "tflite", "tf": "tf", "torch": "torch_target",
           "torch-compile": "torch_compile", "tensorrt": "tensorrt",
           "iree": "iree",
           "onnx-web": "web_onnx", "litert-web": "web_litert"}


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
class Option:
    """A `graphopt build` flag that only this target takes (the CLI refuses it with any other --target);
    its value reaches emit() and build_from() as options[dest]. The flag must not be one of build's own."""
    flag: str  # e.g. "--opt-level"
    help: str  # the CLI's help names the target first: "<target>: <help>"
    choices: tuple[str, ...] = ()
    kind: type = str  # int or float for a number from range[0] to range[1]
    range: tuple | None = None
    switch: bool = False  # a flag without a value, true when given
    default: object = None  # what emit() gets when the flag is not given (None: nothing)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class DevicePart:
    """A part of the artifact that only a machine with a device builds (a TensorRT engine needs an NVIDIA
    GPU). Without the device, build writes the rest and the module's after_build raises NeedsDevice;
    `graphopt build --from ARTIFACT` (the module's build_from) adds the part on such a machine."""
    what: str  # "a TensorRT engine"
    from_help: str  # --from's help, after "<target>: "
    bench_note: str  # why bench has no row for the target without the device


@dataclass(frozen=True)
class Check:
    """`graphopt inspect --check <target>`: whether a model file suits the target's runtime (the module's
    inspect_check(path) -> (result with "ok", report text))."""
    takes: str  # which files, for the help: "any .onnx file"
    help: str


@dataclass(frozen=True)
class Target:
    """A target's descriptor (see the module docstring)."""
    name: str
    emits: str  # what the artifact holds, in words
    backend: str  # the runtime a Stream uses, for benchmark tables
    caps: Capabilities = Capabilities()
    variants: tuple[Variant, ...] = ()  # what a release builds (default: one artifact named after the target)
    options: tuple[Option, ...] = ()  # its own `graphopt build` flags
    device_part: DevicePart | None = None  # a part only a machine with a device builds
    check: Check | None = None  # `graphopt inspect --check <name>`
    packages: tuple[str, ...] = ()  # pip packages its runtime uses (a release records their versions)
    manifest_files: tuple[str, ...] = ()  # manifest fields "section.key" naming a file in the artifact folder

    def release_variants(self) -> tuple[Variant, ...]:
        return self.variants or (Variant(self.name),)

    def lowering_table(self):
        """The LoweringTable the target emits through (its module's TABLE, see lowering.py); importing
        it imports no runtime."""
        return module_for(self.name).TABLE


def names() -> list[str]:
    return list(MODULES)


def module_for(target: str):
    if target not in MODULES:
        raise KeyError(target)
    return importlib.import_module(f"{__name__}.{MODULES[target]}")


def get(target: str) -> Target:
    """The descriptor of a target (KeyError for an unknown name)."""
    return module_for(target).TARGET


def hook(target: str, name: str):
    """A target module's optional hook (see the module docstring), or None; None too for a name
    outside the registry (a release's reference row, a baseline)."""
    return getattr(module_for(target), name, None) if target in MODULES else None


def release_variants() -> dict[str, tuple[str, Variant]]:
    """Every target's release variants in registry order: variant name -> (target name, variant)."""
    return {v.name: (name, v) for name in MODULES for v in get(name).release_variants()}
