"""ONNX operator converters, one module per family; importing this package registers them all."""
from . import elementwise, shape  # noqa: F401
