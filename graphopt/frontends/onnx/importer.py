"""ONNX graph -> IR graph.

Inputs keep their names, order and (fixed) shapes; graph outputs keep their names and order; state
pairs (an input fed back from an output: see `pairing`) become the IR's state. Nodes are converted
in file order (ONNX graphs are topologically sorted): a node whose inputs are all known while
importing (initializers, Constants, shapes, and what is computed from them) is evaluated here with
onnx's reference evaluator, so shape arithmetic (Shape -> Gather -> Concat -> Reshape) folds to the
static attributes the IR takes; any other node goes to its converter (registry.CONVERTERS).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ...ir import Graph, TensorType, Value, canonical_dtype
from . import ops  # noqa: F401 (registers the converters)
from .registry import CONVERTERS, Ctx, OnnxImportError

# ops whose value may differ between runs: never evaluated while importing
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}
FOLD_LIMIT = 1 << 24  # elements: a constant computation larger than this is left to the graph's passes


def np_dtype(elem_type: int):
    from onnx import helper
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def io_shape(vi, fixed: Mapping[str, Sequence[int]], path) -> tuple[int, ...]:
    """A graph input's shape: from --input-shape, else the file's, with a dynamic leading (batch) dim as 1."""
    if vi.name in fixed:
        return tuple(int(d) for d in fixed[vi.name])
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise OnnxImportError(f"{path}: input {vi.name!r} has no shape in the file; give it with "
                              f"--input-shape {vi.name}:D0,D1,...")
    dims = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)  # a dynamic batch: one stream per step
        else:
            what = d.dim_param or "unknown"
            raise OnnxImportError(f"{path}: input {vi.name!r} has a dynamic dimension {what!r} (axis {i}); fix it "
                                  f"with --input-shape {vi.name}:D0,D1,...")
    return tuple(dims)


def to_ir(model, opset: int, path: str, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
          state_pairs: Sequence[tuple[str, str]] = (), initial_state: Mapping[str, np.ndarray] | None = None,
          name: str = "model", log=lambda m: None) -> Graph:
    from onnx import numpy_helper
    fixed = dict(input_shapes or {})
    initial_state = dict(initial_state or {})
    g = Graph(name)
    ctx = Ctx(g, opset, path)
    env: dict[str, object] = {"": None}  # ONNX name -> Value | np.ndarray (| None: an omitted optional input)
    inits = {t.name: t for t in model.graph.initializer}
    for t in model.graph.initializer:
        env[t.name] = numpy_helper.to_array(t)
    state_in = {i: o for i, o in state_pairs}
    unknown = set(fixed) - {vi.name for vi in model.graph.input}
    if unknown:
        raise OnnxImportError(f"{path}: --input-shape names {sorted(unknown)}, which are not inputs of the model "
                              f"(its inputs: {[vi.name for vi in model.graph.input if vi.name not in inits]})")
    for vi in model.graph.input:
        if vi.name in inits:  # an input with a default (IR < 4): a constant here
            continue
        dtype = np_dtype(vi.type.tensor_type.elem_type)
        if dtype is None or dtype.kind not in "fiub":
            raise OnnxImportError(f"{path}: input {vi.name!r} is not a tensor of numbers or booleans")
        shape = io_shape(vi, fixed, path)
        dt = canonical_dtype(dtype)
        if vi.name in state_in:
            init = initial_state.get(vi.name)
            if init is None:
                init = np.zeros(shape, dtype)
            elif tuple(init.shape) != shape:
                if init.size != int(np.prod(shape)):
                    raise OnnxImportError(f"{path}: the initial state of {vi.name!r} has shape {tuple(init.shape)}, "
                                          f"the input is {shape}")
                init = init.reshape(shape)
            env[vi.name] = g.add_state(vi.name, np.asarray(init, dtype))
        else:
            env[vi.name] = g.add_input(vi.name, TensorType(shape, dt))
    convert_nodes(ctx, model.graph.node, env)
    pairs = {o: i for i, o in state_pairs}
    by_state = {s.name: s for s in g.state}
    for vi in model.graph.output:
        v = env.get(vi.name)
        if v is None:
            raise OnnxImportError(f"{path}: output {vi.name!r} is computed by no node")
        v = ctx.value(v)
        if vi.name in pairs:
            s = by_state[pairs[vi.name]]
            if v.type != s.input.type:
                raise OnnxImportError(f"{path}: state output {vi.name!r} is {v.type}, its input {s.name!r} "
                                      f"{s.input.type}; pair inputs with outputs of the same shape and dtype")
            s.output = v
        else:
            g.outputs.append(v)
            g.output_names.append(vi.name)
    if not g.outputs:
        raise OnnxImportError(f"{path}: every output is a state output; a model needs at least one other output")
    g.meta["state_io"] = {s.name: [s.name, o] for o, s in ((o, by_state[i]) for o, i in pairs.items())}
    g.meta["onnx_opset"] = opset
    return g


def convert_nodes(ctx: Ctx, nodes, env: dict) -> None:
    """Convert nodes in order into ctx.g, reading and writing env (subgraph converters call this too)."""
    for node in nodes:
        ctx.node = node
        ctx.env = env  # the names in scope: If/Loop/Scan bodies read the enclosing graph's values (ops/control.py)
        if node.domain not in ("", "ai.onnx"):
            ctx.fail(f"operator {node.domain}.{node.op_type} is not a standard ONNX operator; graphopt reads the "
                     "default domain only (export without custom/contrib ops)")
        try:
            ins = [env[n] for n in node.input]
        except KeyError as e:
            ctx.fail(f"input {e.args[0]!r} is not computed before this node (the graph is not topologically sorted "
                     "or names a missing value)")
        outs = None
        first_new = len(ctx.g.nodes)
        if node.op_type not in NONDETERMINISTIC and node.op_type != "If" and all(
                x is None or isinstance(x, np.ndarray) for x in ins) and \
                sum(int(x.size) for x in ins if x is not None) <= FOLD_LIMIT:
            outs = _evaluate(ctx, node, ins)
        if outs is None:
            fn = CONVERTERS.get(node.op_type)
            if fn is None:
                ctx.fail(f"operator {node.op_type} is not supported by graphopt's ONNX frontend")
            outs = fn(ctx, list(ins), attributes(node))
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
        made = {id(n) for n in ctx.g.nodes[first_new:]}
        for name, v in zip(node.output, outs):
            if name:
                env[name] = v
                if isinstance(v, Value) and id(v.producer) in made and v.name not in ctx.names_kept:
                    _keep_name(ctx, v, name, node.name)
    ctx.node = None


def _keep_name(ctx: Ctx, v: Value, onnx_name: str, node_name: str) -> None:
    """The IR value a node computes takes the ONNX tensor's name (so the emitted model names it so) and
    remembers the ONNX node's name (graph.meta["onnx_node_names"], for the node that computes it)."""
    v.name = ctx.g._claim(onnx_name)
    ctx.names_kept.add(v.name)
    if node_name:
        ctx.g.meta.setdefault("onnx_node_names", {})[v.name] = node_name


