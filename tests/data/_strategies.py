"""Hypothesis strategies for array trees, shared by the data tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from asyncrl.data import namedarraytuple

# Dtypes that numpy and torch both hold (so to_torch views work on every generated leaf).
DTYPES = [
    np.dtype(t)
    for t in ("float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool")
]
FIELD_NAMES = ["obs", "reward", "done", "action", "info", "value", "state", "x"]

shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
leading_dims = st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple)


def random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An array (0-d too, never a numpy scalar) of values that fit ``dtype``, without NaN."""
    if dtype == np.bool_:
        values = rng.integers(0, 2, size=shape).astype(bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -100), min(info.max, 100), size=shape, dtype=dtype)
    else:
        values = (rng.standard_normal(size=shape) * 10).astype(dtype)
    return np.asarray(values)


@st.composite
def leaf_specs(draw):
    return draw(st.sampled_from(DTYPES)), draw(shapes)


@st.composite
def tree_specs(draw, max_depth: int = 3, allow_none: bool = True):
    """A nested spec: ``None``, a (dtype, shape) leaf, or (typename, fields, children)."""
    if max_depth == 0 or draw(st.integers(0, 2)) == 0:
        if allow_none and draw(st.integers(0, 5)) == 0:
            return None
        return draw(leaf_specs())
    fields = draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=4, unique=True))
    children = [draw(tree_specs(max_depth - 1, allow_none)) for _ in fields]
    return (f"Node{draw(st.integers(0, 2))}", tuple(fields), children)


def build_tree(spec, rng: np.random.Generator, lead: tuple[int, ...] = ()):
    """A namedarraytuple (or array/None) of random values following ``spec``."""
    if spec is None:
        return None
    if isinstance(spec[0], str):
        typename, fields, children = spec
        return namedarraytuple(typename, fields)(*(build_tree(c, rng, lead) for c in children))
    dtype, shape = spec
    return random_array(rng, dtype, lead + shape)


trees = st.builds(
    build_tree,
    tree_specs(),
    st.integers(0, 2**32 - 1).map(np.random.default_rng),
)
