"""What the web targets (onnx-web, litert-web) share: the artifact folder a browser runs, and its Stream in
Python, which runs that folder in headless Chromium.

The folder is the native twin's artifact (the onnx or tflite target's emit, called as it is: same model
file, manifest and npz state, so graphopt.load and verify read it like any artifact) plus what a page needs:
- `<stem>.state.bin`: the initial state as raw little-endian arrays, one after another; the manifest's
  "web.state" gives each one's name, dtype, shape, offset and byte count (JavaScript reads no npz);
- `runtime/`: the browser runtime's JS and WASM files, copied from the npm packages pinned in
  graphopt/web/package-lock.json (installed by `make venv` with npm ci), so the folder works from any static
  file server and fetches nothing from a CDN;
- `graphopt-stream.js`: the Stream contract in JavaScript (graphopt/web/graphopt-stream.js: Stream.load,
  step(frame, dt), reset(), state; ping-pong state, dt default and clamp, bad frames refused);
- `index.html`: a page that loads the model, steps it over mid-grey frames and shows the output and FPS;
- `demo.html`: camera frames (getUserMedia) cropped to the face and stepped through the model, the pulse
  waveform drawn live and the heart rate shown (demo_screenshot drives it with a fake camera).

Loading it in Python (WebStream) serves the folder on 127.0.0.1, opens index.html in the shared headless
Chromium (web_browser) and steps the JavaScript Stream through page.evaluate; the state stays in the page.
Only graphopt's own files run there: every JS/WASM file of the folder must be byte-identical to the ones
this graphopt writes (the npm packages it pins), else loading refuses the folder, so verifying an artifact
never executes code that came with it.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import artifact as art
from ..stream import FrameError, Stream, StepError
from . import web_browser

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # graphopt/web: the JS template, page, npm pins
MODULE = "graphopt-stream.js"
PAGE = "index.html"
DEMO = "demo.html"
RUNTIME_DIR = "runtime"
STATE_SUFFIX = ".state.bin"
MANIFEST_PLACEHOLDER = "__GRAPHOPT_MANIFEST__"
BATCH_BYTES = 32 << 20  # frames handed to the page in one call by WebStream.run


def node_modules() -> Path:
    """Where the pinned npm packages are: $GRAPHOPT_WEB_MODULES, else graphopt/web/node_modules."""
    return Path(os.environ.get("GRAPHOPT_WEB_MODULES") or WEB_DIR / "node_modules")


@dataclass(frozen=True)
class WebRuntime:
    """A browser runtime: the npm package and the files an artifact needs from it.
    files: (path in the package, path under runtime/); patches: path under runtime/ -> (text, replacement),
    for bare module specifiers a browser cannot resolve without a bundler."""
    name: str  # as graphopt-stream.js knows it
    package: str
    module: str  # the entry module, under runtime/
    files: tuple[tuple[str, str], ...]
    dtypes: tuple[str, ...]  # the tensor dtypes it takes
    signature: str | None = None  # the model signature a step runs (LiteRT)
    patches: dict = field(default_factory=dict)
    extra_packages: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # (package, files) it imports
    gpu_module: str | None = None  # the WebGPU build's entry module (copied with the webgpu option)
    gpu_files: tuple[tuple[str, str], ...] = ()

    def version(self) -> str:
        return _package_json(self.package).get("version", "?")

    def license(self) -> str:
        return _package_json(self.package).get("license", "see the package")

    def sources(self, webgpu: bool = False) -> list[tuple[Path, str]]:
        """(file in node_modules, path under runtime/) for every file an artifact holds."""
        root = node_modules()
        out = [(root / self.package / src, dst) for src, dst in self.files]
        out += [(root / pkg / src, dst) for pkg, files in self.extra_packages for src, dst in files]
        if webgpu:
            out += [(root / self.package / src, dst) for src, dst in self.gpu_files]
        return out

    def missing(self, webgpu: bool = False) -> list[str]:
        return [str(p) for p, _ in self.sources(webgpu) if not p.is_file()]


@functools.lru_cache(maxsize=None)
def _package_json(package: str) -> dict:
    try:
        return json.loads((node_modules() / package / "package.json").read_text())
    except (OSError, ValueError):
        return {}


def available(runtime: WebRuntime, native) -> tuple[bool, str]:
    """Building needs the native twin's tools and the npm packages; verifying (and loading) needs Chromium."""
    ok, reason = native.available()
    if not ok:
        return ok, reason
    missing = runtime.missing()
    if missing:
        return False, (f"the {runtime.package} npm package is not installed ({missing[0]} is missing); run `make venv` "
                       f"(npm ci in {WEB_DIR})")
    return web_browser.available()


