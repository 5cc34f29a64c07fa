"""namedarraytuple: a namedtuple whose leaves are arrays, indexed and written all at once.

Owns the tree data type and tree utilities (map, leaves, numpy<->torch views). It does not know
about shared memory (see ``buffer.py``) or the wire (see ``wire.py``).

A namedarraytuple is a namedtuple whose fields are numpy arrays, torch tensors, nested
namedarraytuples or ``None``. ``x[idx]`` applies ``idx`` to every leaf and returns the same type;
``x[idx] = value`` writes ``value`` (a structure of the same type, or a scalar/array broadcast to
every leaf) into every leaf in place; ``None`` leaves are skipped. Attribute and string access
read fields as a namedtuple does (``x.obs``, ``x["obs"]``). Classes are cached by (name, fields),
so instances pickle by value and two processes that build the same type agree on it.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

try:  # torch is a hard dependency of the library, but this module also works without it
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

_CLASSES: dict[tuple[str, tuple[str, ...]], type] = {}
_RESERVED = {"_fields", "_asdict", "_replace", "_make", "get", "items", "count", "index"}


def _rebuild(typename: str, fields: tuple[str, ...], values: tuple) -> Any:
    return namedarraytuple(typename, fields)(*values)


def _leaf_repr(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        return f"ndarray({x.dtype}, {list(x.shape)})"
    if torch is not None and isinstance(x, torch.Tensor):
        return f"Tensor({str(x.dtype).removeprefix('torch.')}, {list(x.shape)}, {x.device})"
    return repr(x)


class NamedArrayTupleBase(tuple):
    """Mixin behaviour; concrete classes are made by :func:`namedarraytuple`."""

    __slots__ = ()
    _fields: tuple[str, ...]

    def __getitem__(self, loc):
        if isinstance(loc, str):
            return getattr(self, loc)
        try:
            return type(self)(*(None if s is None else s[loc] for s in self))
        except IndexError as e:
            raise IndexError(f"{type(self).__name__}[{loc!r}]: {e}") from e

    def __setitem__(self, loc, value) -> None:
        if isinstance(value, tuple) and not isinstance(value, NamedArrayTupleBase):
            value = type(self)(*value) if len(value) == len(self) else value
        if isinstance(value, NamedArrayTupleBase):
            if value._fields != self._fields:
                raise ValueError(
                    f"cannot write {type(value).__name__}{value._fields} into "
                    f"{type(self).__name__}{self._fields}: fields differ"
                )
            for name, s, v in zip(self._fields, self, value):
                if s is None or v is None:
                    continue
                try:
                    s[loc] = v
                except (ValueError, TypeError, RuntimeError, IndexError) as e:
                    raise type(e)(f"writing field {name!r}: {e}") from e
        else:
            for s in self:
                if s is not None:
                    s[loc] = value

    def __contains__(self, key) -> bool:
        return key in self._fields

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def items(self) -> Iterator[tuple[str, Any]]:
        return zip(self._fields, self)

    def __reduce__(self):
        return _rebuild, (type(self).__name__, self._fields, tuple(self))

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={v!r}" if isinstance(v, NamedArrayTupleBase) else f"{k}={_leaf_repr(v)}"
            for k, v in self.items()
        )
        return f"{type(self).__name__}({inner})"

    # Tuple comparisons on arrays are ambiguous; compare trees with tree_equal instead.
    def __eq__(self, other):  # type: ignore[override]
        return self is other

    def __ne__(self, other):  # type: ignore[override]
        return self is not other

    __hash__ = object.__hash__


def namedarraytuple(typename: str, field_names: Iterable[str] | str) -> type:
    """Return (cached) a namedarraytuple class with ``field_names``."""
    if isinstance(field_names, str):
        field_names = field_names.replace(",", " ").split()
    fields = tuple(field_names)
    key = (typename, fields)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    bad = [f for f in fields if f in _RESERVED]
    if bad:
        raise ValueError(f"namedarraytuple {typename}: reserved field names {bad}")
    base = namedtuple(typename, fields)  # validates identifiers and duplicates
    cls = type(typename, (NamedArrayTupleBase, base), {"__slots__": ()})
    cls.__module__ = __name__
    _CLASSES[key] = cls
    return cls


def is_namedarraytuple(x: Any) -> bool:
    return isinstance(x, NamedArrayTupleBase)


def tree_map(fn: Callable[[Any], Any], *trees: Any) -> Any:
    """Apply ``fn`` to corresponding non-None leaves of one or more trees of the same type."""
    first = trees[0]
    if is_namedarraytuple(first):
        return type(first)(*(tree_map(fn, *children) for children in zip(*trees)))
    if first is None:
        return None
    return fn(*trees)


def tree_leaves(tree: Any) -> list[Any]:
    """Non-None leaves in depth-first field order."""
    if is_namedarraytuple(tree):
        out: list[Any] = []
        for child in tree:
            out.extend(tree_leaves(child))
        return out
    return [] if tree is None else [tree]


def tree_equal(a: Any, b: Any) -> bool:
    """Structural and value equality of two trees (numpy or torch leaves)."""
    if is_namedarraytuple(a) or is_namedarraytuple(b):
        if type(a) is not type(b):
            return False
        return all(tree_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(_as_numpy(a), _as_numpy(b)))


def _as_numpy(x: Any) -> np.ndarray:
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_torch(tree: Any, device: str | None = None) -> Any:
    """Torch view of a numpy tree; shares memory when on CPU (no copy)."""

    def conv(x):
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        return t if device is None else t.to(device, non_blocking=True)

    return tree_map(conv, tree)


def to_numpy(tree: Any) -> Any:
    """Numpy view of a torch (CPU) tree; shares memory (no copy); GPU tensors are copied."""
    return tree_map(_as_numpy, tree)
