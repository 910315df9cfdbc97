"""Target `onnx`: IR -> ONNX model (opset 18) for onnxruntime, and its Stream.

Lowering is a table (`TABLE`, a lowering.LoweringTable): one function per IR op that emits ONNX nodes
through an OnnxBuilder. Groups of nodes with a smaller ONNX spelling are emitted by onnx_fusions.

The file describes itself to tools that never read the manifest (Netron, onnxruntime's profiler, TensorRT's
parser messages): every node is named after the IR node it lowers (_name_nodes), and metadata_props carry
the manifest's essentials (metadata_props()); producer_name/producer_version are graphopt's.
"""
from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import artifact as art
from ..ir import Graph, Node, Value
from ..ir.ops import lhs_dilations
from ..stream import Stream
from . import Capabilities, Option, Target, UnsupportedOpError, onnx_fusions
from .lowering import LoweringTable

OPSET = 18
IR_VERSION = 10
NAME = "onnx"
# --quantize: name -> (manifest precision, the loosest tier it can claim)
QUANTIZE = {"int8": ("int8 mixed precision (static QDQ int8 layers chosen by measured sensitivity, the rest "
                     "float32)", "signal")}
TARGET = Target(NAME, emits=".onnx (opset 18)", backend="onnxruntime (CPU EP)",
                caps=Capabilities(channels_first_convs=True, onnx_ops=True), packages=("onnx", "onnxruntime"),
                # no onnx-int8 release variant: static QDQ keeps the signal with 1 of FacePhys's 40 layers int8
                # (float32 speed, ~4 min to build); `--quantize int8` builds it on request
                options=(Option("--quantize", "int8: static QDQ int8 where measured sensitivity allows, the most "
                                "sensitive layers float32 (signal tier)", choices=tuple(QUANTIZE)),))


def available() -> tuple[bool, str]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return False, f"{e.name} is not installed (pip install onnx onnxruntime; see requirements.txt)"
    return True, ""


