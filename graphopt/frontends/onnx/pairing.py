"""Which graph inputs are recurrent state, fed back from which outputs.

In order, the first rule that applies to an input decides:
1. given pairs (`--state-pairs in:out,...`);
2. names: an output whose name is the input's with one token swapped (tokens split at '_', '.', ':',
   '/' and '-'): in -> out, input -> output, past -> present, prev -> next, old -> new, h0 -> hn,
   c0 -> cn (state_in_3 -> state_out_3, h_in -> h_out, past_key.0 -> present_key.0);
3. the authors' tf2onnx convention: inputs named `state_in_<i>` whose outputs are unnamed
   (Identity_<k>:0) are paired with the outputs in order, skipping an output whose shape or dtype does
   not match (the model's own outputs).
A pair's input and output must have the same dtype and shape (where the file gives both).
"""
from __future__ import annotations

import re
from typing import Sequence

from .registry import OnnxImportError

SWAPS = {"in": "out", "input": "output", "inputs": "outputs", "past": "present", "prev": "next", "old": "new",
         "h0": "hn", "c0": "cn", "IN": "OUT", "In": "Out"}
_SPLIT = re.compile(r"([_.:/\-])")
_STATE_IN = re.compile(r"^state_in_(\d+)$")


def _sig(vi):
    t = vi.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in t.shape.dim) \
        if t.HasField("shape") else None
    return t.elem_type, dims


def _compatible(a, b) -> bool:
    (ta, da), (tb, db) = _sig(a), _sig(b)
    return ta == tb and (da is None or db is None or da == db)


def _swapped(name: str) -> list[str]:
    parts = _SPLIT.split(name)
    out = []
    for k, p in enumerate(parts):
        if p in SWAPS:
            out.append("".join(parts[:k] + [SWAPS[p]] + parts[k + 1:]))
    return out


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """--state-pairs 'in:out,in2:out2' (a name holding ':' is split at the first ':' that leaves names of
    the model on both sides; checked in find)."""
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if ":" not in item:
            raise OnnxImportError(f"--state-pairs item {item!r:.80} is not IN:OUT; give pairs as in:out,in2:out2")
        pairs.append(item)
    return pairs  # resolved against the model's names in find()


def _resolve(item: str, ins: set[str], outs: set[str], path) -> tuple[str, str]:
    for k, ch in enumerate(item):
        if ch == ":" and item[:k] in ins and item[k + 1:] in outs:
            return item[:k], item[k + 1:]
    raise OnnxImportError(f"{path}: --state-pairs item {item!r:.80} does not name an input and an output of the "
                          f"model as IN:OUT (inputs: {sorted(ins)[:8]}..., outputs: {sorted(outs)[:8]}...)")


def find(model, path, given: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(input name, output name) per state pair, in input order."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    outputs = list(model.graph.output)
    in_by, out_by = {vi.name: vi for vi in inputs}, {vi.name: vi for vi in outputs}
    pairs: dict[str, str] = {}
    if given is not None:  # explicit: only these
        for item in given:
            i, o = _resolve(item, set(in_by), set(out_by), path)
            if i in pairs or o in pairs.values():
                raise OnnxImportError(f"{path}: --state-pairs names {i if i in pairs else o!r} twice")
            pairs[i] = o
    else:
        for vi in inputs:
            for cand in _swapped(vi.name):  # a name that fits but a type that does not (input -> output): no pair
                if cand in out_by and cand not in pairs.values() and _compatible(vi, out_by[cand]):
                    pairs[vi.name] = cand
                    break
        rest_in = sorted((vi for vi in inputs if vi.name not in pairs and _STATE_IN.match(vi.name)),
                         key=lambda vi: int(_STATE_IN.match(vi.name).group(1)))
        rest_out = [vo for vo in outputs if vo.name not in pairs.values()]
        k = 0
        for vi in rest_in:  # the authors' tf2onnx export: state_in_i -> the i-th matching output
            while k < len(rest_out) and not _compatible(vi, rest_out[k]):
                k += 1
            if k == len(rest_out):
                break
            pairs[vi.name] = rest_out[k].name
            k += 1
    for i, o in pairs.items():
        if not _compatible(in_by[i], out_by[o]):
            raise OnnxImportError(f"{path}: state input {i!r} {_sig(in_by[i])[1]} and output {o!r} "
                                  f"{_sig(out_by[o])[1]} differ in shape or dtype; a state is fed back unchanged in "
                                  "type (give the pairs with --state-pairs in:out,...)")
    return [(vi.name, pairs[vi.name]) for vi in inputs if vi.name in pairs]
