"""Neural-network ONNX operators: contractions (MatMul, Gemm, Einsum), convolutions (Conv, ConvTranspose),
pooling (Max/Average/Lp, global forms), normalisations (BatchNormalization, Instance-, Layer-,
GroupNormalization, LRN), Resize and (De)QuantizeLinear.

Shapes are static here, so every geometric decision (padding, output sizes, resize index maps and
weights, average-pool divisors) is computed while importing and lands in the graph as attributes or
constants; weights stay parameters so the passes can fold and fuse them. Where onnxruntime (the
reference the build verifies against) and the ONNX spec text differ, the converter follows
onnxruntime; those places say so.
"""
from __future__ import annotations

import itertools
import string

import numpy as np

from ..registry import converter

# ---- helpers ------------------------------------------------------------------------------------


def _arg(ins, i):
    return ins[i] if len(ins) > i else None


def _np(ctx, x) -> np.dtype:
    return np.dtype(ctx.dtype(x))


def _scalar(ctx, v, like) -> np.ndarray:
    return np.asarray(v, dtype=_np(ctx, like))


def _reshape(ctx, x, shape):
    shape = tuple(int(d) for d in shape)
    if tuple(ctx.shape(x)) == shape:
        return x
    if ctx.is_const(x):
        return np.reshape(x, shape)
    return ctx.op("reshape", x, shape=shape)


def _transpose(ctx, x, perm):
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(len(perm))):
        return x
    if ctx.is_const(x):
        return np.transpose(x, perm)
    return ctx.op("transpose", x, perm=perm)


def _cast(ctx, x, dtype: str):
    if ctx.dtype(x) == dtype:
        return x
    if ctx.is_const(x):
        return np.asarray(x).astype(dtype)
    return ctx.op("cast", x, to=dtype)


def _channel_shape(ctx, x, rank: int, axis: int = 1) -> tuple:
    """A per-axis vector's shape for broadcasting against a rank-`rank` tensor along `axis`."""
    n = int(np.prod(ctx.shape(x), dtype=np.int64))
    return (n,) + (1,) * (rank - axis - 1)


def _const_like(ctx, a, like):
    """A constant in `like`'s dtype (weights may come in another float type, e.g. BatchNorm's T1/T2)."""
    return np.asarray(a).astype(_np(ctx, like)) if ctx.is_const(a) else _cast(ctx, a, ctx.dtype(like))


def _mean(ctx, x, axes):
    """The mean over axes, dimensions kept (as ReduceMean with keepdims=1)."""
    xs = ctx.shape(x)
    axes = tuple(sorted(axes))
    n = int(np.prod([xs[a] for a in axes], dtype=np.int64))
    s = ctx.op("reduce_sum", x, axes=axes)
    s = _reshape(ctx, s, tuple(1 if i in axes else d for i, d in enumerate(xs)))
    return ctx.op("div", s, _scalar(ctx, n, x))


def _norm(ctx, x, axes, eps):
    """(x - mean) * rsqrt(var + eps) over axes; returns (normalised, mean, inverse std), dims kept."""
    mean = _mean(ctx, x, axes)
    d = ctx.op("sub", x, mean)
    var = _mean(ctx, ctx.op("mul", d, d), axes)
    inv = ctx.op("rsqrt", ctx.op("add", var, _scalar(ctx, eps, x)))
    return ctx.op("mul", d, inv), mean, inv


def _ints(attrs, key, n, default):
    v = attrs.get(key)
    if v is None or len(v) == 0:
        return (default,) * n
    return tuple(int(a) for a in v)


def _explicit_pads(ctx, attrs, nsp):
    p = attrs.get("pads")
    if not p:
        return [(0, 0)] * nsp
    if len(p) != 2 * nsp:
        ctx.fail(f"pads {p} should have {2 * nsp} values (begin and end for each spatial axis)")
    if any(v < 0 for v in p):
        ctx.fail(f"negative pads {p} are not supported")
    return [(int(p[i]), int(p[i + nsp])) for i in range(nsp)]


