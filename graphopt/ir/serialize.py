"""The IR as a JSON document plus named arrays (no pickle): graphopt.trace_cache stores traced graphs so.

    doc, arrays = to_doc(graph)          # doc: JSON values only; arrays: key -> ndarray (parameters, state)
    graph = from_doc(doc, arrays)        # every field checked, then graphopt.ir.verify; IRFormatError if not

A graph comes back as it went in: the same value names, types, nodes, attributes (tuples stay tuples,
NumPy scalars keep their dtype), parameters shared where they were, state pairs with their initial values
and views, meta, and the graph's name counter, so passes run on it name new values as they would have on
the original: what a target emits from it is byte-identical.

`Encoder` / `Decoder` carry other values (a spec's inputs, its source record) the same way: JSON values,
tuples, dicts with any keys, non-finite floats, NumPy scalars and arrays (by key into `arrays`).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import numpy as np

from .graph import Graph, Node, StatePair, Value
from .types import DTYPES, TensorType

FORMAT, VERSION = "graphopt-ir", 1
MAX_DEPTH = 64  # nesting of meta / attribute values
MAX_RANK = 32
MAX_ELEMENTS = 1 << 31  # per value: a declared type is checked before any pass could allocate it
MAX_NAME = 4096


class IRFormatError(ValueError):
    """A serialized graph (or value) that is malformed, inconsistent, or fails the IR verifier."""


class NotSerializable(TypeError):
    """A value the format does not carry (e.g. an object in graph.meta): the graph is not stored."""


class Encoder:
    """JSON values out of Python/NumPy values; arrays are collected in `arrays` (shared arrays once)."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self._ids: dict[int, str] = {}

    def array(self, a) -> str:
        if not isinstance(a, np.ndarray) or a.dtype.name not in DTYPES:
            raise NotSerializable(f"an array of {getattr(a, 'dtype', type(a).__name__)} is not an IR array")
        key = self._ids.get(id(a))
        if key is None:
            key = self._ids[id(a)] = f"a{len(self.arrays)}"
            self.arrays[key] = a
        return key

    def encode(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise NotSerializable("values nested too deeply")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int) and type(x) is int:
            return x
        if type(x) is float:
            return x if math.isfinite(x) else {"F": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
        if type(x) is tuple:
            return {"t": [self.encode(v, depth + 1) for v in x]}
        if type(x) is list:
            return [self.encode(v, depth + 1) for v in x]
        if type(x) is dict:
            return {"d": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in x.items()]}
        if isinstance(x, np.ndarray):
            return {"a": self.array(x)}
        if isinstance(x, np.generic) and x.dtype.name in DTYPES:
            return {"n": x.dtype.name, "v": self.encode(x.item(), depth + 1)}
        raise NotSerializable(f"a {type(x).__name__} value is not serializable")


