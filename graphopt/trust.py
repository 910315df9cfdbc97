"""Load-time trust checks: refuse a model file that could run code, or read files outside its folder,
when a runtime loads it. Artifacts are untrusted input (downloaded from a hub, built by someone else):
`check_model_file(path, base)` runs before any runtime sees the file, dispatching on the file's format
(its suffix, or a folder holding saved_model.pb), never on a manifest's target name. It reads the file
with plain parsers only (zipfile, json, pickletools, protobuf, flatbuffers, MLIR bytecode): no check
unpickles, imports or runs anything from the file. A refusal raises UntrustedArtifactError (an
ArtifactError, so a ValueError) with one line naming the file, what is wrong and what to do.

What each format may execute, and what is refused:

- `.pt2` (torch.export archive, a zip; `torch.export.load`, then `.module()`). In torch 2.13 loading
  unpickles with `torch.load(weights_only=False)` every weight or constant whose payload config
  (data/weights/model_weights_config.json, data/constants/model_constants_config.json) says
  "use_pickle": true, unpickles constants named custom_obj_* (torchbind) and opaque_obj_* (plain
  pickle.loads), torch.loads legacy data/weights/<model>.pt and data/constants/<model>.pt files, and
  torch.loads data/sample_inputs/<model>.pt with weights_only=True and, if that fails, again with
  weights_only=False; it dlopens AOTInductor libraries under data/aotinductor/; if the archive reader
  fails it falls back to a legacy layout (serialized_*.pt at the zip's root) that it torch.loads. The
  serialized program (models/model.json) is code too: `guards_code` strings are pasted into Python
  source that `.module()` exec()s (the guards then run on every call), symbolic-shape expressions go
  through sympy.sympify (eval), and node targets are resolved by getattr on the torch, operator and math
  modules, so a node may call any attribute reachable from them (e.g. a function that runs a shell
  command). Allowed: exactly what graphopt's torch.export.save writes, i.e. one root folder holding
  archive_format ("pt2"), archive_version ("0"), byteorder, .data/*, models/model.json, the two payload
  configs with raw weight_N / tensor_N payloads (read by torch as raw bytes, never unpickled), and
  data/sample_inputs/model.pt, a torch.save zip whose data.pkl is scanned opcode by opcode (pickletools,
  nothing is executed) and may name only the globals torch.save writes for plain tensors
  (torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict), so even the
  weights_only=False retry can only rebuild tensors. Refused: any other member (AOTInductor, executorch,
  pickled or legacy payloads, extra files, a second program), path traversal, duplicate or compressed
  members (torch stores every member; this also keeps zip bombs out), any pickle stream elsewhere,
  use_pickle, guards_code, range constraints, symbolic values (as_expr), graph arguments of kinds
  graphopt never emits (subgraphs of higher-order ops, torchbind objects, operators, symbolic ints), and
  any node whose target is not in TORCH_OPS: the aten ops torch.export makes of graphopt's torch
  lowering (graphopt/targets/torch_lowering.py); custom namespaces, prims, torchbind and higher-order
  ops (which call subgraphs or Python) are not in it.

- SavedModel (`tf` target: a folder X.savedmodel holding saved_model.pb and variables/). A SavedModel
  is a program. tf.saved_model.load (TF 2.21) builds every function in the library (building runs
  nothing), restores variables from variables/ with TF's own checkpoint code (not the file's
  functions), and runs functions from the file at load time: each resource's _create_resource and
  _initialize (and _destroy_resource when it is freed), and the restore functions of saveable
  objects. A SavedModel without a TF2 object graph, or with several meta graphs, is loaded by the TF1
  loader, which runs the graph's restore op and init ops. Checked (saved_model.pb parsed with TF's
  protobuf classes): exactly one meta graph with an object graph; every op in every function of the
  library must be in TF_OPS (the ops graphopt's TF lowering, tf_lowering.py and tf_module.py, makes,
  plus function calls, Const, Identity and NoOp), whether or not anything calls it; the top-level
  graph (run only by TF1 and C++ loaders) may hold only Placeholder, Const, NoOp and calls. The one
  exception is the pair of saver functions that tf.saved_model.save writes for TF1 loaders
  (__inference__traced_save/_restore, named by saver_def): TF 2.21's loader never runs them, and
  they may hold only the checkpoint ops in TF_SAVER_OPS (SaveV2, RestoreV2, MergeV2Checkpoints, ...)
  and must not be called from anything else. So file I/O ops (WriteFile, ReadFile, MatchingFiles,
  Save/Restore outside the saver functions), PyFunc/EagerPyFunc, dataset and control-flow ops that
  call functions are refused wherever they appear. Object-graph nodes may be user objects of the
  generic kinds, functions, concrete functions, variables, constants and assets: resources, saveable
  objects and registered savers (whose functions run at load) are refused. Assets must stay inside the
  folder; every file in the folder must be a regular file whose real path is inside it (a symlinked
  variable shard could read anything); saved_model.pbtxt/.cpb beside the .pb are refused (other
  loaders read those instead).

- `.jaxexport` (jax.export serialization). `jax.export.deserialize` reads a flatbuffer (pure data;
  pytree nodes resolve only to types registered in this process) and MLIR bytecode (parsed, not run).
  Calling it compiles the StableHLO module with XLA, which runs any custom call registered in jaxlib,
  Python host callbacks included (xla_ffi_python_cpu_callback and friends; jax's own export-time
  custom-call check is not applied when deserializing). The module's ops are walked with jaxlib's MLIR
  bindings. Refused: stablehlo.custom_call (graphopt's JAX lowering, jax_lowering.py, emits none, so no
  target is allowed), infeed/outfeed/send/recv (host transfers), any op or custom-call target naming a
  callback, any op outside the builtin, func, stablehlo, chlo and sdy (sharding annotation) dialects;
  non-empty disabled_safety_checks; effects; serialized VJPs.

- `.tflite`: parsed with the TFLite flatbuffer schema. Custom operators run whatever kernel the
  interpreter has registered under that name, and Flex* (select TF ops) run TensorFlow kernels such
  as WriteFile. Refused: any operator code that is CUSTOM or STABLEHLO_CUSTOM_CALL or has a
  custom_code, operators pointing past the operator-code table, buffers whose offset/size lie outside
  the file. Builtin ops are allowed.

- `.onnx`: loaded with onnx.load(load_external_data=False) (a protobuf parse). onnxruntime reads
  external data from the path in each tensor's `location`: every external tensor (initializers,
  sparse initializers, Constant and other attribute tensors, in If/Loop/Scan subgraphs and model
  functions, recursively) must name a relative location, resolved from the model's folder with
  symlinks followed, that is an existing file inside `base` (the artifact folder). Absolute paths,
  `..` escapes, symlinks out of the folder and onnxruntime's in-memory address tag are refused, as
  are empty files and models with no nodes and no outputs. Ops in custom domains (e.g. com.microsoft)
  are allowed: onnxruntime runs only custom-op libraries the caller registers, never one the model
  names.

- `.engine` (TensorRT, needs a GPU): a serialized engine can embed host code (a lean runtime, plugin
  libraries) that TensorRT loads when the runtime allows it, and can instantiate any plugin already
  registered in the process. No parser for engines exists outside TensorRT, so check_engine only
  checks it is a regular file inside the artifact folder; graphopt deserializes an engine only with
  the TensorRT runtime's `engine_host_code_allowed = False` and after its sha256 matches the
  manifest's engine_sha256 (which catches a swapped file, not a malicious artifact: whoever wrote the
  engine wrote the manifest). An engine from an untrusted source should be rebuilt from the
  artifact's ONNX (`graphopt build --target tensorrt --from ...`) rather than loaded.

- `.vmfb` (IREE VM module, llvm-cpu): a stored zip whose first member, module.fb, is the VM bytecode
  flatbuffer (identifier IREE) that the runtime reads by offset, followed by the executables it dispatches:
  native code (embedded ELF) that IREE's own loader maps and runs, in process. Like an engine it cannot be
  checked for what that code does: check_vmfb checks only that it is such an archive (a regular file, the
  first member module.fb, stored, with the IREE identifier); graphopt hands the runtime the bytes whose
  sha256 it has just checked against the manifest (a swapped file, not a malicious artifact: whoever wrote
  the .vmfb wrote the manifest), with no module but IREE's HAL to import from. A .vmfb from an untrusted
  source should be recompiled from the artifact's StableHLO (.stablehlo.mlir, text) or rebuilt.

- State files (npz, gzip-JSON) are read by artifact.py and baseline.py with allow_pickle=False.
"""
from __future__ import annotations

