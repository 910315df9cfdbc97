"""Tensor types and dtypes of the IR (a module of their own: graph, ops and printer all use them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = ("bool", "int32", "int64", "float16", "float32", "float64")
SHORT_DTYPE = {"bool": "i1", "int32": "i32", "int64": "i64",
               "float16": "f16", "float32": "f32", "float64": "f64"}


def canonical_dtype(dtype: Any) -> str:
    """Map a NumPy/JAX dtype (or its name) to one of the IR's dtype names."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"dtype {name!r} is not supported by the graphopt IR (supported: {', '.join(DTYPES)})")
    return name


def is_float(dtype: str) -> bool:
    return dtype.startswith("float")


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise TypeError(f"unknown dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        return f"{SHORT_DTYPE[self.dtype]}[{','.join(map(str, self.shape))}]"
