"""The README's open-rppg zoo table from the releases `make artifacts` wrote (artifacts/*/release.json):
per model, the tier each target reached (`*`: below the tier its build claims, accepted by --tier), its FPS
on 1 thread, the IR nodes after the onnx pipeline and the authors' step in the same release run.

    .venv/bin/python tests/benchmarks/zoo_table.py [ARTIFACTS_DIR ...]   (default: artifacts)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = ["onnx", "xla", "tflite", "tf", "torch", "tensorrt"]


def main(dirs: list[str]) -> None:
    from graphopt import __version__
    from graphopt.models import zoo_names
    print("| model | IR nodes (onnx) | " + " | ".join(TARGETS) + " | authors' step (jax.jit) |")
    print("|---|---:|" + "---|" * (len(TARGETS) + 1))
    for m in zoo_names():
        found = [Path(d) / f"{m}-{__version__}" / "release.json" for d in dirs]
        found = [p for p in found if p.is_file()]
        if not found:
            print(f"| {m} | | " + " | ".join(["not released"] * len(TARGETS)) + " | |")
            continue
        r = json.loads(found[-1].read_text())
        arts = r["artifacts"]
        cells = []
        for t in TARGETS:
            e = arts.get(t)
            if not e or "tier" not in e:
                cells.append(e.get("skipped", "-") if e else "-")
                continue
            star = "*" if e.get("tier_claimed") and e["tier"] != e["tier_claimed"] else ""
            cells.append(f"{e['tier']}{star}, " + (f"{e['fps']:.0f} FPS" if "fps" in e else "GPU only"))
        ref = arts.get(r.get("reference_row", "open-rppg JAX JIT (reference)"), {})
        nodes = arts.get("onnx", {}).get("nodes", "")
        print(f"| {m} | {nodes} | " + " | ".join(cells) + f" | {ref.get('fps', 0):.0f} FPS |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["artifacts"])