import io
import json
import os
import pickletools
import re
import stat
import zipfile
from pathlib import Path

from .errors import ArtifactError

REBUILD = "graphopt never writes this: rebuild the artifact with `graphopt build` instead of loading this file"


class UntrustedArtifactError(ArtifactError):
    """A model file that could run code or read outside its folder when loaded; the message names the file,
    what is wrong and what to do."""


def _refuse(path, problem: str, todo: str = REBUILD):
    raise UntrustedArtifactError(f"refusing to load {path}: {problem}; {todo}")


def check_model_file(path: str | os.PathLike, base: str | os.PathLike | None = None) -> None:
    """Check a model file (or SavedModel folder) before any runtime loads it; raise UntrustedArtifactError.

    base: the artifact folder; the model and every file it pulls in must resolve inside it (default:
    the model's parent folder)."""
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    if not os.path.lexists(path):
        _refuse(path, "it does not exist", "pass the model file of a graphopt artifact")
    if not _inside(path, base):
        _refuse(path, f"its real path {os.path.realpath(path)} lies outside the artifact folder {base}",
                "keep the model file inside its artifact folder (no symlinks out of it)")
    from .outdir import is_partial
    if is_partial(path.parent) is not None:
        _refuse(path, "it lies in a folder an unfinished or interrupted graphopt run left (.graphopt-partial)",
                "build it again")
    if path.is_dir():
        if path.suffix == ".savedmodel" or (path / "saved_model.pb").exists():
            return check_savedmodel(path)
        _refuse(path, "it is a folder, not a SavedModel (no saved_model.pb)", "pass a model file")
    checks = {".pt2": check_pt2, ".jaxexport": check_jaxexport, ".tflite": check_tflite, ".engine": check_engine,
              ".vmfb": check_vmfb}
    if path.suffix == ".onnx":
        return check_onnx(path, base)
    if path.suffix in checks:
        return checks[path.suffix](path)
    _refuse(path, f"{path.suffix or 'no suffix'} is not a model format graphopt loads",
            "pass an .onnx, .pt2, .jaxexport, .tflite, .vmfb or .engine file or a .savedmodel folder")