class OnnxBuilder:
    def __init__(self):
        from onnx import helper
        self.helper = helper
        self.nodes = []
        self.initializers = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self.name_of: dict[int, str] = {}

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self._names:
            i += 1
            name = f"{hint}_{i}"
        self._names.add(name)
        return name

    def const(self, array, hint: str = "c") -> str:
        from onnx import numpy_helper
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "shape")

    def node(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out


# lower(builder, node, ONNX names of its inputs, ONNX name of its output)
Lowering = Callable[[OnnxBuilder, Node, list[str], str], None]
TABLE = LoweringTable("ONNX", "graphopt/targets/onnx.py")
lowering = TABLE.register

DIRECT = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "min": "Min", "pow": "Pow",
          "and": "And", "or": "Or", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
          "ge": "GreaterOrEqual", "eq": "Equal", "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "floor": "Floor", "ceil": "Ceil", "abs": "Abs", "sign": "Sign", "sin": "Sin", "cos": "Cos",
          "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "not": "Not", "select": "Where"}


def _direct(op_type: str) -> Lowering:
    return lambda b, n, ins, out: b.node(op_type, ins, out)


for _op, _onnx in DIRECT.items():
    TABLE.add(_op, _direct(_onnx))


def _scalar(b: OnnxBuilder, n: Node, value) -> str:
    return b.const(np.asarray(value, dtype=n.outputs[0].dtype))


@lowering("max")
def _max(b, n, ins, out):
    """max(x, 0) is Relu (onnxruntime fuses Conv+Relu, not Conv+Max), any other max is Max."""
    def zero(v):
        return v.is_param and v.const.size == 1 and v.dtype.startswith("float") and float(v.const.ravel()[0]) == 0.0
    shape = n.outputs[0].shape
    x = 0 if zero(n.inputs[1]) and n.inputs[0].shape == shape else \
        1 if zero(n.inputs[0]) and n.inputs[1].shape == shape else None
    if x is None:
        b.node("Max", ins, out)
    else:
        b.node("Relu", [ins[x]], out)


@lowering("ne")
def _ne(b, n, ins, out):
    b.node("Not", [b.node("Equal", ins)], out)


@lowering("is_finite")
def _is_finite(b, n, ins, out):
    b.node("Not", [b.node("Or", [b.node("IsNaN", ins), b.node("IsInf", ins)])], out)


@lowering("rem")
def _rem(b, n, ins, out):
    b.node("Mod", ins, out, fmod=1)


@lowering("rsqrt")
def _rsqrt(b, n, ins, out):
    b.node("Reciprocal", [b.node("Sqrt", ins)], out)


@lowering("clamp")
def _clamp(b, n, ins, out):
    b.node("Clip", [ins[0], _scalar(b, n, n.attrs["lo"]), _scalar(b, n, n.attrs["hi"])], out)


@lowering("log1p")
def _log1p(b, n, ins, out):
    b.node("Log", [b.node("Add", [ins[0], _scalar(b, n, 1)])], out)


@lowering("expm1")
def _expm1(b, n, ins, out):
    b.node("Sub", [b.node("Exp", ins), _scalar(b, n, 1)], out)


@lowering("round")
def _round(b, n, ins, out):
    if n.attrs["mode"] == "half_even":
        b.node("Round", ins, out)
        return
    floor = b.node("Floor", [b.node("Add", [b.node("Abs", ins), _scalar(b, n, 0.5)])])
    b.node("Mul", [b.node("Sign", ins), floor], out)


@lowering("cast")
def _cast(b, n, ins, out):
    from onnx import helper
    b.node("Cast", ins, out, to=helper.np_dtype_to_tensor_dtype(np.dtype(n.attrs["to"])))


@lowering("reshape")
def _reshape(b, n, ins, out):
    b.node("Reshape", [ins[0], b.ints(n.attrs["shape"])], out)


@lowering("transpose")
def _transpose(b, n, ins, out):
    b.node("Transpose", ins, out, perm=list(n.attrs["perm"]))


@lowering("broadcast")
def _broadcast(b, n, ins, out):
    x = n.inputs[0]
    shape, dims = n.attrs["shape"], n.attrs["dims"]
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = x.shape[i]
    needs_expand = tuple(expanded) != tuple(shape)
    src = ins[0]
    if tuple(expanded) != x.shape or not needs_expand:
        src = b.node("Reshape", [src, b.ints(expanded)], None if needs_expand else out)
    if needs_expand:
        b.node("Expand", [src, b.ints(shape)], out)


@lowering("slice")
def _slice(b, n, ins, out):
    shape = n.inputs[0].shape
    axes = [i for i, (s, l, st) in enumerate(zip(n.attrs["starts"], n.attrs["limits"], n.attrs["strides"]))
            if (s, l, st) != (0, shape[i], 1)]
    if not axes:
        b.node("Identity", ins, out)
        return
    pick = lambda key: b.ints([n.attrs[key][i] for i in axes])
    b.node("Slice", [ins[0], pick("starts"), pick("limits"), b.ints(axes), pick("strides")], out)


@lowering("concat")
def _concat(b, n, ins, out):
    b.node("Concat", ins, out, axis=n.attrs["axis"])


@lowering("pad")
def _pad(b, n, ins, out):
    pads = [lo for lo, _ in n.attrs["pads"]] + [hi for _, hi in n.attrs["pads"]]
    b.node("Pad", [ins[0], b.ints(pads), ins[1]], out, mode="constant")


@lowering("take")
def _take(b, n, ins, out):
    data, idx = n.inputs
    limit = data.shape[n.attrs["axis"]] - 1
    lo, hi = (b.const(np.asarray(v, dtype=idx.dtype)) for v in (0, limit))
    clamped = b.node("Min", [b.node("Max", [ins[1], lo]), hi])
    b.node("Gather", [ins[0], clamped], out, axis=n.attrs["axis"])


def _reduce(op_type: str) -> Lowering:
    def lower(b, n, ins, out):
        if not n.attrs["axes"]:  # ONNX reduces every axis when given none; the IR reduces none
            return b.node("Identity", [ins[0]], out)
        return b.node(op_type, [ins[0], b.ints(n.attrs["axes"])], out, keepdims=0)
    return lower


TABLE.add("reduce_sum", _reduce("ReduceSum"))
TABLE.add("reduce_max", _reduce("ReduceMax"))
TABLE.add("reduce_min", _reduce("ReduceMin"))


@lowering("cumsum")
def _cumsum(b, n, ins, out):
    axis = b.const(np.asarray(n.attrs["axis"], dtype=np.int64))
    b.node("CumSum", [ins[0], axis], out, reverse=int(n.attrs["reverse"]))


@lowering("dot")
def _dot(b, n, ins, out):
    lhs, rhs = n.inputs
    a = n.attrs
    if not a["lhs_batch"] and a["lhs_contract"] == (len(lhs.shape) - 1,) and a["rhs_contract"] == (0,):
        if len(rhs.shape) == 2:
            b.node("MatMul", ins, out)  # x[..., K] @ w[K, N]: MatMul broadcasts the leading dims
            return
        if len(rhs.shape) == 1:  # x[..., K] . v[K]: onnxruntime's MatMul with a 1-D operand is slow
            b.node("ReduceSum", [b.node("Mul", ins), b.ints([-1])], out, keepdims=0)
            return
    b.node("Einsum", ins, out, equation=einsum_equation(len(lhs.shape), len(rhs.shape), a))


def einsum_equation(lhs_rank: int, rhs_rank: int, a: dict) -> str:
    """The Einsum equation of a dot: output = batch dims, lhs free dims, rhs free dims."""
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs, rhs = [None] * lhs_rank, [None] * rhs_rank
    for i, j in zip(a["lhs_batch"], a["rhs_batch"]):
        lhs[i] = rhs[j] = next(letters)
    for i, j in zip(a["lhs_contract"], a["rhs_contract"]):
        lhs[i] = rhs[j] = next(letters)
    lhs = [c or next(letters) for c in lhs]
    rhs = [c or next(letters) for c in rhs]
    outs = [lhs[i] for i in a["lhs_batch"]]
    outs += [c for i, c in enumerate(lhs) if i not in a["lhs_batch"] and i not in a["lhs_contract"]]
    outs += [c for i, c in enumerate(rhs) if i not in a["rhs_batch"] and i not in a["rhs_contract"]]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(outs)}"


