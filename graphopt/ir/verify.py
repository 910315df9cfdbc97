"""Structural verifier: SSA, registered ops, types re-inferred, state pairing."""
from __future__ import annotations

import numpy as np

from .graph import Graph
from .types import TensorType
from .ops import IRTypeError, get_op


class VerificationError(ValueError):
    """The graph breaks an IR invariant; the message names the node or value."""


def verify(graph: Graph) -> None:
    defined: set[int] = set()
    names: dict[str, int] = {}

    def define(v, what):
        if id(v) in defined:
            raise VerificationError(f"value %{v.name} is defined twice ({what})")
        if names.get(v.name, id(v)) != id(v):
            raise VerificationError(f"two different values are named %{v.name}")
        names[v.name] = id(v)
        defined.add(id(v))

    for v in graph.inputs:
        if v.producer is not None or v.is_param:
            raise VerificationError(f"graph input %{v.name} must not have a producer or constant")
        define(v, "graph input")
    for s in graph.state:
        if s.input.producer is not None or s.input.is_param:
            raise VerificationError(f"state input %{s.input.name} must not have a producer or constant")
        define(s.input, "state input")
        if s.output is None:
            raise VerificationError(f"state {s.name!r} has no output value")
        if s.output.type != s.input.type:
            raise VerificationError(f"state {s.name!r}: output {s.output.type} != input {s.input.type}")
        if tuple(s.init.shape) != s.input.shape or s.init.dtype != np.dtype(s.input.dtype):
            raise VerificationError(f"state {s.name!r}: initial value {s.init.shape} {s.init.dtype} "
                                    f"does not match {s.input.type}")

    def check_use(v, where):
        if v.is_param:
            if tuple(v.const.shape) != v.shape or v.const.dtype != np.dtype(v.dtype):
                raise VerificationError(f"parameter %{v.name}: data {v.const.shape} {v.const.dtype} != {v.type}")
            if id(v) not in defined:
                define(v, "parameter")
        elif id(v) not in defined:
            raise VerificationError(f"{where} uses %{v.name} before it is defined")

    for i, node in enumerate(graph.nodes):
        where = f"node {i} ({node.op})"
        try:
            opdef = get_op(node.op)
        except IRTypeError as e:
            raise VerificationError(f"{where}: {e}") from None
        if opdef.arity is not None and len(node.inputs) != opdef.arity:
            raise VerificationError(f"{where}: takes {opdef.arity} inputs, has {len(node.inputs)}")
        if set(node.attrs) != set(opdef.attrs):
            raise VerificationError(f"{where}: attributes {sorted(node.attrs)} != {sorted(opdef.attrs)}")
        for v in node.inputs:
            check_use(v, where)
        try:
            expected = opdef.infer([v.type for v in node.inputs], node.attrs)
        except IRTypeError as e:
            raise VerificationError(f"{where}: {e}") from None
        actual = [v.type for v in node.outputs]
        if expected != actual:
            raise VerificationError(f"{where}: output types {list(map(str, actual))} "
                                    f"!= inferred {list(map(str, expected))}")
        for v in node.outputs:
            if v.producer is not node:
                raise VerificationError(f"{where}: output %{v.name} does not name this node as producer")
            define(v, where)
    for v in graph.sinks():
        check_use(v, "graph output")
    if len(graph.output_names) != len(graph.outputs):
        raise VerificationError("graph.output_names and graph.outputs differ in length")
