"""Artifacts on disk: manifest JSON beside each model file, atomic folder writes, loading by path."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST_SUFFIX = ".manifest.json"
STATE_SUFFIX = ".state.npz"
FORMAT = "graphopt-artifact/1"


class ArtifactError(ValueError):
    """An artifact path that cannot be loaded; the message says what is wrong with it."""


@dataclass
class Artifact:
    path: Path  # the model file
    manifest: dict

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)


def manifest_path_for(model_file: Path) -> Path:
    return model_file.with_name(model_file.name.rsplit(".", 1)[0] + MANIFEST_SUFFIX)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(folder: Path) -> str:
    """sha256 over a folder's files (relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        h.update(sha256(f).encode())
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


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
    save_state(Path(model_file).parent / manifest["initial_state"]["file"], [s["input"] for s in manifest["state"]],
               [s.init for s in graph.state])
    write_json(manifest_path_for(Path(model_file)), manifest)
    return Artifact(Path(model_file), manifest)


def save_state(path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **{n: np.asarray(a) for n, a in zip(names, arrays)})


def load_state(path: Path, names: list[str]) -> list[np.ndarray]:
    if not path.is_file():
        raise ArtifactError(f"initial state file {path} is missing; rebuild the artifact")
    with np.load(path) as data:
        missing = [n for n in names if n not in data]
        if missing:
            raise ArtifactError(f"initial state file {path} lacks {missing[:3]}; rebuild the artifact")
        return [data[n] for n in names]


@contextlib.contextmanager
def atomic_dir(out_dir: Path):
    """Yield a temporary folder beside out_dir; on success it replaces out_dir, on error it vanishes."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_manifest(path: str | os.PathLike) -> Path:
    """The manifest for an artifact given as its folder, its model file or its manifest."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p} does not exist; pass an artifact folder or model file built by graphopt")
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
    m = find_manifest(path)
    try:
        manifest = json.loads(m.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"manifest {m} is not valid JSON ({e}); rebuild the artifact") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"manifest {m} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest, m.parent


def load(path: str | os.PathLike, **options):
    """Load any graphopt artifact as a Stream, dispatching on the manifest's target."""
    manifest, base = read_manifest(path)
    from .targets import module_for
    try:
        target = module_for(manifest["target"])
    except KeyError:
        raise ArtifactError(f"manifest names an unknown target {manifest['target']!r}") from None
    ok, reason = target.available()
    if not ok:
        raise ArtifactError(f"cannot run a {manifest['target']} artifact here: {reason}")
    model_file = base / manifest["file"]
    if not model_file.exists():
        raise ArtifactError(f"model file {model_file} named by the manifest is missing; rebuild the artifact")
    state = load_state(base / manifest["initial_state"]["file"], [s["input"] for s in manifest["state"]])
    return target.open_stream(model_file, manifest, state, **options)


def state_io_names(n: int) -> tuple[list[str], list[str]]:
    """Stable state tensor names in artifacts (the convention of the authors' own exports)."""
    return [f"state_in_{i}" for i in range(n)], [f"state_out_{i}" for i in range(n)]


def _view_fields(pair) -> dict:
    """Manifest fields of a state stored in another layout than the model's: the view back to it."""
    if not pair.view:
        return {}
    from . import state_views
    return {"view": state_views.to_manifest(pair.view),
            "model_shape": list(state_views.model_shape(pair.input.shape, pair.view))}


def describe_graph(graph, file_name: str, target: str, precision: str) -> dict:
    """The manifest fields every target shares, derived from the IR graph it emitted."""
    spec = lambda name, v, **kw: {"name": name, "shape": list(v.shape), "dtype": v.dtype, **kw}
    ins, outs = state_io_names(len(graph.state))
    role = lambda v: v.name if v.name in ("frame", "dt") else "input"
    return {
        "format": FORMAT,
        "model": graph.meta.get("model", graph.name),
        "target": target,
        "precision": precision,
        "file": file_name,
        "fps": graph.meta.get("fps"),
        "frames_per_step": int(graph.meta.get("frames_per_step") or 1),
        "inputs": [spec(v.name, v, role=role(v)) for v in graph.inputs],
        "outputs": [spec(n, v) for n, v in zip(graph.output_names, graph.outputs)],
        "state": [spec(s.name, s.input, input=i, output=o, **_view_fields(s)) for s, i, o in zip(graph.state, ins, outs)],
        "initial_state": {"file": file_name.rsplit(".", 1)[0] + STATE_SUFFIX,
                          "format": "npz, one array per state input name"},
        "graph": {"nodes": len(graph.nodes), "ops": graph.op_histogram(), "flops_per_step": graph.flops(),
                  "params": len(graph.params()), "param_bytes": graph.param_bytes(),
                  "state_bytes": graph.state_bytes()},
        "source": graph.meta.get("source", {}),
        "pipeline": graph.meta.get("pipeline", {"passes": []}),
        "fixed_inputs": graph.meta.get("fixed_inputs") or {},
    }
