"""Batching a traced one-stream graph over N streams, in the IR.

Every value computed from an input or the state gets a stream axis in front. Where the one-stream value's
first axis is 1 (a batch of one, as in nearly every traced model) the stream axis takes its place ("merged"
form, same rank): a conv then simply runs with batch N, a pool, reduction, slice or transpose that leaves
axis 0 alone runs as it is, and an elementwise op reads its operands as they are. Only what does not fit
(a per-stream dt of shape () meeting a (1, C) tensor, a reduction over axis 0, a dot with batch dims) gets
the stream axis as an extra leading axis ("extra" form, rank + 1), with a unit reshape between the forms.
Both forms hold the same bytes (stream-major, then the one-stream value row-major), so any value reshapes
to either for free.

jax.vmap batches the same model, but its rules add the stream axis beside the batch of one everywhere:
a rank-5 pool and reshapes around every conv, which the layout passes cannot see through (FacePhys: 37
transposes and no pools after the pipeline, vs 4 and 9 batched here, where the pipeline finds the graph
it knows). graphopt.multistream uses this transform and falls back to jax.vmap where an op is not
batchable here (NotBatchable).
"""
from __future__ import annotations

import copy
import itertools

import numpy as np

from .graph import Graph, Value
from .ops import OPS
from .types import TensorType

ELEMENTWISE = {n for n, op in OPS.items() if op.elementwise}


class NotBatchable(ValueError):
    """The graph has an op this transform cannot batch (e.g. computed conv weights, per-stream indices)."""


def batched_shape(shape, n: int) -> tuple[int, ...]:
    shape = tuple(shape)
    return (n,) + (shape[1:] if shape and shape[0] == 1 else shape)