@lowering("conv")
def _conv(b, n, ins, out):
    a = n.attrs
    if any(d != 1 for d in lhs_dilations(a, len(n.inputs[0].shape) - 2)):
        raise UnsupportedOpError(f"conv %{n.outputs[0].name} has lhs_dilations {a['lhs_dilations']}, which ONNX "
                                 "Conv lacks; run the expand-lhs-dilation lowering pass first (graphopt build "
                                 "does for this target)")
    pads = [lo for lo, _ in a["pads"]] + [hi for _, hi in a["pads"]]
    b.node("Conv", ins, out, strides=list(a["strides"]), pads=pads, dilations=list(a["dilations"]),
           group=a["groups"], kernel_shape=list(n.inputs[1].shape[2:]))


@lowering("reverse")
def _reverse(b, n, ins, out):
    axes = n.attrs["axes"]
    if not axes:
        b.node("Identity", ins, out)
        return
    shape = n.inputs[0].shape
    # step -1 from the last element; an end of -(d+1) is one before the first (0 itself would stop short)
    ends = [-(shape[ax] + 1) for ax in axes]
    b.node("Slice", [ins[0], b.ints([-1] * len(axes)), b.ints(ends), b.ints(axes), b.ints([-1] * len(axes))], out)


@dataclass(frozen=True)
class PoolPlan:
    """An IR pool as an [N, C, *spatial] pool: the axes with a trivial window (size 1, stride 1, no
    padding) moved to the front and folded into N and C, the windowed axes (in order) spatial."""
    perm: tuple[int, ...]  # trivial axes, then windowed axes
    folded: tuple[int, ...] | None  # [N, C, *windowed dims] to reshape to; None where already so
    unfolded: tuple[int, ...]  # the pool's output in perm order
    window: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]

    @property
    def inverse(self) -> tuple[int, ...] | None:
        """The permutation back to the IR's axis order; None where perm is the identity."""
        if self.perm == tuple(range(len(self.perm))):
            return None
        return tuple(int(i) for i in np.argsort(self.perm))


