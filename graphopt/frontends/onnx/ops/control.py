"""Control-flow ONNX operators (Scan, Loop, If), unrolled the way the JAX frontend unrolls scan/while/cond.

A body (an ONNX GraphProto attribute) is converted once per iteration with `importer.convert_nodes`,
in an environment that sees the enclosing graph's names (a body may read outer values), its own
initializers and its inputs. Values known while importing stay NumPy arrays, so a loop counter and a
condition computed from it fold to constants iteration by iteration:
- Scan: the static scan length; scan inputs sliced along their axes (either direction), scan outputs
  stacked along theirs (a reverse output is prepended);
- Loop: a constant trip count M, or a condition that folds to a constant each iteration (at most
  MAX_ITERATIONS); scan outputs stacked along a new axis 0;
- If: a constant condition inlines its branch; a runtime one computes both branches and selects,
  output by output (the branches' outputs must have equal shapes and dtypes).

The small helpers here (slicing, stacking, ops folded on arrays) are shared with ops/recurrent.py.
"""
from __future__ import annotations

from collections import ChainMap

import numpy as np

from ....ir import get_op
from ..registry import converter

MAX_ITERATIONS = 10_000  # the most iterations a Loop is unrolled to
MAX_UNROLLED_NODES = 2_000_000  # the most body nodes a Loop or Scan may unroll into


# ---- helpers on Values and arrays ---------------------------------------------------------------

def is_array(x) -> bool:
    return isinstance(x, np.ndarray)


def fold_op(ctx, name: str, *ins, **attrs):
    """ctx.op, computed here (by the op's own NumPy semantics) when every input is an array."""
    if all(is_array(x) for x in ins):
        opdef = get_op(name)
        return np.asarray(opdef.compute(*ins, opdef.normalize_attrs(attrs))[0])
    return ctx.op(name, *ins, **attrs)


def reshape(ctx, x, shape):
    shape = tuple(int(d) for d in shape)
    if ctx.shape(x) == shape:
        return x
    if is_array(x):
        return x.reshape(shape)
    return ctx.op("reshape", x, shape=shape)


def slice_axis(ctx, x, axis: int, lo: int, hi: int):
    """x[lo:hi] along axis."""
    shape = ctx.shape(x)
    if lo == 0 and hi == shape[axis]:
        return x
    if is_array(x):
        return x[(slice(None),) * axis + (slice(lo, hi),)]
    starts, limits = [0] * len(shape), list(shape)
    starts[axis], limits[axis] = lo, hi
    return ctx.op("slice", x, starts=tuple(starts), limits=tuple(limits), strides=(1,) * len(shape))


def take(ctx, x, axis: int, i: int):
    """x[i] along axis, the axis removed."""
    shape = ctx.shape(x)
    return reshape(ctx, slice_axis(ctx, x, axis, i, i + 1), shape[:axis] + shape[axis + 1:])


def concat(ctx, xs: list, axis: int):
    if len(xs) == 1:
        return xs[0]
    if all(is_array(x) for x in xs):
        return np.concatenate(xs, axis=axis)
    return ctx.op("concat", *xs, axis=axis)


def stack(ctx, xs: list, axis: int, what: str = "a scan output"):
    """The values stacked along a new axis (they must agree in shape and dtype)."""
    shapes = {ctx.shape(x) for x in xs}
    dtypes = {ctx.dtype(x) for x in xs}
    if len(shapes) != 1 or len(dtypes) != 1:
        ctx.fail(f"{what} changes shape or dtype between iterations ({sorted(shapes)[:3]}, {sorted(dtypes)}); "
                 "graphopt stacks iterations into one static tensor")
    shape = next(iter(shapes))
    if all(is_array(x) for x in xs):
        return np.stack(xs, axis=axis)
    return concat(ctx, [reshape(ctx, x, shape[:axis] + (1,) + shape[axis:]) for x in xs], axis)


def scalar(ctx, x, what: str):
    """The single element of a constant (a trip count, a condition)."""
    a = ctx.const(x, what)
    if a.size != 1:
        ctx.fail(f"{what} has {a.size} elements; it must be a scalar")
    return a.reshape(-1)[0]


# ---- subgraphs -------------------------------------------------------------------------------

def outer_env(ctx):
    """The names in scope where the node being converted stands (set by importer.convert_nodes)."""
    env = getattr(ctx, "env", None)
    if env is None:
        ctx.fail("a subgraph operator converted outside importer.convert_nodes (no enclosing names)")
    return env


