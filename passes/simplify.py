"""Exact local simplifications as rewrite rules: reshape/transpose/broadcast chains, identities,
broadcasts absorbed into elementwise ops, x*1, x+0, selects with a constant condition, ops over
concats split where a piece folds, flattened concats of reshapes."""
from __future__ import annotations

import numpy as np

from graphopt.ir import OPS, Graph, Value, is_float

from .rewrite import C, P, Rule, X
from .shapes import aligned, aligned_shape

# elementwise ops with more than one input broadcast implicitly, so explicit broadcasts can go
ELEMENTWISE = tuple(sorted(n for n, op in OPS.items() if op.elementwise and op.arity != 1))


def _const_equals(value: float):
    return lambda v: v.is_param and bool(np.all(v.const == value))


def _reshape_to(g: Graph, x: Value, shape) -> Value:
    return x if x.shape == tuple(shape) else g.op("reshape", x, shape=tuple(shape))


def _reshape_chain(g, b):
    return _reshape_to(g, b["x"], b["_node"].outputs[0].shape)


def _identity(g, b):
    return b["x"] if b["x"].type == b["_node"].outputs[0].type else None


def _transpose_chain(g, b):
    inner, outer = b["t"].producer.attrs["perm"], b["_node"].attrs["perm"]
    perm = tuple(inner[p] for p in outer)
    if perm == tuple(range(len(perm))):
        return b["x"]
    return g.op("transpose", b["x"], perm=perm)


def _identity_transpose(g, b):
    perm = b["_node"].attrs["perm"]
    return b["x"] if perm == tuple(range(len(perm))) else None


def _identity_slice(g, b):
    a = b["_node"].attrs
    full = all(s == 0 and l == d and st == 1 for s, l, st, d in zip(a["starts"], a["limits"], a["strides"],
                                                                     b["x"].shape))
    return b["x"] if full else None


def _identity_broadcast(g, b):
    node = b["_node"]
    return b["x"] if node.attrs["shape"] == b["x"].shape and node.attrs["dims"] == tuple(range(len(b["x"].shape))) \
        else None


def _broadcast_as_reshape(g, b):
    """A broadcast that only inserts unit dimensions (keeping the order of the others) is a reshape."""
    node, x = b["_node"], b["x"]
    out = node.outputs[0]
    dims = node.attrs["dims"]
    if out.type.size != x.type.size or list(dims) != sorted(dims) or out.shape == x.shape:
        return None
    return g.op("reshape", x, shape=out.shape)


MAX_RANK = 8  # the most dimensions a tensor may have in every runtime graphopt targets (TensorRT's limit)


def _broadcast_without_unit_dims(g, b):
    """A broadcast to a rank above MAX_RANK whose output has unit dimensions: broadcast without them and
    reshape (the reshape usually folds into the consumer's): reshape(broadcast(squeeze(x)))."""
    node, x = b["_node"], b["x"]
    shape, dims = node.attrs["shape"], node.attrs["dims"]
    keep = [k for k, d in enumerate(shape) if d != 1]
    if len(shape) <= MAX_RANK or len(keep) == len(shape):
        return None
    where = {k: i for i, k in enumerate(keep)}
    xs = [j for j, d in enumerate(x.shape) if d != 1]
    squeezed = _reshape_to(g, x, tuple(x.shape[j] for j in xs))
    y = g.op("broadcast", squeezed, shape=tuple(shape[k] for k in keep), dims=tuple(where[dims[j]] for j in xs))
    return g.op("reshape", y, shape=shape)


def _implicit_shape(v: Value) -> tuple[int, ...] | None:
    """For v = broadcast(x) or a reshape of x that only prepends unit dims: x's shape aligned to v's rank."""
    node = v.producer
    if node is None:
        return None
    x = node.inputs[0]
    if node.op == "broadcast":
        expanded = [1] * len(node.attrs["shape"])
        for j, d in enumerate(node.attrs["dims"]):
            expanded[d] = x.shape[j]
        return tuple(expanded)
    if node.op == "reshape" and len(v.shape) > len(x.shape) and v.shape == (1,) * (len(v.shape) - len(x.shape)) + x.shape:
        return v.shape
    return None


