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
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .models.source import ModelSourceError


class SpecError(ModelSourceError):
    """A ModelSpec that cannot be used as given (the message names the field and the fix): exit status 2."""


MAX_ELEMENTS = 1 << 28  # as the manifest's limit per tensor
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

    streams = 1  # independent streams one step advances (graphopt.multistream.MultiStreamSpec: more)

    def __post_init__(self):
        self.validate()

    def _io_name(self, what: str, n) -> str:
        import keyword
        if not isinstance(n, str) or not n.isidentifier() or keyword.iskeyword(n) or n == "self" \
                or n.startswith(("state_in_", "state_out_")) or len(n) > 64 or not n.isascii():
            raise SpecError(f"spec {self.name}: {what} name {n!r:.40} must be a Python identifier (ASCII letters, "
                            "digits, '_'; not a keyword or 'self'; not state_in_*/state_out_*, the state's names)")
        return n

    def validate(self) -> None:
        """Check every field (again: a spec may be changed after it was made); SpecError names the field."""
        _check_name("model name", self.name)
        where = f"spec {self.name}"
        if not callable(self.fn):
            raise SpecError(f"{where}: fn must be a callable, got {type(self.fn).__name__}")
        if not isinstance(self.inputs, Mapping) or not self.inputs:
            raise SpecError(f"{where}: inputs must be a non-empty mapping name -> example array")

        io_name = self._io_name
        inputs, total = {}, 0
        for k, v in self.inputs.items():
            io_name("input", k)
            a = np.asarray(v)
            if a.dtype == np.float64:
                a = a.astype(np.float32)
            if a.dtype.name not in ("bool", "int32", "int64", "float16", "float32"):
                raise SpecError(f"{where}: input {k} has dtype {a.dtype}; inputs must be float32, float16, int32, "
                                "int64 or bool arrays")
            total += a.size
            inputs[k] = a
        if total > MAX_ELEMENTS:
            raise SpecError(f"{where}: the inputs hold {total} elements, more than {MAX_ELEMENTS}")
        self.inputs = inputs
        fps = self.fps
        if isinstance(fps, (bool, np.bool_)) or not isinstance(fps, (int, float, np.integer, np.floating)) \
                or not 0.1 <= float(fps) <= 10000:
            raise SpecError(f"{where}: fps must be a number from 0.1 to 10000, got {fps!r:.40}")
        self.fps = float(fps)
        for role in ("dt_input", "frame_input", "pulse_output"):
            value = getattr(self, role)
            if value is not None and not isinstance(value, str):
                raise SpecError(f"{where}: {role} must be a name (str) or None, got {type(value).__name__}")
        if self.dt_input is not None:
            if self.dt_input not in inputs:
                raise SpecError(f"{where}: dt_input {self.dt_input!r} is not one of the inputs {list(inputs)}")
            dt = inputs[self.dt_input]
            if self.streams > 1:  # a multi-stream spec (graphopt.multistream): one dt per stream
                if dt.shape != (self.streams,) or dt.dtype != np.float32:
                    raise SpecError(f"{where}: dt_input {self.dt_input} of {self.streams} streams must be float32 of "
                                    f"shape ({self.streams},), not {dt.dtype} {dt.shape}")
            elif dt.size != 1 or dt.ndim > 1 or dt.dtype != np.float32:
                raise SpecError(f"{where}: dt_input {self.dt_input} must be one float32 number (shape () or (1,)), "
                                f"not {dt.dtype} {dt.shape}")
        square = lambda a: a.dtype.kind == "f" and a.ndim >= 3 and a.shape[-1] == 3 and a.shape[-2] == a.shape[-3] > 0
        if self.frame_input == "auto":
            self.frame_input = next((k for k, a in inputs.items() if k != self.dt_input and square(a)), None)
        elif self.frame_input is not None:
            if self.frame_input not in inputs:
                raise SpecError(f"{where}: frame_input {self.frame_input!r} is not one of the inputs {list(inputs)}")
            if not square(inputs[self.frame_input]):
                a = inputs[self.frame_input]
                raise SpecError(f"{where}: frame_input {self.frame_input} must be float (..., S, S, 3) face frames "
                                f"(the synthetic face clip is square RGB), not {a.dtype} {a.shape}; give "
                                "frame_input=None to verify it on random inputs")
        try:
            lo, hi = (float(x) for x in self.input_range)
        except (TypeError, ValueError, OverflowError):
            raise SpecError(f"{where}: input_range must be (low, high) numbers") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi and max(abs(lo), abs(hi)) <= 1e30):
            raise SpecError(f"{where}: input_range must be finite, within +-1e30, with low < high, got "
                            f"{self.input_range!r:.60}")
        self.input_range = (lo, hi)
        if self.state is not None:
            import jax
            for i, leaf in enumerate(jax.tree_util.tree_leaves(self.state)):
                a = np.asarray(leaf)
                if a.dtype.name not in ("bool", "int32", "int64", "float16", "float32", "float64"):
                    raise SpecError(f"{where}: state leaf {i} has dtype {a.dtype}; state must be float, int32/64 or "
                                    "bool arrays")
        if self.outputs is not None:
            if isinstance(self.outputs, str) or not isinstance(self.outputs, (list, tuple)):
                raise SpecError(f"{where}: outputs must be a list of names, not {type(self.outputs).__name__}")
            self.outputs = [io_name("output", n) for n in self.outputs]
            if len(set(self.outputs)) != len(self.outputs) or set(self.outputs) & set(inputs):
                raise SpecError(f"{where}: output names must be distinct and differ from the input names")
        if self.pulse_output is not None and self.outputs is not None and self.pulse_output not in self.outputs:
            raise SpecError(f"{where}: pulse_output {self.pulse_output!r} is not one of the outputs {self.outputs}")
        if not isinstance(self.source, dict):
            raise SpecError(f"{where}: source must be a dict")
        try:
            text = json.dumps(self.source, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{where}: source must hold JSON values only (strings, finite numbers, lists, dicts): "
                            f"{e}") from None
        if len(text) > 65536:
            raise SpecError(f"{where}: source is {len(text)} bytes as JSON; keep it under 64 KiB")

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
                got = fn(*args[:n_in], jax.tree_util.tree_unflatten(treedef, list(args[n_in:])))
                if not isinstance(got, (tuple, list)) or len(got) != 2:
                    raise SpecError("a step model's fn must return (outputs, new_state)")
                out, new = got
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if isinstance(out, dict) or any(isinstance(o, (dict, list, tuple)) for o in outs):
                raise SpecError("fn's outputs must be an array or a tuple of arrays (not a dict or nested "
                                "structure: its order would not be the names'); name them with outputs=")
            leaves = tuple(jax.tree_util.tree_leaves(out))
            if not leaves:
                raise SpecError("fn returns no outputs")
            return leaves, tuple(jax.tree_util.tree_leaves(new))
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
            flat, leaves = self.flat_fn(), self.state_leaves
            if self.state is None:
                fn, state = (lambda *xs: flat(*xs)[0]), None
            else:
                fn, state = (lambda *args: flat(*args[:-1], *args[-1])), list(leaves)
            graph = trace(fn, dict(self.inputs), state, name=self.name, param_names=self.param_names)
        except (UnsupportedPrimitiveError, SpecError) as e:
            raise SpecError(f"spec {self.name}: {' '.join(str(e).split())}") from None
        except SystemExit as e:
            raise SpecError(f"spec {self.name}: fn called sys.exit({e.code!r:.40}) while it was traced") from None
        except Exception as e:  # the user's code, under JAX tracing: any error type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpecError(f"spec {self.name}: fn does not trace with the example inputs ({type(e).__name__}: "
                            f"{first}); fn must be JAX-traceable and return outputs (stateless) or "
                            "(outputs, new_state) (step model)") from None
        graph.output_names = self.output_names(len(graph.outputs))
        graph.meta.update(model=self.name, fps=self.fps, source=self.source, frames_per_step=self.frames_per_step,
                          roles={"frame": self.frame_input, "dt": self.dt_input, "pulse": self.pulse_output})
        return graph

    reference_kind = "jax.jit"  # what reference() runs, for messages

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
        # the readable name each weight gets in the trace (graphopt.trace_cache keys a traced graph by them)
        self._const_names = [self.param_names.get(id(c)) for c in closed.consts]
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

    struct = getattr(model, "_inputs_struct", None)  # a functional model's inputs: a dict is matched by name
    if isinstance(struct, dict) and set(struct) != set(examples):
        raise SpecError(f"from_keras: the model's inputs are named {sorted(struct)}, the examples {sorted(examples)}")

    def call(nt_values, *args):
        if isinstance(struct, dict):
            x = dict(zip(examples, args))
        else:
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
    if os.sep in where and not where.endswith(".py"):
        raise SpecError(f"--model {ref}: {where} is not a .py file; give FILE.py:FUNC")
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
        except (Exception, SystemExit) as e:  # the user's module failed on import: any error type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpecError(f"--model {ref}: importing {where} failed ({type(e).__name__}: {first})") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise SpecError(f"--model {ref}: cannot import {where} ({e}); give FILE.py:FUNC or an importable "
                            "package.module:FUNC") from None
        except (Exception, SystemExit) as e:  # the user's module failed on import: any error type
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise SpecError(f"--model {ref}: importing {where} failed ({type(e).__name__}: {first})") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise SpecError(f"--model {ref}: {where} has no function {func}")
    try:
        got = fn()
    except SpecError:
        raise
    except SystemExit as e:
        raise SpecError(f"--model {ref}: {func}() called sys.exit({e.code!r:.40})") from None
    except Exception as e:  # the user's code: any error type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpecError(f"--model {ref}: {func}() failed ({type(e).__name__}: {first})") from None
    if not isinstance(got, ModelSpec):
        raise SpecError(f"--model {ref}: {func}() returned {type(got).__name__}, not a graphopt.ModelSpec")
    return got


import importlib.util  # noqa: E402  (importlib.util is a submodule: import it explicitly)
