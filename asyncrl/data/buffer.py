"""Buffers allocated once from an example, optionally in shared memory.

Owns allocation of array trees (``buffer_from_example``) and named shared-memory segments that
another process can attach to. Knows nothing about what the arrays mean.

Shared memory: one ``multiprocessing.shared_memory`` segment holds every leaf of the tree. The
owner unlinks it on ``release()``, on garbage collection, at interpreter exit, and (through
Python's resource tracker) even when the owner is killed. Attaching processes never register the
segment with their own tracker, so a child exiting never unlinks its parent's memory.
"""

from __future__ import annotations

import atexit
import secrets
import weakref
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from asyncrl.data.namedarraytuple import is_namedarraytuple, namedarraytuple

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

_ALIGN = 64
SHM_PREFIX = "asyncrl_"


def _leaf_example(x: Any) -> tuple[np.dtype, tuple[int, ...]]:
    if torch is not None and isinstance(x, torch.Tensor):
        return np.dtype(str(x.dtype).removeprefix("torch.").replace("bool", "bool_")), tuple(
            x.shape
        )
    a = np.asarray(x)
    return a.dtype, a.shape


def example_schema(example: Any) -> Any:
    """Plain-data description (msgpack-able) of the tree structure, dtypes and shapes."""
    if is_namedarraytuple(example):
        return {
            "type": type(example).__name__,
            "fields": list(example._fields),
            "children": [example_schema(c) for c in example],
        }
    if example is None:
        return None
    dtype, shape = _leaf_example(example)
    return {"dtype": dtype.str, "shape": list(shape)}


def _schema_nbytes(schema: Any, lead: tuple[int, ...]) -> list[tuple[np.dtype, tuple[int, ...]]]:
    if schema is None:
        return []
    if "fields" in schema:
        out = []
        for c in schema["children"]:
            out.extend(_schema_nbytes(c, lead))
        return out
    return [(np.dtype(schema["dtype"]), lead + tuple(schema["shape"]))]


def _build(schema: Any, lead: tuple[int, ...], next_array) -> Any:
    if schema is None:
        return None
    if "fields" in schema:
        cls = namedarraytuple(schema["type"], schema["fields"])
        return cls(*(_build(c, lead, next_array) for c in schema["children"]))
    return next_array(np.dtype(schema["dtype"]), lead + tuple(schema["shape"]))


def buffer_from_schema(schema: Any, leading_dims: tuple[int, ...] | int = ()) -> Any:
    lead = (leading_dims,) if isinstance(leading_dims, int) else tuple(leading_dims)
    return _build(schema, lead, lambda dt, shape: np.zeros(shape, dtype=dt))


def buffer_from_example(
    example: Any, leading_dims: tuple[int, ...] | int = (), shared: bool = False
) -> Any:
    """Allocate zeros shaped ``leading_dims + leaf.shape`` for every leaf of ``example``.

    Leaves of the example may be numpy arrays, numpy/python scalars or torch tensors; the buffer
    is numpy (wrap with ``to_torch`` for a zero-copy torch view). With ``shared=True`` the buffer
    lives in one named shared-memory segment: ``shared_handle(buf)`` gives the plain-data handle
    another process passes to ``attach_shared`` and ``release_shared(buf)`` frees it (it is freed
    at exit in any case).
    """
    schema = example_schema(example)
    if not shared:
        return buffer_from_schema(schema, leading_dims)
    owner = SharedArrayTree.allocate(schema, leading_dims)
    _OWNERS[id(owner.tree)] = owner
    return owner.tree


@dataclass(frozen=True)
class SharedHandle:
    """Plain data that lets another process attach to a shared buffer."""

    name: str
    schema: Any
    leading_dims: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "schema": self.schema, "leading_dims": list(self.leading_dims)}

    @classmethod
    def from_dict(cls, d: dict) -> SharedHandle:
        return cls(d["name"], d["schema"], tuple(d["leading_dims"]))


def _layout(schema: Any, lead: tuple[int, ...]) -> tuple[list[int], int]:
    offsets, pos = [], 0
    for dtype, shape in _schema_nbytes(schema, lead):
        offsets.append(pos)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        pos += (n + _ALIGN - 1) // _ALIGN * _ALIGN
    return offsets, max(pos, 1)


def _unlink(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        pass  # views still exported; the mapping goes away with the process
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


class SharedArrayTree:
    """A tree of numpy arrays in one shared-memory segment (owner or attached view)."""

    def __init__(self, shm, handle: SharedHandle, owner: bool):
        self.shm = shm
        self.handle = handle
        self.owner = owner
        offsets, _ = _layout(handle.schema, handle.leading_dims)
        it = iter(offsets)

        def make(dtype, shape):
            return np.ndarray(shape, dtype=dtype, buffer=shm.buf, offset=next(it))

        self.tree = _build(handle.schema, handle.leading_dims, make)
        if owner:
            self._finalizer = weakref.finalize(self, _unlink, shm)
        else:
            self._finalizer = weakref.finalize(self, _close_quietly, shm)

    @classmethod
    def allocate(cls, schema: Any, leading_dims: tuple[int, ...] | int = ()) -> SharedArrayTree:
        if not isinstance(schema, dict) and schema is not None:
            schema = example_schema(schema)
        lead = (leading_dims,) if isinstance(leading_dims, int) else tuple(leading_dims)
        _, size = _layout(schema, lead)
        name = SHM_PREFIX + secrets.token_hex(8)
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        return cls(shm, SharedHandle(shm.name, schema, lead), owner=True)

    @classmethod
    def attach(cls, handle: SharedHandle | dict) -> SharedArrayTree:
        if isinstance(handle, dict):
            handle = SharedHandle.from_dict(handle)
        # Do not let this process's resource tracker adopt (and later unlink) the segment.
        orig = resource_tracker.register
        resource_tracker.register = lambda *a, **k: None  # type: ignore[assignment]
        try:
            shm = shared_memory.SharedMemory(name=handle.name, create=False)
        finally:
            resource_tracker.register = orig  # type: ignore[assignment]
        return cls(shm, handle, owner=False)

    def release(self) -> None:
        self.tree = None
        self._finalizer()


def _close_quietly(shm) -> None:
    try:
        shm.close()
    except BufferError:
        pass


_OWNERS: dict[int, SharedArrayTree] = {}


def shared_handle(buf: Any) -> SharedHandle:
    """The handle of a buffer made by ``buffer_from_example(..., shared=True)``."""
    try:
        return _OWNERS[id(buf)].handle
    except KeyError:
        raise ValueError("not a shared buffer made by buffer_from_example(shared=True)") from None


def attach_shared(handle: SharedHandle | dict) -> SharedArrayTree:
    """Attach to a shared buffer from another process; use ``.tree``; ``.release()`` to detach."""
    return SharedArrayTree.attach(handle)


def release_shared(buf: Any) -> None:
    owner = _OWNERS.pop(id(buf), None)
    if owner is not None:
        owner.release()


@atexit.register
def _release_all() -> None:
    for key in list(_OWNERS):
        _OWNERS.pop(key).release()
