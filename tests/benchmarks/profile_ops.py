"""Where each runtime spends one step, per op type, 1 thread (issue 18: batch 1, float32, closer to the bound).

For a model's onnx, tflite and xla artifacts (built here, or taken from --artifacts):

- onnxruntime: its own profiler (SessionOptions.enable_profiling); kernel time summed per op type as
  onnxruntime runs the graph (after its graph optimisations: FusedConv, NCHWc convs, ...), nodes per type;
  the step's time outside kernels (executor, fences) is its own row.
- LiteRT: LiteRT's runtime profiler, reached through its C API (libLiteRt.so, ctypes; the Python
  Interpreter exposes no profiler): a CompiledModel on CPU (XNNPACK) with runtime option
  enable_profiling; XNNPACK reports each operator inside its delegate partitions ("Delegate/..."), the
  ops outside them are TFLite's builtin kernels.
- XLA: the optimised HLO (--xla_dump_to) of the step: fusions, convolutions, dots, custom calls, library
  (YNNPACK/XNNPACK/oneDNN) fusions; and jax.profiler's trace on CPU, where XLA:CPU's thunk executor
  records one event per thunk (per fusion / library call): time per thunk summed per kind of thunk.

Each runtime is profiled in its own process (XLA's flags are fixed when jax starts; two LiteRT copies
stay apart). Then one interleaved run of the artifacts as they are deployed (graphopt.bench: Stream.step,
1 thread) gives each artifact's FPS and its share of the compute bound: this core's single-thread sgemm
rate (onnxruntime's MLAS MatMul, as `graphopt bench`, and NumPy's BLAS at 1 thread) over the model's
FLOPs per frame (the traced graph's, as `graphopt bench`; the optimised graph's is in each manifest).

Not part of the test run. Run by hand (a few minutes):

    .venv/bin/python tests/benchmarks/profile_ops.py [--model facephys] [--artifacts DIR] [--out DIR]
        [--runtimes onnx,tflite,xla] [--steps 300] [--rounds 5] [--json result.json] [--render result.json]

--artifacts DIR: a folder holding <target>/ or <model>-<target>/ artifact folders (e.g. a release folder);
without it the artifacts are built into --out (default /tmp/graphopt-profile), or reused from there when
a build of the same model, target and pipeline is already there. Prints Markdown tables.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # NumPy's BLAS: 1 thread
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RUNTIMES = ("onnx", "tflite", "xla")
WARMUP = 30


# ---- shared: the artifact and its feeds ---------------------------------------------------------------------
def open_folder(folder: str):
    from graphopt import artifact as art
    return art.open_artifact(folder)


def feeds_for(manifest: dict, steps: int, seed: int = 0) -> list[dict]:
    """Per step: input name -> array, from the manifest alone (a frame in 0..1, dt = 1/fps, other inputs
    uniform in 0..1): the profiles need realistic values (no NaN/denormal paths), not the reference clip."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        f = {}
        for spec in manifest["inputs"]:
            shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if spec.get("role") == "dt":
                f[spec["name"]] = np.full(shape, 1.0 / float(manifest.get("fps", 30.0)), dtype)
            else:
                f[spec["name"]] = rng.uniform(0.0, 1.0, shape).astype(dtype)
        out.append(f)
    return out


def table(rows: list[dict], total_us: float) -> list[dict]:
    """rows of {type, nodes, us} -> sorted, with the share of total_us."""
    for r in rows:
        r["pct"] = 100.0 * r["us"] / total_us if total_us else 0.0
    return sorted(rows, key=lambda r: -r["us"])


