"""Elementwise ONNX operators (arithmetic, comparisons, activations, casts), and the small helpers the
other converter modules share (constants of a dtype, slices along one axis, reshapes, transposes)."""
from __future__ import annotations

import math

import numpy as np

from ....ir import Value, canonical_dtype
from ....ir.types import is_float
from ..registry import converter

# ---- helpers shared by the converter modules --------------------------------------------------


def scalar(value, dtype) -> np.ndarray:
    """A 0-d constant of an IR dtype (ctx.op makes it a parameter)."""
    return np.asarray(value, dtype=np.dtype(dtype))


def reshape(ctx, x, shape):
    shape = tuple(int(d) for d in shape)
    if not isinstance(x, Value):
        return np.reshape(x, shape)
    return x if x.shape == shape else ctx.op("reshape", x, shape=shape)


def permute(ctx, x, perm):
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(len(perm))):
        return x
    if not isinstance(x, Value):
        return np.transpose(x, perm)
    return ctx.op("transpose", x, perm=perm)


def along(ctx, x, axis: int, start: int, limit: int, stride: int = 1):
    """x[start:limit:stride] on one axis (0 <= start <= limit <= dim)."""
    shape = ctx.shape(x)
    if (start, limit, stride) == (0, shape[axis], 1):
        return x
    starts, limits, strides = [0] * len(shape), list(shape), [1] * len(shape)
    starts[axis], limits[axis], strides[axis] = start, limit, stride
    return ctx.op("slice", x, starts=tuple(starts), limits=tuple(limits), strides=tuple(strides))


def pad_axis(ctx, x, axis: int, lo: int, hi: int, value):
    """x padded with `value` on one axis."""
    if lo == 0 and hi == 0:
        return x
    pads = [(0, 0)] * len(ctx.shape(x))
    pads[axis] = (lo, hi)
    return ctx.op("pad", x, scalar(value, ctx.dtype(x)), pads=tuple(pads))


def broadcast_to(ctx, x, shape):
    """x broadcast NumPy-style (aligned right) to shape."""
    shape = tuple(int(d) for d in shape)
    xs = ctx.shape(x)
    if xs == shape:
        return x
    if len(xs) > len(shape) or np.broadcast_shapes(xs, shape) != shape:
        ctx.fail(f"a tensor of shape {xs} does not broadcast to {shape}")
    return ctx.op("broadcast", x, shape=shape, dims=tuple(range(len(shape) - len(xs), len(shape))))


def cast(ctx, x, dtype: str):
    return x if ctx.dtype(x) == dtype else ctx.op("cast", x, to=dtype)


def norm_axis(ctx, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        ctx.fail(f"{what} {axis} is out of range for a tensor of rank {rank}")
    return axis % rank if rank else 0


def onnx_dtype(ctx, elem_type: int) -> str:
    """The IR dtype of an ONNX TensorProto element type (fails for those the IR has not)."""
    from onnx import helper
    try:
        np_dt = np.dtype(helper.tensor_dtype_to_np_dtype(int(elem_type)))
        return canonical_dtype(np_dt)
    except (TypeError, ValueError, KeyError):
        from onnx import TensorProto
        name = TensorProto.DataType.Name(int(elem_type)) if int(elem_type) in TensorProto.DataType.values() \
            else str(elem_type)
        ctx.fail(f"tensors of element type {name} are not supported (the IR takes bool, int32, int64, "
                 "float16/32/64)")


def float_input(ctx, x, what: str = "this operator"):
    if not is_float(ctx.dtype(x)):
        ctx.fail(f"{what} of {ctx.dtype(x)} values is not supported (only float tensors)")
    return x


# ---- plain one-to-one operators ------------------------------------------------------------------

BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "And": "and", "Or": "or", "Xor": "ne",
          "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge"}
UNARY = {"Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs", "Floor": "floor", "Ceil": "ceil",
         "Sin": "sin", "Cos": "cos", "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf", "Not": "not",
         "Sign": "sign"}
