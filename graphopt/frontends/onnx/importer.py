"""ONNX graph -> IR graph.

Inputs keep their names, order and (fixed) shapes; graph outputs keep their names and order; state
pairs (an input fed back from an output: see `pairing`) become the IR's state. Nodes are converted
in file order (ONNX graphs are topologically sorted): a node whose inputs are all known while
importing (initializers, Constants, shapes, and what is computed from them) is evaluated here with
onnx's reference evaluator, so shape arithmetic (Shape -> Gather -> Concat -> Reshape) folds to the
static attributes the IR takes; any other node goes to its converter (registry.CONVERTERS).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ...ir import Graph, TensorType, Value, canonical_dtype
from . import ops  # noqa: F401 (registers the converters)
from .registry import CONVERTERS, MAX_ELEMENTS, MAX_NODES, Ctx, OnnxImportError, _count

# ops whose value may differ between runs: never evaluated while importing
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}
# never given to the reference evaluator: their converters unroll them (one body node at a time, within
# MAX_NODES), where the evaluator would run a trip count of any size
NOT_EVALUATED = NONDETERMINISTIC | {"If", "Loop", "Scan", "SequenceMap"}
# ops onnx's reference evaluator computes element by element in Python (GridSample: ~3e3 outputs/s):
# evaluated only where inputs x outputs (elements) stay within SLOW_WORK_LIMIT, else left to the converter
SLOW = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv", "MaxPool", "AveragePool", "LpPool",
        "MaxRoiPool", "RoiAlign", "GridSample", "AffineGrid", "Col2Im", "NonMaxSuppression", "MaxUnpool", "LRN"}
SLOW_WORK_LIMIT = 1 << 22
# ops whose outputs may be far larger than their inputs: evaluated only where onnx's shape inference
# gives their output shapes first (the sizes are checked before anything is computed)
GROWING = {"ConstantOfShape", "Expand", "Tile", "Range", "Pad", "Resize", "Upsample", "OneHot", "EyeLike",
           "CenterCropPad", "Col2Im", "ConvTranspose", "MaxUnpool", "ScatterND", "ScatterElements",
           "SequenceConstruct", "ConcatFromSequence", "SplitToSequence", "StringSplit", "Einsum"}
FOLD_LIMIT = 1 << 24  # elements: a constant computation larger than this is left to the graph's passes
SHAPE_DATA_LIMIT = 64  # elements: constant inputs up to this size are shown to shape inference (shapes, pads)


def np_dtype(elem_type: int):
    from onnx import helper
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def io_shape(vi, fixed: Mapping[str, Sequence[int]], path) -> tuple[int, ...]:
    """A graph input's shape: from --input-shape, else the file's, with a dynamic leading (batch) dim as 1."""
    t = vi.type.tensor_type
    if vi.name in fixed:
        shape = tuple(int(d) for d in fixed[vi.name])
        if t.HasField("shape"):
            file_dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
            shown = "(" + ", ".join(str(d) if d is not None else "?" for d in file_dims) + ")"
            if len(shape) != len(file_dims) or any(f is not None and f != d for f, d in zip(file_dims, shape)):
                raise OnnxImportError(f"{path}: --input-shape {vi.name}:{','.join(map(str, shape))!s:.80} does not fit "
                                      f"the model's input {vi.name!r}, of shape {shown!s:.80}; give its rank and "
                                      "change only its dynamic (?) dimensions")
        return _checked_io_shape(vi.name, shape, path)
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
    return _checked_io_shape(vi.name, tuple(dims), path)


def _checked_io_shape(name, shape, path) -> tuple[int, ...]:
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise OnnxImportError(f"{path}: input {name!r} of shape {shape!s:.80} has {_count(n)} elements, more than the "
                              f"{MAX_ELEMENTS} graphopt takes in one tensor; give it a smaller shape (--input-shape "
                              f"{name}:D0,D1,...)")
    return shape


def to_ir(model, opset: int, path: str, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
          state_pairs: Sequence[tuple[str, str]] = (), initial_state: Mapping[str, np.ndarray] | None = None,
          name: str = "model", log=lambda m: None) -> Graph:
    fixed = dict(input_shapes or {})
    initial_state = dict(initial_state or {})
    g = Graph(name)
    ctx = Ctx(g, opset, path)
    env: dict[str, object] = {"": None}  # ONNX name -> Value | np.ndarray (| None: an omitted optional input)
    inits = {t.name: t for t in model.graph.initializer}
    for t in model.graph.initializer:
        env[t.name] = tensor_array(t, path)
        ctx.budget += 2 * env[t.name].size  # the file's own weights may be folded (transposed, dequantised...)
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
        ctx.converted += 1
        if ctx.converted > MAX_NODES:
            ctx.fail(f"the model converts more than {MAX_NODES} nodes (a Loop or Scan body counts once per "
                     "iteration); graphopt takes models of up to that size: shorten the loops")
        if node.domain not in ("", "ai.onnx"):
            ctx.fail(f"operator {node.domain}.{node.op_type} is not a standard ONNX operator; graphopt reads the "
                     "default domain only (export without custom/contrib ops)")
        _check_schema(ctx, node)
        try:
            ins = [env[n] for n in node.input]
        except KeyError as e:
            ctx.fail(f"input {e.args[0]!r} is not computed before this node (the graph is not topologically sorted "
                     "or names a missing value)")
        for name in node.output:
            if name and name in env:
                ctx.fail(f"output {name!r:.80} is already defined (by a graph input, an initializer or another node); "
                         "an ONNX graph defines each name once: re-export the model")
        outs = None
        first_new = len(ctx.g.nodes)
        if node.op_type not in NOT_EVALUATED and all(x is None or isinstance(x, np.ndarray) for x in ins) and \
                sum(int(x.size) for x in ins if x is not None) <= FOLD_LIMIT and _fits(ctx, node, ins):
            outs = _evaluate(ctx, node, ins)
        if outs is None:
            fn = CONVERTERS.get(node.op_type)
            if fn is None:
                ctx.fail(f"operator {node.op_type} is not supported by graphopt's ONNX frontend")
            outs = _convert(ctx, fn, node, ins)
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
        ctx.node, ctx.env = node, env
        made = {id(n) for n in ctx.g.nodes[first_new:]}
        for name, v in zip(node.output, outs):
            if isinstance(v, (Value, np.ndarray)):
                n = ctx.check_size(v.shape, f"its output {name!r:.60}")
                if isinstance(v, np.ndarray) and not any(v is x for x in ins):
                    ctx.count(n)  # a constant computed here (IR values are counted as ctx.op makes them)
            if name:
                env[name] = v
                if isinstance(v, Value) and id(v.producer) in made and v.name not in ctx.names_kept:
                    _keep_name(ctx, v, name, node.name)
    ctx.node = None


def _convert(ctx: Ctx, fn, node, ins):
    """fn(ctx, ins, attrs), where a converter tripping over a malformed node (an IR type check, an index out
    of range...) is an OnnxImportError naming the node, not a traceback."""
    try:
        return fn(ctx, list(ins), attributes(node))
    except OnnxImportError:
        raise
    except RecursionError:
        ctx.node = node
        ctx.fail("its subgraphs nest too deeply for graphopt; flatten the model's control flow")
    except MemoryError:
        ctx.node = node
        ctx.fail("it needs more memory than this machine gives graphopt; the model asks for tensors too large")
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        ctx.node = node
        first = (str(e).strip().splitlines() or [""])[0][:200]
        ctx.fail(f"it does not fit its inputs or attributes ({type(e).__name__}: {first}); the model is not valid "
                 "ONNX (onnx.checker.check_model(model, full_check=True) says where)")


def _check_schema(ctx: Ctx, node) -> None:
    """The node's numbers of inputs and outputs and its attributes' types, against the operator's ONNX schema
    at the model's opset (an operator without one there is left to its converter)."""
    from onnx import defs
    try:
        schema = defs.get_schema(node.op_type, ctx.opset, "")
    except Exception:
        return
    op = f"{node.op_type}-{schema.since_version}"
    for what, n, lo, hi in (("inputs", len(node.input), schema.min_input, schema.max_input),
                            ("outputs", len(node.output), 0, schema.max_output)):  # (an output not named: unused)
        if not lo <= n <= hi:
            takes = str(lo) if lo == hi else f"{lo} or more" if hi >= 1 << 20 else f"{lo} to {hi}"
            ctx.fail(f"it has {n} {what}; {op} takes {takes} (re-export the model, or check it with "
                     "onnx.checker.check_model)")
    given = {a.name: a for a in node.attribute}
    unknown = sorted(set(given) - set(schema.attributes))
    if unknown:
        known = ", ".join(sorted(schema.attributes)) or "none"
        ctx.fail(f"attribute {unknown[0]!r:.60} is not one of {op}'s ({known}); re-export the model, or check it "
                 "with onnx.checker.check_model")
    for name, spec in schema.attributes.items():
        a = given.get(name)
        want = int(spec.type.value)
        if a is None:
            if spec.required:
                ctx.fail(f"it lacks the required attribute {name!r}")
        elif a.type != want:
            ctx.fail(f"attribute {name!r} is {_attr_type(a.type)}; {op} takes {_attr_type(want)} (re-export the "
                     "model, or check it with onnx.checker.check_model)")


