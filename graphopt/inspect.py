"""inspect: what an artifact holds (nodes, op histogram, parameters, state, FLOPs per step)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from . import artifact as art
from .targets import hook


def onnx_summary(model_file: Path) -> dict:
    import onnx
    try:
        model = onnx.load(str(model_file))
    except Exception as e:  # protobuf decode errors have many types
        raise art.ArtifactError(f"{model_file} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    return onnx_summary_of(model)


def onnx_summary_of(model) -> dict:
    import onnx
    init = model.graph.initializer
    return {
        "nodes": len(model.graph.node),
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "params": len(init),
        "param_bytes": int(sum(onnx.numpy_helper.to_array(t).nbytes for t in init)),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }


def file_size(path: Path) -> int:
    """Bytes of a model file, or of every file under a model folder (SavedModel)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def onnx_file_summary(path: Path) -> dict:
    """Summary of an ONNX file graphopt did not build: I/O, the state pairing the ONNX frontend finds,
    opset, producer, op histogram and parameters (read as the frontend reads it: untrusted)."""
    from .frontends.onnx import pairing, reader
    model, opset = reader.read(path)
    inits = {t.name for t in model.graph.initializer}

    def io(vi):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] \
            if t.HasField("shape") else None
        return {"name": vi.name, "shape": dims, "dtype": str(_np_dtype(t.elem_type))}
    s = onnx_summary_of(model)
    s.update(file=str(path), target="ONNX file (no graphopt manifest)", opset=opset,
             producer=f"{model.producer_name} {model.producer_version}".strip(),
             inputs=[io(v) for v in model.graph.input if v.name not in inits],
             outputs=[io(v) for v in model.graph.output],
             state_pairs=[list(p) for p in pairing.find(model, path)], size_bytes=file_size(path))
    s["flops_per_step"], s["flops_note"] = _onnx_flops(path)
    return s


def _onnx_flops(path: Path) -> tuple[int | None, str]:
    """FLOPs of one step as the ONNX frontend imports the file (dynamic leading dims as 1), or why not."""
    from .frontends.onnx import load
    from .models.source import ModelSourceError
    try:
        return int(load(path).trace().flops()), "as imported by graphopt (dynamic leading dims as 1)"
    except ModelSourceError as e:  # the frontend's and the spec's one-line errors
        return None, f"not imported: {' '.join(str(e).split())[:200]}"


def _np_dtype(elem_type: int):
    from .frontends.onnx.importer import np_dtype
    return np_dtype(elem_type)


def _shown(text, limit: int = 120) -> str:
    """A name from an untrusted file as printed: control characters escaped (no terminal escapes or forged
    lines), at most `limit` characters."""
    text = str(text)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_onnx_file(s: dict) -> str:
    shape = lambda v: f"{v['dtype']}[{_shown(','.join(map(str, v['shape'])))}]" if v["shape"] is not None \
        else v["dtype"]
    lines = [_shown(s["file"], 1000), f"  format      ONNX, opset {s['opset']}, producer "
                                      f"{_shown(s['producer']) or 'unknown'} (no graphopt manifest)",
             f"  nodes       {s['nodes']}",
             f"  params      {s['params']} tensors, {s['param_bytes'] / 1e6:.2f} MB",
             "  inputs      " + ", ".join(f"{_shown(v['name'])} {shape(v)}" for v in s["inputs"]),
             "  outputs     " + ", ".join(f"{_shown(v['name'])} {shape(v)}" for v in s["outputs"]),
             "  state       " + (", ".join(f"{_shown(i)} -> {_shown(o)}" for i, o in s["state_pairs"]) or
                                 "none found (give pairs with --state-pairs IN:OUT,...)"),
             f"  file size   {s['size_bytes'] / 1e6:.2f} MB",
             "  FLOPs/step  " + (f"{s['flops_per_step'] / 1e6:.1f} M ({s['flops_note']})" if s.get("flops_per_step")
                                 is not None else _shown(s.get("flops_note", "unknown"), 240)),
             "  ops         " + ", ".join(f"{_shown(k)} {v}" for k, v in s["ops"].items())]
    return "\n".join(lines)