def pool_plan(in_shape: tuple[int, ...], out_shape: tuple[int, ...], a: dict) -> PoolPlan:
    """Plan an IR pool (attributes a) of in_shape -> out_shape as an [N, C, *spatial] pool."""
    rank = len(in_shape)
    trivial = [i for i in range(rank) if (a["window"][i], a["strides"][i], tuple(a["pads"][i])) == (1, 1, (0, 0))]
    axes = [i for i in range(rank) if i not in trivial]
    folded = None
    if len(trivial) != 2:  # N = product of all trivial axes but the last, C = the last (1 if none)
        outer = [in_shape[i] for i in trivial]
        folded = (int(np.prod(outer[:-1], dtype=np.int64)), outer[-1] if outer else 1) + tuple(in_shape[i] for i in axes)
    return PoolPlan(perm=tuple(trivial + axes), folded=folded, unfolded=tuple(out_shape[i] for i in trivial + axes),
                    window=tuple(a["window"][i] for i in axes), strides=tuple(a["strides"][i] for i in axes),
                    pads=tuple(tuple(a["pads"][i]) for i in axes))


def _chain(b: OnnxBuilder, x: str, steps: list, out: str) -> None:
    """Emit steps (op_type, extra inputs, attributes) one after another from x, the last into out."""
    steps = steps or [("Identity", [], {})]
    for i, (op_type, extra, attrs) in enumerate(steps):
        x = b.node(op_type, [x] + extra, out if i == len(steps) - 1 else None, **attrs)


def _pool_steps(b: OnnxBuilder, n: Node, plan: PoolPlan) -> list:
    """MaxPool, or AveragePool with the padding counted (sum: times the window size), over [N, C, *spatial]."""
    mode, pads, steps = n.attrs["mode"], plan.pads, []
    if any(lo >= k or hi >= k for (lo, hi), k in zip(pads, plan.window)):
        # onnxruntime's pools take pads smaller than the window only: pad first. The axes input keeps
        # onnxruntime's PadFusion from folding a zero Pad back into the pool's pads.
        flat = [lo for lo, _ in pads] + [hi for _, hi in pads]
        fill = _scalar(b, n, -np.inf if mode == "max" else 0)
        steps.append(("Pad", [b.ints(flat), fill, b.ints(range(2, 2 + len(pads)))], {"mode": "constant"}))
        pads = ((0, 0),) * len(pads)
    attrs = {"kernel_shape": list(plan.window), "strides": list(plan.strides),
             "pads": [lo for lo, _ in pads] + [hi for _, hi in pads]}
    windowed = plan.perm[len(plan.perm) - len(plan.window):]
    if mode in ("max", "avg") and not steps and tuple(plan.window) == tuple(n.inputs[0].shape[i] for i in windowed) \
            and all(p == (0, 0) for p in pads):  # the window is the whole image: a global pool
        return [("GlobalMaxPool" if mode == "max" else "GlobalAveragePool", [], {})]
    if mode == "max":
        return steps + [("MaxPool", [], attrs)]
    steps.append(("AveragePool", [], {**attrs, "count_include_pad": 1}))
    if mode == "sum":
        steps.append(("Mul", [_scalar(b, n, np.prod(plan.window))], {}))
    return steps


@lowering("pool")
def _pool(b, n, ins, out):
    plan = pool_plan(n.inputs[0].shape, n.outputs[0].shape, n.attrs)
    if len(plan.window) > 3:
        raise UnsupportedOpError(f"pool %{n.outputs[0].name} has a window on {len(plan.window)} axes; ONNX "
                                 "MaxPool/AveragePool pool at most 3 (split it into two pools: a box window is separable)")
    steps = []
    if plan.window:
        if plan.inverse:
            steps.append(("Transpose", [], {"perm": list(plan.perm)}))
        if plan.folded:
            steps.append(("Reshape", [b.ints(plan.folded)], {}))
        steps += _pool_steps(b, n, plan)
        if plan.folded:
            steps.append(("Reshape", [b.ints(plan.unfolded)], {}))
        if plan.inverse:
            steps.append(("Transpose", [], {"perm": list(plan.inverse)}))
    _chain(b, ins[0], steps, out)