def _attr_type(t: int) -> str:
    from onnx import AttributeProto
    try:
        return AttributeProto.AttributeType.Name(t)
    except ValueError:
        return f"type {t}"


def _fits(ctx: Ctx, node, ins) -> bool:
    """Whether the node may be evaluated here: its outputs' sizes as onnx's shape inference gives them
    (constant inputs up to SHAPE_DATA_LIMIT elements shown to it) are checked first; an op that may grow
    its inputs (GROWING) is evaluated only where they are known. Fails where an output is too large."""
    from onnx import helper, numpy_helper, shape_inference
    names = [f"i{k}" if x is not None else "" for k, x in enumerate(ins)]
    outputs = {f"o{k}": o for k, o in enumerate(node.output) if o}
    try:
        n = helper.make_node(node.op_type, names, [f"o{k}" if o else "" for k, o in enumerate(node.output)])
        n.attribute.extend(node.attribute)
        graph_ins, inits = [], []
        for nm, x in zip(names, ins):
            if not nm:
                continue
            if x.size <= SHAPE_DATA_LIMIT and x.dtype.kind in "biuf":
                inits.append(numpy_helper.from_array(x, nm))
            else:
                graph_ins.append(helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape))
        m = helper.make_model(helper.make_graph([n], "fold", graph_ins,
                                                [helper.make_tensor_value_info(o, 0, None) for o in outputs], inits),
                              opset_imports=[helper.make_opsetid("", ctx.opset)])
        inferred = shape_inference.infer_shapes(m, data_prop=True).graph.output
    except Exception:
        return False  # a node onnx cannot type: its converter says what is wrong
    known, total = True, 0
    for vo in inferred:
        t = vo.type.tensor_type
        if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
            known = False
            continue
        total += ctx.check_size([d.dim_value for d in t.shape.dim],
                                f"its output {outputs.get(vo.name, vo.name)!r:.60}")
    if ctx.made + total > ctx.budget:
        ctx.count(total)  # fails, before computing it
    if node.op_type in SLOW:
        return known and sum(int(x.size) for x in ins if x is not None) * total <= SLOW_WORK_LIMIT
    return known or node.op_type not in GROWING


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


