"""Every model open-rppg 0.1.1 (MIT) ships, as ModelSpecs: the authors' Keras-3-on-JAX code and weights.

    spec("ME-flow.rlap")   -> ModelSpec  (the 17 names of open-rppg's `supported_models`, any case)

Each spec is built with nothing a user's spec cannot use: the authors' classes imported by file path
from the installed distribution (the `rppg` package's __init__, which imports video and face-detection
libraries, never runs), their trained weights, and `fn` written the way open-rppg's own `Model` calls
the network (`rppg/models.py`, the `load_*` functions), less the `uint8 / 255` of its frames: every
spec's frame input is float32 RGB in 0..1, batch 1, shaped (1, T, H, W, 3).

- chunk models (stateless), fn(frame[1,T,H,W,3]) -> bvp[1,T]: PhysMamba, RhythmMamba, PhysFormer,
  TSCAN, PhysNet, EfficientPhys. The preprocessing open-rppg applies outside the network is part of fn
  (PhysMamba: frame differences standardised per frame); so is the post-processing of its output
  (TSCAN and EfficientPhys: the derivative-signal outputs are cumsum-standardised and differenced again;
  open-rppg integrates them later, `cumsum_output` in the source record).
- ME-chunk (stateful chunk), fn(frame[1,160,36,36,3], state) -> (bvp[1,160], state): the SSM state
  carried from chunk to chunk, starting from the state open-rppg ships (rppg/weights/state.pkl).
- step models, fn(frame[1,1,36,36,3], dt, state) -> (bvp[1,1], state): FacePhys (initial state from
  the model's init_state) and ME-flow (initial state from state.pkl). dt is seconds per frame (1/30 by
  default, as open-rppg runs them).

state.pkl is read by graphopt.safe_pickle (its opcodes walked, nothing imported or called), never
unpickled. open-rppg's module sets Keras's global dtype policy to mixed_float16 when imported; it is
restored at once and every model is built in float32 (FacePhys's layers that ask for mixed_float16
by name are switched to float32, as graphopt.models.facephys does). Models load lazily, once per
process and name.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

os.environ.setdefault("KERAS_BACKEND", "jax")

from .source import (ModelSourceError, check_weights_file, load_package_module, load_weights,  # noqa: E402
                     locate_package_file, require_keras_jax, sha256_file)

PACKAGE, VERSION = "open-rppg", "0.1.1"
FPS = 30.0
ALIAS = "graphopt_rppg"  # the stand-in package the authors' modules import under (shared with physnet)
MODELS_CODE = "rppg/models.py"
STATE_FILE = "rppg/weights/state.pkl"

# open-rppg 0.1.1's rppg.main.supported_models, in its order
NAMES = ["FacePhys.rlap", "ME-chunk.rlap", "ME-flow.rlap", "ME-chunk.pure", "ME-flow.pure",
         "PhysMamba.pure", "PhysMamba.rlap", "RhythmMamba.rlap", "RhythmMamba.pure",
         "PhysFormer.pure", "PhysFormer.rlap", "TSCAN.rlap", "TSCAN.pure",
         "PhysNet.rlap", "PhysNet.pure", "EfficientPhys.pure", "EfficientPhys.rlap"]


@dataclass(frozen=True)
class Family:
    """One network of open-rppg: its Keras class, where it lives, and how open-rppg calls it."""
    name: str
    cls: str  # the Keras class open-rppg builds (in rppg/models.py unless code says otherwise)
    code: str  # the file that defines it, inside the package
    weights: str  # weights file pattern inside the package ({v}: rlap or pure)
    shape: tuple[int, ...]  # the frame input (1, T, H, W, 3)
    kind: str  # "chunk" (stateless), "chunk-state" (stateful chunk) or "step" (one frame, dt, state)
    build_shape: tuple[int, ...] | None = None  # the shape open-rppg builds the network with, if not `shape`
    cumsum_output: bool = False  # open-rppg integrates the output before use (its meta['cumsum_output'])


FAMILIES = {
    "FacePhys": Family("FacePhys", "FacePhys", "rppg/models_code/FacePhys.py", "rppg/weights/FacePhys.{v}.weights.h5",
                       (1, 1, 36, 36, 3), "step"),
    "ME-flow": Family("ME-flow", "InfinitePulse", MODELS_CODE, "rppg/weights/ME.{v}.weights.h5",
                      (1, 1, 36, 36, 3), "step", build_shape=(1, 160, 36, 36, 3)),
    "ME-chunk": Family("ME-chunk", "InfinitePulse", MODELS_CODE, "rppg/weights/ME.{v}.weights.h5",
                       (1, 160, 36, 36, 3), "chunk-state"),
    "PhysMamba": Family("PhysMamba", "PhysMamba", MODELS_CODE, "rppg/weights/PhysMamba.{v}.weights.h5",
                        (1, 128, 128, 128, 3), "chunk"),
    "RhythmMamba": Family("RhythmMamba", "RhythmMamba", MODELS_CODE, "rppg/weights/RhythmMamba.{v}.weights.h5",
                          (1, 160, 128, 128, 3), "chunk"),
    "PhysFormer": Family("PhysFormer", "PhysFormer", MODELS_CODE, "rppg/weights/PhysFormer.{v}.weights.h5",
                         (1, 160, 128, 128, 3), "chunk"),
    "TSCAN": Family("TSCAN", "TSCAN", MODELS_CODE, "rppg/weights/TSCAN.{v}.weights.h5",
                    (1, 160, 36, 36, 3), "chunk", cumsum_output=True),
    "PhysNet": Family("PhysNet", "PhysNet", MODELS_CODE, "rppg/weights/physnet.{v}.weights.h5",
                      (1, 128, 32, 32, 3), "chunk"),
    "EfficientPhys": Family("EfficientPhys", "EfficientPhys", MODELS_CODE,
                            "rppg/weights/EfficientPhys.{v}.weights.h5", (1, 160, 72, 72, 3), "chunk",
                            cumsum_output=True),
}

_BY_KEY = {n.lower(): n for n in NAMES}


def canonical(name: str) -> str:
    """open-rppg's spelling of a zoo name given in any case ('me-flow.rlap' -> 'ME-flow.rlap')."""
    if not isinstance(name, str) or name.lower() not in _BY_KEY:
        raise ModelSourceError(f"unknown open-rppg model {name!r:.60}; choose one of: {', '.join(NAMES)}")
    return _BY_KEY[name.lower()]