def _evaluate(ctx: Ctx, node, ins):
    """The node's outputs computed here (its inputs are all constants), or None where onnx's reference
    evaluator cannot (the converter then builds it into the graph, and the passes fold it)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    names = [f"i{k}" if x is not None else "" for k, x in enumerate(ins)]
    n = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
    n.attribute.extend(node.attribute)
    try:
        ev = ReferenceEvaluator(_single_node_model(n, ins, ctx.opset))
        outs = ev.run(None, {nm: x for nm, x in zip(names, ins) if nm})
    except Exception:
        return None
    return [np.asarray(o) for o in outs]


def _single_node_model(n, ins, opset):
    from onnx import helper
    inputs = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
              for k, x in enumerate(ins) if x is not None]
    outputs = [helper.make_tensor_value_info(o, 0, None) for o in n.output]
    g = helper.make_graph([n], "fold", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def attributes(node) -> dict:
    """The node's attributes as Python values (ints, floats, strings, lists, arrays, GraphProtos)."""
    from onnx import AttributeProto, numpy_helper
    out = {}
    for a in node.attribute:
        t = a.type
        if t == AttributeProto.INT:
            out[a.name] = int(a.i)
        elif t == AttributeProto.FLOAT:
            out[a.name] = float(a.f)
        elif t == AttributeProto.STRING:
            out[a.name] = a.s.decode("utf-8", "replace")
        elif t == AttributeProto.INTS:
            out[a.name] = [int(x) for x in a.ints]
        elif t == AttributeProto.FLOATS:
            out[a.name] = [float(x) for x in a.floats]
        elif t == AttributeProto.STRINGS:
            out[a.name] = [s.decode("utf-8", "replace") for s in a.strings]
        elif t == AttributeProto.TENSOR:
            out[a.name] = numpy_helper.to_array(a.t)
        elif t == AttributeProto.GRAPH:
            out[a.name] = a.g
        elif t == AttributeProto.GRAPHS:
            out[a.name] = list(a.graphs)
        else:
            out[a.name] = None
    return out