FLOAT_UNARY = {"Exp", "Log", "Sqrt", "Floor", "Ceil", "Sin", "Cos", "Tanh", "Sigmoid", "Erf"}


def _binary(ir_op):
    def convert(ctx, ins, attrs):
        a, b = ins
        return ctx.op(ir_op, a, b)
    return convert


def _unary(onnx_op, ir_op):
    def convert(ctx, ins, attrs):
        x = ins[0]
        if onnx_op in FLOAT_UNARY and not is_float(ctx.dtype(x)):
            if onnx_op in ("Floor", "Ceil"):
                return x
            ctx.fail(f"{onnx_op} of {ctx.dtype(x)} values is not supported (only float tensors)")
        return ctx.op(ir_op, x)
    return convert


for _onnx, _ir in BINARY.items():
    converter(_onnx)(_binary(_ir))
for _onnx, _ir in UNARY.items():
    converter(_onnx)(_unary(_onnx, _ir))


@converter("Pow")
def pow_(ctx, ins, attrs):
    x, y = ins
    dx, dy = ctx.dtype(x), ctx.dtype(y)
    if dx == dy:
        return ctx.op("pow", x, y)
    if is_float(dx):  # a float base, any exponent: the exponent in the base's dtype
        return ctx.op("pow", x, cast(ctx, y, dx))
    # an integer base with a float exponent: computed in the exponent's float type, truncated back
    return cast(ctx, ctx.op("pow", cast(ctx, x, dy), y), dx)


@converter("Mod")
def mod(ctx, ins, attrs):
    a, b = ins
    r = ctx.op("rem", a, b)  # C fmod: the dividend's sign
    if attrs.get("fmod", 0):
        return r
    # fmod=0: the divisor's sign (Python's %)
    zero = scalar(0, ctx.dtype(r))
    wrong = ctx.op("and", ctx.op("ne", r, zero), ctx.op("ne", ctx.op("lt", r, zero), ctx.op("lt", b, zero)))
    return ctx.op("select", wrong, ctx.op("add", r, b), r)


@converter("Reciprocal")
def reciprocal(ctx, ins, attrs):
    x = ins[0]
    return ctx.op("div", scalar(1, ctx.dtype(x)), x)


@converter("Tan")
def tan(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Tan")
    return ctx.op("div", ctx.op("sin", x), ctx.op("cos", x))


@converter("Round")
def round_(ctx, ins, attrs):
    x = ins[0]
    if not is_float(ctx.dtype(x)):
        return x
    return ctx.op("round", x, mode="half_even")


@converter("IsNaN")
def is_nan(ctx, ins, attrs):
    x = ins[0]
    return ctx.op("ne", x, x)


@converter("IsInf")
def is_inf(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "IsInf")
    dt = ctx.dtype(x)
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)
    hits = []
    if pos:
        hits.append(ctx.op("eq", x, scalar(np.inf, dt)))
    if neg:
        hits.append(ctx.op("eq", x, scalar(-np.inf, dt)))
    if not hits:
        return np.zeros(ctx.shape(x), bool)
    return hits[0] if len(hits) == 1 else ctx.op("or", *hits)


# ---- activations ------------------------------------------------------------------------------


def _relu(ctx, x):
    return ctx.op("max", x, scalar(0, ctx.dtype(x)))


