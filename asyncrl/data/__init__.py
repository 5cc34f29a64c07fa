"""Data structures: namedarraytuple, buffers (shared memory too), wire encoding, sample schemas."""

from asyncrl.data.buffer import (
    SharedArrayTree,
    SharedHandle,
    attach_shared,
    buffer_from_example,
    buffer_from_schema,
    example_schema,
    release_shared,
    shared_handle,
)
from asyncrl.data.namedarraytuple import (
    is_namedarraytuple,
    namedarraytuple,
    to_numpy,
    to_torch,
    tree_equal,
    tree_leaves,
    tree_map,
)
from asyncrl.data.wire import WireError, flatten, unflatten

__all__ = [
    "SharedArrayTree",
    "SharedHandle",
    "WireError",
    "attach_shared",
    "buffer_from_example",
    "buffer_from_schema",
    "example_schema",
    "flatten",
    "is_namedarraytuple",
    "namedarraytuple",
    "release_shared",
    "shared_handle",
    "to_numpy",
    "to_torch",
    "tree_equal",
    "tree_leaves",
    "tree_map",
    "unflatten",
]
