"""Read plain data out of a pickle without unpickling it: nothing in the file is ever imported or called.

`pickle.load` runs whatever a file asks for (any importable callable, with any arguments). This reader
walks the opcodes (`pickletools.genops`) as a small stack machine of its own and understands only:

- plain values and containers: None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset;
- NumPy arrays and scalars as NumPy pickles them (every protocol from 2): `numpy[._]core.multiarray.
  _reconstruct(ndarray, (0,), b'b')` + `__setstate__((1, shape, dtype, is_fortran, raw bytes))`,
  `numpy[._]core.numeric._frombuffer(bytes, dtype, shape, order)` (protocol 5), `numpy[._]core.multiarray.
  scalar(dtype, bytes)`, `numpy.dtype(str, align, copy)` + its `__setstate__`; protocol 2's bytes
  (`_codecs.encode(str, 'latin1')`, `builtins.bytes()`) and sets (`builtins.set(list)`, `frozenset(list)`);
- JAX arrays as JAX pickles them (`jax._src.array._reconstruct_array(<numpy reconstruct>, args, array
  state, aval state)`), read as NumPy arrays.

A global is only ever a name here: the allowed ones map to graphopt's own checks and builders (which
take the numbers and bytes, never an object from the file), and any other global - or opcode that would
build an object (NEWOBJ, INST, OBJ, PERSID, EXT*, out-of-band buffers), or a BUILD on anything but a
NumPy placeholder - is a ValueError naming it. Arrays must be numeric (bool, int, uint, float, complex)
and their raw bytes must be exactly shape x itemsize, so a declared size cannot make the reader allocate
more than the file holds.

    state = graphopt.safe_pickle.load("state.pkl")
"""
from __future__ import annotations

import io
import os
import pickletools
import reprlib
from typing import Any

import numpy as np

MAX_BYTES = 1 << 30  # files larger than this are refused before reading (pass max_bytes to change)
MAX_NDIM = 32
MAX_DEPTH = 100  # containers (and dict keys) nested deeper than this are refused
MAX_KEY_ITEMS = 10_000  # a dict key (a tuple) holding more items than this, nested tuples included, is refused

_NUMPY_CORE = ("numpy.core", "numpy._core")


class _Global:
    """A global the pickle names; allowed ones are tokens for this reader's handlers, never resolved."""
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    @property
    def kind(self) -> str | None:
        m, n = self.module, self.name
        if m in (f"{c}.multiarray" for c in _NUMPY_CORE) and n in ("_reconstruct", "scalar"):
            return n
        if m in (f"{c}.numeric" for c in _NUMPY_CORE) and n == "_frombuffer":
            return n
        if m == "numpy" and n in ("ndarray", "dtype"):
            return n
        if m == "jax._src.array" and n == "_reconstruct_array":
            return "jax_array"
        if m == "_codecs" and n == "encode":
            return "codecs_encode"
        if m in ("builtins", "__builtin__") and n in ("bytes", "set", "frozenset"):
            return n
        return None

    def __repr__(self):
        return f"{self.module}.{self.name}"


class _DType:
    """numpy.dtype(str, align, copy) awaiting its __setstate__ (byte order)."""
    __slots__ = ("code", "dtype")

    def __init__(self, code: str):
        self.code = code
        self.dtype = _numeric_dtype(code)


class _EmptyArray:
    """numpy.core.multiarray._reconstruct(ndarray, (0,), b'b') awaiting its __setstate__."""
    __slots__ = ("array",)

    def __init__(self):
        self.array = None


def _refuse(what: str) -> None:
    raise ValueError(f"safe_pickle: refusing {what}: only plain containers, numbers, strings, bytes and "
                     "NumPy/JAX numeric arrays are read (nothing in the pickle is imported or called)")


def _numeric_dtype(code) -> np.dtype:
    if not isinstance(code, str) or len(code) > 8 or not code.isascii() or not code.isalnum():
        _refuse(f"dtype {code!r:.40}")
    try:
        dt = np.dtype(code)
    except (TypeError, ValueError):
        _refuse(f"dtype {code!r:.40}")
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        _refuse(f"dtype {code!r} (kind {dt.kind!r}; only bool, int, uint, float and complex arrays)")
    return dt


def _dtype_of(obj) -> np.dtype:
    if not isinstance(obj, _DType):
        _refuse(f"{type(obj).__name__} where a numpy dtype belongs")
    return obj.dtype


