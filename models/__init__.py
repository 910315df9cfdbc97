"""Built-in models (imports as graphopt.models): each adapter's load() returns a graphopt.ModelSpec made
with nothing a user's spec cannot use. `resolve` turns what a user names (a built-in name,
FILE.py:FUNC, package.module:FUNC, or a ModelSpec) into a ModelSpec."""
from __future__ import annotations

import functools
import importlib
import os

from .source import ModelSourceError

MODELS = {"facephys": "graphopt.models.facephys", "physnet": "graphopt.models.physnet"}


def zoo_names() -> list[str]:
    """Every model open-rppg 0.1.1 ships (its supported_models), as graphopt names them (lower case)."""
    from .rppg_zoo import NAMES
    return [n.lower() for n in NAMES]


def names() -> list[str]:
    return list(MODELS) + zoo_names()


def is_builtin(name) -> bool:
    return isinstance(name, str) and (name in MODELS or name.lower() in zoo_names())


def is_onnx_ref(name) -> bool:
    """An ONNX file (imported by graphopt.frontends.onnx)."""
    return isinstance(name, str) and name.lower().endswith(".onnx")


def is_user_ref(name) -> bool:
    """FILE.py:FUNC or package.module:FUNC (a user's spec function)."""
    return isinstance(name, str) and ":" in name and not is_onnx_ref(name)


def adapter(name: str):
    """The module that loads a built-in model (its load(weights, as_published))."""
    if not is_builtin(name):
        raise ModelSourceError(f"unknown model {name!r:.60}; choose one of: {', '.join(names())}, or give an ONNX "
                               "file (FILE.onnx) or FILE.py:FUNC (or package.module:FUNC) where FUNC() returns a "
                               "graphopt.ModelSpec")
    return importlib.import_module(MODELS.get(name, "graphopt.models.rppg_zoo"))


def check(model, weights: str | None = None, as_published: bool = False) -> None:
    """Fail fast on a model reference that cannot resolve, or options it does not take (before any long
    work)."""
    from ..spec import ModelSpec, SpecError, check_ref
    if is_onnx_ref(model):
        if weights is not None or as_published:
            raise SpecError(f"--weights and --as-published apply to {' and '.join(MODELS)}; an ONNX file carries "
                            "its own weights")
        if not os.path.isfile(model):
            raise SpecError(f"--model {model}: no such file; pass the path of an .onnx model")
        return
    if isinstance(model, ModelSpec) or is_user_ref(model) or (is_builtin(model) and model not in MODELS):
        if weights is not None or as_published:
            raise SpecError(f"--weights and --as-published apply to {' and '.join(MODELS)}; "
                            f"{getattr(model, 'name', model)} carries its own weights")
        if is_user_ref(model):
            check_ref(model)
        return
    adapter(model)


def resolve(model, weights: str | None = None, as_published: bool = False):
    """The ModelSpec for a built-in name (weights / as_published: its adapter's options), a user's
    FILE.py:FUNC or package.module:FUNC, or a ModelSpec given as is."""
    from ..spec import ModelSpec, SpecError, load_spec
    if is_onnx_ref(model):
        check(model, weights, as_published)
        from graphopt.frontends import onnx as onnx_frontend
        return onnx_frontend.load(model)
    if isinstance(model, ModelSpec) or is_user_ref(model):
        if weights is not None or as_published:
            raise SpecError("--weights and --as-published apply to built-in models; a ModelSpec carries its "
                            "own weights")
        spec = model if isinstance(model, ModelSpec) else _load_user(model)
        spec.validate()  # a spec may have been changed since it was made
        return spec
    return load(model, weights, as_published)


def cache_identity(model, weights: str | None = None, as_published: bool = False) -> dict | None:
    """What identifies a built-in model's spec without building it (graphopt.trace_cache's key): its name,
    package, version and a hash of the package's Python files, the weights file (path and sha256), the
    shipped initial state's sha256 where the model starts from it, and the precision. None for a model
    that is not built in; ModelSourceError where the package or a file is missing (as loading would)."""
    from .source import locate_package_file, package_code_sha256, sha256_file
    if not is_builtin(model):
        return None
    mod = adapter(model)
    if model in MODELS:
        path = weights or locate_package_file(mod.PACKAGE, mod.VERSION, mod.WEIGHTS)
        ident = {"model": model, "weights": os.path.abspath(path), "weights_sha256": sha256_file(path),
                 "precision": "mixed_float16" if as_published else "float32"}
    else:
        name = mod.canonical(model)
        family, variant = mod.family_of(name)
        rel = family.weights.format(v=variant)
        ident = {"model": name, "weights": rel,
                 "weights_sha256": sha256_file(locate_package_file(mod.PACKAGE, mod.VERSION, rel)),
                 "precision": "float32"}
        if family.name in ("ME-flow", "ME-chunk"):  # they start from the state open-rppg ships
            ident["state_sha256"] = sha256_file(locate_package_file(mod.PACKAGE, mod.VERSION, mod.STATE_FILE))
    ident.update(package=mod.PACKAGE, version=mod.VERSION,
                 package_code_sha256=package_code_sha256(mod.PACKAGE, mod.VERSION))
    return ident


@functools.lru_cache(maxsize=4)
def _load_user(ref: str):
    from ..spec import load_spec
    return load_spec(ref)


def load(name: str, weights: str | None = None, as_published: bool = False):
    """Build a built-in model once per process (building the authors' Keras model takes tens of seconds)."""
    return _load(name, weights, bool(as_published))


@functools.lru_cache(maxsize=4)
def _load(name: str, weights: str | None, as_published: bool):
    if name in MODELS:
        return adapter(name).load(weights=weights, as_published=as_published)
    check(name, weights, as_published)
    return adapter(name).spec(name)


__all__ = ["MODELS", "ModelSourceError", "adapter", "cache_identity", "check", "is_builtin", "is_user_ref", "load",
           "names", "resolve", "zoo_names"]
