"""namedarraytuple: a namedtuple whose leaves are arrays, indexed and written all at once.

Owns the tree data type and tree utilities (map, leaves, numpy<->torch views). It does not know
about shared memory (see ``buffer.py``) or the wire (see ``wire.py``).

A namedarraytuple is a namedtuple whose fields are numpy arrays, torch tensors, nested
namedarraytuples or ``None``. ``x[idx]`` applies ``idx`` to every leaf and returns the same type;
``x[idx] = value`` writes ``value`` (a structure of the same type, or a scalar/array broadcast to
every leaf) into every leaf in place; ``None`` leaves are skipped. Attribute and string access
read fields as a namedtuple does (``x.obs``, ``x["obs"]``). Classes are cached by (name, fields),
so instances (and the classes themselves) pickle by (name, fields) and two processes that build the
same type agree on it.

Writes convert between the two array kinds: a numpy value written into a torch leaf (or a torch
value into a numpy leaf) is converted first. A plain tuple written into a namedarraytuple is read
as one value per field; a nested namedarraytuple is never broadcast into an array leaf.
``==`` is identity (element-wise tuple comparison of arrays is ambiguous): use ``tree_equal``.
"""

from __future__ import annotations

import copyreg
import itertools
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


class _NamedArrayTupleMeta(type):
    """Metaclass only so that the classes, made at run time, pickle by (name, fields)."""


def _made_by_namedarraytuple(cls: type) -> bool:
    fields = getattr(cls, "_fields", None)
    return fields is not None and _CLASSES.get((cls.__name__, tuple(fields))) is cls


def _reduce_class(cls: type) -> Any:
    if _made_by_namedarraytuple(cls):
        return namedarraytuple, (cls.__name__, tuple(cls._fields))
    return cls.__qualname__  # the base, or a user's subclass in a module: pickle by reference


copyreg.pickle(_NamedArrayTupleMeta, _reduce_class)


def _is_nat(x: Any) -> bool:
    # Same answer as isinstance(x, NamedArrayTupleBase) (every such class has this metaclass),
    # several times cheaper: isinstance with a custom metaclass takes the slow path.
    return type(type(x)) is _NamedArrayTupleMeta


_ndarray = np.ndarray
_PLAIN_SCALARS = (int, float, bool)


def _write_leaf(dst: Any, loc: Any, value: Any) -> None:
    """``dst[loc] = value`` for an array leaf, converting numpy <-> torch values."""
    if type(dst) is _ndarray and (type(value) is _ndarray or type(value) in _PLAIN_SCALARS):
        dst[loc] = value  # the common case, kept cheap: this runs per field per env step
        return
    if _is_nat(value):
        raise TypeError(f"cannot write a {type(value).__name__} into an array leaf")
    if torch is not None:
        if isinstance(dst, torch.Tensor):
            if isinstance(value, (np.ndarray, np.generic)):
                value = np.require(value, requirements="C")
                if not value.flags.writeable:
                    value = value.copy()
                value = torch.from_numpy(value)
        elif isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    dst[loc] = value


def _field_error(e: Exception, name: str) -> Exception:
    """The same kind of error (one of the builtin bases), prefixed with the field being written."""
    for kind in (IndexError, KeyError, ValueError, TypeError, RuntimeError):
        if isinstance(e, kind):
            return kind(f"writing field {name!r}: {e}")
    return e