def _dtype_setstate(d: _DType, state) -> None:
    # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=") and state[2] is None and state[3] is None and state[4] is None
            and (len(state) == 8 or state[8] is None or state[8] == {})):
        _refuse(f"numpy dtype state {_short(state)}")
    order = state[1]
    if order in ("<", ">") and d.dtype.itemsize > 1:
        d.dtype = d.dtype.newbyteorder(order)


def _shape_of(shape) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM or \
            not all(type(n) is int and 0 <= n < (1 << 62) for n in shape):
        _refuse(f"array shape {_short(shape)}")
    return shape


def _array_from_bytes(raw, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    if not isinstance(raw, (bytes, bytearray)):
        _refuse(f"array data of type {type(raw).__name__} (object arrays are not read)")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != len(raw):  # python ints: no overflow; checked before any array exists
        raise ValueError(f"safe_pickle: array of shape {shape} {dtype} needs {count * dtype.itemsize} bytes "
                         f"but the pickle holds {len(raw)}")
    order = "F" if fortran else "C"
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order=order).copy(order=order)


def _array_setstate(a: _EmptyArray, state) -> None:
    if a.array is not None:
        _refuse("a second __setstate__ on an array")
    if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
        state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4 and isinstance(state[2], bool)):
        _refuse(f"numpy array state {_short(state)}")
    shape, dtype, fortran, raw = state
    a.array = _array_from_bytes(raw, _dtype_of(dtype), _shape_of(shape), fortran)


def _reduce(fn, args):
    if not isinstance(fn, _Global):
        _refuse(f"calling a {type(fn).__name__} (REDUCE on something that is not an allowed global)")
    if not isinstance(args, tuple):
        _refuse(f"arguments of type {type(args).__name__} for {fn!r}")
    kind = fn.kind
    if kind == "dtype":
        if not (1 <= len(args) <= 3 and all(isinstance(x, bool) for x in args[1:])):
            _refuse(f"numpy.dtype{_short(args)}")
        return _DType(args[0])
    if kind == "_reconstruct":
        if not (len(args) == 3 and isinstance(args[0], _Global) and args[0].kind == "ndarray"
                and args[1] == (0,) and isinstance(args[2], (bytes, str))):
            _refuse(f"{fn!r}{_short(args)} (only ndarray subtype, shape (0,))")
        return _EmptyArray()
    if kind == "_frombuffer":
        if not (len(args) == 4 and args[3] in ("C", "F")):
            _refuse(f"{fn!r}{_short(args)}")
        raw, dtype, shape, order = args
        return _array_from_bytes(raw, _dtype_of(dtype), _shape_of(shape), order == "F")
    if kind == "scalar":
        if len(args) != 2:
            _refuse(f"{fn!r}{_short(args)}")
        dtype, raw = args
        dtype = _dtype_of(dtype)
        if isinstance(raw, str):  # protocol 0-2 numpy writes the bytes as a latin-1 str
            raw = raw.encode("latin1")
        return _array_from_bytes(raw, dtype, (), False)[()]
    if kind == "jax_array":
        if not (len(args) == 4 and isinstance(args[0], _Global) and args[0].kind == "_reconstruct"
                and isinstance(args[3], dict) and set(args[3]) <= {"weak_type"}):
            _refuse(f"{fn!r}{_short(args)}")
        placeholder = _reduce(args[0], args[1])
        _array_setstate(placeholder, args[2])
        return placeholder.array
    if kind == "codecs_encode":
        if not (len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1"):
            _refuse(f"_codecs.encode{_short(args)} (only (str, 'latin1'), as protocol 2 writes bytes)")
        return args[0].encode("latin1")
    if kind == "bytes":
        if args != ():
            _refuse(f"builtins.bytes{_short(args)}")
        return b""
    if kind in ("set", "frozenset"):  # protocols 0-3 write sets as set(list)
        if not (args == () or (len(args) == 1 and isinstance(args[0], list))):
            _refuse(f"builtins.{kind}{_short(args)}")
        items = [_hashable(i) for i in (args[0] if args else [])]
        return set(items) if kind == "set" else frozenset(items)
    _refuse(f"calling {fn!r}")


def _build(obj, state) -> None:
    if isinstance(obj, _DType):
        _dtype_setstate(obj, state)
    elif isinstance(obj, _EmptyArray):
        _array_setstate(obj, state)
    else:
        _refuse(f"BUILD (__setstate__) on a {type(obj).__name__}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _short(x) -> str:
    """A short description of a value in a refusal message (never the whole of a large or deep one)."""
    if isinstance(x, tuple):
        return "(" + ", ".join(_short(i) for i in x[:6]) + (", ..." if len(x) > 6 else "") + ")"
    if isinstance(x, (bytes, bytearray)):
        return f"<{len(x)} bytes>"
    if isinstance(x, (_DType, _EmptyArray)):
        return f"<{type(x).__name__}>"
    if isinstance(x, _Global):
        return repr(x)
    if isinstance(x, (list, dict, set, frozenset)):
        return f"<{type(x).__name__} of {len(x)}>"
    return _REPR.repr(x)


def _finish(root):
    """Replace the reader's placeholders by what they stand for; anything left unfinished is refused.
    Shared containers stay shared; a container that holds itself, or nesting deeper than MAX_DEPTH, is
    refused."""
    done: dict[int, Any] = {}
    active: set[int] = set()

    def fin(x, depth: int):
        if isinstance(x, _EmptyArray):
            if x.array is None:
                _refuse("a numpy array that never received its data")
            return x.array
        if isinstance(x, _DType):
            return x.dtype
        if isinstance(x, _Global):
            _refuse(f"global {x!r} as a value")
        if not isinstance(x, (list, tuple, dict, set, frozenset)):
            return x
        if id(x) in done:
            return done[id(x)]
        if id(x) in active:
            _refuse("a container that holds itself")
        if depth > MAX_DEPTH:
            _refuse(f"containers nested more than {MAX_DEPTH} deep")
        active.add(id(x))
        if isinstance(x, list):
            out = [fin(i, depth + 1) for i in x]
        elif isinstance(x, tuple):
            out = tuple(fin(i, depth + 1) for i in x)
        elif isinstance(x, dict):
            out = {fin(k, depth + 1): fin(v, depth + 1) for k, v in x.items()}
        else:
            out = type(x)(fin(i, depth + 1) for i in x)
        active.discard(id(x))
        done[id(x)] = out
        return out

    return fin(root, 0)


_MARK = object()
_VALUE_OPS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_LIST": list, "EMPTY_DICT": dict,
              "EMPTY_TUPLE": tuple, "EMPTY_SET": set}
_PLAIN_ARG_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                  "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                  "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}