def to_onnx(graph: Graph, fuse: bool = True, table: LoweringTable = TABLE):
    """Lower an IR graph to an onnx.ModelProto with stable I/O names (see artifact.state_io_names).

    fuse: emit the groups graphopt.targets.onnx_fusions finds as fewer ONNX nodes (exact); without
    it every IR node is lowered on its own. table: the ops allowed (a target emitting ONNX for another
    runtime passes its own table, based on this one)."""
    import onnx
    from onnx import helper
    table.check(graph)
    b = OnnxBuilder()
    state_in, state_out = art.state_io_names(graph)

    def info(name: str, v: Value):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype)), v.shape)

    inputs = []
    for v, name in [(v, v.name) for v in graph.inputs] + [(s.input, n) for s, n in zip(graph.state, state_in)]:
        b.name_of[id(v)] = b.fresh(name)
        inputs.append(info(name, v))
    sinks = list(zip(graph.output_names, graph.outputs)) + list(zip(state_out, [s.output for s in graph.state]))
    for name in [n for n, _ in sinks]:
        b._names.add(name)
    claimed: dict[int, str] = {}
    for name, v in sinks:  # a node output that is a sink gets the sink's name directly
        if v.producer is not None and id(v) not in claimed:
            claimed[id(v)] = name
    for p in graph.params():
        b.name_of[id(p)] = b.const(p.const, p.name)

    def out_name(v: Value) -> str:
        b.name_of[id(v)] = claimed.get(id(v)) or b.fresh(v.name)
        return b.name_of[id(v)]
    fusions = onnx_fusions.plan(graph) if fuse else onnx_fusions.Plan()
    origin: list[tuple[str | None, str]] = []  # per ONNX node: (IR op or None for a fused group, its output)
    for node in graph.nodes:
        if id(node) in fusions.skip:
            continue
        start = len(b.nodes)
        if id(node) in fusions.emit:
            fusions.emit[id(node)](b, lambda v: b.name_of[id(v)], out_name)
            origin += [(None, n.output[0]) for n in b.nodes[start:]]
            continue
        table.lookup(node)
        if len(node.outputs) != 1:
            raise UnsupportedOpError(f"op '{node.op}' with {len(node.outputs)} outputs has no ONNX lowering")
        v = node.outputs[0]
        out = claimed.get(id(v)) or b.fresh(v.name)
        table.lower(node, b, node, [b.name_of[id(x)] for x in node.inputs], out)
        b.name_of[id(v)] = out
        origin += [(node.op, out)] * (len(b.nodes) - start)
    outputs = []
    for name, v in sinks:
        if b.name_of[id(v)] != name:  # inputs, params, or a value that is two sinks
            b.node("Identity", [b.name_of[id(v)]], name)
            origin.append(("output", name))
        outputs.append(info(name, v))
    order = graph.meta.get("io_order") or {}  # an imported ONNX file's own order of inputs and outputs
    inputs, outputs = _in_order(inputs, order.get("inputs")), _in_order(outputs, order.get("outputs"))
    used = {x for n in b.nodes for x in n.input} | {o.name for o in outputs}
    g = helper.make_graph(b.nodes, graph.name, inputs, outputs,
                          [t for t in b.initializers if t.name in used])  # a fused group may not read some
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphopt",
                              producer_version=_version(), ir_version=IR_VERSION)
    _carry_onnx_names(model, graph)
    _name_nodes(model, origin)
    if "onnx_metadata" not in graph.meta:  # an imported ONNX model keeps its own metadata_props, as they were
        helper.set_model_props(model, metadata_props(graph))
    onnx.checker.check_model(model)
    return model


def _version() -> str:
    from .. import __version__
    return __version__


