"""Recurrent ONNX operators (LSTM, GRU, RNN), unrolled over their static sequence length.

Per direction, the input projection X·Wᵀ (+ the biases that do not depend on H) is one dot over the
whole sequence; each step adds H·Rᵀ (a dot against the constant, transposed R), slices the gates apart
and applies the activations. The passes thus see plain dots against constant 2-D weights (Gemm /
FullyConnected), slices that partition an axis (one Split) and elementwise math.

Covered (opsets 7..newest, as ONNX Runtime computes them): directions forward, reverse and
bidirectional; layout 0 and 1; B, initial_h, initial_c and P optional; sequence_lens omitted or all equal
to the sequence length; clip (on every gate's input to its activation); LSTM's input_forget (f = 1 - i)
and peepholes; GRU's linear_before_reset; the activations Sigmoid, Tanh, Relu, and Affine, LeakyRelu,
ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus with activation_alpha/beta consumed
as ONNX Runtime does (in order, by the functions that take them; defaults where the list runs out).
Weights (W, R, B, P) must be constants; Y, Y_h and Y_c are built only where the node names them.
"""
from __future__ import annotations

import numpy as np

from ....ir import is_float
from ..registry import converter
from .control import concat, fold_op, is_array, reshape, slice_axis, take

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
# name (lower case) -> (number of alphas, number of betas, default alpha, default beta); None: no default
ACTIVATIONS = {
    "sigmoid": (0, 0, None, None), "tanh": (0, 0, None, None), "relu": (0, 0, None, None),
    "softsign": (0, 0, None, None), "softplus": (0, 0, None, None),
    "affine": (1, 1, None, None), "scaledtanh": (1, 1, None, None),
    "leakyrelu": (1, 0, 0.01, None), "thresholdedrelu": (1, 0, 1.0, None), "elu": (1, 0, 1.0, None),
    "hardsigmoid": (1, 1, 0.2, 0.5),
}
MAX_UNROLLED_STEPS = 100_000  # sequence length x directions


def _activation_funcs(ctx, kind: str, attrs: dict, directions: int) -> list[list]:
    """Per direction, the op's activation functions (f, g[, h]) as callables on values."""
    per = len(DEFAULT_ACTIVATIONS[kind])
    names = attrs.get("activations")
    if names is None:
        names = list(DEFAULT_ACTIVATIONS[kind]) * directions
    if len(names) != per * directions:
        ctx.fail(f"{len(names)} activations given; {kind} with {directions} direction(s) takes {per * directions} "
                 "(a bidirectional op lists the forward direction's, then the reverse's)")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    funcs = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATIONS:
            ctx.fail(f"activation {name!r} is not supported (graphopt reads "
                     f"{', '.join(sorted(ACTIVATIONS))}); export the model with one of these")
        n_alpha, n_beta, d_alpha, d_beta = ACTIVATIONS[key]
        alpha = alphas.pop(0) if n_alpha and alphas else d_alpha
        beta = betas.pop(0) if n_beta and betas else d_beta
        if (n_alpha and alpha is None) or (n_beta and beta is None):
            ctx.fail(f"activation {name!r} needs activation_alpha and activation_beta values, which the node does "
                     "not give")
        funcs.append(_activation(ctx, key, alpha, beta))
    return [funcs[d * per:(d + 1) * per] for d in range(directions)]