# ---- emit ------------------------------------------------------------------------------------------------

def emit(native, name: str, runtime: WebRuntime, graph, out_dir: Path, options: dict,
         native_options: dict | None = None) -> art.Artifact:
    """The native twin's artifact (native.emit) made a web artifact: target `name`, the state as raw
    arrays, the runtime files, the JS module and the page (see the module docstring)."""
    out_dir = Path(out_dir)
    webgpu = bool(options.get("webgpu"))
    missing = runtime.missing(webgpu)
    if missing:
        raise art.ArtifactError(f"the {runtime.package} npm package is not installed ({missing[0]} is missing); run "
                                f"`make venv` (npm ci in {WEB_DIR})")
    _check_dtypes(graph, runtime, name)
    a = native.emit(graph, out_dir, {**options, **(native_options or {})})
    m = a.manifest
    m["target"] = name
    stem = a.path.name.rsplit(".", 1)[0]
    state_file = stem + STATE_SUFFIX
    layout, blob = _state_blob([s["input"] for s in m["state"]], [s.init for s in graph.state])
    (out_dir / state_file).write_bytes(blob)
    files = {}
    for src, dst in runtime.sources(webgpu):
        data = _runtime_bytes(runtime, src, dst)
        target = out_dir / RUNTIME_DIR / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files[f"{RUNTIME_DIR}/{dst}"] = hashlib.sha256(data).hexdigest()
    manifest_name = art.manifest_path_for(a.path).name
    for file, text in ((MODULE, module_text(manifest_name)), (PAGE, page_text(m, PAGE)), (DEMO, page_text(m, DEMO))):
        (out_dir / file).write_text(text)
        files[file] = hashlib.sha256(text.encode()).hexdigest()
    m["web"] = {
        "runtime": {"name": runtime.name, "package": runtime.package, "version": runtime.version(),
                    "license": runtime.license(), "dir": RUNTIME_DIR, "module": f"{RUNTIME_DIR}/{runtime.module}"},
        "webgpu": {"module": f"{RUNTIME_DIR}/{runtime.gpu_module}"} if webgpu and runtime.gpu_module else None,
        "module": MODULE, "page": PAGE, "demo": DEMO,
        "state_file": state_file, "state_sha256": hashlib.sha256(blob).hexdigest(), "byte_order": "little",
        "state": layout, "files": files,
        **({"signature": runtime.signature} if runtime.signature else {}),
    }
    m["tools"] = {**m.get("tools", {}), runtime.package: runtime.version(),
                  **{pkg: _package_json(pkg).get("version", "?") for pkg, _ in runtime.extra_packages}}
    art.write_json(a.manifest_path, m)
    return art.Artifact(a.path, m)


def _check_dtypes(graph, runtime: WebRuntime, name: str) -> None:
    tensors = [(v.name, v.dtype) for v in graph.inputs] + [(n, v.dtype) for n, v in zip(graph.output_names, graph.outputs)]
    tensors += [(s.name, s.input.dtype) for s in graph.state]
    bad = [(n, d) for n, d in tensors if d not in runtime.dtypes]
    if bad:
        raise art.ArtifactError(f"{runtime.package} takes tensors of {', '.join(runtime.dtypes)} only; {bad[0][0]} is "
                                f"{bad[0][1]}: the {name} target cannot run this graph in the browser (build a native "
                                "target)")


def _state_blob(names: list[str], arrays: list) -> tuple[list[dict], bytes]:
    """The state as one byte string (little-endian, each array 8-byte aligned) and its layout."""
    parts, layout, at = [], [], 0
    for n, a in zip(names, arrays):
        a = np.asarray(a)
        dtype = "bool" if a.dtype == np.bool_ else a.dtype.name
        data = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False)).tobytes()
        pad = -at % 8
        parts.append(b"\0" * pad + data)
        at += pad
        layout.append({"name": n, "dtype": dtype, "shape": list(a.shape), "offset": at, "bytes": len(data)})
        at += len(data)
    return layout, b"".join(parts)


