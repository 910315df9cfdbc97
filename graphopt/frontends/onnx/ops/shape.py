"""Shape and data-movement ONNX operators. Shapes are static here: every shape, axis, index list or
pad amount such an operator takes must be known while importing (the importer folds shape
arithmetic to constants); a runtime one is refused, naming the input."""
from __future__ import annotations

import math

import numpy as np

from ....ir import Value
from ..registry import converter
from .elementwise import along, cast, norm_axis, onnx_dtype, permute, reshape, scalar


def _ints(ctx, x, what: str) -> list[int]:
    return [int(v) for v in ctx.const(x, what).reshape(-1)]


def _attr_or_input(ctx, ins, attrs, index: int, name: str, what: str):
    """A list of ints given as attribute `name` (older opsets) or as input `index` (newer ones); None
    where neither is given."""
    if name in attrs and attrs[name] is not None:
        return [int(v) for v in np.asarray(attrs[name]).reshape(-1)]
    if len(ins) > index and ins[index] is not None:
        return _ints(ctx, ins[index], what)
    return None


def _prod(xs) -> int:
    return math.prod(int(d) for d in xs)  # Python ints: a product of huge dims does not wrap around


@converter("Shape")
def shape(ctx, ins, attrs):
    s = np.array(ctx.shape(ins[0]), np.int64)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return s[start:end]


@converter("Size")
def size(ctx, ins, attrs):
    return np.array(_prod(ctx.shape(ins[0])), np.int64)


@converter("Reshape")
def reshape_(ctx, ins, attrs):
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        target = _ints(ctx, ins[1], "Reshape's shape")
    elif "shape" in attrs:
        target = [int(d) for d in attrs["shape"]]
    else:
        ctx.fail("it has no shape")
    shape_in = ctx.shape(x)
    allowzero = attrs.get("allowzero", 0)
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape_in):
                ctx.fail(f"shape {target} copies dimension {i} (a 0) of an input of rank {len(shape_in)}")
            out.append(shape_in[i])
        else:
            out.append(int(d))
    if out.count(-1) > 1 or any(d < -1 for d in out):
        ctx.fail(f"shape {target} is not a valid Reshape target")
    if -1 in out:
        known = _prod([d for d in out if d != -1])
        total = _prod(shape_in)
        if known == 0 or total % known:
            ctx.fail(f"an input of shape {shape_in} cannot be reshaped to {target}")
        out[out.index(-1)] = total // known
    if _prod(out) != _prod(shape_in):
        ctx.fail(f"an input of shape {shape_in} cannot be reshaped to {tuple(out)}")
    return reshape(ctx, x, out)