def loads(data: bytes) -> Any:
    """The value a pickle holds, if it is plain data and numeric arrays; else a ValueError naming what was
    refused (a global, an opcode, a malformed or truncated stream). Nothing in the pickle runs."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("safe_pickle.loads takes bytes")
    stack: list = []
    memo: dict = {}
    result = _MARK

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise ValueError("safe_pickle: malformed pickle (no MARK on the stack)")

    def pop():
        if not stack or stack[-1] is _MARK:
            raise ValueError("safe_pickle: malformed pickle (stack underflow)")
        return stack.pop()

    def top():
        if not stack or stack[-1] is _MARK:
            raise ValueError("safe_pickle: malformed pickle (stack underflow)")
        return stack[-1]

    ops = pickletools.genops(io.BytesIO(bytes(data)))
    pos = 0
    try:
        for op, arg, pos in ops:
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1 or stack[0] is _MARK:
                    raise ValueError("safe_pickle: malformed pickle (STOP with "
                                     f"{len(stack)} items on the stack)")
                result = stack.pop()
                break
            if name in _VALUE_OPS:
                v = _VALUE_OPS[name]
                stack.append(v() if isinstance(v, type) else v)
            elif name in _PLAIN_ARG_OPS:
                stack.append(arg)  # INT's "01"/"00" are read as True/False
            elif name == "BYTEARRAY8":
                stack.append(bytes(arg))
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(top())
            elif name in ("MEMOIZE",):
                memo[len(memo)] = top()
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = top()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise ValueError(f"safe_pickle: malformed pickle (memo key {arg} unset)")
                stack.append(memo[arg])
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = [pop() for _ in range(n)][::-1]
                stack.append(tuple(items))
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "DICT":
                items = pop_mark()
                if len(items) % 2:
                    raise ValueError("safe_pickle: malformed pickle (odd DICT items)")
                stack.append(_dict_from(items))
            elif name == "FROZENSET":
                stack.append(frozenset(_hashable(i) for i in pop_mark()))
            elif name == "APPEND":
                v = pop()
                lst = top()
                if not isinstance(lst, list):
                    _refuse(f"APPEND to a {type(lst).__name__}")
                lst.append(v)
            elif name == "APPENDS":
                items = pop_mark()
                lst = top()
                if not isinstance(lst, list):
                    _refuse(f"APPENDS to a {type(lst).__name__}")
                lst.extend(items)
            elif name == "SETITEM":
                v = pop()
                k = pop()
                d = top()
                if not isinstance(d, dict):
                    _refuse(f"SETITEM on a {type(d).__name__}")
                d[_hashable(k)] = v
            elif name == "SETITEMS":
                items = pop_mark()
                d = top()
                if not isinstance(d, dict) or len(items) % 2:
                    _refuse(f"SETITEMS on a {type(d).__name__}")
                d.update(_dict_from(items))
            elif name == "ADDITEMS":
                items = pop_mark()
                s = top()
                if not isinstance(s, set):
                    _refuse(f"ADDITEMS on a {type(s).__name__}")
                s.update(_hashable(i) for i in items)
            elif name == "GLOBAL":
                module, _, gname = arg.partition(" ")
                stack.append(_global(module, gname))
            elif name == "STACK_GLOBAL":
                gname = pop()
                module = pop()
                if not (isinstance(module, str) and isinstance(gname, str)):
                    _refuse("STACK_GLOBAL with a module or name that is not a string")
                stack.append(_global(module, gname))
            elif name == "REDUCE":
                args = pop()
                fn = pop()
                stack.append(_reduce(fn, args))
            elif name == "BUILD":
                state = pop()
                _build(top(), state)
            else:  # NEWOBJ, NEWOBJ_EX, INST, OBJ, PERSID, BINPERSID, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER
                _refuse(f"opcode {name} (it builds or fetches an object this reader does not read)")
    except ValueError as e:
        if str(e).startswith("safe_pickle:"):
            raise
        raise ValueError(f"safe_pickle: malformed or truncated pickle near byte {pos}: {e}") from None
    if result is _MARK:
        raise ValueError("safe_pickle: truncated pickle (no STOP opcode)")
    return _finish(result)


def _global(module: str, name: str) -> _Global:
    g = _Global(module, name)
    if g.kind is None:
        _refuse(f"global {module}.{name}")
    return g


def _hashable(k):
    """k, if it may be a dict key or set item: a plain value, or tuples of them at most MAX_DEPTH deep and
    MAX_KEY_ITEMS items all told (hashing a tuple visits every item of every nested tuple, shared or not:
    a pickle can share one tuple many times over, and a deep one would recurse in C)."""
    if not isinstance(k, tuple):
        if isinstance(k, (_DType, _EmptyArray, _Global, list, dict, set, np.ndarray)):
            _refuse(f"a {type(k).__name__} as a dict key or set item")
    else:
        size: dict[int, tuple[int, int]] = {}  # id -> (height, items counted with repeats)
        stack = [(k, False)]
        while stack:
            x, children_done = stack.pop()
            if id(x) in size:
                continue
            if not children_done:
                if len(size) > MAX_KEY_ITEMS:
                    _refuse(f"a dict key of more than {MAX_KEY_ITEMS} items")
                stack.append((x, True))
                for i in x:
                    if isinstance(i, tuple):
                        stack.append((i, False))
                    else:
                        _hashable(i)
                continue
            subs = [size[id(i)] for i in x if isinstance(i, tuple)]
            height = 1 + max((h for h, _ in subs), default=0)
            count = len(x) + sum(n for _, n in subs)
            if height > MAX_DEPTH or count > MAX_KEY_ITEMS:
                _refuse(f"a dict key nested more than {MAX_DEPTH} deep or of more than {MAX_KEY_ITEMS} items")
            size[id(x)] = (height, count)
    try:
        hash(k)
    except TypeError:
        _refuse(f"an unhashable {type(k).__name__} as a dict key or set item")
    return k


def _dict_from(items: list) -> dict:
    return {_hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)}


def load(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> Any:
    """`loads` of a file (refused unread when larger than max_bytes)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"safe_pickle: {path} is {size} bytes, more than the {max_bytes} this reader takes")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"safe_pickle: {path} grew past {max_bytes} bytes while being read")
    return loads(data)


__all__ = ["MAX_BYTES", "load", "loads"]
