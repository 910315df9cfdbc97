"""One lowering-table shape for every target.

Each lowering module declares, once at import time, a `LoweringTable`: per IR op the function that
lowers it, or a declaration that the runtime does not lower the op and why. A lowering function's
signature is the runtime's own (an ONNX builder, jnp, a TF layout tracker, an fx call); the table
only maps ops to them. Emitters `check` the graph before emitting anything and `lower` every node
(`lookup` and call); both raise the one `UnsupportedOpError`, naming the op, the node's output, the
runtime, the targets that use the table and the reason or what to do, so an unlowerable op is a clear
build error (a lowering function that lacks a form of its op raises it too, and `lower` adds the rest).
`status`/`coverage` are what tests check against the op registry (every op lowered or declared
unsupported with a reason).

An op a runtime lowers only in some configurations (a conv with input dilation, a pool over four
axes) is lowered; its function raises UnsupportedOpError for the configurations it lacks.

A table may extend another (`base`): it lowers what the base lowers, less what it declares
unsupported (TensorRT's table is ONNX's less the ops TensorRT's parser does not take).

Importing a table imports no runtime: lowering modules import jax, tensorflow or torch when they
emit, so `Target.lowering_table()` is cheap.
"""
from __future__ import annotations

from typing import Callable

from . import UnsupportedOpError

LOWERED, UNSUPPORTED, MISSING = "lowered", "unsupported", "missing"


class LoweringTable:
    def __init__(self, runtime: str, where: str, base: LoweringTable | None = None):
        self.runtime = runtime  # the runtime's name in messages ("ONNX", "TensorFlow", ...)
        self.where = where  # the module that declares the table, for messages
        self.base = base
        self.lowerings: dict[str, Callable] = {}  # op -> its lowering function
        self.reasons: dict[str, str] = {}  # op -> why this runtime does not lower it

    def register(self, *ops: str):
        """Decorator: the function lowers these ops."""
        def deco(fn):
            for op in ops:
                self.add(op, fn)
            return fn
        return deco

    def add(self, op: str, fn: Callable) -> None:
        self.lowerings[op] = fn
        self.reasons.pop(op, None)

    def unsupported(self, op: str, reason: str) -> None:
        """Declare that this runtime does not lower op, saying why (and what to do instead)."""
        if not reason.strip():
            raise ValueError(f"{self.runtime}: declaring '{op}' unsupported needs a reason")
        self.lowerings.pop(op, None)
        self.reasons[op] = reason

    def status(self, op: str) -> tuple[str, str]:
        """(LOWERED, ""), (UNSUPPORTED, reason) or (MISSING, "")."""
        if op in self.reasons:
            return UNSUPPORTED, self.reasons[op]
        if op in self.lowerings:
            return LOWERED, ""
        return self.base.status(op) if self.base is not None else (MISSING, "")

    def coverage(self, ops) -> dict[str, tuple[str, str]]:
        """op -> status, for the given ops (e.g. the registry graphopt.ir.OPS)."""
        return {op: self.status(op) for op in ops}

    def __contains__(self, op: str) -> bool:
        return self.status(op)[0] == LOWERED

    def lookup(self, node) -> Callable:
        """The lowering function of the node's op; UnsupportedOpError where there is none."""
        fn = self.lowerings.get(node.op)
        if fn is None:
            state, reason = self.status(node.op)
            if state != LOWERED:
                raise UnsupportedOpError(self._message(node, reason))
            fn = self.base.lookup(node)
        return fn

    def lower(self, node, *args):
        """Call the node's lowering function with args. An UnsupportedOpError it raises (a form of the op this
        runtime lacks, e.g. a grouped 3-D conv) is re-raised naming the op, its output, the runtime and the
        targets, as lookup's are."""
        fn = self.lookup(node)
        try:
            return fn(*args)
        except UnsupportedOpError as e:
            raise UnsupportedOpError(self._message(node, str(e), form=True)) from None

    def check(self, graph) -> None:
        """UnsupportedOpError at the graph's first node whose op this table does not lower."""
        for node in graph.nodes:
            if node.op not in self:
                raise UnsupportedOpError(self._message(node, self.status(node.op)[1]))

    def _message(self, node, reason: str, form: bool = False) -> str:
        out = f"%{node.outputs[0].name}" if node.outputs else "no output"
        users = self.targets()
        used_by = f" (target{'s' if len(users) > 1 else ''} {', '.join(users)})" if users else ""
        if not reason:
            chain, t = [], self
            while t is not None:
                chain, t = chain + [t.where], t.base
            reason = f"{' (based on '.join(chain)}{')' * (len(chain) - 1)} declares none; add one to its table, " \
                     "or build for a target that lowers it"
        form = " in this form" if form else ""
        return f"op '{node.op}' ({out}) has no {self.runtime} lowering{form}{used_by}: {reason}"

    def targets(self) -> list[str]:
        """The registered targets that emit through this table."""
        from . import get, names
        return [name for name in names() if get(name).lowering_table() is self]
