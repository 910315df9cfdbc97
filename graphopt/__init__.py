"""graphopt: export and optimisation toolchain for streaming rPPG models."""
from .artifact import load

__all__ = ["load"]
__version__ = "0.1.0"
