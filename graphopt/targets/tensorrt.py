"""Target `tensorrt`: a TensorRT-legal ONNX (static shapes, ops and dtypes TensorRT's ONNX parser
supports, int32 indices, no plugins) and, where datacenter TensorRT and a CUDA GPU are present, a
serialized engine (fp32 or fp16, optimization level, static shapes).

Without a GPU the artifact holds the legal ONNX and its manifest; TensorRT-RTX, when installed,
proves that the ONNX parses and builds (no GPU needed for that); the engine is built later on a
GPU machine with `graphopt build --target tensorrt --from ARTIFACT` (or trtexec). Loading an
artifact without an engine runs the legal ONNX in onnxruntime, so it can be verified anywhere.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .. import artifact as art
from ..ir import Graph
from ..stream import Stream
from . import Capabilities, Check, DevicePart, NeedsDevice, Option, Target
from . import onnx as onnx_target
from .lowering import LoweringTable
from .trt_support import check_onnx, cuda_gpu_present, import_tensorrt

NAME = "tensorrt"
TARGET = Target(NAME, emits="TensorRT-legal .onnx + engine",
                backend="TensorRT (legal ONNX here; engine on an NVIDIA GPU)",
                caps=Capabilities(channels_first_convs=True, onnx_ops=True),
                options=(Option("--fp16", "build an fp16 engine", switch=True, default=False),
                         Option("--opt-level", "builder optimization level (0-5, default 3)", kind=int, range=(0, 5),
                                default=3)),
                device_part=DevicePart("a TensorRT engine", "build the engine into an existing tensorrt artifact "
                                       "(needs a GPU)", "its engine needs an NVIDIA GPU with TensorRT (the legal "
                                       "ONNX is the onnx row)"),
                check=Check("any .onnx file", "check an ONNX file for TensorRT: with TensorRT-RTX by parsing it, "
                            "else against TensorRT 10's operator table; exit 1 if any node is unsupported"),
                packages=("onnx", "onnxruntime", "tensorrt-rtx-cu12"), manifest_files=("tensorrt.engine",))
# the IR ops whose ONNX lowering TensorRT's parser takes: ONNX's table less these
TABLE = LoweringTable("TensorRT", "graphopt/targets/tensorrt.py", base=onnx_target.TABLE)
TABLE.unsupported("rem", "its ONNX lowering (Mod with fmod=1) is not in graphopt's TensorRT-legal set (not yet "
                         "checked against TensorRT's parser); use the onnx target")
LEGAL_DTYPES = frozenset({"float32", "float16", "int32", "bool"})
MAX_DIMS = 8  # TensorRT's Dims::MAX_DIMS


class NeedsGpu(NeedsDevice):
    """The legal ONNX is written; the engine needs datacenter TensorRT on an NVIDIA GPU."""


def after_build(final: Path, manifest: dict, log) -> None:
    """After `graphopt build`: report the TensorRT check; without an engine, NeedsGpu with the command
    that finishes the artifact on a GPU machine (exit status 3)."""
    check = manifest["tensorrt"]["check"]
    log(f"      TensorRT check: {check['checker']}: {'parses' if check['ok'] else 'FAILS'}"
        + (f", engine built by TensorRT-RTX in {check['rtx_build_s']} s" if check.get("rtx_engine_built") else ""))
    if manifest["tensorrt"]["engine"] is None:
        raise NeedsGpu("the TensorRT engine needs datacenter TensorRT on an NVIDIA GPU, which this machine lacks; "
                       f"{final.parent} holds the complete TensorRT-legal ONNX and manifest. Finish there with: "
                       + finish_command(final.parent, final.name, manifest["tensorrt"]["fp16"]))


def available() -> tuple[bool, str]:
    return onnx_target.available()


def legalize(graph: Graph) -> None:
    """Make the graph TensorRT-legal or fail naming the first illegal op (UnsupportedOpError, from TABLE)
    or dtype.

    int64 values (indices) become int32; everything else must already be legal."""
    TABLE.check(graph)
    for node in [n for n in graph.nodes if n.op == "conv" and len(n.inputs[0].shape) == 3 and n.inputs[1].is_param]:
        _conv1d_as_2d(graph, node)
    for node in graph.nodes:
        if node.op == "conv" and len(node.inputs[0].shape) not in (4, 5):
            raise art.ArtifactError(f"conv %{node.outputs[0].name} has {len(node.inputs[0].shape) - 2} spatial "
                                    "dims; TensorRT takes 2D or 3D convolutions only")
        if node.op == "conv" and not node.inputs[1].is_param:
            raise art.ArtifactError(f"conv %{node.outputs[0].name} has a computed kernel; TensorRT needs it "
                                    "constant (run the default pipeline, which folds it)")
        for v in node.inputs + node.outputs:
            if len(v.shape) > MAX_DIMS:
                raise art.ArtifactError(f"{node.op} %{node.outputs[0].name} has a rank-{len(v.shape)} tensor; TensorRT "
                                        f"takes at most {MAX_DIMS} dimensions")
            if v.dtype == "int64" and v.is_param:
                v.const = v.const.astype(np.int32)
                v.type = type(v.type)(v.shape, "int32")
            elif v.dtype not in LEGAL_DTYPES:
                raise art.ArtifactError(f"%{v.name} ({node.op}) is {v.dtype}; TensorRT computes in "
                                        f"{', '.join(sorted(LEGAL_DTYPES))}")
    for v in graph.inputs + [s.input for s in graph.state]:
        if v.dtype not in LEGAL_DTYPES:
            raise art.ArtifactError(f"input %{v.name} is {v.dtype}; TensorRT takes {', '.join(sorted(LEGAL_DTYPES))}")


def _conv1d_as_2d(graph: Graph, node) -> None:
    """A 1-D conv (TensorRT has 2-D and 3-D ones) as a 2-D conv over a height of 1: the same sums."""
    x, w, rest = node.inputs[0], node.inputs[1], node.inputs[2:]
    a = node.attrs
    x2 = graph.op("reshape", x, shape=(x.shape[0], x.shape[1], 1, x.shape[2]))
    w2 = graph.add_param(w.const.reshape(w.shape[:2] + (1,) + w.shape[2:]), w.name + "_2d")
    y2 = graph.op("conv", x2, w2, *rest, strides=(1,) + tuple(a["strides"]), pads=((0, 0),) + tuple(a["pads"]),
                  dilations=(1,) + tuple(a["dilations"]), groups=a["groups"],
                  lhs_dilations=(1,) + tuple(a["lhs_dilations"]) if a["lhs_dilations"] else ())
    y = graph.op("reshape", y2, shape=node.outputs[0].shape)
    graph.replace_all_uses(node.outputs[0], y)
    graph.nodes.remove(node)
    graph.toposort()


def finish_command(folder: Path, onnx_name: str, fp16: bool = False) -> str:
    return (f"graphopt build --target tensorrt --from {folder}{' --fp16' if fp16 else ''}   (or: trtexec "
            f"--onnx={folder / onnx_name} --saveEngine={folder / Path(onnx_name).with_suffix('.engine').name}"
            f"{' --fp16' if fp16 else ''})")


def release_pending(folder: Path, file_name: str, manifest: dict) -> dict:
    """A release's entry fields for an artifact (in `folder`, its place in the release, relative to the
    release folder) without its engine."""
    return {"engine": "needs an NVIDIA GPU with TensorRT; build it there, from the release folder, with: "
                      + finish_command(folder, file_name, manifest["tensorrt"]["fp16"]),
            "tensorrt_check": manifest["tensorrt"]["check"]["checker"]}


def card_lines(name: str, entry: dict) -> list[str]:
    """The model card's note on a release artifact whose engine is still to be built."""
    if "engine" not in entry:
        return []
    return [f"- `{name}`: TensorRT-legal ONNX checked with {entry['tensorrt_check']}; the engine {entry['engine']}"]


