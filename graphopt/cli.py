"""graphopt command line: build, verify, inspect."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NEEDS_GPU = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) that say where to look for the usage."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}; see {self.prog} --help\n")


def _count_list(text: str) -> list[int]:
    """An argparse type: comma-separated stream counts from 1 to 1024 (bench --streams)."""
    parse = _number(int, 1, 1024)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or len(items) > 16:
        raise argparse.ArgumentTypeError(f"must be 1 to 16 comma-separated counts, e.g. 2,4,8, got {text!r:.40}")
    return sorted(set(parse(t) for t in items))


def _number(kind, lo, hi):
    """An argparse type: a `kind` (int or float) from lo to hi, finite."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'} from "
                                             f"{lo:g} to {hi:g}, got {text!r}") from None
        if not lo <= v <= hi:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be from {lo:g} to {hi:g}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _target_flags() -> dict:
    """Every target's own build flags (their descriptors' options), in registry order: flag -> (the
    Option, the names of the targets that take it)."""
    from .targets import MODULES, get
    flags = {}
    for name in MODULES:
        for o in get(name).options:
            flags.setdefault(o.flag, (o, []))[1].append(name)
    return flags


def _add_target_flags(b) -> None:
    from .targets import get
    for flag, (o, owners) in _target_flags().items():  # a flag several targets take: any target's choices
        same = [(n, t) for n in owners for t in get(n).options if t.flag == flag]
        choices = list(dict.fromkeys(c for _, t in same for c in t.choices))
        kw = {"action": "store_true"} if o.switch else \
            {"choices": choices or None, "type": _number(o.kind, *o.range) if o.range else None}
        helps = dict.fromkeys(t.help for _, t in same)
        b.add_argument(flag, help=f"{'/'.join(owners)}: {o.help}" if len(helps) == 1 else
                       "; ".join(f"{n}: {t.help}" for n, t in same), **kw)


def _or(words: list[str]) -> str:
    return " or ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} or {words[-1]}"


JSON_HELP = "print the result as JSON on stdout (progress stays on stderr)"
MODEL_HELP = ("model: facephys, physnet, an open-rppg model (e.g. tscan.rlap, me-flow.pure; see README), an ONNX "
              "file (FILE.onnx), or FILE.py:FUNC / package.module:FUNC where FUNC() returns a graphopt.ModelSpec")


def _add_onnx_flags(b, state_help: str) -> None:
    b.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="ONNX model: fix an input's dynamic dimensions (repeatable; a dynamic leading dim is 1 "
                        "otherwise)")
    b.add_argument("--state-pairs", metavar="IN:OUT,...",
                   help="ONNX model: the recurrent state's input:output pairs (default: found by name, see "
                        "graphopt inspect)")
    b.add_argument("--state", help=state_help)


def _onnx_options(a) -> dict:
    """The ONNX frontend's options from the command line (input shapes, state pairs, initial state)."""
    from .models import ModelSourceError
    shapes = {}
    for item in a.input_shape:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if sep and name else None
        except ValueError:
            shape = None
        if not shape or any(not 1 <= d <= 1 << 20 for d in shape) or len(shape) > 8:
            raise ModelSourceError(f"--input-shape {item!r:.80} must be NAME:D0,D1,... with 1 to 8 dimensions "
                                   "from 1 to 1048576")
        shapes[name] = shape
    state = None
    if getattr(a, "state", None):
        from .baseline import load_state_file
        state = load_state_file(a.state)
    pairs = [t for t in a.state_pairs.split(",") if t.strip()] if a.state_pairs is not None else None
    return {"input_shapes": shapes, "state_pairs": pairs, "state": state}


def _onnx_spec(a):
    """The ModelSpec for --model FILE.onnx with this command line's ONNX options (or the model as given)."""
    from . import models
    given = a.input_shape or a.state_pairs is not None or getattr(a, "state", None)
    if not models.is_onnx_ref(a.model):
        if given:
            raise models.ModelSourceError("--input-shape, --state-pairs and --state apply to an ONNX --model")
        return a.model
    models.check(a.model)
    from .frontends import onnx as onnx_frontend
    return onnx_frontend.load(a.model, **_onnx_options(a))