def _absorb_broadcasts(g, b):
    """elementwise(broadcast(x), y) -> elementwise(x', y) when implicit broadcasting gives the same shape
    (x' is x, or x reshaped with unit dims where the broadcast adds them in the middle)."""
    node = b["_node"]
    out_shape = node.outputs[0].shape
    inputs, changed = list(node.inputs), False
    for i, v in enumerate(node.inputs):
        expanded = _implicit_shape(v)
        if expanded is None:
            continue
        x = v.producer.inputs[0]
        trial = [w.shape for w in inputs]
        trial[i] = x.shape if tuple(expanded[len(expanded) - len(x.shape):]) == x.shape else tuple(expanded)
        if np.broadcast_shapes(*trial) == out_shape and trial[i] != v.shape:
            inputs[i] = _reshape_to(g, x, trial[i])
            changed = True
    if not changed:
        return None
    return g.add_node(node.op, inputs, **node.attrs).outputs[0]


# casts that lose nothing: the round trip back is the identity
LOSSLESS = {("float16", "float32"), ("float16", "float64"), ("float32", "float64"), ("int32", "int64"),
            ("int32", "float64"), ("bool", "int32"), ("bool", "int64")}


def _lossless_roundtrip(g, b):
    """cast(cast(x, wider), back) -> x when the inner cast is lossless."""
    x, inner = b["x"], b["inner"]
    out = b["_node"].outputs[0]
    return x if out.type == x.type and (x.dtype, inner.dtype) in LOSSLESS else None


def _keep_if_same_type(x_key: str):
    def fn(g, b):
        x, out = b[x_key], b["_node"].outputs[0]
        return x if x.type == out.type else None
    return fn


def _is_identity(v: Value, op: str, right: bool) -> bool:
    """v is a constant that op leaves the other operand alone with (x+0, 0+x, x-0, x*1, 1*x, x/1)."""
    if not v.is_param:
        return False
    if op in ("add",) or (op == "sub" and right):
        return bool(np.all(v.const == 0))
    if op == "mul" or (op == "div" and right):
        return bool(np.all(v.const == 1))
    return False


def _distribute_over_concat(g, b):
    """op(concat(a1, a2), concat(b1, b2)) -> concat(op(a1, b1), op(a2, b2)), and op(concat(a1, a2), c) with c
    constant or broadcast along the concat axis, where a piece then folds away (a skip term D * [x, 0]
    added to an [real, imag] pair only touches the real part)."""
    node = b["_node"]
    out = node.outputs[0]
    if len(node.inputs) != 2 or not is_float(out.dtype):
        return None
    cat = next((v for v in node.inputs if v.producer is not None and v.producer.op == "concat" and v.shape == out.shape),
               None)
    if cat is None:
        return None
    axis = cat.producer.attrs["axis"]
    sizes = [p.shape[axis] for p in cat.producer.inputs]
    bounds = np.cumsum([0] + sizes)
    rank = len(out.shape)
    per_operand = []
    for v in node.inputs:
        p = v.producer
        if p is not None and p.op == "concat" and v.shape == out.shape and p.attrs["axis"] == axis \
                and [x.shape[axis] for x in p.inputs] == sizes:
            if b["_uses"].get(id(v), 0) != 1:
                return None
            per_operand.append(list(p.inputs))
        elif v.is_param and (len(v.shape) <= rank):
            c = aligned(v.const, rank)
            if c.shape[axis] == 1:
                per_operand.append([v] * len(sizes))
            else:
                per_operand.append([g.add_param(np.asarray(np.take(c, range(lo, hi), axis=axis), order="C"))
                                    for lo, hi in zip(bounds[:-1], bounds[1:])])
        elif len(v.shape) <= rank and aligned_shape(v.shape, rank)[axis] == 1:
            per_operand.append([v] * len(sizes))
        else:
            return None
    plan = []  # per piece: ("const", array) | ("keep", value) | ("op", x, y); decided before any node is made
    for i, (x, y) in enumerate(zip(*per_operand)):
        want = tuple(sizes[i] if k == axis else d for k, d in enumerate(out.shape))
        if x.is_param and y.is_param:
            r = OPS[node.op].compute(x.const, y.const, node.attrs)[0]
            plan.append(("const", np.asarray(np.broadcast_to(np.asarray(r, out.dtype), want), order="C")))
        elif _is_identity(y, node.op, right=True) and x.shape == want:
            plan.append(("keep", x))
        elif _is_identity(x, node.op, right=False) and y.shape == want:
            plan.append(("keep", y))
        elif np.broadcast_shapes(x.shape, y.shape) == want:
            plan.append(("op", x, y))
        else:
            return None
    if all(p[0] == "op" for p in plan):
        return None  # nothing folds: splitting the op only adds nodes
    pieces = [g.add_param(p[1]) if p[0] == "const" else p[1] if p[0] == "keep" else g.op(node.op, p[1], p[2])
              for p in plan]
    return g.op("concat", *pieces, axis=axis)


