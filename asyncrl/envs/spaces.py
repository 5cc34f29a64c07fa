"""Gymnasium spaces as array examples: Box/Discrete/MultiDiscrete/MultiBinary leaves, Dict/Tuple
as namedarraytuples. Owns only the space <-> tree mapping."""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

from asyncrl.data import namedarraytuple


class SpaceError(ValueError):
    pass


def _field(name: str) -> str:
    f = re.sub(r"\W", "_", str(name))
    if not f or f[0].isdigit() or f.startswith("_"):
        f = "f_" + f.lstrip("_")
    return f


def space_example(space: gym.Space) -> Any:
    """A zero-valued example of one element of ``space`` (a tree for Dict/Tuple spaces)."""
    if isinstance(space, gym.spaces.Dict):
        names = [_field(k) for k in space.spaces]
        cls = namedarraytuple("DictObs_" + "_".join(names), names)
        return cls(*(space_example(s) for s in space.spaces.values()))
    if isinstance(space, gym.spaces.Tuple):
        names = [f"f{i}" for i in range(len(space.spaces))]
        cls = namedarraytuple(f"TupleObs{len(names)}", names)
        return cls(*(space_example(s) for s in space.spaces))
    if isinstance(space, gym.spaces.Discrete):
        return np.zeros((), np.int64)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return np.zeros(space.shape, np.int64)
    if isinstance(space, gym.spaces.MultiBinary):
        return np.zeros(space.shape, np.int8)
    if isinstance(space, gym.spaces.Box):
        dtype = np.uint8 if space.dtype == np.uint8 else np.float32
        return np.zeros(space.shape, dtype)
    raise SpaceError(
        f"unsupported space {space!r}; supported: Box, Discrete, MultiDiscrete, "
        "MultiBinary, Dict, Tuple"
    )


def space_to_tree(space: gym.Space, value: Any) -> Any:
    """Convert one gymnasium value (dict/tuple/array) into the tree shape of space_example."""
    if isinstance(space, gym.spaces.Dict):
        ex = space_example(space)
        return type(ex)(*(space_to_tree(s, value[k]) for k, s in space.spaces.items()))
    if isinstance(space, gym.spaces.Tuple):
        ex = space_example(space)
        return type(ex)(*(space_to_tree(s, v) for s, v in zip(space.spaces, value)))
    return value


def tree_to_space(space: gym.Space, tree: Any) -> Any:
    """Inverse of space_to_tree for actions: tree -> what env.step expects."""
    if isinstance(space, gym.spaces.Dict):
        return {k: tree_to_space(s, t) for (k, s), t in zip(space.spaces.items(), tree)}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(tree_to_space(s, t) for s, t in zip(space.spaces, tree))
    if isinstance(space, gym.spaces.Discrete):
        return int(tree)
    return tree
