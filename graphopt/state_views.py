"""State views: how a stored state tensor maps back to the model's own state tensor.

A pass may store a recurrent state in another layout than the model holds it (the state-layout
pass stores a channels-last [1,1,H,W,C] normalisation state channels-first [1,C,H,W], next to the
convolutions that read it). The graph then records, per state, a *view*: the steps that turn the
stored tensor into the model's tensor. Streams report `state` in the model's layout through the
views, so verification and users see the authors' state; `native_state` is what the artifact
holds. In a manifest a view is a list of steps, each a dict:

    {"op": "transpose", "perm": [...]}    numpy.transpose
    {"op": "reshape", "shape": [...]}     numpy.reshape (row-major)

A tool that knows nothing of graphopt applies them in order to the stored tensor.
"""
from __future__ import annotations

import numpy as np

Step = tuple  # ("transpose", perm) | ("reshape", shape)


def apply(x: np.ndarray, view) -> np.ndarray:
    """The model's state tensor from the stored one (view: IR steps or manifest dicts)."""
    for step in view:
        op, arg = (step["op"], step.get("perm", step.get("shape"))) if isinstance(step, dict) else step
        if op == "transpose":
            x = np.transpose(x, arg)
        elif op == "reshape":
            x = np.reshape(x, arg)
        else:
            raise ValueError(f"unknown state view step {op!r} (known: transpose, reshape)")
    return x


def to_manifest(view) -> list[dict]:
    out = []
    for op, arg in view:
        key = "perm" if op == "transpose" else "shape"
        out.append({"op": op, key: [int(a) for a in arg]})
    return out


def model_shape(stored_shape, view) -> tuple[int, ...]:
    """The shape of the model's state tensor the view gives from a stored tensor of stored_shape."""
    return tuple(apply(np.empty(stored_shape, np.bool_), view).shape)


def unapply(x: np.ndarray, view, stored_shape) -> np.ndarray:
    """The stored tensor from the model's one (the inverse of apply; stored_shape: the stored tensor's)."""
    shapes = [tuple(stored_shape)]
    for step in view:  # the shape before each step
        shapes.append(tuple(apply(np.empty(shapes[-1], np.bool_), [step]).shape))
    for step, before in zip(reversed(list(view)), reversed(shapes[:-1])):
        op, arg = (step["op"], step.get("perm", step.get("shape"))) if isinstance(step, dict) else step
        x = np.transpose(x, np.argsort(arg)) if op == "transpose" else np.reshape(x, before)
    return x
