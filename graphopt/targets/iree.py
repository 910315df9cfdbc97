"""Target `iree`: the xla target's StableHLO compiled ahead of time by IREE into a `.vmfb`, run by
iree-base-runtime on its single-threaded `local-sync` driver.

The StableHLO is the xla target's: the graph lowered by jax_lowering.py and jax.export-ed as xla.py does,
but for the CPU alone (IREE takes one platform; the multi-platform module adds a platform-index argument
and a switch on it) and with every input kept as an argument, used or not, and one more result: whether every output and new state value is finite, computed in
the same compiled step (the Stream's NaN/Inf guard without reading the state back). iree-compile
(iree-base-compiler, llvm-cpu backend) turns it into a VM flatbuffer holding native code for the CPU chosen
by `--iree-cpu`. Loading needs only iree-base-runtime: neither jax nor the compiler.

The artifact is `<stem>.vmfb`, `<stem>.stablehlo.mlir` (the module compiled, as text: what to recompile
from when the .vmfb's origin is not trusted, see graphopt.trust), the manifest and the initial state.

A .vmfb is native code the runtime executes: the Stream checks the sha256 of the very bytes it hands to
the runtime against the manifest (no window between the check and the load), and the trust check
(graphopt.trust.check_vmfb) checks it is an IREE flatbuffer inside the artifact folder. Like a TensorRT
engine, that catches a swapped or damaged file, not a malicious artifact (whoever wrote the .vmfb wrote
the manifest): rebuild from the model, or recompile the shipped StableHLO, when the source is untrusted.

The Stream keeps the state in IREE buffers between steps: each call's state results are the next call's
state arguments (no copy to numpy), and only the frame goes in and only the output comes back.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from ..stream import Stream
from . import Capabilities, Option, Target
from . import xla
from .jax_lowering import TABLE  # noqa: F401  (the target's lowering table: the xla target's)

NAME = "iree"
SUFFIX = ".vmfb"
DRIVER = "local-sync"  # IREE's single-threaded, synchronous CPU driver: one step runs on the calling thread
BACKEND = "llvm-cpu"
# --iree-cpu: "host" compiles for this machine's CPU (its vector extensions, AVX-512 here) and records the
# features the .vmfb then needs (IREE's runtime checks only the executable format, x86_64: code for a CPU
# that lacks a feature would die of an illegal instruction, so the Stream refuses to load it there); "generic" for any CPU of its architecture.
CPUS = ("host", "generic")
DEFAULT_CPU = "host"
# Measured on FacePhys, 1 thread, CPU time per step in one interleaved run (tests/benchmarks/bench_iree.py):
# data tiling (matmul and conv operands packed into the tile layout the CPU's kernels want) 3-6% faster than
# IREE's defaults; ukernels on top, or -O3, no better; --iree-cpu generic runs at a fifth of host's speed.
COMPILE_FLAGS = ("--iree-opt-data-tiling",)
TARGET = Target(NAME, emits=".vmfb (IREE llvm-cpu, from the xla target's StableHLO)",
                backend="IREE llvm-cpu (local-sync)",
                # the StableHLO XLA takes (convs with input dilation too), but IREE's vectorised reductions add
                # each lane's terms one after another: long sums are split (PhysNet's standardisation over
                # 131072 values reaches 41x the noise floor unsplit)
                caps=Capabilities(sequential_sums=True, input_dilated_convs=True),
                options=(Option("--iree-cpu", "compile for this machine's CPU (host, default: the .vmfb loads only "
                                "on CPUs with its features) or for any CPU of its architecture (generic, ~5x slower)",
                                choices=CPUS, default=DEFAULT_CPU),),
                packages=("iree-base-compiler", "iree-base-runtime"), manifest_files=("iree.mlir",))


def available() -> tuple[bool, str]:
    """Whether this machine builds (and runs) IREE artifacts: jax exports the StableHLO, IREE compiles it."""
    ok, reason = xla.available()
    if not ok:
        return ok, reason
    try:
        import iree.compiler.tools  # noqa: F401
    except ImportError:
        return False, "iree.compiler is not installed (pip install iree-base-compiler; see requirements.txt)"
    return runtime_available()


def runtime_available() -> tuple[bool, str]:
    """Whether this machine runs IREE artifacts (graphopt.load): iree-base-runtime alone."""
    try:
        import iree.runtime  # noqa: F401
    except ImportError:
        return False, "iree.runtime is not installed (pip install iree-base-runtime, or graphopt[iree])"
    return True, ""


def export(graph: Graph):
    """jax.export (CPU alone) of the graph's step (jax_lowering's function, as xla.export lowers it) with one
    result more: 1 when every float output and new state value is finite, else 0 (int32)."""
    import jax
    import jax.numpy as jnp
    from jax import export as jex

    from .jax_lowering import to_jax_function
    f = to_jax_function(graph)

    def step_and_finite(*args):
        out = f(*args)
        flags = [jnp.isfinite(x).all() for x in out if jnp.issubdtype(x.dtype, jnp.inexact)]
        ok = jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)
        return (*out, ok.astype(jnp.int32))

    args = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in graph.inputs + [s.input for s in graph.state]]
    with xla._no_source_paths():  # no path of the building machine in the artifact
        # keep_unused: every input stays an argument of main (the Stream passes them all), used or not
        return jex.export(jax.jit(step_and_finite, keep_unused=True), platforms=("cpu",))(*args)


def compile_flags(cpu: str = DEFAULT_CPU) -> list[str]:
    """iree-compile's flags (beyond the llvm-cpu backend) for a .vmfb for the given CPU ("host" or "generic")."""
    if cpu not in CPUS:
        raise art.ArtifactError(f"--iree-cpu {cpu!r:.40} is not one of {', '.join(CPUS)}")
    return [f"--iree-llvmcpu-target-cpu={cpu}", *COMPILE_FLAGS]


