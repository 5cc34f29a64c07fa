"""Buffers allocated once from an example, optionally in shared memory.

Owns allocation of array trees (``buffer_from_example``) and named shared-memory segments that
another process can attach to. Knows nothing about what the arrays mean.

Shared memory: one ``multiprocessing.shared_memory`` segment holds every leaf of the tree. The
owner unlinks it on ``release()``, on garbage collection, at interpreter exit, and (through
Python's resource tracker) even when the owner is killed. Attaching processes never register the
segment with their own tracker, so a child exiting never unlinks its parent's memory; a forked
copy of the owner never unlinks it either (only the allocating pid does).

Releasing removes the segment's name at once; the mapping itself is closed only once no array
views it any more, so an array kept after ``release()`` stays valid memory (never a dangling
pointer) and the memory is returned when the last view is dropped.
"""

from __future__ import annotations

import atexit
import math
import os
import secrets
import threading
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


def _torch_dtype_to_numpy(dtype: Any) -> np.dtype:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        raise TypeError(
            f"torch dtype {dtype} has no numpy equivalent; cast the example leaf "
            "(e.g. bfloat16 -> float32) before allocating a buffer from it"
        ) from None


def _leaf_example(x: Any) -> tuple[np.dtype, tuple[int, ...]]:
    if torch is not None and isinstance(x, torch.Tensor):
        return _torch_dtype_to_numpy(x.dtype), tuple(x.shape)
    a = np.asarray(x)
    if a.dtype.fields is not None or a.dtype.subdtype is not None:
        # dtype.str of a record is a bare "|V<n>": its field names would be lost silently.
        raise TypeError(
            f"leaf of structured dtype {a.dtype} is not supported: make each record field a "
            "field of a namedarraytuple instead"
        )
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


def _leading(leading_dims: tuple[int, ...] | int) -> tuple[int, ...]:
    lead = (leading_dims,) if isinstance(leading_dims, (int, np.integer)) else tuple(leading_dims)
    for d in lead:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"leading_dims must be non-negative ints, got {leading_dims!r}")
    return tuple(int(d) for d in lead)


def _leaf_specs(schema: Any, lead: tuple[int, ...]) -> list[tuple[np.dtype, tuple[int, ...]]]:
    if schema is None:
        return []
    if "fields" in schema:
        out = []
        for c in schema["children"]:
            out.extend(_leaf_specs(c, lead))
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
    """Allocate zeros (in ordinary memory) for the tree described by ``example_schema``."""
    lead = _leading(leading_dims)
    return _build(schema, lead, lambda dt, shape: np.zeros(shape, dtype=dt))


def buffer_from_example(
    example: Any, leading_dims: tuple[int, ...] | int = (), shared: bool = False
) -> Any:
    """Allocate zeros shaped ``leading_dims + leaf.shape`` for every leaf of ``example``.

    Leaves of the example may be numpy arrays, numpy/python scalars or torch tensors; the buffer
    is numpy (wrap with ``to_torch`` for a zero-copy torch view) with the example's dtypes
    (python floats give float64, ints int64). With ``shared=True`` the buffer lives in one named
    shared-memory segment: ``shared_handle(buf)`` gives the plain-data handle another process
    passes to ``attach_shared`` and ``release_shared(buf)`` frees it (it is freed at exit in any
    case; until then this module keeps the buffer alive). Shared leaves must have fixed-size
    dtypes (no ``object``). A ``None`` example gives ``None``.
    """
    schema = example_schema(example)
    if not shared:
        return buffer_from_schema(schema, leading_dims)
    if schema is None:
        return None
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


def _layout(schema: Any, lead: tuple[int, ...]) -> tuple[list[tuple[int, int]], int]:
    """(offset, nbytes) of every leaf, 64-byte aligned, and the segment size."""
    spans, pos = [], 0
    for dtype, shape in _leaf_specs(schema, lead):
        if dtype.hasobject or dtype.itemsize == 0:
            raise TypeError(
                f"shared buffers hold fixed-size dtypes; a leaf has dtype {dtype} "
                f"(shape {list(shape)}): store it outside the shared buffer"
            )
        n = math.prod(shape) * dtype.itemsize
        spans.append((pos, n))
        pos += (n + _ALIGN - 1) // _ALIGN * _ALIGN
    return spans, max(pos, 1)


class _Segment(shared_memory.SharedMemory):
    """SharedMemory that stays quiet when garbage collected at exit with views still alive."""

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, BufferError):
            pass


# Segments released while arrays still view them; closed once those arrays are gone. Closing
# earlier is impossible (mmap refuses while views export it), and that refusal is what keeps
# a numpy array kept after release() from pointing into unmapped memory.
_PENDING_CLOSE: list[shared_memory.SharedMemory] = []
_PENDING_LOCK = threading.Lock()