def _concat_of_reshapes(g: Graph, b):
    """reshape(concat(reshape(x1), reshape(x2), ..)) -> reshape(concat(x1, x2, ..)).

    Each piece of a concat along axis k fills, for each index of the axes before k, one contiguous
    block of the flat result. The pieces x_i before their reshapes lay out the same blocks when they
    are concatenated along an axis k' with the same product of the axes before it and the same
    block size per piece; the flat result is then identical, and the outer reshape (which alone
    reads the concat) does not care about its shape. A reshape read elsewhere stays."""
    cat = b["cat"]
    node = cat.producer
    if b["_uses"].get(id(cat), 0) != 1:
        return None
    k = node.attrs["axis"]
    prefix = int(np.prod(cat.shape[:k], dtype=np.int64))
    pieces = [v.producer.inputs[0] if v.producer is not None and v.producer.op == "reshape" else v
              for v in node.inputs]
    if all(x is v for x, v in zip(pieces, node.inputs)):
        return None
    if not any(x is not v and b["_uses"].get(id(v), 0) == 1 for x, v in zip(pieces, node.inputs)):
        return None  # no reshape would go
    rank = len(pieces[0].shape)
    blocks = [int(np.prod(v.shape[k:], dtype=np.int64)) for v in node.inputs]
    for axis in range(rank):
        if any(len(x.shape) != rank or int(np.prod(x.shape[:axis], dtype=np.int64)) != prefix
               or int(np.prod(x.shape[axis:], dtype=np.int64)) != blk
               or x.shape[:axis] + x.shape[axis + 1:] != pieces[0].shape[:axis] + pieces[0].shape[axis + 1:]
               for x, blk in zip(pieces, blocks)):
            continue
        if axis == k and all(x.shape == v.shape for x, v in zip(pieces, node.inputs)):
            return None
        return _reshape_to(g, g.op("concat", *pieces, axis=axis), b["_node"].outputs[0].shape)
    return None


RULES = [
    Rule("reshape-of-reshape", P("reshape", P("reshape", X("x"))), _reshape_chain),
    Rule("identity-reshape", P("reshape", X("x")), _identity),
    Rule("transpose-of-transpose", P("transpose", P("transpose", X("x"), name="t")), _transpose_chain),
    Rule("identity-transpose", P("transpose", X("x")), _identity_transpose),
    Rule("identity-slice", P("slice", X("x")), _identity_slice),
    Rule("identity-broadcast", P("broadcast", X("x")), _identity_broadcast),
    Rule("broadcast-as-reshape", P("broadcast", X("x")), _broadcast_as_reshape),
    Rule("broadcast-without-unit-dims", P("broadcast", X("x")), _broadcast_without_unit_dims),
    Rule("identity-cast", P("cast", X("x")), _identity),
    Rule("lossless-cast-roundtrip", P("cast", P("cast", X("x"), name="inner")), _lossless_roundtrip),
    Rule("absorb-broadcast", P(ELEMENTWISE), _absorb_broadcasts),
    Rule("mul-by-one", P("mul", X("x"), C(where=_const_equals(1)), commute=True), _keep_if_same_type("x")),
    Rule("add-zero", P("add", X("x"), C(where=_const_equals(0)), commute=True), _keep_if_same_type("x")),
    Rule("sub-zero", P("sub", X("x"), C(where=_const_equals(0))), _keep_if_same_type("x")),
    Rule("select-constant", P("select", C("c", where=_const_equals(True)), X("x"), X()), _keep_if_same_type("x")),
    Rule("select-constant", P("select", C("c", where=_const_equals(False)), X(), X("x")), _keep_if_same_type("x")),
    Rule("div-by-one", P("div", X("x"), C(where=_const_equals(1))), _keep_if_same_type("x")),
    Rule("distribute-over-concat", P(("add", "sub", "mul", "div")), _distribute_over_concat),
    Rule("concat-of-reshapes", P("reshape", P("concat", name="cat")), _concat_of_reshapes),
]
