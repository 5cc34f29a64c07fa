"""Flatten array trees to (schema, buffers) and back, without copying contiguous leaves.

Owns the tree <-> frames mapping used by the runtime transport. The schema is plain data
(dicts, lists, strings, ints) so it can be msgpack-encoded; buffers are contiguous numpy arrays
(or anything exposing the buffer protocol on the way back: bytes, memoryview, zmq frames).

``unflatten`` treats its input as untrusted (it comes off a socket): anything that does not
match a well-formed schema raises ``WireError`` and nothing else. Leaves rebuilt from read-only
frames (``bytes``) are read-only; pass ``copy=True`` for writable arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from asyncrl.data.buffer import example_schema
from asyncrl.data.namedarraytuple import is_namedarraytuple, namedarraytuple

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


class WireError(ValueError):
    """The frames do not match the schema (wrong count, size or a malformed schema)."""


def flatten(tree: Any) -> tuple[Any, list[np.ndarray]]:
    """Return (schema, contiguous numpy leaves in depth-first order).

    Contiguous numpy leaves and torch CPU tensors are passed as views (no copy); non-contiguous
    leaves are copied once; GPU tensors are copied to the host. ``None`` leaves send no frame.
    Raises ``WireError`` for leaves that cannot travel as raw bytes (``object`` and structured
    dtypes).
    """
    buffers: list[np.ndarray] = []

    def walk(x):
        if is_namedarraytuple(x):
            for c in x:
                walk(c)
        elif x is not None:
            if torch is not None and isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            x = np.asarray(x)
            if x.dtype.hasobject or x.dtype.fields is not None:
                raise WireError(
                    f"cannot send a leaf of dtype {x.dtype} (shape {list(x.shape)}): object and "
                    "structured dtypes do not travel as raw bytes; use a namedarraytuple field each"
                )
            # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
            buffers.append(np.require(x, requirements="C"))

    walk(tree)
    return example_schema(tree), buffers


_MAX_DEPTH = 64


def _short(x: Any) -> str:
    """repr of untrusted input, cut so that a hostile schema cannot flood the log."""
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(d: Any) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool)


def unflatten(schema: Any, buffers: list[Any], copy: bool = False) -> Any:
    """Rebuild a tree from ``flatten``'s output; leaves are views of ``buffers`` unless ``copy``."""
    it = iter(buffers)

    def build(s, depth):
        if s is None:
            return None
        if depth > _MAX_DEPTH:
            raise WireError(f"malformed schema: nested deeper than {_MAX_DEPTH}")
        if not isinstance(s, dict):
            raise WireError(f"malformed schema node {type(s).__name__}")
        if "fields" in s:
            typename, fields, children = s.get("type", "Tree"), s.get("fields"), s.get("children")
            if not isinstance(fields, list) or not isinstance(children, list):
                raise WireError("malformed schema: fields/children must be lists")
            if len(fields) != len(children):
                raise WireError("malformed schema: fields and children differ in length")
            if not isinstance(typename, str) or not all(isinstance(f, str) for f in fields):
                raise WireError("malformed schema: type and field names must be strings")
            try:
                cls = namedarraytuple(typename, fields)
            except (ValueError, TypeError) as e:
                raise WireError(f"malformed schema: {_short(str(e))}") from None
            return cls(*(build(c, depth + 1) for c in children))
        dtype_str, shape = s.get("dtype"), s.get("shape")
        if not isinstance(dtype_str, str):
            raise WireError(
                f"malformed leaf schema: dtype must be a string, got {_short(dtype_str)}"
            )
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise WireError(
                f"malformed leaf schema: shape must be a list of ints, got {_short(shape)}"
            )
        try:
            dtype = np.dtype(dtype_str)
        except (TypeError, ValueError) as e:
            raise WireError(
                f"malformed leaf schema: dtype {_short(dtype_str)}: {_short(str(e))}"
            ) from None
        shape = tuple(int(d) for d in shape)
        bad_dtype = (
            dtype.hasobject
            or dtype.itemsize == 0
            or dtype.subdtype is not None
            or dtype.fields is not None
        )
        if bad_dtype or any(d < 0 for d in shape):
            raise WireError(f"refusing leaf dtype={dtype} shape={_short(list(shape))}")
        try:
            buf = next(it)
        except StopIteration:
            raise WireError("fewer frames than the schema names") from None
        try:
            mv = memoryview(buf)
        except TypeError:
            raise WireError(f"frame of type {type(buf).__name__} is not a buffer") from None
        if not mv.c_contiguous:
            raise WireError("frame is not C-contiguous")
        expected = math.prod(shape) * dtype.itemsize  # python ints: no overflow
        if mv.nbytes != expected:
            raise WireError(f"frame of {mv.nbytes} bytes, schema expects {expected}")
        try:
            arr = np.frombuffer(mv, dtype).reshape(shape)
        except (TypeError, ValueError):
            raise WireError(
                f"frame does not fit dtype={dtype} shape={_short(list(shape))}"
            ) from None
        return arr.copy() if copy else arr

    tree = build(schema, 0)
    for _extra in it:
        raise WireError("more frames than the schema names")
    return tree
