"""The canonical graph IR."""
from .types import DTYPES, TensorType, canonical_dtype, is_float
from .graph import Graph, Node, StatePair, Value
from .interpreter import Interpreter, run_graph
from .ops import OPS, IRTypeError, OpDef, dot_weight_axis, get_op
from .printer import format_graph, format_node
from .verify import VerificationError, verify

__all__ = ["DTYPES", "Graph", "Node", "StatePair", "TensorType", "Value", "canonical_dtype", "is_float",
           "Interpreter", "run_graph", "OPS", "IRTypeError", "OpDef", "dot_weight_axis", "get_op", "format_graph",
           "format_node", "VerificationError", "verify"]