def _runtime_bytes(runtime: WebRuntime, src: Path, dst: str) -> bytes:
    data = src.read_bytes()
    for old, new in runtime.patches.get(dst, ()):
        if old.encode() not in data:
            raise art.ArtifactError(f"{src} does not hold {old!r} where graphopt expects it (another {runtime.package} "
                                    f"version than graphopt/web/package-lock.json pins?); run `make venv`")
        data = data.replace(old.encode(), new.encode())
    return data


def module_text(manifest_name: str) -> str:
    """graphopt-stream.js for an artifact whose manifest is manifest_name."""
    text = (WEB_DIR / MODULE).read_text()
    return text.replace(f'"{MANIFEST_PLACEHOLDER}"', json.dumps(manifest_name), 1)  # a JS string literal


def page_text(manifest: dict, page: str) -> str:
    """A page of the folder (graphopt/web/<page>: index.html, demo.html) with the model's name."""
    import html
    title = html.escape(f"{manifest['model']} ({manifest['target']})")
    return (WEB_DIR / page).read_text().replace("__GRAPHOPT_TITLE__", title)


# ---- the Stream ------------------------------------------------------------------------------------------

_LOAD = """async ([threads, webgpu]) => {
  const mod = await import(new URL('graphopt-stream.js', location.href).href);
  const dtypes = {float32: Float32Array, float64: Float64Array, int8: Int8Array, int16: Int16Array,
                  int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array, bool: Uint8Array};
  const enc = (a) => {
    const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    let s = '';
    for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const dec = (s, dtype) => {
    const b = atob(s), u = new Uint8Array(b.length);
    for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i);
    return new dtypes[dtype](u.buffer);
  };
  const stream = await mod.Stream.load(undefined, {threads: threads ?? undefined, webgpu});
  const ins = stream.manifest.inputs.map((i) => i.dtype);
  const g = {stream, frames: null,
    run: async ([x, always]) => {
      const r = await stream._runChecked(x.map((v, i) => dec(v, ins[i])), always);
      return {outputs: r.outputs.map(enc), stateFinite: r.stateFinite};
    },
    runMany: async ([steps, always]) => {
      const outs = [];
      for (let k = 0; k < steps.length; k++) {
        const r = await stream._runChecked(steps[k].map((v, i) => dec(v, ins[i])), always);
        const ok = always || (r.stateFinite && r.outputs.every((o) => { let s = 0; for (const v of o) s += v * 0; return s === 0; }));
        if (!ok) return {outputs: outs, refusedAt: k};
        outs.push(r.outputs.map(enc));
      }
      return {outputs: outs, refusedAt: -1};
    },
    state: () => stream.runtime.state.map(enc),
    reset: () => stream.reset(),
    setFrames: (frames) => { g.frames = frames.map((f) => dec(f, 'float32')); },
    bench: ([steps, warmup]) => stream.bench(g.frames, steps, warmup),
  };
  window.__graphopt = g;
  return {backend: stream.backend, threads: stream.threads, isolated: self.crossOriginIsolated,
          runtime: stream.manifest.web.runtime.name};
}"""


