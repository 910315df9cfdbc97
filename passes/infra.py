"""Pass infrastructure: what a pass is told, what it returns, and pass managers that nest.

A pass is called as `p(graph, options) -> PassResult`. It is told everything it may depend on beyond
the graph through `PassOptions` (never through `graph.meta`), and it says what it did in the result:
whether it changed the graph, the graph to go on with (the same object for a pass that rewrites in
place, a new one for a pass that builds a new graph), how often each of its rules fired, and notes
for the build report (e.g. the approximations raise-math replaced). The shape follows onnx-ir's
`PassResult` and nested `PassManager`.

A `PassManager` is itself a pass: a sequence of passes run once, or repeated until none changes the
graph (`fixpoint`), optionally followed by a tidy-up group that runs only when the sequence changed
something (`then`). Cleanup loops are written as managers, not as hand-written while loops.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

from graphopt.ir import Graph
from graphopt.targets import Capabilities


@dataclass(frozen=True)
class PassOptions:
    """What a build tells the passes (the only input a pass has besides the graph)."""
    fixed_inputs: Mapping[str, float] = field(default_factory=dict)  # input name -> value baked in (--fps: dt)


@dataclass
class PassResult:
    graph: Graph  # the graph to go on with
    changed: bool
    fired: Counter = field(default_factory=Counter)  # rule name -> times it fired
    notes: dict[str, list] = field(default_factory=dict)  # report lists by kind, e.g. "raise_math"

    def absorb(self, other: "PassResult") -> None:
        """Fold a sub-pass's result into this one (the sub-pass ran after everything folded so far)."""
        self.graph = other.graph
        self.changed |= other.changed
        self.fired.update(other.fired)
        for kind, entries in other.notes.items():
            self.notes.setdefault(kind, []).extend(entries)


class PassBase:
    """name; exact: same math up to float rounding (False: value-changing); suits: the targets it suits, by
    capability (None: all); doc: one line for `graphopt passes` and the README."""
    name: str
    exact: bool = True
    suits: Callable[[Capabilities], bool] | None = None
    doc: str = ""

    def __call__(self, graph: Graph, options: PassOptions) -> PassResult:
        raise NotImplementedError


@dataclass(frozen=True)
class Pass(PassBase):
    """A pass from a function `run(graph, options) -> bool | PassResult`; a bool means "changed, in place"."""
    name: str
    run: Callable[[Graph, PassOptions], "bool | PassResult"]
    exact: bool = True
    suits: Callable[[Capabilities], bool] | None = None
    doc: str = ""

    def __call__(self, graph: Graph, options: PassOptions) -> PassResult:
        r = self.run(graph, options)
        return r if isinstance(r, PassResult) else PassResult(graph, bool(r))


def in_place(fn: Callable[[Graph], bool]) -> Callable[[Graph, PassOptions], bool]:
    """Adapt a graph -> changed function that needs no options."""
    return lambda graph, options: fn(graph)


@dataclass(frozen=True)
class PassManager(PassBase):
    """Passes run in order; with fixpoint, the whole sequence repeats until a round changes nothing (at most
    max_rounds rounds); `then` runs once afterwards if anything changed. Exact when all its passes are."""
    name: str
    passes: tuple[PassBase, ...]
    fixpoint: bool = False
    max_rounds: int = 20
    then: "PassManager | None" = None
    suits: Callable[[Capabilities], bool] | None = None
    doc: str = ""

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return all(p.exact for p in self.passes) and (self.then is None or self.then.exact)

    def __call__(self, graph: Graph, options: PassOptions) -> PassResult:
        result = PassResult(graph, False)
        for _ in range(self.max_rounds if self.fixpoint else 1):
            round_changed = False
            for p in self.passes:
                r = p(result.graph, options)
                result.absorb(r)
                round_changed |= r.changed
            if not round_changed:
                break
        if result.changed and self.then is not None:
            result.absorb(self.then(result.graph, options))
        return result