def _parser() -> argparse.ArgumentParser:
    from .baseline import SUFFIXES
    from .builder import MAX_FPS, MIN_FPS
    from .equivalence import MAX_FRAMES
    from .targets import MODULES, get, release_variants
    finishing = {n: get(n).device_part for n in MODULES if get(n).device_part}
    checks = {n: get(n).check for n in MODULES if get(n).check}
    baseline = "an " + "/".join(SUFFIXES) + " step model"
    frames = _number(int, 1, MAX_FRAMES)  # the lower bound depends on the model (equivalence.check_frames)
    from . import __version__
    p = _Parser(prog="graphopt", description="Export and optimise streaming rPPG models.")
    p.add_argument("--version", action="version", version=f"graphopt {__version__}")
    p.add_argument("--verbose", action="store_true", help="show the runtimes' own log lines (TensorFlow, absl, "
                                                          "XNNPACK, PyTorch) and library warnings")
    p.add_argument("--quiet", action="store_true", help="no progress lines: only errors and results")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="build a model into a verified artifact")
    b.add_argument("--model", help=MODEL_HELP)
    b.add_argument("--target", required=True, help=f"target runtime: {_or(list(MODULES))}")
    b.add_argument("--out", help="artifact folder to write (replaced atomically)")
    b.add_argument("--from", dest="from_artifact", metavar="ARTIFACT",
                   help="; ".join(f"{n}: {d.from_help}" for n, d in finishing.items()))
    _add_target_flags(b)
    b.add_argument("--weights", help="weights file overriding the one the model package ships")
    b.add_argument("--as-published", action="store_true",
                   help="keep the authors' mixed_float16 convs instead of the canonical float32 form")
    b.add_argument("--no-fuse", action="store_true", help="run no passes: the unfused baseline graph")
    b.add_argument("--passes", help="comma-separated passes to run instead of the target's pipeline")
    b.add_argument("--exact", action="store_true",
                   help="run only exact passes (no raising of approximated math): rounding-level tier")
    b.add_argument("--fps", type=_number(float, MIN_FPS, MAX_FPS),
                   help="bake dt = 1/FPS into the graph and fold what follows from it")
    b.add_argument("--explain", metavar="RULE", action="append", default=[],
                   help="after the pipeline, say why rewrite rule RULE did not fire on each node it could start "
                        "at (repeatable)")
    b.add_argument("--verify-each-pass", action="store_true",
                   help="check the IR and its outputs on sample frames after every pass")
    b.add_argument("--no-verify", action="store_true", help="skip the equivalence check (tier not verified)")
    b.add_argument("--tier", choices=["rounding", "signal", "quantised"],
                   help="tier the artifact must reach (default: the tier the pipeline claims); a looser tier "
                        "accepts a runtime whose own kernels round differently")
    b.add_argument("--frames", type=frames, default=600, help="frames of the synthetic clip to verify on")
    b.add_argument("--streams", type=_number(int, 1, 1024), default=1, metavar="N",
                   help="one step advances N independent streams (batch N; each with its own state and dt; "
                        "graphopt.load_multi runs it); each stream is verified on a clip of its own")
    b.add_argument("--force", action="store_true", help="replace an artifact graphopt wrote earlier in --out")
    b.add_argument("--json", action="store_true", help=JSON_HELP)
    b.add_argument("--no-cache", action="store_true",
                   help="build and trace the model even if the trace cache holds it, and leave the cache alone")
    _add_onnx_flags(b, "ONNX model: its initial state (npz, or the authors' gzip-JSON; in state-pair order; "
                       "default zeros)")

    o = sub.add_parser("optimize", help="optimise an ONNX file into a verified drop-in ONNX file")
    o.add_argument("input", help="the .onnx model to optimise")
    o.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    o.add_argument("--exact", action="store_true",
                   help="run only exact passes: verified at the rounding tier (default: the signal tier)")
    o.add_argument("--no-verify", action="store_true", help="skip the check against onnxruntime on the input")
    o.add_argument("--frames", type=frames, help="steps of the verification clip (default: 600 for a model "
                                                   "with a face-frame input, else 32)")
    o.add_argument("--tier", choices=["rounding", "signal", "quantised"],
                   help="tier the output must reach (default: rounding with --exact, else signal)")
    o.add_argument("--force", action="store_true", help="replace the output file if it exists")
    o.add_argument("--no-speed-check", action="store_true",
                   help="write graphopt's output even where it is not faster than the input in onnxruntime "
                        "(default: the faster of the two is written)")
    o.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_onnx_flags(o, "initial state of the recurrent state for verification (npz or the authors' gzip-JSON; "
                       "default zeros)")

    v = sub.add_parser("verify", help="check an artifact (or a baseline step model) against the authors' step")
    v.add_argument("artifact", help=f"artifact folder or model file, or {baseline} graphopt did not build")
    v.add_argument("--model", help="reference model for a baseline (default facephys), or the FILE.py:FUNC or "
                                   "FILE.onnx an artifact was built from (an ONNX file: onnxruntime on it is the "
                                   "reference)")
    v.add_argument("--weights", help="the reference's weights file (default: the one the model package ships); "
                                     "for an artifact built with --weights")
    v.add_argument("--state", help="baseline's initial state (npz or the authors' gzip-JSON); the reference starts "
                                   "from it too (its state layout, matched by position and shape); default: the "
                                   "reference model's initial state, matched by position and shape")
    v.add_argument("--tier", choices=["rounding", "signal", "quantised"],
                   help="tier to require (default: the tier the manifest claims; none for a baseline)")
    v.add_argument("--frames", type=frames, default=600, help="frames of the synthetic clip (default 600)")
    v.add_argument("--hr", type=_number(float, 40, 180), default=72.0, help="heart rate of the synthetic clip in bpm")
    v.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0, help="seed of the synthetic clip")
    from .metrics import MAX_TOLERANCE
    v.add_argument("--atol", type=_number(float, 0, MAX_TOLERANCE), metavar="A",
                   help="also require |out - ref| <= A + R * |ref| for every element of every output and of the "
                        "final state over the clip (as Polygraphy's run --atol/--rtol; R defaults to 0)")
    v.add_argument("--rtol", type=_number(float, 0, MAX_TOLERANCE), metavar="R",
                   help="relative tolerance of that elementwise check (A defaults to 0)")
    v.add_argument("--json", action="store_true", help="print the metrics as JSON")
    v.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0,D1,...",
                   help="for an artifact built from an ONNX file: the --input-shape it was built with")
    v.add_argument("--state-pairs", metavar="IN:OUT,...",
                   help="for an artifact built from an ONNX file: the --state-pairs it was built with")

    be = sub.add_parser("bench", help="FPS table: graphopt targets fused/unfused, the authors' JAX JIT step, "
                                      "baselines")
    be.add_argument("--model", default="facephys", help=MODEL_HELP + " (default facephys)")
    be.add_argument("--targets", help="comma-separated targets (default: all available)")
    be.add_argument("--baseline", action="append", default=[], help=f"{baseline} to add as a row")
    be.add_argument("--state", help="initial state for the baselines (npz or gzip-JSON)")
    be.add_argument("--fused-only", action="store_true", help="skip the unfused builds")
    be.add_argument("--rounds", type=_number(int, 1, 1000), default=5, help="interleaved rounds (default 5)")
    be.add_argument("--steps", type=_number(int, 1, 100000), default=100, help="steps per row per round (default 100)")
    be.add_argument("--out-dir", help="keep the built artifacts here, and measure those of this model already "
                                      "there instead of rebuilding them (default: a temporary folder, removed after)")
    be.add_argument("--force", action="store_true", help="rebuild and replace artifacts graphopt wrote earlier in "
                                                         "--out-dir (default: measure those of this model again)")
    be.add_argument("--artifacts", nargs="+", action="extend", default=[], metavar="DIR",
                    help="artifact folders (or folders of them) of this model to measure as they are; with no "
                         "--targets nothing is built")
    be.add_argument("--no-cache", action="store_true", help="trace the model even if the trace cache holds it")
    be.add_argument("--streams", type=_count_list, default=[], metavar="N,N,...",
                    help="also build every target with N streams per step (e.g. 2,4,8,16) and run the reference "
                         "under jax.vmap with as many: FPS of all streams, live 30-FPS streams per core")
    be.add_argument("--variants", metavar="V,V,...", help="also build and measure these release variants (the names graphopt release "
                    "--variants takes: a target with the variant's options, e.g. the int8 builds)")
    be.add_argument("--json", action="store_true", help=JSON_HELP)
    be.add_argument("--json-out", metavar="FILE", help="also write the results as JSON to this file")

    r = sub.add_parser("release", help="build, verify and benchmark every available target into one folder")
    r.add_argument("--model", required=True, help=MODEL_HELP)
    r.add_argument("--out", help="release folder (default: artifacts/MODEL-GRAPHOPT_VERSION)")
    extra = [n for n in release_variants() if n not in MODULES]
    r.add_argument("--variants", help="comma-separated subset of the release variants: every target"
                                      + (f", and {', '.join(extra)}" if extra else "") + " (default: all)")
    r.add_argument("--frames", type=frames, default=600, help="frames of the verification clip (default 600)")
    r.add_argument("--rounds", type=_number(int, 1, 1000), default=3, help="interleaved benchmark rounds (default 3)")
    r.add_argument("--force", action="store_true", help="replace a release graphopt wrote earlier in --out")
    r.add_argument("--tier", choices=["rounding", "signal", "quantised"],
                   help="tier every artifact must reach (default: the tier each build claims); the release "
                        "records the tier each one reached")
    r.add_argument("--baseline", action="append", default=[],
                   help=f"{baseline} (e.g. the authors' own export) to verify and benchmark beside the artifacts "
                        "(repeatable)")
    r.add_argument("--state", help="initial state for the baselines (npz or the authors' gzip-JSON)")
    r.add_argument("--json", action="store_true", help=JSON_HELP)

    i = sub.add_parser("inspect", help="node count, op histogram, params, state and FLOPs of an artifact")
    i.add_argument("artifact", help="artifact folder or model file" + "".join(
        f" ({c.takes} with --check {n})" for n, c in checks.items()))
    i.add_argument("--check", choices=list(checks), help="; ".join(c.help for c in checks.values()))
    i.add_argument("--json", action="store_true", help="print as JSON")
    return p