class WebStream(Stream):
    state_settable = False  # the state lives in the page, which resets it but takes no state from Python
    state_settable_fix = "run one web Stream per stream (the page keeps its state and only resets it)"

    """A web artifact run in headless Chromium: the JavaScript Stream of its folder does the steps, with the
    state kept in the page (ping-pong); this Stream checks the inputs (as every Stream does), hands them to
    the page and reads the outputs back. A step whose output or new state is not finite is not committed in
    the page (the state stays as it was), as the Stream contract says.

    close() (or garbage collection) closes the page and the folder's server; the browser goes with the last
    WebStream. `page` is the Page (its requests, blocked and console logs)."""

    def __init__(self, model_file: Path, manifest: dict, initial_state, threads: int | None = 1,
                 webgpu: bool = False):
        super().__init__(manifest, initial_state)
        folder = Path(model_file).parent
        check_folder(folder, manifest, art.manifest_path_for(Path(model_file)).name)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise art.ArtifactError(f"threads must be a positive whole number (or None: the runtime's default), got "
                                    f"{threads!r:.40}")
        self.folder = folder
        self._server = web_browser.Server(folder)
        self._browser = web_browser.shared_browser()
        try:
            self.page = web_browser.Page(self._browser, self._server.url + manifest["web"]["page"] + "#harness")
            info = self.page.evaluate(_LOAD, [threads, bool(webgpu)])
        except Exception as e:
            self._server.close()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise art.ArtifactError(f"the browser could not load {folder} ({first}); rebuild the artifact") from None
        self.backend, self.threads, self.isolated = info["backend"], info["threads"], info["isolated"]
        self._in_dtypes = [np.dtype(i["dtype"]).newbyteorder("<") for i in manifest["inputs"]]
        self._out_specs = [(tuple(o["shape"]), _wire_dtype(o["dtype"])) for o in manifest["outputs"]]
        self._state_specs = [(tuple(s["shape"]), _wire_dtype(s["dtype"])) for s in manifest["state"]]
        self._last_state_finite = True
        self._finalizer = weakref.finalize(self, _release, self.page, self._server)
        self._reset()

    def close(self) -> None:
        """Close the page and the folder's server now (else when the Stream is collected)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn: str, arg=None):
        if not self._finalizer.alive:
            raise FrameError("this Stream is closed; load the artifact again")
        return self.page.evaluate(f"(a) => window.__graphopt.{fn}(a)", arg)

    def _encode(self, feeds) -> list[str]:
        return [base64.b64encode(np.ascontiguousarray(np.asarray(x).astype(d, copy=False)).tobytes()).decode()
                for x, d in zip(feeds, self._in_dtypes)]

    def _outputs(self, encoded: list[str]) -> list[np.ndarray]:
        return [_decode(s, shape, dtype) for s, (shape, dtype) in zip(encoded, self._out_specs)]

    def _run(self, feeds, state):
        r = self._call("run", [self._encode(feeds), not self.check_finite])
        self._last_state_finite = r["stateFinite"]
        return self._outputs(r["outputs"]), None  # the state stays in the page

    def _state_finite(self, state) -> bool:
        return self._last_state_finite

    def _restore(self, before) -> str:
        return "the state was kept as it was before this step"  # the page did not commit it

    def _reset(self) -> None:
        self._call("reset")
        self._state = None

    @property
    def native_state(self) -> list[np.ndarray]:
        with self._lock:
            got = self._call("state")
        return [_decode(s, shape, dtype) for s, (shape, dtype) in zip(got, self._state_specs)]

    def run(self, frames, dt: float | None = None) -> np.ndarray:
        """As Stream.run, with many steps handed to the page in one call (the frames are checked here first)."""
        if len(self.output_names) != 1 or any(r == "input" for r in self.input_roles):
            return super().run(frames, dt)
        frames = self._clip_steps(frames)
        steps, clamps = [], 0
        for f in frames:
            feeds, clamped = self._bind((f,) + ((dt,) if self.takes_dt else ()), {})
            steps.append(feeds)
            clamps += clamped
        outs = []
        per_call = max(1, BATCH_BYTES // max(1, sum(np.asarray(x).nbytes for x in steps[0]) if steps else 1))
        with self._lock:
            for at in range(0, len(steps), per_call):
                batch = steps[at:at + per_call]
                r = self._call("runMany", [[self._encode(s) for s in batch], not self.check_finite])
                outs += [self._outputs(o)[0].reshape(-1) for o in r["outputs"]]
                self.stats["steps"] += len(r["outputs"])
                if r["refusedAt"] >= 0:
                    self.stats["refused"] += 1
                    raise StepError("the step produced NaN/Inf (the frame is far outside the model's input range, or "
                                    "dt is larger than the model can take); the state was kept as it was before this "
                                    f"step (step {at + r['refusedAt']} of the clip): drop the frame and go on with "
                                    "the next one")
            self.stats["dt_clamped"] += clamps
        return np.concatenate(outs) if outs else np.zeros(0, np.float32)

    def bench(self, frames, steps: int, warmup: int = 0) -> np.ndarray:
        """Per-step latencies (seconds) of `steps` steps of the JavaScript Stream over `frames` (cycled),
        timed in the page with performance.now (no Python in the loop). Leaves the state where it ends."""
        frames = [self.check_frame(f) for f in frames]
        with self._lock:
            self._call("setFrames", [base64.b64encode(np.ascontiguousarray(f, "<f4").tobytes()).decode() for f in frames])
            ms = self._call("bench", [int(steps), int(warmup)])
        return np.asarray(ms, np.float64) / 1e3


def _wire_dtype(name: str) -> np.dtype:
    return np.dtype(np.uint8 if name == "bool" else name).newbyteorder("<")


def _decode(s: str, shape, dtype) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(s), dtype).astype(dtype.newbyteorder("="))
    if a.size != int(np.prod(shape)):
        raise art.ArtifactError(f"the page returned {a.size} values where the manifest says shape {shape}; rebuild "
                                "the artifact")
    return a.reshape(shape)


def _release(page, server) -> None:
    page.close()
    server.close()


def check_folder(folder: Path, manifest: dict, manifest_name: str) -> None:
    """The files a page runs are graphopt's own (see the module docstring), and the state file is the
    manifest's; ArtifactError naming the file otherwise."""
    web = manifest.get("web")
    if not isinstance(web, dict) or not isinstance(web.get("files"), dict) or not isinstance(web.get("runtime"), dict):
        raise art.ArtifactError(f"the manifest in {folder} has no web section; rebuild the artifact with a web target")
    from .. import manifest as schema
    runtime = RUNTIMES.get(web["runtime"].get("name"))
    if runtime is None:
        raise art.ArtifactError(f"the manifest in {folder} names an unknown browser runtime "
                                f"{web['runtime'].get('name')!r:.40}; rebuild the artifact")
    webgpu = bool(web.get("webgpu"))
    # what the page imports and opens comes from these fields: each must name graphopt's own file
    fixed = {"module": MODULE, "page": PAGE, "demo": DEMO, "runtime.dir": RUNTIME_DIR,
             "runtime.module": f"{RUNTIME_DIR}/{runtime.module}",
             **({"webgpu.module": f"{RUNTIME_DIR}/{runtime.gpu_module}"} if webgpu else {})}
    for key, want in fixed.items():
        section, _, field_name = key.rpartition(".")
        got = (web.get(section) if section else web) or {}
        got = got.get(field_name) if isinstance(got, dict) else None
        if got != want:
            raise art.ArtifactError(f"the manifest in {folder} gives web.{key} {got!r:.60}, not {want!r} as graphopt "
                                    "writes it; rebuild the artifact")
    expected = {MODULE: hashlib.sha256(module_text(manifest_name).encode()).hexdigest(),
                **{p: hashlib.sha256(page_text(manifest, p).encode()).hexdigest() for p in (PAGE, DEMO)}}
    for src, dst in runtime.sources(webgpu):
        if not src.is_file():
            raise art.ArtifactError(f"cannot check {folder}: the {runtime.package} npm package is not installed "
                                    f"({src} is missing); run `make venv`")
        expected[f"{RUNTIME_DIR}/{dst}"] = _own_sha256(runtime, src, dst)
    if set(web["files"]) != set(expected):
        built = str(web["runtime"].get("version"))[:20]
        why = (f"built with {runtime.package} {built}, this graphopt pins {runtime.version()}"
               if built != runtime.version() else "built by another graphopt version")
        raise art.ArtifactError(f"{folder} lists other browser files than this graphopt writes ({why}); rebuild "
                                "the artifact")
    for rel, digest in expected.items():
        path = schema.resolve_inside(folder, rel, f"web.files[{rel}]")
        if not path.is_file() or art.sha256(path) != digest:
            raise art.ArtifactError(f"{path} is not the file this graphopt writes (changed after the build, or built "
                                    f"with another {runtime.package} than {runtime.version()}); graphopt runs only its "
                                    "own files in the browser: rebuild the artifact")
    state = schema.resolve_inside(folder, str(web.get("state_file")), "web.state_file")
    if not state.is_file() or art.sha256(state) != web.get("state_sha256"):
        raise art.ArtifactError(f"{state} does not match the sha256 in the manifest; rebuild the artifact")


