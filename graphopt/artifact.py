"""Artifacts on disk: manifest JSON beside each model file, atomic folder writes, loading by path.

Loading checks, before any runtime sees a byte of the model: the manifest's schema (graphopt.manifest),
that every path it names stays inside the artifact folder, the model file's sha256, what the model
format may execute (graphopt.trust), and the initial state (names, dtypes, shapes, finite values; npz
read without pickle). Each failure is an ArtifactError naming the file and what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import manifest as schema
from .errors import ArtifactError
from .outdir import _umask, atomic_dir, is_partial  # noqa: F401  (atomic_dir: graphopt.artifact's API since 0.1)

MANIFEST_SUFFIX = ".manifest.json"
STATE_SUFFIX = ".state.npz"
FORMAT = schema.FORMAT
MAX_MANIFEST_BYTES = 16 << 20


@dataclass
class Artifact:
    path: Path  # the model file
    manifest: dict

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)


def manifest_path_for(model_file: Path) -> Path:
    if not Path(model_file).name:  # "/" or "": no file name to put a manifest beside
        raise ArtifactError(f"{str(model_file) or 'an empty path'} is not an artifact; pass an artifact folder or "
                            "model file built by graphopt")
    return model_file.with_name(model_file.name.rsplit(".", 1)[0] + MANIFEST_SUFFIX)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(folder: Path) -> str:
    """sha256 over a folder's files (relative paths and contents, in sorted order). A link is hashed as
    the path it names, never followed: hashing reads nothing outside the folder (graphopt writes no links,
    and the trust check refuses links out of an artifact)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_symlink() or p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(("link:" + os.readlink(f)).encode() if f.is_symlink() else sha256(f).encode())
    return h.hexdigest()