def _inside(path, base) -> bool:
    """Whether path's real path (symlinks followed) is base's real path or below it."""
    real, root = os.path.realpath(path), os.path.realpath(base)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _regular_file(path: Path) -> None:
    if not path.is_file():
        _refuse(path, "it is not a regular file", "pass the model file of a graphopt artifact")


# ---- .pt2 (torch.export archive) ----------------------------------------------------------------------

# The aten ops torch.export (torch 2.13) makes of graphopt's torch lowering (targets/torch_lowering.py):
# every IR op and every branch of its lowering (conv 1-3-D, grouped, padded; pools of every mode and rank;
# int and float div/rem; both round modes; matmul and einsum dots; ...), exported as one graph by
# tests/test_trust.py, which fails when the lowering starts emitting an op that is not here.
TORCH_OPS = frozenset({
    "_assert_tensor_metadata.default", "abs.default", "add.Tensor", "amax.default", "amin.default",
    "avg_pool2d.default", "avg_pool3d.default", "cat.default", "ceil.default", "clamp.default", "clone.default",
    "contiguous.default", "conv1d.default", "conv2d.default", "conv3d.default", "cos.default", "cumsum.default",
    "div.Tensor", "div.Tensor_mode", "einsum.default", "eq.Tensor", "erf.default", "exp.default", "expand.default",
    "expm1.default", "flip.default", "floor.default", "fmod.Tensor", "ge.Scalar", "ge.Tensor", "gt.Tensor",
    "index_select.default", "isfinite.default", "le.Tensor", "log.default", "log1p.default", "logical_and.default",
    "logical_not.default", "logical_or.default", "lt.Tensor", "matmul.default", "max_pool2d.default",
    "max_pool3d.default", "maximum.default", "minimum.default", "mul.Tensor", "ne.Tensor", "neg.default",
    "pad.default", "permute.default", "pow.Tensor_Tensor", "reshape.default", "round.default", "rsqrt.default",
    "sigmoid.default", "sign.default", "sin.default", "slice.Tensor", "sqrt.default", "squeeze.dim", "sub.Tensor",
    "sum.dim_IntList", "tanh.default", "to.dtype", "trunc.default", "unsqueeze.default", "where.self",
})
# argument kinds of the serialized graph that hold plain data (no subgraph, object, operator or symbol)
TORCH_ARG_KINDS = frozenset({
    "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats", "as_string", "as_strings",
    "as_scalar_type", "as_memory_format", "as_layout", "as_device", "as_bool", "as_bools", "as_optional_tensor",
    "as_optional_tensors", "as_int_lists", "as_float_lists", "as_complex",
})
# members (below the archive's root folder) that torch reads without unpickling, or that are scanned
PT2_MEMBERS = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                         r"|\.format_version|\.storage_alignment|models/model\.json"
                         r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
                         r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
                         r"|data/sample_inputs/model\.pt")
PT2_FORBIDDEN = (  # (member prefix, why torch would run code for it)
    ("data/aotinductor/", "an AOTInductor package (native code torch loads as a shared library)"),
    ("data/executorch/", "an ExecuTorch program"),
    ("data/mtia", "an MTIA program"),
    ("xl_model_weights/", "externally stored weights"),
    ("data/constants/custom_obj_", "a pickled torchbind object (torch._C._pickle_load_obj)"),
    ("data/constants/opaque_obj_", "a pickled Python object (pickle.loads)"),
    ("data/weights/model.pt", "legacy pickled weights (torch.load)"),
    ("data/constants/model.pt", "legacy pickled constants (torch.load)"),
    ("models/", "a second exported program"),
    ("extra/", "an extra file"),
)
# torch.save's zip format: the records torch.load reads besides the raw storages data/<n>
TORCH_SAVE_MEMBERS = re.compile(r"data\.pkl|\.format_version|\.storage_alignment|byteorder|version"
                                r"|\.data/version|\.data/serialization_id|data/\d+")
PICKLE_GLOBALS = frozenset({("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")} | {
    ("torch", f"{t}Storage") for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                                       "Byte", "Bool")})


def check_pt2(path: Path) -> None:
    """A torch.export archive: only the members graphopt's torch.export.save writes, no pickled payloads,
    a graph of allowlisted aten ops and no code strings (see the module docstring)."""
    _regular_file(path)
    with _open_zip(path, path) as zf:
        members = _zip_members(path, zf)
        for name in members:
            _pt2_member(path, name)
        for name, want in (("archive_format", {b"pt2"}), ("archive_version", {b"0"})):
            if name not in members or zf.read(members[name]).strip() not in want:
                _refuse(path, f"its {name} is not {sorted(want)[0].decode()!r} (not a torch 2.13 .pt2 archive, "
                        "torch would fall back to its legacy pickled format)")
        for config, prefix in (("data/weights/model_weights_config.json", "weight_"),
                               ("data/constants/model_constants_config.json", "tensor_")):
            _pt2_payloads(path, zf, members, config, prefix)
        if "models/model.json" not in members:
            _refuse(path, "it holds no models/model.json program")
        if "data/sample_inputs/model.pt" in members:
            _torch_save_zip(path, "data/sample_inputs/model.pt", zf.read(members["data/sample_inputs/model.pt"]))
        for name, info in members.items():
            if not re.fullmatch(r"data/(weights/weight|constants/tensor)_\d+|data/sample_inputs/model\.pt", name):
                _no_pickle(path, name, zf.read(info)[:2])
        _pt2_program(path, _json(path, zf, members["models/model.json"]))


