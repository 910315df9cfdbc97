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
import warnings

QUIET = False  # --quiet: progress and log lines off (set by the CLI)


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
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    sys.stderr.flush()
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    os.dup2(devnull, 2)
    os.close(devnull)