def _leaf_repr(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        return f"ndarray({x.dtype}, {list(x.shape)})"
    if torch is not None and isinstance(x, torch.Tensor):
        return f"Tensor({str(x.dtype).removeprefix('torch.')}, {list(x.shape)}, {x.device})"
    return repr(x)


class NamedArrayTupleBase(tuple, metaclass=_NamedArrayTupleMeta):
    """Mixin behaviour; concrete classes are made by :func:`namedarraytuple`."""

    __slots__ = ()
    _fields: tuple[str, ...]

    def __getitem__(self, loc):
        if isinstance(loc, str):
            if loc in self._fields:
                return getattr(self, loc)
            raise KeyError(f"{type(self).__name__} has no field {loc!r}; fields: {self._fields}")
        values = []
        for name, s in zip(self._fields, self):
            try:
                values.append(None if s is None else s[loc])
            except IndexError as e:
                raise IndexError(f"{type(self).__name__}[{loc!r}], field {name!r}: {e}") from e
        return type(self)(*values)

    def __setitem__(self, loc, value) -> None:
        if _is_nat(value):
            if value._fields != self._fields:
                raise ValueError(
                    f"cannot write {type(value).__name__}{value._fields} into "
                    f"{type(self).__name__}{self._fields}: fields differ"
                )
            values = value
        elif isinstance(value, tuple):  # a plain tuple: one value per field
            if len(value) != len(self):
                raise ValueError(
                    f"cannot write a plain tuple of {len(value)} values into "
                    f"{type(self).__name__}{self._fields}: give one value per field, a "
                    f"{type(self).__name__}, or a scalar/array to broadcast to every field"
                )
            values = value
        else:  # broadcast to every leaf
            values = itertools.repeat(value)
        for name, s, v in zip(self._fields, self, values):
            if s is None or v is None:
                continue
            try:
                if _is_nat(s):
                    s[loc] = v
                else:
                    _write_leaf(s, loc, v)
            except (IndexError, KeyError, ValueError, TypeError, RuntimeError) as e:
                raise _field_error(e, name) from e

    def __contains__(self, key) -> bool:
        return key in self._fields

    def get(self, name: str, default: Any = None) -> Any:
        """The field ``name``, or ``default`` when there is no such field (like ``dict.get``)."""
        return getattr(self, name) if name in self._fields else default

    def items(self) -> Iterator[tuple[str, Any]]:
        return zip(self._fields, self)

    def __reduce__(self):
        cls = type(self)
        if _made_by_namedarraytuple(cls):
            return _rebuild, (cls.__name__, self._fields, tuple(self))
        return cls._make, (tuple(self),)  # a user's subclass, importable by name

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={v!r}" if _is_nat(v) else f"{k}={_leaf_repr(v)}" for k, v in self.items()
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
    cls = _NamedArrayTupleMeta(typename, (NamedArrayTupleBase, base), {"__slots__": ()})
    cls.__module__ = __name__
    _CLASSES[key] = cls
    return cls


def is_namedarraytuple(x: Any) -> bool:
    return _is_nat(x)


def tree_map(fn: Callable[..., Any], *trees: Any) -> Any:
    """Apply ``fn`` to corresponding leaves of one or more trees with the same fields.

    Where the first tree has ``None`` the result has ``None``; the other trees' leaves are passed
    as they are (``None`` included).
    """
    first = trees[0]
    if is_namedarraytuple(first):
        for other in trees[1:]:
            if not is_namedarraytuple(other) or other._fields != first._fields:
                raise ValueError(
                    f"tree_map: {type(first).__name__}{first._fields} does not match "
                    f"{type(other).__name__}{getattr(other, '_fields', '')}"
                )
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


def to_torch(tree: Any, device: str | torch.device | None = None) -> Any:
    """Torch view of a numpy tree; shares memory when on CPU (no copy).

    With ``device`` the leaves are moved there (a copy unless already there). Copies to a GPU are
    non-blocking (overlap with compute when the source is pinned); copies to the CPU block, so
    the result is safe to read at once.
    """
    non_blocking = device is not None and torch.device(device).type != "cpu"

    def conv(x):
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        return t if device is None else t.to(device, non_blocking=non_blocking)

    return tree_map(conv, tree)


def to_numpy(tree: Any) -> Any:
    """Numpy view of a torch (CPU) tree; shares memory (no copy); GPU tensors are copied."""
    return tree_map(_as_numpy, tree)
