"""Targets: one module per runtime (emit an artifact, load it as a Stream)."""