def _name_nodes(model, origin: list[tuple[str | None, str]]) -> None:
    """Name every node that has no name yet (one carried from an imported ONNX model keeps it) after the
    IR: `<IR op>/<output>` for the node that computes an IR node's output value, `<IR op>/<output>/<ONNX
    op>` for the others its lowering emits, `fused.<ONNX op>/<output>` for a group onnx_fusions lowers as
    one, `output/<name>` for an Identity that names a graph output. Names are unique in the model (a
    repeat gets _1, _2, ...) and depend only on the graph, so rebuilds stay byte-identical."""
    nodes = model.graph.node
    assert len(nodes) == len(origin)
    used = {n.name for n in nodes if n.name}
    for n, (op, out) in zip(nodes, origin):
        if n.name:
            continue
        if op is None:
            base = f"fused.{n.op_type}/{n.output[0]}"
        elif op == "output" or n.output[0] == out:
            base = f"{op}/{out}"
        else:
            base = f"{op}/{out}/{n.op_type}"
        name, i = base, 0
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        n.name = name


METADATA_PREFIX = "graphopt."


def metadata_props(graph: Graph) -> dict[str, str]:
    """The manifest's essentials as ONNX metadata_props (Netron and other tools show them; values are
    strings, JSON where structured): graphopt's version, the model, the state pairs (input -> output, in
    state order), each input's and output's role, fps, frames per step, the inputs an --fps build fixed,
    and the tier the pass pipeline claims (absent outside a build: nothing was claimed). The claim is made before verification and written here so the model file
    stays what was verified (its sha256 is in the manifest); the tier verification reached is in the
    manifest (equivalence.tier), next to the claim."""
    import json
    m = art.describe_graph(graph, "model.onnx", NAME, "float32")
    dump = lambda x: json.dumps(x, separators=(",", ":"))
    props = {"version": _version(), "model": str(m["model"]),
             "state_pairs": dump([[s["input"], s["output"]] for s in m["state"]]),
             "input_roles": dump({i["name"]: i["role"] for i in m["inputs"]}),
             "output_roles": dump({o["name"]: o.get("role", "output") for o in m["outputs"]}),
             "frames_per_step": str(m["frames_per_step"])}
    if m["fps"]:
        props["fps"] = str(m["fps"])
    if m["fixed_inputs"]:
        props["fixed_inputs"] = dump(m["fixed_inputs"])
    exact = (graph.meta.get("pipeline") or {}).get("exact")
    if exact is not None:
        props["tier_claimed"] = "rounding" if exact else "signal"
        props["tier_note"] = ("claimed by the pass pipeline before verification; the tier the artifact reached "
                              "is in its manifest (equivalence.tier)")
    props["manifest"] = "the rest (sha256, verification, tools) is in the .manifest.json beside this file"
    return {METADATA_PREFIX + k: v for k, v in props.items()}


def _in_order(infos: list, names: list | None) -> list:
    """Value infos in the order `names` gives (names it lacks keep their place after those it has)."""
    if not names:
        return infos
    rank = {n: k for k, n in enumerate(names)}
    return sorted(infos, key=lambda i: rank.get(i.name, len(rank)))


