"""Runtime levers for a batch-1 float32 step (issue 18), in one interleaved run, 1 thread.

Each row is an artifact graphopt builds today, run through its Stream as `graphopt bench` runs it, with
one runtime setting changed; its group's first row is the setting graphopt uses today:

- onnx: graphopt's session options (graphopt.targets.onnx.session_options: ORT_ENABLE_ALL, onnxruntime's
  default, and denormals as zero, adopted from this benchmark) against denormals kept, the other graph
  optimisation levels, and the model optimised offline (optimized_model_filepath, as .onnx and in the ORT
  format) loaded with optimisations off.
- xla: XLA:CPU flags of the installed jaxlib (XLA_FLAGS, fixed when jax starts: one process per row) --
  the YNNPACK library fusions (on by default for convolutions here), XNNPACK graph fusion and fusion types,
  oneDNN fusions, fast min/max, vector width.
- torch: the torch-compile target (torch.compile per process) versus an AOTInductor package of the
  same torch.export program (torch._inductor.aoti_compile_and_package: compiled ahead, no Python guards
  per step; `graphopt build --target torch-compile --aot-inductor`, adopted from this benchmark) and eager.
- tflite: the default (state in resource variables, state_check output) versus io mode and a state check
  that XNNPACK runs (LiteRT's profiler: the |x| <= FLT_MAX check's BROADCAST_TO/LESS_EQUAL/CAST run outside
  XNNPACK and take a third of the step); the prototype is built here by swapping tf_module._all_finite.
  (When tf_module's check is already the XNNPACK form, both rows are the same build.)
- FTZ/DAZ (denormals flushed to zero) on the stepping thread, per runtime: FacePhys's recurrent state holds
  thousands of subnormal floats after a few frames (decayed SSM modes), and every use of one costs a
  microcode assist on x86 unless the runtime flushes them.
- the authors' open-rppg step under jax.jit (the reference the issue's xla goal is stated against).

Every row runs in its own worker process (XLA's flags and torch.compile's caches are per process); the
parent steps every worker in turn, round after round (graphopt.benchmark's protocol: a row's FPS is 1 over
the median step latency of all its rounds, its spread the slowest and fastest round). Each row also runs
the 600-frame verification clip from its initial state; its outputs are judged against the authors'
reference (graphopt.equivalence: the tier) and compared with its group's first row (max |difference|).

Not part of the test run. Run by hand (about 15 minutes on 2 shared cores, builds and the AOTInductor
compile included; artifacts are kept in --out and reused):

    .venv/bin/python tests/benchmarks/bench_levers.py [--model facephys] [--out DIR] [--rounds 30]
        [--steps-per-round 30] [--groups onnx,xla,torch,tflite,reference] [--json result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from graphopt.bench import SINGLE_THREAD_XLA

TAG = "@@"  # worker replies start with this (runtimes print their own lines on stdout)


# ---- the rows ----------------------------------------------------------------------------------------------
def rows(out: Path) -> list[dict]:
    """name, group, what to load and how. The first row of a group is graphopt's setting today."""
    onnx, xla = str(out / "onnx"), str(out / "xla")
    r = [
        {"name": "onnx: graphopt (ORT_ENABLE_ALL, denormals as zero)", "group": "onnx", "kind": "onnx",
         "folder": onnx, "level": "ORT_ENABLE_ALL"},
        {"name": "onnx: denormals kept (graphopt before this run)", "group": "onnx", "kind": "onnx", "folder": onnx,
         "level": "ORT_ENABLE_ALL", "keep_denormals": True},
        {"name": "onnx: ORT_ENABLE_LAYOUT", "group": "onnx", "kind": "onnx", "folder": onnx, "level": "ORT_ENABLE_LAYOUT"},
        {"name": "onnx: ORT_ENABLE_EXTENDED", "group": "onnx", "kind": "onnx", "folder": onnx,
         "level": "ORT_ENABLE_EXTENDED"},
        {"name": "onnx: ORT_ENABLE_BASIC", "group": "onnx", "kind": "onnx", "folder": onnx, "level": "ORT_ENABLE_BASIC"},
        {"name": "onnx: optimised offline (.onnx), loaded with optimisations off", "group": "onnx", "kind": "onnx",
         "folder": onnx, "level": "ORT_DISABLE_ALL", "offline": ".onnx"},
        {"name": "onnx: optimised offline (.ort format), loaded with optimisations off", "group": "onnx",
         "kind": "onnx", "folder": onnx, "level": "ORT_DISABLE_ALL", "offline": ".ort"},
    ]
    for flags, label in [("", "graphopt today"),
                         ("--xla_cpu_experimental_ynn_fusion_type=", "no YNNPACK fusions"),
                         ("--xla_cpu_use_xnnpack=false", "--xla_cpu_use_xnnpack=false"),
                         ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
                          "XNNPACK graph fusion (greedy)"),
                         ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce", "XNNPACK fusions dot,eltwise,reduce"),
                         ("--xla_cpu_experimental_onednn_fusion_type=dot,eltwise", "oneDNN fusions dot,eltwise"),
                         ("--xla_cpu_enable_fast_min_max=true", "fast min/max"),
                         ("--xla_cpu_prefer_vector_width=512", "vector width 512")]:
        r.append({"name": f"xla: {label}", "group": "xla", "kind": "stream", "folder": xla, "xla_flags": flags})
    r.append({"name": "xla: FTZ/DAZ on the stepping thread", "group": "xla", "kind": "stream", "folder": xla,
              "ftz": True})
    tc = str(out / "torch-compile")
    r += [{"name": "torch-compile (torch.compile, the default)", "group": "torch", "kind": "stream", "folder": tc},
          {"name": "torch-compile --aot-inductor (AOTInductor package)", "group": "torch", "kind": "stream",
           "folder": str(out / "torch-compile-aot")},
          {"name": "torch: eager (the torch target)", "group": "torch", "kind": "eager", "folder": tc},
          {"name": "torch-compile: FTZ/DAZ on the stepping thread", "group": "torch", "kind": "stream", "folder": tc,
           "ftz": True}]
    r += [{"name": "tflite: graphopt (state in variables, state_check)", "group": "tflite", "kind": "stream",
           "folder": str(out / "tflite")},
          {"name": "tflite: |x| <= FLT_MAX state check (outside XNNPACK)", "group": "tflite", "kind": "stream",
           "folder": str(out / "tflite-absmax-check")},
          {"name": "tflite: state check as x - x summed (inside XNNPACK)", "group": "tflite", "kind": "stream",
           "folder": str(out / "tflite-xnn-check")},
          {"name": "tflite: io mode (caller carries the state)", "group": "tflite", "kind": "stream",
           "folder": str(out / "tflite-io")},
          {"name": "tflite: FTZ/DAZ on the stepping thread", "group": "tflite", "kind": "stream",
           "folder": str(out / "tflite"), "ftz": True}]
    r.append({"name": "authors' open-rppg step, jax.jit (reference)", "group": "reference", "kind": "reference"})
    return r