def tool_versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in ("graphopt", "numpy") + packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a fresh temporary file beside `path` (never a name a user's file may have),
    then renamed over it."""
    import tempfile
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".graphopt-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finish(graph, model_file: Path, manifest: dict) -> "Artifact":
    """Write the initial state and the manifest beside a model file every target has just written."""
    state_file = Path(model_file).parent / manifest["initial_state"]["file"]
    save_state(state_file, [s["input"] for s in manifest["state"]], [s.init for s in graph.state])
    manifest["initial_state"]["sha256"] = sha256(state_file)
    write_json(manifest_path_for(Path(model_file)), manifest)
    return Artifact(Path(model_file), manifest)


def save_state(path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **{n: np.asarray(a) for n, a in zip(names, arrays)})


def read_npz(path: Path, specs: dict[str, tuple[tuple, str]] | None = None, what: str = "state file",
             fix: str = "rebuild the artifact") -> dict[str, np.ndarray]:
    """The arrays of an npz, never unpickled, each checked before it is read: a plain .npy member, a
    numeric dtype, at most manifest.MAX_ELEMENTS elements, finite values, and where `specs` (name ->
    (shape, dtype)) is given, exactly those names with those shapes and dtypes."""
    if not Path(path).is_file():
        raise ArtifactError(f"{what} {path} is missing or not a regular file; {fix}")
    out, total = {}, 0
    try:
        with zipfile.ZipFile(path) as z:
            members = {n[:-4] if n.endswith(".npy") else n: n for n in z.namelist()}
            if specs is not None:
                missing = [n for n in specs if n not in members]
                if missing:
                    raise ArtifactError(f"{what} {path} lacks {missing[:3]}; {fix}")
            for name, member in members.items():
                if specs is not None and name not in specs:
                    continue
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    header = {(1, 0): np.lib.format.read_array_header_1_0,
                              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if header is None:
                        raise ValueError(f"npy format version {version} is not supported")
                    shape, fortran, dtype = header(f, max_header_size=10000)
                    if dtype.hasobject or dtype.kind not in "fiub" or dtype.fields is not None:
                        raise ArtifactError(f"{what} {path}: {name} has dtype {dtype}, not a numeric array "
                                            f"(graphopt never unpickles); {fix}")
                    total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if total > schema.MAX_TOTAL_STATE:
                        raise ArtifactError(f"{what} {path} holds more than {schema.MAX_TOTAL_STATE >> 20} MiB of "
                                            f"arrays; not a model state; {fix}")
                    if specs is not None:
                        want_shape, want_dtype = specs[name]
                        if tuple(shape) != tuple(want_shape) or dtype != np.dtype(want_dtype):
                            raise ArtifactError(f"{what} {path}: {name} is {dtype} {tuple(shape)}, the manifest "
                                                f"says {want_dtype} {tuple(want_shape)}; {fix}")
                    count = int(np.prod(shape, dtype=np.int64))
                    data = f.read(count * dtype.itemsize)
                if len(data) != count * dtype.itemsize:
                    raise ArtifactError(f"{what} {path}: {name} is truncated; {fix}")
                arr = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise ArtifactError(f"{what} {path}: {name} holds NaN/Inf values; {fix}")
                arr.setflags(write=False)
                out[name] = arr
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, RuntimeError, TypeError,
            SyntaxError, NotImplementedError, zipfile.LargeZipFile) as e:
        raise ArtifactError(f"{what} {path} is not a readable npz ({type(e).__name__}: {_first_line(e)}); "
                            f"{fix}") from None
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


_STATE_CACHE: dict[tuple, list[np.ndarray]] = {}
_STATE_CACHE_LOCK = threading.Lock()


def load_state(path: Path, names: list[str], specs: list[tuple[tuple, str]] | None = None,
               expect_sha256: str | None = None) -> list[np.ndarray]:
    """The initial state (read-only arrays in `names` order), checked against the manifest. Streams of
    one artifact share these arrays (cached by path and sha256)."""
    digest = None
    if Path(path).is_file():
        digest = sha256(path)
        if expect_sha256 and digest != expect_sha256:
            raise ArtifactError(f"initial state file {path} does not match the sha256 in the manifest (changed "
                                "after the build, or not this artifact's); rebuild or re-download the artifact")
    key = (str(Path(path).resolve()), digest, tuple(names), tuple(map(str, specs or ())))
    with _STATE_CACHE_LOCK:
        if key in _STATE_CACHE:
            return list(_STATE_CACHE[key])
    spec_map = dict(zip(names, specs)) if specs is not None else {n: None for n in names}
    data = read_npz(path, {n: s for n, s in spec_map.items() if s is not None} if specs is not None else None,
                    "initial state file")
    missing = [n for n in names if n not in data]
    if missing:
        raise ArtifactError(f"initial state file {path} lacks {missing[:3]}; rebuild the artifact")
    arrays = [data[n] for n in names]
    with _STATE_CACHE_LOCK:
        if len(_STATE_CACHE) > 64:
            _STATE_CACHE.clear()
        _STATE_CACHE[key] = arrays
    return list(arrays)


def find_manifest(path: str | os.PathLike) -> Path:
    """The manifest for an artifact given as its folder, its model file or its manifest."""
    p = Path(path)
    if not str(path) or not p.exists():
        raise ArtifactError(f"{str(path) or 'an empty path'} does not exist; pass an artifact folder or model file "
                            "built by graphopt")
    p = p.resolve() if not p.name else p  # "." and ".." name their folder
    if p.is_dir():
        found = sorted(p.glob("*" + MANIFEST_SUFFIX))
        if not found and manifest_path_for(p).is_file():  # a model folder (SavedModel) with its manifest beside
            return manifest_path_for(p)
        if len(found) != 1:
            raise ArtifactError(f"{p} holds {len(found)} manifests ({', '.join(f.name for f in found) or 'none'}); "
                                "pass the model file itself")
        return found[0]
    if p.name.endswith(MANIFEST_SUFFIX):
        return p
    m = manifest_path_for(p)
    if not m.is_file():
        raise ArtifactError(f"no manifest {m.name} beside {p}; graphopt artifacts carry one "
                            "(for a foreign model file use the commands that accept baselines)")
    return m


def read_manifest(path: str | os.PathLike) -> tuple[dict, Path]:
    """The manifest (schema-checked) and the artifact folder; refuses folders an unfinished run left."""
    m = find_manifest(path)
    schema.resolve_inside(m.parent, m.name, "(the manifest itself)")  # a link to a file elsewhere is refused
    partial = is_partial(m.parent)
    if partial is not None:
        raise ArtifactError(f"{m} lies in {partial}, a folder an unfinished or interrupted graphopt run left "
                            "(its .graphopt-partial marker says so); it is not an artifact: build it again")
    try:
        if not m.is_file():
            raise ArtifactError(f"manifest {m} is not a regular file; an artifact's manifest is a JSON file")
        with open(m, "rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"manifest {m} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a graphopt manifest")
        manifest = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"manifest {m} is not valid JSON ({_first_line(e)}); rebuild the artifact") from None
    except OSError as e:
        raise ArtifactError(f"cannot read manifest {m}: {e.strerror}") from None
    return schema.validate(manifest, str(m)), m.parent


@dataclass
class Opened:
    """An artifact checked for loading: manifest, folder, model file and initial state."""
    manifest: dict
    base: Path
    model_file: Path
    state: list[np.ndarray]


def open_artifact(path: str | os.PathLike) -> Opened:
    """Everything `load` checks before a runtime is involved (see the module docstring)."""
    manifest, base = read_manifest(path)
    from .targets import module_for
    try:
        module_for(manifest["target"])
    except KeyError:
        from .targets import MODULES
        raise ArtifactError(f"manifest names an unknown target {manifest['target']!r:.40} (known: "
                            f"{', '.join(MODULES)})") from None
    model_file = schema.resolve_inside(base, manifest["file"], "file")
    if not model_file.exists():
        raise ArtifactError(f"model file {model_file} named by the manifest is missing; rebuild the artifact")
    if not (model_file.is_file() or model_file.is_dir()):
        raise ArtifactError(f"model file {model_file} is not a regular file (a pipe or device?); rebuild the artifact")
    digest = sha256_tree(model_file) if model_file.is_dir() else sha256(model_file)
    if digest != manifest["sha256"]:
        raise ArtifactError(f"model file {model_file} does not match the sha256 in its manifest (changed after the "
                            "build, or not this artifact's file); rebuild or re-download the artifact")
    from . import trust
    trust.check_model_file(model_file, base)
    state_file = schema.resolve_inside(base, manifest["initial_state"]["file"], "initial_state.file")
    specs = [(tuple(s["shape"]), s["dtype"]) for s in manifest["state"]]
    state = load_state(state_file, [s["input"] for s in manifest["state"]], specs,
                       manifest["initial_state"].get("sha256"))
    return Opened(manifest, base, model_file, state)


def load(path: str | os.PathLike, *, check_finite: bool = True, **options):
    """Load any graphopt artifact as a Stream, dispatching on the manifest's target.

    check_finite=False: return NaN/Inf outputs instead of refusing the step (graphopt.stream)."""
    a = open_artifact(path)
    from .targets import module_for
    target = module_for(a.manifest["target"])
    # a target whose build needs more than its runtime (tflite: TensorFlow's converter, LiteRT to run) says
    # what loading needs in runtime_available(); loading imports that runtime alone
    ok, reason = getattr(target, "runtime_available", target.available)()
    if not ok:
        raise ArtifactError(f"cannot run a {a.manifest['target']} artifact here: {reason}")
    try:
        stream = target.open_stream(a.model_file, a.manifest, a.state, **options)
    except ArtifactError:
        raise
    except Exception as e:  # a runtime's own error types, e.g. a signature the manifest names that is not there
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ArtifactError(f"{a.model_file} cannot be opened as its manifest describes it ({type(e).__name__}: "
                            f"{first}); rebuild the artifact") from None
    stream.self_check(str(a.model_file))
    stream.check_finite = check_finite
    return stream


def state_io_names(graph) -> tuple[list[str], list[str]]:
    """The state tensors' names in an artifact: a pair's own names where the model gave them (an ONNX
    file's, kept so the artifact is a drop-in replacement: graph.meta["state_io"], pair name -> [input,
    output]), else the stable convention of the authors' own exports, state_in_<i> / state_out_<i>."""
    given = graph.meta.get("state_io") or {}
    ins, outs = [], []
    for i, s in enumerate(graph.state):
        name_in, name_out = given.get(s.name) or (f"state_in_{i}", f"state_out_{i}")
        ins.append(name_in)
        outs.append(name_out)
    return ins, outs