def _carry_onnx_names(model, graph: Graph) -> None:
    """What a model imported from ONNX had: its metadata_props, and the name of each node whose output
    tensor survived the passes under its name (graph.meta, set by graphopt.frontends.onnx)."""
    from onnx import helper
    props = graph.meta.get("onnx_metadata") or {}
    if props:
        helper.set_model_props(model, {str(k): str(v) for k, v in props.items()})
    names = graph.meta.get("onnx_node_names") or {}
    taken = set()  # one imported node may become several (an unrolled GRU or Loop): its name goes to the first
    for n in model.graph.node:
        if not n.name and n.output and names.get(n.output[0]) and names[n.output[0]] not in taken:
            n.name = names[n.output[0]]
            taken.add(n.name)


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    """Write <name>.onnx, its manifest and initial state into out_dir."""
    import onnx
    options = options or {}
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_file = out_dir / f"{stem}.onnx"
    model = to_onnx(graph, fuse=options.get("fuse", True))
    quantized = options.get("quantize")
    if quantized is not None and quantized not in QUANTIZE:
        raise art.ArtifactError(f"onnx --quantize {quantized!r:.40} is not one of {', '.join(QUANTIZE)}")
    record = None
    if quantized == "int8":  # per layer, chosen by measured sensitivity (graphopt.quantize)
        from .. import quantize
        from ..console import log
        from . import onnx_int8
        props, producer = list(model.metadata_props), (model.producer_name, model.producer_version)
        try:
            model, record = onnx_int8.build(graph, model, log=options.get("log") or log)
        except quantize.QuantizeError as e:
            raise art.ArtifactError(f"{e}; build without --quantize (float32), or --target tflite --quantize "
                                    "int8 (dynamic-range int8 keeps more of the signal)") from None
        del model.metadata_props[:]  # the file describes itself as the float one did (the quantizer adds its own)
        model.metadata_props.extend(props)
        model.producer_name, model.producer_version = producer
    onnx.save_model(model, str(model_file))
    manifest = art.describe_graph(graph, model_file.name, NAME,
                                  QUANTIZE[quantized][0] if quantized else options.get("precision", "float32"))
    if quantized:
        manifest["precision_tier"] = QUANTIZE[quantized][1]
        manifest["quantization"] = record
    manifest["sha256"] = art.sha256(model_file)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    manifest["onnx"] = {"opset": OPSET, "ir_version": IR_VERSION, "nodes": len(model.graph.node),
                        "fused_lowering": bool(options.get("fuse", True)),
                        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))}
    manifest["tools"] = art.tool_versions("onnx", "onnxruntime")
    return art.finish(graph, model_file, manifest)


class OnnxStream(Stream):
    """Runs the model in onnxruntime with every input and output bound once (IOBinding) to NumPy
    buffers the Stream owns: two sets of state buffers (ping-pong), the step reads one and writes the
    other, so the state tensors are never copied or converted per step; only the frame (and dt) are
    copied in and the output copied out. Each set is one flat buffer (state tensors are views into
    it), so the finiteness check after each step is one pass over memory.

    Streams of one artifact (same file and sha256, same thread count) share one InferenceSession:
    its weights, pre-packed kernels and arena are paid once; a Stream adds its state buffers."""

    def __init__(self, model_file: Path, manifest: dict, initial_state, threads: int = 1):
        import onnxruntime as ort
        super().__init__(manifest, initial_state)
        self._shared = shared_session(model_file, manifest.get("sha256"), threads)
        session = self._shared.session
        value = ort.OrtValue.ortvalue_from_numpy  # wraps the array's memory (CPU), no copy
        self._in = [np.zeros(i["shape"], np.dtype(i["dtype"])) for i in manifest["inputs"]]
        self._out = [np.zeros(o["shape"], np.dtype(o["dtype"])) for o in manifest["outputs"]]
        self._flat, self._bufs = zip(*(_state_buffers(self._initial_state) for _ in range(2)))
        self._bufs = list(self._bufs)
        self._bindings = []
        for src, dst in ((self._bufs[0], self._bufs[1]), (self._bufs[1], self._bufs[0])):
            b = session.io_binding()
            for spec, buf in zip(manifest["inputs"], self._in):
                b.bind_ortvalue_input(spec["name"], value(buf))
            for spec, buf in zip(manifest["outputs"], self._out):
                b.bind_ortvalue_output(spec["name"], value(buf))
            for spec, s_in, s_out in zip(manifest["state"], src, dst):
                b.bind_ortvalue_input(spec["input"], value(s_in))
                b.bind_ortvalue_output(spec["output"], value(s_out))
            self._bindings.append(b)
        self._reset()

    @property
    def session(self):
        return self._shared.session

    def _run(self, feeds, state):
        side = 0 if state is self._bufs[0] else 1
        for buf, x in zip(self._in, feeds):
            np.copyto(buf, np.asarray(x).reshape(buf.shape))
        self._shared.session.run_with_iobinding(self._bindings[side])
        return [o.copy() for o in self._out], self._bufs[1 - side]

    def _state_finite(self, state) -> bool:
        flat = self._flat[0 if state is self._bufs[0] else 1]
        if flat is None:
            return super()._state_finite(state)
        # NaN and Inf times 0 are NaN, any finite value times 0 is 0: one BLAS dot over the buffer
        with np.errstate(invalid="ignore"):
            return bool(np.isfinite(flat @ _zeros(flat.size, flat.dtype)))

    def _reset(self) -> None:
        for b, s in zip(self._bufs[0], self._initial_state):
            np.copyto(b, s)
        self._state = self._bufs[0]