def inspect_check(path: Path) -> tuple[dict, str]:
    """`graphopt inspect --check tensorrt`: an ONNX file (or an artifact's) against TensorRT's parser."""
    from .. import trust
    from .trt_support import format_check
    p = Path(path)
    if p.is_dir():
        p = art.open_artifact(p).model_file
    if not p.is_file() or p.suffix != ".onnx":
        raise art.ArtifactError(f"{p} is not an .onnx file; --check tensorrt takes an ONNX model")
    trust.check_model_file(p, p.parent)  # e.g. external data must lie beside it
    try:
        result = check_onnx(p)
    except Exception as e:  # protobuf decode errors have many types
        raise art.ArtifactError(f"{p} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    return result, format_check(result, p)


def emit(graph: Graph, out_dir: Path, options: dict | None = None) -> art.Artifact:
    options = options or {}
    legalize(graph)
    out_dir = Path(out_dir)
    stem = options.get("stem", graph.name)
    model_file = out_dir / f"{stem}.onnx"
    import onnx
    model = onnx_target.to_onnx(graph, fuse=options.get("fuse", True), table=TABLE)
    onnx.save_model(model, str(model_file))
    manifest = art.describe_graph(graph, model_file.name, NAME, options.get("precision", "float32"))
    manifest["sha256"] = art.sha256(model_file)
    manifest["onnx"] = {"opset": onnx_target.OPSET, "nodes": len(model.graph.node)}
    check = check_onnx(model_file, build_engine=True)
    if not check["ok"]:
        bad = "; ".join(f"{u['node']} ({u['op']}): {u['message']}" for u in check["unsupported"][:5])
        raise art.ArtifactError(f"the TensorRT-legal ONNX does not pass {check['checker']}: {bad}")
    manifest["tensorrt"] = {"engine": None, "fp16": bool(options.get("fp16")),
                            "optimization_level": int(options.get("opt_level", 3)), "check": check}
    manifest["tools"] = art.tool_versions("onnx", "onnxruntime", "tensorrt", "tensorrt-rtx-cu12")
    if import_tensorrt() is not None and cuda_gpu_present():
        build_engine(model_file, manifest)
    return art.finish(graph, model_file, manifest)


def build_engine(model_file: Path, manifest: dict) -> Path:
    """Build the serialized engine beside the ONNX (needs `tensorrt` and a CUDA GPU); updates manifest."""
    trt = import_tensorrt()
    if trt is None or not cuda_gpu_present():
        raise NeedsGpu("building a TensorRT engine needs datacenter TensorRT (pip install tensorrt) and an NVIDIA "
                       "GPU; finish on such a machine with: " + finish_command(model_file.parent, model_file.name,
                                                                               manifest["tensorrt"]["fp16"]))
    opts = manifest["tensorrt"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_file)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise art.ArtifactError(f"TensorRT cannot parse {model_file}: {errors}")
    config = builder.create_builder_config()
    if opts["fp16"]:
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # float32 means float32: no TF32 convolutions/matmuls (on by default on Ampere and later)
        config.clear_flag(trt.BuilderFlag.TF32)
    config.builder_optimization_level = opts["optimization_level"]
    profile = builder.create_optimization_profile()  # static: min = opt = max
    for i in range(network.num_inputs):
        t = network.get_input(i)
        profile.set_shape(t.name, t.shape, t.shape, t.shape)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise art.ArtifactError(f"TensorRT could not build an engine from {model_file}")
    engine_file = model_file.with_suffix(".engine")
    tmp = engine_file.with_name(engine_file.name + ".tmp")
    tmp.write_bytes(bytes(engine))
    os.replace(tmp, engine_file)
    opts.update(engine=engine_file.name, engine_sha256=art.sha256(engine_file), tensorrt_version=trt.__version__,
                build_s=round(time.perf_counter() - t0, 2), precision="fp16" if opts["fp16"] else "fp32")
    return engine_file


def build_from(folder: str | Path, fp16: bool | None = None, opt_level: int | None = None) -> art.Artifact:
    """`graphopt build --target tensorrt --from ARTIFACT`: add the engine to an existing artifact."""
    opened = art.open_artifact(folder)  # every check a load makes
    manifest, model_file = opened.manifest, opened.model_file
    if manifest["target"] != NAME or not isinstance(manifest.get("tensorrt"), dict):
        raise art.ArtifactError(f"{folder} is a {manifest['target']} artifact, not a tensorrt one")
    if fp16 is not None:
        manifest["tensorrt"]["fp16"] = fp16
    if opt_level is not None:
        manifest["tensorrt"]["optimization_level"] = opt_level
    from ..outdir import record_written
    engine_file = build_engine(model_file, manifest)
    art.write_json(art.manifest_path_for(model_file), manifest)
    record_written(engine_file)
    return art.Artifact(model_file, manifest)


class TensorRTStream(Stream):
    """Runs the engine with the state on the GPU: two sets of state buffers (ping-pong), the step
    reads one and writes the other; only the frame goes in and only the output comes out."""

    def __init__(self, engine_file: Path, manifest: dict, initial_state):
        import torch
        trt = import_tensorrt()
        super().__init__(manifest, initial_state)
        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        if hasattr(runtime, "engine_host_code_allowed"):
            runtime.engine_host_code_allowed = False  # an engine may not bring code (lean runtime, plugins) along
        self._engine = runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self._engine is None:
            raise art.ArtifactError(f"TensorRT cannot deserialize {engine_file}; rebuild it on this machine")
        specs = manifest["inputs"] + manifest["outputs"] + \
            [{"name": s[k], "shape": s["shape"]} for s in manifest["state"] for k in ("input", "output")]
        for spec in specs:  # the buffers below are sized from the manifest: it must match the engine exactly
            got = tuple(self._engine.get_tensor_shape(spec["name"]))
            if got != tuple(spec["shape"]):
                raise art.ArtifactError(f"{engine_file}: tensor {spec['name']} is {got} in the engine, "
                                        f"{tuple(spec['shape'])} in the manifest; rebuild the engine")
        self._ctx = self._engine.create_execution_context()
        self._cuda = torch.cuda.Stream()
        dev = torch.device("cuda")
        tdtype = lambda spec: getattr(torch, np.dtype(spec["dtype"]).name)  # float32 / int32: TensorRT's types
        self._in = [torch.empty(tuple(i["shape"]), dtype=tdtype(i), device=dev) for i in manifest["inputs"]]
        self._out = [torch.empty(tuple(o["shape"]), dtype=tdtype(o), device=dev) for o in manifest["outputs"]]
        self._out_host = [torch.empty(o.shape, dtype=o.dtype).pin_memory() for o in self._out]
        self._names_in = [s["input"] for s in manifest["state"]]
        self._names_out = [s["output"] for s in manifest["state"]]
        for spec, buf in zip(manifest["inputs"], self._in):
            self._ctx.set_tensor_address(spec["name"], buf.data_ptr())
        for spec, buf in zip(manifest["outputs"], self._out):
            self._ctx.set_tensor_address(spec["name"], buf.data_ptr())
        self._bufs = [[torch.from_numpy(np.array(s)).to(dev) for s in self._initial_state],
                      [torch.empty(s.shape, dtype=torch.float32, device=dev) for s in self._initial_state]]
        self._reset()

    def _run(self, feeds, state):
        torch = self._torch
        src, dst = (self._bufs[0], self._bufs[1]) if state is self._bufs[0] else (self._bufs[1], self._bufs[0])
        with torch.cuda.stream(self._cuda):
            for buf, x in zip(self._in, feeds):
                buf.copy_(torch.from_numpy(np.asarray(x, order="C").reshape(buf.shape)), non_blocking=True)
            for n, b in zip(self._names_in, src):
                self._ctx.set_tensor_address(n, b.data_ptr())
            for n, b in zip(self._names_out, dst):
                self._ctx.set_tensor_address(n, b.data_ptr())
            if not self._ctx.execute_async_v3(self._cuda.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            for host, dev_out in zip(self._out_host, self._out):
                host.copy_(dev_out, non_blocking=True)
        self._cuda.synchronize()
        return [h.numpy().copy() for h in self._out_host], dst

    def _reset(self) -> None:
        for b, s in zip(self._bufs[0], self._initial_state):
            b.copy_(self._torch.from_numpy(np.array(s)))
        self._state = self._bufs[0]

    def _state_finite(self, state) -> bool:
        return bool(self._torch.stack([self._torch.isfinite(b).all() for b in state]).all())

    @property
    def native_state(self) -> list[np.ndarray]:
        with self._lock:
            return [b.cpu().numpy() for b in self._state]


def open_stream(model_file: Path, manifest: dict, initial_state, threads: int = 1, prefer_engine: bool = True):
    engine = manifest.get("tensorrt", {}).get("engine")
    if prefer_engine and engine and import_tensorrt() is not None and cuda_gpu_present():
        from ..manifest import resolve_inside
        from ..trust import check_model_file
        engine_file = resolve_inside(Path(model_file).parent, engine, "tensorrt.engine")
        check_model_file(engine_file, Path(model_file).parent)
        if not engine_file.is_file() or art.sha256(engine_file) != manifest["tensorrt"].get("engine_sha256"):
            raise art.ArtifactError(f"TensorRT engine {engine_file} is missing or does not match the engine_sha256 "
                                    "in its manifest; rebuild it with: " + finish_command(
                                        Path(model_file).parent, Path(model_file).name))
        return TensorRTStream(engine_file, manifest, initial_state)
    # no engine here (or no GPU): the legal ONNX in onnxruntime, for verification anywhere
    return onnx_target.OnnxStream(model_file, manifest, initial_state, threads=threads)