# ---- onnxruntime ----------------------------------------------------------------------------------------
def profile_onnx(folder: str, steps: int) -> dict:
    import onnxruntime as ort
    a = open_folder(folder)
    m = a.manifest
    tmp = tempfile.mkdtemp(prefix="profile-ort-")
    from graphopt.targets.onnx import session_options
    opts = session_options(1)  # graphopt's Stream's, plus the profiler
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tmp, "ort")
    sess = ort.InferenceSession(str(a.model_file), opts, providers=["CPUExecutionProvider"])
    state = {s["input"]: np.asarray(v) for s, v in zip(m["state"], a.state)}
    out_names = [o.name for o in sess.get_outputs()]
    pairs = {s["output"]: s["input"] for s in m["state"]}
    feeds = feeds_for(m, 64)
    for i in range(WARMUP + steps):
        outs = sess.run(None, {**feeds[i % len(feeds)], **state})
        state = {pairs[n]: v for n, v in zip(out_names, outs) if n in pairs}
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    cutoff = runs[WARMUP] if len(runs) > WARMUP else 0
    run_us = [e["dur"] for e in events if e.get("name") == "model_run" and e["ts"] >= cutoff]
    per_type: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < cutoff:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_type[op] += e["dur"]
        nodes[op].add(e["name"][: -len("_kernel_time")])
    n = len(run_us)
    rows = [{"type": op, "nodes": len(nodes[op]), "us": us / n} for op, us in per_type.items()]
    kernel_us = sum(r["us"] for r in rows)
    step_us = float(np.mean(run_us))
    rows.append({"type": "(outside kernels: executor, memory planning)", "nodes": "", "us": step_us - kernel_us})
    return {"runtime": "onnxruntime " + ort.__version__, "steps": n, "step_us": step_us,
            "step_us_median": float(np.median(run_us)), "file_nodes": m.get("onnx", {}).get("nodes"),
            "file_ops": m.get("onnx", {}).get("ops"), "ort_nodes": sum(len(v) for v in nodes.values()),
            "rows": table(rows, step_us)}


# ---- LiteRT (C API profiler through ctypes) -------------------------------------------------------------
class LiteRtError(RuntimeError):
    pass


