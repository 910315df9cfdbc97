"""`graphopt optimize` against onnxslim and onnxsim on the third-party ONNX corpus (tests/onnx_corpus.py).

For every corpus model: the node count and onnxruntime FPS (CPU EP, one thread: intra_op_num_threads=1,
ORT_SEQUENTIAL, default graph optimisations) of the input file, of onnxslim's output, of onnxsim's output
and of `graphopt optimize`'s (default) output. All rows are measured in one run, in interleaved rounds
(every row of every model runs its steps in round 1, then in round 2, ...); a row's FPS is 1 / the median
step latency over all its rounds, its spread the min-max of the per-round FPS. Inputs are random, of the
model's shapes, generated before timing and the same for every row of a model; a stateful model's state
starts at zeros each round and is fed back from its paired outputs. Not part of the test run. Run by hand:

    .venv/bin/python tests/benchmarks/bench_onnx_optimize.py [--out table.md] [--json result.json]
        [--models torch-cnn-ts,facephys-tf2onnx] [--rounds 5] [--round-seconds 0.4] [--corpus-dir DIR]

Prints the Markdown table (and writes it to --out), then the issue's goal: on the tf2onnx FacePhys export
graphopt optimize reaches >= 3.5x fewer nodes and >= 1.6x the input's FPS, and is slower than the input on
no model.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: onnx_corpus

from graphopt import bench  # noqa: E402

bench.single_thread_env()  # before jax or tensorflow start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from onnx_corpus import GENERATORS, Corpus, CorpusUnavailable  # noqa: E402

VARIANTS = ("input", "onnxslim", "onnxsim", "graphopt")
GOAL_MODEL, GOAL_NODES, GOAL_FPS = "facephys-tf2onnx", 3.5, 1.6


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error: ")]
    line = (err or lines or [type(e).__name__])[0]
    return re.sub(r"/\S*/([^/\s]+)", r"\1", line)[:240]  # file names without their (temporary) folders


# ---- the variants ------------------------------------------------------------------------------------------
def make_variants(m, folder: Path, log) -> dict:
    """variant -> path of its .onnx file, or the reason it has none."""
    out = {"input": m.path}
    shapes = {k: list(v) for k, v in m.input_shapes.items()} or None
    try:
        import onnxslim
        p = folder / f"{m.path.stem}.onnxslim.onnx"
        onnx.save(onnxslim.slim(str(m.path)), str(p))
        out["onnxslim"] = p
    except Exception as e:  # noqa: BLE001 -- a row that says why
        out["onnxslim"] = f"onnxslim failed: {_first_line(e)}"
    try:
        import onnxsim
        p = folder / f"{m.path.stem}.onnxsim.onnx"
        model, ok = onnxsim.simplify(str(m.path), overwrite_input_shapes=shapes)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        onnx.save(model, str(p))
        out["onnxsim"] = p
    except Exception as e:  # noqa: BLE001
        out["onnxsim"] = f"onnxsim failed: {_first_line(e)}"
    try:
        from graphopt.optimize import optimize
        p = folder / f"{m.path.stem}.graphopt.onnx"
        t0 = time.perf_counter()
        report = optimize(m.path, p, force=True, **m.options())
        log(f"  graphopt optimize {m.name}: {report['nodes_in']} -> {report['nodes_out']} nodes, tier "
            f"{report['tier']} ({time.perf_counter() - t0:.1f} s)")
        out["graphopt"] = p
    except Exception as e:  # noqa: BLE001
        out["graphopt"] = f"graphopt optimize failed: {_first_line(e)}"
    return out


# ---- inputs and sessions --------------------------------------------------------------------------------------
def _np_dtype(elem_type: int):
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def make_feeds(m, n: int, seed: int = 0):
    """n random feeds (without the state inputs), the state pairs and the state inputs' zeros."""
    from graphopt.frontends.onnx import pairing
    model = onnx.load(str(m.path), load_external_data=False)
    pairs = pairing.find(model, m.path, list(m.state_pairs) if m.state_pairs else None)
    state_in = {i for i, _ in pairs}
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    specs, zeros = [], {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = m.input_shapes.get(vi.name) or tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim)
        dtype = _np_dtype(t.elem_type)
        if vi.name in state_in:
            zeros[vi.name] = np.zeros(shape, dtype)
        else:
            specs.append((vi.name, tuple(shape), dtype))
    feeds = []
    for _ in range(n):
        f = {}
        for name, shape, dtype in specs:
            if name.lower() == "dt":
                f[name] = np.full(shape, 1 / 30, dtype)
            elif np.issubdtype(dtype, np.floating):
                # a frame-like input (the rPPG models, the detectors) in [0, 1); others standard normal
                a = rng.random(shape) if len(shape) >= 4 else rng.standard_normal(shape)
                f[name] = a.astype(dtype)
            elif dtype == np.bool_:
                f[name] = rng.random(shape) < 0.5
            else:
                f[name] = np.zeros(shape, dtype)
        feeds.append(f)
    return feeds, pairs, zeros