def run_subgraph(ctx, graph, outer, inputs: list) -> list:
    """Convert the body `graph` (a GraphProto) into ctx.g once, its inputs bound to `inputs` (Values, arrays
    or None); returns its outputs. `outer` is the enclosing environment (read, never written)."""
    from onnx import numpy_helper

    from ..importer import convert_nodes  # here: the importer imports the ops package
    node = ctx.node
    names = [vi.name for vi in graph.input]
    if len(names) != len(inputs):
        ctx.fail(f"the subgraph {graph.name!r} takes {len(names)} inputs, the operator gives it {len(inputs)}")
    local: dict = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    if len(graph.sparse_initializer):
        ctx.fail(f"the subgraph {graph.name!r} has sparse initializers, which graphopt does not read; store them "
                 "as dense initializers")
    local.update(zip(names, inputs))
    env = ChainMap(local, outer)  # the body's names shadow nothing outside (ONNX names are unique in scope)
    convert_nodes(ctx, graph.node, env)
    ctx.node = node
    outs = []
    for vo in graph.output:
        if vo.name not in env:
            ctx.node = node
            ctx.fail(f"the subgraph {graph.name!r} output {vo.name!r} is computed by no node")
        outs.append(env[vo.name])
    return outs


def _body_attr(ctx, attrs, name):
    g = attrs.get(name)
    if g is None:
        ctx.fail(f"attribute {name!r} (a graph) is missing")
    return g


def _check_unroll(ctx, trips: int, body, what: str):
    if trips * max(1, len(body.node)) > MAX_UNROLLED_NODES:
        ctx.fail(f"{what} of {trips} iterations over a body of {len(body.node)} nodes: graphopt unrolls loops, up "
                 f"to {MAX_UNROLLED_NODES} nodes in all; shorten the loop or export it unrolled")


# ---- If ----------------------------------------------------------------------------------------

@converter("If")
def if_(ctx, ins, attrs):
    outer, node = outer_env(ctx), ctx.node
    then_g, else_g = _body_attr(ctx, attrs, "then_branch"), _body_attr(ctx, attrs, "else_branch")
    cond = ins[0]
    if not ctx.is_const(cond) and cond is not None:
        return _select_branches(ctx, cond, then_g, else_g, outer, node)
    return run_subgraph(ctx, then_g if bool(scalar(ctx, cond, "If's condition")) else else_g, outer, [])


def _select_branches(ctx, cond, then_g, else_g, outer, node):
    if cond.dtype != "bool" or int(np.prod(cond.shape)) != 1:
        ctx.fail(f"If's condition is {cond.type}; it must be a single bool")
    c = reshape(ctx, cond, ())
    a = run_subgraph(ctx, then_g, outer, [])
    b = run_subgraph(ctx, else_g, outer, [])
    if len(a) != len(b):
        ctx.fail(f"If's branches give {len(a)} and {len(b)} outputs")
    outs = []
    for k, (x, y) in enumerate(zip(a, b)):
        if x is y:
            outs.append(x)
            continue
        if x is None or y is None:
            ctx.fail(f"If's output {k} is missing in one branch")
        if ctx.shape(x) != ctx.shape(y) or ctx.dtype(x) != ctx.dtype(y):
            ctx.fail(f"If with a condition computed at runtime whose branches give output {k} different shapes or "
                     f"dtypes ({ctx.shape(x)} {ctx.dtype(x)} vs {ctx.shape(y)} {ctx.dtype(y)}): graphopt computes "
                     "both branches and selects elementwise, which needs equal shapes and dtypes; make the branches "
                     "agree, or make the condition a constant")
        if is_array(x) and is_array(y) and np.array_equal(x, y):
            outs.append(x)
            continue
        outs.append(ctx.op("select", c, x, y))
    return outs


# ---- Loop --------------------------------------------------------------------------------------

@converter("Loop")
def loop(ctx, ins, attrs):
    outer, node = outer_env(ctx), ctx.node
    body = _body_attr(ctx, attrs, "body")
    m = ins[0] if len(ins) > 0 else None
    cond = ins[1] if len(ins) > 1 else None
    carried = list(ins[2:])
    trips = None
    if m is not None:
        if not ctx.is_const(m):
            ctx.fail("Loop's trip count M is computed at runtime; graphopt unrolls loops, so M must be a constant "
                     "(computed from initializers and shapes) or the condition must fold to constants")
        trips = int(scalar(ctx, m, "Loop's trip count M"))
    go = True
    if cond is not None:
        if not ctx.is_const(cond):
            ctx.fail("Loop's initial condition is computed at runtime; graphopt unrolls loops whose trip count is "
                     "static: give a constant trip count M and condition")
        go = bool(scalar(ctx, cond, "Loop's condition"))
    n_carried = len(carried)
    n_scan = len(body.output) - 1 - n_carried
    if n_scan < 0 or len(body.input) != 2 + n_carried:
        ctx.fail(f"Loop's body takes {len(body.input)} inputs and gives {len(body.output)} outputs for "
                 f"{n_carried} loop-carried values")
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while go and (trips is None or i < trips):
        if i == MAX_ITERATIONS:
            ctx.node = node
            ctx.fail(f"Loop still running after {MAX_ITERATIONS} iterations; graphopt unrolls at most "
                     f"{MAX_ITERATIONS} (give a smaller constant trip count)")
        _check_unroll(ctx, i + 1, body, "Loop")
        outs = run_subgraph(ctx, body, outer, [np.array(i, np.int64), np.array(go)] + carried)
        c = outs[0]
        if c is not None and not ctx.is_const(c):
            ctx.fail("Loop's condition depends on runtime values, so its trip count is not static; graphopt "
                     "unrolls loops whose condition folds to a constant each iteration (a counter compared with a "
                     "constant), or a constant trip count with an always-true condition")
        if c is not None:
            go = bool(scalar(ctx, c, "Loop's condition output"))
        carried = outs[1:1 + n_carried]
        for j, s in enumerate(outs[1 + n_carried:]):
            scans[j].append(s)
        i += 1
    ctx.node = node
    return carried + [_stacked(ctx, s, body.output[1 + n_carried + j], 0, "Loop") for j, s in enumerate(scans)]