def tflite_file_summary(path: Path) -> dict:
    """Summary of a .tflite file graphopt did not build: I/O, signatures, ops of the main subgraph and the
    XNNPACK delegate partitions (the file passes the same trust check a load does first)."""
    from .trust import check_model_file
    check_model_file(path)
    _check_tflite_tensors(path)
    from .targets import tflite
    try:
        it = tflite.interpreter(path)
        s = tflite.delegate_summary(path)
    except (RuntimeError, ValueError) as e:  # LiteRT refusing an inconsistent model when it allocates it
        raise art.ArtifactError(f"LiteRT cannot load {path} ({_shown(' '.join(str(e).split()) or type(e).__name__, 200)}"
                                "); it is not a valid TFLite model: export it again") from None
    safe = _shown
    tensors = it.get_tensor_details()
    consts = [t for t in tensors if t.get("buffer_idx", 0)] if tensors and "buffer_idx" in tensors[0] else []
    return {"file": str(path), "target": "TFLite file (no graphopt manifest)", "nodes": s["ops"],
            "ops": s["op_histogram"], "xnnpack_partitions": s["xnnpack_partitions"],
            "inputs": [{"name": safe(d["name"]), "shape": [int(x) for x in d["shape"]], "dtype": d["dtype"].__name__}
                       for d in it.get_input_details()],
            "outputs": [{"name": safe(d["name"]), "shape": [int(x) for x in d["shape"]], "dtype": d["dtype"].__name__}
                        for d in it.get_output_details()],
            "signatures": {safe(k): {kind: [safe(n) for n in v.get(kind, {})] for kind in ("inputs", "outputs")}
                           for k, v in it.get_signature_list().items()},
            "tensors": len(tensors), "size_bytes": file_size(path), "constant_tensors": len(consts)}


MAX_TFLITE_TENSOR_BYTES = 4 << 30  # all tensors of all subgraphs, as declared: LiteRT allocates them to inspect


