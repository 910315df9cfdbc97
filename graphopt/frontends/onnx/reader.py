"""Reading an ONNX file as untrusted input: a parse error, external data outside the model's folder,
an opset graphopt does not take or local functions are refused or handled before any conversion."""
from __future__ import annotations

import os
from pathlib import Path

from .registry import OnnxImportError

MIN_OPSET = 11


def read(path: str | Path):
    """The onnx.ModelProto at path, external data loaded (only from files inside the model's folder),
    local functions inlined."""
    import onnx
    from onnx import external_data_helper
    p = Path(path)
    if not p.is_file():
        raise OnnxImportError(f"{p} is not a file; pass an .onnx model file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"{p} is not an ONNX model ({type(e).__name__} while parsing it); pass an .onnx "
                              "file written by an ONNX exporter") from None
    if not model.graph.node and not model.graph.output:
        raise OnnxImportError(f"{p} holds no ONNX graph; pass an .onnx file written by an ONNX exporter")
    base = p.resolve().parent
    for t in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(t):
            info = {e.key: e.value for e in t.external_data}
            _check_location(p, base, info.get("location", ""), t.name)
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise OnnxImportError(f"{p}: its external data cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); keep the data files beside "
                              "the model as the exporter wrote them") from None
    opset = opset_of(model, p)
    _check_names(model, p)
    if model.functions:
        try:
            from onnx import inliner
            model = inliner.inline_local_functions(model)
        except Exception as e:
            raise OnnxImportError(f"{p}: its local functions cannot be inlined ({type(e).__name__})") from None
    from .importer import tensor_array
    for t in external_data_helper._get_all_tensors(model):  # initializers and Constant values, in subgraphs too
        tensor_array(t, p)  # dims and data agree (or a one-line error), before anything reads them
    return model, opset


def _check_names(model, p: Path) -> None:
    """Graph inputs, outputs and initializers each named once (a name defined twice has no one meaning)."""
    g = model.graph
    for what, names in (("input", [vi.name for vi in g.input]), ("output", [vo.name for vo in g.output]),
                        ("initializer", [t.name for t in g.initializer])):
        seen = set()
        for n in names:
            if n in seen:
                raise OnnxImportError(f"{p}: the graph lists {what} {n!r:.80} twice; an ONNX graph names each "
                                      f"{what} once (re-export the model)")
            seen.add(n)


def _check_location(p: Path, base: Path, location: str, tensor: str) -> None:
    fix = "external data must be a file beside the model (a relative path inside its folder)"
    if not location or not location.isprintable() or os.path.isabs(location) or ".." in Path(location).parts:
        raise OnnxImportError(f"{p}: tensor {tensor!r:.60} names external data {location!r:.80}; {fix}")
    target = (base / location)
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise OnnxImportError(f"{p}: the external data file {location!r:.80} of tensor {tensor!r:.60} is "
                              f"missing; {fix}") from None
    if base not in resolved.parents or not resolved.is_file():
        raise OnnxImportError(f"{p}: tensor {tensor!r:.60}'s external data {location!r:.80} leads outside the "
                              f"model's folder or is no regular file; {fix}")


def opset_of(model, p: Path) -> int:
    import onnx
    newest = onnx.defs.onnx_opset_version()
    opsets = {}
    for o in model.opset_import:
        domain = o.domain or "ai.onnx"
        if domain in opsets and opsets[domain] != o.version:
            raise OnnxImportError(f"{p} imports the opset of domain {domain!r:.60} twice ({opsets[domain]} and "
                                  f"{o.version}); an ONNX model imports each domain once (re-export it)")
        opsets[domain] = o.version
    opset = opsets.get("ai.onnx")
    if opset is None:
        raise OnnxImportError(f"{p} imports no default ONNX opset; graphopt reads opsets {MIN_OPSET} to {newest}")
    if not MIN_OPSET <= opset <= newest:
        raise OnnxImportError(f"{p} uses opset {opset}; graphopt reads opsets {MIN_OPSET} to {newest} (convert it "
                              "with onnx.version_converter.convert_version(model, 17))")
    return int(opset)