def _close_unused() -> None:
    with _PENDING_LOCK:
        for shm in list(_PENDING_CLOSE):
            try:
                shm.close()
            except BufferError:
                continue
            _PENDING_CLOSE.remove(shm)


def _close_when_unused(shm: shared_memory.SharedMemory) -> None:
    with _PENDING_LOCK:
        _PENDING_CLOSE.append(shm)
    _close_unused()


def _release_segment(shm: shared_memory.SharedMemory, unlink_in_pid: int | None) -> None:
    if unlink_in_pid is not None and os.getpid() == unlink_in_pid:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
    _close_when_unused(shm)


class SharedArrayTree:
    """A tree of numpy arrays in one shared-memory segment (owner or attached view).

    ``.tree`` is the namedarraytuple (or array) of views; ``.handle`` the plain-data handle;
    ``.release()`` unlinks (owner) or detaches (attached). The owner is released when garbage
    collected too.
    """

    def __init__(self, shm, handle: SharedHandle, owner: bool):
        self.shm = shm
        self.handle = handle
        self.owner = owner
        # Registered first, so a failure below still releases the segment.
        self._finalizer = weakref.finalize(
            self, _release_segment, shm, os.getpid() if owner else None
        )
        spans, size = _layout(handle.schema, handle.leading_dims)
        if shm.size < size:
            self._finalizer()
            raise ValueError(
                f"shared segment {handle.name!r} has {shm.size} bytes, the handle's schema "
                f"needs {size}: the handle does not belong to this segment"
            )
        # np.frombuffer keeps the segment's buffer exported for as long as any view lives.
        flat = np.frombuffer(shm.buf, dtype=np.uint8)
        it = iter(spans)

        def make(dtype, shape):
            offset, nbytes = next(it)
            return flat[offset : offset + nbytes].view(dtype).reshape(shape)

        self.tree = _build(handle.schema, handle.leading_dims, make)

    @classmethod
    def allocate(cls, schema: Any, leading_dims: tuple[int, ...] | int = ()) -> SharedArrayTree:
        """Create a new segment for ``schema`` (or an example tree) with ``leading_dims``."""
        if not isinstance(schema, dict) and schema is not None:
            schema = example_schema(schema)
        lead = _leading(leading_dims)
        _, size = _layout(schema, lead)  # validates dtypes before creating anything
        _close_unused()
        name = SHM_PREFIX + secrets.token_hex(8)
        shm = _Segment(name=name, create=True, size=size)
        return cls(shm, SharedHandle(shm.name, schema, lead), owner=True)

    @classmethod
    def attach(cls, handle: SharedHandle | dict) -> SharedArrayTree:
        """Map an existing segment by handle; this process never unlinks it."""
        if isinstance(handle, dict):
            handle = SharedHandle.from_dict(handle)
        _leading(handle.leading_dims)  # a handle is plain data from another process: check it
        _close_unused()
        try:  # Python >= 3.13
            shm = _Segment(name=handle.name, create=False, track=False)
        except TypeError:
            # Do not let this process's resource tracker adopt (and later unlink) the segment.
            orig = resource_tracker.register
            resource_tracker.register = lambda *a, **k: None  # type: ignore[assignment]
            try:
                shm = _Segment(name=handle.name, create=False)
            finally:
                resource_tracker.register = orig  # type: ignore[assignment]
        return cls(shm, handle, owner=False)

    def release(self) -> None:
        """Unlink (owner) or detach (attached); idempotent."""
        self.tree = None
        self.shm = None
        self._finalizer()


_OWNERS: dict[int, SharedArrayTree] = {}


def shared_handle(buf: Any) -> SharedHandle:
    """The handle of a buffer made by ``buffer_from_example(..., shared=True)``."""
    if isinstance(buf, SharedArrayTree):
        return buf.handle
    try:
        return _OWNERS[id(buf)].handle
    except KeyError:
        raise ValueError(
            "not a shared buffer made by buffer_from_example(shared=True) "
            "(pass the buffer itself, not a slice, view or torch copy of it)"
        ) from None


def attach_shared(handle: SharedHandle | dict) -> SharedArrayTree:
    """Attach to a shared buffer from another process; use ``.tree``; ``.release()`` to detach."""
    return SharedArrayTree.attach(handle)


def release_shared(buf: Any) -> None:
    """Unlink a buffer made by ``buffer_from_example(shared=True)``; no-op if already released."""
    owner = _OWNERS.pop(id(buf), None)
    if owner is not None:
        owner.release()


@atexit.register
def _release_all() -> None:
    for key in list(_OWNERS):
        _OWNERS.pop(key).release()
    _close_unused()