@functools.lru_cache(maxsize=64)
def _own_sha256_cached(runtime_name: str, src: str, dst: str, mtime: float, size: int) -> str:
    return hashlib.sha256(_runtime_bytes(RUNTIMES[runtime_name], Path(src), dst)).hexdigest()


def _own_sha256(runtime: WebRuntime, src: Path, dst: str) -> str:
    st = src.stat()
    return _own_sha256_cached(runtime.name, str(src), dst, st.st_mtime, st.st_size)


def open_stream(model_file: Path, manifest: dict, initial_state, threads: int | None = 1,
                webgpu: bool = False) -> WebStream:
    return WebStream(model_file, manifest, initial_state, threads=threads, webgpu=webgpu)


# ---- benchmark rows measured in the page -----------------------------------------------------------------

def bench_in_page(stream, frames: list, *, rounds: int, steps_per_round: int, warmup: int) -> list | None:
    """graphopt bench's rows of a web artifact: FPS measured in the page (a JavaScript loop over the clip's
    frames timed with performance.now, no Python in the loop), on 1 thread and on the runtime's default
    threads (the default row is left out where that is 1 thread). frames: the clip's frame inputs.
    Returns [(label, latencies in s, each round's median)], or None for a model the loop cannot feed
    (inputs besides the frame and dt)."""
    if not isinstance(stream, WebStream) or any(r == "input" for r in stream.input_roles):
        return None
    rows = []
    opened = [stream if stream.threads == 1 else art.load(stream.folder, threads=1)]
    default = art.load(stream.folder, threads=None)
    default_threads = default.threads
    if default_threads != 1:
        opened.append(default)
    else:
        default.close()
    for s in opened:
        s.reset()
        s.bench(frames, 0, warmup)
        lat, medians = [], []
        for _ in range(rounds):
            r = s.bench(frames, steps_per_round)
            lat.append(r)
            medians.append(float(np.median(r)))
        label = "1 thread" + (", the default here" if default_threads == 1 else "") if s is opened[0] else \
            f"{s.threads} threads, the default"
        rows.append((label, np.concatenate(lat), tuple(medians)))
        s.reset()
        if s is not stream:
            s.close()
    return rows