def _state_buffers(initial_state) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """One set of state buffers: views into one flat buffer where the state tensors share a float dtype
    (else separate arrays and no flat buffer)."""
    dtypes = {np.asarray(s).dtype for s in initial_state}
    if len(dtypes) != 1 or next(iter(dtypes)).kind != "f":
        return None, [np.empty_like(s) for s in initial_state]
    flat = np.empty(sum(int(np.size(s)) for s in initial_state), next(iter(dtypes)))
    views, at = [], 0
    for s in initial_state:
        views.append(flat[at:at + np.size(s)].reshape(np.shape(s)))
        at += np.size(s)
    return flat, views


@functools.lru_cache(maxsize=8)
def _zeros(size: int, dtype) -> np.ndarray:
    """A read-only zero vector, one per size and dtype for all Streams."""
    z = np.zeros(size, dtype)
    z.setflags(write=False)
    return z


class _SharedSession:
    """An InferenceSession held by the Streams that use it (weakly cached by shared_session)."""

    def __init__(self, session):
        self.session = session


_SESSIONS: "weakref.WeakValueDictionary[tuple, _SharedSession]" = weakref.WeakValueDictionary()
_SESSIONS_LOCK = threading.Lock()


def session_options(threads: int = 1):
    """The onnxruntime SessionOptions of graphopt's Streams (the profiler and benchmarks start from these).

    Graph optimisations: onnxruntime's default, ORT_ENABLE_ALL (EXTENDED and BASIC measured 0.87x, LAYOUT and
    a model optimised offline, .onnx or .ort, loaded with optimisations off 1.00x: tests/benchmarks/
    bench_levers.py). Denormals are NOT flushed to zero, though that measured 1.23x on FacePhys (its recurrent
    state holds thousands of subnormal floats; outputs bit-identical on the clip): onnxruntime sets the flag on
    the thread that creates the process's first session, for good, so loading an artifact would change the
    arithmetic of the user's own NumPy code on that thread. Flushing around each step only is the way to have it."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def shared_session(model_file: Path, sha256: str | None, threads: int = 1) -> _SharedSession:
    """One onnxruntime session per model file content and thread count, shared while Streams hold it."""
    import onnxruntime as ort
    key = (str(Path(model_file).resolve()), sha256, int(threads))
    with _SESSIONS_LOCK:
        shared = _SESSIONS.get(key) if sha256 else None
        if shared is not None:
            return shared
        try:
            session = ort.InferenceSession(str(model_file), session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise art.ArtifactError(f"onnxruntime cannot load {model_file}: {_first_line(e)}") from None
        shared = _SharedSession(session)
        if sha256:
            _SESSIONS[key] = shared
        return shared


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def open_stream(model_file: Path, manifest: dict, initial_state, threads: int = 1) -> OnnxStream:
    return OnnxStream(model_file, manifest, initial_state, threads=threads)


def load(path, threads: int = 1) -> OnnxStream:
    return art.load(path, threads=threads)


def card_snippet(c) -> list[str]:
    """The model card's code that runs the artifact (c: release.Snippet)."""
    feed = ", ".join(f"'{n}': {n}" for n in c.inputs) + (", **state" if c.stateful else "")
    return ["# onnxruntime", "import onnxruntime as ort", f"s = ort.InferenceSession('{c.folder}/{c.model}.onnx')",
            f"outs = s.run(None, {{{feed}}})"] + \
        (["bvp, state = outs[0], {f'state_in_{i}': o for i, o in enumerate(outs[1:])}"] if c.stateful else [])