def _given(value) -> bool:
    return value is not None and value is not False  # (--opt-level 0 is given)


def _target_options(a, finishing: bool = False) -> dict:
    """The target-only flags, refused for any other target; as emit() takes them (with the target's
    defaults) or, finishing an artifact, as build_from() does (None where not given)."""
    from .builder import BuildUsageError
    from .targets import MODULES, get
    for flag, (o, owners) in _target_flags().items():
        if _given(getattr(a, o.dest)) and a.target not in owners:
            raise BuildUsageError(f"{flag} applies to --target {' or '.join(owners)} only")
    options = {}
    for o in get(a.target).options if a.target in MODULES else ():
        value = getattr(a, o.dest)
        if o.choices and _given(value) and value not in o.choices:  # another target's choice of a shared flag
            raise BuildUsageError(f"{o.flag} {value} does not apply to --target {a.target}; choose "
                                  f"{_or(list(o.choices))}")
        if _given(value) or finishing:
            options[o.dest] = value if _given(value) else None
        elif o.default is not None:
            options[o.dest] = o.default
    return options


def cmd_build(a) -> int:
    from .builder import BuildUsageError, build
    from .targets import MODULES, get
    if a.from_artifact:
        from .builder import target_module
        tmod = target_module(a.target)
        if get(a.target).device_part is None:
            what = " or ".join(get(n).device_part.what for n in MODULES if get(n).device_part)
            raise BuildUsageError(f"--from finishes an artifact on this machine ({what}); --target "
                                  f"{a.target} has nothing to finish")
        art = tmod.build_from(a.from_artifact, **_target_options(a, finishing=True))
        print(f"finished {art.path.parent}: its manifest lists what was added", file=sys.stderr)
        return EXIT_OK
    if not a.model or not a.out:
        how = " or ".join(f"--target {n} --from ARTIFACT" for n in MODULES if get(n).device_part)
        raise BuildUsageError(f"build needs --model and --out{f' (or {how})' if how else ''}")
    options = _target_options(a)
    names = [n.strip() for n in a.passes.split(",") if n.strip()] if a.passes is not None else None
    artifact = build(_onnx_spec(a), a.target, a.out, weights=a.weights, as_published=a.as_published, fuse=not a.no_fuse,
          pass_names=names, verify_each_pass=a.verify_each_pass, verify=not a.no_verify, frames=a.frames,
          exact=a.exact, fps=a.fps, target_options=options or None, force=a.force, explain=a.explain, tier=a.tier,
          cache=not a.no_cache, streams=a.streams)
    if a.json:
        m = artifact.manifest
        print(json.dumps({"artifact": str(artifact.path), "target": m["target"], "model": m["model"],
                          "nodes": m["graph"]["nodes"], "equivalence": m.get("equivalence"),
                          "pipeline": {k: v for k, v in m.get("pipeline", {}).items() if k != "passes"}},
                         indent=2, default=str))
    return EXIT_OK