# ---- builds (parent) -----------------------------------------------------------------------------------------
def absmax_state_check(tf, tensors):
    """The state check graphopt's TFLite target had before: |x| <= FLT_MAX per element (ABS, LESS_EQUAL, CAST,
    MIN; the comparison and the cast run outside XNNPACK, the FLT_MAX constant is broadcast every step)."""
    flags = [tf.reduce_min(tf.cast(tf.abs(t) <= np.finfo(np.float32).max, tf.float32))
             for t in tensors if t.dtype.is_floating]
    return tf.reduce_min(tf.stack(flags)) if flags else tf.constant(1.0)


def xnn_state_check(tf, tensors):
    """A state check XNNPACK runs: x - x is 0 for a finite x and NaN for NaN and +-Inf, and a sum of zeros is
    exactly 0 (no saturation), of anything with a NaN NaN; one scalar comparison at the end."""
    sums = [tf.reduce_sum(t - t) for t in tensors if t.dtype.is_floating]
    if not sums:
        return tf.constant(1.0)
    return tf.cast(tf.equal(tf.add_n(sums), 0.0), tf.float32)


def build_all(model: str, out: Path, groups: set, log) -> None:
    from graphopt import trace_cache
    from graphopt.bench import _reusable
    from graphopt.builder import build
    traced = trace_cache.load_traced(model, log=log)
    want = []
    if "onnx" in groups:
        want.append(("onnx", "onnx", {}))
    if "xla" in groups:
        want.append(("xla", "xla", {}))
    if "torch" in groups:
        want += [("torch-compile", "torch-compile", {}), ("torch-compile-aot", "torch-compile", {"aot_inductor": True})]
    if "tflite" in groups:
        want += [("tflite", "tflite", {}), ("tflite-io", "tflite", {"state_mode": "io"})]
    for folder, target, options in want:
        dest = out / folder
        if _reusable(dest, traced.spec, target, "fused"):
            m = json.loads(next(dest.glob("*.manifest.json")).read_text())
            if m.get("tflite", {}).get("state_mode") in (None, options.get("state_mode", "variables")) and \
                    bool(m.get("torch", {}).get("aot_inductor")) == bool(options.get("aot_inductor")):
                continue
        log(f"building {target} {options or ''} into {dest} ...")
        build(model, target, dest, verify=False, force=True, traced=traced, target_options=options or None,
              log=lambda m: None)
    for folder, check in (("tflite-absmax-check", absmax_state_check), ("tflite-xnn-check", xnn_state_check)):
        if "tflite" in groups and not (out / folder).exists():
            log(f"building {folder} (tf_module._all_finite swapped) ...")
            from graphopt.targets import tf_module
            original = tf_module._all_finite
            tf_module._all_finite = check
            try:
                build(model, "tflite", out / folder, verify=False, force=True, traced=traced, log=lambda m: None)
            finally:
                tf_module._all_finite = original
    return traced