def _view_fields(pair) -> dict:
    """Manifest fields of a state stored in another layout than the model's: the view back to it."""
    if not pair.view:
        return {}
    from . import state_views
    return {"view": state_views.to_manifest(pair.view),
            "model_shape": list(state_views.model_shape(pair.input.shape, pair.view))}


def _max_dt(graph) -> float | None:
    """The longest dt a Stream steps with (a longer camera stall is stepped as this; see graphopt.stream)."""
    from .stream import MAX_DT_FRAMES
    fps = graph.meta.get("fps")
    dt = (graph.meta.get("roles") or {}).get("dt", "dt")
    return MAX_DT_FRAMES / float(fps) if fps and any(v.name == dt for v in graph.inputs) else None


def describe_graph(graph, file_name: str, target: str, precision: str) -> dict:
    """The manifest fields every target shares, derived from the IR graph it emitted."""
    spec = lambda name, v, **kw: {"name": name, "shape": list(v.shape), "dtype": v.dtype, **kw}
    ins, outs = state_io_names(graph)
    roles = graph.meta.get("roles")  # set from the ModelSpec; graphs made otherwise: by input name
    if roles is None:
        roles = {"frame": "frame" if any(v.name == "frame" and len(v.shape) >= 3 and v.dtype.startswith("float")
                                         for v in graph.inputs) else None,
                 "dt": "dt" if any(v.name == "dt" for v in graph.inputs) else None}
    role = lambda v: "frame" if v.name == roles.get("frame") else "dt" if v.name == roles.get("dt") else "input"
    pulse = lambda n: {"role": "pulse"} if n == roles.get("pulse") else {}
    return {
        "format": FORMAT,
        "model": graph.meta.get("model", graph.name),
        "target": target,
        "precision": precision,
        "file": file_name,
        "fps": graph.meta.get("fps"),
        "max_dt": _max_dt(graph),
        "frames_per_step": int(graph.meta.get("frames_per_step") or 1),
        "inputs": [spec(v.name, v, role=role(v)) for v in graph.inputs],
        "outputs": [spec(n, v, **pulse(n)) for n, v in zip(graph.output_names, graph.outputs)],
        "state": [spec(s.name, s.input, input=i, output=o, **_view_fields(s)) for s, i, o in zip(graph.state, ins, outs)],
        "initial_state": {"file": file_name.rsplit(".", 1)[0] + STATE_SUFFIX,
                          "format": "npz, one array per state input name"},
        "graph": {"nodes": len(graph.nodes), "ops": graph.op_histogram(), "flops_per_step": graph.flops(),
                  "params": len(graph.params()), "param_bytes": graph.param_bytes(),
                  "state_bytes": graph.state_bytes()},
        "source": graph.meta.get("source", {}),
        "pipeline": graph.meta.get("pipeline", {"passes": []}),
        "fixed_inputs": graph.meta.get("fixed_inputs") or {},
        **({"streams": graph.meta["streams"]} if graph.meta.get("streams") else {}),  # graphopt.multistream
    }