def cmd_verify(a) -> int:
    from . import artifact as art
    from . import equivalence, metrics, models
    from .baseline import SUFFIXES, is_baseline, open_baseline
    from .builder import format_result
    from pathlib import Path
    p = Path(a.artifact)
    if p.is_file() and not art.manifest_path_for(p).is_file() and not p.name.endswith(art.MANIFEST_SUFFIX) \
            and p.suffix not in SUFFIXES:
        from .baseline import BaselineError
        raise BaselineError(f"{p} has no graphopt manifest, and a baseline must be an {' or '.join(SUFFIXES)} "
                            "step model")
    if a.weights and not Path(a.weights).is_file():
        raise art.ArtifactError(f"--weights {a.weights} is not a file")
    if is_baseline(a.artifact):
        model = a.model or "facephys"
        models.check(model)  # an unknown --model fails before the baseline is opened
        spec = models.resolve(model, a.weights)
        if spec.frame_input is None or spec.dt_input is None:
            raise art.ArtifactError(f"a baseline is a step model taking a frame and dt; {spec.name} is not one")
        stream = open_baseline(a.artifact, spec, a.state)
        claimed = a.tier
        if tuple(stream.frame_shape) != tuple(spec.frame_shape):
            raise art.ArtifactError(f"{p} takes frames of shape {stream.frame_shape}, the {spec.name} reference "
                                    f"{tuple(spec.frame_shape)}: it is not a {spec.name} step model (see --model)")
        pairing = {**stream.pairing, "reference_output": spec.outputs[0] if spec.outputs else "out0",
                   "reference_state": "by position"}
        if a.state:  # the reference starts from the state the baseline starts from, in its own layout
            from .baseline import reference_state
            ref_state = reference_state(stream.state, spec)
            pairing["initial_state"] = f"{a.state} (the reference starts from it too)"
        else:
            ref_state = None
            pairing["initial_state"] = f"the {spec.name} reference's own"
    else:
        ref_state = pairing = None
        stream = art.load(a.artifact)
        equivalence.check_frames(a.frames, stream.frames_per_step, float(stream.manifest.get("fps") or 30.0))
        model = stream.manifest["model"]
        source = stream.manifest.get("source")
        if not isinstance(source, dict):
            raise art.ArtifactError(f"the manifest of {p} has no source (which model and weights it was built "
                                    "from); rebuild the artifact")
        from .frontends.onnx import model as onnx_frontend
        if a.model and models.is_user_ref(a.model):
            spec = models.resolve(a.model)
            equivalence.check_fingerprint(spec, source)
        elif a.model and models.is_onnx_ref(a.model):  # the ONNX file it was built from: onnxruntime on it
            spec = _onnx_spec(a)
            equivalence.check_fingerprint(spec, source)
        elif a.model and a.model != model:
            raise art.ArtifactError(f"{p} is a {model} artifact, not {a.model}; give --model only for a baseline "
                                    "or for an artifact built from FILE.py:FUNC")
        elif models.is_builtin(model):
            spec = equivalence.reference_model(model, source, a.weights)
        elif source.get("format") == onnx_frontend.SOURCE_FORMAT:
            raise art.ArtifactError(f"{p} was built from the ONNX file {str(source.get('file'))!r:.80}; pass it (and "
                                    "the --input-shape/--state-pairs/--state it was built with): --model FILE.onnx")
        else:
            raise art.ArtifactError(f"{p} was built from a user's model ({model!r:.40}); pass the spec it was built "
                                    "from: --model FILE.py:FUNC")
        claimed = a.tier or stream.manifest.get("equivalence", {}).get("tier_claimed", "rounding")
    m = stream.manifest
    fps = 1.0 / stream.fixed_dt if stream.fixed_dt else float(m.get("fps") or 30.0)  # --fps N builds: dt = 1/N
    equivalence.check_frames(a.frames, stream.frames_per_step, fps)
    clip = equivalence.Clip(frames=a.frames, hr_bpm=a.hr, seed=a.seed, fps=fps)
    print(f"verifying {a.artifact} ({m['target']}, {m.get('precision', '?')}) over {a.frames} frames",
          file=sys.stderr)
    if pairing is not None:
        from .baseline import format_pairing
        print(format_pairing(pairing), file=sys.stderr)
    try:
        if stream.streams > 1:  # each stream against the one-stream reference on a clip of its own
            from . import multistream
            if pairing is not None or a.atol is not None or a.rtol is not None:
                raise art.ArtifactError("verify of a multi-stream artifact takes no --state, --atol or --rtol; "
                                        "it checks each stream against the model's reference on its own clip")
            result = multistream.check(stream, multistream.MultiStreamSpec(spec, stream.streams), a.frames, fps,
                                       seed=a.seed, hr_bpm=a.hr)  # stream 0 gets --seed and --hr, the others more
        else:
            result = equivalence.check(equivalence.stream_step(stream, spec), stream.state, spec, clip,
                                       reference_state=ref_state, atol=a.atol, rtol=a.rtol)
    except equivalence.VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if pairing is not None:
        result["pairing"] = pairing
    tolerance = result.get("tolerance")
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_result(result, claimed))
        if tolerance:
            print(equivalence.format_tolerance(tolerance))
    failed = False
    if claimed and not metrics.meets(claimed, result["tier"]):
        reached = f"tier {result['tier']}" if result["tier"] else "no tier"
        print(f"error: the {'baseline' if pairing else 'artifact'} reaches {reached}, below the {claimed} tier "
              f"{'required' if a.tier else 'its manifest claims'} ({equivalence.result_shortfall(result, claimed)})"
              + ("" if pairing else "; rebuild it"), file=sys.stderr)
        failed = True
    if tolerance and not tolerance["passed"]:
        print(f"error: outside --atol {tolerance['atol']:g} --rtol {tolerance['rtol']:g}: "
              f"{', '.join(equivalence.tolerance_failures(tolerance))}", file=sys.stderr)
        failed = True
    return EXIT_FAILED if failed else EXIT_OK


