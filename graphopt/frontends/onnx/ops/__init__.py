"""ONNX operator converters, one module per family; importing this package registers them all."""
from . import elementwise, shape, reduce, recurrent, control, nn  # noqa: F401