def _auto_pads(ctx, attrs, in_sp, kernel, strides, dilations):
    """Conv/pool pads per spatial axis as (begin, end), auto_pad resolved as onnxruntime does it
    (SAME_*: output ceil(in / stride); the odd pixel goes to the end for SAME_UPPER)."""
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    nsp = len(in_sp)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for d, k, s, dl in zip(in_sp, kernel, strides, dilations):
            out = -(-d // s)
            total = max(0, (out - 1) * s + (k - 1) * dl + 1 - d)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
        return pads, auto
    if auto == "VALID":
        return [(0, 0)] * nsp, auto
    if auto != "NOTSET":
        ctx.fail(f"auto_pad {auto!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    return _explicit_pads(ctx, attrs, nsp), auto


def _spatial(ctx, x, what="the input"):
    xs = ctx.shape(x)
    if len(xs) < 3:
        ctx.fail(f"{what} has shape {xs}; a (N, C, D1, ...) tensor with at least one spatial axis is required")
    return xs, len(xs) - 2


# ---- contractions -------------------------------------------------------------------------------


def _broadcast_batch(ctx, x, batch):
    """x (..., M, K) broadcast to batch + (M, K)."""
    xs = ctx.shape(x)
    target = tuple(batch) + tuple(xs[-2:])
    if tuple(xs) == target:
        return x
    off = len(target) - len(xs)
    return ctx.op("broadcast", x, shape=target, dims=tuple(range(off, len(target))))


def _matmul(ctx, a, b):
    """NumPy matmul of operands of rank >= 2."""
    sa, sb = ctx.shape(a), ctx.shape(b)
    if sa[-1] != sb[-2]:
        ctx.fail(f"operands {sa} and {sb} do not multiply (inner dimensions {sa[-1]} and {sb[-2]})")
    if len(sb) == 2:  # x @ W: contract the last axis of x with a matrix (the form the fusions know)
        return ctx.op("dot", a, b, lhs_contract=(len(sa) - 1,), rhs_contract=(0,))
    try:
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        ctx.fail(f"the batch dimensions of {sa} and {sb} do not broadcast")
    a, b = _broadcast_batch(ctx, a, batch), _broadcast_batch(ctx, b, batch)
    nb = len(batch)
    return ctx.op("dot", a, b, lhs_contract=(nb + 1,), rhs_contract=(nb,), lhs_batch=tuple(range(nb)),
                  rhs_batch=tuple(range(nb)))


@converter("MatMul")
def matmul(ctx, ins, attrs):
    a, b = ins[0], ins[1]
    sa, sb = ctx.shape(a), ctx.shape(b)
    if not sa or not sb:
        ctx.fail("MatMul of a scalar (0-d operand) is not defined")
    if len(sa) == 1:
        a = _reshape(ctx, a, (1,) + sa)
    if len(sb) == 1:
        b = _reshape(ctx, b, sb + (1,))
    out = _matmul(ctx, a, b)
    shape = list(ctx.shape(out))
    if len(sb) == 1:
        shape.pop(-1)
    if len(sa) == 1:
        shape.pop(-1 if len(sb) == 1 else -2)
    return _reshape(ctx, out, shape)


@converter("Gemm")
def gemm(ctx, ins, attrs):
    a, b, c = ins[0], ins[1], _arg(ins, 2)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if len(ctx.shape(a)) != 2 or len(ctx.shape(b)) != 2:
        ctx.fail(f"Gemm takes 2-D operands, got {ctx.shape(a)} and {ctx.shape(b)}")
    if ctx.is_const(b):  # a weight: transpose and scale it here, x @ W for the fusions
        if tb:
            b, tb = np.ascontiguousarray(np.asarray(b).T), 0
        if alpha != 1.0:
            b, alpha = (np.asarray(b) * alpha).astype(np.asarray(b).dtype), 1.0
    out = ctx.op("dot", a, b, lhs_contract=(0 if ta else 1,), rhs_contract=(1 if tb else 0,))
    if alpha != 1.0:
        out = ctx.op("mul", out, _scalar(ctx, alpha, out))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = (np.asarray(c) * beta).astype(np.asarray(c).dtype) if ctx.is_const(c) else \
                ctx.op("mul", c, _scalar(ctx, beta, c))
        out = ctx.op("add", out, c)
    return out


# ---- Einsum ---------------------------------------------------------------------------------------


def _einsum_parse(ctx, eq: str, shapes):
    eq = eq.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        ctx.fail(f"equation {eq!r} names {len(terms)} operands, the node has {len(shapes)}")
    spare = iter(c for c in (chr(0x3b1 + i) for i in range(64)) if c not in eq)  # labels for '...'
    n_ell = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(next(spare) for _ in range(n_ell))
    labels = []
    for t, s in zip(terms, shapes):
        if "..." in t:
            k = len(s) - len(t.replace("...", ""))
            t = t.replace("...", ell[n_ell - k:] if k else "")
        if any(ch not in string.ascii_letters and ch not in ell for ch in t) or len(t) != len(s):
            ctx.fail(f"equation {eq!r} does not match operand shapes {list(shapes)}")
        labels.append(t)
    if arrow:
        out = out.replace("...", ell)
    else:  # implicit output: the ellipsis, then the labels seen once, alphabetically
        counts = {}
        for t in labels:
            for ch in t:
                counts[ch] = counts.get(ch, 0) + 1
        out = ell + "".join(sorted(ch for ch, k in counts.items() if k == 1 and ch not in ell))
    if len(set(out)) != len(out) or any(ch not in "".join(labels) for ch in out):
        ctx.fail(f"equation {eq!r} has an output label repeated or missing from the operands")
    return labels, out


@converter("Einsum")
def einsum(ctx, ins, attrs):
    eq = attrs.get("equation", "")
    labels, out = _einsum_parse(ctx, eq, [ctx.shape(x) for x in ins])
    sizes = {}
    for t, x in zip(labels, ins):
        if len(set(t)) != len(t):
            ctx.fail(f"equation {eq!r} repeats a label within an operand (a diagonal); only products, "
                     "transposes and sums are supported")
        for ch, d in zip(t, ctx.shape(x)):
            sizes[ch] = max(sizes.get(ch, 1), d)
    ops = []
    for t, x in zip(labels, ins):  # a size-1 dim against a larger one broadcasts: drop it here
        keep = [i for i, ch in enumerate(t) if not (ctx.shape(x)[i] == 1 and sizes[ch] > 1)]
        if len(keep) != len(t):
            x = _reshape(ctx, x, [ctx.shape(x)[i] for i in keep])
            t = "".join(t[i] for i in keep)
        ops.append((x, t))

    def needed(k):
        return set(out).union(*[set(t) for _, t in ops[k:]])

    def sum_out(x, t, keep):
        axes = tuple(i for i, ch in enumerate(t) if ch not in keep)
        if not axes:
            return x, t
        return ctx.op("reduce_sum", x, axes=axes), "".join(ch for ch in t if ch in keep)

    x, t = ops[0]
    x, t = sum_out(x, t, needed(1))
    for k in range(1, len(ops)):
        y, u = ops[k]
        keep = needed(k + 1)
        y, u = sum_out(y, u, keep | set(t))
        x, t = sum_out(x, t, keep | set(u))
        batch = [ch for ch in t if ch in u and ch in keep]
        contract = [ch for ch in t if ch in u and ch not in keep]
        if ctx.dtype(x) != ctx.dtype(y):
            ctx.fail(f"operands of dtypes {ctx.dtype(x)} and {ctx.dtype(y)}")
        x = ctx.op("dot", x, y, lhs_contract=tuple(t.index(ch) for ch in contract),
                   rhs_contract=tuple(u.index(ch) for ch in contract),
                   lhs_batch=tuple(t.index(ch) for ch in batch), rhs_batch=tuple(u.index(ch) for ch in batch))
        t = "".join(batch) + "".join(ch for ch in t if ch not in u) + "".join(ch for ch in u if ch not in t)
    x, t = sum_out(x, t, set(out))
    missing = [ch for ch in out if ch not in t]  # an output label only on size-1 dims dropped above
    if missing:
        x = _reshape(ctx, x, list(ctx.shape(x)) + [1] * len(missing))
        t += "".join(missing)
    if ctx.is_const(x):
        x = ctx.value(x)
    return _transpose(ctx, x, [t.index(ch) for ch in out])


# ---- convolutions ---------------------------------------------------------------------------------


def _kernel(ctx, attrs, ws, nsp):
    kernel = tuple(int(k) for k in attrs.get("kernel_shape") or ws[2:])
    if kernel != tuple(ws[2:]) or len(kernel) != nsp:
        ctx.fail(f"kernel_shape {list(kernel)} does not match the weight's shape {ws}")
    return kernel


def _conv_geometry(ctx, ins, attrs):
    """What Conv and ConvTranspose share: x, w, b, their shapes, the spatial rank, kernel, strides,
    dilations and group, checked against each other."""
    x, w, b = ins[0], ins[1], _arg(ins, 2)
    xs, nsp = _spatial(ctx, x)
    ws = ctx.shape(w)
    if len(ws) != len(xs):
        ctx.fail(f"the weight {ws} and the input {xs} differ in rank")
    kernel = _kernel(ctx, attrs, ws, nsp)
    return (x, w, b, xs, ws, nsp, kernel, _ints(attrs, "strides", nsp, 1), _ints(attrs, "dilations", nsp, 1),
            int(attrs.get("group", 1)))


@converter("Conv")
def conv(ctx, ins, attrs):
    x, w, b, xs, ws, nsp, kernel, strides, dilations, group = _conv_geometry(ctx, ins, attrs)
    if xs[1] != ws[1] * group or ws[0] % group:
        ctx.fail(f"{xs[1]} input channels do not match the weight {ws} with group={group}")
    pads, _ = _auto_pads(ctx, attrs, xs[2:], kernel, strides, dilations)
    args = [x, w] + ([b] if b is not None else [])
    return ctx.op("conv", *args, strides=strides, pads=tuple(pads), dilations=dilations, groups=group)


@converter("ConvTranspose")
def conv_transpose(ctx, ins, attrs):
    """The gradient of a conv as a conv: the input spread by the strides (lhs_dilations), padded by
    (k - 1) * d minus the ONNX pads, with the kernel's in/out channels swapped per group and its
    taps flipped."""
    x, w, b, xs, ws, nsp, kernel, strides, dilations, group = _conv_geometry(ctx, ins, attrs)
    out_pad = _ints(attrs, "output_padding", nsp, 0)
    cin, cout_g = ws[0], ws[1]
    if xs[1] != cin or cin % group:
        ctx.fail(f"{xs[1]} input channels do not match the weight {ws} with group={group}")
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        ctx.fail(f"auto_pad {auto!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    out_shape = attrs.get("output_shape")
    if out_shape:
        out_shape = list(out_shape)[-nsp:]
        if len(out_shape) != nsp:
            ctx.fail(f"output_shape {attrs['output_shape']} does not give the {nsp} spatial sizes")
    pads = []
    for i, (d, k, s, dl, op) in enumerate(zip(xs[2:], kernel, strides, dilations, out_pad)):
        full = (d - 1) * s + op + (k - 1) * dl + 1
        if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
            target = int(out_shape[i]) if out_shape else d * s
            total = full - target
            # the spec's split: SAME_UPPER puts the odd pixel at the end, NOTSET/SAME_LOWER at the start
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
        elif auto == "VALID":
            pads.append((0, 0))
        else:
            pads.append(_explicit_pads(ctx, attrs, nsp)[i])
    # the equivalent conv's kernel: (Cout, Cin/group, *k), taps flipped
    cin_g = cin // group
    sp_axes = tuple(range(2, 2 + nsp))
    if ctx.is_const(w):
        wk = np.asarray(w).reshape((group, cin_g, cout_g) + kernel).swapaxes(1, 2)
        wk = np.ascontiguousarray(np.flip(wk.reshape((group * cout_g, cin_g) + kernel), sp_axes))
    else:
        wk = ctx.op("reshape", w, shape=(group, cin_g, cout_g) + kernel)
        wk = ctx.op("transpose", wk, perm=(0, 2, 1) + tuple(range(3, 3 + nsp)))
        wk = ctx.op("reshape", wk, shape=(group * cout_g, cin_g) + kernel)
        wk = ctx.op("reverse", wk, axes=sp_axes)
    conv_pads, crop = [], []
    for k, dl, op, (pb, pe) in zip(kernel, dilations, out_pad, pads):
        lo, hi = (k - 1) * dl - pb, (k - 1) * dl - pe + op
        conv_pads.append((max(lo, 0), max(hi, 0)))
        crop.append((max(-lo, 0), max(-hi, 0)))
    args = [x, wk] + ([b] if b is not None else [])
    y = ctx.op("conv", *args, strides=(1,) * nsp, pads=tuple(conv_pads), dilations=dilations, groups=group,
               lhs_dilations=() if all(s == 1 for s in strides) else strides)
    if any(c != (0, 0) for c in crop):
        ys = ctx.shape(y)
        if any(lo + hi >= n for (lo, hi), n in zip(crop, ys[2:])):
            ctx.fail(f"pads {pads} leave no output")
        y = ctx.op("slice", y, starts=(0, 0) + tuple(lo for lo, _ in crop),
                   limits=tuple(ys[:2]) + tuple(n - hi for (_, hi), n in zip(crop, ys[2:])),
                   strides=(1,) * len(ys))
    return y


# ---- pooling --------------------------------------------------------------------------------------


def _pool_geometry(ctx, attrs, xs, kernel):
    """strides, dilations, pads (begin, end + the ceil_mode overhang) and output sizes per spatial axis.
    ceil_mode follows onnxruntime: the last window must start inside the input or its begin padding."""
    nsp = len(kernel)
    strides = _ints(attrs, "strides", nsp, 1)
    dilations = _ints(attrs, "dilations", nsp, 1)
    ceil = int(attrs.get("ceil_mode", 0))
    pads, auto = _auto_pads(ctx, attrs, xs[2:], kernel, strides, dilations)
    full, outs = [], []
    for d, k, s, dl, (lo, hi) in zip(xs[2:], kernel, strides, dilations, pads):
        ek = (k - 1) * dl + 1
        num = d + lo + hi - ek
        if num < 0:
            ctx.fail(f"the window {list(kernel)} (dilations {list(dilations)}) is larger than the padded input "
                     f"{xs}")
        if ceil and auto == "NOTSET":
            o = -(-num // s) + 1
            if (o - 1) * s >= d + lo:
                o -= 1
        else:
            o = num // s + 1
        full.append((lo, hi + max(0, (o - 1) * s + ek - (d + lo + hi))))
        outs.append(o)
    return strides, dilations, pads, full, outs


def _window(ctx, x, mode, kernel, strides, dilations, pads):
    """A window reduction ('max' or 'sum') over the spatial axes: the IR pool, or for dilated windows
    the max/sum of strided slices of the padded input (one per kernel tap)."""
    nsp = len(kernel)
    full_pads = ((0, 0), (0, 0)) + tuple(tuple(p) for p in pads)
    if all(d == 1 for d in dilations):
        return ctx.op("pool", x, mode=mode, window=(1, 1) + tuple(kernel), strides=(1, 1) + tuple(strides),
                      pads=full_pads)
    fill = -np.inf if mode == "max" else 0
    xp = ctx.op("pad", x, _scalar(ctx, fill, x), pads=full_pads) if any(p != (0, 0) for p in full_pads) else x
    ps = ctx.shape(xp)
    outs = [(d - (k - 1) * dl - 1) // s + 1 for d, k, s, dl in zip(ps[2:], kernel, strides, dilations)]
    acc = None
    for taps in itertools.product(*[range(k) for k in kernel]):
        starts = tuple(t * dl for t, dl in zip(taps, dilations))
        sl = ctx.op("slice", xp, starts=(0, 0) + starts,
                    limits=tuple(ps[:2]) + tuple(st + (o - 1) * s + 1 for st, o, s in zip(starts, outs, strides)),
                    strides=(1, 1) + tuple(strides))
        acc = sl if acc is None else ctx.op("max" if mode == "max" else "add", acc, sl)
    return acc


def _pool_kernel(ctx, attrs, nsp):
    kernel = attrs.get("kernel_shape")
    if not kernel or len(kernel) != nsp:
        ctx.fail(f"kernel_shape {kernel} should give the window's {nsp} spatial sizes")
    return tuple(int(k) for k in kernel)


def _check_float(ctx, x):
    if not ctx.dtype(x).startswith("float"):
        ctx.fail(f"pooling a {ctx.dtype(x)} tensor is not supported (the IR pools floats)")


@converter("MaxPool")
def max_pool(ctx, ins, attrs):
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        ctx.fail("the Indices output of MaxPool is not supported; export without return_indices (or use "
                 "only the values)")
    x = ins[0]
    xs, nsp = _spatial(ctx, x)
    _check_float(ctx, x)
    kernel = _pool_kernel(ctx, attrs, nsp)
    strides, dilations, _, full, _ = _pool_geometry(ctx, attrs, xs, kernel)
    return _window(ctx, x, "max", kernel, strides, dilations, full)


def _counts(xs, kernel, strides, dilations, pads, outs, include_pad):
    """The average pool's divisor per output position (separable over the spatial axes): the taps that
    fall on the input (count_include_pad=0) or on the input and its explicit pads (=1, as onnxruntime:
    the ceil_mode overhang never counts)."""
    total = np.ones((), np.float64)
    for d, k, s, dl, (lo, hi), o in zip(xs[2:], kernel, strides, dilations, pads, outs):
        pos = np.arange(o)[:, None] * s - lo + np.arange(k)[None, :] * dl
        ok = (pos >= -lo) & (pos < d + hi) if include_pad else (pos >= 0) & (pos < d)
        total = np.multiply.outer(total, ok.sum(1))
    return total


@converter("AveragePool")
def average_pool(ctx, ins, attrs):
    x = ins[0]
    xs, nsp = _spatial(ctx, x)
    _check_float(ctx, x)
    kernel = _pool_kernel(ctx, attrs, nsp)
    strides, dilations, pads, full, outs = _pool_geometry(ctx, attrs, xs, kernel)
    counts = _counts(xs, kernel, strides, dilations, pads, outs, int(attrs.get("count_include_pad", 0)))
    size = int(np.prod(kernel))
    if all(d == 1 for d in dilations) and np.all(counts == size):
        return ctx.op("pool", x, mode="avg", window=(1, 1) + kernel, strides=(1, 1) + strides,
                      pads=((0, 0), (0, 0)) + tuple(full))
    s = _window(ctx, x, "sum", kernel, strides, dilations, full)
    return ctx.op("div", s, counts.reshape((1, 1) + counts.shape).astype(_np(ctx, x)))


@converter("LpPool")
def lp_pool(ctx, ins, attrs):
    x = ins[0]
    xs, nsp = _spatial(ctx, x)
    _check_float(ctx, x)
    kernel = _pool_kernel(ctx, attrs, nsp)
    strides, dilations, _, full, _ = _pool_geometry(ctx, attrs, xs, kernel)
    p = int(attrs.get("p", 2))
    return _lp(ctx, x, p, lambda y: _window(ctx, y, "sum", kernel, strides, dilations, full))


def _lp(ctx, x, p, total):
    if p == 1:
        return total(ctx.op("abs", x))
    if p == 2:
        return ctx.op("sqrt", total(ctx.op("mul", x, x)))
    if p < 1:
        ctx.fail(f"p={p} (an Lp pool needs p >= 1)")
    s = total(ctx.op("pow", ctx.op("abs", x), _scalar(ctx, p, x)))
    return ctx.op("pow", s, _scalar(ctx, 1.0 / p, x))


def _global(ctx, x, reduce):
    xs, nsp = _spatial(ctx, x)
    _check_float(ctx, x)
    axes = tuple(range(2, 2 + nsp))
    return _reshape(ctx, reduce(x, axes), xs[:2] + (1,) * nsp)


@converter("GlobalAveragePool")
def global_average_pool(ctx, ins, attrs):
    return _global(ctx, ins[0], lambda x, axes: _mean(ctx, x, axes))


@converter("GlobalMaxPool")
def global_max_pool(ctx, ins, attrs):
    return _global(ctx, ins[0], lambda x, axes: ctx.op("reduce_max", x, axes=axes))


@converter("GlobalLpPool")
def global_lp_pool(ctx, ins, attrs):
    p = int(attrs.get("p", 2))
    return _global(ctx, ins[0], lambda x, axes: _lp(ctx, x, p, lambda y: ctx.op("reduce_sum", y, axes=axes)))


# ---- normalisations -------------------------------------------------------------------------------


@converter("BatchNormalization")
def batch_norm(ctx, ins, attrs):
    if int(attrs.get("training_mode", 0)):
        ctx.fail("training_mode=1 (batch statistics) is not supported; export the model in inference mode "
                 "(model.eval())")
    if any(ctx.node.output[1:]):
        ctx.fail("the running mean/variance outputs are training outputs and are not supported; export the "
                 "model in inference mode (model.eval())")
    x, scale, bias, mean, var = ins[:5]
    xs = ctx.shape(x)
    if len(xs) < 2:
        ctx.fail(f"the input has shape {xs}; (N, C, ...) is required")
    eps = float(attrs.get("epsilon", 1e-5))
    shape = _channel_shape(ctx, scale, len(xs))
    dt = _np(ctx, x)
    if all(ctx.is_const(v) for v in (scale, bias, mean, var)):  # y = x * a + b, folded here
        s64, b64, m64, v64 = (np.asarray(v, np.float64) for v in (scale, bias, mean, var))
        a = s64 / np.sqrt(v64 + eps)
        return ctx.op("add", ctx.op("mul", x, a.astype(dt).reshape(shape)),
                      (b64 - m64 * a).astype(dt).reshape(shape))
    scale, bias, mean, var = (_reshape(ctx, _const_like(ctx, v, x), shape) for v in (scale, bias, mean, var))
    inv = ctx.op("rsqrt", ctx.op("add", var, _scalar(ctx, eps, x)))
    y = ctx.op("mul", ctx.op("sub", x, mean), ctx.op("mul", inv, scale))
    return ctx.op("add", y, bias)


def _affine(ctx, y, scale, bias, shape):
    if scale is not None:
        y = ctx.op("mul", y, _reshape(ctx, _const_like(ctx, scale, y), shape))
    if bias is not None:
        y = ctx.op("add", y, _reshape(ctx, _const_like(ctx, bias, y), shape))
    return y


@converter("InstanceNormalization")
def instance_norm(ctx, ins, attrs):
    x, scale, bias = ins[:3]
    xs, nsp = _spatial(ctx, x)
    y, _, _ = _norm(ctx, x, range(2, 2 + nsp), float(attrs.get("epsilon", 1e-5)))
    return _affine(ctx, y, scale, bias, (xs[1],) + (1,) * nsp)


STASH = {1: "float32", 10: "float16", 11: "float64"}  # TensorProto data types


def _stash(ctx, x, stash_type):
    """The dtype statistics are computed in: stash_type's, or x's where that is wider (float32 for a
    float16 input by default)."""
    st = STASH.get(stash_type)
    if st is None:
        ctx.fail(f"stash_type {stash_type} is not supported (1: float32, 10: float16, 11: float64)")
    dt = ctx.dtype(x)
    if not dt.startswith("float"):
        ctx.fail(f"normalising a {dt} tensor is not supported")
    return max(st, dt, key=lambda d: np.dtype(d).itemsize)


@converter("LayerNormalization")
def layer_norm(ctx, ins, attrs):
    x, scale, bias = ins[0], ins[1], _arg(ins, 2)
    xs = ctx.shape(x)
    r = len(xs)
    axis = int(attrs.get("axis", -1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        ctx.fail(f"axis {attrs.get('axis')} is out of range for an input of rank {r}")
    dt = ctx.dtype(x)
    st = _stash(ctx, x, int(attrs.get("stash_type", 1)))
    y, mean, inv = _norm(ctx, _cast(ctx, x, st), range(axis, r), float(attrs.get("epsilon", 1e-5)))
    # scale and bias broadcast (NumPy-style, right-aligned) against the normalised trailing axes
    return [_affine_broadcast(ctx, _cast(ctx, y, dt), scale, bias), mean, inv]


def _affine_broadcast(ctx, y, scale, bias):
    if scale is not None:
        y = ctx.op("mul", y, _const_like(ctx, scale, y))
    if bias is not None:
        y = ctx.op("add", y, _const_like(ctx, bias, y))
    return y


@converter("GroupNormalization")
def group_norm(ctx, ins, attrs):
    """Opset 18: scale and bias per group (num_groups,); opset 21: per channel (C,)."""
    x, scale, bias = ins[:3]
    xs, nsp = _spatial(ctx, x)
    g = int(attrs.get("num_groups", 0))
    n, c = xs[:2]
    if g < 1 or c % g:
        ctx.fail(f"num_groups={g} does not divide the {c} channels")
    dt = ctx.dtype(x)
    st = _stash(ctx, x, int(attrs.get("stash_type", 1))) if ctx.opset >= 21 else dt
    xr = _reshape(ctx, _cast(ctx, x, st), (n, g, int(np.prod(xs[1:], dtype=np.int64)) // g))
    y, _, _ = _norm(ctx, xr, (2,), float(attrs.get("epsilon", 1e-5)))
    y = _cast(ctx, y, dt)
    want = c if ctx.opset >= 21 else g
    for v in (scale, bias):
        if int(np.prod(ctx.shape(v))) != want:
            ctx.fail(f"scale/bias have shape {ctx.shape(v)}; GroupNormalization-{21 if ctx.opset >= 21 else 18} "
                     f"takes ({want},) (opset 18: one per group, opset 21: one per channel)")
    if ctx.opset >= 21:
        return _affine(ctx, _reshape(ctx, y, xs), scale, bias, (c,) + (1,) * nsp)
    return _reshape(ctx, _affine(ctx, y, scale, bias, (g, 1)), xs)


@converter("LRN")
def lrn(ctx, ins, attrs):
    x = ins[0]
    xs, nsp = _spatial(ctx, x)
    _check_float(ctx, x)
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    r = len(xs)
    sq = ctx.op("pool", ctx.op("mul", x, x), mode="sum", window=(1, size) + (1,) * nsp, strides=(1,) * r,
                pads=((0, 0), ((size - 1) // 2, size // 2)) + ((0, 0),) * nsp)
    den = ctx.op("add", ctx.op("mul", sq, _scalar(ctx, alpha / size, x)), _scalar(ctx, bias, x))
    den = ctx.op("pow", den, _scalar(ctx, beta, x))
    return ctx.op("div", x, den)


# ---- Resize -------------------------------------------------------------------------------------


def _orig_coords(ctx, ctm, n_in, n_out, scale):
    """Each output index's coordinate in the input (float32 arithmetic, as onnxruntime)."""
    f = np.float32
    xr = np.arange(n_out, dtype=f)
    scale = f(scale)
    if ctm == "half_pixel":
        return (xr + f(0.5)) / scale - f(0.5)
    if ctm == "pytorch_half_pixel":
        return (xr + f(0.5)) / scale - f(0.5) if n_out > 1 else np.zeros(n_out, f)
    if ctm == "asymmetric":
        return xr / scale
    if ctm == "align_corners":
        return xr * f(n_in - 1) / f(n_out - 1) if n_out > 1 else np.zeros(n_out, f)
    if ctm == "tf_half_pixel_for_nn":
        return (xr + f(0.5)) / scale
    if ctm == "half_pixel_symmetric":
        adj = f(n_out) / (scale * f(n_in))
        off = f(n_in) / f(2) * (f(1) - adj)
        return off + (xr + f(0.5)) / scale - f(0.5)
    ctx.fail(f"coordinate_transformation_mode {ctm!r} is not supported (half_pixel, pytorch_half_pixel, "
             "asymmetric, align_corners, tf_half_pixel_for_nn, half_pixel_symmetric are)")


def _nearest(ctx, xo, mode):
    fl = np.floor(xo)
    if mode == "round_prefer_floor":
        idx = np.where(xo == fl + np.float32(0.5), fl, np.trunc(xo + np.copysign(np.float32(0.5), xo)))
    elif mode == "round_prefer_ceil":
        idx = np.trunc(xo + np.copysign(np.float32(0.5), xo))  # std::round: half away from zero
    elif mode == "floor":
        idx = fl
    elif mode == "ceil":
        idx = np.ceil(xo)
    else:
        ctx.fail(f"nearest_mode {mode!r} is not one of round_prefer_floor, round_prefer_ceil, floor, ceil")
    return idx.astype(np.int64)


def _cubic_coeffs(s, a):
    s = np.abs(s).astype(np.float32)
    a = np.float32(a)
    one, two = np.float32(1), np.float32(2)
    return [((a * (s + one) - 5 * a) * (s + one) + 8 * a) * (s + one) - 4 * a,
            ((a + 2) * s - (a + 3)) * s * s + one,
            ((a + 2) * (one - s) - (a + 3)) * (one - s) * (one - s) + one,
            ((a * (two - s) - 5 * a) * (two - s) + 8 * a) * (two - s) - 4 * a]


def _resize_taps(ctx, attrs, mode, n_in, n_out, scale):
    """[(indices, weights or None)] along one axis: output = sum of x[indices] * weights."""
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    xo = _orig_coords(ctx, ctm, n_in, n_out, scale)
    if mode == "nearest":
        idx = np.clip(_nearest(ctx, xo, attrs.get("nearest_mode", "round_prefer_floor")), 0, n_in - 1)
        return [(idx, None)]
    if mode == "linear":
        xo = np.clip(xo, np.float32(0), np.float32(n_in - 1))
        i0 = np.minimum(xo.astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = (xo - i0.astype(np.float32)).astype(np.float32)
        return [(i0, np.float32(1) - w1), (i1, w1)]
    if mode == "cubic":
        fl = np.floor(xo)
        coeffs = _cubic_coeffs(xo - fl, attrs.get("cubic_coeff_a", -0.75))
        idx = [fl.astype(np.int64) + k for k in (-1, 0, 1, 2)]
        if int(attrs.get("exclude_outside", 0)):
            coeffs = [np.where((i >= 0) & (i < n_in), c, np.float32(0)) for i, c in zip(idx, coeffs)]
            tot = sum(coeffs)
            coeffs = [c / tot for c in coeffs]
        return [(np.clip(i, 0, n_in - 1), c) for i, c in zip(idx, coeffs)]
    ctx.fail(f"mode {mode!r} is not one of nearest, linear, cubic")


def _apply_taps(ctx, x, axis, taps):
    r = len(ctx.shape(x))
    n_in = ctx.shape(x)[axis]
    merged: dict[bytes, tuple] = {}  # taps with the same index map add their weights
    for idx, w in taps:
        w = np.ones(len(idx), np.float32) if w is None else np.asarray(w, np.float32)
        key = idx.tobytes()
        merged[key] = (idx, merged[key][1] + w) if key in merged else (idx, w)
    taps = [(i, w) for i, w in merged.values() if np.any(w != 0)]
    if len(taps) == 1 and np.all(taps[0][1] == 1) and np.array_equal(taps[0][0], np.arange(n_in)):
        return x  # this axis is unchanged
    dt = _np(ctx, x)
    y = None
    for idx, w in taps:
        t = ctx.op("take", x, idx.astype(np.int64), axis=axis)
        if not np.all(w == 1):
            t = ctx.op("mul", t, w.astype(dt).reshape((-1,) + (1,) * (r - 1 - axis)))
        y = t if y is None else ctx.op("add", y, t)
    return y


def _resize(ctx, x, attrs, scales, sizes):
    xs = ctx.shape(x)
    r = len(xs)
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_crop_and_resize":
        ctx.fail("coordinate_transformation_mode tf_crop_and_resize is not supported")
    if mode not in ("nearest", "linear", "cubic"):
        ctx.fail(f"mode {mode!r} is not one of nearest, linear, cubic")
    if mode != "nearest" and not ctx.dtype(x).startswith("float"):
        ctx.fail(f"{mode} resizing of a {ctx.dtype(x)} tensor is not supported")
    axes = [int(a) + r if int(a) < 0 else int(a) for a in (attrs.get("axes") or range(r))]
    f32 = np.float32
    scale = [f32(1)] * r
    out = list(xs)
    if sizes is not None:
        sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        if len(sizes) != len(axes):
            ctx.fail(f"sizes {sizes} do not give one size per resized axis {axes}")
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for a, n in zip(axes, sizes):
                out[a], scale[a] = n, f32(n) / f32(xs[a])
        elif policy in ("not_larger", "not_smaller"):
            ratios = [f32(n) / f32(xs[a]) for a, n in zip(axes, sizes)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out[a], scale[a] = int(np.round(s * f32(xs[a]))), s
        else:
            ctx.fail(f"keep_aspect_ratio_policy {policy!r} is not one of stretch, not_larger, not_smaller")
    else:
        scales = np.asarray(scales, np.float32).reshape(-1)
        if len(scales) != len(axes):
            ctx.fail(f"scales {list(scales)} do not give one scale per resized axis {axes}")
        for a, s in zip(axes, scales):
            if s <= 0:
                ctx.fail(f"scale {s} must be positive")
            out[a], scale[a] = int(f32(xs[a]) * s), f32(s)
    if int(attrs.get("antialias", 0)) and mode != "nearest" and any(s < 1 for s in scale):
        ctx.fail("antialias=1 when downscaling is not supported; resize without antialias")
    for a in range(r):
        if out[a] < 1:
            ctx.fail(f"the output size along axis {a} is {out[a]}")
    ctx.check_size(out, "the resized output")
    y = x
    for a in range(r):
        y = _apply_taps(ctx, y, a, _resize_taps(ctx, attrs, mode, xs[a], out[a], scale[a]))
    if ctx.is_const(y):
        y = ctx.value(y)
    return y


def _nonempty_const(ctx, v, what):
    if v is None:
        return None
    v = ctx.const(v, what)
    return v if v.size else None


@converter("Resize")
def resize(ctx, ins, attrs):
    x = ins[0]
    scales = _nonempty_const(ctx, _arg(ins, 2), "Resize's scales")
    sizes = _nonempty_const(ctx, _arg(ins, 3), "Resize's sizes")
    if (scales is None) == (sizes is None):
        ctx.fail("Resize needs exactly one of scales and sizes")
    return _resize(ctx, x, attrs, scales, sizes)


# ---- quantisation ---------------------------------------------------------------------------------

QRANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767),
          "int32": (-2 ** 31, 2 ** 31 - 1), "uint4": (0, 15), "int4": (-8, 7), "uint2": (0, 3), "int2": (-2, 1)}


def _onnx_dtype_name(ctx, elem_type: int) -> str:
    from onnx import TensorProto
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        ctx.fail(f"output_dtype {elem_type} is not an ONNX tensor type")


def _qparam(ctx, v, xs, attrs, what):
    """A scale or zero point shaped to broadcast against x: per tensor, per axis or blocked."""
    vs = ctx.shape(v)
    if len(vs) == 0 or int(np.prod(vs)) == 1 and len(vs) <= 1:
        return _reshape(ctx, v, ())
    r = len(xs)
    axis = int(attrs.get("axis", 1))
    axis = axis + r if axis < 0 else axis
    block = int(attrs.get("block_size", 0))
    if block:
        if not ctx.is_const(v):
            ctx.fail(f"a blocked {what} must be a constant")
        if block < 1 or not 0 <= axis < r or len(vs) != r or vs[axis] * block < xs[axis] or \
                (vs[axis] - 1) * block >= xs[axis]:
            ctx.fail(f"a blocked {what} of shape {vs} with block_size {block} does not cover an input of shape "
                     f"{xs} on axis {axis}")
        v = np.repeat(np.asarray(v), block, axis=axis)
        return v[tuple(slice(0, xs[axis]) if i == axis else slice(None) for i in range(r))]
    if len(vs) != 1 or vs[0] != xs[axis]:
        ctx.fail(f"the {what} has shape {vs}; per-axis quantisation takes ({xs[axis]},) for axis {axis}")
    return _reshape(ctx, v, (vs[0],) + (1,) * (r - 1 - axis))


def _qtype_of(ctx, v, default="uint8"):
    if v is None:
        return default
    name = np.dtype(np.asarray(v).dtype).name if ctx.is_const(v) else ctx.dtype(v)
    return name


@converter("DequantizeLinear")
def dequantize_linear(ctx, ins, attrs):
    """(x - zero_point) * scale. 8/16-bit quantised values are carried as int32 in the IR (it has no
    narrower integers); a QuantizeLinear here yields such an int32 tensor."""
    x, scale, zp = ins[0], ins[1], _arg(ins, 2)
    xs = ctx.shape(x)
    if not ctx.dtype(scale).startswith("float"):
        ctx.fail(f"a {ctx.dtype(scale)} scale is not supported (float16/float32 are)")
    out = ctx.dtype(scale)
    if all(ctx.is_const(v) for v in (x, scale, zp) if v is not None):  # a weight (onnx's reference
        x, s = np.asarray(x), np.asarray(scale)  # evaluator has no DequantizeLinear before opset 19)
        z = 0 if zp is None else _qparam(ctx, np.asarray(zp).astype(np.float64), xs, attrs, "zero point")
        y = (x.astype(np.float64) - z) * _qparam(ctx, s.astype(np.float64), xs, attrs, "scale")
        return y.astype(out if not attrs.get("output_dtype") else _onnx_dtype_name(ctx, attrs["output_dtype"]))
    if attrs.get("output_dtype"):
        out = _onnx_dtype_name(ctx, attrs["output_dtype"])
        if out not in ("float16", "float32", "float64"):
            ctx.fail(f"output_dtype {out} is not supported (float16/float32 are)")
    y = _cast(ctx, x, out)
    if zp is not None:
        z = _qparam(ctx, _cast(ctx, zp, out) if not ctx.is_const(zp) else np.asarray(zp).astype(out), xs, attrs,
                    "zero point")
        if not (ctx.is_const(z) and not np.any(z)):
            y = ctx.op("sub", y, z)
    s = _qparam(ctx, _cast(ctx, scale, out), xs, attrs, "scale")
    return ctx.op("mul", y, s)


@converter("QuantizeLinear")
def quantize_linear(ctx, ins, attrs):
    """saturate(round_half_even(x / scale) + zero_point), carried as an int32 tensor (see DequantizeLinear)."""
    x, scale, zp = ins[0], ins[1], _arg(ins, 2)
    xs = ctx.shape(x)
    qt = _qtype_of(ctx, zp)
    if attrs.get("output_dtype"):
        qt = _onnx_dtype_name(ctx, attrs["output_dtype"])
    if qt not in QRANGE:
        ctx.fail(f"quantising to {qt} is not supported (integer types are; float8 is not)")
    if not ctx.dtype(x).startswith("float"):
        ctx.fail(f"quantising a {ctx.dtype(x)} tensor is not supported")
    dt = ctx.dtype(scale)  # the division's precision: the scale's type unless `precision` says
    if attrs.get("precision"):
        dt = _onnx_dtype_name(ctx, attrs["precision"])
    if dt not in ("float16", "float32", "float64"):
        ctx.fail(f"a division in {dt} is not supported (float16/float32 are)")
    s = _qparam(ctx, _cast(ctx, scale, dt), xs, attrs, "scale")
    lo, hi = QRANGE[qt]
    if all(ctx.is_const(v) for v in (x, scale, zp) if v is not None):  # see DequantizeLinear
        z = 0 if zp is None else _qparam(ctx, np.asarray(zp).astype(dt), xs, attrs, "zero point")
        y = np.clip(np.round(np.asarray(x).astype(dt) / s) + z, lo, hi)
        return y.astype(qt if qt in ("uint8", "int8", "uint16", "int16", "int32") else "int32")
    y = ctx.op("round", ctx.op("div", _cast(ctx, x, dt), s), mode="half_even")
    if zp is not None:
        z = _qparam(ctx, np.asarray(zp).astype(dt) if ctx.is_const(zp) else _cast(ctx, zp, dt), xs, attrs,
                    "zero point")
        if not (ctx.is_const(z) and not np.any(z)):
            y = ctx.op("add", y, z)
    y = ctx.op("clamp", y, lo=float(lo), hi=float(min(hi, 2147483520)))  # the largest float32 below 2**31
    return ctx.op("cast", y, to="int32")
