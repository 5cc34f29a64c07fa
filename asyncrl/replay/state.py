"""Saving and loading replay buffers: flat ``{key: ndarray}`` state dicts and ``.npz`` files.

Owns only the (de)serialisation of array trees and scalars; the buffers decide what goes in.
No pickle anywhere: a saved buffer is plain arrays and one JSON string, loadable without code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from asyncrl.data import is_namedarraytuple


def tree_state(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    """Flatten a numpy tree to ``{"prefix/field/sub": leaf}`` (no copies)."""
    if is_namedarraytuple(tree):
        out: dict[str, np.ndarray] = {}
        for name, child in tree.items():
            out.update(tree_state(f"{prefix}/{name}", child))
        return out
    if tree is None:
        return {}
    return {prefix: tree}


def load_tree(prefix: str, tree: Any, state: dict[str, Any]) -> None:
    """Copy the leaves saved by :func:`tree_state` into the preallocated ``tree``, in place."""
    for key, leaf in tree_state(prefix, tree).items():
        if key not in state:
            raise KeyError(f"state dict has no {key!r}; was it saved from a buffer of this kind?")
        value = np.asarray(state[key])
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
            raise ValueError(
                f"state {key!r} is {value.dtype}{list(value.shape)}, this buffer holds "
                f"{leaf.dtype}{list(leaf.shape)}: build the buffer with the saved config"
            )
        leaf[...] = value


def json_array(obj: Any) -> np.ndarray:
    """A JSON document as a 0-d unicode array (npz stores it without pickle)."""
    return np.array(json.dumps(obj, sort_keys=True))


def from_json_array(arr: Any) -> Any:
    return json.loads(str(np.asarray(arr)[()]))


def save_npz(path: str | os.PathLike, state: dict[str, np.ndarray], compress: bool = False) -> None:
    """Write a state dict to ``path`` (``.npz``); ``compress`` trades time for disk."""
    (np.savez_compressed if compress else np.savez)(path, **state)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}