def _open_zip(path, label):
    try:
        return zipfile.ZipFile(path if not isinstance(path, bytes) else io.BytesIO(path))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        _refuse(label, f"it is not a readable zip archive ({e})")


def _zip_members(path, zf: zipfile.ZipFile, label: str = "") -> dict[str, zipfile.ZipInfo]:
    """{name below the root folder: info}; refuses traversal, duplicates and members outside one root folder
    (torch's reader takes the first member's folder as the root and ignores the rest)."""
    where = f" in {label}" if label else ""
    infos = zf.infolist()
    if not infos:
        _refuse(path, f"the archive{where} is empty")
    root = infos[0].filename.split("/", 1)[0]
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0] or "" in parts[:-1]:
            _refuse(path, f"member {name!r}{where} has an absolute or parent-relative path (path traversal)")
        if parts[0] != root or len(parts) < 2:
            _refuse(path, f"member {name!r}{where} lies outside the archive's root folder {root!r}/")
        rel = name[len(root) + 1:]
        if info.compress_type != zipfile.ZIP_STORED:
            _refuse(path, f"member {name!r}{where} is compressed; torch stores every member uncompressed")
        if rel in members:
            _refuse(path, f"member {name!r}{where} appears twice (readers may disagree on which one is read)")
        if not info.is_dir():
            members[rel] = info
    return members


def _pt2_member(path, name: str) -> None:
    if PT2_MEMBERS.fullmatch(name):
        return
    for prefix, what in PT2_FORBIDDEN:
        if name.startswith(prefix):
            _refuse(path, f"member {name} is {what}, which torch.export.load would execute or unpickle")
    _refuse(path, f"member {name} is not one torch.export.save writes for a graphopt program")


def _json(path, zf, info):
    try:
        return json.loads(zf.read(info))
    except (ValueError, UnicodeDecodeError) as e:
        _refuse(path, f"member {info.filename} is not valid JSON ({e})")


def _pt2_payloads(path, zf, members, config: str, prefix: str) -> None:
    """Every weight/constant is a raw tensor payload torch reads with get_storage_from_record, never a pickle."""
    if config not in members:
        _refuse(path, f"it lacks {config} (torch would read its legacy pickled payloads instead)")
    table = _json(path, zf, members[config])
    entries = table.get("config") if isinstance(table, dict) else None
    if not isinstance(entries, dict):
        _refuse(path, f"{config} has no config table")
    folder = config.rsplit("/", 1)[0] + "/"
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            _refuse(path, f"{config} entry {fqn!r} is not a table")
        if meta.get("use_pickle") is not False:
            _refuse(path, f"{config} asks for {fqn!r} to be unpickled (use_pickle: torch.load with "
                    "weights_only=False runs any code in it)")
        name = meta.get("path_name")
        if not isinstance(name, str) or not re.fullmatch(re.escape(prefix) + r"\d+", name):
            _refuse(path, f"{config} entry {fqn!r} names payload {name!r}, not a raw {prefix}<n> tensor")
        if folder + name not in members or not isinstance(meta.get("tensor_meta"), dict):
            _refuse(path, f"{config} entry {fqn!r} names a missing payload {folder + name} or has no tensor_meta")


def _no_pickle(path, name: str, head: bytes) -> None:
    if len(head) == 2 and head[0] == 0x80 and head[1] <= 5:
        _refuse(path, f"member {name} is a pickle stream (it starts with the PROTO opcode)")


def _torch_save_zip(path, name: str, data: bytes) -> None:
    """A torch.save file (zip format) whose data.pkl rebuilds plain tensors only; torch loads it with
    weights_only=True and retries with weights_only=False on failure."""
    if not data:
        return  # torch reads an empty sample-inputs record as {} without unpickling
    if not data.startswith(b"PK"):
        _refuse(path, f"member {name} is not a torch.save zip (torch.load would unpickle its legacy format)")
    with _open_zip(data, f"{path} ({name})") as zf:
        members = _zip_members(path, zf, name)
        for rel in members:
            if not TORCH_SAVE_MEMBERS.fullmatch(rel):
                _refuse(path, f"{name} holds {rel!r}, which torch.save never writes for tensors "
                        "(a .pkl record or TorchScript code would be unpickled or run)")
        if "data.pkl" not in members:
            _refuse(path, f"{name} has no data.pkl")
        scan_pickle(zf.read(members["data.pkl"]), f"{path} ({name}/data.pkl)")


def scan_pickle(data: bytes, label) -> None:
    """Refuse a pickle that names any global outside PICKLE_GLOBALS, read opcode by opcode (nothing runs)."""
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, attr = arg.partition(" ")
                if (module, attr) not in PICKLE_GLOBALS:
                    _refuse(label, f"the pickle imports {module}.{attr}, which torch.save never writes for tensors "
                            "(unpickling it could run any code)")
            elif op.name in ("STACK_GLOBAL", "EXT1", "EXT2", "EXT4", "PERSID"):
                _refuse(label, f"the pickle uses opcode {op.name}, which torch.save's protocol-2 tensor pickles "
                        "never contain (it can import any global)")
    except (ValueError, EOFError) as e:  # pickletools raises ValueError on a malformed stream
        if isinstance(e, UntrustedArtifactError):
            raise
        _refuse(label, f"the pickle is malformed ({e})")


