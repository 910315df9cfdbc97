"""state-layout: store a recurrent state in the layout its neighbourhood computes in.

A state is read and written by elementwise ops (a running mean and variance). The model holds it in
its own layout (FacePhys: channels-last [1,1,H,W,C]), but the values it is combined with may live in
another (channels-first [1,C,H,W] next to the convolutions), so a transpose sits between the
state's neighbourhood and the convolutions on every step. Storing the state in that other layout
lets the layout pass move the whole neighbourhood there and cancel those transposes.

For each group of states that share a neighbourhood (the elementwise ops of the state's shape
connected to the state input and output), the candidate layouts are the layout chains
(reshape/transpose) through which the neighbourhood meets the rest of the graph. A candidate is
tried on a clone: the state input becomes the chain's inverse applied to a new input in the
candidate layout, the state output the chain applied to the old output, then the layout cleanup
passes run. The trial is kept if it lowers the cost (elements moved by transposes, then nodes).
The state's view (graphopt.state_views) records how to get the model's tensor back, so Streams
still report the authors' state. Exact: only data movement changes.

The layout cleanup that trials run is a pass given by the caller (graphopt.passes.manager builds it
from the registered layout, simplify, cse and dce passes), so this module needs no pass registry.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from graphopt.ir import Graph, Value

from .layout import _inverse, connected

def _neighbourhood(graph: Graph, pair, users) -> list:
    """Elementwise nodes of the state's shape connected to its input's readers and its output."""
    return connected(list(users.get(id(pair.input), [])) + [pair.output.producer], pair.input.shape, users)


def _chain_out(v: Value, users) -> tuple | None:
    """(reshape shape or None, perm) of a chain v -> [reshape] -> transpose read by v's only reader."""
    readers = users.get(id(v), [])
    if len(readers) != 1:
        return None
    n = readers[0]
    shape = None
    if n.op == "reshape":
        shape = n.outputs[0].shape
        nxt = users.get(id(n.outputs[0]), [])
        if not nxt:
            return None
        n = nxt[0]
    if n.op != "transpose":
        return None
    return shape, n.attrs["perm"]


def _chain_in(v: Value) -> tuple | None:
    """(reshape shape or None, perm) of the layout that v comes from: v = [reshape](transpose(a, q))
    with the candidate layout being a's, i.e. v reshaped to the transpose's output, transposed by q^-1."""
    n = v.producer
    if n is None:
        return None
    shape = None
    if n.op == "reshape":
        shape = n.inputs[0].shape
        n = n.inputs[0].producer
        if n is None:
            return None
    if n.op != "transpose":
        return None
    return shape, _inverse(n.attrs["perm"])


def candidates(graph: Graph, pair, users) -> list[tuple]:
    """Layouts (reshape shape or None, perm) the state's neighbourhood meets the graph through."""
    found = []
    nodes = _neighbourhood(graph, pair, users)
    for n in nodes:
        for cand in [_chain_out(n.outputs[0], users)] + [_chain_in(x) for x in n.inputs]:
            if cand is not None and cand not in found and _fits(pair.input.shape, cand):
                found.append(cand)
    return found


def _fits(shape, cand) -> bool:
    reshape, perm = cand
    rank = len(reshape) if reshape is not None else len(shape)
    return (reshape is None or int(np.prod(reshape)) == int(np.prod(shape))) and rank == len(perm)


def _relayout(graph: Graph, pair, cand) -> None:
    """Store pair's state in layout cand: stored = transpose(reshape(model, R), p)."""
    reshape, perm = cand
    model_type = pair.input.type
    inner = reshape if reshape is not None else model_type.shape
    stored_shape = tuple(inner[p] for p in perm)
    old_in = pair.input
    new_in = Value(graph.fresh_name(old_in.name + "_"), type(model_type)(stored_shape, model_type.dtype))
    # the model's tensor from the stored one, for the readers of the old input
    back = graph.op("transpose", new_in, perm=_inverse(perm))
    if reshape is not None:
        back = graph.op("reshape", back, shape=model_type.shape)
    graph.replace_all_uses(old_in, back)
    out = pair.output
    if reshape is not None:
        out = graph.op("reshape", out, shape=tuple(reshape))
    out = graph.op("transpose", out, perm=tuple(perm))
    init = pair.init if reshape is None else pair.init.reshape(reshape)
    pair.init = np.asarray(np.transpose(init, perm), order="C")
    pair.view = (("transpose", _inverse(perm)),) + ((("reshape", model_type.shape),) if reshape is not None
                                                     else ()) + tuple(pair.view)
    pair.input, pair.output = new_in, out
    graph.toposort()


