"""The command line's output: graphopt's own messages on stderr, third-party log noise off.

TensorFlow, absl, XNNPACK, oneDNN and torch.export print INFO/WARNING lines from C++ and Python while
graphopt imports and runs them (~36 lines for `make artifacts`). Unless --verbose, the console
entry point turns off what can be turned off by configuration (TF_CPP_MIN_LOG_LEVEL, absl, Python
warnings) and sends what C++ writes straight to file descriptor 2 to /dev/null, keeping graphopt's
own stderr on a duplicate of the real descriptor, so graphopt's messages and Python tracebacks still
show. --quiet also drops graphopt's progress lines (errors and results stay).
"""
from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager

QUIET = False  # --quiet: progress and log lines off (set by the CLI)
HEARTBEAT_S = 10.0  # without a terminal: a progress line at most this often


def log(msg: str) -> None:
    """A progress or log line on stderr (nothing with --quiet)."""
    if not QUIET:
        print(msg, file=sys.stderr, flush=True)


def silence_third_party() -> None:
    """Before the runtimes are imported: their configurable logging off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow / LiteRT C++ INFO and WARNING
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    warnings.filterwarnings("ignore")  # library deprecation/user warnings (torch.export, keras, numpy)
    import logging
    for name in ("absl", "tensorflow", "jax", "torch", "onnx", "tf2onnx", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def detach_native_stderr() -> None:
    """What native code writes to fd 2 goes to /dev/null; Python's sys.stderr keeps the real stderr.
    Only for the console entry point (tests call cli.main in-process with their own capture)."""
    try:
        real = os.dup(2)
    except OSError:  # the caller closed stderr: hold fd 2 on /dev/null, so that no file graphopt opens lands
        try:         # there (and takes what native code writes to fd 2), and keep errors off stdout
            devnull = os.open(os.devnull, os.O_WRONLY)
            if devnull != 2:
                os.dup2(devnull, 2)
                os.close(devnull)
            sys.stderr = open(os.devnull, "w")
        except OSError:
            pass
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        os.close(real)
        return
    sys.stderr.flush()
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    os.dup2(devnull, 2)
    os.close(devnull)


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(items, total: int | None = None, desc: str = "", unit: str = "step"):
    """Iterate items with progress on stderr: a tqdm bar (elapsed, rate, time left) on a terminal, else
    a line every HEARTBEAT_S seconds ("desc: 120/600 frames, 14 s, about 56 s left"); nothing with --quiet."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if QUIET:
        yield from items
        return
    if _tty():
        from tqdm import tqdm
        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, mininterval=0.5)
        return
    t0 = last = time.perf_counter()
    for i, item in enumerate(items):
        now = time.perf_counter()
        if now - last >= HEARTBEAT_S and i:
            last = now
            left = f", about {(now - t0) / i * (total - i):.0f} s left" if total else ""
            log(f"      {desc}: {i}/{total if total else '?'} {unit}s, {now - t0:.0f} s{left}")
        yield item


@contextmanager
def working(desc: str):
    """A long call without steps of its own (loading a model, tracing it): after 2 s, the elapsed time
    every HEARTBEAT_S seconds on stderr (a live counter on a terminal); nothing with --quiet."""
    if QUIET:
        yield
        return
    done = threading.Event()
    t0 = time.perf_counter()

    def beat():
        wait = 2.0 if _tty() else HEARTBEAT_S
        while not done.wait(wait):
            elapsed = time.perf_counter() - t0
            if _tty():
                print(f"\r      {desc} ... {elapsed:.0f} s", end="", file=sys.stderr, flush=True)
                wait = 1.0
            else:
                log(f"      {desc} ... {elapsed:.0f} s")
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if _tty() and time.perf_counter() - t0 >= 2.0:
            print("\r\033[K", end="", file=sys.stderr, flush=True)  # clear the live counter