class _Batcher:
    def __init__(self, g: Graph, n: int, fixed: dict | None = None):
        self.g, self.n, self.fixed = g, n, dict(fixed or {})
        self.out = Graph(g.name, output_names=list(g.output_names), meta=copy.deepcopy(g.meta))
        self.env: dict[int, tuple[Value, bool]] = {}

    # ---- the two forms ---------------------------------------------------------------------------
    def extra(self, v: Value, base: tuple) -> Value:
        """v (a batched value of one-stream shape `base`) with the stream axis as an extra leading axis."""
        return self.reshape(v, (self.n,) + tuple(base))

    def merged(self, v: Value, base: tuple) -> Value:
        assert base and base[0] == 1
        return self.reshape(v, (self.n,) + tuple(base[1:]))

    def reshape(self, v: Value, shape: tuple) -> Value:
        return v if v.shape == tuple(shape) else self.out.op("reshape", v, shape=tuple(shape))

    def to_front(self, v: Value, axis: int) -> Value:
        """Move the stream axis from `axis` to the front."""
        if axis == 0:
            return v
        perm = (axis,) + tuple(i for i in range(len(v.shape)) if i != axis)
        return self.out.op("transpose", v, perm=perm)

    # ---- ops -----------------------------------------------------------------------------------------
    def node(self, node) -> list[tuple[Value, bool]]:
        ins = [self.env.get(id(x), (x, False)) for x in node.inputs]
        if not any(b for _, b in ins):  # computed from constants only: as it is
            new = self.out.add_node(node.op, [v for v, _ in ins], **node.attrs)
            return [(o, False) for o in new.outputs]
        if len(node.outputs) != 1:
            raise NotBatchable(f"op {node.op} with {len(node.outputs)} outputs")
        rule = getattr(self, "op_" + node.op, None)
        if rule is None:
            rule = self.elementwise if node.op in ELEMENTWISE else None
        if rule is None:
            raise NotBatchable(f"op {node.op} is not batched by graphopt.ir.batching")
        base_ins = [x.shape for x in node.inputs]
        got = rule(node, ins, base_ins, dict(node.attrs))
        want = batched_shape(node.outputs[0].shape, self.n)
        if got.shape not in (want, (self.n,) + tuple(node.outputs[0].shape)):
            raise NotBatchable(f"op {node.op}: batched to {got.shape}, expected {want}")  # a rule's own bug
        return [(got, True)]

    def elementwise(self, node, ins, shapes, a):
        so = node.outputs[0].shape
        r = len(so)
        merged = r >= 1 and so[0] == 1
        args = []
        for (v, b), s in zip(ins, shapes):
            if not b:
                args.append(v)
                continue
            aligned = (1,) * (r - len(s)) + tuple(s)
            args.append(self.reshape(v, (self.n,) + (aligned[1:] if merged else aligned)))
        return self.out.op(node.op, *args, **a)

    def op_reshape(self, node, ins, shapes, a):
        return self.reshape(ins[0][0], batched_shape(a["shape"], self.n))

    def op_transpose(self, node, ins, shapes, a):
        (v, _), s, p = ins[0], shapes[0], a["perm"]
        if s and s[0] == 1 and p[0] == 0:
            return self.out.op("transpose", self.merged(v, s), perm=p)
        return self.out.op("transpose", self.extra(v, s), perm=(0,) + tuple(q + 1 for q in p))

    def op_broadcast(self, node, ins, shapes, a):
        (v, _), s, shape, dims = ins[0], shapes[0], a["shape"], a["dims"]
        if s and s[0] == 1 and dims and dims[0] == 0 and shape[0] == 1:
            return self.out.op("broadcast", self.merged(v, s), shape=(self.n,) + tuple(shape[1:]), dims=dims)
        return self.out.op("broadcast", self.extra(v, s), shape=(self.n,) + tuple(shape),
                           dims=(0,) + tuple(d + 1 for d in dims))

    def op_slice(self, node, ins, shapes, a):
        (v, _), s = ins[0], shapes[0]
        if s and s[0] == 1 and a["starts"][0] == 0 and a["limits"][0] == 1:  # the batch of one kept whole
            return self.out.op("slice", self.merged(v, s), starts=a["starts"],
                               limits=(self.n,) + tuple(a["limits"][1:]), strides=(1,) + tuple(a["strides"][1:]))
        return self.out.op("slice", self.extra(v, s), starts=(0,) + tuple(a["starts"]),
                           limits=(self.n,) + tuple(a["limits"]), strides=(1,) + tuple(a["strides"]))

    def op_concat(self, node, ins, shapes, a):
        so, axis = node.outputs[0].shape, a["axis"]
        merged = so[0] == 1 and axis != 0
        args = []
        for (v, b), s in zip(ins, shapes):
            shape = (self.n,) + (tuple(s[1:]) if merged else tuple(s))
            if b:
                args.append(self.reshape(v, shape))
            else:  # concat does not broadcast: every stream gets the constant part
                dims = tuple(range(len(s))) if merged else tuple(range(1, len(s) + 1))
                args.append(self.out.op("broadcast", v, shape=shape, dims=dims))
        return self.out.op("concat", *args, axis=axis if merged else axis + 1)

    def op_pad(self, node, ins, shapes, a):
        (v, _), (value, vb), s = ins[0], ins[1], shapes[0]
        if vb:
            raise NotBatchable("pad with a per-stream padding value")
        if s and s[0] == 1 and tuple(a["pads"][0]) == (0, 0):
            return self.out.op("pad", self.merged(v, s), value, pads=a["pads"])
        return self.out.op("pad", self.extra(v, s), value, pads=((0, 0),) + tuple(a["pads"]))

    def op_take(self, node, ins, shapes, a):
        (x, xb), (idx, ib), s, axis = ins[0], ins[1], shapes[0], a["axis"]
        if xb and ib:
            raise NotBatchable("take with per-stream data and per-stream indices")
        if xb:
            if s[0] == 1 and axis != 0:
                return self.out.op("take", self.merged(x, s), idx, axis=axis)
            return self.out.op("take", self.extra(x, s), idx, axis=axis + 1)
        got = self.out.op("take", x, self.extra(idx, shapes[1]), axis=axis)  # the stream axis lands at `axis`
        return self.to_front(got, axis)

    def _axes_op(self, node, ins, shapes, a, key):
        (v, _), s = ins[0], shapes[0]
        axes = a[key] if isinstance(a[key], tuple) else (a[key],)
        if s and s[0] == 1 and 0 not in axes:
            return self.out.op(node.op, self.merged(v, s), **a)
        shifted = tuple(x + 1 for x in axes) if isinstance(a[key], tuple) else a[key] + 1
        return self.out.op(node.op, self.extra(v, s), **{**a, key: shifted})

    def op_reduce_sum(self, node, ins, shapes, a):
        return self._axes_op(node, ins, shapes, a, "axes")

    op_reduce_max = op_reduce_min = op_reverse = op_reduce_sum

    def op_cumsum(self, node, ins, shapes, a):
        return self._axes_op(node, ins, shapes, a, "axis")

    def op_dot(self, node, ins, shapes, a):
        (l, lb_), (r, rb_) = ins
        sl, sr = shapes
        lc, rc, lb, rb = a["lhs_contract"], a["rhs_contract"], a["lhs_batch"], a["rhs_batch"]
        up = lambda axes: tuple(x + 1 for x in axes)
        if lb_ and rb_:  # the stream axis as one more batch dimension: it comes out first
            return self.out.op("dot", self.extra(l, sl), self.extra(r, sr), lhs_contract=up(lc), rhs_contract=up(rc),
                               lhs_batch=(0,) + up(lb), rhs_batch=(0,) + up(rb))
        if lb_:
            if sl and sl[0] == 1 and not lb and 0 not in lc:  # axis 0 is the first free axis: output axis 0
                return self.out.op("dot", self.merged(l, sl), r, **a)
            got = self.out.op("dot", self.extra(l, sl), r, lhs_contract=up(lc), rhs_contract=rc,
                              lhs_batch=up(lb), rhs_batch=rb)
            return self.to_front(got, len(lb))  # after the batch dims
        free_l = len(sl) - len(lc) - len(lb)
        got = self.out.op("dot", l, self.extra(r, sr), lhs_contract=lc, rhs_contract=up(rc), lhs_batch=lb,
                          rhs_batch=up(rb))
        return self.to_front(got, len(lb) + free_l)

    def op_conv(self, node, ins, shapes, a):
        if any(b for _, b in ins[1:]):
            raise NotBatchable("conv with per-stream weights or bias")
        (x, _), s = ins[0], shapes[0]
        rest = [v for v, _ in ins[1:]]
        if s[0] == 1:
            return self.out.op("conv", self.merged(x, s), *rest, **a)
        flat = self.reshape(x, (self.n * s[0],) + tuple(s[1:]))
        y = self.out.op("conv", flat, *rest, **a)
        return self.reshape(y, (self.n,) + tuple(node.outputs[0].shape))

    def op_pool(self, node, ins, shapes, a):
        (v, _), s = ins[0], shapes[0]
        if s[0] == 1 and a["window"][0] == 1 and a["strides"][0] == 1 and tuple(a["pads"][0]) == (0, 0):
            return self.out.op("pool", self.merged(v, s), **a)
        raise NotBatchable("pool over the batch axis")

    # ---- the graph -----------------------------------------------------------------------------------
    def finish(self, v: Value, base_shape: tuple, batched: bool) -> Value:
        """A graph output or new state in the batched signature's shape."""
        want = batched_shape(base_shape, self.n)
        if batched:
            return self.reshape(v, want)
        r = len(base_shape)
        dims = tuple(range(r)) if base_shape and base_shape[0] == 1 else tuple(range(1, r + 1))
        return self.out.op("broadcast", v, shape=want, dims=dims)  # the same for every stream

    def run(self) -> Graph:
        g, out, n = self.g, self.out, self.n
        for v in g.inputs:
            new = out.add_input(v.name, TensorType(batched_shape(v.shape, n), v.dtype))
            # an input fixed at build time (dt = 1/fps) is one constant for every stream: what follows from it
            # stays unbatched and folds as in the one-stream graph
            self.env[id(v)] = (out.add_param(np.full(v.shape, self.fixed[v.name], v.dtype), name=f"{v.name}_fixed"),
                               False) if v.name in self.fixed else (new, True)
        for s in g.state:
            if s.view:
                raise NotBatchable("a state stored in another layout (batch before the state-layout pass)")
            init = np.stack([s.init] * n).reshape(batched_shape(s.init.shape, n))
            self.env[id(s.input)] = (out.add_state(s.name, init), True)
        # names: the base graph's parameters are shared, so new values must not take their names
        out._names |= set(g._names)
        out._counter = itertools.count(next(copy.copy(g._counter)))
        for node in g.nodes:
            for o, got in zip(node.outputs, self.node(node)):
                self.env[id(o)] = got
        out.outputs = []
        for v in g.outputs:
            got, batched = self.env.get(id(v), (v, False))
            out.outputs.append(self.finish(got, v.shape, batched))
        for s_new, s in zip(out.state, g.state):
            v, b = self.env.get(id(s.output), (s.output, False))
            s_new.output = self.finish(v, s.output.shape, b)
        return out