def _pt2_program(path, program) -> None:
    """The serialized ExportedProgram: no code strings, no symbols, plain arguments, allowlisted aten ops."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        _refuse(path, "models/model.json is not a serialized ExportedProgram")
    if program.get("guards_code"):
        _refuse(path, "its program carries guards_code, Python source that torch exec()s in .module()")
    if program.get("range_constraints"):
        _refuse(path, "its program has symbolic range constraints (sympy parses them with eval); graphopt "
                "exports static shapes")
    gm = program["graph_module"]
    if gm.get("treespec_namedtuple_fields"):
        _refuse(path, "its program defines namedtuple types; graphopt's programs take and return plain tuples")
    for kind, key in _arg_kinds(program):
        if key == "expr_str" or (kind and kind not in TORCH_ARG_KINDS):
            _refuse(path, f"its graph has a {kind or key} value (subgraphs, torchbind objects, operators and "
                    "symbolic expressions can run code); graphopt emits none")
    for target in _node_targets(gm.get("graph")):
        op = target[len("torch.ops.aten."):] if isinstance(target, str) and target.startswith("torch.ops.aten.") \
            else None
        if op not in TORCH_OPS:
            _refuse(path, f"its graph calls {target!r}, which is not an aten op graphopt's torch lowering emits "
                    "(torch resolves node targets by getattr, so any callable could run)")


def _arg_kinds(obj, out=None):
    """(as_* kind, None) for every tagged value, and (None, key) for symbolic expression keys, anywhere."""
    out = [] if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.startswith("as_"):
                out.append((k, None))
            elif k == "expr_str":
                out.append((None, k))
            _arg_kinds(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _arg_kinds(v, out)
    return out


def _node_targets(graph):
    """The targets of every node in a serialized graph."""
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        return [None]
    for key in ("custom_obj_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
        if graph.get(key):
            return [f"<{key}>"]
    return [n.get("target") if isinstance(n, dict) else None for n in graph["nodes"]]


# ---- SavedModel -----------------------------------------------------------------------------------

# The ops graphopt's TF lowering (targets/tf_lowering.py, tf_module.py; `tf` target: io state, jit_compile)
# makes of every IR op, exported as one graph by tests/test_trust.py (which fails when the lowering starts
# making an op that is not here), plus TruncateDiv/TruncateMod (its int div and rem) and the plumbing of
# tf.function: calls, Const, Identity, NoOp.
TF_OPS = frozenset({
    "Abs", "AddV2", "AvgPool", "BiasAdd", "BroadcastTo", "Cast", "Ceil", "ConcatV2", "Const", "Conv2D", "Conv3D",
    "Cos", "Cumsum", "DepthwiseConv2dNative", "Einsum", "Equal", "Erf", "Exp", "Expm1", "Floor", "GatherV2",
    "Greater", "GreaterEqual", "Identity", "IsFinite", "Less", "LessEqual", "Log", "Log1p", "LogicalAnd",
    "LogicalNot", "LogicalOr", "MatMul", "Max", "MaxPool", "Maximum", "Min", "Minimum", "Mul", "Neg", "NoOp",
    "NotEqual", "Pad", "PadV2", "PartitionedCall", "Pow", "RealDiv", "Relu6", "Reshape", "ReverseV2", "Round",
    "Rsqrt", "SelectV2", "Sigmoid", "Sign", "Sin", "Sqrt", "StatefulPartitionedCall", "StridedSlice", "Sub",
    "Sum", "Tanh", "Transpose", "TruncateDiv", "TruncateMod",
})
# the saver functions tf.saved_model.save writes for TF1 loaders (never run by TF 2.21's tf.saved_model.load)
TF_SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin",
                          "StaticRegexFullMatch", "Select", "Pack", "Const", "Identity", "NoOp"})
TF_TOP_LEVEL_OPS = frozenset({"Placeholder", "Const", "NoOp", "PartitionedCall", "StatefulPartitionedCall"})
TF_OBJECT_KINDS = frozenset({"user_object", "function", "bare_concrete_function", "variable", "constant", "asset",
                             "captured_tensor"})
TF_USER_OBJECTS = frozenset({"_generic_user_object", "signature_map", "trackable_list_wrapper",
                             "trackable_dict_wrapper", "trackable_tuple_wrapper"})
TF_WHY = {"WriteFile": "writes files", "ReadFile": "reads files", "MatchingFiles": "lists files",
          "SaveV2": "writes files", "RestoreV2": "reads files", "MergeV2Checkpoints": "moves and deletes files",
          "DeleteFile": "deletes files", "PyFunc": "calls Python", "EagerPyFunc": "calls Python",
          "PyFuncStateless": "calls Python"}


def check_savedmodel(path: Path) -> None:
    """A TF2 SavedModel whose every function holds only ops graphopt's TF lowering makes (see the docstring)."""
    if not path.is_dir() or not (path / "saved_model.pb").is_file():
        _refuse(path, "it is not a SavedModel folder (no saved_model.pb)")
    _savedmodel_files(path)
    meta = _savedmodel_meta(path)
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    saver = _saver_functions(path, meta, library)
    bad = [(node.op not in TF_WHY, name, node.op) for name, fn in library.items() for node in fn.node_def
           if node.op not in (TF_SAVER_OPS if name in saver else TF_OPS)]
    if bad:  # name an op that does I/O or calls Python first
        _, name, op = min(bad)
        role, runs = ("saver function", "TF1 and C++ loaders run it") if name in saver else \
            ("function", "tf.saved_model.load may run it")
        why = f" ({TF_WHY[op]})" if op in TF_WHY else ""
        others = f" (and {len(bad) - 1} more such ops)" if len(bad) > 1 else ""
        _refuse(path, f"{role} {name} uses TF op {op}{why}{others}, which graphopt's TF lowering never emits; "
                f"{runs}")
    for node in meta.graph_def.node:
        if node.op not in TF_TOP_LEVEL_OPS:
            _refuse(path, f"its top-level graph uses TF op {node.op}, which TF1 and C++ loaders run")
    _savedmodel_objects(path, meta)
    _savedmodel_assets(path, meta)