def _activation(ctx, key: str, alpha, beta):
    def c(x, v):  # a scalar constant of x's dtype
        return np.asarray(v, np.dtype(ctx.dtype(x)))

    def fn(x):
        if key in ("sigmoid", "tanh"):
            return fold_op(ctx, key, x)
        if key == "relu":
            return fold_op(ctx, "max", x, c(x, 0))
        if key == "affine":
            return fold_op(ctx, "add", fold_op(ctx, "mul", x, c(x, alpha)), c(x, beta))
        if key == "scaledtanh":
            return fold_op(ctx, "mul", fold_op(ctx, "tanh", fold_op(ctx, "mul", x, c(x, beta))), c(x, alpha))
        if key == "hardsigmoid":
            lin = fold_op(ctx, "add", fold_op(ctx, "mul", x, c(x, alpha)), c(x, beta))
            return fold_op(ctx, "clamp", lin, lo=0.0, hi=1.0)
        if key == "leakyrelu":
            return fold_op(ctx, "select", fold_op(ctx, "ge", x, c(x, 0)), x, fold_op(ctx, "mul", x, c(x, alpha)))
        if key == "thresholdedrelu":
            return fold_op(ctx, "select", fold_op(ctx, "gt", x, c(x, alpha)), x, c(x, 0))
        if key == "elu":
            neg = fold_op(ctx, "mul", fold_op(ctx, "expm1", x), c(x, alpha))
            return fold_op(ctx, "select", fold_op(ctx, "ge", x, c(x, 0)), x, neg)
        if key == "softsign":
            return fold_op(ctx, "div", x, fold_op(ctx, "add", fold_op(ctx, "abs", x), c(x, 1)))
        if key == "softplus":  # log(1 + e^x) as max(x, 0) + log1p(e^-|x|): no overflow
            tail = fold_op(ctx, "log1p", fold_op(ctx, "exp", fold_op(ctx, "neg", fold_op(ctx, "abs", x))))
            return fold_op(ctx, "add", fold_op(ctx, "max", x, c(x, 0)), tail)
        raise AssertionError(key)
    return fn


def _weight(ctx, x, what: str, shape: tuple, dtype) -> np.ndarray:
    if x is not None and not ctx.is_const(x):
        ctx.fail(f"{what} is computed at runtime; graphopt unrolls recurrent operators against constant weights "
                 "(export the weights as initializers)")
    a = ctx.const(x, what)
    if tuple(a.shape) != shape:
        ctx.fail(f"{what} has shape {tuple(a.shape)}, expected {shape}")
    return a.astype(dtype, copy=False)


