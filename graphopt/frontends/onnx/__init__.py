"""ONNX frontend: any ONNX file (opsets 11 to the newest onnx reads) into the graphopt IR.

    spec = graphopt.frontends.onnx.load("model.onnx")     # a graphopt.ModelSpec
    graphopt.build(spec, target="tflite", out="out/")

See importer (the conversion), pairing (recurrent state found in the file), reader (the file as
untrusted input), ops (the operator converters) and model (the spec, with onnxruntime as reference).
"""
from .model import OnnxModel, load
from .registry import CONVERTERS, OnnxImportError

__all__ = ["OnnxModel", "load", "OnnxImportError", "CONVERTERS"]
