"""Readable text form of a graph: one line per node."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .graph import Graph, Node, Value


def _attr(v) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(_attr(x) for x in v) + ")"
    return repr(v) if isinstance(v, str) else str(v)


def _ref(v: Value) -> str:
    if v.is_param and v.const.size == 1:
        return f"{v.const.reshape(()).item()!r}:{v.type}"
    return f"%{v.name}"


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    attrs = ", ".join(f"{k}={_attr(v)}" for k, v in node.attrs.items())
    args = ", ".join(_ref(v) for v in node.inputs)
    return f"{outs} = {node.op}({args})" + (f" {{{attrs}}}" if attrs else "")


def format_graph(graph: Graph) -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph {graph.name}({ins}) {{"]
    for s in graph.state:
        lines.append(f"  state %{s.input.name}: {s.input.type} -> %{s.output.name if s.output else '?'}")
    for p in graph.params():
        if p.const.size > 1:
            lines.append(f"  param %{p.name}: {p.type}")
    for node in graph.nodes:
        lines.append("  " + format_node(node))
    outs = ", ".join(f"{n}=%{v.name}" for n, v in zip(graph.output_names, graph.outputs))
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)
