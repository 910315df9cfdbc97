"""The NumPy interpreter over the op registry: the IR's meaning, in float32 or float64."""
from __future__ import annotations

import numpy as np

from .graph import Graph
from .ops import get_op

PRECISIONS = ("float32", "float64")


class Interpreter:
    """Runs a graph step by step. In float64 mode every float32 value is computed in float64;
    explicit casts to float16 still round to float16 (they are part of the model's math)."""

    def __init__(self, graph: Graph, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.graph = graph
        self.precision = precision
        self._slot: dict[int, int] = {}
        for v in graph.inputs + [s.input for s in graph.state]:
            self._slot[id(v)] = len(self._slot)
        self._consts: list[tuple[int, np.ndarray]] = []
        plan = []
        for node in graph.nodes:
            for v in node.inputs:
                if v.is_param and id(v) not in self._slot:
                    self._slot[id(v)] = len(self._slot)
                    self._consts.append((self._slot[id(v)], self._widen(v.const)))
            attrs = dict(node.attrs)
            if node.op == "cast" and precision == "float64" and attrs["to"] == "float32":
                attrs["to"] = "float64"
            for v in node.outputs:
                self._slot[id(v)] = len(self._slot)
            plan.append((get_op(node.op).compute, [self._slot[id(v)] for v in node.inputs],
                         [self._slot[id(v)] for v in node.outputs], attrs, node))
        self._plan = plan
        for v in graph.sinks():  # outputs that are params
            if v.is_param and id(v) not in self._slot:
                self._slot[id(v)] = len(self._slot)
                self._consts.append((self._slot[id(v)], self._widen(v.const)))
        self._nslots = len(self._slot)

    def _widen(self, a: np.ndarray) -> np.ndarray:
        if self.precision == "float64" and a.dtype == np.float32:
            return a.astype(np.float64)
        return a

    def run(self, inputs: list[np.ndarray], state: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        g = self.graph
        if len(inputs) != len(g.inputs) or len(state) != len(g.state):
            raise ValueError(f"expected {len(g.inputs)} inputs and {len(g.state)} state tensors, "
                             f"got {len(inputs)} and {len(state)}")
        env: list = [None] * self._nslots
        for v, x in zip(g.inputs + [s.input for s in g.state], list(inputs) + list(state)):
            x = np.asarray(x)
            if x.shape != v.shape:
                raise ValueError(f"%{v.name}: expected shape {v.shape}, got {x.shape}")
            env[self._slot[id(v)]] = self._widen(x.astype(v.dtype, copy=False))
        for slot, c in self._consts:
            env[slot] = c
        for compute, ins, outs, attrs, node in self._plan:
            args = [env[i] for i in ins]
            try:
                results = compute(*args, attrs)
            except Exception as e:  # name the node that failed
                raise RuntimeError(f"interpreter failed at {node}: {e}") from e
            for slot, r in zip(outs, results):
                env[slot] = np.asarray(r)
        read = lambda v: env[self._slot[id(v)]]
        return [read(v) for v in g.outputs], [read(s.output) for s in g.state]


def run_graph(graph: Graph, inputs, state=None, precision: str = "float32"):
    """Run one step; state defaults to the graph's initial state."""
    state = [s.init for s in graph.state] if state is None else state
    return Interpreter(graph, precision).run(list(inputs), list(state))
