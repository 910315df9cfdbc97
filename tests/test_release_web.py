"""A release with a web variant (issue 19): the web artifact's FPS is timed in the page (the target's
bench_in_page hook, as `graphopt bench` times it), and its demo page, run by Chromium's fake camera on the
synthetic clip, leaves a screenshot in the release with the heart rate it showed (the release_extras hook),
both in release.json and in the model card.

A tiny pulse model (the green mean of a 36x36 face crop minus its running mean) instead of FacePhys: it
builds in seconds and shows the clip's pulse. The demo page needs what it feeds from a camera: one face
frame (or chunk) input of shape (..., H, W, 3), any H and W (the page resizes its face crop to them), and
dt. It skips (saying why) only where Chromium or the npm packages are missing; `make venv` installs both.
About 60 s on 2 cores: the demo page runs ~10 s of camera time before its heart rate settles.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import graphopt
from graphopt import release
from graphopt.targets import module_for, web

WEB_VARIANT = "onnx-web"

_ready = module_for(WEB_VARIANT).available()
pytestmark = pytest.mark.skipif(not _ready[0], reason=f"web targets unavailable: {_ready[1]}")


def pulse_spec() -> graphopt.ModelSpec:
    """A step model with a face frame input (1, 36, 36, 3), dt and a state: the green mean of the frame
    minus its running mean (time constant 0.3 s, so dt matters; a plain mean over the first frames, so
    the output starts without a transient), the simplest rPPG."""
    import jax.numpy as jnp

    def step(frame, dt, state):
        mean, n = state
        g = jnp.mean(frame[..., 1]).reshape(1, 1)
        new = mean + jnp.maximum(1.0 - jnp.exp(-dt / 0.3), 1.0 / (n + 1.0)) * (g - mean)
        return g - new, (new, n + 1.0)

    return graphopt.ModelSpec(name="pulse", fn=step, inputs={"frame": np.zeros((1, 36, 36, 3), np.float32),
                                                              "dt": np.float32(1 / 30)},
                              state=(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)),
                              outputs=["bvp"], dt_input="dt", pulse_output="bvp")


@pytest.fixture(scope="module")
def web_release(tmp_path_factory):
    lines = []
    out = release.run(pulse_spec(), tmp_path_factory.mktemp("rel") / "pulse", variants=["onnx", WEB_VARIANT],
                      frames=64, rounds=1, steps_per_round=20, tier="signal",
                      log=lines.append)  # a mean of 3888 values minus its running mean: float32 sums differ
    return out, json.loads((out / "release.json").read_text()), lines


def test_web_rows_are_timed_in_the_page(web_release):
    out, r, _ = web_release
    w, native = r["artifacts"][WEB_VARIANT], r["artifacts"]["onnx"]
    assert w["measured"] == "in page" and "measured" not in native
    assert w["in_page"][0]["label"].startswith("1 thread")
    assert w["fps"] == pytest.approx(w["in_page"][0]["fps"]) and w["fps"] > 0
    assert w["fps_min"] * (1 - 1e-9) <= w["fps"] <= w["fps_max"] * (1 + 1e-9)  # the median within the rounds
    for row in w["in_page"]:  # every row the page timed: 1 thread, and the runtime's default where not 1
        assert row["fps_min"] * (1 - 1e-9) <= row["fps"] <= row["fps_max"] * (1 + 1e-9) and row["p50_ms"] <= row["p99_ms"]
    assert w["x_reference"] > 0 and native["fps"] > 0
    card = (out / "README.md").read_text()
    assert f"Browser rows (`{WEB_VARIANT}`) step the JavaScript Stream in headless Chromium" in card
    assert f"| `{w['file']}` | {w['backend']} |" in card


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


def test_the_demo_pages_screenshot_and_heart_rate_are_in_the_release(web_release):
    out, r, lines = web_release
    demo = r["artifacts"][WEB_VARIANT]["demo"]
    assert demo["screenshot"] == f"{WEB_VARIANT}/demo.png" and demo["page"] == f"{WEB_VARIANT}/demo.html"
    width, height = _png_size((out / demo["screenshot"]).read_bytes())
    assert width >= 320 and height >= 240  # the whole page: camera view, heart rate, waveform
    assert demo["hr_bpm_clip"] == 72.0 and abs(demo["hr_bpm_shown"] - 72.0) <= 3, demo
    assert demo["hr_error_bpm"] == pytest.approx(demo["hr_bpm_shown"] - 72.0)
    assert demo["text_shown"] == f"{demo['hr_bpm_shown']:.0f} bpm" and demo["steps"] > 100
    assert demo["blocked_requests"] == 0
    x, y, side = demo["face_box"]  # the face: 144 px at (96, 24) in a 256x192 frame
    assert 60 <= x <= 110 and 0 <= y <= 40 and 130 <= side <= 192, demo["face_box"]
    assert "demo" not in r["artifacts"]["onnx"]  # a native target adds nothing
    card = (out / "README.md").read_text()
    assert f"![{WEB_VARIANT}: the demo page on the synthetic clip]({WEB_VARIANT}/demo.png)" in card
    assert f"showed **{demo['hr_bpm_shown']:.0f} bpm** (the clip: 72 bpm)" in card
    assert any("the demo page showed" in m for m in lines)
    # graphopt wrote it: the artifact folder's files list names it (a later --force over the folder may replace it)
    assert "demo.png" in json.loads((out / WEB_VARIANT / ".graphopt-files").read_text())["files"]
    # the screenshot beside the artifact leaves it loadable: graphopt runs only its own files there
    stream = graphopt.load(out / WEB_VARIANT)
    assert np.isfinite(stream.step(np.full((1, 36, 36, 3), 0.5, np.float32))).all()


def test_a_model_the_demo_cannot_feed_is_noted_not_failed():
    """The page feeds a face frame and dt only: a model with another input gets a note, not a failure."""
    m = {"inputs": [{"name": "frame", "role": "frame", "shape": [1, 8, 8, 3]},
                    {"name": "dt", "role": "dt", "shape": []}]}
    assert web.demo_unsuitable(m) is None
    assert "besides the frame" in web.demo_unsuitable({"inputs": m["inputs"] + [{"name": "k", "role": "input"}]})
    assert "no face-frame input" in web.demo_unsuitable({"inputs": [{"name": "x", "role": "input", "shape": [2, 4]}]})
    assert "(..., H, W, 3)" in web.demo_unsuitable({"inputs": [{"name": "x", "role": "frame", "shape": [1, 8, 8, 4]}]})
    assert module_for(WEB_VARIANT).card_lines("w", {"demo": {"skipped": "why"}}) == \
        ["- `w`: the demo page was not run (why)."]
    assert module_for(WEB_VARIANT).card_lines("w", {}) == []


def test_a_demo_page_that_fails_fails_its_release_entry(web_release, tmp_path, monkeypatch):
    """An error in the page (or no heart rate shown) raises, so the release fails (nothing written) rather
    than ship a card without its demo; no screenshot is left behind."""
    import shutil

    from graphopt import artifact as art
    out, r, _ = web_release
    folder = tmp_path / WEB_VARIANT
    shutil.copytree(out / WEB_VARIANT, folder)
    (folder / "demo.png").unlink()

    def failing(base, png, **kw):
        png.write_bytes(b"\x89PNG\r\n\x1a\n")
        return {"error": "TypeError: no camera", "hr": None, "clip_hr_bpm": 72.0}
    monkeypatch.setattr(web, "demo_screenshot", failing)
    with pytest.raises(art.ArtifactError, match="showed no heart rate .TypeError: no camera"):
        module_for(WEB_VARIANT).release_extras(folder, r["artifacts"][WEB_VARIANT], lambda m: None)
    assert not (folder / "demo.png").exists()