def _relayout_projections(graph: Graph, nodes: list, model_shape: tuple, cand) -> None:
    """Compute the channels-last projections feeding a re-laid neighbourhood in the candidate layout.

    A neighbourhood moved channels-first still reads a value x[..., K] @ W[K, C] computed channels-last
    (the model's input projection of the frame). If the candidate layout moves the last axis to
    position 1, that projection is a 1x1 conv of the input moved there: transposing the K-channel input
    costs less than transposing the C-channel result whenever K < C. The trial's cost decides."""
    reshape, perm = cand
    rank = len(perm)
    if tuple(perm) != (0, rank - 1) + tuple(range(1, rank - 1)):
        return
    inner = tuple(reshape) if reshape is not None else model_shape
    for v in {id(x): x for n in nodes for x in n.inputs if x.shape == model_shape}.values():
        d = v.producer
        if d is None or d.op != "dot" or not d.inputs[1].is_param or d.inputs[1].const.ndim != 2 \
                or d.attrs["lhs_batch"] or d.attrs["lhs_contract"] != (len(v.shape) - 1,) \
                or d.attrs["rhs_contract"] != (0,):
            continue
        x, W = d.inputs
        if x.type.size >= v.type.size or inner[-1] != v.shape[-1]:
            continue
        xs = inner[:-1] + (x.shape[-1],)
        if int(np.prod(xs)) != x.type.size:
            continue
        xt = graph.op("transpose", graph.op("reshape", x, shape=xs) if xs != x.shape else x, perm=tuple(perm))
        kernel = np.asarray(W.const.T.reshape(W.shape[1], W.shape[0], *([1] * (rank - 2))), order="C")
        y = graph.op("conv", xt, graph.add_param(kernel), strides=(1,) * (rank - 2), pads=((0, 0),) * (rank - 2),
                     dilations=(1,) * (rank - 2), groups=1)
        back = graph.op("transpose", y, perm=_inverse(perm))
        graph.replace_all_uses(v, graph.op("reshape", back, shape=v.shape) if back.shape != v.shape else back)
    graph.toposort()


def cost(graph: Graph) -> tuple[int, int]:
    """Elements moved by transposes per step, then node count."""
    moved = sum(n.outputs[0].type.size for n in graph.nodes if n.op == "transpose")
    return moved, len(graph.nodes)


Cleanup = Callable[[Graph], None]  # tidies a trial graph in place


def _groups(graph: Graph, users) -> list[list[int]]:
    """Indices of states whose neighbourhoods share nodes, grouped (a mean and a variance updated together)."""
    owner: dict[int, int] = {}
    parent = list(range(len(graph.state)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for i, pair in enumerate(graph.state):
        for n in _neighbourhood(graph, pair, users):
            j = owner.setdefault(id(n), i)
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(graph.state)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _trial(graph: Graph, choices: list[tuple[list[int], tuple]], cleanup: Cleanup) -> Graph:
    """A clone with each group of states re-laid to its candidate layout, cleaned up."""
    trial = graph.clone()
    users = trial.users()
    hoods = [[n for i in group for n in _neighbourhood(trial, trial.state[i], users)] for group, _ in choices]
    for (group, cand), hood in zip(choices, hoods):
        model_shape = trial.state[group[0]].input.shape
        for i in group:
            _relayout(trial, trial.state[i], cand)
        _relayout_projections(trial, hood, model_shape, cand)
    cleanup(trial)
    return trial


def state_layout(graph: Graph, cleanup: Cleanup) -> Graph | None:
    """Re-lay every group of states whose neighbourhood then needs fewer transposes. Returns the new graph
    (a cleaned-up clone), or None when no re-laying lowers the cost; `graph` itself is left as it is.

    All groups are first tried at once with their first candidate (one cleanup for the whole model);
    where that does not lower the cost, each group and candidate is tried on its own."""
    users = graph.users()
    options = []
    for group in _groups(graph, users):
        shape = graph.state[group[0]].input.shape
        cands = [c for c in candidates(graph, graph.state[group[0]], users)
                 if all(graph.state[i].input.shape == shape for i in group)]
        if cands:
            options.append((group, cands))
    if not options:
        return None
    trial = _trial(graph, [(group, cands[0]) for group, cands in options], cleanup)
    trial_cost = cost(trial)
    if trial_cost[0] < cost(graph)[0]:
        # fewer elements transposed than the graph as it came (the layout pass ran just before, so the
        # cleanup alone seldom removes a transpose): kept without cleaning a copy up to compare with
        best, best_cost = trial, trial_cost
    else:
        base = graph.clone()
        cleanup(base)  # trials are cleaned up: compare them with the graph cleaned up alike
        best, best_cost = (trial, trial_cost) if trial_cost < cost(base) else (None, cost(base))
    if best is None:
        for group, cands in options:
            for cand in cands:
                trial = _trial(best or graph, [(group, cand)], cleanup)
                trial_cost = cost(trial)
                if trial_cost < best_cost:
                    best, best_cost = trial, trial_cost
    return best