# ---- the demo page with a fake camera -----------------------------------------------------------------------

def demo_video(path: Path, seconds: float = 20.0, hr_bpm: float = 72.0, fps: float = 30.0, size: int = 144,
               canvas: tuple[int, int] = (256, 192), at: tuple[int, int] = (96, 24), seed: int = 0) -> Path:
    """The synthetic verification clip (graphopt.clip: a face with a pulse at hr_bpm), `size` pixels square,
    placed at `at` in a `canvas` (width, height) of its background, as a Y4M video (4:2:0, BT.601): the file
    Chromium's fake camera plays (--use-file-for-fake-video-capture), looping. Off centre, so the demo page
    has to find the face to crop it."""
    from ..clip import BACKGROUND_RGB, synthetic_clip
    face = synthetic_clip(int(round(seconds * fps)), hr_bpm=hr_bpm, fps=fps, size=size, seed=seed)
    (w, h), (x, y) = canvas, at
    if w % 2 or h % 2 or x < 0 or y < 0 or x + size > w or y + size > h:
        raise ValueError(f"a {size}-pixel face at {at} does not fit an even-sized canvas {canvas}")
    frames = np.empty((len(face), h, w, 3), np.float32)
    frames[:] = BACKGROUND_RGB
    frames[:, y:y + size, x:x + size] = face
    rgb = np.clip(frames, 0.0, 1.0).astype(np.float64)
    y = 16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]
    cb = 128 - 37.797 * rgb[..., 0] - 74.203 * rgb[..., 1] + 112.0 * rgb[..., 2]
    cr = 128 + 112.0 * rgb[..., 0] - 93.786 * rgb[..., 1] - 18.214 * rgb[..., 2]
    sub = lambda c: c.reshape(len(c), h // 2, 2, w // 2, 2).mean(axis=(2, 4))  # noqa: E731
    to8 = lambda c: np.clip(np.round(c), 0, 255).astype(np.uint8)  # noqa: E731
    y, cb, cr = to8(y), to8(sub(cb)), to8(sub(cr))
    num, den = (int(round(fps * 1000)), 1000)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{num}:{den} Ip A1:1 C420mpeg2\n".encode())
        for i in range(len(y)):
            f.write(b"FRAME\n" + y[i].tobytes() + cb[i].tobytes() + cr[i].tobytes())
    return Path(path)


_DEMO_WAIT = """async ([seconds]) => {
  const t0 = performance.now();
  while (performance.now() - t0 < 1000 * (seconds + 60)) {
    const d = window.graphoptDemo;
    if (d && d.error) return d;
    if (d && d.hr !== null && d.firstHr === undefined) d.firstHr = performance.now();
    if (d && d.firstHr !== undefined && performance.now() - d.firstHr >= 1000 * seconds) return d;
    await new Promise((r) => setTimeout(r, 200));
  }
  return window.graphoptDemo || null;
}"""


def run_demo(folder: Path, video: Path, seconds: float = 8.0, screenshot: Path | None = None) -> dict:
    """Open the folder's demo.html in a Chromium whose camera plays `video` (demo_video), let it run until
    it has shown a heart rate for `seconds`, and return what the page reports (frames, steps, dropped, the
    heart rate hr, the face box, the text shown); with `screenshot`, a PNG of the page."""
    manifest, base = art.read_manifest(folder)
    check_folder(base, manifest, art.find_manifest(folder).name)
    browser = web_browser.Browser(("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                   f"--use-file-for-fake-video-capture={Path(video).resolve()}"))
    server = web_browser.Server(base)
    page = web_browser.Page(browser, server.url + manifest["web"]["demo"])
    try:
        got = page.evaluate(_DEMO_WAIT, [float(seconds)]) or {}
        got["shown"] = page.evaluate("() => document.getElementById('hr').textContent")
        got["blocked"] = list(page.blocked)
        if screenshot is not None:
            page.screenshot(str(screenshot))
    finally:
        page.close()
        server.close()
    return got


DEMO_HR_BPM = 72.0  # the heart rate of the clip the demo's fake camera plays


def demo_screenshot(folder: Path, png: Path, seconds: float = 4.0, hr_bpm: float = DEMO_HR_BPM) -> dict:
    """A screenshot of the folder's demo page for a release (its model card): demo.html run on the synthetic
    clip (hr_bpm, demo_video) by Chromium's fake camera until it has shown a heart rate for `seconds`.
    Returns what the page reports (run_demo) and the clip's heart rate (clip_hr_bpm)."""
    import tempfile
    manifest, _ = art.read_manifest(folder)
    with tempfile.TemporaryDirectory(prefix="graphopt-demo-") as tmp:
        video = demo_video(Path(tmp) / "clip.y4m", hr_bpm=hr_bpm, fps=float(manifest.get("fps") or 30.0))
        return {**run_demo(folder, video, seconds=seconds, screenshot=png), "clip_hr_bpm": hr_bpm}


def demo_unsuitable(manifest: dict) -> str | None:
    """Why demo.html cannot run this model on camera frames (None where it can): the page feeds one face frame
    (or chunk) of shape (..., H, W, 3) and dt, nothing else."""
    roles = [i.get("role", "input") for i in manifest.get("inputs", [])]
    if "frame" not in roles:
        return "the model has no face-frame input"
    if any(r not in ("frame", "dt") for r in roles):
        return "the model takes inputs besides the frame and dt, which the page cannot feed from a camera"
    shape = manifest["inputs"][roles.index("frame")].get("shape") or []
    if len(shape) < 3 or shape[-1] != 3:
        return f"the frame input's shape {shape} is not (..., H, W, 3)"
    return None


DEMO_PNG = "demo.png"


def release_extras(folder: Path, entry: dict, log) -> dict:
    """A release's demo of a web artifact (the issue asks for the page's screenshot in the release): the
    folder's demo.html run by Chromium's fake camera on the synthetic clip (demo_screenshot), its PNG written
    as demo.png in the artifact's folder. Returns the release entry's "demo" field: the screenshot (relative
    to the release folder), the heart rate the page showed and the clip's; the reason where the page cannot
    run the model. Raises where the page fails (an error in the page, no heart rate shown)."""
    manifest, base = art.read_manifest(folder)
    why = demo_unsuitable(manifest)
    if why:
        log(f"      demo page not run: {why}")
        return {"demo": {"skipped": why}}
    log(f"      running {manifest['web']['demo']} on the synthetic clip with a fake camera ...")
    r = demo_screenshot(base, base / DEMO_PNG)
    if r.get("error") or r.get("hr") is None or not (base / DEMO_PNG).is_file():
        (base / DEMO_PNG).unlink(missing_ok=True)
        why = str(r.get("error") or "no heart rate in time")[:200]
        raise art.ArtifactError(f"the demo page showed no heart rate ({why})")
    from ..outdir import record_written
    record_written(base / DEMO_PNG)  # in the artifact's files list: a later --force over the folder may replace it
    shown, clip = float(r["hr"]), float(r["clip_hr_bpm"])
    log(f"      the demo page showed {shown:.0f} bpm (the clip: {clip:.0f} bpm) after {r.get('steps')} steps")
    return {"demo": {"page": f"{entry['folder']}/{manifest['web']['demo']}",
                     "screenshot": f"{entry['folder']}/{DEMO_PNG}", "hr_bpm_shown": shown, "hr_bpm_clip": clip,
                     "hr_error_bpm": shown - clip, "text_shown": str(r.get("shown", ""))[:40],
                     "steps": r.get("steps"), "camera_frames": r.get("frames"), "dropped": r.get("dropped"),
                     "face_box": r.get("box"), "blocked_requests": len(r.get("blocked") or []),
                     "camera": "Chromium's fake camera playing the synthetic clip (a 144-pixel face off centre in a "
                               "256x192 frame)"}}


def card_lines(name: str, entry: dict) -> list[str]:
    """The model card's note on a web artifact's demo page (release_extras): its screenshot and the heart
    rate it showed."""
    from ..release import _md
    demo = entry.get("demo")
    if not isinstance(demo, dict):
        return []
    if "skipped" in demo:
        return [f"- `{_md(name)}`: the demo page was not run ({_md(demo['skipped'])})."]
    return ["", f"`{_md(demo['page'])}` (serve the folder over http://localhost and allow the camera) with "
            f"{demo['camera']}: the page cropped the face, stepped `{_md(name)}` {demo['steps']} times and showed "
            f"**{demo['hr_bpm_shown']:.0f} bpm** (the clip: {demo['hr_bpm_clip']:.0f} bpm).", "",
            f"![{_md(name)}: the demo page on the synthetic clip]({_md(demo['screenshot'])})", ""]


def card_snippet(c) -> list[str]:
    """The model card's note on running the artifact in a page (c: release.Snippet). The card's code block is
    Python, so the JavaScript is given as comments."""
    return [f"# in a web page: serve the folder (python -m http.server -d {c.folder}) and, in a page of it (JavaScript):",
            "#   import { Stream } from './graphopt-stream.js';",
            "#   const stream = await Stream.load();",
            f"#   const y = await stream.step({c.x});  // {c.x}: a Float32Array of the input's values (0..1)"]


# the runtimes graphopt-stream.js knows (filled in by the target modules' imports below)
RUNTIMES: dict[str, WebRuntime] = {}

ONNXRUNTIME_WEB = WebRuntime(
    "onnxruntime-web", "onnxruntime-web", "ort.wasm.min.mjs",
    files=(("dist/ort.wasm.min.mjs", "ort.wasm.min.mjs"),
           ("dist/ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.mjs"),
           ("dist/ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.wasm")),
    dtypes=("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"),
    gpu_module="ort.webgpu.min.mjs",
    gpu_files=(("dist/ort.webgpu.min.mjs", "ort.webgpu.min.mjs"),
               ("dist/ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.mjs"),
               ("dist/ort-wasm-simd-threaded.asyncify.wasm", "ort-wasm-simd-threaded.asyncify.wasm")))

LITERT_JS = WebRuntime(
    "litert.js", "@litertjs/core", "litert.js",
    files=(("dist/index.js", "litert.js"),)
    + tuple((f"wasm/{f}", f"wasm/{f}") for f in (
        "litert_wasm_internal.js", "litert_wasm_internal.wasm", "litert_wasm_compat_internal.js",
        "litert_wasm_compat_internal.wasm", "litert_wasm_threaded_internal.js", "litert_wasm_threaded_internal.wasm")),
    dtypes=("float32", "int32", "uint8"), signature="step",
    patches={"litert.js": (('from "@litertjs/wasm-utils"', 'from "./wasm-utils.js"'),)},
    extra_packages=(("@litertjs/wasm-utils", (("dist/index.js", "wasm-utils.js"),)),))

RUNTIMES.update({r.name: r for r in (ONNXRUNTIME_WEB, LITERT_JS)})
