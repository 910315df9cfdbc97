"""Layout rewrites: transposes sunk through elementwise ops and pools, absorbed by dots and reductions
or cancelled; per-channel scales and biases folded into convolutions.

Traced NHWC models put a transpose on each side of every (channels-first) conv. Sinking the
transpose after a conv through its bias add and activation brings conv, bias and clamp together
(one fused kernel in most runtimes) and lets the next dot or reduction absorb the transpose.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import OPS, Graph, Value

from . import algebra
from .algebra import _single_use, _unit_reshape_keeps_last
from .shapes import aligned, regrouped, relaid, unit_reshape
from .cleanup import dce
from .rewrite import C, P, Reject, Rule, X

ELEMENTWISE = tuple(sorted(n for n, op in OPS.items() if op.elementwise))


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _transpose_as_reshape(g: Graph, b):
    """A transpose that keeps the order of the non-unit dimensions only moves unit dimensions."""
    x, perm = b["x"], b["_node"].attrs["perm"]
    if not _moves_unit_dims_only(x.shape, perm) or perm == tuple(range(len(perm))):
        return None
    return g.op("reshape", x, shape=b["_node"].outputs[0].shape)


def _sink_transpose(g: Graph, b):
    """op(transpose(a, p), c, ...) -> transpose(op(a, c'), p) for constants, size-1 values and like transposes."""
    node = b["_node"]
    out = node.outputs[0]
    rank = len(out.shape)
    perm = None
    for v in node.inputs:
        if v.producer is not None and v.producer.op == "transpose" and v.shape == out.shape:
            perm = v.producer.attrs["perm"]
            break
    if perm is None:
        return None
    inv = _inverse(perm)
    inputs = []
    for v in node.inputs:
        t = v.producer
        if t is not None and t.op == "transpose" and t.attrs["perm"] == perm:
            if not _single_use(b, v):
                return None
            inputs.append(t.inputs[0])
        elif v.type.size == 1 and len(v.shape) <= rank:
            inputs.append(v)
        elif v.is_param and len(v.shape) <= rank:
            inputs.append(g.add_param(np.asarray(np.transpose(aligned(v.const, rank), inv), order="C")))
        else:
            return None
    y = g.add_node(node.op, inputs, **node.attrs).outputs[0]
    return g.op("transpose", y, perm=perm)


def _moves_unit_dims_only(shape, perm) -> bool:
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _transpose_of_concat(g: Graph, b):
    """transpose(concat(xs)) -> concat(transpose(x) ...) when each transpose folds (constant) or only moves
    unit dimensions (a reshape)."""
    node, cat = b["_node"], b["cat"]
    perm = node.attrs["perm"]
    parts = cat.producer.inputs
    if not _single_use(b, cat) or not all(x.is_param or _moves_unit_dims_only(x.shape, perm) for x in parts):
        return None
    moved = [g.add_param(np.asarray(np.transpose(x.const, perm), order="C")) if x.is_param
             else g.op("reshape", x, shape=tuple(x.shape[p] for p in perm)) for x in parts]
    return g.op("concat", *moved, axis=_inverse(perm)[cat.producer.attrs["axis"]])


def _absorb_into_dot(g: Graph, b):
    """dot(transpose(a, p), W) -> dot(a, W) when the output keeps its dimension order."""
    node, t = b["_node"], b["t"]
    a = node.attrs
    if a["lhs_batch"] or not _single_use(b, t):
        return None
    perm = t.producer.attrs["perm"]
    free = [perm[i] for i in range(len(perm)) if i not in a["lhs_contract"]]
    if free != sorted(free):
        return None
    attrs = dict(a, lhs_contract=tuple(perm[i] for i in a["lhs_contract"]))
    last = (len(perm) - 1,)
    if a["lhs_contract"] == last and attrs["lhs_contract"] != last:
        return None  # a matmul would become a general contraction, which runtimes do slowly
    return g.op("dot", t.producer.inputs[0], node.inputs[1], **attrs)


def _dot_as_conv1x1(g: Graph, b):
    """dot(transpose(x[N,C,*S], channels-last), W[C,O]) -> transpose(conv1x1(x, W^T)): the matmul over
    channels of a channels-first tensor stays channels-first, next to the conv that made it."""
    node, t = b["_node"], b["t"]
    x = t.producer.inputs[0]
    rank = len(x.shape)
    perm = (0,) + tuple(range(2, rank)) + (1,)
    a = node.attrs
    if rank < 3 or t.producer.attrs["perm"] != perm or not _single_use(b, t) or a["lhs_batch"] \
            or a["lhs_contract"] != (rank - 1,) or a["rhs_contract"] != (0,) or node.inputs[1].const.ndim != 2:
        return None
    W = node.inputs[1].const
    kernel = np.asarray(W.T.reshape(W.shape[1], W.shape[0], *([1] * (rank - 2))), order="C")
    y = g.op("conv", x, g.add_param(kernel), strides=(1,) * (rank - 2), pads=((0, 0),) * (rank - 2),
             dilations=(1,) * (rank - 2), groups=1)
    return g.op("transpose", y, perm=perm)


def _dot_of_unit_reshape(g: Graph, b):
    """dot(reshape(x), W) -> reshape(dot(x, W)) when the reshape only inserts or removes unit dimensions
    before x's contracted last axis: the reshape moves past the dot, next to the layout ops around it."""
    node, r = b["_node"], b["r"]
    x = r.producer.inputs[0]
    a = node.attrs
    if not _single_use(b, r) or not _unit_reshape_keeps_last(r, x) or a["lhs_batch"] \
            or a["lhs_contract"] != (len(r.shape) - 1,) or len(x.shape) < 1:
        return None
    y = g.op("dot", x, node.inputs[1], **dict(a, lhs_contract=(len(x.shape) - 1,)))
    return g.op("reshape", y, shape=node.outputs[0].shape)


def _absorb_into_reduce(g: Graph, b):
    """reduce(transpose(a, p), axes) -> reduce(a, p[axes]) when the kept dimensions stay in order."""
    node, t = b["_node"], b["t"]
    if not _single_use(b, t):
        return None
    perm = t.producer.attrs["perm"]
    kept = [perm[i] for i in range(len(perm)) if i not in node.attrs["axes"]]
    if kept != sorted(kept):
        return None
    return g.op(node.op, t.producer.inputs[0], axes=tuple(sorted(perm[i] for i in node.attrs["axes"])))


def _reduce_of_unit_reshape(g: Graph, b):
    """reduce(reshape(x), axes) -> reshape(reduce(x, axes')) when the reshape only inserts or removes unit
    dimensions: the reduction moves next to x (and to a transpose before it, which it can then absorb)."""
    node, r = b["_node"], b["r"]
    x = r.producer.inputs[0]
    if not unit_reshape(x.shape, r.shape) or not _single_use(b, r):
        return None
    big_r = [i for i, d in enumerate(r.shape) if d != 1]
    big_x = [i for i, d in enumerate(x.shape) if d != 1]
    axes = tuple(sorted(big_x[big_r.index(a)] for a in node.attrs["axes"] if r.shape[a] != 1))
    if not axes:
        return None
    y = g.op(node.op, x, axes=axes)
    return g.op("reshape", y, shape=node.outputs[0].shape) if y.shape != node.outputs[0].shape else y


def _channel_vector(c: np.ndarray, out: Value) -> np.ndarray | None:
    """A constant that broadcasts along a channels-first value's channel axis only, as a vector [C]."""
    ca = aligned(c, len(out.shape))
    if ca.ndim != len(out.shape) or any(d != 1 for i, d in enumerate(ca.shape) if i != 1):
        return None
    return np.broadcast_to(ca.reshape(-1), (out.shape[1],)).astype(out.dtype)


def _conv_scale(g: Graph, b):
    """mul(conv(x, W, b), s) with s constant per output channel -> conv(x, W*s, b*s) (batch norm after a conv)."""
    conv, s = b["conv"], b["s"]
    cn = conv.producer
    vec = _channel_vector(s.const, conv)
    if vec is None or not _single_use(b, conv) or not cn.inputs[1].is_param \
            or (len(cn.inputs) == 3 and not cn.inputs[2].is_param) or b["_node"].outputs[0].type != conv.type:
        return None
    w = cn.inputs[1].const
    inputs = [cn.inputs[0], g.add_param((w * vec.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype))]
    if len(cn.inputs) == 3:
        inputs.append(g.add_param((cn.inputs[2].const * vec).astype(conv.dtype)))
    return g.add_node("conv", inputs, **cn.attrs).outputs[0]


def _conv_input_scale(g: Graph, b):
    """conv(x * s, W) with s constant per input channel -> conv(x, W * s): zero padding stays zero. Another
    reader of x * s keeps the product."""
    node, scaled, s = b["_node"], b["scaled"], b["s"]
    x = b["x"]
    w = node.inputs[1]
    vec = _channel_vector(s.const, scaled)
    if vec is None:
        return Reject("the scale is not one value per input channel")
    if x.shape != scaled.shape:
        return Reject("the scale broadcasts x to a larger shape")
    kernel = (w.const * vec.reshape((1, -1) + (1,) * (w.const.ndim - 2))).astype(w.dtype)
    return g.add_node("conv", [x, g.add_param(kernel)] + node.inputs[2:], **node.attrs).outputs[0]


def _pool_of_transpose(g: Graph, b):
    """pool(transpose(a, p)) -> transpose(pool(a), p): the window moves with the axes, so the transpose
    can sink on to meet its inverse (a channels-last pool between two channels-first convs)."""
    node, t = b["_node"], b["t"]
    if not _single_use(b, t):
        return None
    perm = t.producer.attrs["perm"]
    inv = _inverse(perm)
    a = node.attrs
    moved = {k: tuple(a[k][inv[i]] for i in range(len(perm))) for k in ("window", "strides", "pads")}
    y = g.op("pool", t.producer.inputs[0], mode=a["mode"], **moved)
    return g.op("transpose", y, perm=perm)


def _conv_bias(g: Graph, b):
    """add(conv(x, W), b) with b constant per output channel -> conv(x, W, b)."""
    conv, bias = b["conv"], b["b"]
    cn = conv.producer
    if not _single_use(b, conv):
        return None
    ba = aligned(bias.const, len(conv.shape))
    cout = conv.shape[1]
    if ba.ndim != len(conv.shape) or any(d != 1 for i, d in enumerate(ba.shape) if i != 1):
        return None
    vec = np.broadcast_to(ba.reshape(-1), (cout,)).astype(conv.dtype)
    if len(cn.inputs) == 3:
        if not cn.inputs[2].is_param:
            return None
        vec = (cn.inputs[2].const + vec).astype(conv.dtype)
    return g.add_node("conv", [cn.inputs[0], cn.inputs[1], g.add_param(vec)], **cn.attrs).outputs[0]


RULES = [
    Rule("transpose-as-reshape", P("transpose", X("x")), _transpose_as_reshape),
    Rule("sink-transpose", P(ELEMENTWISE), _sink_transpose),
    Rule("transpose-of-concat", P("transpose", P("concat", name="cat")), _transpose_of_concat),
    Rule("dot-of-unit-reshape", P("dot", P("reshape", X(), name="r"), C()), _dot_of_unit_reshape),
    Rule("dot-as-conv1x1", P("dot", P("transpose", X(), name="t"), C()), _dot_as_conv1x1),
    Rule("transpose-into-dot", P("dot", P("transpose", X(), name="t"), X()), _absorb_into_dot),
    Rule("reduce-of-unit-reshape", P(("reduce_sum", "reduce_max", "reduce_min"), P("reshape", X(), name="r")),
         _reduce_of_unit_reshape),
    Rule("transpose-into-reduce", P(("reduce_sum", "reduce_max", "reduce_min"), P("transpose", X(), name="t")),
         _absorb_into_reduce),
    Rule("conv-bias", P("add", P("conv", name="conv"), C("b"), commute=True), _conv_bias),
    # algebra rules whose chances come once the layout rules have put convs next to their inputs: a projection
    # made a conv, and a normalisation's scale moved on to the convs that read it
    *[r for r in algebra.RULES if r.name in ("conv-of-conv", "scale-out-of-add", "dot-output-scale")],
    Rule("conv-scale", P("mul", P("conv", name="conv"), C("s"), commute=True), _conv_scale),
    Rule("conv-input-scale", P("conv", P("mul", X("x"), C("s"), commute=True, name="scaled"), C(), more=C(),
                               attrs={"groups": 1, "lhs_dilations": algebra._ones}), _conv_input_scale),
    Rule("pool-of-transpose", P("pool", P("transpose", X(), name="t")), _pool_of_transpose),
]


def _clone_region(graph: Graph, nodes: list, operand) -> dict[int, Value]:
    """Copy region nodes (in topological order) reading each other's copies; an input from outside the
    region becomes operand(input). Returns id(old output) -> new output."""
    new: dict[int, Value] = {}
    for n in nodes:
        ins = [new[id(x)] if id(x) in new else operand(x) for x in n.inputs]
        new[id(n.outputs[0])] = graph.add_node(n.op, ins, **n.attrs).outputs[0]
    return new


def connected(starts: list, shape: tuple, users) -> list:
    """The elementwise nodes with outputs of `shape` connected to the start nodes through values of that
    shape (readers and producers both ways)."""
    seen, todo, nodes = set(), list(starts), []
    while todo:
        n = todo.pop()
        if n is None or id(n) in seen or n.op not in ELEMENTWISE or n.outputs[0].shape != shape:
            continue
        seen.add(id(n))
        nodes.append(n)
        todo += [x.producer for x in n.inputs if x.shape == shape]
        todo += users.get(id(n.outputs[0]), [])
    return nodes


# ---- whole-region sinking ----------------------------------------------------------------------------------


def _needs_relaying(x: Value) -> bool:
    """A region operand that is computed (not a constant, not size 1, not a transpose that dies)."""
    return not x.is_param and x.type.size > 1 and (x.producer is None or x.producer.op != "transpose")


def _region_operand_ok(v: Value, perm, region: set[int]) -> bool:
    t = v.producer
    return (id(v) in region or v.is_param or v.type.size == 1
            or (t is not None and t.op == "transpose" and t.attrs["perm"] == perm)
            or _relaid_broadcast(v.shape, perm) is not None)


def _relaid_broadcast(shape: tuple, perm) -> tuple | None:
    """For a computed operand that broadcasts against a value transposed by perm (a per-channel vector):
    its shape against the untransposed value, where that only moves its unit dimensions (a reshape)."""
    rank = len(perm)
    if len(shape) > rank:
        return None
    aligned = (1,) * (rank - len(shape)) + tuple(shape)
    inv = _inverse(perm)
    if not _moves_unit_dims_only(aligned, inv):
        return None
    return tuple(aligned[i] for i in inv)


def _grow_region(graph: Graph, t_out: Value, users) -> list:
    """The elementwise nodes of t_out's shape connected to t_out's readers (through readers and producers)
    whose every operand is in the region, a transpose with t_out's perm, a constant, a size-1 value or
    a per-channel value a reshape re-lays (topological order).

    The connected set is grown both ways first, then nodes with an operand that cannot be moved are
    dropped until none is left, so a region fed by several transposes (a running mean whose state and
    input are both transposed) is found from any one of them."""
    perm = t_out.producer.attrs["perm"]
    candidates = {id(n): n for n in connected(users.get(id(t_out), []), t_out.shape, users)}
    while True:
        region = {id(n.outputs[0]) for n in candidates.values()}
        bad = [k for k, n in candidates.items() if not all(_region_operand_ok(x, perm, region) for x in n.inputs)]
        if not bad:
            break
        for k in bad:
            del candidates[k]
    # keep the part connected to t_out's readers
    keep, todo = set(), [n for n in users.get(id(t_out), []) if id(n) in candidates]
    while todo:
        n = todo.pop()
        if id(n) in keep:
            continue
        keep.add(id(n))
        todo += [u for u in users.get(id(n.outputs[0]), []) if id(u) in candidates]
        todo += [x.producer for x in n.inputs if x.producer is not None and id(x.producer) in candidates]
    return [n for n in graph.nodes if id(n) in keep]


def sink_transpose_regions(graph: Graph) -> bool:
    """Sink a transpose through a whole region of elementwise ops when that does not add transposes.

    The sink-transpose rule moves a transpose past one op whose transposed operand has no other
    reader. A value read by several elementwise ops (ELU's select(x > 0, x, expm1(x)), a normalisation
    that reuses x) needs the whole region moved at once: it is rewritten in the untransposed layout,
    and each value leaving the region gets one transpose. It fires when the transposes that die are
    at least as many as the ones added, so transposes only ever move towards the outputs.
    """
    changed = False
    for t in [n for n in graph.nodes if n.op == "transpose"]:
        users = graph.users()
        sinks = {id(v) for v in graph.sinks()}
        t_out = t.outputs[0]
        if t not in graph.nodes or id(t_out) in sinks or not users.get(id(t_out)):
            continue
        perm = t.attrs["perm"]
        nodes = _grow_region(graph, t_out, users)
        inside = {id(n) for n in nodes}
        produced = {id(n.outputs[0]) for n in nodes}
        if not nodes:
            continue
        feeds = {id(x): x for n in nodes for x in n.inputs
                 if id(x) not in produced and x.producer is not None and x.producer.op == "transpose"}
        # a feed dies when the region was its only reader, but for transposes (which compose with it)
        dying = [x for x in feeds.values() if id(x) not in sinks
                 and all(id(u) in inside or u.op == "transpose" for u in users[id(x)])]
        exits = [n.outputs[0] for n in nodes if id(n.outputs[0]) in sinks
                 or any(id(u) not in inside for u in users.get(id(n.outputs[0]), []))]
        # an exit read outside only by transposes costs nothing: the two transposes compose into one
        costly = [v for v in exits if id(v) in sinks
                  or any(id(u) not in inside and u.op != "transpose" for u in users.get(id(v), []))]
        relaid = any(_needs_relaying(x) for n in nodes for x in n.inputs if id(x) not in produced)
        if len(dying) < len(feeds) or len(costly) > len(dying) - relaid:
            continue  # a transposed operand is still read elsewhere, or more transposes would come out (or as
            # many, but a computed operand would need a reshape: no gain)
        inv = _inverse(perm)

        def operand(x: Value) -> Value:
            if id(x) in feeds:
                return x.producer.inputs[0]
            if x.is_param and len(x.shape) > 0 and x.type.size > 1:
                return graph.add_param(np.asarray(np.transpose(aligned(x.const, len(perm)), inv), order="C"))
            if _needs_relaying(x):  # a computed per-channel operand: one reshape
                return graph.op("reshape", x, shape=_relaid_broadcast(x.shape, perm))
            return x
        new = _clone_region(graph, nodes, operand)
        for v in exits:
            graph.replace_all_uses(v, graph.op("transpose", new[id(v)], perm=perm))
        graph.toposort()
        dce(graph)
        changed = True
    return changed


# ---- reshape hoisting ---------------------------------------------------------------------------------------


def _component(v: Value, users) -> list:
    """The elementwise nodes of v's shape connected to v's producer through values of that shape."""
    return connected([v.producer], v.shape, users)


def hoist_unit_reshapes(graph: Graph) -> bool:
    """Compute a region of elementwise ops in the shape its readers reshape it to.

    A per-channel vector [1, C] computed by a chain of elementwise ops and read, at several points
    of the chain, through reshapes to [1, C, 1, 1] (to broadcast against a [1, C, H, W] tensor)
    costs one reshape per reader. Computing the whole region in [1, C, 1, 1] instead needs one
    reshape per value entering it. Fires when fewer reshapes result; only unit-dimension reshapes
    (same element order) are considered, so constants are re-laid, never reordered.
    """
    changed = False
    for r in [n for n in graph.nodes if n.op == "reshape"]:
        users = graph.users()
        sinks = {id(v) for v in graph.sinks()}
        if r not in graph.nodes or not unit_reshape(r.inputs[0].shape, r.outputs[0].shape):
            continue
        src, dst = r.inputs[0].shape, r.outputs[0].shape
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        nodes = sorted(_component(r.inputs[0], users), key=lambda n: order[id(n)])
        inside = {id(n) for n in nodes}
        produced = {id(n.outputs[0]) for n in nodes}
        if not nodes:
            continue
        removed, exits, sources, consts, free = [], [], {}, {}, {}
        for n in nodes:
            out = n.outputs[0]
            for u in users.get(id(out), []):
                if u.op == "reshape" and u.outputs[0].shape == dst:
                    removed.append(u)
                elif id(u) not in inside:
                    exits.append(out)
            if id(out) in sinks:
                exits.append(out)
            for x in n.inputs:
                if id(x) in produced or (x.type.size == 1 and len(x.shape) <= len(dst)):
                    continue
                if x.is_param:
                    c = relaid(x.const, src, dst)
                    if c is None:
                        break
                    consts[id(x)] = c
                else:  # a computed operand: where it broadcasts against src, re-laid for dst
                    shape = regrouped(x.shape, src, dst)
                    if shape is None:
                        break
                    if x.producer is not None and x.producer.op == "reshape" and x.producer.inputs[0].shape == shape:
                        free[id(x)] = x.producer.inputs[0]  # a reshape out of that shape: read what it reshapes
                    elif (1,) * (len(dst) - len(x.shape)) + tuple(x.shape) != shape:
                        sources[id(x)] = (x, shape)  # needs a reshape (none where it already broadcasts right)
            else:
                continue
            break  # an operand that cannot be re-laid
        else:
            exits = list({id(v): v for v in exits}.values())
            # the shape each region value comes out in: an operand that already broadcasts right is read
            # as it is, so a node whose operands all have fewer dimensions than dst comes out short of
            # dst's leading unit dimensions (and its readers that wanted dst still need a reshape)
            shapes: dict[int, tuple] = {}
            for n in nodes:
                shapes[id(n.outputs[0])] = tuple(np.broadcast_shapes(*[
                    shapes[id(x)] if id(x) in shapes else consts[id(x)].shape if id(x) in consts
                    else sources[id(x)][1] if id(x) in sources else free[id(x)].shape if id(x) in free
                    else x.shape for x in n.inputs]))
            short = {id(u.inputs[0]) for u in removed if shapes[id(u.inputs[0])] != dst}
            back = [v for v in exits if shapes[id(v)] != src]
            if len(sources) + len(back) + len(short) >= len(removed):
                continue
            entering = {id(x): graph.op("reshape", x, shape=shape) for x, shape in sources.values()}
            new = _clone_region(graph, nodes, lambda x: entering[id(x)] if id(x) in entering else
                                graph.add_param(consts[id(x)]) if id(x) in consts else free.get(id(x), x))
            widened = {id(u.inputs[0]): graph.op("reshape", new[id(u.inputs[0])], shape=dst) for u in removed
                       if new[id(u.inputs[0])].shape != dst}
            for u in removed:
                k = id(u.inputs[0])
                graph.replace_all_uses(u.outputs[0], widened.get(k, new[k]))
            for v in exits:
                graph.replace_all_uses(v, new[id(v)] if new[id(v)].shape == src
                                       else graph.op("reshape", new[id(v)], shape=src))
            graph.toposort()
            dce(graph)
            changed = True
    return changed


# ---- reshape sinking -------------------------------------------------------------------------------------------


def sink_reshapes(graph: Graph) -> bool:
    """Compute an elementwise region in the shape its operands are reshaped from.

    A region of elementwise ops in shape A whose operands are reshapes of values of shape B (an SSM
    output [1, 32, 2, 4] viewed as [1, 64, 4] to add a per-(head, part) skip term) needs those
    reshapes only because the region is written in A. Computing it in B removes them; constants are
    re-laid where every group of axes that the reshape splits or merges is whole or all ones in them,
    and each value leaving the region is reshaped back to A (free where it is read by a reshape).
    Fires when fewer reshapes result."""
    changed = False
    for r in [n for n in graph.nodes if n.op == "reshape"]:
        if r not in graph.nodes:
            continue
        users = graph.users()
        sinks = {id(v) for v in graph.sinks()}
        b_shape, a_shape = r.inputs[0].shape, r.outputs[0].shape
        if b_shape == a_shape:
            continue
        region = {id(n) for n in connected(users.get(id(r.outputs[0]), []), a_shape, users)}
        nodes = [n for n in graph.nodes if id(n) in region]
        if not nodes:
            continue
        inside = {id(n) for n in nodes}
        produced = {id(n.outputs[0]) for n in nodes}
        free, consts, entering, ok = {}, {}, {}, True
        for n in nodes:
            for x in n.inputs:
                if id(x) in produced or (x.type.size == 1 and len(x.shape) <= len(b_shape)) or id(x) in free \
                        or id(x) in consts or id(x) in entering:
                    continue
                p = x.producer
                if p is not None and p.op == "reshape" and p.inputs[0].shape == b_shape and x.shape == a_shape:
                    free[id(x)] = p.inputs[0]
                    continue
                shape = regrouped(x.shape, a_shape, b_shape)
                if shape is None:
                    ok = False
                    break
                if x.is_param:
                    consts[id(x)] = aligned(x.const, len(a_shape)).reshape(shape)
                elif (1,) * (len(b_shape) - len(x.shape)) + tuple(x.shape) != shape:
                    src = p.inputs[0] if p is not None and p.op == "reshape" else x  # reshapes compose
                    have = next((u.outputs[0] for u in users.get(id(src), [])
                                 if u.op == "reshape" and u.outputs[0].shape == shape), None)
                    if have is not None:
                        free[id(x)] = have  # that view exists already (read by another op)
                    else:
                        entering[id(x)] = (src, shape)
            if not ok:
                break
        if not ok:
            continue
        dying = {id(x.producer) for n in nodes for x in n.inputs if id(x) in free and x.producer is not None
                 and x.producer.op == "reshape" and id(x) not in sinks
                 and all(id(u) in inside for u in users.get(id(x), []))}
        exits = [n.outputs[0] for n in nodes if id(n.outputs[0]) in sinks
                 or any(id(u) not in inside and u.op != "reshape" for u in users.get(id(n.outputs[0]), []))]
        if len(entering) + len(exits) >= len(dying):
            continue
        moved = {k: graph.op("reshape", x, shape=shape) for k, (x, shape) in entering.items()}
        new = _clone_region(graph, nodes, lambda x: free.get(id(x)) or moved.get(id(x)) or
                            (graph.add_param(consts[id(x)]) if id(x) in consts else x))
        for n in nodes:
            v = n.outputs[0]
            graph.replace_all_uses(v, graph.op("reshape", new[id(v)], shape=a_shape))
        graph.toposort()
        dce(graph)
        changed = True
    return changed