def spec_name(name: str) -> str:
    """The spec's (artifact's) name: open-rppg's name in lower case, e.g. 'me-flow.rlap'."""
    return canonical(name).lower()


def family_of(name: str) -> tuple[Family, str]:
    family, variant = canonical(name).rsplit(".", 1)
    return FAMILIES[family], variant


def spec(name: str):
    """The ModelSpec of one open-rppg model (built once per process and name)."""
    return _spec(canonical(name))


# ---- loading ---------------------------------------------------------------------------------------

def _authors_module():
    """rppg/models.py (which also imports rppg/models_code/FacePhys.py), imported by file path."""
    import keras
    code_path = locate_package_file(PACKAGE, VERSION, MODELS_CODE)
    previous = keras.config.dtype_policy()
    try:
        return load_package_module(ALIAS, os.path.dirname(code_path), "models", stub_missing=("pkg_resources",))
    finally:
        keras.config.set_dtype_policy(previous)  # the module sets mixed_float16 globally on import


def _construct(module, cls_name: str):
    if cls_name == "FacePhys":
        return module.FacePhys([2] * 4, [32] * 4)
    if cls_name == "InfinitePulse":
        return module.InfinitePulse([2] * 4)
    if cls_name == "TSCAN":
        return module.TSCANToEnd(module.TSCAN())  # open-rppg's wrapper: diff-normalised and mean inputs
    return getattr(module, cls_name)()


def _build(model, cls_name: str, shape: tuple[int, ...], abstract: bool) -> None:
    """Create the network's variables as open-rppg does (build, or one call on zeros). abstract: under
    jax.eval_shape, so no op runs and no initializer is compiled; the weights file then gives every
    variable its value (what it does not hold is fixed up or refused in _network)."""
    import jax
    import jax.numpy as jnp

    if cls_name in ("FacePhys", "InfinitePulse"):  # their build() calls the network on zeros
        run = lambda: model.build(shape)  # noqa: E731
    else:
        run = lambda: model(jnp.zeros(shape, jnp.float32))  # noqa: E731
    if abstract:
        jax.eval_shape(run)
    else:
        run()


def _leftover_tracers(model) -> list:
    """Variables an abstract build left holding a tracer (the weights file did not give them a value)."""
    import jax
    return [v for v in model.variables if isinstance(v.value, jax.core.Tracer)]