def _convert(ctx, kind: str, ins: list, attrs: dict):
    ins = list(ins) + [None] * (8 - len(ins))
    x, w, r, b, seq_lens, init_h = ins[:6]
    init_c, peep = (ins[6], ins[7]) if kind == "LSTM" else (None, None)
    if x is None:
        ctx.fail("input X is missing")
    dtype = ctx.dtype(x)
    if not is_float(dtype):
        ctx.fail(f"X is {dtype}; {kind} takes a float input")
    npdt = np.dtype(dtype)
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        ctx.fail(f"direction {direction!r} is not forward, reverse or bidirectional")
    nd = 2 if direction == "bidirectional" else 1
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        ctx.fail(f"layout {layout} is not 0 or 1")
    xs = ctx.shape(x)
    if len(xs) != 3:
        ctx.fail(f"X has shape {xs}; it must be 3-D")
    if layout == 1:
        x = fold_op(ctx, "transpose", x, perm=(1, 0, 2))
    seq, batch, n_in = ctx.shape(x)
    if seq == 0:
        ctx.fail("X has a sequence length of 0")
    if seq * nd > MAX_UNROLLED_STEPS:
        ctx.fail(f"a sequence of {seq} steps ({nd} direction(s)): graphopt unrolls recurrent operators, up to "
                 f"{MAX_UNROLLED_STEPS} steps")
    g = GATES[kind]
    if r is None or ctx.is_const(r) and np.ndim(r) != 3:
        ctx.fail("R must be a 3-D constant")
    hidden = int(attrs.get("hidden_size", 0)) or int(ctx.shape(r)[-1])
    gh = g * hidden
    W = _weight(ctx, w, "W", (nd, gh, n_in), npdt)
    R = _weight(ctx, r, "R", (nd, gh, hidden), npdt)
    B = _weight(ctx, b, "B", (nd, 2 * gh), npdt) if b is not None else np.zeros((nd, 2 * gh), npdt)
    P = _weight(ctx, peep, "P", (nd, 3 * hidden), npdt) if peep is not None else None
    if seq_lens is not None:
        if not ctx.is_const(seq_lens):
            ctx.fail("sequence_lens is computed at runtime; graphopt supports sequence_lens omitted or all equal "
                     "to the sequence length (pad the sequences and drop the input)")
        lens = np.asarray(seq_lens).reshape(-1)
        if lens.size != batch or np.any(lens != seq):
            ctx.fail(f"sequence_lens {lens.tolist()[:8]} differ from the sequence length {seq}; graphopt supports "
                     "sequences of the full length only (omit sequence_lens)")
    states = {}
    for name, v in (("initial_h", init_h), ("initial_c", init_c)):
        if v is None:
            states[name] = [np.zeros((batch, hidden), npdt)] * nd
            continue
        if ctx.dtype(v) != dtype:
            ctx.fail(f"{name} is {ctx.dtype(v)}, X {dtype}")
        want = (batch, nd, hidden) if layout == 1 else (nd, batch, hidden)
        if ctx.shape(v) != want:
            ctx.fail(f"{name} has shape {ctx.shape(v)}, expected {want}")
        states[name] = [take(ctx, v, 1 if layout == 1 else 0, d) for d in range(nd)]
    clip = attrs.get("clip")
    acts = _activation_funcs(ctx, kind, attrs, nd)
    outputs = list(ctx.node.output) if ctx.node is not None else ["Y", "Y_h", "Y_c"]
    want_y = len(outputs) > 0 and bool(outputs[0])

    all_h, last_h, last_c = [], [], []
    for d in range(nd):
        reverse = direction == "reverse" or d == 1
        step = _Step(ctx, kind, W[d], R[d], B[d], P[d] if P is not None else None, hidden, clip, acts[d], attrs)
        xw = step.project(x)
        h, c = states["initial_h"][d], states["initial_c"][d]
        hs = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            h, c = step(take(ctx, xw, 0, t), h, c)
            hs[t] = h
        all_h.append(hs)
        last_h.append(h)
        last_c.append(c)

    out = []
    if want_y:
        if layout == 0:  # [seq, num_directions, batch, hidden]
            per_dir = [concat(ctx, [reshape(ctx, h, (1, 1, batch, hidden)) for h in hs], 0) for hs in all_h]
            out.append(concat(ctx, per_dir, 1))
        else:  # [batch, seq, num_directions, hidden]
            per_dir = [concat(ctx, [reshape(ctx, h, (batch, 1, 1, hidden)) for h in hs], 1) for hs in all_h]
            out.append(concat(ctx, per_dir, 2))
    else:
        out.append(None)
    for k, finals in ((1, last_h), (2, last_c)):
        if k >= len(outputs):
            break
        if not outputs[k]:
            out.append(None)
            continue
        if layout == 0:  # [num_directions, batch, hidden]
            out.append(concat(ctx, [reshape(ctx, v, (1, batch, hidden)) for v in finals], 0))
        else:  # [batch, num_directions, hidden]
            out.append(concat(ctx, [reshape(ctx, v, (batch, 1, hidden)) for v in finals], 1))
    return out


