// graphopt-stream.js: a graphopt artifact run in the browser, with the Stream contract of graphopt's Python
// Stream (graphopt/stream.py). Written into every onnx-web and litert-web artifact folder by graphopt; the
// runtime (onnxruntime-web or LiteRT.js) is in the folder's runtime/, so the folder works from any static
// file server and nothing is fetched from elsewhere.
//
//   import { Stream } from './graphopt-stream.js';
//   const stream = await Stream.load();          // this folder's model; Stream.load(url, {threads, webgpu})
//   const bvp = await stream.step(frame);        // frame: Float32Array of H*W*C values in 0..1; dt = 1/fps
//   await stream.step(frame, 0.05);              // dt: seconds since the previous frame (a stall is clamped)
//   await stream.reset();  stream.state;  stream.stats
//
// Bad input (wrong size, not float, NaN/Inf, a bad dt) throws FrameError and leaves the state as it was; a
// step whose output or new state holds NaN/Inf throws StepError and keeps the state from before the step.
// Steps run one after another: calls made while a step runs wait for it (like the Python Stream's lock).
// WASM with SIMD always; threads where the page is cross-origin isolated (COOP/COEP headers); WebGPU only
// when asked for ({webgpu: true}), built in (--webgpu) and available, else WASM.

const MANIFEST = "__GRAPHOPT_MANIFEST__";  // this folder's manifest (graphopt fills it in)
const MAX_DT_FRAMES = 4;  // as graphopt.stream: a longer gap is stepped as this many frame intervals

export class FrameError extends Error {
  constructor(message) { super(message); this.name = 'FrameError'; }
}

export class StepError extends FrameError {
  constructor(message) { super(message); this.name = 'StepError'; }
}

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, int16: Int16Array, int32: Int32Array,
  int64: BigInt64Array, uint8: Uint8Array, bool: Uint8Array,
};

const count = (shape) => shape.reduce((a, b) => a * b, 1);
const shapeText = (shape) => `(${shape.join(', ')}${shape.length === 1 ? ',' : ''})`;

function finite(a) {
  // NaN and Inf times 0 are NaN, a finite value times 0 is 0: one pass without branches
  if (!(a instanceof Float32Array || a instanceof Float64Array)) return true;
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * 0;
  return s === 0;
}

function badCount(a) {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) n++;
  return n;
}

async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`graphopt: cannot fetch ${url} (HTTP ${r.status}); serve the whole artifact folder`);
  return r;
}

// ---- runtimes: run(inputs in manifest order) -> {outputs, state} with the state kept inside ------------------

class OrtRuntime {
  // onnxruntime-web: a step feeds the current state tensors and gets the new state as fresh output tensors
  // (onnxruntime-web copies outputs out of its WASM memory); commit() makes them current, so a refused
  // step leaves the current state untouched. The two sets alternate (ping-pong); none is copied in JS.
  static async open(base, manifest, opts) {
    const web = manifest.web;
    let adapter = null;
    if (opts.webgpu && web.webgpu && typeof navigator !== 'undefined' && navigator.gpu) {
      adapter = await navigator.gpu.requestAdapter().catch(() => null);
    }
    const useGpu = !!adapter;
    const ort = await import(new URL(useGpu ? web.webgpu.module : web.runtime.module, base).href);
    ort.env.wasm.wasmPaths = new URL(web.runtime.dir + '/', base).href;
    ort.env.wasm.numThreads = opts.threads;
    ort.env.wasm.proxy = false;
    const model = new Uint8Array(await (await fetchOk(new URL(manifest.file, base))).arrayBuffer());
    const session = await ort.InferenceSession.create(model, {
      executionProviders: useGpu ? ['webgpu', 'wasm'] : ['wasm'], graphOptimizationLevel: 'all',
    });
    const rt = new OrtRuntime();
    rt.ort = ort; rt.session = session; rt.manifest = manifest;
    rt.backend = useGpu ? 'webgpu' : 'wasm';
    rt.threads = useGpu ? 0 : ort.env.wasm.numThreads;
    const want = manifest.inputs.map((i) => i.name).concat(manifest.state.map((s) => s.input));
    const missing = want.filter((n) => !session.inputNames.includes(n));
    if (missing.length) throw new Error(`graphopt: the model lacks inputs ${missing.join(', ')} its manifest names; rebuild the artifact`);
    rt.current = []; rt.pending = null;
    return rt;
  }

