"""The ONNX operator converters' registry and the context they work in.

A converter turns one ONNX node into IR nodes: `fn(ctx, ins, attrs) -> output or list of outputs`,
where each input is an IR `Value`, a NumPy array (a value known while importing: an initializer, a
Constant, or anything computed from those, e.g. a Shape) or None (an omitted optional input), and
each output is a Value or an array. Converters are registered per ONNX op type with `@converter`;
one that cannot handle a form of its op calls `ctx.fail(...)`, which names the node, the op and
the opset.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ...models.source import ModelSourceError
from ...ir import Graph, Value, canonical_dtype
from ...manifest import MAX_ELEMENTS  # per tensor: an input, a constant computed while importing, an IR value

MAX_NODES = 200_000  # ONNX nodes converted (a Loop or Scan body once per iteration), and IR nodes built
# elements of every tensor the import makes, together: the IR values of one step (an interpreter holds them
# all) and the constants computed while importing, beyond the file's own initializers (PhysNet: 4e7)
MAX_TOTAL_ELEMENTS = 1 << 28

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
        self.converted = 0  # ONNX nodes converted so far (importer.convert_nodes; bounded by MAX_NODES)
        self.made = 0  # elements of the tensors made so far (bounded by self.budget)
        self.budget = MAX_TOTAL_ELEMENTS  # importer.to_ir adds twice the initializers' elements

    # ---- errors --------------------------------------------------------------------------------
    def where(self) -> str:
        n = self.node
        return f"node {n.name or '(unnamed)'!r} ({n.op_type}, opset {self.opset})" if n is not None else "the graph"

    def fail(self, what: str):
        raise OnnxImportError(f"{self.path}: {self.where()}: {what}")

    def check_size(self, shape, what: str = "a tensor") -> int:
        """The number of elements of a tensor of this shape, which graphopt is about to make; fails (before
        anything is allocated) for a negative dimension or more than MAX_ELEMENTS elements."""
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            self.fail(f"{what} would have a negative dimension ({_dims(dims)}); fix the shape, or the values it "
                      "is computed from")
        n = math.prod(dims)
        if n > MAX_ELEMENTS:
            self.fail(f"{what} would have {_count(n)} elements ({_dims(dims)}), more than the {MAX_ELEMENTS} "
                      "graphopt takes in one tensor; fix the shape, or the values it is computed from")
        return n

    def count(self, n: int) -> None:
        """n more elements made (an IR value, a constant computed here); fails past the budget."""
        self.made += int(n)
        if self.made > self.budget:
            self.fail(f"the tensors the model computes hold more than {self.budget} elements in all (the values "
                      "of one step, and the constants computed while importing); graphopt takes models of up to "
                      "that size: fix the shapes that blow up, or give smaller input shapes")

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
        if len(self.g.nodes) >= MAX_NODES:
            self.fail(f"the graph grows past {MAX_NODES} nodes (unrolled loops and recurrences count every "
                      "step); graphopt takes models of up to that size: shorten the loops or sequences")
        v = self.g.op(name, *(self.value(x) for x in ins), **attrs)
        self.count(self.check_size(v.shape, f"the result of {name}"))
        return v

    def shape(self, x) -> tuple[int, ...]:
        return tuple(x.shape) if isinstance(x, Value) else tuple(np.shape(x))

    def dtype(self, x) -> str:
        return x.dtype if isinstance(x, Value) else canonical_dtype(np.asarray(x).dtype)


def _dims(dims) -> str:
    text = f"shape {tuple(dims)}"
    return text if len(text) <= 80 else text[:76] + "...)"


def _count(n: int) -> str:
    return str(n) if n < 10 ** 18 else f"about 10^{len(str(n)) - 1}"