def _litert():
    import ai_edge_litert
    lib = ctypes.CDLL(str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so"))

    def call(name, *args):
        status = getattr(lib, name)(*args)
        if status != 0:
            raise LiteRtError(f"{name} returned LiteRT status {status}")
    return lib, call


def profile_tflite(folder: str, steps: int) -> dict:
    """LiteRT CompiledModel (CPU: XNNPACK) with the runtime profiler on, run through the C API. The runtime
    option is passed as LiteRT's opaque options do it (identifier "runtime_options_string", a TOML payload)."""
    a = open_folder(folder)
    m = a.manifest
    vp, size_t = ctypes.c_void_p, ctypes.c_size_t
    lib, call = _litert()
    libc = ctypes.CDLL(None)
    libc.strdup.restype, libc.strdup.argtypes = vp, [ctypes.c_char_p]
    env, model, opts, opaque, cm, prof = vp(), vp(), vp(), vp(), vp(), vp()
    call("LiteRtCreateEnvironment", ctypes.c_int(0), None, ctypes.byref(env))
    call("LiteRtCreateModelFromFile", env, ctypes.c_char_p(str(a.model_file).encode()), ctypes.byref(model))
    call("LiteRtCreateOptions", ctypes.byref(opts))
    call("LiteRtSetOptionsHardwareAccelerators", opts, ctypes.c_int(1))  # kLiteRtHwAcceleratorCpu
    payload = libc.strdup(b"enable_profiling = true\n")  # freed by LiteRT through the deleter (libc free)
    call("LiteRtCreateOpaqueOptions", ctypes.c_char_p(b"runtime_options_string"), vp(payload),
         ctypes.cast(libc.free, vp), ctypes.byref(opaque))
    call("LiteRtAddOpaqueOptions", opts, opaque)
    call("LiteRtCreateCompiledModel", env, model, opts, ctypes.byref(cm))
    call("LiteRtCompiledModelGetProfiler", cm, ctypes.byref(prof))
    if not prof.value:
        raise LiteRtError("this LiteRT build ignored the enable_profiling runtime option (no profiler)")
    n_sig = size_t()
    call("LiteRtGetNumModelSignatures", model, ctypes.byref(n_sig))
    sig, sig_index = vp(), None
    for i in range(n_sig.value):
        s, key = vp(), ctypes.c_char_p()
        call("LiteRtGetModelSignature", model, size_t(i), ctypes.byref(s))
        call("LiteRtGetSignatureKey", s, ctypes.byref(key))
        if key.value in (b"step", b"serving_default") or n_sig.value == 1:
            sig, sig_index = s, i
            if key.value == b"step":
                break
    if sig_index is None:
        raise LiteRtError(f"{a.model_file} has no step signature")
    keep = []  # host arrays the tensor buffers point into

    def buffers(kind: str, values: dict | None):
        n = size_t()
        call(f"LiteRtGetNumSignature{kind}s", sig, ctypes.byref(n))
        bufs = []
        for j in range(n.value):
            t, name, rt, b = vp(), ctypes.c_char_p(), ctypes.create_string_buffer(1024), vp()
            call(f"LiteRtGetSignature{kind}TensorByIndex", sig, size_t(j), ctypes.byref(t))
            call("LiteRtGetSignature" + kind + "Name", sig, size_t(j), ctypes.byref(name))
            call("LiteRtGetRankedTensorType", t, rt)
            req = vp()
            call(f"LiteRtGetCompiledModel{kind}BufferRequirements", cm, size_t(sig_index), size_t(j), ctypes.byref(req))
            call("LiteRtCreateManagedTensorBufferFromRequirements", env, rt, req, ctypes.byref(b))
            if values is not None and name.value.decode() in values:  # write the input's value
                x = np.ascontiguousarray(values[name.value.decode()])
                addr = vp()
                call("LiteRtLockTensorBuffer", b, ctypes.byref(addr), ctypes.c_int(2))  # kLiteRtTensorBufferLockModeReadWrite
                ctypes.memmove(addr, x.ctypes.data, x.nbytes)
                call("LiteRtUnlockTensorBuffer", b)
                keep.append(x)
            bufs.append(b)
        return (vp * len(bufs))(*bufs), len(bufs)

    feeds = feeds_for(m, 1)[0]
    state = {s["input"]: np.asarray(v) for s, v in zip(m["state"], a.state)}
    ins, n_in = buffers("Input", {**feeds, **state})
    outs, n_out = buffers("Output", None)

    def run(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            call("LiteRtRunCompiledModel", cm, size_t(sig_index), size_t(n_in), ins, size_t(n_out), outs)
        return (time.perf_counter() - t0) / k

    run(WARMUP)
    call("LiteRtStartProfiler", prof)
    wall = run(steps)
    call("LiteRtStopProfiler", prof)
    summary = ctypes.c_char_p()
    call("LiteRtGetProfileSummary", prof, cm, ctypes.byref(summary))
    text = summary.value.decode(errors="replace")
    rows = _litert_by_type(text)
    total = sum(r["us"] for r in rows)
    ops_in_file = (m.get("tflite") or {}).get("op_histogram") or {}
    return {"runtime": "LiteRT " + _version("ai-edge-litert") + " (CompiledModel, CPU: XNNPACK)", "steps": steps,
            "step_us": total, "wall_us_profiled": wall * 1e6,
            "xnnpack_partitions": (m.get("tflite") or {}).get("xnnpack_partitions"),
            "file_ops": ops_in_file, "rows": table(rows, total), "summary_text": text}


def _litert_by_type(text: str) -> list[dict]:
    """The 'Summary by node type' section of LiteRT's profile summary: [node type] [count] [avg ms] [avg %]
    ...; us per step = count x avg ms (avg is per node and run)."""
    part = text.split("Summary by node type", 1)
    if len(part) < 2:
        raise LiteRtError("LiteRT's profile summary has no 'Summary by node type' section")
    rows = []
    for line in part[1].splitlines()[2:]:
        if not line.strip() or line.startswith("="):
            break
        m = re.match(r"\s*(.+?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%", line)
        if m:
            kind, count, avg_ms = m.group(1), int(m.group(2)), float(m.group(3))
            pct = float(m.group(4))
            rows.append({"type": kind, "nodes": count, "us": None, "pct_litert": pct, "avg_ms": avg_ms})
    # us from the exact shares (avg ms is rounded to 1 us): total = sum(count * avg) over the larger rows
    big = [r for r in rows if r["pct_litert"] >= 5.0] or rows
    total_us = sum(r["nodes"] * r["avg_ms"] * 1e3 for r in big) / max(sum(r["pct_litert"] for r in big) / 100.0, 1e-9)
    for r in rows:
        r["us"] = r["pct_litert"] / 100.0 * total_us
        kind = r["type"]
        r["type"] = (kind.removeprefix("Delegate/") + " (XNNPACK)") if kind.startswith("Delegate/") \
            else kind + " (TFLite builtin, outside XNNPACK)"
    return rows


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# ---- XLA (HLO dump + jax.profiler trace) ------------------------------------------------------------------
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")


def _split_type(rest: str) -> tuple[str, str]:
    """'f32[2]{0} add(%a, %b), ...' or '(f32[], f32[]) fusion(...)' -> (opcode, the rest after it)."""
    i = 0
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        i += 1
    else:
        i = rest.find(" ")
    tail = rest[i:].strip()
    m = re.match(r"([\w\-]+)\(", tail)
    return (m.group(1) if m else "?"), tail


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(computations: name -> [(instr, opcode, line)], the entry computation's name)."""
    comps: dict[str, list] = {}
    entry, current = None, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            current = head.group(2)
            comps[current] = []
            if head.group(1):
                entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if current and m:
            op, tail = _split_type(m.group(2))
            comps[current].append((m.group(1), op, tail))
    return comps, entry


TRIVIAL = {"parameter", "constant", "bitcast", "broadcast", "reshape", "tuple", "get-tuple-element", "iota"}
LIBRARIES = {"ynn": "YNNPACK", "xnn": "XNNPACK", "onednn": "oneDNN"}
MOVES = {"copy", "transpose", "slice", "concatenate", "pad", "dynamic-slice", "dynamic-update-slice", "reverse",
         "gather", "scatter"}


def classify(name: str, op: str, tail: str, comps: dict) -> str:
    """A thunk's kind: library fusions, convolution, dot, reduce-window, reduce, data movement, elementwise."""
    if op == "fusion":
        config = re.search(r'"kind":"__(\w+?)_fusion"', tail)  # kind=kCustom library fusions
        lib = LIBRARIES.get(config.group(1) if config else name.split("_", 1)[0])
        called = re.search(r"calls=%([\w.\-]+)", tail)
        body = {o for _, o, _ in comps.get(called.group(1), [])} if called else set()
        # a fusion can call nested computations (reduce's to_apply): their ops count too
        for _, o, t in comps.get(called.group(1), []) if called else []:
            inner = re.search(r"calls=%([\w.\-]+)", t)
            if inner:
                body |= {o2 for _, o2, _ in comps.get(inner.group(1), [])}
        core = body - TRIVIAL
        if "convolution" in core:
            kind = "convolution"
        elif "dot" in core:
            kind = "dot"
        elif "reduce-window" in core:
            kind = "reduce-window (pooling, cumulative sums)"
        elif "reduce" in core:
            kind = "reduce fusion"
        elif core and core <= MOVES:
            kind = "data movement (copy/transpose/slice/concat)"
        else:
            kind = "elementwise fusion"
        return f"{lib} {kind}" if lib else kind
    if op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', tail)
        return "custom-call " + (target.group(1) if target else "?")
    if op in MOVES:
        return "data movement (copy/transpose/slice/concat)"
    return op


def profile_xla(folder: str, steps: int, dump: str) -> dict:
    import jax
    from graphopt import artifact as art
    stream = art.load(folder, threads=1)
    m = stream.manifest
    feeds = feeds_for(m, 64)
    names = stream.input_names

    def step(i):
        stream.step(*(feeds[i % len(feeds)][n] for n in names))

    for i in range(WARMUP):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    wall_us = (time.perf_counter() - t0) / steps * 1e6
    trace = tempfile.mkdtemp(prefix="profile-xla-")
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # C++ TraceMe events only (XLA's thunks, jax's dispatch)
    jax.profiler.start_trace(trace, profiler_options=options)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    traced_us = (time.perf_counter() - t0) / steps * 1e6
    jax.profiler.stop_trace()
    events: dict[str, list[float]] = defaultdict(list)
    pb = glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True)
    for plane in jax.profiler.ProfileData.from_file(pb[0]).planes:
        for line in plane.lines:
            for ev in line.events:
                events[ev.name].append(ev.duration_ns / 1e3)
    # the step's module: the after-optimisations dump whose entry instructions the trace names most
    best = None
    for f in glob.glob(os.path.join(dump, "*after_optimizations.txt")):
        comps, entry = parse_hlo(Path(f).read_text())
        if entry is None:
            continue
        hits = sum(1 for n, _, _ in comps[entry] if n in events)
        if best is None or hits > best[0]:
            best = (hits, f, comps, entry)
    if best is None:
        raise RuntimeError(f"no optimised HLO dump in {dump}")
    _, hlo_file, comps, entry = best
    per_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    top = []
    for name, op, tail in comps[entry]:
        if op in TRIVIAL:
            continue
        kind = classify(name, op, tail, comps)
        count[kind] += 1
        us = sum(events.get(name, [])) / steps
        per_kind[kind] += us
        source = re.search(r'op_name="([^"]+)"', tail)
        top.append({"thunk": name, "kind": kind, "us": us, "jax_op": source.group(1) if source else ""})
    top = sorted(top, key=lambda t: -t["us"])[:10]
    executor = sum(events.get("ThunkExecutor::Execute", [])) / steps
    rows = [{"type": k, "nodes": count[k], "us": us} for k, us in per_kind.items()]
    thunk_us = sum(r["us"] for r in rows)
    rows.append({"type": "(thunk executor outside thunks)", "nodes": "", "us": executor - thunk_us})
    rows.append({"type": "(jax dispatch, transfers, Stream guard: traced step - executor)", "nodes": "",
                 "us": traced_us - executor})
    all_ops = [(o, t) for c in comps.values() for _, o, t in c]
    entry_ops = [o for _, o, _ in comps[entry]]
    counts = {"entry instructions (thunks)": sum(o not in TRIVIAL for o in entry_ops),
              "fusions": entry_ops.count("fusion"),
              "library fusions (YNNPACK/XNNPACK/oneDNN)": sum(1 for n, o, t in comps[entry] if o == "fusion" and
                                                             classify(n, o, t, comps).split()[0] in
                                                             LIBRARIES.values()),
              "convolutions (anywhere)": sum(o == "convolution" for o, _ in all_ops),
              "dots (anywhere)": sum(o == "dot" for o, _ in all_ops),
              "custom-calls": sum(o == "custom-call" for o, _ in all_ops),
              "copies/transposes in the entry": sum(o in ("copy", "transpose") for o in entry_ops)}
    return {"runtime": f"XLA:CPU (jaxlib {jax.__version__})", "steps": steps, "step_us": traced_us, "untraced_us": wall_us,
            "executor_us": executor, "hlo_file": hlo_file, "hlo_counts": counts,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "top_thunks": top, "rows": table(rows, traced_us)}


# ---- compute bound ------------------------------------------------------------------------------------------
def numpy_sgemm_gflops(n: int = 512, repeats: int = 20) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


# ---- parent ----------------------------------------------------------------------------------------------------
def find_or_build(model: str, targets: list[str], artifacts: str | None, out: str, traced, log) -> dict:
    from graphopt import artifact as art
    from graphopt.bench import _reusable
    from graphopt.builder import build
    found = {}
    for t in targets:
        if artifacts:
            for cand in (Path(artifacts) / t, Path(artifacts) / f"{model}-{t}"):
                try:
                    manifest, _ = art.read_manifest(cand)
                except art.ArtifactError:
                    continue
                if manifest.get("target") == t:
                    found[t] = str(cand)
                    break
            if t not in found:
                log(f"no {t} artifact in {artifacts} (looked for {t}/ and {model}-{t}/): skipped")
            continue
        dest = Path(out) / f"{model}-{t}"
        if not _reusable(dest, traced.spec, t, "fused"):
            log(f"building {model} {t} into {dest} ...")
            build(model, t, dest, verify=False, force=True, traced=traced, log=lambda m: None)
        found[t] = str(dest)
    return found


def child(runtime: str, folder: str, steps: int, result: str, dump: str | None) -> None:
    if runtime == "onnx":
        r = profile_onnx(folder, steps)
    elif runtime == "tflite":
        try:
            r = profile_tflite(folder, steps)
        except (LiteRtError, OSError, AttributeError) as e:
            r = {"runtime": "LiteRT", "error": f"LiteRT's profiler is not reachable here: {e}"}
    else:
        r = profile_xla(folder, steps, dump)
    Path(result).write_text(json.dumps(r, default=str))


def markdown(name: str, r: dict) -> str:
    if "error" in r:
        return f"### {name}\n\n{r['error']}\n"
    lines = [f"### {r['runtime']}", "", "| op type | nodes | % of step | us/step |", "|---|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['type']} | {row['nodes']} | {row['pct']:.1f}% | {row['us']:.0f} |")
    lines.append("")
    if name == "onnx":
        lines.append(f"Step {r['step_us']:.0f} us (onnxruntime's model_run, profiler on, {r['steps']} steps); "
                     f"{r['file_nodes']} nodes in the file, {r['ort_nodes']} after onnxruntime's optimisations.")
    elif name == "tflite":
        lines.append(f"Step {r['step_us']:.0f} us summed over the profiled ops ({r['steps']} steps; wall with the "
                     f"profiler {r['wall_us_profiled']:.0f} us); XNNPACK partitions (manifest): "
                     f"{r['xnnpack_partitions']}.")
    else:
        c = ", ".join(f"{k} {v}" for k, v in r["hlo_counts"].items())
        lines.append(f"Step {r['step_us']:.0f} us traced ({r['untraced_us']:.0f} us untraced; Stream.step), thunk "
                     f"executor {r['executor_us']:.0f} us ({r['steps']} traced steps). Optimised HLO: {c}.")
        lines.append("Slowest thunks: " + "; ".join(f"{t['thunk']} ({t['kind']}{', ' + t['jax_op'] if t['jax_op'] else ''})"
                                                   f" {t['us']:.0f} us" for t in r["top_thunks"][:6]) + ".")
    return "\n".join(lines) + "\n"


CONV_ROWS = {"onnx": ("Conv",), "tflite": ("Convolution",), "xla": ("convolution",)}


def render(result: dict) -> str:
    """The Markdown: one table per runtime, then FPS against the compute bound and where the convs stand."""
    out = [f"## Where the step goes: {result['model']}, batch 1, float32, 1 thread\n"]
    for t in RUNTIMES:
        if t in result["profiles"]:
            out.append(markdown(t, result["profiles"][t]))
    fps = result["fps"]
    flops = fps["flops_per_frame"]
    out += ["### Against the compute bound\n", "| artifact | FPS | x authors' JAX JIT | of fp32 bound (MLAS sgemm) |",
            "|---|---:|---:|---:|"]
    for r in sorted(fps["rows"], key=lambda r: -r["fps"]):
        out.append(f"| {r['name']} | {r['fps']:.0f} | {r['x_reference']:.2f} | {100 * (r['of_compute_bound'] or 0):.0f}% |")
    mach, np_gflops = fps["machine"], result["numpy_sgemm_gflops"]
    opt = ", ".join(f"{t} {v / 1e6:.1f}" for t, v in result["optimised_flops_per_frame"].items())
    out.append(f"\n{flops / 1e6:.1f} MFLOP/frame (the traced graph; after graphopt's passes: {opt}). Single-thread "
               f"sgemm (512^3): onnxruntime MLAS {fps['sgemm_gflops_1thread']:.1f} GFLOP/s -> bound "
               f"{fps['compute_bound_fps']:.0f} FPS; NumPy BLAS {np_gflops:.1f} GFLOP/s -> bound "
               f"{np_gflops * 1e9 / flops:.0f} FPS. Machine: {mach['cpu']}, {mach['cores']} cores (shared), "
               f"no GPU; {result['rounds']} interleaved rounds of 100 steps.")
    by_op = result["flops_per_frame_by_op"]
    conv = by_op.get("conv", 0.0)
    parts = []
    for t, names in CONV_ROWS.items():
        prof = result["profiles"].get(t, {})
        us = sum(r["us"] for r in prof.get("rows", []) if any(n in r["type"] for n in names))
        if us:
            parts.append(f"{t} {conv / us / 1e3:.0f} GFLOP/s ({us:.0f} us/step)")
    out.append(f"\nConvolutions are {conv / 1e6:.1f} MFLOP/frame ({100 * conv / flops:.0f}% of the FLOPs; dots "
               f"{by_op.get('dot', 0.0) / 1e6:.1f} MFLOP). Rate the convolutions reach inside each profile: "
               + "; ".join(parts) + f" (sgemm: {fps['sgemm_gflops_1thread']:.0f}).")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="facephys")
    p.add_argument("--artifacts", help="folder with <target>/ or <model>-<target>/ artifacts (else build)")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "graphopt-profile"))
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    p.add_argument("--artifact", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    p.add_argument("--render", help="print the tables of a saved --json result (nothing measured)")
    a = p.parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return 0
    if a.child:
        child(a.child, a.artifact, a.steps, a.result, a.dump)
        return 0

    from graphopt import bench
    bench.single_thread_env()  # before jax starts (the builds, the interleaved run)
    from graphopt import artifact as art, trace_cache
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    targets = [t.strip() for t in a.runtimes.split(",") if t.strip()]
    traced = trace_cache.load_traced(a.model, log=log)
    folders = find_or_build(a.model, targets, a.artifacts, a.out, traced, log)
    results = {}
    work = tempfile.mkdtemp(prefix="profile-ops-")
    for t, folder in folders.items():
        res = os.path.join(work, f"{t}.json")
        env = dict(os.environ)
        dump = None
        if t == "xla":  # flags after XLA_FLAGS' first non-flag token are ignored: the dump goes first
            dump = os.path.join(work, "xla-dump")
            env["XLA_FLAGS"] = f"--xla_dump_to={dump} --xla_dump_hlo_as_text " + env.get("XLA_FLAGS", "")
        log(f"profiling {t} ({folder}) ...")
        cmd = [sys.executable, __file__, "--child", t, "--artifact", folder, "--steps", str(a.steps),
               "--result", res] + (["--dump", dump] if dump else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(res):
            tail = (done.stderr.strip().splitlines() or ["?"])[-1]
            results[t] = {"runtime": t, "error": f"the {t} profile failed: {tail}"}
        else:
            results[t] = json.loads(Path(res).read_text())
    log("measuring the artifacts as deployed (interleaved, 1 thread) ...")
    fps = bench.run(a.model, None, artifacts=list(folders.values()), rounds=a.rounds, steps_per_round=100, log=log)
    opt_flops = {}
    for t, f in folders.items():
        manifest, _ = art.read_manifest(f)
        opt_flops[t] = manifest["graph"]["flops_per_step"] / manifest.get("frames_per_step", 1)
    per = traced.spec.frames_per_step
    by_op: dict[str, float] = defaultdict(float)
    from graphopt.ir.ops import get_op
    for n in traced.graph.nodes:
        by_op[n.op] += get_op(n.op).flops([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs) / per
    for r in results.values():
        r.pop("summary_text", None)
    result = {"model": a.model, "profiles": results, "fps": fps, "numpy_sgemm_gflops": numpy_sgemm_gflops(),
              "optimised_flops_per_frame": opt_flops, "flops_per_frame_by_op": dict(by_op), "rounds": a.rounds}
    print(render(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