  load(initial) {  // onnxruntime-web never writes its inputs: the initial arrays are fed as they are
    this.current = initial.map((a, i) => new this.ort.Tensor(this.manifest.state[i].dtype, a, this.manifest.state[i].shape));
    this.pending = null;
  }

  async run(inputs) {
    const m = this.manifest, ort = this.ort, feeds = {};
    m.inputs.forEach((spec, i) => { feeds[spec.name] = new ort.Tensor(spec.dtype, inputs[i], spec.shape); });
    m.state.forEach((s, i) => { feeds[s.input] = this.current[i]; });
    const got = await this.session.run(feeds);
    const outputs = [];
    for (const o of m.outputs) outputs.push(new ARRAYS[o.dtype](await got[o.name].getData()));
    this.pending = [];
    for (const s of m.state) {
      const t = got[s.output];
      this.pending.push(t.location === 'cpu' ? t : new ort.Tensor(s.dtype, await t.getData(true), s.shape));
    }
    return { outputs, state: this.pending.map((t) => t.data) };
  }

  commit() { this.current = this.pending; this.pending = null; }
  discard() { this.pending = null; }
  get state() { return this.current.map((t) => t.data); }
  close() { this.session.release(); }
}

const LITERT_LOADED = new Map();  // LiteRT.js module -> {threaded, lib (a promise)}

class LiteRtRuntime {
  // LiteRT.js (io mode: the state is the step signature's inputs and outputs). The state stays in the
  // runtime's memory as its own tensors: a step's state outputs are the next step's state inputs (no copy
  // through JavaScript); commit() frees the old ones, discard() the refused step's.
  static async open(base, manifest, opts) {
    const web = manifest.web;
    const litert = await import(new URL(web.runtime.module, base).href);
    const dir = new URL(web.runtime.dir + '/wasm/', base).href;
    // LiteRT.js loads its WASM once per page: a second Stream of the page shares it (and its threading)
    if (!LITERT_LOADED.has(litert)) {
      const want = opts.threads > 1 && self.crossOriginIsolated && await litert.supportsFeature('threads')
        && await litert.supportsFeature('relaxedSimd');
      LITERT_LOADED.set(litert, { threaded: want, lib: litert.loadLiteRt(dir, { threads: want }) });
    }
    const loaded = LITERT_LOADED.get(litert), threaded = loaded.threaded;
    const lib = await loaded.lib;
    const model = new Uint8Array(await (await fetchOk(new URL(manifest.file, base))).arrayBuffer());
    const compiled = await litert.loadAndCompile(model, {
      accelerator: 'wasm', cpuOptions: { numThreads: threaded ? opts.threads : 1 },
    });
    const rt = new LiteRtRuntime();
    rt.litert = litert; rt.lib = lib; rt.model = compiled; rt.manifest = manifest;
    rt.backend = 'wasm'; rt.threads = threaded ? opts.threads : 1;
    rt.signature = compiled.signatures[web.signature];
    if (!rt.signature) throw new Error(`graphopt: the model has no signature ${web.signature}; rebuild the artifact`);
    const names = rt.signature.getInputDetails().map((d) => d.name);
    const want = manifest.inputs.map((i) => i.name).concat(manifest.state.map((s) => s.input));
    const missing = want.filter((n) => !names.includes(n));
    if (missing.length) throw new Error(`graphopt: the model lacks inputs ${missing.join(', ')} its manifest names; rebuild the artifact`);
    rt.current = null; rt.pending = null;
    return rt;
  }

  tensor(data, spec) { return new this.litert.Tensor(data, spec.shape); }

  load(initial) {
    this.free(this.current);
    this.current = initial.map((a, i) => this.tensor(new ARRAYS[this.manifest.state[i].dtype](a), this.manifest.state[i]));
  }

  free(tensors) { for (const t of tensors || []) if (!t.deleted) t.delete(); }

  async run(inputs) {
    const m = this.manifest, feeds = {}, made = [];
    m.inputs.forEach((spec, i) => { const t = this.tensor(inputs[i], spec); made.push(t); feeds[spec.name] = t; });
    m.state.forEach((s, i) => { feeds[s.input] = this.current[i]; });
    let got;
    try {
      got = await this.signature.run(feeds);
    } finally {
      this.free(made);
    }
    const outputs = m.outputs.map((o) => new ARRAYS[o.dtype](got[o.name].toTypedArray()));
    this.free(m.outputs.map((o) => got[o.name]));
    this.pending = m.state.map((s) => got[s.output]);
    return { outputs, state: { read: () => this.pending.map((t) => t.toTypedArray()) } };
  }