@converter("Flatten")
def flatten(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    axis = attrs.get("axis", 1)
    if not -len(s) <= axis <= len(s):
        ctx.fail(f"axis {axis} is out of range for a tensor of rank {len(s)}")
    if axis < 0:
        axis += len(s)
    return reshape(ctx, x, (_prod(s[:axis]), _prod(s[axis:])))


@converter("Squeeze")
def squeeze(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    axes = _attr_or_input(ctx, ins, attrs, 1, "axes", "Squeeze's axes")
    if axes is None:
        axes = [i for i, d in enumerate(s) if d == 1]
    axes = {norm_axis(ctx, a, len(s)) for a in axes}
    if any(s[a] != 1 for a in axes):
        ctx.fail(f"axes {sorted(axes)} of a tensor of shape {s} are not all 1")
    return reshape(ctx, x, [d for i, d in enumerate(s) if i not in axes])


@converter("Unsqueeze")
def unsqueeze(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    axes = _attr_or_input(ctx, ins, attrs, 1, "axes", "Unsqueeze's axes")
    if axes is None:
        ctx.fail("it has no axes")
    rank = len(s) + len(axes)
    axes = sorted(norm_axis(ctx, a, rank) for a in axes)
    if len(set(axes)) != len(axes):
        ctx.fail(f"axes {axes} repeat an axis")
    out, rest = [], iter(s)
    for i in range(rank):
        out.append(1 if i in axes else next(rest))
    return reshape(ctx, x, out)


@converter("Transpose")
def transpose(ctx, ins, attrs):
    x = ins[0]
    rank = len(ctx.shape(x))
    perm = attrs.get("perm") or list(range(rank))[::-1]
    if sorted(perm) != list(range(rank)):
        ctx.fail(f"perm {perm} is not a permutation of the input's {rank} axes")
    return permute(ctx, x, perm)


@converter("Concat")
def concat(ctx, ins, attrs):
    xs = [x for x in ins if x is not None]
    if "axis" not in attrs:
        ctx.fail("it has no axis")
    axis = norm_axis(ctx, attrs["axis"], len(ctx.shape(xs[0])))
    xs = [x for x in xs if ctx.shape(x)[axis] != 0] or xs[:1]
    if len(xs) == 1:
        return xs[0]
    return ctx.op("concat", *xs, axis=axis)


@converter("Split")
def split(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    axis = norm_axis(ctx, attrs.get("axis", 0), len(s))
    d = s[axis]
    n = len(ctx.node.output)
    sizes = _attr_or_input(ctx, ins, attrs, 1, "split", "Split's split")
    if sizes is None:
        parts = attrs.get("num_outputs", n)
        chunk = -(-d // parts)  # the last part is smaller where d is not a multiple (opset 18)
        sizes = [chunk] * (parts - 1) + [d - chunk * (parts - 1)]
        if "num_outputs" not in attrs and d % parts:
            ctx.fail(f"a dimension of {d} does not split evenly into {parts} outputs; give split sizes")
    if len(sizes) != n or sum(sizes) != d or any(z < 0 for z in sizes):
        ctx.fail(f"split sizes {sizes} do not divide a dimension of {d} into {n} outputs")
    outs, start = [], 0
    for z in sizes:
        outs.append(along(ctx, x, axis, start, start + z))
        start += z
    return outs


def _slice_indices(start: int, end: int, step: int, d: int) -> np.ndarray:
    """The indices ONNX's Slice takes on an axis of d: negative start/end count from the end, then start is
    clamped into [0, d] ([0, d - 1] stepping backwards) and end into [0, d] ([-1, d - 1] backwards)."""
    if d == 0:
        return np.zeros(0, np.int64)
    start, end = start + d if start < 0 else start, end + d if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), d), min(max(end, 0), d)
    else:
        start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
    return np.arange(start, end, step, dtype=np.int64)


@converter("Slice")
def slice_(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    if len(ins) == 1:  # Slice-1: attributes
        starts, ends = list(attrs.get("starts", [])), list(attrs.get("ends", []))
        axes, steps = attrs.get("axes"), None
    else:
        starts = _ints(ctx, ins[1], "Slice's starts")
        ends = _ints(ctx, ins[2], "Slice's ends")
        axes = _ints(ctx, ins[3], "Slice's axes") if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ctx, ins[4], "Slice's steps") if len(ins) > 4 and ins[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        ctx.fail("starts, ends, axes and steps differ in length")
    rank = len(s)
    lo, hi, st, flip = [0] * rank, list(s), [1] * rank, []
    seen = set()
    for b, e, a, step in zip(starts, ends, axes, steps):
        a = norm_axis(ctx, a, rank)
        if a in seen:
            ctx.fail(f"axis {a} is sliced twice")
        seen.add(a)
        if step == 0:
            ctx.fail("a step of 0")
        idx = _slice_indices(b, e, step, s[a])
        if step < 0:
            flip.append(a)
            idx = s[a] - 1 - idx
        if idx.size == 0:
            lo[a], hi[a], st[a] = 0, 0, 1
        else:
            lo[a], hi[a], st[a] = int(idx[0]), int(idx[-1]) + 1, abs(step)
    if flip:
        x = ctx.op("reverse", x, axes=tuple(sorted(flip)))
    if (lo, hi, st) == ([0] * rank, list(s), [1] * rank):
        return x
    return ctx.op("slice", x, starts=tuple(lo), limits=tuple(hi), strides=tuple(st))


def _normalize_index(ctx, idx, n):
    """Negative indices counted from the end: idx + n where idx < 0 (a constant or ops)."""
    if ctx.is_const(idx):
        a = np.asarray(idx).astype(np.int64)
        if a.size and (a.min() < -n or a.max() >= n):
            ctx.fail(f"an index is out of range for a dimension of {n}")
        return np.where(a < 0, a + n, a)
    dt = ctx.dtype(idx)
    if dt not in ("int32", "int64"):
        ctx.fail(f"indices of dtype {dt} (ONNX takes int32/int64)")
    return ctx.op("select", ctx.op("lt", idx, scalar(0, dt)), ctx.op("add", idx, scalar(n, dt)), idx)


@converter("Gather")
def gather(ctx, ins, attrs):
    x, idx = ins
    s = ctx.shape(x)
    axis = norm_axis(ctx, attrs.get("axis", 0), len(s))
    n = s[axis]
    idx = _normalize_index(ctx, idx, n)
    if ctx.is_const(idx):
        flat = idx.reshape(-1)
        if idx.ndim == 0:  # x[..., i, ...]: a static slice
            return reshape(ctx, along(ctx, x, axis, int(idx), int(idx) + 1), s[:axis] + s[axis + 1:])
        if idx.ndim == 1 and flat.size >= 1:  # an arithmetic progression: a strided slice
            step = int(flat[1] - flat[0]) if flat.size > 1 else 1
            if step >= 1 and np.array_equal(flat, flat[0] + step * np.arange(flat.size)):
                return along(ctx, x, axis, int(flat[0]), int(flat[-1]) + 1, step)
        return ctx.op("take", x, idx.astype(np.int64), axis=axis)
    return ctx.op("take", x, idx, axis=axis)


def _strides(shape) -> np.ndarray:
    """Row-major strides (in elements) of a shape."""
    out = np.ones(len(shape), np.int64)
    for i in range(len(shape) - 2, -1, -1):
        out[i] = out[i + 1] * shape[i + 1]
    return out


@converter("GatherElements")
def gather_elements(ctx, ins, attrs):
    """out[i, j, k] = x[idx[i, j, k], j, k] (axis 0): a take from the flattened x at linear offsets."""
    x, idx = ins
    s, si = ctx.shape(x), ctx.shape(idx)
    rank = len(s)
    axis = norm_axis(ctx, attrs.get("axis", 0), rank)
    if len(si) != rank or any(si[d] > s[d] for d in range(rank) if d != axis):
        ctx.fail(f"indices of shape {si} do not fit data of shape {s} (axis {axis})")
    strides = _strides(s)
    coords = np.indices(si, dtype=np.int64)
    base = np.zeros(si, np.int64)
    for d in range(rank):
        if d != axis:
            base += coords[d] * strides[d]
    idx = _normalize_index(ctx, idx, s[axis])
    flat = reshape(ctx, x, (_prod(s),))
    if ctx.is_const(idx):
        return ctx.op("take", flat, (idx * strides[axis] + base).astype(np.int64), axis=0)
    dt = ctx.dtype(idx)
    lin = ctx.op("add", ctx.op("mul", idx, scalar(strides[axis], dt)), base.astype(dt))
    return ctx.op("take", flat, lin, axis=0)


@converter("GatherND")
def gather_nd(ctx, ins, attrs):
    """x[b..., idx[b..., m..., :], ...]: a take from x with its batch and indexed axes flattened into one,
    at linear offsets computed from the index tuples."""
    x, idx = ins
    s, si = ctx.shape(x), ctx.shape(idx)
    b = attrs.get("batch_dims", 0)
    if not si or si[-1] < 1:
        ctx.fail(f"indices of shape {si} (the last dimension indexes x: it must be at least 1)")
    k = si[-1]
    if b < 0 or b + k > len(s) or tuple(si[:b]) != tuple(s[:b]):
        ctx.fail(f"indices of shape {si} with batch_dims {b} do not fit data of shape {s}")
    prefix = s[:b + k]
    strides = _strides(prefix)
    lead = si[:-1]
    coords = np.indices(lead, dtype=np.int64) if lead else np.zeros((0,), np.int64)
    base = np.zeros(lead, np.int64)
    for d in range(b):
        base = base + coords[d] * strides[d]
    flat = reshape(ctx, x, (_prod(prefix),) + tuple(s[b + k:]))
    dims = np.array(s[b:b + k], np.int64)
    if ctx.is_const(idx):
        a = np.asarray(idx).astype(np.int64)
        if a.size and ((a < -dims).any() or (a >= dims).any()):
            ctx.fail("an index is out of range")
        a = np.where(a < 0, a + dims, a)
        lin = (a * strides[b:]).sum(axis=-1) + base
        return ctx.op("take", flat, lin.astype(np.int64), axis=0)
    dt = ctx.dtype(idx)
    if dt not in ("int32", "int64"):
        ctx.fail(f"indices of dtype {dt} (ONNX takes int64)")
    norm = ctx.op("select", ctx.op("lt", idx, scalar(0, dt)), ctx.op("add", idx, dims.astype(dt)), idx)
    weighted = ctx.op("mul", norm, strides[b:].astype(dt))
    lin = ctx.op("reduce_sum", weighted, axes=(len(si) - 1,))
    if b:
        lin = ctx.op("add", lin, base.astype(dt))
    return ctx.op("take", flat, lin, axis=0)


@converter("Tile")
def tile(ctx, ins, attrs):
    """x [d0, d1, ...] broadcast to [r0, d0, r1, d1, ...], then merged to [r0 * d0, r1 * d1, ...]."""
    x = ins[0]
    s = ctx.shape(x)
    reps = _ints(ctx, ins[1], "Tile's repeats")
    if len(reps) != len(s) or any(r < 0 for r in reps):
        ctx.fail(f"repeats {reps} do not fit an input of rank {len(s)}")
    if all(r == 1 for r in reps):
        return x
    spread = tuple(d for r, n in zip(reps, s) for d in (r, n))
    y = ctx.op("broadcast", x, shape=spread, dims=tuple(range(1, 2 * len(s), 2)))
    return reshape(ctx, y, [r * n for r, n in zip(reps, s)])


PAD_MODES = ("constant", "reflect", "edge", "wrap")


@converter("Pad")
def pad(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    rank = len(s)
    dt = ctx.dtype(x)
    mode = attrs.get("mode", "constant")
    if mode not in PAD_MODES:
        ctx.fail(f"mode {mode!r} is not one of {', '.join(PAD_MODES)}")
    if "pads" in attrs:  # Pad-2: attributes
        pads, value = list(attrs["pads"]), scalar(attrs.get("value", 0.0), dt)
        axes = None
    else:
        pads = _ints(ctx, ins[1], "Pad's pads")
        value = ins[2] if len(ins) > 2 and ins[2] is not None else scalar(0, dt)
        axes = _ints(ctx, ins[3], "Pad's axes") if len(ins) > 3 and ins[3] is not None else None
    axes = list(range(rank)) if axes is None else [norm_axis(ctx, a, rank) for a in axes]
    if len(pads) != 2 * len(axes):
        ctx.fail(f"pads {pads} do not have two entries for each of {len(axes)} axes")
    lo_hi = {a: (pads[i], pads[i + len(axes)]) for i, a in enumerate(axes)}
    if ctx.shape(value) not in ((), (1,)):
        ctx.fail(f"a constant_value of shape {ctx.shape(value)} (it must be a scalar)")
    value = reshape(ctx, value, ())
    for a, (lo, hi) in lo_hi.items():  # negative pads crop first
        if lo < 0 or hi < 0:
            d = ctx.shape(x)[a]
            start, stop = max(0, -lo), d - max(0, -hi)
            if start > stop:
                ctx.fail(f"pads {pads} crop more than the {d} elements of axis {a}")
            x = along(ctx, x, a, start, stop)
    lo_hi = {a: (max(lo, 0), max(hi, 0)) for a, (lo, hi) in lo_hi.items() if lo > 0 or hi > 0}
    if not lo_hi:
        return x
    if mode == "constant":
        pads = tuple(lo_hi.get(a, (0, 0)) for a in range(rank))
        if ctx.is_const(value):
            return ctx.op("pad", x, np.asarray(value, dt), pads=pads)
        # a runtime padding value: zeros padded in, then the value selected where the padding is
        y = ctx.op("pad", x, scalar(0, dt), pads=pads)
        inside = np.pad(np.ones(ctx.shape(x), bool), pads, constant_values=False)
        return ctx.op("select", inside, y, value)
    for a, (lo, hi) in sorted(lo_hi.items()):
        d = ctx.shape(x)[a]
        parts = []
        if mode == "reflect":
            if lo > d - 1 or hi > d - 1:
                ctx.fail(f"reflect padding of {max(lo, hi)} on an axis of {d} (at most {d - 1})")
            if lo:
                parts.append(ctx.op("reverse", along(ctx, x, a, 1, lo + 1), axes=(a,)))
            parts.append(x)
            if hi:
                parts.append(ctx.op("reverse", along(ctx, x, a, d - 1 - hi, d - 1), axes=(a,)))
        elif mode == "edge":
            if d == 0:
                ctx.fail(f"edge padding of an empty axis {a}")
            for side, n in (("lo", lo), ("x", None), ("hi", hi)):
                if side == "x":
                    parts.append(x)
                elif n:
                    edge = along(ctx, x, a, 0, 1) if side == "lo" else along(ctx, x, a, d - 1, d)
                    shape = list(ctx.shape(x))
                    shape[a] = n
                    parts.append(ctx.op("broadcast", edge, shape=tuple(shape), dims=tuple(range(rank))))
        else:  # wrap
            if lo > d or hi > d:
                ctx.fail(f"wrap padding of {max(lo, hi)} on an axis of {d} (at most {d})")
            if lo:
                parts.append(along(ctx, x, a, d - lo, d))
            parts.append(x)
            if hi:
                parts.append(along(ctx, x, a, 0, hi))
        x = ctx.op("concat", *parts, axis=a) if len(parts) > 1 else parts[0]
    return x


@converter("ConstantOfShape")
def constant_of_shape(ctx, ins, attrs):
    shape = tuple(_ints(ctx, ins[0], "ConstantOfShape's shape"))
    ctx.check_size(shape, "the constant it makes")
    value = attrs.get("value")
    value = np.zeros((), np.float32) if value is None else np.asarray(value).reshape(())
    return np.full(shape, value, value.dtype)


@converter("Constant")
def constant(ctx, ins, attrs):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            v = attrs[key]
            return np.asarray(v, np.float32 if "float" in key else np.int64 if "int" in key else None)
    ctx.fail("a Constant without a numeric value (sparse and string constants are not supported)")


@converter("Range")
def range_(ctx, ins, attrs):
    start, limit, delta = (ctx.const(v, f"Range's {w} (its length must be known while importing)")
                           for v, w in zip(ins, ("start", "limit", "delta")))
    for v, w in ((start, "start"), (limit, "limit"), (delta, "delta")):
        if v.size != 1:
            ctx.fail(f"Range's {w} has {v.size} elements; it must be a scalar")
    a, b, d = (float(v.reshape(())) for v in (start, limit, delta))
    if d == 0 or not all(map(math.isfinite, (a, b, d))):
        ctx.fail(f"Range({a:g}, {b:g}, {d:g}) has no finite length (delta must be non-zero, the bounds finite)")
    ctx.check_size((max(0, math.ceil((b - a) / d)),), "the range it makes")
    return np.arange(start.reshape(()), limit.reshape(()), delta.reshape(()), dtype=start.dtype)


@converter("EyeLike")
def eye_like(ctx, ins, attrs):
    s = ctx.shape(ins[0])
    if len(s) != 2:
        ctx.fail(f"an input of rank {len(s)} (EyeLike takes 2-D tensors)")
    dt = onnx_dtype(ctx, attrs["dtype"]) if "dtype" in attrs else ctx.dtype(ins[0])
    return np.eye(s[0], s[1], attrs.get("k", 0), dtype=np.dtype(dt))


def _check_4d(ctx, x, b):
    s = ctx.shape(x)
    if len(s) != 4:
        ctx.fail(f"an input of rank {len(s)} (it takes N, C, H, W tensors)")
    if b < 1:
        ctx.fail(f"blocksize {b}")
    return s


@converter("DepthToSpace")
def depth_to_space(ctx, ins, attrs):
    x, b = ins[0], attrs.get("blocksize", 0)
    n, c, h, w = _check_4d(ctx, x, b)
    if c % (b * b):
        ctx.fail(f"{c} channels are not a multiple of blocksize^2 = {b * b}")
    mode = attrs.get("mode", "DCR")
    if mode == "DCR":
        y = permute(ctx, reshape(ctx, x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    elif mode == "CRD":
        y = permute(ctx, reshape(ctx, x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    else:
        ctx.fail(f"mode {mode!r} is not DCR or CRD")
    return reshape(ctx, y, (n, c // (b * b), h * b, w * b))


@converter("SpaceToDepth")
def space_to_depth(ctx, ins, attrs):
    x, b = ins[0], attrs.get("blocksize", 0)
    n, c, h, w = _check_4d(ctx, x, b)
    if h % b or w % b:
        ctx.fail(f"spatial dims {h}x{w} are not multiples of blocksize {b}")
    mode = attrs.get("mode", "DCR")  # the mode attribute came at opset 28; before it, DCR
    if mode not in ("DCR", "CRD"):
        ctx.fail(f"mode {mode!r} is not DCR or CRD")
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)  # depth index (i, j, c) or (c, i, j)
    y = permute(ctx, reshape(ctx, x, (n, c, h // b, b, w // b, b)), perm)
    return reshape(ctx, y, (n, c * b * b, h // b, w // b))


@converter("Trilu")
def trilu(ctx, ins, attrs):
    x = ins[0]
    s = ctx.shape(x)
    if len(s) < 2:
        ctx.fail(f"an input of rank {len(s)} (Trilu takes at least 2-D tensors)")
    k = int(ctx.const(ins[1], "Trilu's k").reshape(())) if len(ins) > 1 and ins[1] is not None else 0
    ones = np.ones(s[-2:], bool)
    keep = np.triu(ones, k) if attrs.get("upper", 1) else np.tril(ones, k)
    return ctx.op("select", keep, x, scalar(0, ctx.dtype(x)))


@converter("OneHot")
def one_hot(ctx, ins, attrs):
    idx, depth, values = ins
    depth = int(ctx.const(depth, "OneHot's depth").reshape(-1)[0])
    si = ctx.shape(idx)
    ctx.check_size(si + (depth,), "its one-hot output")
    axis = attrs.get("axis", -1)
    rank = len(si) + 1
    axis = norm_axis(ctx, axis, rank)
    if ctx.dtype(idx) not in ("int32", "int64"):
        idx = cast(ctx, idx, "int64")  # float indices are truncated
    idx = ctx.op("select", ctx.op("lt", idx, scalar(0, ctx.dtype(idx))),
                 ctx.op("add", idx, scalar(depth, ctx.dtype(idx))), idx)
    spread = reshape(ctx, idx, si[:axis] + (1,) + si[axis:])
    ramp = np.arange(depth, dtype=np.dtype(ctx.dtype(idx))).reshape([depth if d == axis else 1 for d in range(rank)])
    hot = ctx.op("eq", spread, ramp)
    if ctx.shape(values) != (2,):
        ctx.fail(f"values of shape {ctx.shape(values)} (OneHot takes [off, on])")
    if ctx.is_const(values):
        off, on = np.asarray(values)[0], np.asarray(values)[1]
    else:
        off, on = (reshape(ctx, along(ctx, values, 0, i, i + 1), ()) for i in (0, 1))
    return ctx.op("select", hot, on, off)


@converter("NonZero")
def nonzero(ctx, ins, attrs):
    x = ins[0]
    if isinstance(x, Value):
        ctx.fail("NonZero of a runtime tensor has a data-dependent shape, which graphopt cannot compile (its "
                 "shapes are static); only NonZero of constants (folded while importing) is supported")
    return np.array(np.nonzero(np.asarray(x)), np.int64)