def _stacked(ctx, items: list, vo, axis: int, op: str):
    if items:
        return stack(ctx, items, axis, f"{op}'s scan output {vo.name!r}")
    # no iteration: an empty tensor, where the body declares the output's shape
    from ..importer import np_dtype
    t = vo.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim] if t.HasField("shape") else None
    dtype = np_dtype(t.elem_type)
    if dims is None or -1 in dims or dtype is None:
        ctx.fail(f"{op} runs no iteration, and the body does not declare the static shape of its scan output "
                 f"{vo.name!r}")
    dims.insert(axis, 0)
    return np.zeros(dims, dtype)


# ---- Scan --------------------------------------------------------------------------------------

@converter("Scan")
def scan(ctx, ins, attrs):
    outer, node = outer_env(ctx), ctx.node
    body = _body_attr(ctx, attrs, "body")
    m = int(attrs.get("num_scan_inputs", 0))
    n = len(ins) - m
    if m < 1 or n < 0:
        ctx.fail(f"Scan's num_scan_inputs {m} does not fit its {len(ins)} inputs")
    states, xs = list(ins[:n]), list(ins[n:])
    k = len(body.output) - n
    if k < 0 or len(body.input) != n + m:
        ctx.fail(f"Scan's body takes {len(body.input)} inputs and gives {len(body.output)} outputs for {n} "
                 f"states and {m} scan inputs")
    in_axes = list(attrs.get("scan_input_axes", [0] * m))
    in_dirs = list(attrs.get("scan_input_directions", [0] * m))
    out_axes = list(attrs.get("scan_output_axes", [0] * k))
    out_dirs = list(attrs.get("scan_output_directions", [0] * k))
    if len(in_axes) != m or len(in_dirs) != m or len(out_axes) != k or len(out_dirs) != k:
        ctx.fail("Scan's scan_input_axes/directions or scan_output_axes/directions do not match its inputs/outputs")
    lengths = set()
    for j, x in enumerate(xs):
        if x is None:
            ctx.fail(f"Scan's scan input {j} is missing")
        rank = len(ctx.shape(x))
        a = in_axes[j] + rank if in_axes[j] < 0 else in_axes[j]
        if not 0 <= a < rank:
            ctx.fail(f"Scan's scan_input_axes[{j}] = {in_axes[j]} is out of range for rank {rank}")
        in_axes[j] = a
        lengths.add(ctx.shape(x)[a])
    if len(lengths) != 1:
        ctx.fail(f"Scan's scan inputs have different lengths {sorted(lengths)} along their scan axes")
    length = lengths.pop()
    _check_unroll(ctx, length, body, "Scan")
    ys: list[list] = [[] for _ in range(k)]
    for t in range(length):
        x_t = [take(ctx, x, a, length - 1 - t if d else t) for x, a, d in zip(xs, in_axes, in_dirs)]
        outs = run_subgraph(ctx, body, outer, states + x_t)
        states = outs[:n]
        for j, y in enumerate(outs[n:]):
            ys[j].append(y)
    ctx.node = node
    stacked = []
    for j in range(k):
        items = ys[j][::-1] if out_dirs[j] else ys[j]
        rank = len(ctx.shape(items[0])) + 1 if items else None
        a = out_axes[j]
        if a < 0:
            if rank is None:
                ctx.fail("Scan runs no iteration and has a negative scan_output_axes")
            a += rank
        if rank is not None and not 0 <= a < rank:
            ctx.fail(f"Scan's scan_output_axes[{j}] = {out_axes[j]} is out of range for rank {rank}")
        stacked.append(_stacked(ctx, items, body.output[n + j], a, "Scan"))
    return states + stacked
