"""Shape helpers the rewrite rules share: NumPy broadcasting made explicit, and how a value that
broadcasts against one shape of a tensor broadcasts against another (a reshape of it)."""
from __future__ import annotations

import numpy as np


def aligned_shape(shape: tuple, rank: int) -> tuple:
    """A shape with NumPy broadcasting's leading unit dimensions made explicit."""
    return (1,) * (rank - len(shape)) + tuple(shape)


def aligned(c: np.ndarray, rank: int) -> np.ndarray:
    """A constant with NumPy broadcasting's leading unit dimensions made explicit."""
    return c.reshape(aligned_shape(c.shape, rank))


def unit_reshape(src, dst) -> bool:
    """A reshape that only inserts or removes unit dimensions."""
    return src != dst and [d for d in src if d != 1] == [d for d in dst if d != 1]


def axis_groups(a: tuple, b: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Consecutive axis groups of two shapes of one size whose products match ([1,64,4] vs [1,32,2,4]:
    [0]-[0], [1]-[1,2], [2]-[3]); None where the sizes differ."""
    if int(np.prod(a, dtype=np.int64)) != int(np.prod(b, dtype=np.int64)):
        return None
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ga, gb = [], []
        pa = pb = 1
        if i < len(a):
            ga.append(i)
            pa = a[i]
            i += 1
        if j < len(b):
            gb.append(j)
            pb = b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa *= a[i]
                ga.append(i)
                i += 1
            elif j < len(b):
                pb *= b[j]
                gb.append(j)
                j += 1
            else:
                return None
        groups.append((ga, gb))
    return groups


def regrouped(shape: tuple, a: tuple, b: tuple) -> tuple | None:
    """The shape that broadcasts against b as `shape` broadcasts against a (a and b one tensor's two
    shapes): every axis group is either whole or all ones in `shape`; None where one is cut."""
    groups = axis_groups(a, b)
    if groups is None or len(shape) > len(a):
        return None
    s = aligned_shape(shape, len(a))
    out = [1] * len(b)
    for ga, gb in groups:
        if all(s[k] == 1 for k in ga):
            continue
        if any(s[k] != a[k] for k in ga):
            return None
        for k in gb:
            out[k] = b[k]
    return tuple(out)


def relaid(c: np.ndarray, a: tuple, b: tuple) -> np.ndarray | None:
    """A constant broadcast against shape a, re-laid to broadcast the same way against b (a reshape of a
    tensor of shape a); None where the reshape cuts an axis group the constant varies along."""
    shape = regrouped(c.shape, a, b)
    return None if shape is None else aligned(c, len(a)).reshape(shape)