def _savedmodel_files(path: Path) -> None:
    for extra in ("saved_model.pbtxt", "saved_model.cpb"):
        if os.path.lexists(path / extra):
            _refuse(path, f"it holds {extra} beside saved_model.pb (other loaders read it instead)")
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(folder) / name
            if not _inside(p, path):
                _refuse(path, f"{p.relative_to(path)} resolves to {os.path.realpath(p)}, outside the SavedModel")
            try:
                mode = os.stat(p).st_mode
            except OSError:
                _refuse(path, f"{p.relative_to(path)} is a broken link")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                _refuse(path, f"{p.relative_to(path)} is not a regular file")


def _savedmodel_meta(path: Path):
    try:
        from tensorflow.core.protobuf import saved_model_pb2
    except ImportError:
        _refuse(path, "tensorflow is not installed, so the SavedModel cannot be checked",
                "pip install tensorflow-cpu (see requirements.txt)")
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        _refuse(path, f"saved_model.pb is not a readable SavedModel ({type(e).__name__}: {e})")
    if len(sm.meta_graphs) != 1 or not sm.meta_graphs[0].HasField("object_graph_def"):
        _refuse(path, f"it has {len(sm.meta_graphs)} meta graph(s) and no TF2 object graph: tf.saved_model.load "
                "would use the TF1 loader, which runs the graph's own restore and init ops")
    return sm.meta_graphs[0]


def _func_refs(nodes):
    """Names of the functions the nodes call (func attributes, also inside lists)."""
    out = set()
    for node in nodes:
        for value in node.attr.values():
            if value.HasField("func"):
                out.add(value.func.name)
            out.update(f.name for f in value.list.func)
    return out


def _saver_functions(path, meta, library) -> set[str]:
    """The functions saver_def's save and restore nodes call (with their callees); refused if anything else
    calls them, since only TF1 and C++ loaders run them."""
    saver_nodes = {meta.saver_def.save_tensor_name.split(":")[0], meta.saver_def.restore_op_name.split(":")[0]}
    saver_nodes.discard("")
    top = list(meta.graph_def.node)
    saver = _closure(_func_refs(n for n in top if n.name in saver_nodes), library)
    called = _func_refs(n for n in top if n.name not in saver_nodes)
    for name, fn in library.items():
        if name not in saver:
            called |= _func_refs(fn.node_def)
    og = meta.object_graph_def
    called |= set(og.concrete_functions)
    for obj in og.nodes:
        called.update(obj.function.concrete_functions)
        called.add(obj.bare_concrete_function.concrete_function_name)
        called.add(obj.captured_tensor.concrete_function)
    for grad in meta.graph_def.library.gradient:  # gradient functions run when differentiating
        called |= {grad.function_name, grad.gradient_func}
    called.discard("")
    for name in sorted(saver & called):
        _refuse(path, f"saver function {name} is also called from the model or its object graph, where "
                "tf.saved_model.load would run its checkpoint file ops")
    for name in sorted(called | saver):
        if name not in library:
            _refuse(path, f"it calls function {name}, which is not in its library")
    return saver


def _closure(names: set[str], library) -> set[str]:
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        todo += _func_refs(library[name].node_def)
    return seen | names


def _savedmodel_objects(path, meta) -> None:
    for i, obj in enumerate(meta.object_graph_def.nodes):
        kind = obj.WhichOneof("kind")
        if kind == "resource":
            _refuse(path, f"object {i} is a resource, whose _create_resource/_initialize functions "
                    "tf.saved_model.load runs")
        if kind not in TF_OBJECT_KINDS:
            _refuse(path, f"object {i} is a {kind}, which graphopt's SavedModels never hold")
        if kind == "user_object" and obj.user_object.identifier not in TF_USER_OBJECTS:
            _refuse(path, f"object {i} is a {obj.user_object.identifier!r} user object, revived by library code "
                    "graphopt does not use")
        if len(obj.saveable_objects) or obj.registered_saver:
            _refuse(path, f"object {i} has saveable objects or a registered saver, whose restore functions "
                    "tf.saved_model.load runs")