def _check_tflite_tensors(path: Path) -> None:
    """Refuse a file whose declared tensors would take more than MAX_TFLITE_TENSOR_BYTES when LiteRT allocates
    them (inspect allocates the model to count its XNNPACK partitions), before it does."""
    from .trust import _tflite_schema
    data = path.read_bytes()
    total = 0
    try:
        model = _tflite_schema(path).Model.GetRootAsModel(data, 0)
        for s in range(model.SubgraphsLength()):
            sub = model.Subgraphs(s)
            for t in range(sub.TensorsLength()):
                tensor = sub.Tensors(t)
                total += 8 * int(np.prod([max(int(d), 1) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength()
                                         else [1], dtype=np.float64))
    except Exception as e:  # a corrupt flatbuffer (check_model_file reads it first, so rarely here)
        raise art.ArtifactError(f"{path} is not a readable TFLite flatbuffer ({type(e).__name__}); export it again") \
            from None
    if total > MAX_TFLITE_TENSOR_BYTES:
        raise art.ArtifactError(f"{path} declares tensors of about {total / 2 ** 30:.0f} GiB, more than the "
                                f"{MAX_TFLITE_TENSOR_BYTES >> 30} GiB inspect lets LiteRT allocate; it is not an rPPG "
                                "step model (check its shapes)")


def format_tflite_file(s: dict) -> str:
    shape = lambda v: f"{v['dtype']}[{','.join(map(str, v['shape']))}]"
    lines = [s["file"], "  format      TFLite (no graphopt manifest)",
             f"  ops         {s['nodes']} in the main subgraph: " + ", ".join(f"{k} {v}" for k, v in s["ops"].items()),
             f"  XNNPACK     {s['xnnpack_partitions']} delegate partition(s)",
             "  inputs      " + ", ".join(f"{v['name']} {shape(v)}" for v in s["inputs"]),
             "  outputs     " + ", ".join(f"{v['name']} {shape(v)}" for v in s["outputs"]),
             f"  tensors     {s['tensors']}",
             f"  file size   {s['size_bytes'] / 1e6:.2f} MB"]
    for name, sig in s["signatures"].items():
        lines.append(f"  signature   {name}: ({', '.join(sig['inputs'])}) -> ({', '.join(sig['outputs'])})")
    return "\n".join(lines)


def is_plain_tflite(path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() == ".tflite" and not art.manifest_path_for(p).is_file()


def is_plain_onnx(path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() == ".onnx" and not art.manifest_path_for(p).is_file()


def inspect(path) -> dict:
    """Summary of a graphopt artifact (manifest + the model file itself), after every check a load makes
    short of starting the runtime (graphopt.artifact.open_artifact): a broken artifact is an error.
    An ONNX file without a graphopt manifest: onnx_file_summary."""
    if is_plain_onnx(path):
        return onnx_file_summary(Path(path))
    if is_plain_tflite(path):
        return tflite_file_summary(Path(path))
    opened = art.open_artifact(path)
    try:
        return _summary(opened.manifest, opened.model_file)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise art.ArtifactError(f"manifest of {opened.model_file} lacks or mistypes a field inspect reports "
                                f"({type(e).__name__}: {e}); rebuild the artifact") from None


def _summary(manifest: dict, model_file: Path) -> dict:
    summary = {"file": str(model_file), "target": manifest["target"], "precision": manifest["precision"],
               "model": manifest["model"], "pipeline": [p["name"] for p in manifest["pipeline"]["passes"]]}
    if model_file.suffix == ".onnx":
        summary.update(onnx_summary(model_file))
    extra = hook(manifest["target"], "inspect_summary")  # what the target adds (e.g. TFLite's own ops)
    if extra:
        summary.update(extra(manifest))
    g = manifest["graph"]
    summary.setdefault("params", g["params"])  # the IR's, where the model file is not ONNX
    summary.setdefault("param_bytes", g["param_bytes"])
    summary.update(flops_per_step=g["flops_per_step"], ir_nodes=g["nodes"],
                   state_tensors=len(manifest["state"]), state_bytes=g["state_bytes"],
                   state_relaid=sum(1 for st in manifest["state"] if st.get("view")),
                   size_bytes=file_size(model_file),
                   tier=manifest.get("equivalence", {}).get("tier"))
    return summary


def format_summary(s: dict) -> str:
    if "state_pairs" in s:
        return format_onnx_file(s)
    if "signatures" in s:
        return format_tflite_file(s)
    lines = [f"{s['file']}",
             f"  target      {s['target']} ({s['precision']}), model {s['model']}",
             f"  pipeline    {', '.join(s['pipeline']) or 'none (unfused)'}",
             f"  nodes       {s.get('nodes', s['ir_nodes'])} (IR: {s['ir_nodes']})",
             f"  params      {s['params']} tensors, {s['param_bytes'] / 1e6:.2f} MB",
             f"  state       {s['state_tensors']} tensors, {s['state_bytes'] / 1e6:.2f} MB"
             + (f"; {s['state_relaid']} stored in another layout than the model's (views in the manifest)"
                if s.get("state_relaid") else ""),
             f"  FLOPs/step  {s['flops_per_step'] / 1e6:.1f} M",
             f"  file size   {s['size_bytes'] / 1e6:.2f} MB",
             f"  tier        {s['tier'] or 'not verified'}"]
    extra = hook(s["target"], "inspect_lines")
    if extra:
        lines += extra(s)
    if s.get("tensor_dtypes"):
        lines.append("  tensors     " + ", ".join(f"{k} {v}" for k, v in s["tensor_dtypes"].items()))
    if "ops" in s:
        lines.append("  ops         " + ", ".join(f"{k} {v}" for k, v in s["ops"].items()))
    return "\n".join(lines)