class Decoder:
    """The inverse of Encoder over `arrays` (key -> ndarray); anything else is an IRFormatError."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = arrays

    def array(self, key) -> np.ndarray:
        a = self.arrays.get(key) if isinstance(key, str) else None
        if not isinstance(a, np.ndarray) or a.dtype.name not in DTYPES:
            raise IRFormatError(f"array {str(key)[:40]!r} is missing or not an IR array")
        return a

    def decode(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise IRFormatError("values nested too deeply")
        if x is None or isinstance(x, (bool, str, int)):
            return x
        if type(x) is float:
            if not math.isfinite(x):
                raise IRFormatError("a non-finite float outside its tag")
            return x
        if type(x) is list:
            return [self.decode(v, depth + 1) for v in x]
        if type(x) is not dict or len(x) not in (1, 2):
            raise IRFormatError(f"unexpected {type(x).__name__} value")
        if len(x) == 2:
            if set(x) != {"n", "v"} or x["n"] not in DTYPES:
                raise IRFormatError("malformed NumPy scalar")
            v = self.decode(x["v"], depth + 1)
            if type(v) not in (bool, int, float):
                raise IRFormatError("malformed NumPy scalar")
            with np.errstate(all="ignore"):
                s = np.dtype(x["n"]).type(v)
            if s.item() != v and not (isinstance(v, float) and math.isnan(v)):
                raise IRFormatError(f"NumPy scalar {v!r:.40} does not fit {x['n']}")
            return s
        (tag, v), = x.items()
        if tag == "t" and type(v) is list:
            return tuple(self.decode(e, depth + 1) for e in v)
        if tag == "d" and type(v) is list:
            out = {}
            for item in v:
                if type(item) is not list or len(item) != 2:
                    raise IRFormatError("malformed dict item")
                k = self.decode(item[0], depth + 1)
                if isinstance(k, (list, dict, np.ndarray)):
                    raise IRFormatError("unhashable dict key")
                out[k] = self.decode(item[1], depth + 1)
            return out
        if tag == "a":
            return self.array(v)
        if tag == "F" and v in ("nan", "inf", "-inf"):
            return float(v)
        raise IRFormatError(f"unknown tag {tag[:20]!r}")


def _counter_value(graph: Graph) -> int:
    import copy
    return next(copy.copy(graph._counter))


def to_doc(graph: Graph, encoder: Encoder | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The graph as (JSON document, arrays). NotSerializable for a value the format does not carry."""
    enc = encoder or Encoder()
    index: dict[int, int] = {}
    values: list = []

    def ref(v: Value) -> int:
        i = index.get(id(v))
        if i is None:
            if not isinstance(v, Value):
                raise NotSerializable(f"{type(v).__name__} where a Value belongs")
            i = index[id(v)] = len(values)
            values.append([v.name, list(v.type.shape), v.type.dtype, enc.array(v.const) if v.is_param else None])
        return i

    inputs = [ref(v) for v in graph.inputs]
    state_inputs = [ref(s.input) for s in graph.state]
    nodes = [[n.op, [ref(v) for v in n.inputs], enc.encode(dict(n.attrs)), [ref(v) for v in n.outputs]]
             for n in graph.nodes]
    outputs = [ref(v) for v in graph.outputs]
    state = [{"name": s.name, "input": i, "output": ref(s.output) if s.output is not None else None,
              "init": enc.array(s.init), "view": enc.encode(s.view)} for s, i in zip(graph.state, state_inputs)]
    doc = {"format": FORMAT, "version": VERSION, "name": graph.name, "values": values, "inputs": inputs,
           "nodes": nodes, "outputs": outputs, "output_names": list(graph.output_names), "state": state,
           "meta": enc.encode(graph.meta), "names": sorted(graph._names), "counter": _counter_value(graph)}
    if not all(isinstance(n, str) for n in doc["output_names"]):
        raise NotSerializable("output names must be strings")
    return doc, enc.arrays