class Row:
    def __init__(self, model, variant, path, feeds, pairs, zeros):
        import onnxruntime as ort
        self.model, self.variant, self.path = model, variant, path
        self.nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.feeds, self.pairs, self.zeros = feeds, pairs, zeros
        self.round_fps: list[float] = []
        self.latencies: list[float] = []

    def run(self, steps: int, record: bool = True) -> float:
        state = dict(self.zeros)
        lat = []
        idx = {n: k for k, n in enumerate(self.out_names)}
        for s in range(steps):
            feed = {**self.feeds[s % len(self.feeds)], **state}
            t0 = time.perf_counter()
            outs = self.sess.run(self.out_names, feed)
            lat.append(time.perf_counter() - t0)
            if self.pairs:
                state = {i: outs[idx[o]] for i, o in self.pairs}
        if record:
            self.latencies += lat
            self.round_fps.append(1.0 / float(np.median(lat)))
        return float(np.sum(lat))

    @property
    def fps(self) -> float:
        return 1.0 / float(np.median(self.latencies))


# ---- the run ------------------------------------------------------------------------------------------------
def run(names, rounds: int, round_seconds: float, corpus_dir: Path, log) -> dict:
    corpus = Corpus(corpus_dir)
    models, rows, notes = [], [], {}
    for name in names:
        try:
            m = corpus[name]
        except CorpusUnavailable as e:
            notes[name] = {"unavailable": str(e)}
            log(f"{name}: unavailable: {e}")
            continue
        log(f"{name}: {m.exporter}")
        variants = make_variants(m, m.path.parent, log)
        feeds, pairs, zeros = make_feeds(m, 16)
        mrows = {}
        for v in VARIANTS:
            p = variants[v]
            if isinstance(p, str):
                notes.setdefault(name, {})[v] = p
                log(f"  {v}: {p}")
                continue
            try:
                mrows[v] = Row(m, v, p, feeds, pairs, zeros)
            except Exception as e:  # noqa: BLE001
                notes.setdefault(name, {})[v] = f"onnxruntime cannot load it: {_first_line(e)}"
        if "input" not in mrows:
            continue
        # steps per round: about round_seconds of the input's time, the same for every row of the model
        for r in mrows.values():
            r.run(3, record=False)  # warm-up
        per_step = mrows["input"].run(5, record=False) / 5
        m_steps = int(min(2000, max(20, round_seconds / max(per_step, 1e-6))))
        for r in mrows.values():
            r.steps = m_steps
        models.append(m)
        rows += [mrows[v] for v in VARIANTS if v in mrows]
    log(f"timing {len(rows)} rows x {rounds} rounds ...")
    for k in range(rounds):
        for r in rows:
            r.run(r.steps)
        log(f"  round {k + 1}/{rounds} done")
    table = []
    by_model = {}
    for r in rows:
        by_model.setdefault(r.model.name, {})[r.variant] = r
    for m in models:
        base = by_model[m.name]["input"]
        for v in VARIANTS:
            r = by_model[m.name].get(v)
            if r is None:
                table.append({"model": m.name, "exporter": m.exporter, "variant": v,
                              "failed": notes.get(m.name, {}).get(v, "no output")})
                continue
            table.append({"model": m.name, "exporter": m.exporter, "variant": v, "nodes": r.nodes,
                          "x_fewer_nodes": base.nodes / r.nodes if r.nodes else float("inf"),
                          "fps": r.fps, "x_input": r.fps / base.fps, "fps_min": min(r.round_fps),
                          "fps_max": max(r.round_fps), "steps_per_round": r.steps, "rounds": len(r.round_fps)})
    return {"machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
                        "python": platform.python_version(), "onnxruntime": _version("onnxruntime"),
                        "onnxslim": _version("onnxslim"), "onnxsim": _version("onnxsim"),
                        "graphopt": _version("graphopt")},
            "settings": {"threads": 1, "execution_mode": "ORT_SEQUENTIAL", "graph_optimization": "default (all)",
                         "rounds": rounds, "round_seconds": round_seconds},
            "rows": table, "unavailable": {k: v["unavailable"] for k, v in notes.items() if "unavailable" in v},
            "goal": goal(table)}


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def goal(table) -> dict:
    rows = {(r["model"], r["variant"]): r for r in table}
    out = {}
    fp = rows.get((GOAL_MODEL, "graphopt"))
    if fp is None:
        out["facephys"] = "not measured"
    elif "failed" in fp:
        out["facephys"] = f"graphopt failed: {fp['failed']}"
    else:
        out["facephys"] = {"x_fewer_nodes": fp["x_fewer_nodes"], "x_input_fps": fp["x_input"],
                           "met": fp["x_fewer_nodes"] >= GOAL_NODES and fp["x_input"] >= GOAL_FPS}
    slower = {}
    for r in table:
        if r["variant"] == "graphopt" and "failed" not in r and r["x_input"] < 1.0:
            base = rows[(r["model"], "input")]
            # within the noise: graphopt's best round reaches the input's worst round
            slower[r["model"]] = {"x_input": r["x_input"], "within_spread": r["fps_max"] >= base["fps_min"]}
    out["slower_than_input"] = slower
    out["graphopt_failed"] = {r["model"]: r["failed"] for r in table if r["variant"] == "graphopt" and "failed" in r}
    return out


