"""The canonical graph IR: typed SSA values, nodes, and graphs with first-class state pairs."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .ops import get_op
from .types import DTYPES, SHORT_DTYPE, TensorType, canonical_dtype, is_float  # noqa: F401 (re-exported)

class Value:
    """An SSA value: produced once (by a node, or as a graph input/parameter/state input)."""

    __slots__ = ("name", "type", "producer", "const")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None,
                 const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.const = const  # set for parameters (named constants)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def is_param(self) -> bool:
        return self.const is not None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation: an op name from the registry, input values, frozen attributes, output values."""

    __slots__ = ("op", "inputs", "attrs", "outputs")

    def __init__(self, op: str, inputs: list[Value], attrs: dict[str, Any], outputs: list[Value]):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = dict(attrs)
        self.outputs = list(outputs)

    def attrs_key(self) -> tuple:
        return tuple(sorted((k, _hashable(v)) for k, v in self.attrs.items()))

    def __repr__(self) -> str:
        return f"Node({self.op}, {[v.name for v in self.inputs]} -> {[v.name for v in self.outputs]})"


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


@dataclass
class StatePair:
    """A recurrent state tensor: read as `input` at the start of a step, written as `output` at its end.

    `view` maps the stored tensor to the model's own state tensor (graphopt.state_views): empty where
    the graph stores the state as the model holds it; passes that store it in another layout (or pack
    several model states into one) record here how to get the model's state back."""
    name: str
    input: Value
    output: Value
    init: np.ndarray  # initial value, used by reset()
    view: tuple = ()  # steps from the stored tensor to the model's state (see graphopt.state_views)


@dataclass
class Graph:
    name: str = "graph"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    state: list[StatePair] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._counter = itertools.count()
        self._names: set[str] = set()

    # ---- construction -------------------------------------------------------------
    def fresh_name(self, prefix: str = "v") -> str:
        while True:
            name = f"{prefix}{next(self._counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def _claim(self, name: str) -> str:
        if name in self._names:
            return self.fresh_name(name + "_")
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type)
        self.inputs.append(v)
        return v

    def add_param(self, array: np.ndarray, name: str | None = None) -> Value:
        """A named constant. Parameters are owned by the nodes that read them, not listed separately."""
        array = np.array(array, dtype=canonical_dtype(np.asarray(array).dtype))
        array.flags.writeable = False
        name = self._claim(name) if name else self.fresh_name("p")
        return Value(name, TensorType(array.shape, array.dtype.name), const=array)

    def add_state(self, name: str, init: np.ndarray) -> Value:
        init = np.asarray(init)
        v = Value(self._claim(name), TensorType(init.shape, canonical_dtype(init.dtype)))
        self.state.append(StatePair(v.name, v, None, init.astype(v.dtype)))  # output set later
        return v

    def add_node(self, op: str, inputs: Iterable[Value], **attrs: Any) -> Node:
        """Append a node, inferring its output types from the op registry."""
        inputs = list(inputs)
        opdef = get_op(op)
        attrs = opdef.normalize_attrs(attrs)
        out_types = opdef.infer([v.type for v in inputs], attrs)
        node = Node(op, inputs, attrs, [])
        node.outputs = [Value(self.fresh_name(), t, producer=node) for t in out_types]
        self.nodes.append(node)
        return node

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Add a single-output node and return its output value."""
        node = self.add_node(op, inputs, **attrs)
        assert len(node.outputs) == 1, op
        return node.outputs[0]

    def toposort(self) -> None:
        """Reorder nodes so every node follows its producers (stable: keeps the existing order where it can)."""
        produced_by = {id(v): n for n in self.nodes for v in n.outputs}
        done: set[int] = set()
        order: list[Node] = []
        for root in self.nodes:
            stack = [(root, False)]
            while stack:
                node, expanded = stack.pop()
                if id(node) in done:
                    continue
                if expanded:
                    done.add(id(node))
                    order.append(node)
                    continue
                stack.append((node, True))
                for v in reversed(node.inputs):
                    p = produced_by.get(id(v))
                    if p is not None and id(p) not in done:
                        stack.append((p, False))
        self.nodes = order

    def clone(self) -> "Graph":
        """A copy whose nodes and values can be rewritten without touching this graph (parameters,
        whose data never changes, are shared)."""
        import copy
        new = Graph(self.name, output_names=list(self.output_names), meta=copy.deepcopy(self.meta))
        new._names = set(self._names)
        new._counter = itertools.count(next(copy.copy(self._counter)))
        vmap: dict[int, Value] = {}

        def get(v: Value) -> Value:
            if v.is_param:
                return v
            return vmap[id(v)]

        for v in self.inputs:
            vmap[id(v)] = Value(v.name, v.type)
            new.inputs.append(vmap[id(v)])
        for s in self.state:
            vmap[id(s.input)] = Value(s.input.name, s.input.type)
        for node in self.nodes:
            n = Node(node.op, [get(v) for v in node.inputs], node.attrs, [])
            for v in node.outputs:
                vmap[id(v)] = Value(v.name, v.type, producer=n)
                n.outputs.append(vmap[id(v)])
            new.nodes.append(n)
        new.outputs = [get(v) for v in self.outputs]
        new.state = [StatePair(s.name, vmap[id(s.input)], get(s.output) if s.output is not None else None,
                               s.init, s.view) for s in self.state]
        return new

    # ---- queries ----------------------------------------------------------------------
    def params(self) -> list[Value]:
        """Parameters used by the graph, in first-use order (outputs included)."""
        seen: dict[int, Value] = {}
        for node in self.nodes:
            for v in node.inputs:
                if v.is_param and id(v) not in seen:
                    seen[id(v)] = v
        for v in self.outputs + [s.output for s in self.state]:
            if v is not None and v.is_param and id(v) not in seen:
                seen[id(v)] = v
        return list(seen.values())

    def users(self) -> dict[int, list[Node]]:
        """Map id(value) -> nodes that read it."""
        out: dict[int, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                out.setdefault(id(v), []).append(node)
        return out

    def sinks(self) -> list[Value]:
        """Values the outside world observes: outputs and state outputs."""
        return list(self.outputs) + [s.output for s in self.state]

    def replace_all_uses(self, old: Value, new: Value) -> None:
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]
        for s in self.state:
            if s.output is old:
                s.output = new

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for node in self.nodes:
            hist[node.op] = hist.get(node.op, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def flops(self) -> int:
        return sum(get_op(n.op).flops([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)
                   for n in self.nodes)

    def param_bytes(self) -> int:
        return sum(v.const.nbytes for v in self.params())

    def state_bytes(self) -> int:
        return sum(s.input.type.nbytes for s in self.state)

    def __str__(self) -> str:
        from .printer import format_graph  # the printer reads graphs: imported when one is printed
        return format_graph(self)