def _int(x, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise IRFormatError(f"{what} must be an integer from {lo} to {hi}")
    return x


def _str(x, what: str) -> str:
    if not isinstance(x, str) or len(x) > MAX_NAME:
        raise IRFormatError(f"{what} must be a string of at most {MAX_NAME} characters")
    return x


def _list(x, what: str) -> list:
    if type(x) is not list:
        raise IRFormatError(f"{what} must be a list")
    return x


def from_doc(doc: Any, arrays: Mapping[str, np.ndarray], decoder: Decoder | None = None) -> Graph:
    """The graph `to_doc` wrote, checked field by field and by the IR verifier; IRFormatError if not."""
    from .verify import VerificationError, verify
    try:
        graph = _from_doc(doc, decoder or Decoder(arrays))
        verify(graph)
    except IRFormatError:
        raise
    except (VerificationError, TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as e:
        raise IRFormatError(f"{type(e).__name__}: {str(e)[:300]}") from None
    return graph


def _from_doc(doc: Any, dec: Decoder) -> Graph:
    keys = {"format", "version", "name", "values", "inputs", "nodes", "outputs", "output_names", "state", "meta",
            "names", "counter"}
    if type(doc) is not dict or set(doc) != keys:
        raise IRFormatError("not a serialized graph (fields)")
    if doc["format"] != FORMAT or doc["version"] != VERSION:
        raise IRFormatError(f"format {str(doc['format'])[:40]!r} version {str(doc['version'])[:20]}, not "
                            f"{FORMAT} {VERSION}")
    values: list[Value] = []
    frozen: dict[int, np.ndarray] = {}  # parameters are read-only (as Graph.add_param makes them), shared alike
    for i, entry in enumerate(_list(doc["values"], "values")):
        if type(entry) is not list or len(entry) != 4:
            raise IRFormatError(f"value {i} is malformed")
        name, shape, dtype, const = entry
        shape = tuple(_int(d, f"value {i}'s dimension", 0, MAX_ELEMENTS) for d in _list(shape, f"value {i}'s shape"))
        if len(shape) > MAX_RANK or dtype not in DTYPES:
            raise IRFormatError(f"value {i} has rank {len(shape)} or dtype {str(dtype)[:20]!r}")
        t = TensorType(shape, dtype)
        if t.size > MAX_ELEMENTS:
            raise IRFormatError(f"value {i} has {t.size} elements, more than {MAX_ELEMENTS}")
        data = None
        if const is not None:
            data = dec.array(const)
            if tuple(data.shape) != shape or data.dtype.name != dtype:
                raise IRFormatError(f"parameter {i}: data {data.shape} {data.dtype} != {t}")
            if data.flags.writeable:
                if id(data) not in frozen:
                    view = data.view()
                    view.flags.writeable = False
                    frozen[id(data)] = view
                data = frozen[id(data)]
        values.append(Value(_str(name, f"value {i}'s name"), t, const=data))

    def val(i, what: str) -> Value:
        return values[_int(i, what, 0, len(values) - 1)] if values else _int(i, what, 0, -1)

    g = Graph(name=_str(doc["name"], "graph name"))
    g.inputs = [val(i, "graph input") for i in _list(doc["inputs"], "inputs")]
    for k, node in enumerate(_list(doc["nodes"], "nodes")):
        if type(node) is not list or len(node) != 4:
            raise IRFormatError(f"node {k} is malformed")
        op, ins, attrs, outs = node
        attrs = dec.decode(attrs)
        if type(attrs) is not dict or not all(isinstance(a, str) for a in attrs):
            raise IRFormatError(f"node {k}'s attributes are not a dict of names")
        n = Node(_str(op, f"node {k}'s op"), [val(i, f"node {k}'s input") for i in _list(ins, "node inputs")], attrs,
                 [val(i, f"node {k}'s output") for i in _list(outs, "node outputs")])
        for v in n.outputs:
            if v.is_param or v.producer is not None:
                raise IRFormatError(f"node {k}'s output %{v.name} is a parameter or another node's output")
            v.producer = n
        g.nodes.append(n)
    g.outputs = [val(i, "graph output") for i in _list(doc["outputs"], "outputs")]
    g.output_names = [_str(n, "output name") for n in _list(doc["output_names"], "output_names")]
    for k, s in enumerate(_list(doc["state"], "state")):
        if type(s) is not dict or set(s) != {"name", "input", "output", "init", "view"}:
            raise IRFormatError(f"state {k} is malformed")
        view = dec.decode(s["view"])
        if type(view) is not tuple:
            raise IRFormatError(f"state {k}'s view is not a tuple")
        g.state.append(StatePair(_str(s["name"], f"state {k}'s name"), val(s["input"], f"state {k}'s input"),
                                 val(s["output"], f"state {k}'s output"), dec.array(s["init"]), view))
    meta = dec.decode(doc["meta"])
    if type(meta) is not dict or not all(isinstance(k, str) for k in meta):
        raise IRFormatError("meta is not a dict of names")
    g.meta = meta
    names = {_str(n, "name") for n in _list(doc["names"], "names")}
    if any(v.name not in names for v in values):
        raise IRFormatError("a value's name is not among the graph's names")
    g._names = names
    g._counter = itertools.count(_int(doc["counter"], "counter"))
    return g