_CPU_FEATURES: set[str] | None = None


def cpu_features() -> set[str]:
    """The CPU features IREE's runtime detects on this machine (iree-cpuinfo, shipped with iree-base-runtime;
    run once per process)."""
    global _CPU_FEATURES
    if _CPU_FEATURES is None:
        import subprocess

        import iree._runtime_libs as libs
        tool = Path(libs.__file__).parent / "iree-cpuinfo"
        try:
            out = subprocess.run([str(tool)], capture_output=True, text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise art.ArtifactError(f"cannot read this CPU's features with {tool.name} ({_first_line(e)}); "
                                    "reinstall iree-base-runtime") from None
        _CPU_FEATURES = {p[0] for p in map(str.split, out.splitlines()) if len(p) == 2 and p[1] == "1"}
    return set(_CPU_FEATURES)


def compile_mlir(mlir: str, flags: list[str]) -> bytes:
    """The .vmfb of a StableHLO module (text), compiled by iree-compile for the llvm-cpu backend."""
    from iree.compiler import tools
    try:
        return tools.compile_str(mlir, input_type="stablehlo", target_backends=[BACKEND], extra_args=list(flags))
    except tools.CompilerToolError as e:
        lines = [ln for ln in str(e).splitlines() if "error:" in ln] or str(e).strip().splitlines() or ["?"]
        raise art.ArtifactError(f"iree-compile failed: {lines[0].strip()[:300]}") from None


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    options = options or {}
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_file = out_dir / f"{stem}{SUFFIX}"
    cpu = options.get("iree_cpu") or DEFAULT_CPU
    flags = compile_flags(cpu)
    exported = export(graph)
    mlir = exported.mlir_module()
    mlir_file = out_dir / f"{stem}.stablehlo.mlir"
    mlir_file.write_text(mlir)
    model_file.write_bytes(compile_mlir(mlir, flags))
    manifest = art.describe_graph(graph, model_file.name, NAME, options.get("precision", "float32"))
    manifest["sha256"] = art.sha256(model_file)
    manifest["iree"] = {"mlir": mlir_file.name, "backend": BACKEND, "driver": DRIVER,
                        "target_cpu": cpu, "compile_flags": flags,
                        # what a host build's code may use: the Stream refuses a CPU without one of them
                        "cpu_features": sorted(cpu_features()) if cpu == "host" else [],
                        "function": "main", "finite_flag": "last result (int32, 1: outputs and state finite)",
                        "flat_arguments": [v.name for v in graph.inputs] + [s["input"] for s in manifest["state"]]}
    manifest["tools"] = art.tool_versions("jax", "jaxlib", "iree-base-compiler", "iree-base-runtime")
    return art.finish(graph, model_file, manifest)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _manifest_fields(model_file: Path, manifest: dict) -> tuple[str, set[str]]:
    """The manifest's iree section as the Stream uses it (untrusted: checked): the function to call and the
    CPU features the code needs."""
    section = manifest.get("iree")
    if not isinstance(section, dict):
        raise art.ArtifactError(f"the manifest of {model_file} has no iree section; rebuild the artifact")
    function, needs = section.get("function", "main"), section.get("cpu_features", [])
    if not isinstance(function, str) or not function.isidentifier() or len(function) > 64:
        raise art.ArtifactError(f"the manifest of {model_file}: iree.function {function!r:.40} is not a function "
                                "name; rebuild the artifact")
    if not isinstance(needs, list) or len(needs) > 256 or not all(isinstance(f, str) and len(f) < 40 for f in needs):
        raise art.ArtifactError(f"the manifest of {model_file}: iree.cpu_features is not a list of feature names; "
                                "rebuild the artifact")
    return function, set(needs)


class IreeStream(Stream):
    def __init__(self, model_file: Path, manifest: dict, initial_state):
        import iree.runtime as rt
        super().__init__(manifest, initial_state)
        data = Path(model_file).read_bytes()  # the bytes checked are the bytes loaded
        if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise art.ArtifactError(f"model file {model_file} does not match the sha256 in its manifest (changed "
                                    "after the build, or not this artifact's file); rebuild or re-download the "
                                    "artifact")
        function, needs = _manifest_fields(model_file, manifest)
        missing = sorted(needs - cpu_features())
        if missing:
            raise art.ArtifactError(f"{model_file} was compiled for a CPU with {', '.join(missing[:6])}, which this "
                                    "CPU lacks; rebuild it here (graphopt build --target iree, or --iree-cpu generic "
                                    "for any CPU)")
        try:
            self._config = rt.Config(DRIVER)
            module = rt.VmModule.copy_buffer(self._config.vm_instance, data)
            context = rt.SystemContext(config=self._config)
            context.add_vm_module(module)
            self._main = context.modules[module.name][function]
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise art.ArtifactError(f"IREE cannot load {model_file} ({type(e).__name__}: {_first_line(e)}); "
                                    "rebuild the artifact (a .vmfb runs only with the iree-base-runtime version "
                                    "that compiled it, on a CPU with the features it was compiled for)") from None
        self._context, self._rt = context, rt
        self._n_out = len(manifest["outputs"])
        self._finite = True
        self._reset()

    def _run(self, feeds, state):
        results = self._main(*feeds, *state)
        results = results if isinstance(results, tuple) else (results,)
        n = self._n_out
        if len(results) != n + len(state) + 1:
            raise ValueError(f"the .vmfb returns {len(results)} results, the manifest says {n} outputs, "
                             f"{len(state)} state tensors and the finite flag")
        self._finite = bool(np.asarray(results[-1].to_host()) == 1)
        return [np.array(y.to_host()) for y in results[:n]], list(results[n:-1])

    def _state_finite(self, state) -> bool:
        return self._finite  # outputs and state, checked inside the compiled step

    def _reset(self) -> None:
        self._state = [self._rt.asdevicearray(self._config.device, np.asarray(s)) for s in self._initial_state]

    @property
    def native_state(self) -> list[np.ndarray]:
        with self._lock:
            return [np.array(s.to_host()) for s in self._state]


def open_stream(model_file: Path, manifest: dict, initial_state, threads: int = 1) -> IreeStream:
    """threads: what other targets take; local-sync runs every step on the calling thread, one thread."""
    return IreeStream(model_file, manifest, initial_state)


def card_snippet(c) -> list[str]:
    """The model card's code that runs the artifact (c: release.Snippet)."""
    return ["# IREE (local-sync driver, one thread)", "import iree.runtime as ireert",
            f"cfg = ireert.Config('{DRIVER}'); ctx = ireert.SystemContext(config=cfg)",
            f"mod = ireert.VmModule.copy_buffer(cfg.vm_instance, open('{c.folder}/{c.model}.vmfb', 'rb').read())",
            "ctx.add_vm_module(mod); main = ctx.modules[mod.name]['main']",
            f"bvp, *rest = main({', '.join(c.inputs)}{', *state.values()' if c.stateful else ''}); "
            "bvp = bvp.to_host()  # rest: the new state, then a finite flag"]
