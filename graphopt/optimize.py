"""graphopt optimize: an ONNX file in, an optimised ONNX file out (onnxslim-style), a drop-in replacement.

The file is imported (graphopt.frontends.onnx), run through the onnx target's pass pipeline without the
passes that change a model's signature, emitted with the input's names (inputs, outputs, state, the
nodes that survive, metadata_props), and verified against onnxruntime running the input before it is
written: the rounding tier with exact=True (only exact passes), the signal tier by default.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import ArtifactError

DEFAULT_FRAMES = 600  # a model with a face-frame input and a pulse output (the heart-rate metric)
DEFAULT_STEPS = 32  # any other model: random inputs, this many steps (state carried)


def check_output(src: Path, dst: Path, force: bool) -> Path:
    """dst if optimize may write it; else ArtifactError (before any work)."""
    if dst.is_dir() or dst.is_symlink():
        raise ArtifactError(f"-o {dst} is a folder or a link; give the path of the .onnx file to write")
    if dst.suffix.lower() != ".onnx":
        raise ArtifactError(f"-o {dst} must end in .onnx")
    if not dst.parent.is_dir():
        raise ArtifactError(f"-o {dst}: folder {dst.parent} does not exist; create it first")
    if src.resolve() == dst.resolve():
        raise ArtifactError(f"-o {dst} is the input file; write the optimised model to another path")
    if dst.exists() and not force:
        raise ArtifactError(f"-o {dst} exists; pass --force to replace it")
    if not os.access(dst.parent, os.W_OK):
        raise ArtifactError(f"-o {dst}: folder {dst.parent} is not writable; choose another path")
    return dst


def optimize(src: str | Path, dst: str | Path, *, exact: bool = False, input_shapes: Mapping | None = None,
             state_pairs: Sequence[str] | None = None, state=None, verify: bool = True, frames: int | None = None,
             tier: str | None = None, force: bool = False, speed_check: bool = True,
             log: Callable[[str], None] = lambda m: None) -> dict:
    """Optimise the ONNX file src into dst; returns a report (nodes before/after, pairing, verification).

    speed_check: time the input and graphopt's output in onnxruntime (1 thread, interleaved rounds) and,
    where graphopt's output is not faster, write the input's model instead (optimize never makes a model
    slower on the machine it runs on); the report says which was kept and both speeds."""
    import onnx

    from . import passes
    from .builder import build
    from .frontends import onnx as onnx_frontend
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ArtifactError(f"{src} is not a file; pass an .onnx model")
    check_output(src, dst, force)
    t0 = time.perf_counter()
    spec = onnx_frontend.load(src, input_shapes=input_shapes, state_pairs=state_pairs, state=state)
    nodes_in = len(spec.model_proto.graph.node)
    log(f"{src.name}: {nodes_in} nodes, opset {spec.opset}; state pairs: "
        + (", ".join(f"{i} -> {o}" for i, o in spec.pairs) or "none"))
    names = passes.pipeline_for("onnx", exact_only=exact, keep_signature=True)
    names += [n for n in passes.lowerings_for("onnx") if n not in names]
    if frames is None:
        frames = DEFAULT_FRAMES if spec.pulse_output else max(DEFAULT_STEPS, spec.frames_per_step)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.graphopt-") as tmp:
        a = build(spec, "onnx", Path(tmp) / "artifact", pass_names=names, verify=verify, frames=frames,
                  tier=tier, log=log)
        model = onnx.load(str(a.path))
        model.producer_name, model.producer_version = "graphopt", _version()
        model.doc_string = spec.model_proto.doc_string
        speed = None
        if speed_check:
            speed = compare_speed(spec.model_proto, model, spec)
            log(f"onnxruntime, 1 thread: input {speed['input_fps']:.0f} steps/s, graphopt's output "
                f"{speed['output_fps']:.0f} steps/s ({speed['ratio']:.2f}x)")
            if speed["kept"] == "input":
                log("graphopt's output is not faster here: writing the input's model unchanged")
                model = spec.model_proto
        part = Path(tmp) / dst.name
        onnx.save_model(model, str(part))
        os.replace(part, dst)
    eq = a.manifest.get("equivalence", {})
    report = {"input": str(src), "output": str(dst), "nodes_in": nodes_in, "nodes_out": len(model.graph.node),
              "opset_in": spec.opset, "opset_out": model.opset_import[0].version,
              "state_pairs": [list(p) for p in spec.pairs], "tier_claimed": eq.get("tier_claimed"),
              "tier": eq.get("tier"), "nrmse_over_floor": eq.get("nrmse_over_floor"), "pearson": eq.get("pearson"),
              "verified": bool(eq.get("verified")), "speed": speed, "written": speed["kept"] if speed else "output", "seconds": round(time.perf_counter() - t0, 1)}
    log(f"wrote {dst}: {nodes_in} -> {report['nodes_out']} nodes"
        + (f", tier {report['tier']} against onnxruntime on {src.name}" if report["verified"] else " (not verified)"))
    return report


SPEED_ROUNDS = 7  # interleaved rounds of the input and the output
SPEED_ROUND_S = 0.15  # about this long per model per round
SPEED_MARGIN = 1.02  # the output is kept when it is at least this much faster (else the input's model)


def compare_speed(original, optimized, spec) -> dict:
    """Median step time of both models in onnxruntime (1 thread, sequential, default graph optimisations)
    over interleaved rounds, fed the same inputs and each its own state carried."""
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    feeds = {k: (rng.random(a.shape) if a.dtype.kind == "f" else np.zeros(a.shape)).astype(a.dtype)
             for k, a in spec.inputs.items()}
    sessions, states = [], []
    for m in (original, optimized):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions.append(ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
        states.append({i: np.array(s) for (i, _), s in zip(spec.pairs, spec.state or [])})
    outs = list(spec.outputs) + [o for _, o in spec.pairs]

    def step(k):
        got = sessions[k].run(outs, {**feeds, **states[k]})
        states[k] = {i: v for (i, _), v in zip(spec.pairs, got[len(spec.outputs):])}
    per_step = []
    for k in (0, 1):  # warm-up, and how many steps make a round
        step(k)
        t = time.perf_counter()
        step(k)
        per_step.append(time.perf_counter() - t)
    n = max(1, min(1000, int(SPEED_ROUND_S / max(per_step))))
    rounds = [[], []]
    for _ in range(SPEED_ROUNDS):
        for k in (0, 1):
            t = time.perf_counter()
            for _ in range(n):
                step(k)
            rounds[k].append((time.perf_counter() - t) / n)
    t_in, t_out = float(np.median(rounds[0])), float(np.median(rounds[1]))
    return {"input_fps": 1 / t_in, "output_fps": 1 / t_out, "ratio": t_in / t_out, "rounds": SPEED_ROUNDS,
            "steps_per_round": n, "kept": "output" if t_in / t_out >= SPEED_MARGIN else "input"}


def _version() -> str:
    from . import __version__
    return __version__
