"""Targets: one module per runtime (emit an artifact, load it as a Stream)."""
from __future__ import annotations

import importlib

# target name -> module in this package
MODULES = {"onnx": "onnx", "xla": "xla", "tflite": "tflite", "tf": "tf", "torch": "torch_target",
           "torch-compile": "torch_compile", "tensorrt": "tensorrt"}


def module_for(target: str):
    if target not in MODULES:
        raise KeyError(target)
    return importlib.import_module(f"{__name__}.{MODULES[target]}")