def markdown(result) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; load average at the end "
             f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_end'])}), Python {m['python']}, onnxruntime "
             f"{m['onnxruntime']} (CPU EP, 1 thread, ORT_SEQUENTIAL, default graph optimisations), onnxslim "
             f"{m['onnxslim']}, onnxsim {m['onnxsim']}, graphopt {m['graphopt']}. "
             f"{result['settings']['rounds']} interleaved rounds; FPS = 1 / median step latency; spread = "
             "min-max of the per-round FPS.", "",
             "| Model | Exporter | Variant | Nodes | x fewer nodes | FPS | x input | FPS spread (min-max) |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['variant']} | - | - | - | - | "
                         f"{r['failed'].replace('|', '/')} |")
            continue
        lines.append(f"| {r['model']} | {r['exporter']} | {r['variant']} | {r['nodes']} | {r['x_fewer_nodes']:.2f} | "
                     f"{r['fps']:,.0f} | {r['x_input']:.2f} | {r['fps_min']:,.0f}-{r['fps_max']:,.0f} |")
    for k, v in result["unavailable"].items():
        lines.append(f"| {k} | - | - | - | - | - | - | unavailable: {v.replace('|', '/')} |")
    g = result["goal"]
    lines += ["", "Goal:"]
    if isinstance(g["facephys"], dict):
        f = g["facephys"]
        lines.append(f"- {GOAL_MODEL}: graphopt optimize {f['x_fewer_nodes']:.2f}x fewer nodes (goal >= {GOAL_NODES}), "
                     f"{f['x_input_fps']:.2f}x the input's FPS (goal >= {GOAL_FPS}): "
                     f"{'met' if f['met'] else 'NOT met'}")
    else:
        lines.append(f"- {GOAL_MODEL}: {g['facephys']}")
    lines.append("- graphopt slower than the input (median): " + (", ".join(
        f"{k} ({v['x_input']:.2f}x{', within the spread' if v['within_spread'] else ''})"
        for k, v in g["slower_than_input"].items()) or "none"))
    if g["graphopt_failed"]:
        lines.append("- graphopt optimize failed on: " + ", ".join(g["graphopt_failed"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the Markdown table to this file")
    ap.add_argument("--json", help="write the result as JSON to this file")
    ap.add_argument("--models", help="comma-separated corpus names (default: all): " + ", ".join(GENERATORS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.4,
                    help="about this many seconds of the input model's steps per row and round")
    ap.add_argument("--corpus-dir", help="where to write the corpus (default: a temporary folder)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.models.split(",")] if a.models else list(GENERATORS)
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        ap.error(f"unknown corpus models {unknown}; known: {', '.join(GENERATORS)}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="onnx-corpus-") as tmp:
        result = run(names, a.rounds, a.round_seconds, Path(a.corpus_dir or tmp), log)
    md = markdown(result)
    print(md)
    if a.out:
        Path(a.out).write_text(md + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