def _savedmodel_assets(path: Path, meta) -> None:
    for asset in meta.asset_file_def:
        name = asset.filename
        if not name or os.path.isabs(name) or ".." in Path(name).parts or not _inside(path / "assets" / name, path):
            _refuse(path, f"asset {name!r} lies outside the SavedModel's assets folder")


# ---- .jaxexport ------------------------------------------------------------------------------------

JAX_DIALECTS = ("builtin.", "func.", "stablehlo.", "chlo.", "sdy.")  # sdy: Shardy sharding annotations
JAX_HOST_OPS = frozenset({"custom_call", "infeed", "outfeed", "send", "recv"})


def check_jaxexport(path: Path) -> None:
    """A jax.export serialization whose StableHLO has no custom calls, host transfers or callbacks."""
    _regular_file(path)
    try:
        from jax import export as jex
        from jax.interpreters import mlir as jax_mlir
    except ImportError:
        _refuse(path, "jax is not installed, so the artifact cannot be checked", "pip install jax jaxlib")
    try:
        exported = jex.deserialize(bytearray(path.read_bytes()))
        with jax_mlir.make_ir_context():
            ops = _mlir_ops(exported.mlir_module(serialized=False), jax_mlir.ir)
    except UntrustedArtifactError:
        raise
    except Exception as e:  # flatbuffer and MLIR readers raise many types on a malformed file
        _refuse(path, f"it is not a readable jax.export serialization ({type(e).__name__}: {e})")
    if exported.disabled_safety_checks:
        _refuse(path, f"it disables jax.export safety checks {list(exported.disabled_safety_checks)}")
    if exported.ordered_effects or exported.unordered_effects:
        _refuse(path, "it has side effects "
                f"{list(exported.ordered_effects) + list(exported.unordered_effects)}")
    if exported.has_vjp():
        _refuse(path, "it carries serialized VJP modules, which graphopt never writes")
    host = [(n, d) for n, d in ops if n.partition(".")[2] in JAX_HOST_OPS or "callback" in n + d]
    for name, detail in host:
        _refuse(path, f"its StableHLO has op {name}{detail}, which graphopt's JAX lowering never emits "
                "(custom calls and host transfers run code outside the compiled module, Python callbacks included)")
    for name, _ in ops:
        if not name.startswith(JAX_DIALECTS):
            _refuse(path, f"its StableHLO has op {name}, outside the dialects graphopt's JAX lowering emits "
                    f"({', '.join(d.rstrip('.') for d in JAX_DIALECTS)})")


def _mlir_ops(module, ir) -> list[tuple[str, str]]:
    """(op name, ' @target' for custom calls) of every op in the module, nested ones included."""
    ops = []

    def visit(op):
        detail = ""
        if "call_target_name" in op.attributes:
            detail = f" @{ir.StringAttr(op.attributes['call_target_name']).value}"
        ops.append((op.name, detail))
        return ir.WalkResult.ADVANCE
    module.operation.walk(visit)
    return ops


# ---- .tflite ---------------------------------------------------------------------------------------


def check_tflite(path: Path) -> None:
    """A TFLite flatbuffer with builtin operators only and buffers inside the file."""
    _regular_file(path)
    schema = _tflite_schema(path)
    data = path.read_bytes()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        _refuse(path, "it is not a TFLite flatbuffer (no TFL3 identifier)")
    custom = {schema.BuiltinOperator.CUSTOM: "CUSTOM",
              getattr(schema.BuiltinOperator, "STABLEHLO_CUSTOM_CALL", -1): "STABLEHLO_CUSTOM_CALL"}
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        n_codes = model.OperatorCodesLength()
        for i in range(n_codes):
            oc = model.OperatorCodes(i)
            code = max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())
            name = oc.CustomCode()
            if code in custom or name:
                what = f"custom op {name.decode(errors='replace')!r}" if name else f"a {custom[code]} op"
                _refuse(path, f"operator code {i} is {what}; custom and Flex (select TF) ops run kernels outside "
                        "the builtin set, Flex ones any TensorFlow op (e.g. WriteFile)")
        for s in range(model.SubgraphsLength()):
            sub = model.Subgraphs(s)
            for j in range(sub.OperatorsLength()):
                if sub.Operators(j).OpcodeIndex() >= n_codes:
                    _refuse(path, f"operator {j} of subgraph {s} points past the operator-code table")
        for b in range(model.BuffersLength()):
            buf = model.Buffers(b)
            if buf.Offset() > 1 and buf.Offset() + buf.Size() > len(data):
                _refuse(path, f"buffer {b} lies at bytes {buf.Offset()}..{buf.Offset() + buf.Size()}, past the "
                        f"end of the {len(data)}-byte file")
    except UntrustedArtifactError:
        raise
    except Exception as e:  # a truncated or corrupt flatbuffer
        _refuse(path, f"it is not a readable TFLite flatbuffer ({type(e).__name__}: {e})")


def _tflite_schema(path):
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated as schema
        except ImportError:
            _refuse(path, "neither ai-edge-litert nor tensorflow is installed, so it cannot be checked",
                    "pip install ai-edge-litert")
    return schema


# ---- .onnx -----------------------------------------------------------------------------------------

ORT_MEMORY_TAG = "_ORT_MEM_ADDR_"  # onnxruntime reads the offset of such a location as a memory address