def batch_graph(g: Graph, n: int, fixed: dict | None = None) -> Graph:
    """g over n streams (see the module docstring); NotBatchable where an op cannot be batched here.
    fixed: input name -> the value every stream's input has (dt of a --fps build), read as a constant."""
    return _Batcher(g, n, fixed).run()


def check_batched(base: Graph, batched: Graph, n: int, seed: int = 0, fixed: dict | None = None) -> float:
    """One step of the batched graph against n one-stream steps of the base graph (the IR interpreter) on
    random inputs and state, each stream its own: the largest difference relative to the outputs' scale."""
    from .interpreter import run_graph
    rng = np.random.default_rng(seed)

    fixed = fixed or {}

    def sample(v):
        if v.name in fixed:
            return np.full(v.shape, fixed[v.name], v.dtype)
        if v.dtype.startswith("float"):
            return rng.uniform(0.01, 0.1 if "dt" in v.name else 1.0, v.shape).astype(v.dtype)
        if v.dtype == "bool":
            return rng.random(v.shape) < 0.5
        return rng.integers(0, 2, v.shape).astype(v.dtype)
    ins = [[sample(v) for v in base.inputs] for _ in range(n)]
    state = [[(s.init + (rng.normal(size=s.init.shape) * 0.1 if s.init.dtype.kind == "f" else 0)).astype(s.init.dtype)
              for s in base.state] for _ in range(n)]
    want = [run_graph(base, ins[k], state[k]) for k in range(n)]
    stack = lambda vals, shape: np.stack(vals).reshape(batched_shape(shape, n))
    got = run_graph(batched, [stack([ins[k][i] for k in range(n)], v.shape) for i, v in enumerate(base.inputs)],
                    [stack([state[k][i] for k in range(n)], s.init.shape) for i, s in enumerate(base.state)])
    worst = 0.0
    for part in (0, 1):
        for j in range(len(want[0][part])):
            ref = np.stack([np.asarray(want[k][part][j], np.float64) for k in range(n)]).reshape(-1)
            new = np.asarray(got[part][j], np.float64).reshape(-1)
            if ref.shape != new.shape or (np.isnan(ref) != np.isnan(new)).any() or \
                    (np.isinf(ref) != np.isinf(new)).any() or (ref[np.isinf(ref)] != new[np.isinf(ref)]).any():
                return float("inf")  # NaN/Inf where the other has none: not the same computation
            fin = np.isfinite(ref)
            if fin.any():
                scale = max(float(np.max(np.abs(ref[fin]))), 1e-6)
                worst = max(worst, float(np.max(np.abs(new[fin] - ref[fin]))) / scale)
    return worst