  commit() { this.free(this.current); this.current = this.pending; this.pending = null; }
  discard() { this.free(this.pending); this.pending = null; }
  get state() { return this.current.map((t) => t.toTypedArray()); }
  close() { this.free(this.current); this.model.delete(); }
}

const RUNTIMES = { 'onnxruntime-web': OrtRuntime, 'litert.js': LiteRtRuntime };

// ---- the Stream ----------------------------------------------------------------------------------------

export class Stream {
  /** Load an artifact: `url` is its folder (default: this module's) or its manifest; options: threads
   * (default: the runtime's own where the page is cross-origin isolated, else 1), webgpu (onnx-web built
   * with --webgpu: run on the GPU where the browser has one). */
  static async load(url, { threads, webgpu = false } = {}) {
    const where = url === undefined ? new URL(MANIFEST, import.meta.url) : new URL(url, location.href);
    const manifestUrl = where.pathname.endsWith('.manifest.json') ? where : new URL(MANIFEST, where.href.endsWith('/') ? where : where.href + '/');
    const manifest = await (await fetchOk(manifestUrl)).json();
    if (!manifest.web || !RUNTIMES[manifest.web.runtime.name]) {
      throw new Error(`graphopt: ${manifestUrl} is not a web artifact's manifest (build with --target onnx-web or litert-web)`);
    }
    const isolated = typeof self !== 'undefined' && self.crossOriginIsolated;
    const cores = (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) || 1;
    let n = threads === undefined || threads === null ? Math.min(4, Math.max(1, Math.ceil(cores / 2))) : threads;
    if (!Number.isInteger(n) || n < 1) throw new Error(`graphopt: threads must be a positive whole number, got ${threads}`);
    if (!isolated) n = 1;  // WASM threads need SharedArrayBuffer: a cross-origin isolated page
    const base = new URL('.', manifestUrl);
    const runtime = await RUNTIMES[manifest.web.runtime.name].open(base, manifest, { threads: n, webgpu });
    const raw = new Uint8Array(await (await fetchOk(new URL(manifest.web.state_file, base))).arrayBuffer());
    const initial = manifest.web.state.map((s) => {
      const C = ARRAYS[s.dtype];
      if (s.offset + s.bytes > raw.byteLength) throw new Error(`graphopt: ${manifest.web.state_file} is truncated; rebuild the artifact`);
      return new C(raw.buffer.slice(s.offset, s.offset + s.bytes));
    });
    return new Stream(manifest, runtime, initial);
  }

  constructor(manifest, runtime, initial) {
    const m = manifest;
    this.manifest = m;
    this.runtime = runtime;
    this.inputNames = m.inputs.map((i) => i.name);
    this.inputRoles = m.inputs.map((i) => i.role || 'input');
    this.outputNames = m.outputs.map((o) => o.name);
    const f = Math.max(0, this.inputRoles.indexOf('frame'));
    this.frameShape = m.inputs[f].shape;
    this.frameSize = count(this.frameShape);
    this.takesDt = this.inputRoles.includes('dt');
    this.framesPerStep = m.frames_per_step || 1;
    const dtName = this.takesDt ? this.inputNames[this.inputRoles.indexOf('dt')] : 'dt';
    this.fixedDt = (m.fixed_inputs || {})[dtName] ?? null;
    this.fps = m.fps || 30;
    this.defaultDt = this.fixedDt || 1 / this.fps;
    this.maxDt = m.max_dt || MAX_DT_FRAMES * this.defaultDt;
    this.checkFinite = true;
    this.stats = { steps: 0, dt_clamped: 0, refused: 0 };
    this.backend = runtime.backend;
    this.threads = runtime.threads;
    this._initial = initial;
    this._queue = Promise.resolve();
    runtime.load(initial);
  }

  get kind() { return this.framesPerStep > 1 ? 'chunk' : 'step'; }

  _serial(fn) {  // one call at a time, in order
    const run = this._queue.then(fn, fn);
    this._queue = run.catch(() => {});
    return run;
  }