def tensor_array(t, path) -> np.ndarray:
    """A TensorProto (an initializer, a Constant's value) as an array; its dims must be non-negative and
    match its data (reader.read checks every tensor of a model so, before any conversion)."""
    from onnx import numpy_helper
    where = f"{path}: " if path else ""
    if any(d < 0 for d in t.dims):
        raise OnnxImportError(f"{where}tensor {t.name!r:.60} has dims {list(t.dims)!s:.80}, a negative one; "
                              "re-export the model")
    from onnx import TensorProto
    if t.data_type not in TensorProto.DataType.values() or t.data_type == TensorProto.UNDEFINED:
        raise OnnxImportError(f"{where}tensor {t.name!r:.60} has element type {t.data_type}, which ONNX does not "
                              "define; re-export the model")
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise OnnxImportError(f"{where}tensor {t.name!r:.60} (dims {list(t.dims)!s:.60}) cannot be read: its data "
                              f"does not match its dims and type ({type(e).__name__}); re-export the model") from None


def attributes(node) -> dict:
    """The node's attributes as Python values (ints, floats, strings, lists, arrays, GraphProtos)."""
    from onnx import AttributeProto
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
            out[a.name] = tensor_array(a.t, "")
        elif t == AttributeProto.GRAPH:
            out[a.name] = a.g
        elif t == AttributeProto.GRAPHS:
            out[a.name] = list(a.graphs)
        else:
            out[a.name] = None
    return out
