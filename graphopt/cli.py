"""graphopt command line: build, verify, inspect."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphopt", description="Export and optimise streaming rPPG models.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a model into a verified artifact")
    b.add_argument("--model", required=True, help="model name (facephys)")
    b.add_argument("--target", required=True, help="target runtime: onnx, xla, tflite or tf")
    b.add_argument("--out", required=True, help="artifact folder to write (replaced atomically)")
    b.add_argument("--weights", help="weights file overriding the one the model package ships")
    b.add_argument("--as-published", action="store_true",
                   help="keep the authors' mixed_float16 convs instead of the canonical float32 form")
    b.add_argument("--no-fuse", action="store_true", help="run no passes: the unfused baseline graph")
    b.add_argument("--passes", help="comma-separated passes to run instead of the target's pipeline")
    b.add_argument("--exact", action="store_true",
                   help="run only exact passes (no raising of approximated math): rounding-level tier")
    b.add_argument("--fps", type=float, help="bake dt = 1/FPS into the graph and fold what follows from it")
    b.add_argument("--state-mode", choices=["variables", "io"],
                   help="tflite: state inside the model as resource variables (default) or as inputs/outputs")
    b.add_argument("--verify-each-pass", action="store_true",
                   help="check the IR and its outputs on sample frames after every pass")
    b.add_argument("--no-verify", action="store_true", help="skip the equivalence check (tier not verified)")
    b.add_argument("--frames", type=int, default=600, help="frames of the synthetic clip to verify on")

    v = sub.add_parser("verify", help="check an artifact against the authors' reference step")
    v.add_argument("artifact", help="artifact folder or model file")
    v.add_argument("--frames", type=int, default=600, help="frames of the synthetic clip (default 600)")
    v.add_argument("--hr", type=float, default=72.0, help="heart rate of the synthetic clip in bpm")
    v.add_argument("--seed", type=int, default=0, help="seed of the synthetic clip")
    v.add_argument("--json", action="store_true", help="print the metrics as JSON")

    i = sub.add_parser("inspect", help="node count, op histogram, params, state and FLOPs of an artifact")
    i.add_argument("artifact", help="artifact folder or model file")
    i.add_argument("--json", action="store_true", help="print as JSON")
    return p


def cmd_build(a) -> int:
    from .build import build
    names = [n.strip() for n in a.passes.split(",") if n.strip()] if a.passes is not None else None
    build(a.model, a.target, a.out, weights=a.weights, as_published=a.as_published, fuse=not a.no_fuse,
          pass_names=names, verify_each_pass=a.verify_each_pass, verify=not a.no_verify, frames=a.frames,
          exact=a.exact, fps=a.fps, target_options={"state_mode": a.state_mode} if a.state_mode else None)
    return EXIT_OK


def cmd_verify(a) -> int:
    from . import artifact as art
    from . import equivalence, metrics
    from .build import format_result
    stream = art.load(a.artifact)
    m = stream.manifest
    claimed = m.get("equivalence", {}).get("tier_claimed", "rounding")
    clip = equivalence.Clip(frames=a.frames, hr_bpm=a.hr, seed=a.seed, fps=float(m.get("fps") or 30.0))
    print(f"verifying {a.artifact} ({m['target']}, {m['precision']}) over {a.frames} frames", file=sys.stderr)
    result = equivalence.check(equivalence.stream_step(stream), stream.state, m["model"], m["source"], clip)
    print(json.dumps(result, indent=2) if a.json else format_result(result, claimed))
    if not metrics.meets(claimed, result["tier"]):
        print(f"error: the artifact reaches tier {result['tier']}, below the {claimed} tier its manifest "
              "claims; rebuild it", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_inspect(a) -> int:
    from .inspect import format_summary, inspect
    s = inspect(a.artifact)
    print(json.dumps(s, indent=2) if a.json else format_summary(s))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .artifact import ArtifactError
    from .build import BuildError
    from .stream import FrameError
    from graphopt.models import ModelSourceError
    from graphopt.passes import PassError
    try:
        return {"build": cmd_build, "verify": cmd_verify, "inspect": cmd_inspect}[args.command](args)
    except (ArtifactError, BuildError, ModelSourceError, FrameError, FileNotFoundError, PassError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED if isinstance(e, BuildError) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