def check_onnx(path: Path, base: Path | None = None) -> None:
    """An ONNX model whose external data files are relative paths resolving inside base (default: its folder)."""
    _regular_file(path)
    base = Path(base) if base is not None else path.parent
    if path.stat().st_size == 0:
        _refuse(path, "it is empty", "rebuild or re-download the artifact")
    try:
        import onnx
    except ImportError:
        _refuse(path, "onnx is not installed, so it cannot be checked", "pip install onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, RuntimeError, ...: onnx raises several types
        _refuse(path, f"it is not a readable ONNX model ({type(e).__name__}: {e})", "rebuild the artifact")
    if not model.graph.node and not model.graph.output:
        _refuse(path, "it is not a readable ONNX model (no graph nodes and no outputs)", "rebuild the artifact")
    for where, tensor in _onnx_tensors(model):
        _check_external(path, base, where, tensor)


def _onnx_tensors(model):
    """(where, TensorProto) for every tensor of the model: initializers, sparse initializers and attribute
    tensors of every graph, subgraphs (If/Loop/Scan) and model functions included."""
    graphs = [("graph", model.graph)] + [(f"training graph {i}", g) for t in model.training_info
                                         for i, g in enumerate((t.initialization, t.algorithm))]
    out = []
    for label, g in graphs:
        out += _graph_tensors(g, label)
    for fn in model.functions:
        out += _node_tensors(fn.node, f"function {fn.domain}:{fn.name}")
    return out


def _graph_tensors(graph, label: str):
    out = [(f"{label} initializer {t.name!r}", t) for t in graph.initializer]
    for s in graph.sparse_initializer:
        out += [(f"{label} sparse initializer {s.values.name!r}", t) for t in (s.values, s.indices)]
    return out + _node_tensors(graph.node, label)


def _node_tensors(nodes, label: str):
    out = []
    for node in nodes:
        where = f"{label} node {node.name or node.op_type!r}"
        for a in node.attribute:
            tensors = ([a.t] if a.HasField("t") else []) + list(a.tensors)
            sparse = ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors)
            tensors += [t for s in sparse for t in (s.values, s.indices)]
            out += [(f"{where} attribute {a.name!r}", t) for t in tensors]
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _graph_tensors(g, f"{where} subgraph {g.name!r}")
    return out


def _check_external(path: Path, base: Path, where: str, tensor) -> None:
    from onnx import TensorProto
    if tensor.data_location != TensorProto.EXTERNAL and not len(tensor.external_data):
        return
    entries = [e.value for e in tensor.external_data if e.key == "location"]
    location = entries[0] if len(entries) == 1 else None
    todo = "keep external data files inside the artifact folder, named by relative paths"
    if not location:
        _refuse(path, f"{where} has external data without exactly one location", todo)
    if "\0" in location:
        _refuse(path, f"{where} names its external data with a NUL byte in the path", todo)
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", location):
        _refuse(path, f"{where} reads external data from the absolute path {location!r}", todo)
    if ".." in re.split(r"[/\\]", location) or ORT_MEMORY_TAG in location:
        _refuse(path, f"{where} reads external data from {location!r}, outside the model's folder", todo)
    target = path.parent / location
    if not _inside(target, base):
        _refuse(path, f"{where} reads external data from {location!r}, which resolves to "
                f"{os.path.realpath(target)}, outside the artifact folder {base}", todo)
    if not target.is_file():
        _refuse(path, f"{where} reads external data from {location!r}, which is not a file in the artifact folder",
                "rebuild or re-download the artifact with its data files")


# ---- .engine ---------------------------------------------------------------------------------------


def check_engine(path: Path) -> None:
    """A TensorRT engine: checked only as a regular file here (see the module docstring: graphopt loads engines
    with engine_host_code_allowed = False and after their sha256 matches the manifest)."""
    _regular_file(path)


# ---- .vmfb (IREE VM module) ---------------------------------------------------------------------------

VMFB_MAX_BYTES = 2 << 30


def check_vmfb(path: Path) -> None:
    """An IREE VM module: a zip local header for module.fb (stored) at offset 0, then the (size-prefixed) VM
    flatbuffer with the IREE identifier (see the module docstring: its executables are native code, and
    graphopt loads the module after the sha256 of the bytes it loads matches the manifest)."""
    import struct
    _regular_file(path)
    if path.stat().st_size > VMFB_MAX_BYTES:
        _refuse(path, f"it is larger than {VMFB_MAX_BYTES >> 30} GiB")
    with open(path, "rb") as f:
        head = f.read(30 + 256)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            _refuse(path, "it is not an IREE module archive (no zip header at its start)")
        method, name_len, extra_len = struct.unpack_from("<H", head, 8)[0], *struct.unpack_from("<HH", head, 26)
        if head[30:30 + name_len] != b"module.fb" or method != zipfile.ZIP_STORED:
            _refuse(path, "its first member is not a stored module.fb (the VM module an IREE archive starts with)")
        f.seek(30 + name_len + extra_len)
        fb = f.read(12)  # a size-prefixed flatbuffer: size, root table offset, identifier
    if len(fb) < 12 or fb[8:12] != b"IREE":
        _refuse(path, "its module.fb is not an IREE VM flatbuffer (no IREE identifier)")