# ---- worker --------------------------------------------------------------------------------------------------
def _onnx_session_factory(row: dict, tmp: str):
    """A replacement for graphopt.targets.onnx.shared_session with this row's session options (the Stream is
    otherwise the one graphopt ships: IOBinding, state ping-pong)."""
    import onnxruntime as ort
    from graphopt.targets import onnx as onnx_target

    def options(level: str):
        opts = onnx_target.session_options(1)  # graphopt's, with this row's changes
        if row.get("keep_denormals"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        for k, v in row.get("config", {}).items():
            opts.add_session_config_entry(k, v)
        return opts

    def shared_session(model_file, sha256, threads=1):
        path = str(model_file)
        if row.get("offline"):  # optimise once (ORT_ENABLE_ALL), save, and load the saved model
            saved = os.path.join(tmp, "offline" + row["offline"])
            opts = options("ORT_ENABLE_ALL")
            opts.optimized_model_filepath = saved
            if row["offline"] == ".ort":
                opts.add_session_config_entry("session.save_model_format", "ORT")
            ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            path = saved
        session = ort.InferenceSession(path, options(row["level"]), providers=["CPUExecutionProvider"])
        return onnx_target._SharedSession(session)
    return shared_session


def open_row(row: dict, tmp: str):
    """(step(feeds) -> outputs, reset()) for a row."""
    from graphopt import artifact as art
    if row["kind"] == "reference":
        from graphopt.bench import reference_step
        one = reference_step(row["model"])
        return (lambda feeds: [np.asarray(one(feeds))]), None
    if row["kind"] == "onnx":
        from graphopt.targets import onnx as onnx_target
        onnx_target.shared_session = _onnx_session_factory(row, tmp)
    if row["kind"] == "eager":  # the torch-compile artifact's program, run eagerly (the torch target's Stream)
        from graphopt.targets.torch_target import TorchStream
        a = art.open_artifact(row["folder"])
        stream = TorchStream(a.model_file, a.manifest, a.state, threads=1, compiled=False)
    else:
        stream = art.load(row["folder"], threads=1)
    roles = row["roles"]  # spec input name -> role
    by_role = {r: n for n, r in roles.items() if r in ("frame", "dt")}
    source = [by_role.get(r, n) if r in ("frame", "dt") else n for n, r in zip(stream.input_names, stream.input_roles)]

    def step(feeds):
        got = stream.step(*(feeds[n] for n in source))
        return list(got.values()) if isinstance(got, dict) else [got]
    return step, stream.reset


def flush_denormals() -> None:
    """FTZ and DAZ on this thread (x86-64 MXCSR bits 15 and 6, through glibc's fenv_t, whose last field is
    MXCSR): every runtime that computes on the stepping thread (1 thread) then treats subnormal floats as 0.
    FacePhys's SSM state holds thousands of subnormals (decayed modes), each a microcode assist per use."""
    import ctypes
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError("FTZ/DAZ through MXCSR is x86-64 only")
    libm = ctypes.CDLL("libm.so.6")
    env = (ctypes.c_uint8 * 32)()
    if libm.fegetenv(env) != 0:
        raise RuntimeError("fegetenv failed")
    mxcsr = int.from_bytes(bytes(env[28:32]), "little") | 0x8040
    env[28:32] = list(mxcsr.to_bytes(4, "little"))
    if libm.fesetenv(env) != 0:
        raise RuntimeError("fesetenv failed")
    if np.float32(1e-39) * np.float32(1.0) != 0.0:
        raise RuntimeError("FTZ/DAZ did not take effect")


def worker(row: dict) -> None:
    tmp = tempfile.mkdtemp(prefix="levers-")
    with np.load(row["feeds"]) as z:  # each key read once (an NpzFile reads the array again on every access)
        arrays = {k: z[k] for k in z.files}
    names = [k[len("time/"):] for k in arrays if k.startswith("time/")]
    timing = [{n: arrays["time/" + n][i] for n in names} for i in range(len(arrays["time/" + names[0]]))]
    clip = [{n: arrays["clip/" + n][i] for n in names} for i in range(len(arrays["clip/" + names[0]]))]
    step, reset = open_row(row, tmp)
    if row.get("ftz"):
        flush_denormals()
    for i in range(30):
        step(timing[i % len(timing)])
    print(TAG + json.dumps({"ready": True}), flush=True)
    k = 0
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "time":
            lat = []
            for _ in range(cmd["n"]):
                f = timing[k % len(timing)]
                k += 1
                t0 = time.perf_counter()
                step(f)
                lat.append(time.perf_counter() - t0)
            print(TAG + json.dumps({"lat": lat}), flush=True)
        elif cmd["cmd"] == "clip":
            if reset is not None:
                reset()
            outs = [np.concatenate([np.asarray(step(f)[0], np.float64).ravel() for f in clip])] \
                if reset is not None else []
            path = os.path.join(tmp, "clip.npy")
            np.save(path, outs[0] if outs else np.zeros(0))
            print(TAG + json.dumps({"path": path if outs else None}), flush=True)
        else:
            return


class Worker:
    def __init__(self, row: dict, log):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (row.get("xla_flags", "") + " " + SINGLE_THREAD_XLA).strip()  # lever flags first:
        # XLA stops reading XLA_FLAGS at SINGLE_THREAD_XLA's bare "intra_op_parallelism_threads=1"
        env.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
        self.row, self.log = row, log
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(row)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)

    def reply(self) -> dict:
        for line in self.p.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.err.seek(0)
        tail = [ln for ln in self.err.read().decode(errors="replace").splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"worker {self.row['name']!r} died: {' | '.join(tail)}")

    def ask(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return self.reply()

    def close(self) -> None:
        try:
            self.p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.p.stdin.flush()
            self.p.wait(timeout=30)
        except Exception:  # noqa: BLE001 -- a worker that already died
            self.p.kill()


# ---- parent --------------------------------------------------------------------------------------------------
def write_feeds(spec, path: Path) -> dict:
    from graphopt.equivalence import Clip
    timing = Clip(frames=max(64, 2 * spec.frames_per_step), fps=spec.fps).feeds(spec)
    clip = Clip().feeds(spec)
    arrays = {}
    for prefix, feeds in (("time/", timing), ("clip/", clip)):
        for n in feeds[0]:
            arrays[prefix + n] = np.stack([f[n] for f in feeds])
    np.savez(path, **arrays)
    return spec.roles()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="facephys")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "graphopt-levers"))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps-per-round", type=int, default=30)
    p.add_argument("--groups", default="onnx,xla,torch,tflite,reference")
    p.add_argument("--only", help="comma-separated row names (substrings) to keep")
    p.add_argument("--json")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(json.loads(a.worker))
        return 0
    from graphopt import bench
    bench.single_thread_env()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {g.strip() for g in a.groups.split(",") if g.strip()}
    traced = build_all(a.model, out, groups, log)
    spec = traced.spec
    roles = write_feeds(spec, out / "feeds.npz")
    chosen = [r for r in rows(out) if r["group"] in groups]
    if a.only:
        keep = [s.strip() for s in a.only.split(",")]
        chosen = [r for r in chosen if any(k in r["name"] for k in keep)]
    workers = []
    for r in chosen:
        r.update(feeds=str(out / "feeds.npz"), roles=roles, model=a.model)
        log(f"starting {r['name']} ...")
        w = Worker(r, log)
        try:
            w.reply()  # ready (loaded, warmed up): one at a time, the cores are shared
            workers.append(w)
        except RuntimeError as e:
            log(str(e))
            w.close()
    lat = {w.row["name"]: [] for w in workers}
    per_round = {w.row["name"]: [] for w in workers}
    by_group: dict[str, list] = {}
    for w in workers:
        by_group.setdefault(w.row["group"], []).append(w)
    for rnd in range(a.rounds):
        # a group's rows run back to back (a row and its group's first row see the same load: the ratio of their
        # medians in one round is the paired measure); groups and rows in random order, so that no row always
        # runs first or right after the same neighbour
        rng = random.Random(rnd)
        groups_now = list(by_group.values())
        rng.shuffle(groups_now)
        order = []
        for g in groups_now:
            g = list(g)
            rng.shuffle(g)
            order += g
        log(f"round {rnd + 1}/{a.rounds}")
        for w in order:
            got = w.ask(cmd="time", n=a.steps_per_round)["lat"]
            lat[w.row["name"]] += got
            per_round[w.row["name"]].append(float(np.median(got)))
    clips = {}
    if not a.no_verify:
        for w in workers:
            path = w.ask(cmd="clip")["path"]
            clips[w.row["name"]] = np.load(path) if path else None
    for w in workers:
        w.close()
    result = summarise(workers, lat, per_round, clips, spec, a.no_verify)
    result.update(machine=bench.machine(), rounds=a.rounds, steps_per_round=a.steps_per_round)
    print(markdown(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


def summarise(workers, lat, per_round, clips, spec, no_verify: bool) -> dict:
    from graphopt.equivalence import Clip, judge, noise_floor
    from graphopt.metrics import ROUNDING_FLOOR_FACTOR
    floor = noise_floor(spec, Clip())[0]["nrmse"] if not no_verify else None
    out = []
    first = {}
    for w in workers:
        first.setdefault(w.row["group"], w.row["name"])
    for w in workers:
        name, group = w.row["name"], w.row["group"]
        fps = 1.0 / float(np.median(lat[name]))
        rounds = [1.0 / t for t in per_round[name]]
        base = first[group]
        base_fps = 1.0 / float(np.median(lat[base]))
        paired = [b / t for t, b in zip(per_round[name], per_round[base])]  # this row's speed-up in each round
        row = {"name": name, "group": group, "fps": fps, "fps_min": min(rounds), "fps_max": max(rounds),
               "x_default": fps / base_fps, "default": base, "x_paired_median": float(np.median(paired)),
               "x_paired_p25": float(np.percentile(paired, 25)), "x_paired_p75": float(np.percentile(paired, 75)),
               "x_paired_min": min(paired), "x_paired_max": max(paired)}
        # a clear win: >= 1.10x in at least three rounds of four (the paired ratio's lower quartile); the minimum
        # over 30 rounds of a shared machine is one preempted round, not the spread
        row["wins"] = name != base and row["x_paired_p25"] >= 1.10
        c = clips.get(name)
        if not no_verify and c is not None and c.size:
            j = judge(spec, Clip(), [c], [])
            row.update(tier=j["tier"], nrmse=j["nrmse"], nrmse_over_floor=j.get("nrmse_over_floor"))
            b = clips.get(base)
            if b is not None and b.size and name != base:  # the lever's own effect: against the group's first row
                row["max_abs_vs_default"] = float(np.max(np.abs(c - b)))
                row["nrmse_vs_default_over_floor"] = float(np.sqrt(np.mean((c - b) ** 2)) / np.std(b)) / floor
                row["rounding_equal"] = row["nrmse_vs_default_over_floor"] <= ROUNDING_FLOOR_FACTOR
        out.append(row)
    return {"model": spec.name, "rows": out}


def markdown(result: dict) -> str:
    lines = ["| row | FPS | spread (round FPS) | x first row, paired per round: median [25-75%] (min-max) | "
             "tier vs authors (NRMSE/floor) | vs first row: max abs diff (NRMSE/floor) |", "|---|---:|---:|---:|---|---:|"]
    for r in result["rows"]:
        tier = f"{r.get('tier')} ({r['nrmse_over_floor']:.2f})" if r.get("nrmse_over_floor") is not None else \
            (r.get("tier") or "")
        diff = f"{r['max_abs_vs_default']:.1e} ({r['nrmse_vs_default_over_floor']:.2f})" if "max_abs_vs_default" in r \
            else ""
        mark = " *" if r["wins"] else ""
        x = "1.00" if r["name"] == r["default"] else (f"{r['x_paired_median']:.2f}{mark} [{r['x_paired_p25']:.2f}-"
                                                       f"{r['x_paired_p75']:.2f}] ({r['x_paired_min']:.2f}-"
                                                       f"{r['x_paired_max']:.2f})")
        lines.append(f"| {r['name']} | {r['fps']:.0f} | {r['fps_min']:.0f}-{r['fps_max']:.0f} | {x} | {tier} | {diff} |")
    m = result["machine"]
    lines += ["", f"{result['model']}, batch 1, float32, 1 thread; {result['rounds']} interleaved rounds of "
              f"{result['steps_per_round']} steps, one worker process per row, a group's rows back to back. FPS: 1 / "
              f"median step latency over all rounds, spread: slowest-fastest round. Paired: the ratio of this row's "
              f"and its group's first row's median latency in the same round. * = a clear win: >= 1.10x in at least "
              f"three rounds of four (the paired ratio's lower quartile). Tiers on the 600-frame verification clip; NRMSE/floor: over the "
              f"rounding noise floor (rounding tier: <= {4:g}). Machine: {m['cpu']}, {m['cores']} cores (shared), no GPU."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
