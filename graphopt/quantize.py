"""Mixed-precision int8 from measured sensitivity, for any target that can quantise a chosen set of layers.

Why: quantising every conv/matmul weight of a model as sensitive as FacePhys (carried state, running
normalisations) lands at the quantised tier (r 0.99988); a few layers carry most of that error, so keeping
them float reaches the signal tier (r >= 0.9999, same heart rate) at nearly all-int8 speed. Which layers
is measured, not guessed. A target supplies an `Evaluate`: the set of layers to run int8 -> its build's
judged output over the calibration clip (the empty set: its float32 build); this module does the rest:

1. `eligible_layers`: the IR's convs and matmuls whose weights are parameters (the target says which of
   them its quantiser takes).
2. `calibration`: a calibration clip built from the graph alone (its roles, fps and input shapes), with
   another seed and heart rate than the verification clip (graphopt.equivalence.Clip's defaults), so the
   choice is not fitted to the clip the build is verified on.
3. `sensitivity`: every layer int8 on its own, the others float: NRMSE and Pearson r of the judged output
   against the all-float run. On the target's own runtime where a candidate is cheap to make (TFLite), or
   on `simulation`, the IR lowered to JAX with fake-quantised weights (int8 per channel) and activations
   (8-bit, per step for "dynamic" kernels, with calibrated ranges for "static" ones): one jitted scan, the
   layer set a mask argument (onnxruntime, where each candidate is a quantize_static call). Both runtimes'
   one-layer results agree with the simulation to 3-4 digits of r on the models tried.
4. `choose`: bisection over how many of the layers, in an order of their sensitivity, stay float, each step
   a real build of the target run on the calibration clip against its float build: the fewest that meet
   the signal criterion with a margin (r >= 0.99995, same heart rate). The order is sensitivity per FLOP
   (NRMSE squared, which adds up across layers, over what keeping the layer float costs), and where that
   leaves most FLOPs float, sensitivity alone; the set with more int8 FLOPs wins.
5. `Plan.record()`: the manifest's "quantization": method, criterion, calibration clip, every layer's
   precision and measured sensitivity, the whole model's effect, all-int8's, and every trial.

The build then verifies the artifact against the model's reference like any other (graphopt.builder).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import metrics
from .ir import Graph, Node

# the calibration clip: not the verification clip (equivalence.Clip: seed 0, 72 bpm)
CALIBRATION_FRAMES, CALIBRATION_SEED, CALIBRATION_HR_BPM = 300, 7, 81.0
# the whole model must reach, on the calibration clip and against its float build, this fraction of the
# signal tier's allowed decorrelation (1 - r): 0.5 -> r >= 0.99995
MARGIN = 0.5
MIN_WEIGHT_ELEMENTS = 64  # smaller weights are not worth an int8 kernel (and converters skip them)
COST_FLOOR_FLOPS = 1e4  # a layer's cost when ordering by sensitivity per FLOP (FC layers cost ~nothing)


class QuantizeError(ValueError):
    """The model cannot be built int8 at the signal tier (e.g. no layer can be int8 without losing it); the
    target adds what to build instead."""


@dataclass(frozen=True)
class Layer:
    """A conv or matmul with a parameter weight: what a target may run in int8."""
    name: str  # the IR value the layer computes (ONNX nodes are named <op>/<name>)
    op: str  # "conv" or "dot"
    weight: str  # the IR parameter's name
    weight_shape: tuple[int, ...]
    flops: int
    channel_axes: tuple[int, ...]  # the weight's output-channel axes (one scale per channel)

    def describe(self) -> dict:
        return {"name": self.name, "op": self.op, "weight": self.weight, "weight_shape": list(self.weight_shape),
                "flops": self.flops}


def _channel_axes(node: Node) -> tuple[int, ...] | None:
    w = node.inputs[1]
    if node.op == "conv":
        return (0,)
    a = node.attrs
    free = tuple(i for i in range(len(w.shape)) if i not in a["rhs_contract"] and i not in a["rhs_batch"])
    return free or None


def eligible_layers(graph: Graph) -> list[Layer]:
    """Convs and matmuls (dot) whose weight (the second input) is a float parameter of at least
    MIN_WEIGHT_ELEMENTS elements with an output-channel axis, in graph order."""
    from .ir.ops import get_op
    out = []
    for n in graph.nodes:
        if n.op not in ("conv", "dot") or len(n.inputs) < 2:
            continue
        w = n.inputs[1]
        if not (w.is_param and w.dtype.startswith("float") and w.const.size >= MIN_WEIGHT_ELEMENTS
                and len(w.shape) >= 2 and n.inputs[0].dtype.startswith("float")):
            continue
        axes = _channel_axes(n)
        if axes is None or (n.op == "dot" and n.attrs["rhs_batch"]):
            continue
        flops = get_op(n.op).flops([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)
        out.append(Layer(n.outputs[0].name, n.op, w.name, tuple(w.shape), int(flops), axes))
    return out


# ---- the calibration clip ---------------------------------------------------------------------------------

@dataclass
class Calibration:
    """The calibration clip's feeds (input name -> array, per step) and which output is judged."""
    feeds: list[dict]
    output: int  # index of the judged output (the pulse output, else the first)
    pulse: bool  # whether the judged output is a pulse waveform (heart-rate criterion)
    fps: float
    frames: int
    seed: int
    hr_bpm: float

    def describe(self) -> dict:
        return {"clip": "synthetic face clip (graphopt.clip.synthetic_clip)", "frames": self.frames,
                "seed": self.seed, "hr_bpm": self.hr_bpm, "fps": self.fps, "steps": len(self.feeds),
                "note": "not the verification clip (seed 0, 72 bpm): the choice is not fitted to it"}