@functools.lru_cache(maxsize=None)
def _network(cls_name: str, weights_rel: str, build_shape: tuple[int, ...]):
    """The authors' network in float32 with its trained weights (shared by ME-flow and ME-chunk).

    Building a Keras network eagerly runs it once and compiles every initializer (tens of seconds on a
    CPU); building it abstractly takes seconds. The weights file assigns every trained variable, so both
    give the same network; the only variables it lacks are the dropout layers' random-seed states, set to
    fixed seeds (inference never reads them). Anything else left unassigned falls back to the eager build.
    """
    import keras
    import numpy as np

    weights_path = locate_package_file(PACKAGE, VERSION, weights_rel)
    check_weights_file(weights_path)
    require_keras_jax()
    module = _authors_module()
    model = None
    for abstract in (True, False):
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")
        try:
            candidate = _construct(module, cls_name)
            _build(candidate, cls_name, build_shape, abstract)
        except Exception:
            if not abstract:
                raise
            continue
        finally:
            keras.config.set_dtype_policy(previous)
        load_weights(candidate, weights_path, cls_name, PACKAGE, VERSION)
        left = _leftover_tracers(candidate)
        if abstract and any(not v.path.endswith("seed_generator_state") for v in left):
            continue
        for i, v in enumerate(left):
            v.assign(np.array([i + 1, 0], dtype=v.dtype))
        model = candidate
        break
    mixed = [layer for layer in model._flatten_layers() if layer.dtype_policy.name != "float32"]
    for layer in mixed:  # FacePhys's convs ask for mixed_float16 by name
        layer.dtype_policy = keras.DTypePolicy("float32")
    return model, weights_path, len(mixed)


@functools.lru_cache(maxsize=1)
def _shipped_state():
    """open-rppg's initial ME state (rppg/weights/state.pkl), read without unpickling."""
    import jax
    import numpy as np

    from graphopt import safe_pickle
    path = locate_package_file(PACKAGE, VERSION, STATE_FILE)
    try:
        state = safe_pickle.load(path)
    except ValueError as e:
        raise ModelSourceError(f"{STATE_FILE} of the installed {PACKAGE} is not a state graphopt reads ({e}); "
                               f"reinstall it with `pip install --force-reinstall --no-deps {PACKAGE}=={VERSION}`") \
            from None
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), state), sha256_file(path)


@functools.lru_cache(maxsize=None)
def _spec(name: str):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from graphopt.spec import ModelSpec

    fam, variant = family_of(name)
    weights_rel = fam.weights.format(v=variant)
    model, weights_path, n_mixed = _network(fam.cls, weights_rel, fam.build_shape or fam.shape)
    source = {"package": PACKAGE, "version": VERSION, "model": name, "code": fam.code, "class": fam.cls,
              "weights": weights_rel, "weights_sha256": sha256_file(weights_path), "precision": "float32"}
    if n_mixed:
        source["mixed_float16_layers"] = n_mixed
    if fam.cumsum_output:
        source["cumsum_output"] = True
    inputs = {"frame": np.zeros(fam.shape, np.float32)}
    state = None
    dt_input = None

    if fam.name in ("FacePhys", "ME-flow"):
        if fam.name == "FacePhys":
            state = jax.tree_util.tree_map(np.asarray, model.init_state(fam.shape))
        else:
            state, source["state_sha256"] = _shipped_state()
            source["state"] = STATE_FILE

        def fn(frame, dt, state):
            bvp, new_state = model.step(frame, state, dt=dt)
            return bvp, new_state
        inputs["dt"] = np.float32(1.0 / FPS)
        dt_input = "dt"
    elif fam.name == "ME-chunk":
        state, source["state_sha256"] = _shipped_state()
        source["state"] = STATE_FILE

        def fn(frame, state):
            return model.step_chunk(frame, state)
    elif fam.name == "PhysMamba":
        from keras import ops

        def fn(frame):  # open-rppg's load_PhysMamba_*: standardised frame differences, last one repeated
            x = frame[:, 1:] - frame[:, :-1]
            x = (x - ops.mean(x, axis=(2, 3), keepdims=True)) / (ops.std(x, axis=(2, 3), keepdims=True) + 1e-6)
            x = jnp.concatenate([x, x[:, -1:]], axis=1)
            return model(x)
    elif fam.cumsum_output:
        def fn(frame):  # open-rppg's load_TSCAN_* / load_EfficientPhys_*
            y = jnp.cumsum(model(frame)[0])
            y = (y - jnp.mean(y)) / (jnp.std(y) + 1e-6)
            return jnp.diff(jnp.concatenate([jnp.zeros((1,), y.dtype), y], axis=0))[None]
    else:
        def fn(frame):
            return model(frame)

    return ModelSpec(name=name.lower(), fn=fn, inputs=inputs, state=state, outputs=["bvp"], dt_input=dt_input,
                     fps=FPS, pulse_output="bvp", frame_input="frame", source=source,
                     param_names={id(v.value): v.path for v in model.variables})


__all__ = ["FAMILIES", "NAMES", "Family", "canonical", "family_of", "spec", "spec_name"]
