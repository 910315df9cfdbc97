"""Output folders: written atomically, never over what graphopt did not write.

A build or release writes into a fresh folder beside the destination, named
`.NAME.graphopt-partial-PID`, holding a `.graphopt-partial` marker file for as long as the work is
unfinished: graphopt refuses to load, inspect or verify anything under such a folder, so nothing an
interrupted run leaves (kill -9, power loss) can be taken for a valid artifact. On success the marker
is replaced by `.graphopt-files` (the list of every file graphopt wrote there) and the folder is
renamed to NAME. The next run beside it removes partial folders whose process is gone.

The destination may be missing, or an empty folder. A folder graphopt wrote earlier (it has a
`.graphopt-files` list and holds nothing else) is replaced only with `force=True` (`--force`); a
non-empty folder graphopt did not write, a file, or a folder holding files the list does not name is
refused, and nothing in it is touched. Folders are created with the permissions the umask gives.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ArtifactError

PARTIAL_MARKER = ".graphopt-partial"
FILES_LIST = ".graphopt-files"
PARTIAL_INFIX = ".graphopt-partial-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _written_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _empty_dirs(folder: Path) -> list[str]:
    """Folders graphopt wrote that hold nothing (e.g. a SavedModel's assets/): the files list cannot name them."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_dir() and not p.is_symlink() and not any(p.iterdir()))


def _first_foreign(folder: Path) -> str | None:
    """The first file or folder under `folder` that its .graphopt-files list does not account for (the
    list itself, the files it names and the folders holding them), or None. Stops at the first one, so a
    large folder that is not an artifact is refused at once."""
    try:
        data = json.loads((folder / FILES_LIST).read_text())
        listed = {str(f) for f in data.get("files", [])} if isinstance(data, dict) else set()
        empty = {str(f) for f in data.get("empty_dirs", [])} if isinstance(data, dict) else set()
    except (OSError, ValueError, AttributeError, TypeError):
        return FILES_LIST
    dirs = {str(Path(f).parent) for f in listed} | {"."} | empty
    dirs |= {str(p) for f in empty for p in Path(f).parents}
    dirs |= {str(p) for f in listed for p in Path(f).parents}
    errors: list[OSError] = []
    for root, subdirs, files in os.walk(folder, onerror=errors.append):
        rel = os.path.relpath(root, folder)
        for d in subdirs:
            name = os.path.normpath(os.path.join(rel, d))
            if name not in dirs or os.path.islink(os.path.join(root, d)):
                return name
        for f in files:
            name = os.path.normpath(os.path.join(rel, f))
            if name != FILES_LIST and name not in listed:
                return name
        if errors:
            return os.path.relpath(errors[0].filename or root, folder)
    return os.path.relpath(errors[0].filename or folder, folder) if errors else None


def record_written(path: Path) -> None:
    """Add a file graphopt wrote into a finished folder (e.g. a TensorRT engine built later) to the
    nearest enclosing .graphopt-files list, so a later --force may replace it."""
    path = Path(path).resolve()
    for folder in path.parents:
        listing = folder / FILES_LIST
        if listing.is_file():
            try:
                data = json.loads(listing.read_text())
            except (OSError, ValueError):
                return
            files = set(data.get("files", [])) | {str(path.relative_to(folder))}
            data["files"] = sorted(files)
            tmp = listing.with_name(listing.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, listing)
            return


def check_destination(out: Path, force: bool = False) -> Path:
    """The resolved destination if graphopt may write it; else ArtifactError saying why and what to do."""
    out = Path(out).expanduser()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ArtifactError(f"--out {out} is a file (or a link), not a folder; graphopt writes an artifact folder "
                            "there: choose a folder path that does not exist yet")
    out = out.resolve()
    if out.is_dir() and any(out.iterdir()):
        foreign = _first_foreign(out) if (out / FILES_LIST).is_file() else next(iter(sorted(os.listdir(out))))
        if foreign:
            raise ArtifactError(f"--out {out} is a folder graphopt did not write (it holds {foreign!r}); nothing was "
                                "changed: choose a new or empty folder")
        if not force:
            raise ArtifactError(f"--out {out} already holds a graphopt artifact; pass --force to replace it, or "
                                "choose another folder")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    try:  # really try: permission bits do not tell for root, read-only mounts or /proc
        os.rmdir(tempfile.mkdtemp(prefix=".graphopt-probe-", dir=parent))
    except OSError as e:
        raise ArtifactError(f"cannot write --out {out}: {parent} is not a writable folder ({e.strerror}); "
                            "choose another --out") from None
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove partial folders an interrupted run left beside `out` (their process is gone)."""
    removed = []
    prefix = f".{out.name}{PARTIAL_INFIX}"
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        if not p.name.startswith(prefix) or p.is_symlink() or not p.is_dir():
            continue
        pid = p.name[len(prefix):]
        ours = (p / PARTIAL_MARKER).is_file() or not any(p.iterdir())  # marked, or empty (killed at mkdir)
        if pid.isdigit() and ours and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


_OWN_PARTIALS: set[Path] = set()  # the partial folders this process is writing (it may load from them)


def is_partial(path: Path) -> Path | None:
    """The unfinished graphopt folder that `path` lies in, if any (other than one this process is writing:
    a build verifies its artifact before it renames the folder)."""
    p = Path(path).resolve()
    for folder in [p] + list(p.parents):
        if (folder / PARTIAL_MARKER).is_file() and folder not in _OWN_PARTIALS:
            return folder
    return None


@contextlib.contextmanager
def atomic_dir(out_dir: Path, force: bool = False):
    """Yield a fresh partial folder beside out_dir; on success it becomes out_dir, on error it vanishes.

    The destination is checked first (check_destination), so a refused --out costs no work."""
    out_dir = check_destination(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o777)
    remove_stale_partials(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}{PARTIAL_INFIX}{os.getpid()}")
    if tmp.exists():  # this process's own earlier attempt (e.g. a retried build in one session)
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(mode=0o777 & ~_umask())
        (tmp / PARTIAL_MARKER).write_text("graphopt is writing this folder; it is not an artifact until renamed\n")
    except OSError as e:
        raise ArtifactError(f"cannot write beside --out {out_dir}: {e.strerror}; choose another --out") from None
    _OWN_PARTIALS.add(tmp)
    try:
        yield tmp
        # the list names the marker too: a crash between the rename and the marker's removal leaves a folder
        # that is refused as unfinished, and that the next run with --force may replace
        files = [f for f in _written_files(tmp) if f != FILES_LIST]
        (tmp / FILES_LIST).write_text(json.dumps({"written_by": "graphopt", "files": files,
                                                  "empty_dirs": _empty_dirs(tmp)}, indent=1) + "\n")
        check_destination(out_dir, force)  # nobody put anything there meanwhile
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.graphopt-replaced-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        _OWN_PARTIALS.discard(tmp)
        (out_dir / PARTIAL_MARKER).unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _OWN_PARTIALS.discard(tmp)
