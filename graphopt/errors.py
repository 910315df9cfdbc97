"""graphopt's error types that every layer shares (the CLI maps them to exit statuses)."""
from __future__ import annotations


class ArtifactError(ValueError):
    """An artifact, manifest, state file or output folder that cannot be used; the message says what is
    wrong with it and what to do. The CLI exits with status 2."""