def calibration(graph: Graph, frames: int = CALIBRATION_FRAMES, seed: int = CALIBRATION_SEED,
                hr_bpm: float = CALIBRATION_HR_BPM) -> Calibration:
    """The calibration clip for a graph, from what the graph says of its inputs (graph.meta roles, fps,
    input_range): the face clip for the frame input, 1/fps for dt, uniform values for the others."""
    from .equivalence import Clip
    meta = graph.meta
    roles = meta.get("roles") or {}
    fps = float(meta.get("fps") or 30.0)
    lo, hi = meta.get("input_range") or (0.0, 1.0)
    clip = Clip(frames=frames, hr_bpm=hr_bpm, seed=seed, fps=fps)
    frame = roles.get("frame") or next((v.name for v in graph.inputs if v.name == "frame"), None)
    dt = roles.get("dt") or next((v.name for v in graph.inputs if v.name == "dt"), None)
    per_step = int(meta.get("frames_per_step") or 1)
    steps = max(1, frames // per_step)
    columns = {}
    for i, v in enumerate(graph.inputs):
        shape, dtype = tuple(v.shape), np.dtype(v.dtype)
        if v.name == frame and len(shape) >= 3:
            arr = clip.array(shape)
            steps = min(steps, len(arr))
            columns[v.name] = arr.astype(dtype, copy=False)
        elif v.name == dt:
            columns[v.name] = np.full((steps,) + shape, 1.0 / fps, dtype)
        else:
            rng = np.random.default_rng([seed, 1000 + i])
            if dtype.kind == "f":
                columns[v.name] = rng.uniform(lo, hi, (steps,) + shape).astype(dtype)
            elif dtype.kind == "b":
                columns[v.name] = rng.random((steps,) + shape) < 0.5
            else:
                columns[v.name] = rng.integers(int(lo), max(int(hi), int(lo) + 1), (steps,) + shape).astype(dtype)
    pulse = roles.get("pulse")
    names = list(graph.output_names)
    output = names.index(pulse) if pulse in names else 0
    feeds = [{k: a[t] for k, a in columns.items()} for t in range(steps)]
    return Calibration(feeds, output, pulse in names, fps, frames, seed, hr_bpm)


def compare(reference: np.ndarray, candidate: np.ndarray, cal: Calibration) -> dict:
    """NRMSE, Pearson r and heart rates of a candidate's judged output against the float build's (a candidate
    with NaN/Inf: NRMSE None, r -1, a failed criterion)."""
    if not np.all(np.isfinite(candidate)):
        return {"nrmse": None, "pearson": -1.0, "max_abs": None, "same_hr": False, "hr_bpm": None,
                "hr_ref_bpm": None, "note": "the candidate's step produced NaN/Inf"}
    hr = cal.pulse and len(reference) >= int(np.ceil(cal.fps / metrics.HR_BAND_HZ[1])) + 1
    m = metrics.compare(reference, candidate, fps=cal.fps, hr=hr)
    return {k: m[k] for k in ("nrmse", "pearson", "max_abs", "same_hr", "hr_bpm", "hr_ref_bpm")}


def min_pearson(margin: float = MARGIN) -> float:
    return 1.0 - margin * (1.0 - metrics.SIGNAL_MIN_PEARSON)


def meets(m: dict, margin: float = MARGIN) -> bool:
    """The signal criterion with the margin: r >= 1 - margin * (1 - 0.9999) and the same heart rate."""
    return m["pearson"] >= min_pearson(margin) and m["same_hr"] is not False


# ---- sensitivity: one layer at a time, simulated on the IR ------------------------------------------------

def _fake_quant_weight(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Symmetric int8 per output channel (levels -127..127), as TFLite and onnxruntime store weights."""
    other = tuple(i for i in range(w.ndim) if i not in axes)
    scale = np.max(np.abs(w), axis=other, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(w.dtype)


def _fake_quant_act(jnp, x, lo=None, hi=None):
    """8-bit asymmetric quantisation of an activation over [lo, hi] (default: its own range this step,
    as dynamic-range kernels do), the range widened to hold 0 (so 0 is exact, as in both runtimes)."""
    lo = jnp.minimum(jnp.min(x) if lo is None else lo, 0.0)
    hi = jnp.maximum(jnp.max(x) if hi is None else hi, 0.0)
    scale = jnp.maximum((hi - lo) / 255.0, 1e-30)
    zero = jnp.round(-lo / scale)
    q = jnp.clip(jnp.round(x / scale) + zero, 0.0, 255.0)
    return ((q - zero) * scale).astype(x.dtype)


SCHEMES = ("dynamic", "static")


def simulation(graph: Graph, layers: list[Layer], cal: Calibration, scheme: str = "dynamic") -> "Evaluate":
    """A target-neutral Evaluate: the graph lowered to JAX with the given layers' weights and input
    activations fake-quantised (int8 per-channel weights; 8-bit activations, per step for "dynamic",
    with ranges from a float run over the clip for "static", which also quantises a layer's output, as
    onnxruntime's QDQ does), run over the calibration clip as one jitted scan (one compile: the layers to
    quantise are a mask argument). For targets whose real candidates are slow to build."""
    import jax
    import jax.numpy as jnp

    from .targets.jax_lowering import TABLE
    if scheme not in SCHEMES:
        raise ValueError(f"quantisation scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    TABLE.check(graph)
    index = {l.name: i for i, l in enumerate(layers)}
    consts = {n.outputs[0].name: n.inputs[1].const for n in graph.nodes if n.outputs and len(n.inputs) > 1}
    wq = [jnp.asarray(_fake_quant_weight(np.asarray(consts[l.name]), l.channel_axes)) for l in layers]
    L = len(layers)

    def step(mask, ranges, state, xs):
        env: dict[int, object] = {}
        for v, x in zip(graph.inputs + [s.input for s in graph.state], list(xs) + list(state)):
            env[id(v)] = x
        read = lambda v: env[id(v)] if id(v) in env else jnp.asarray(v.const)
        seen = [jnp.zeros(4)] * L
        for node in graph.nodes:
            args = [read(v) for v in node.inputs]
            i = index.get(node.outputs[0].name) if node.outputs else None
            if i is not None:
                x, w = args[0], args[1]
                xq = _fake_quant_act(jnp, x) if scheme == "dynamic" else _fake_quant_act(jnp, x, *ranges[i, :2])
                args = [x + mask[i] * (xq - x), w + mask[i] * (wq[i] - w)] + args[2:]
            outs = TABLE.lower(node, node, *args)
            if i is not None:
                y = outs[0]
                seen[i] = jnp.stack([jnp.min(x), jnp.max(x), jnp.min(y), jnp.max(y)])
                if scheme == "static":
                    outs = [y + mask[i] * (_fake_quant_act(jnp, y, *ranges[i, 2:]) - y)]
            for v, o in zip(node.outputs, outs):
                env[id(v)] = o
        return [read(s.output) for s in graph.state], (read(graph.outputs[cal.output]),
                                                       jnp.stack(seen) if L else jnp.zeros((0, 4)))

    @jax.jit
    def run(mask, ranges, xs):
        state0 = [jnp.asarray(s.init) for s in graph.state]
        _, (ys, seen) = jax.lax.scan(lambda st, x: step(mask, ranges, st, x), state0, xs)
        lo, hi = seen[:, :, 0::2].min(0), seen[:, :, 1::2].max(0)  # (input, output) min and max over the clip
        return ys, jnp.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)

    xs = [np.stack([f[v.name] for f in cal.feeds]) for v in graph.inputs]
    ys, ranges = run(np.zeros(L, np.float32), np.zeros((L, 4), np.float32), xs)
    runs = {frozenset(): np.asarray(ys, np.float64).reshape(-1)}
    ranges = np.asarray(ranges)

    def evaluate(int8: frozenset) -> np.ndarray:
        if int8 not in runs:
            mask = np.array([l.name in int8 for l in layers], np.float32)
            runs[int8] = np.asarray(run(mask, ranges, xs)[0], np.float64).reshape(-1)
        return runs[int8]
    evaluate.measured_on = (f"IR simulation (JAX): int8 per-channel weights, 8-bit {scheme} activations"
                            + (" and outputs" if scheme == "static" else ""))
    return evaluate


def sensitivity(layers: list[Layer], evaluate: "Evaluate", cal: Calibration,
                log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Per layer, the judged output with that layer alone int8 (the others float) against the all-float
    run of the same evaluator: NRMSE and Pearson r."""
    reference = np.asarray(evaluate(frozenset()), np.float64).reshape(-1)
    out = []
    for k, layer in enumerate(layers):
        out.append(compare(reference, np.asarray(evaluate(frozenset([layer.name])), np.float64).reshape(-1), cal))
        if (k + 1) % 16 == 0:
            log(f"      sensitivity measured for {k + 1} of {len(layers)} layers")
    return out


# ---- the choice ----------------------------------------------------------------------------------------------

Evaluate = Callable[[frozenset], np.ndarray]  # the int8 layers' names -> the judged output over the clip


@dataclass
class Plan:
    """The chosen precision per layer and what was measured on the way."""
    method: str
    scheme: str
    layers: list[Layer]
    sensitivity: list[dict]
    float_layers: set[str]
    effect: dict  # the chosen build vs its float build on the calibration clip
    all_int8: dict  # every eligible layer int8, the same measurement
    trials: list[dict]
    calibration: Calibration
    order: list[str] = field(default_factory=list)
    measured_on: str = ""  # what ran the one-layer-at-a-time sensitivity runs
    order_kind: str = ""  # which order of the layers the choice came from (ORDERS)

    @property
    def int8_layers(self) -> set[str]:
        return {l.name for l in self.layers} - self.float_layers

    def record(self) -> dict:
        """The manifest's "quantization" entry."""
        total = sum(l.flops for l in self.layers) or 1
        int8_flops = sum(l.flops for l in self.layers if l.name not in self.float_layers)
        rank = {n: i for i, n in enumerate(self.order)}
        rows = []
        for l, s in zip(self.layers, self.sensitivity):
            rows.append({**l.describe(), "precision": "float32" if l.name in self.float_layers else "int8",
                         "sensitivity": None if s is None else {"nrmse": s["nrmse"], "pearson": s["pearson"]},
                         "float_priority": rank.get(l.name)})
        return {
            "method": self.method,
            "scheme": self.scheme,
            "criterion": {"pearson_min": min_pearson(), "same_hr": True, "margin": MARGIN,
                          "against": "the same target's float32 build, on the calibration clip",
                          "why": f"the signal tier (r >= {metrics.SIGNAL_MIN_PEARSON}, same heart rate) with "
                                 f"{MARGIN:g} of its allowed decorrelation left for the verification clip"},
            "sensitivity_measured": "not measured: every layer int8 meets the criterion" if not self.order else
            "each layer int8 alone, the others float, over the calibration clip: the judged output's NRMSE and "
            f"Pearson r against the all-float run, on {self.measured_on}",
            "order": f"layers kept float first by {self.order_kind}" if self.order_kind else None,
            "calibration": self.calibration.describe(),
            "int8_layers": len(self.int8_layers),
            "float_layers": len(self.float_layers),
            "int8_flops_fraction": round(int8_flops / total, 4),
            "effect": self.effect,
            "all_int8": self.all_int8,
            "trials": self.trials,
            "layers": rows,
        }


ORDERS = {"per_flop": "sensitivity (NRMSE squared, which adds up across layers) per FLOP the layer costs",
          "sensitivity": "sensitivity alone (NRMSE)"}
PER_FLOP_ENOUGH = 0.9  # the per-FLOP order's result is kept when it leaves this share of the FLOPs int8


def choose(layers: list[Layer], sens: list[dict], evaluate: Evaluate, cal: Calibration, *, method: str,
           scheme: str, measured_on: str, log: Callable[[str], None] = lambda m: None) -> Plan:
    """The fewest layers kept float, in an order of the measured sensitivities, whose real build meets the
    signal criterion with the margin against the float build (`evaluate(frozenset())`), by bisection over how
    many of the first layers stay float. First in the order of sensitivity per FLOP (a small layer that moves
    the output goes float first: it costs nothing); where that finds no set or leaves less than
    PER_FLOP_ENOUGH of the FLOPs int8 (every large layer sensitive, as onnxruntime's static activations make
    them), also in the order of sensitivity alone, and the set with more int8 FLOPs wins."""
    if not layers:
        raise QuantizeError("the graph has no conv or matmul with a parameter weight: nothing to quantise to int8")
    idx = range(len(layers))
    err = [np.inf if s["nrmse"] is None else s["nrmse"] for s in sens]  # None: NaN/Inf, the most sensitive
    keys = {"per_flop": lambda i: -err[i] ** 2 / (layers[i].flops + COST_FLOOR_FLOPS),
            "sensitivity": lambda i: -err[i]}
    reference = np.asarray(evaluate(frozenset()), np.float64).reshape(-1)
    trials: list[dict] = []
    measured: dict[frozenset, dict] = {}
    total = sum(l.flops for l in layers) or 1
    by_name = {l.name: l for l in layers}

    def measure(int8: frozenset, label: str) -> dict:
        if int8 not in measured:
            m = compare(reference, np.asarray(evaluate(int8), np.float64).reshape(-1), cal)
            measured[int8] = m
            log(f"      int8 with {label}: r {m['pearson']:.6f}, NRMSE "
                f"{'NaN/Inf' if m['nrmse'] is None else format(m['nrmse'], '.3g')}"
                + ("" if meets(m) else f" (below r {min_pearson():.5f})"))
        return measured[int8]

    def search(name: str) -> tuple[list[str], int | None]:
        order = [layers[i].name for i in sorted(idx, key=lambda i: (keys[name](i), i))]

        def ok(k: int) -> bool:
            m = measure(frozenset(order[k:]), f"{k} of {len(order)} layers float ({name} order)")
            trials.append({"order": name, "float_layers": k, "pearson": m["pearson"], "nrmse": m["nrmse"],
                           "same_hr": m["same_hr"], "meets": meets(m)})
            return meets(m)
        if ok(0):
            return order, 0
        lo, hi = 0, len(order)  # ok(lo) is false; ok(hi), every layer float, is taken as true
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return order, (hi if hi < len(order) else None)

    int8_share = lambda order, k: sum(by_name[n].flops for n in order[k:]) / total
    results = {}
    order, k = search("per_flop")
    results["per_flop"] = (order, k)
    if k is None or int8_share(order, k) < PER_FLOP_ENOUGH:
        results["sensitivity"] = search("sensitivity")
    found = {n: r for n, r in results.items() if r[1] is not None}
    if not found:
        worst = measured[frozenset(results["sensitivity"][0][-1:])]
        raise QuantizeError(f"no int8 layer keeps the signal tier: the least sensitive layer alone int8 gives r "
                            f"{worst['pearson']:.6f} < {min_pearson():.5f} on the calibration clip")
    name = max(found, key=lambda n: (int8_share(*found[n]), n == "per_flop"))
    order, k = found[name]
    all8 = measured[frozenset(order)]
    return Plan(method, scheme, layers, sens, set(order[:k]), measured[frozenset(order[k:])], all8, trials, cal,
                order, measured_on, ORDERS[name])


def all_int8_plan(layers: list[Layer], effect: dict, cal: Calibration, method: str, scheme: str) -> Plan:
    """The plan when every layer int8 already meets the criterion (`effect`: that build's measurement)."""
    trial = {"order": None, "float_layers": 0, "pearson": effect["pearson"], "nrmse": effect["nrmse"],
             "same_hr": effect["same_hr"], "meets": True}
    return Plan(method, scheme, layers, [None] * len(layers), set(), effect, effect, [trial], cal, [])
