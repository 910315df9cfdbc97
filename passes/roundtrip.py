"""Value-changing: narrowing cast round trips removed (x:f32 -> f16 -> f32 becomes x).

Mixed-precision models often leave a cast to float16 and straight back in front of a layer that
was later switched to float32. The round trip only rounds the activations to float16; dropping it
keeps them in float32. Exact round trips (through a wider type) are handled by `simplify`.
"""
from __future__ import annotations

from graphopt.ir import is_float

from .rewrite import P, Rule, X


def _narrowing_roundtrip(g, b):
    x, inner = b["x"], b["inner"]
    out = b["_node"].outputs[0]
    if out.type != x.type or not (is_float(x.dtype) and is_float(inner.dtype)):
        return None
    return x


RULES = [Rule("narrowing-cast-roundtrip", P("cast", P("cast", X("x"), name="inner")), _narrowing_roundtrip)]
