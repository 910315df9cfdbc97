"""The ONNX operator converters' registry and the context they work in.

A converter turns one ONNX node into IR nodes: `fn(ctx, ins, attrs) -> output or list of outputs`,
where each input is an IR `Value`, a NumPy array (a value known while importing: an initializer, a
Constant, or anything computed from those, e.g. a Shape) or None (an omitted optional input), and
each output is a Value or an array. Converters are registered per ONNX op type with `@converter`;
one that cannot handle a form of its op calls `ctx.fail(...)`, which names the node, the op and
the opset.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...models.source import ModelSourceError
from ...ir import Graph, Value, canonical_dtype

Input = "Value | np.ndarray | None"
Converter = Callable[["Ctx", list, dict], Any]
CONVERTERS: dict[str, Converter] = {}


class OnnxImportError(ModelSourceError):
    """The ONNX file cannot be imported (unsupported operator or form, bad file); exit 2."""


def converter(*op_types: str):
    """Register fn as the converter of these ONNX op types (default domain)."""
    def register(fn: Converter) -> Converter:
        for t in op_types:
            if t in CONVERTERS:
                raise ValueError(f"two converters for ONNX op {t}")
            CONVERTERS[t] = fn
        return fn
    return register


class Ctx:
    """What a converter sees: the graph being built, the model's opset and the node being converted."""

    def __init__(self, graph: Graph, opset: int, path: str = ""):
        self.g = graph
        self.opset = opset
        self.node = None  # the onnx.NodeProto being converted
        self.path = path  # the file, for messages
        self._params: dict[int, Value] = {}
        self._alive: list = []
        self.names_kept: set[str] = set()  # IR values named after the ONNX tensors they compute

    # ---- errors --------------------------------------------------------------------------------
    def where(self) -> str:
        n = self.node
        return f"node {n.name or '(unnamed)'!r} ({n.op_type}, opset {self.opset})" if n is not None else "the graph"

    def fail(self, what: str):
        raise OnnxImportError(f"{self.path}: {self.where()}: {what}")

    # ---- values --------------------------------------------------------------------------------
    def value(self, x) -> Value:
        """x as an IR value (an array becomes a parameter, one per array)."""
        if isinstance(x, Value):
            return x
        if x is None:
            self.fail("a required input is missing")
        key = id(x)
        if key not in self._params:
            a = np.asarray(x)
            try:
                canonical_dtype(a.dtype)
            except TypeError:
                self.fail(f"a constant of dtype {a.dtype} (the IR takes bool, int32, int64, float16/32/64)")
            self._params[key] = self.g.add_param(a)
            self._alive.append(x)  # id(x) stays unique while x lives
        return self._params[key]

    def const(self, x, what: str = "this input") -> np.ndarray:
        """x's value, which must be known while importing (a shape, axes, an index)."""
        if x is None or isinstance(x, Value):
            self.fail(f"{what} must be a constant (computed from initializers and shapes), not a runtime value")
        return np.asarray(x)

    @staticmethod
    def is_const(x) -> bool:
        return x is not None and not isinstance(x, Value)

    def op(self, name: str, *ins, **attrs) -> Value:
        return self.g.op(name, *(self.value(x) for x in ins), **attrs)

    def shape(self, x) -> tuple[int, ...]:
        return tuple(x.shape) if isinstance(x, Value) else tuple(np.shape(x))

    def dtype(self, x) -> str:
        return x.dtype if isinstance(x, Value) else canonical_dtype(np.asarray(x).dtype)
