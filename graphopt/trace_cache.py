"""The traced-IR cache: a model's IR graph as traced, kept on disk so the next build of the same model skips
building it (the authors' Keras model: tens of seconds) and tracing it.

Where: `<cache root>/trace/`, the reference cache's root (graphopt.equivalence.cache_dir: $GRAPHOPT_CACHE_DIR,
else $XDG_CACHE_HOME/graphopt or ~/.cache/graphopt). One file per entry, `<key digest>.npz`: the IR and
what verification needs of the model as a JSON document (member `doc`), parameters and initial state as
arrays beside it; written to a temporary file and renamed into place. Entries unused for MAX_AGE_DAYS are
removed, and the oldest beyond MAX_TOTAL_BYTES, whenever an entry is written.

Keys (the full key is stored in the entry and compared on load):
- a built-in model (facephys, physnet, the open-rppg zoo): computed without building it, from its name,
  the package and version, a hash of the package's Python files as installed, the weights file's sha256
  (and path, which the manifest records), the shipped initial state's sha256 where used, and the precision;
- a user's ModelSpec or an ONNX file: the spec's fingerprint (its jaxpr, weights and initial state; an
  ONNX file's bytes), with its name, roles, fps, source and parameter names;
- and for both: graphopt's version, a hash of graphopt's frontend, IR and model-adapter source files (so a
  code change misses), and the jax/jaxlib/keras/numpy versions.

An entry is untrusted input: read without pickle (np.load(allow_pickle=False)), sizes checked before
anything is read, every field validated, the graph re-verified (graphopt.ir.verify). A damaged, foreign or
stale entry is a miss (traced again and overwritten), never an error; a cache that cannot be written is a
note in the log. On a hit for a built-in model the spec is a CachedSpec, which builds the model only if
its reference must run (a reference-cache miss, e.g. another --frames).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .models.source import ModelSourceError
from .spec import ModelSpec

FORMAT, VERSION = "graphopt-trace-cache", 1
MAX_AGE_DAYS = 30
MAX_TOTAL_BYTES = 4 << 30  # the trace folder's size bound (oldest entries go first)
MAX_ENTRY_BYTES = 2 << 30
MAX_DOC_BYTES = 256 << 20
SPEC_FIELDS = ("name", "inputs", "state", "outputs", "dt_input", "frame_input", "pulse_output", "fps", "input_range",
               "source", "fingerprint", "reference_kind")


class TraceCacheError(ModelSourceError):
    """The model does not match its cache entry (the entry is removed): build again, or pass --no-cache.
    A ModelSourceError, so the command line says it in one line (exit status 2)."""


def cache_root() -> Path:
    from .equivalence import cache_dir
    return cache_dir() / "trace"


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """A hash of graphopt's source files a traced graph depends on: the frontends, the IR (and this cache's
    format), ModelSpec and the model adapters."""
    import graphopt
    import graphopt.models
    pkg = Path(graphopt.__file__).parent
    roots = [(pkg / "frontends", "frontends"), (pkg / "ir", "ir"), (Path(graphopt.models.__file__).parent, "models")]
    files = [(f"{name}/{p.relative_to(root).as_posix()}", p) for root, name in roots for p in root.rglob("*.py")]
    files += [(name, pkg / name) for name in ("__init__.py", "spec.py", "trace_cache.py", "safe_pickle.py")]
    h = hashlib.sha256()
    for rel, p in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def environment() -> dict:
    """The part of every key that is graphopt and the libraries a trace depends on."""
    import importlib.metadata

    from . import __version__
    libs = {}
    for dist in ("jax", "jaxlib", "keras", "numpy", "onnx"):
        try:
            libs[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            libs[dist] = None
    return {"format": VERSION, "graphopt": __version__, "graphopt_code": code_sha256(), "libraries": libs}


def builtin_key(model: str, weights: str | None = None, as_published: bool = False) -> dict | None:
    """A built-in model's key, without building it; None where it cannot be made (the package or weights
    missing: loading the model then says what to install)."""
    from . import models
    try:
        identity = models.cache_identity(model, weights, as_published)
    except (models.ModelSourceError, OSError, ValueError):
        return None
    return None if identity is None else {"kind": "builtin", **identity, **environment()}


def spec_key(spec) -> dict | None:
    """A ModelSpec's (or ONNX file's) key: its fingerprint and what else its trace records. None for a spec
    whose fingerprint fails (its trace then reports why) or a subclass with a trace of its own."""
    from . import equivalence
    from .frontends.onnx.model import OnnxModel
    try:
        fp = equivalence.fingerprint(spec)
    except Exception:
        return None
    key = {"kind": "spec", "class": f"{type(spec).__module__}.{type(spec).__qualname__}", "fingerprint": fp,
           "name": spec.name, "outputs": spec.outputs, "fps": spec.fps, "source": spec.source,
           "roles": {"frame": spec.frame_input, "dt": spec.dt_input, "pulse": spec.pulse_output},
           "frames_per_step": spec.frames_per_step}
    if type(spec) is OnnxModel:
        key.update(path=str(spec.path), opset=spec.opset, pairs=[list(p) for p in spec.pairs],
                   fixed_shapes={k: list(v) for k, v in sorted((spec.fixed_shapes or {}).items())})
    elif type(spec) is ModelSpec:
        names = getattr(spec, "_const_names", None)  # set by fingerprint(): the readable name of each weight
        if names is None:
            return None
        key["param_names"] = list(names)
    else:
        return None
    try:
        json.dumps(key, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return {**key, **environment()}


def entry_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / f"{digest}.npz"


# ---- the spec a hit stands for --------------------------------------------------------------------------

def _not_loaded(*args):
    raise TraceCacheError("a cached model's fn is not loaded")


class CachedSpec(ModelSpec):
    """A built-in model as its trace-cache entry records it: inputs, roles, initial state, fps, source and
    fingerprint, which is what verification needs; the model itself is built (once) only if its reference
    must run (a reference-cache miss)."""

    def model(self):
        if self._model is None:
            from . import equivalence
            self._log(f"      building {self.name} for its reference (the trace cache held its IR, but the "
                      "reference runs the model itself)")
            real = self._load_model()
            if equivalence.fingerprint(real) != self._fingerprint:
                remove(self._entry)
                raise TraceCacheError(f"{self.name} is not the model its trace-cache entry was made from "
                                      "(fingerprints differ); the entry is removed: build again, or pass --no-cache")
            self._model = real
        return self._model

    def reference(self):
        return self.model().reference()

    def flat_fn(self):
        return self.model().flat_fn()

    def trace(self):
        return self.model().trace()

    def fingerprint(self) -> str:
        return self._fingerprint


def _is_zeros(a: np.ndarray) -> bool:
    return not np.ascontiguousarray(a).reshape(-1).view(np.uint8).any()


def _spec_record(spec, enc) -> dict:
    """What a CachedSpec needs (example inputs of all-zero bytes, the built-ins', are stored as their type)."""
    from . import equivalence
    inputs = [[k, list(a.shape), a.dtype.name, None if _is_zeros(a) else enc.array(a)] for k, a in spec.inputs.items()]
    return {"name": spec.name, "inputs": inputs,
            "state": [enc.array(np.asarray(s)) for s in spec.state_leaves] if spec.state is not None else None,
            "outputs": spec.outputs, "dt_input": spec.dt_input, "frame_input": spec.frame_input,
            "pulse_output": spec.pulse_output, "fps": spec.fps, "input_range": list(spec.input_range),
            "source": enc.encode(spec.source), "fingerprint": equivalence.fingerprint(spec),
            "reference_kind": spec.reference_kind}


def _spec_from_record(rec, dec, load_model: Callable, entry: Path, log: Callable[[str], None]) -> CachedSpec:
    from .ir.types import DTYPES
    if type(rec) is not dict or set(rec) != set(SPEC_FIELDS):
        raise ValueError("spec record fields")
    inputs = {}
    for name, shape, dtype, key in rec["inputs"]:
        if dtype not in DTYPES or not all(type(d) is int and 0 <= d <= 1 << 31 for d in shape) \
                or int(np.prod(shape, dtype=np.float64)) > 1 << 28:
            raise ValueError("spec input")
        a = np.zeros(shape, dtype) if key is None else dec.array(key)
        if a.shape != tuple(shape) or a.dtype.name != dtype:
            raise ValueError("spec input")
        inputs[name] = a
    state = rec["state"]
    state = [dec.array(k) for k in state] if state is not None else None
    if not isinstance(rec["fingerprint"], str) or not isinstance(rec["reference_kind"], str):
        raise ValueError("spec fingerprint")
    spec = CachedSpec(name=rec["name"], fn=_not_loaded, inputs=inputs, state=state, outputs=rec["outputs"],
                      dt_input=rec["dt_input"], fps=rec["fps"], pulse_output=rec["pulse_output"],
                      frame_input=rec["frame_input"], input_range=tuple(rec["input_range"]),
                      source=dec.decode(rec["source"]))
    spec._fingerprint, spec.reference_kind = rec["fingerprint"], rec["reference_kind"]
    spec._load_model, spec._model, spec._entry, spec._log = load_model, None, entry, log
    return spec


# ---- reading and writing entries ------------------------------------------------------------------------

def _reject_constant(name):
    raise ValueError(f"{name} in the entry's JSON")


def read(path: Path, key: dict) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(document, arrays) of the entry at `path` if it is a well-formed entry for `key`; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES or not _ours(st):
                return None
            with zipfile.ZipFile(f) as z:
                infos = {i.filename: i for i in z.infolist()}
                if "doc.npy" not in infos or any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()) \
                        or infos["doc.npy"].file_size > MAX_DOC_BYTES:
                    return None
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                raw = npz["doc"]
                if raw.dtype != np.uint8 or raw.ndim != 1:
                    return None
                doc = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_reject_constant)
                if type(doc) is not dict or doc.get("format") != FORMAT or doc.get("version") != VERSION \
                        or doc.get("key") != json.loads(json.dumps(key)):
                    return None
                table = doc.get("arrays")
                if type(table) is not dict or set(infos) != {"doc.npy"} | {f"{k}.npy" for k in table}:
                    return None
                arrays = {}
                for k, d in table.items():
                    want = np.dtype(d["dtype"])
                    shape = tuple(int(x) for x in d["shape"])
                    if want.name not in ("bool", "int32", "int64", "float16", "float32", "float64") \
                            or any(x < 0 for x in shape) \
                            or int(np.prod(shape, dtype=np.float64)) * want.itemsize > infos[f"{k}.npy"].file_size:
                        return None
                    a = npz[k]
                    if a.dtype != want or a.shape != shape:
                        return None
                    a.flags.writeable = bool(d["writeable"])
                    arrays[k] = a
        return doc, arrays
    except Exception:  # a damaged or foreign entry: any error type from the zip, npy or JSON readers
        return None