def _softplus(ctx, x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return ctx.op("add", _relu(ctx, x), ctx.op("log1p", ctx.op("exp", ctx.op("neg", ctx.op("abs", x)))))


def _where_negative(ctx, x, negative):
    """negative where x < 0, else x."""
    return ctx.op("select", ctx.op("lt", x, scalar(0, ctx.dtype(x))), negative, x)


@converter("Relu")
def relu(ctx, ins, attrs):
    return _relu(ctx, ins[0])


@converter("LeakyRelu")
def leaky_relu(ctx, ins, attrs):
    x = ins[0]
    return _where_negative(ctx, x, ctx.op("mul", x, scalar(attrs.get("alpha", 0.01), ctx.dtype(x))))


@converter("PRelu")
def prelu(ctx, ins, attrs):
    x, slope = ins  # slope broadcasts to x (unidirectionally)
    shape = ctx.shape(x)
    if np.broadcast_shapes(shape, ctx.shape(slope)) != shape:
        ctx.fail(f"a slope of shape {ctx.shape(slope)} does not broadcast to the input's {shape}")
    return _where_negative(ctx, x, ctx.op("mul", x, slope))


@converter("Elu")
def elu(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Elu")
    dt = ctx.dtype(x)
    return _where_negative(ctx, x, ctx.op("mul", ctx.op("expm1", x), scalar(attrs.get("alpha", 1.0), dt)))


@converter("Selu")
def selu(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Selu")
    dt = ctx.dtype(x)
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    neg = ctx.op("mul", ctx.op("expm1", x), scalar(alpha, dt))
    inner = ctx.op("select", ctx.op("gt", x, scalar(0, dt)), x, neg)
    return ctx.op("mul", inner, scalar(gamma, dt))


@converter("Celu")
def celu(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Celu")
    dt = ctx.dtype(x)
    alpha = attrs.get("alpha", 1.0)
    neg = ctx.op("mul", ctx.op("expm1", ctx.op("div", x, scalar(alpha, dt))), scalar(alpha, dt))
    return ctx.op("add", _relu(ctx, x), ctx.op("min", neg, scalar(0, dt)))


def _hard_sigmoid(ctx, x, alpha, beta):
    dt = ctx.dtype(x)
    return ctx.op("clamp", ctx.op("add", ctx.op("mul", x, scalar(alpha, dt)), scalar(beta, dt)), lo=0.0, hi=1.0)


@converter("HardSigmoid")
def hard_sigmoid(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "HardSigmoid")
    return _hard_sigmoid(ctx, x, attrs.get("alpha", 0.2), attrs.get("beta", 0.5))


@converter("HardSwish")
def hard_swish(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "HardSwish")
    return ctx.op("mul", x, _hard_sigmoid(ctx, x, 1 / 6, 0.5))


@converter("Softplus")
def softplus(ctx, ins, attrs):
    return _softplus(ctx, float_input(ctx, ins[0], "Softplus"))


@converter("Softsign")
def softsign(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Softsign")
    return ctx.op("div", x, ctx.op("add", ctx.op("abs", x), scalar(1, ctx.dtype(x))))


@converter("Mish")
def mish(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Mish")
    return ctx.op("mul", x, ctx.op("tanh", _softplus(ctx, x)))


@converter("Gelu")
def gelu(ctx, ins, attrs):
    x = float_input(ctx, ins[0], "Gelu")
    dt = ctx.dtype(x)
    c = lambda v: scalar(v, dt)
    approximate = attrs.get("approximate", "none")
    if approximate == "tanh":
        inner = ctx.op("mul", ctx.op("add", x, ctx.op("mul", ctx.op("mul", ctx.op("mul", x, x), x), c(0.044715))),
                       c(math.sqrt(2 / math.pi)))
        t = ctx.op("tanh", inner)
    elif approximate == "none":
        t = ctx.op("erf", ctx.op("mul", x, c(1 / math.sqrt(2))))
    else:
        ctx.fail(f"approximate={approximate!r} is not one of 'none', 'tanh'")
    return ctx.op("mul", ctx.op("mul", x, c(0.5)), ctx.op("add", t, c(1)))


@converter("ThresholdedRelu")
def thresholded_relu(ctx, ins, attrs):
    x = ins[0]
    dt = ctx.dtype(x)
    return ctx.op("select", ctx.op("gt", x, scalar(attrs.get("alpha", 1.0), dt)), x, scalar(0, dt))


# ---- variadic and selection --------------------------------------------------------------------


def _fold(ctx, ir_op, xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        ctx.fail("it has no inputs")
    out = xs[0]
    for x in xs[1:]:
        out = ctx.op(ir_op, out, x)
    return out


@converter("Max")
def max_(ctx, ins, attrs):
    return _fold(ctx, "max", ins)


@converter("Min")
def min_(ctx, ins, attrs):
    return _fold(ctx, "min", ins)


@converter("Sum")
def sum_(ctx, ins, attrs):
    return _fold(ctx, "add", ins)


@converter("Mean")
def mean(ctx, ins, attrs):
    xs = [x for x in ins if x is not None]
    total = _fold(ctx, "add", xs)
    if len(xs) == 1:
        return total
    return ctx.op("div", total, scalar(len(xs), ctx.dtype(total)))


@converter("Clip")
def clip(ctx, ins, attrs):
    x = ins[0]
    dt = ctx.dtype(x)
    if len(ins) == 1 and ("min" in attrs or "max" in attrs):  # Clip-6: bounds as attributes
        lo, hi = scalar(attrs.get("min", -np.inf), dt), scalar(attrs.get("max", np.inf), dt)
    else:
        lo = ins[1] if len(ins) > 1 else None
        hi = ins[2] if len(ins) > 2 else None
    for b in (lo, hi):
        if b is not None and ctx.shape(b) not in ((), (1,)):
            ctx.fail(f"a bound of shape {ctx.shape(b)} is not supported (min and max are scalars)")
    if is_float(dt) and all(b is None or ctx.is_const(b) for b in (lo, hi)):
        flo = -math.inf if lo is None else float(np.asarray(lo).reshape(()))
        fhi = math.inf if hi is None else float(np.asarray(hi).reshape(()))
        if math.isinf(flo) and math.isinf(fhi) and flo < 0 < fhi:
            return x
        if flo <= fhi:
            return ctx.op("clamp", x, lo=flo, hi=fhi)
    out = x
    if lo is not None:
        out = ctx.op("max", out, reshape(ctx, lo, ()))
    if hi is not None:
        out = ctx.op("min", out, reshape(ctx, hi, ()))
    return out


@converter("Where")
def where(ctx, ins, attrs):
    c, x, y = ins
    return ctx.op("select", c, x, y)


# ---- casts and identities -------------------------------------------------------------------------


@converter("Cast")
def cast_(ctx, ins, attrs):
    if "to" not in attrs:
        ctx.fail("it has no 'to' attribute")
    return cast(ctx, ins[0], onnx_dtype(ctx, attrs["to"]))


@converter("CastLike")
def cast_like(ctx, ins, attrs):
    return cast(ctx, ins[0], ctx.dtype(ins[1]))


@converter("Identity")
def identity(ctx, ins, attrs):
    return [ins[0]]


@converter("Dropout")
def dropout(ctx, ins, attrs):
    """Inference: the input itself, and a mask of all true where one is asked for."""
    x = ins[0]
    training = ins[2] if len(ins) > 2 else None
    if training is not None:
        if not ctx.is_const(training):
            ctx.fail("a runtime training_mode is not supported (graphopt imports models for inference; export "
                     "with training_mode false)")
        if bool(np.asarray(training).reshape(-1)[0]):
            ratio = ins[1] if len(ins) > 1 and ins[1] is not None else np.asarray(0.5)
            if not ctx.is_const(ratio) or float(np.asarray(ratio).reshape(-1)[0]) != 0:
                ctx.fail("training_mode true (random dropout) is not supported; export the model for inference")
    outs = [x]
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        outs.append(np.ones(ctx.shape(x), bool))
    return outs


@converter("Expand")
def expand(ctx, ins, attrs):
    x = ins[0]
    shape = [int(d) for d in ctx.const(ins[1], "Expand's shape").reshape(-1)]
    try:
        out = np.broadcast_shapes(ctx.shape(x), tuple(shape))  # bidirectional: a 1 in shape keeps x's dim
    except ValueError:
        ctx.fail(f"an input of shape {ctx.shape(x)} does not broadcast with shape {tuple(shape)}")
    return broadcast_to(ctx, x, out)