def cmd_bench(a) -> int:
    from pathlib import Path

    from . import bench
    from .artifact import ArtifactError, write_json
    for path in a.baseline:  # bad arguments fail before the builds
        if not Path(path).is_file():
            raise ArtifactError(f"--baseline {path} is not a file")
    if a.state and not Path(a.state).is_file():
        raise ArtifactError(f"--state {a.state} is not a file")
    if a.json_out and (Path(a.json_out).is_dir() or not Path(a.json_out).parent.resolve().is_dir()):
        raise ArtifactError(f"--json-out {a.json_out} must name a file in an existing folder")
    targets = [t.strip() for t in a.targets.split(",") if t.strip()] if a.targets else None
    result = bench.run(a.model, targets, a.baseline, a.state, a.out_dir, rounds=a.rounds, steps_per_round=a.steps,
                       unfused=not a.fused_only, force=a.force, artifacts=a.artifacts, cache=not a.no_cache,
                       streams=a.streams, variants=[v.strip() for v in (a.variants or "").split(",") if v.strip()],
                       log=_log)
    print(json.dumps(result, indent=2, default=str) if a.json else bench.markdown(result))
    if a.json_out:
        write_json(Path(a.json_out), result)
    return EXIT_OK


def cmd_release(a) -> int:
    from . import __version__, release
    from . import models
    if models.is_user_ref(a.model) and not a.out:
        raise models.ModelSourceError("release --model FILE.py:FUNC needs --out DIR (the folder to write)")
    out = a.out or f"artifacts/{a.model}-{__version__}"
    variants = [v.strip() for v in a.variants.split(",") if v.strip()] if a.variants else None
    try:
        folder = release.run(a.model, out, variants=variants, frames=a.frames, rounds=a.rounds, force=a.force,
                             tier=a.tier, baselines=a.baseline, baseline_state=a.state, log=_log)
    except release.ReleaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if a.json:
        print((folder / "release.json").read_text())
    return EXIT_OK