def _ours(st: os.stat_result) -> bool:
    """An entry this user wrote and nobody else can change: owned by the user, not group- or world-writable
    (a cache folder shared with others must not feed one user's build with another's graph)."""
    uid = getattr(os, "geteuid", None)
    return (uid is None or st.st_uid == uid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_reference(path: Path, key: dict) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """A reference-cache entry (graphopt.equivalence.reference_run): (outputs, final state) if `path` is a
    well-formed entry for `key` (read like a trace entry: no pickle, sizes checked, the key compared),
    else None: a damaged, foreign or older entry is a miss."""
    got = read(path, {"reference": key})
    if got is None:
        return None
    doc, arrays = got
    n_out, n_state = doc.get("n_out"), doc.get("n_state")
    if type(n_out) is not int or type(n_state) is not int or set(arrays) != \
            {f"o{i}" for i in range(max(n_out, 0))} | {f"s{i}" for i in range(max(n_state, 0))}:
        return None
    outputs = [arrays[f"o{i}"] for i in range(n_out)]
    if any(o.ndim != 1 or o.dtype != np.float64 or not np.isfinite(o).all() for o in outputs):
        return None
    return outputs, [arrays[f"s{i}"] for i in range(n_state)]


def write_reference(path: Path, key: dict, outputs: list, state: list) -> None:
    """Store a reference run (see read_reference); a cache that cannot be written is left alone."""
    arrays = {**{f"o{i}": np.asarray(o) for i, o in enumerate(outputs)},
              **{f"s{i}": np.asarray(s) for i, s in enumerate(state)}}
    try:
        write(path, {"reference": key}, {"n_out": len(outputs), "n_state": len(state)}, arrays)
    except (OSError, TypeError, ValueError):
        pass


def write(path: Path, key: dict, doc: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the entry atomically (a temporary file in the folder, renamed over `path`)."""
    doc = {"format": FORMAT, "version": VERSION, "key": key, "created": time.time(), **doc,
           "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.name, "writeable": bool(a.flags.writeable)}
                      for k, a in arrays.items()}}
    blob = np.frombuffer(json.dumps(doc, allow_nan=False).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, doc=blob, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def evict(root: Path | None = None, keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove entries unused for MAX_AGE_DAYS, then the least recently used beyond MAX_TOTAL_BYTES (never
    `keep`), and temporary files a killed build left behind; returns what was removed."""
    root = root or cache_root()
    now = time.time() if now is None else now
    removed, entries = [], []
    try:
        listing = list(os.scandir(root))
    except OSError:
        return removed
    for e in listing:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        p = Path(e.path)
        if e.name.startswith(".tmp-"):
            if now - st.st_mtime > 86400:
                remove(p)
                removed.append(p)
            continue
        if not e.name.endswith(".npz"):
            continue
        if now - st.st_mtime > MAX_AGE_DAYS * 86400 and p != keep:
            remove(p)
            removed.append(p)
        else:
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(s for _, s, _ in entries)
    for _, size, p in sorted(entries):
        if total <= MAX_TOTAL_BYTES:
            break
        if p != keep:
            remove(p)
            removed.append(p)
            total -= size
    return removed


# ---- the build's entry point ----------------------------------------------------------------------------

@dataclass
class Traced:
    spec: Any  # the ModelSpec (a CachedSpec on a built-in model's hit)
    graph: Any  # the traced graph, meta["source"] with the fingerprint
    seconds: float  # loading (and tracing) time
    cache: str  # "hit", "miss" (traced and stored), "off" (--no-cache), "unavailable" (not stored: see note)
    note: str = ""

    def copy_graph(self):
        """A copy of the graph sharing nothing a pass or target may change (for one more build from it)."""
        from .ir.serialize import NotSerializable, from_doc, to_doc
        try:
            doc, arrays = to_doc(self.graph)
        except NotSerializable:
            return self.graph.clone()
        return from_doc(doc, {k: a.copy() if a.flags.writeable else a for k, a in arrays.items()})


def _load_entry(path: Path, key: dict, load_model: Callable | None, spec=None, log=lambda m: None):
    from .ir.serialize import Decoder, from_doc
    got = read(path, key)
    if got is None:
        return None
    doc, arrays = got
    try:
        dec = Decoder(arrays)
        graph = from_doc(doc["graph"], arrays, dec)
        if spec is None:
            spec = _spec_from_record(doc["spec"], dec, load_model, path, log)
        elif doc["spec"].get("fingerprint") != key.get("fingerprint"):
            return None
        src = graph.meta.get("source")
        if not isinstance(src, dict) or src.get("fingerprint") != spec._fingerprint \
                or [v.name for v in graph.inputs] != list(spec.inputs):
            return None
    except Exception:  # a malformed entry: any error from decoding, validating or verifying it
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return spec, graph


def store(path: Path, key: dict, spec, graph) -> str:
    """Write the entry for a freshly traced graph; "" or a note saying why it was not stored."""
    from .ir.serialize import Encoder, NotSerializable, to_doc
    try:
        enc = Encoder()
        gdoc, _ = to_doc(graph, enc)
        record = _spec_record(spec, enc)
        write(path, key, {"graph": gdoc, "spec": record}, enc.arrays)
    except (NotSerializable, TypeError, ValueError) as e:
        return f"the traced graph is not stored in the cache ({str(e)[:200]})"
    except OSError as e:
        return f"the trace cache at {path.parent} cannot be written ({e.strerror or e})"
    evict(path.parent, keep=path)
    return ""


def load_traced(model, weights: str | None = None, as_published: bool = False, *, cache: bool = True,
                check: Callable[[Any], None] | None = None, log: Callable[[str], None] = lambda m: None) -> Traced:
    """The model's spec and traced, verified graph (meta["source"] with the fingerprint): from the cache,
    or built and traced (and stored). check(spec) runs before any trace (on a hit too)."""
    from . import equivalence, models
    from .ir import verify as verify_ir
    t0 = time.perf_counter()
    check = check or (lambda spec: None)
    builtin = isinstance(model, str) and models.is_builtin(model)
    key = path = None
    if cache and builtin:
        key = builtin_key(model, weights, as_published)
        if key is not None:
            path = entry_path(key)
            hit = _load_entry(path, key, lambda: models.resolve(model, weights, as_published), log=log)
            if hit is not None:
                spec, graph = hit
                check(spec)
                return Traced(spec, graph, time.perf_counter() - t0, "hit")
    spec = models.resolve(model, weights, as_published)
    check(spec)
    if cache and not builtin:
        key = spec_key(spec)
        if key is not None:
            path = entry_path(key)
            hit = _load_entry(path, key, None, spec)
            if hit is not None:
                return Traced(spec, hit[1], time.perf_counter() - t0, "hit")
    graph = spec.trace()
    verify_ir(graph)
    graph.meta["source"] = {**spec.source, "fingerprint": equivalence.fingerprint(spec)}
    seconds = time.perf_counter() - t0
    if not cache:
        return Traced(spec, graph, seconds, "off")
    if key is None:
        return Traced(spec, graph, seconds, "unavailable", "this model has no trace-cache key")
    note = store(path, key, spec, graph)
    return Traced(spec, graph, seconds, "unavailable" if note else "miss", note)
