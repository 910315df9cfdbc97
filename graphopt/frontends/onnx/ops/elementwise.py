"""Elementwise ONNX operators (arithmetic, comparisons, activations, casts)."""
from __future__ import annotations

import numpy as np

from ..registry import converter

BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "And": "and", "Or": "or",
          "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge"}
UNARY = {"Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs", "Floor": "floor", "Ceil": "ceil",
         "Sin": "sin", "Cos": "cos", "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf", "Not": "not",
         "Sign": "sign"}


def _binary(ir_op):
    def convert(ctx, ins, attrs):
        a, b = ins
        return ctx.op(ir_op, a, b)
    return convert


def _unary(ir_op):
    def convert(ctx, ins, attrs):
        return ctx.op(ir_op, ins[0])
    return convert


for _onnx, _ir in BINARY.items():
    converter(_onnx)(_binary(_ir))
for _onnx, _ir in UNARY.items():
    converter(_onnx)(_unary(_ir))


@converter("Relu")
def relu(ctx, ins, attrs):
    x = ins[0]
    return ctx.op("max", x, np.zeros((), np.dtype(ctx.dtype(x))))


@converter("Identity", "Dropout")
def identity(ctx, ins, attrs):
    return [ins[0]]