  /** One step: step(frame), step(frame, dt) or step({name: value, ...}); returns the output (a typed
   * array), or {name: output} for a model with several outputs. */
  step(frame, dt) {
    let feeds;
    try {
      feeds = this._bind(frame, dt);  // checked before queueing: bad input is refused at once
    } catch (e) {
      return Promise.reject(e);
    }
    return this._serial(() => this._step(feeds.values, feeds.clamped));
  }

  /** Steps through frames (an array of frames; dt as in step) and returns the outputs concatenated. */
  async run(frames, dt) {
    const outs = [];
    for (const f of frames) outs.push(await this.step(f, dt));
    const total = outs.reduce((a, o) => a + o.length, 0), all = new Float32Array(total);
    let at = 0;
    for (const o of outs) { all.set(o, at); at += o.length; }
    return all;
  }

  reset() {
    return this._serial(() => { this.runtime.load(this._initial); });
  }

  /** The state tensors as the artifact stores them (manifest "state" order): [{name, shape, dtype, data}]. */
  get state() {
    const now = this.runtime.state;
    return this.manifest.state.map((s, i) => ({ name: s.input, shape: s.shape, dtype: s.dtype, data: now[i].slice() }));
  }

  close() { this.runtime.close(); }

  async _step(values, clamped, commitAlways = false) {
    this.stats.dt_clamped += clamped ? 1 : 0;
    const { outputs, state } = await this.runtime.run(values);
    if (this.checkFinite && !commitAlways) {
      const tensors = state.read ? state.read() : state;
      if (!(outputs.every(finite) && tensors.every(finite))) {
        this.runtime.discard();
        this.stats.refused += 1;
        throw new StepError('the step produced NaN/Inf (the frame is far outside the model\'s input range, or dt is ' +
          'larger than the model can take); the state was kept as it was before this step: drop the frame and go ' +
          'on with the next one');
      }
    }
    this.runtime.commit();
    this.stats.steps += 1;
    if (outputs.length === 1) return outputs[0];
    return Object.fromEntries(this.outputNames.map((n, i) => [n, outputs[i]]));
  }

  _bind(frame, dt) {
    const named = frame !== null && typeof frame === 'object' && !ArrayBuffer.isView(frame) && !Array.isArray(frame);
    const given = named ? { ...frame } : {};
    if (!named) {
      if (!this.inputRoles.includes('frame')) throw new FrameError(`this model takes inputs ${this.inputNames.join(', ')}: call step({name: value, ...})`);
      given[this.inputNames[this.inputRoles.indexOf('frame')]] = frame;
    }
    if (dt !== undefined && dt !== null) {
      if (!this.takesDt) throw new FrameError(`this model takes no dt (it is a ${this.kind} model); call step(frame) alone`);
      given[this.inputNames[this.inputRoles.indexOf('dt')]] = dt;
    }
    if (named && 'dt' in given && !this.inputNames.includes('dt')) {
      if (!this.takesDt) throw new FrameError(`this model takes no dt (it is a ${this.kind} model); call step(frame) alone`);
      given[this.inputNames[this.inputRoles.indexOf('dt')]] = given.dt;
      delete given.dt;
    }
    for (const k of Object.keys(given)) {
      if (!this.inputNames.includes(k)) throw new FrameError(`step() got an unknown input ${JSON.stringify(k).slice(0, 40)}; this model takes ${this.inputNames.join(', ')}`);
    }
    let clamped = false;
    const values = this.manifest.inputs.map((spec, i) => {
      const role = this.inputRoles[i], v = given[spec.name];
      if (role === 'dt') {
        const r = this.checkDt(v);
        clamped = r.clamped;
        return new Float32Array([r.dt]);
      }
      if (v === undefined) throw new FrameError(`step() is missing input ${spec.name}; this model takes ${this.inputNames.join(', ')}`);
      return role === 'frame' ? this.checkFrame(v) : this._checkInput(spec, v);
    });
    return { values, clamped };
  }

