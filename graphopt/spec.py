"""ModelSpec: the public description of a model graphopt can build (imports as graphopt.ModelSpec).

A step model (recurrent state):   fn(*inputs, state) -> (outputs, new_state)
A stateless model:                fn(*inputs) -> outputs

`outputs` is an array or a tuple of arrays; `state` any pytree of arrays whose new value has the same
leaves, shapes and dtypes. `fn` must be traceable by JAX (`jax.jit(fn)` works); weights it closes over
become the artifact's parameters. The built-in models (graphopt.models) are ModelSpecs made with nothing
a user's spec cannot use.

    spec = graphopt.ModelSpec(name="ema", fn=step, inputs={"x": np.zeros((1, 8), np.float32)},
                              state=np.zeros((1, 8), np.float32), outputs=["y"])
    graphopt.build(spec, target="onnx", out="out/")

`graphopt build --model FILE.py:FUNC` (or `package.module:FUNC`) calls FUNC() for the spec; the file is
imported and run, as any Python module you name on a command line is.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .models.source import ModelSourceError


class SpecError(ModelSourceError):
    """A ModelSpec that cannot be used as given (the message names the field and the fix): exit status 2."""


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _check_name(what: str, name) -> str:
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= NAME_CHARS \
            or name.startswith((".", "-")):
        raise SpecError(f"{what} {name!r:.70} must be 1 to 64 letters, digits, '_', '-' or '.' (not first)")
    return name


@dataclass
class ModelSpec:
    """What graphopt needs to know about a model (see the module docstring).

    name:          the artifact's stem (letters, digits, '_', '-', '.')
    fn:            the JAX-traceable step (or stateless) function
    inputs:        ordered name -> example array; shape and dtype are the artifact's signature
    state:         the initial state, a pytree of arrays; None for a stateless model
    outputs:       output names (default out0, out1, ...)
    dt_input:      the input that is the time step in seconds (its default value is 1/fps)
    fps:           frames per second of the stream (the default dt, and the heart-rate metric's rate)
    pulse_output:  the output that is a pulse waveform (the verification compares its heart rate)
    frame_input:   the input that is a face frame or chunk (..., H, W, 3) in 0..1: verified on the
                   synthetic face clip. "auto" (default): the first float input of rank >= 3 whose last
                   axis is 3; None: no face input
    input_range:   (low, high) of the verification clip's other inputs (uniform; integers in [low, high))
    source:        provenance recorded in the manifest (package, version, code, weights_sha256, ...)
    param_names:   id(array) -> readable name for closed-over weights (optional)
    """
    name: str
    fn: Callable
    inputs: Mapping[str, Any]
    state: Any = None
    outputs: list[str] | None = None
    dt_input: str | None = None
    fps: float = 30.0
    pulse_output: str | None = None
    frame_input: str | None = "auto"
    input_range: tuple[float, float] = (0.0, 1.0)
    source: dict = field(default_factory=dict)
    param_names: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        _check_name("model name", self.name)
        if not callable(self.fn):
            raise SpecError(f"spec {self.name}: fn must be a callable, got {type(self.fn).__name__}")
        if not isinstance(self.inputs, Mapping) or not self.inputs:
            raise SpecError(f"spec {self.name}: inputs must be a non-empty mapping name -> example array")
        inputs = {}
        for k, v in self.inputs.items():
            _check_name(f"spec {self.name}: input name", k)
            a = np.asarray(v)
            if a.dtype.kind not in "fiub" or a.dtype.itemsize > 8:
                raise SpecError(f"spec {self.name}: input {k} has dtype {a.dtype}; inputs must be float, integer "
                                "or bool arrays")
            inputs[k] = a.astype(np.float32) if a.dtype == np.float64 else a
        self.inputs = inputs
        if not (isinstance(self.fps, (int, float)) and not isinstance(self.fps, bool) and 0.1 <= self.fps <= 10000):
            raise SpecError(f"spec {self.name}: fps must be a number from 0.1 to 10000, got {self.fps!r:.40}")
        self.fps = float(self.fps)
        if self.dt_input is not None:
            if self.dt_input not in inputs:
                raise SpecError(f"spec {self.name}: dt_input {self.dt_input!r} is not one of the inputs "
                                f"{list(inputs)}")
            if inputs[self.dt_input].size != 1 or inputs[self.dt_input].dtype.kind != "f":
                raise SpecError(f"spec {self.name}: dt_input {self.dt_input} must be one float number")
        if self.frame_input == "auto":
            self.frame_input = next((k for k, a in inputs.items() if k != self.dt_input and a.dtype.kind == "f"
                                     and a.ndim >= 3 and a.shape[-1] == 3), None)
        elif self.frame_input is not None and self.frame_input not in inputs:
            raise SpecError(f"spec {self.name}: frame_input {self.frame_input!r} is not one of the inputs "
                            f"{list(inputs)}")
        if self.frame_input is not None and inputs[self.frame_input].ndim < 3:
            raise SpecError(f"spec {self.name}: frame_input {self.frame_input} must be (..., H, W, 3) frames")
        try:
            lo, hi = (float(x) for x in self.input_range)
        except (TypeError, ValueError):
            raise SpecError(f"spec {self.name}: input_range must be (low, high) numbers") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise SpecError(f"spec {self.name}: input_range must be finite with low < high, got {self.input_range}")
        self.input_range = (lo, hi)
        if self.state is not None:
            import jax
            leaves = jax.tree_util.tree_leaves(self.state)
            for i, leaf in enumerate(leaves):
                a = np.asarray(leaf)
                if a.dtype.kind not in "fiub":
                    raise SpecError(f"spec {self.name}: state leaf {i} has dtype {a.dtype}; state must be arrays")
        if self.outputs is not None:
            self.outputs = [_check_name(f"spec {self.name}: output name", n) for n in self.outputs]
            if len(set(self.outputs)) != len(self.outputs) or set(self.outputs) & set(inputs):
                raise SpecError(f"spec {self.name}: output names must be distinct and differ from the input names")
        if self.pulse_output is not None and (self.outputs is None or self.pulse_output not in self.outputs) \
                and not (self.outputs is None and self.pulse_output.startswith("out")):
            raise SpecError(f"spec {self.name}: pulse_output {self.pulse_output!r} is not one of the outputs")
        if not isinstance(self.source, dict):
            raise SpecError(f"spec {self.name}: source must be a dict")

    # ---- derived -------------------------------------------------------------------------------
    @property
    def stateful(self) -> bool:
        return self.state is not None

    @property
    def state_leaves(self) -> list[np.ndarray]:
        import jax
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(self.state)] if self.state is not None else []

    @property
    def frames_per_step(self) -> int:
        """Face frames one step takes: 1, or the chunk length of a (1, T, H, W, 3) input."""
        if self.frame_input is None:
            return 1
        shape = self.inputs[self.frame_input].shape
        return max(1, int(np.prod(shape[1:-3], dtype=np.int64))) if len(shape) >= 5 else 1

    def flat_fn(self) -> Callable:
        """fn over flat arguments: (*inputs, *state_leaves) -> (output leaves, new state leaves)."""
        import jax
        n_in = len(self.inputs)
        treedef = jax.tree_util.tree_structure(self.state) if self.state is not None else None
        fn = self.fn

        def flat(*args):
            if treedef is None:
                out, new = fn(*args), []
            else:
                out, new = fn(*args[:n_in], jax.tree_util.tree_unflatten(treedef, list(args[n_in:])))
            return tuple(jax.tree_util.tree_leaves(out)), tuple(jax.tree_util.tree_leaves(new))
        return flat

    @property
    def initial_state(self) -> list[np.ndarray]:
        return self.state_leaves

    @property
    def takes_dt(self) -> bool:
        return self.dt_input is not None

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        return tuple(self.inputs[self.frame_input].shape) if self.frame_input is not None else None

    def roles(self) -> dict[str, str]:
        """input name -> "frame", "dt" or "input"."""
        return {k: "frame" if k == self.frame_input else "dt" if k == self.dt_input else "input" for k in self.inputs}

    def trace(self):
        """The model as an IR graph (inputs in order; one state pair per state leaf)."""
        from .frontends.jax import UnsupportedPrimitiveError, trace
        try:
            graph = trace(self.fn, dict(self.inputs), self.state, name=self.name, param_names=self.param_names)
        except UnsupportedPrimitiveError as e:
            raise SpecError(f"spec {self.name}: {' '.join(str(e).split())}") from None
        except Exception as e:  # the user's code, under JAX tracing: any error type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpecError(f"spec {self.name}: fn does not trace with the example inputs ({type(e).__name__}: "
                            f"{first}); fn must be JAX-traceable and return outputs (stateless) or "
                            "(outputs, new_state) (step model)") from None
        graph.output_names = self.output_names(len(graph.outputs))
        graph.meta.update(model=self.name, fps=self.fps, source=self.source, frames_per_step=self.frames_per_step,
                          roles={"frame": self.frame_input, "dt": self.dt_input, "pulse": self.pulse_output})
        return graph

    def reference(self) -> Callable:
        """fn under jax.jit over flat arguments: (*inputs, *state_leaves) -> (outputs, new state leaves)."""
        if getattr(self, "_jitted", None) is None:
            import jax
            self._jitted = jax.jit(self.flat_fn())
        return self._jitted

    def output_names(self, n: int) -> list[str]:
        if self.outputs is None:
            return [f"out{i}" for i in range(n)]
        if len(self.outputs) != n:
            raise SpecError(f"spec {self.name}: {len(self.outputs)} output names for the {n} outputs fn returns")
        return list(self.outputs)

    def fingerprint(self) -> str:
        """A hash of what the model computes: its jaxpr, the constants it closes over, the example inputs'
        signature and the initial state (the reference cache's key)."""
        import jax
        closed = jax.make_jaxpr(self.flat_fn())(*self.inputs.values(), *self.state_leaves)
        h = hashlib.sha256(str(closed.jaxpr).encode())
        for c in closed.consts:
            a = np.asarray(np.asarray(c), order="C")
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        for k, a in self.inputs.items():
            h.update(f"{k}:{a.dtype.str}{a.shape}".encode())
        for s in self.state_leaves:
            h.update(np.asarray(s, order="C").tobytes())
        return h.hexdigest()


def from_keras(model, inputs: Mapping[str, Any], *, name: str | None = None, state="auto",
               outputs: list[str] | None = None, **roles) -> ModelSpec:
    """A ModelSpec for a Keras 3 model on the JAX backend, called through its stateless call.

    inputs: name -> example array, passed to the model positionally (a model with one input gets the
    array, with several a list in this order). state: "auto" takes the non-trainable variables one call
    changes (running means, a Keras RNN's carried state, any variable the model assigns) as the
    recurrent state and keeps the rest (batch-norm statistics) as weights; None treats every variable as
    a weight; or a list of the variables that are state. roles: dt_input, fps, pulse_output,
    frame_input, input_range, source (see ModelSpec).
    """
    import jax
    import keras
    if keras.backend.backend() != "jax":
        raise SpecError(f"from_keras needs Keras's JAX backend (KERAS_BACKEND=jax), not {keras.backend.backend()!r}")
    name = name or model.name
    examples = {k: np.asarray(v) for k, v in inputs.items()}
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = list(model.non_trainable_variables)

    def call(nt_values, *args):
        x = args[0] if len(args) == 1 else list(args)
        out, new_nt = model.stateless_call(trainable, nt_values, x, training=False)
        return out, new_nt

    values = [v.value for v in non_trainable]
    if state == "auto":
        closed = jax.make_jaxpr(call)(values, *examples.values())
        jaxpr = closed.jaxpr
        n_out = len(jaxpr.outvars) - len(values)
        changed = [not (type(o).__name__ != "Literal" and o is i)
                   for o, i in zip(jaxpr.outvars[n_out:], jaxpr.invars[:len(values)])]
    elif state is None:
        changed = [False] * len(values)
    else:
        ids = {id(v) for v in state}
        changed = [id(v) in ids for v in non_trainable]
        if sum(changed) != len(ids):
            raise SpecError("from_keras: state must list variables of the model (model.non_trainable_variables)")
    idx = [i for i, c in enumerate(changed) if c]
    fixed = {i: values[i] for i, c in enumerate(changed) if not c}

    def fn(*args):
        if not idx:
            return call(values, *args)[0]
        *xs, st = args
        nt = [st[idx.index(i)] if i in idx else fixed[i] for i in range(len(values))]
        out, new_nt = call(nt, *xs)
        return out, [new_nt[i] for i in idx]

    param_names = {id(v.value): v.path for v in model.variables}
    return ModelSpec(name=name, fn=fn, inputs=examples, state=[np.asarray(values[i]) for i in idx] if idx else None,
                     outputs=outputs, param_names=param_names, **roles)


def check_ref(ref: str) -> tuple[str, str]:
    """(module or file, function) of `FILE.py:FUNC` / `package.module:FUNC`, checked without running anything."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise SpecError(f"--model {ref!r:.80} is not a model name, FILE.py:FUNC or package.module:FUNC")
    where, func = ref.split(":")
    if not func.isidentifier():
        raise SpecError(f"--model {ref!r:.80}: {func!r:.40} is not a Python function name")
    if (where.endswith(".py") or os.sep in where) and not Path(where).is_file():
        raise SpecError(f"--model {ref}: {where} is not a file; give FILE.py:FUNC with an existing file")
    return where, func


def load_spec(ref: str) -> ModelSpec:
    """The ModelSpec FUNC() returns, for `FILE.py:FUNC` or `package.module:FUNC` (runs that code)."""
    where, func = check_ref(ref)
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        spec = importlib.util.spec_from_file_location(f"graphopt_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise SpecError(f"--model {ref}: {where} line {e.lineno}: {e.msg}; fix the file") from None
        except ImportError as e:
            raise SpecError(f"--model {ref}: importing {where} failed ({e}); install what it needs") from None
        except Exception as e:  # the user's module failed on import: any error type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpecError(f"--model {ref}: importing {where} failed ({type(e).__name__}: {first})") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise SpecError(f"--model {ref}: cannot import {where} ({e}); give FILE.py:FUNC or an importable "
                            "package.module:FUNC") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise SpecError(f"--model {ref}: {where} has no function {func}")
    try:
        got = fn()
    except SpecError:
        raise
    except Exception as e:  # the user's code: any error type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpecError(f"--model {ref}: {func}() failed ({type(e).__name__}: {first})") from None
    if not isinstance(got, ModelSpec):
        raise SpecError(f"--model {ref}: {func}() returned {type(got).__name__}, not a graphopt.ModelSpec")
    return got


import importlib.util  # noqa: E402  (importlib.util is a submodule: import it explicitly)
