"""Flatten array trees to (schema, buffers) and back, without copying contiguous leaves.

Owns the tree <-> frames mapping used by the runtime transport. The schema is plain data
(dicts, lists, strings, ints) so it can be msgpack-encoded; buffers are contiguous numpy arrays
(or anything exposing the buffer protocol on the way back: bytes, memoryview, zmq frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncrl.data.buffer import example_schema
from asyncrl.data.namedarraytuple import is_namedarraytuple, namedarraytuple

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


def flatten(tree: Any) -> tuple[Any, list[np.ndarray]]:
    """Return (schema, contiguous numpy leaves in depth-first order).

    Torch CPU tensors are viewed as numpy without a copy; non-contiguous leaves are copied once.
    """
    buffers: list[np.ndarray] = []

    def walk(x):
        if is_namedarraytuple(x):
            for c in x:
                walk(c)
        elif x is not None:
            if torch is not None and isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
            buffers.append(np.ascontiguousarray(x))

    walk(tree)
    return example_schema(tree), buffers


class WireError(ValueError):
    """The frames do not match the schema (wrong count, size or a malformed schema)."""


def unflatten(schema: Any, buffers: list[Any], copy: bool = False) -> Any:
    """Rebuild a tree from ``flatten``'s output; leaves are views of ``buffers`` unless ``copy``."""
    it = iter(buffers)

    def build(s):
        if s is None:
            return None
        if not isinstance(s, dict):
            raise WireError(f"malformed schema node {type(s).__name__}")
        if "fields" in s:
            fields, children = s.get("fields"), s.get("children")
            if not isinstance(fields, list) or not isinstance(children, list):
                raise WireError("malformed schema: fields/children must be lists")
            if len(fields) != len(children):
                raise WireError("malformed schema: fields and children differ in length")
            try:
                cls = namedarraytuple(str(s.get("type", "Tree")), [str(f) for f in fields])
            except (ValueError, TypeError) as e:
                raise WireError(f"malformed schema: {e}") from None
            return cls(*(build(c) for c in children))
        try:
            dtype = np.dtype(s["dtype"])
            shape = tuple(int(d) for d in s["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise WireError(f"malformed leaf schema: {e}") from None
        if dtype.hasobject or any(d < 0 for d in shape):
            raise WireError(f"refusing leaf dtype={dtype} shape={shape}")
        try:
            buf = next(it)
        except StopIteration:
            raise WireError("fewer frames than the schema names") from None
        mv = memoryview(buf)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if mv.nbytes != expected:
            raise WireError(f"frame of {mv.nbytes} bytes, schema expects {expected}")
        arr = np.frombuffer(mv, dtype=dtype).reshape(shape)
        return arr.copy() if copy else arr

    tree = build(schema)
    if next(it, None) is not None:
        raise WireError("more frames than the schema names")
    return tree