  /** A frame as the model takes it (Float32Array), or FrameError. */
  checkFrame(frame) {
    const what = this.kind === 'step' ? 'frame' : `chunk of ${this.framesPerStep} frames`;
    const squeezed = shapeText(this.frameShape.filter((d) => d !== 1));
    if (frame instanceof Uint8Array || frame instanceof Uint8ClampedArray) {
      throw new FrameError(`${what} is uint8; this model takes float frames in 0..1: pass a Float32Array of the values / 255`);
    }
    if (ArrayBuffer.isView(frame) && !(frame instanceof Float32Array || frame instanceof Float64Array)) {
      throw new FrameError(`${what} is a ${frame.constructor.name}; this model takes float frames in 0..1 (float32): convert it to a Float32Array`);
    }
    if (!ArrayBuffer.isView(frame) && !Array.isArray(frame)) {
      throw new FrameError(`${what} is not an array; pass a Float32Array of ${this.frameSize} values, shape ${squeezed}`);
    }
    if (frame.length !== this.frameSize) {
      throw new FrameError(`${what} has ${frame.length} values, but this model takes shape ${shapeText(this.frameShape)} ` +
        `(${this.frameSize} float32 values in 0..1); pass one ${what} of shape ${squeezed}, flattened`);
    }
    const f = frame instanceof Float32Array ? frame : Float32Array.from(frame, Number);
    if (!finite(f)) {
      throw new FrameError(`frame contains ${badCount(f)} NaN/Inf values; the state was not updated. Drop or repair the ` +
        'frame (e.g. repeat the previous one) before calling step()');
    }
    return f;
  }

  /** dt as the step takes it ({dt, clamped}): default 1/fps, a stall above maxDt clamped, or FrameError. */
  checkDt(dt) {
    if (dt === undefined || dt === null) dt = this.defaultDt;
    if (typeof dt !== 'number') throw new FrameError(`dt must be a positive number of seconds per frame, got ${String(dt).slice(0, 40)}`);
    if (!Number.isFinite(dt) || !(Math.fround(dt) > 0)) throw new FrameError(`dt must be a positive number of seconds per frame, got ${dt}`);
    if (this.fixedDt !== null) {
      if (Math.abs(dt - this.fixedDt) > 1e-6 * Math.abs(this.fixedDt)) {
        throw new FrameError(`this artifact was built for dt = ${this.fixedDt.toPrecision(6)} s (--fps ${(1 / this.fixedDt).toPrecision(6)}), got dt = ${dt.toPrecision(6)}; rebuild without --fps to vary dt`);
      }
      return { dt, clamped: false };
    }
    return dt > this.maxDt ? { dt: this.maxDt, clamped: true } : { dt, clamped: false };
  }

  _checkInput(spec, v) {
    const C = ARRAYS[spec.dtype], n = count(spec.shape);
    if (!ArrayBuffer.isView(v) && !Array.isArray(v) && typeof v !== 'number' && typeof v !== 'bigint') {
      throw new FrameError(`input ${spec.name} is not an array; pass ${spec.dtype} of shape ${shapeText(spec.shape)}`);
    }
    const a = typeof v === 'number' || typeof v === 'bigint' ? [v] : v;
    if (a.length !== n) throw new FrameError(`input ${spec.name} has ${a.length} values, but this model takes shape ${shapeText(spec.shape)}`);
    const out = C === BigInt64Array ? BigInt64Array.from(a, (x) => BigInt(x)) : C.from(a, Number);
    if (!finite(out)) throw new FrameError(`input ${spec.name} contains NaN/Inf values; the state was not updated`);
    return out;
  }

  // ---- for graphopt (verification and in-page benchmarks) --------------------------------------------

  /** One step of inputs already checked by graphopt's Python Stream: {outputs, stateFinite}. The new state
   * is kept where the outputs and it are finite, or always with commitAlways (check_finite=False). */
  _runChecked(values, commitAlways) {
    return this._serial(async () => {
      const { outputs, state } = await this.runtime.run(values);
      const stateFinite = (state.read ? state.read() : state).every(finite);
      if (commitAlways || (stateFinite && outputs.every(finite))) this.runtime.commit();
      else this.runtime.discard();
      return { outputs, stateFinite };
    });
  }

  /** Per-step latencies (ms) of `steps` steps through the public step(), measured with performance.now. */
  async bench(frames, steps, warmup = 0) {
    for (let i = 0; i < warmup; i++) await this.step(frames[i % frames.length]);
    const ms = new Float64Array(steps);
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      await this.step(frames[i % frames.length]);
      ms[i] = performance.now() - t0;
    }
    return Array.from(ms);
  }
}