def cmd_inspect(a) -> int:
    from .inspect import format_summary, inspect
    if a.check:  # a target's own check of a model file (its descriptor's `check`)
        from pathlib import Path

        from .targets import hook
        result, text = hook(a.check, "inspect_check")(Path(a.artifact))
        print(json.dumps(result, indent=2) if a.json else text)
        return EXIT_OK if result["ok"] else EXIT_FAILED
    s = inspect(a.artifact)
    print(json.dumps(s, indent=2) if a.json else format_summary(s))
    return EXIT_OK


def cmd_optimize(a) -> int:
    from .optimize import optimize
    log = (lambda m: None) if a.json else _log
    report = optimize(a.input, a.output, exact=a.exact, verify=not a.no_verify, frames=a.frames, tier=a.tier,
                      force=a.force, speed_check=not a.no_speed_check, log=lambda m: None if m.startswith("wrote ") and ".graphopt-" in m else log(m),
                      **_onnx_options(a))
    if a.json:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from . import console
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    console.QUIET = args.quiet
    if not args.verbose:
        console.silence_third_party()
        if argv is None:  # the console entry point (not a test calling main in-process)
            console.detach_native_stderr()
    if args.command in ("bench", "release"):
        from .bench import single_thread_env
        single_thread_env()  # before anything imports jax
    from .artifact import ArtifactError
    from .builder import BuildError, EngineNeedsGpu
    from .stream import FrameError
    from graphopt.models import ModelSourceError
    from graphopt.passes import PassError
    try:
        try:
            return {"build": cmd_build, "verify": cmd_verify, "bench": cmd_bench, "release": cmd_release,
                    "inspect": cmd_inspect, "optimize": cmd_optimize}[args.command](args)
        except EngineNeedsGpu as e:
            print(f"note: {e}", file=sys.stderr)
            return EXIT_NEEDS_GPU
        except KeyboardInterrupt:
            print("error: interrupted; nothing was written (no partial output is left)", file=sys.stderr)
            return 130
    except (ArtifactError, BuildError, ModelSourceError, FrameError, OSError, PassError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        from .builder import BuildUsageError
        return EXIT_FAILED if isinstance(e, BuildError) and not isinstance(e, BuildUsageError) else EXIT_USAGE


def _log(msg: str) -> None:
    from .console import log
    log(msg)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # e.g. PermissionError, disk full: the path and the reason
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    if not text.isprintable():  # names from untrusted files: no terminal escapes, no forged lines
        text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                       for c in text)
    return text


if __name__ == "__main__":
    sys.exit(main())