class _Step:
    """One direction of one recurrent op: the sequence's input projection and the step function."""

    def __init__(self, ctx, kind, w, r, b, p, hidden, clip, acts, attrs):
        self.ctx, self.kind, self.hidden, self.acts = ctx, kind, hidden, acts
        self.clip = None if clip is None else float(clip)
        self.dtype = w.dtype
        gh = w.shape[0]
        wb, rb = b[:gh], b[gh:]
        self.wt = np.ascontiguousarray(w.T)  # [input, gates*hidden]: one parameter, shared by every step
        self.lbr = kind == "GRU" and bool(attrs.get("linear_before_reset", 0))
        self.input_forget = kind == "LSTM" and bool(attrs.get("input_forget", 0))
        rt = np.ascontiguousarray(r.T)  # [hidden, gates*hidden]
        H = hidden
        if kind == "GRU" and not self.lbr:
            # h gate: (r . H) Rh^T; z and r: H [Rz Rr]^T
            self.rt, self.rt_h = np.ascontiguousarray(rt[:, :2 * H]), np.ascontiguousarray(rt[:, 2 * H:])
        else:
            self.rt, self.rt_h = rt, None
        if self.lbr:  # Rbh goes inside r . (H Rh^T + Rbh)
            self.bias_x = np.concatenate([wb[:2 * H] + rb[:2 * H], wb[2 * H:]])
            self.rb_h = rb[2 * H:]
        else:
            self.bias_x = wb + rb
            self.rb_h = None
        self.p = None if p is None else [np.ascontiguousarray(p[k * H:(k + 1) * H]) for k in range(3)]  # i, o, f

    def c(self, v):
        return np.asarray(v, self.dtype)

    def dot(self, x, wt):
        if is_array(x) and not np.any(x):
            return np.zeros(self.ctx.shape(x)[:-1] + wt.shape[1:], self.dtype)
        return fold_op(self.ctx, "dot", x, wt, lhs_contract=(len(self.ctx.shape(x)) - 1,), rhs_contract=(0,))

    def project(self, x):
        """x [seq, batch, input] -> x W^T + the biases outside the recurrence: [seq, batch, gates*hidden]."""
        xw = self.dot(x, self.wt)
        if np.any(self.bias_x):
            xw = fold_op(self.ctx, "add", xw, self.bias_x)
        return xw

    def gate(self, v, k):
        return slice_axis(self.ctx, v, 1, k * self.hidden, (k + 1) * self.hidden)

    def act(self, k, v):
        if self.clip is not None:
            v = fold_op(self.ctx, "clamp", v, lo=-self.clip, hi=self.clip)
        return self.acts[k](v)

    def op(self, name, a, b):
        """fold_op, with x + 0 = x and x * 0 = 0 where one side is a constant zero (a step whose state is the
        omitted, zero, initial state: its recurrent terms drop out)."""
        if name in ("add", "mul"):
            shape = tuple(np.broadcast_shapes(self.ctx.shape(a), self.ctx.shape(b)))
            for x, y in ((a, b), (b, a)):
                if is_array(y) and not np.any(y):
                    if name == "mul":
                        return np.zeros(shape, self.dtype)
                    if self.ctx.shape(x) == shape:
                        return x
        return fold_op(self.ctx, name, a, b)

    def __call__(self, xw_t, h, c):
        op = self.op
        hr = self.dot(h, self.rt)
        if self.kind == "RNN":
            return self.act(0, op("add", xw_t, hr)), None
        if self.kind == "GRU":
            z = self.act(0, op("add", self.gate(xw_t, 0), self.gate(hr, 0)))
            rg = self.act(0, op("add", self.gate(xw_t, 1), self.gate(hr, 1)))
            if self.lbr:
                rh = self.gate(hr, 2)
                if np.any(self.rb_h):
                    rh = op("add", rh, self.rb_h)
                pre = op("add", self.gate(xw_t, 2), op("mul", rg, rh))
            else:
                pre = op("add", self.gate(xw_t, 2), self.dot(op("mul", rg, h), self.rt_h))
            hh = self.act(1, pre)
            return op("add", op("mul", op("sub", self.c(1), z), hh), op("mul", z, h)), None
        # LSTM: gates i, o, f, c
        pre = op("add", xw_t, hr)
        pi, po, pf, pc = (self.gate(pre, k) for k in range(4))
        if self.p is not None:
            pi = op("add", pi, op("mul", self.p[0], c))
            pf = op("add", pf, op("mul", self.p[2], c))
        i = self.act(0, pi)
        f = op("sub", self.c(1), i) if self.input_forget else self.act(0, pf)
        cc = self.act(1, pc)
        c = op("add", op("mul", f, c), op("mul", i, cc))
        if self.p is not None:
            po = op("add", po, op("mul", self.p[1], c))
        o = self.act(0, po)
        return op("mul", o, self.acts[2](c)), c


@converter("LSTM")
def lstm(ctx, ins, attrs):
    return _convert(ctx, "LSTM", ins, attrs)


@converter("GRU")
def gru(ctx, ins, attrs):
    return _convert(ctx, "GRU", ins, attrs)


@converter("RNN")
def rnn(ctx, ins, attrs):
    return _convert(ctx, "RNN", ins, attrs)
