"""Targets for the processes that the shared-buffer tests start (spawn needs importable functions)."""

from __future__ import annotations

import time

import numpy as np

from asyncrl.data import attach_shared, tree_equal


def write_through_handles(handle_object, handle_dict, example, ready) -> None:
    """Attach by a SharedHandle and by its to_dict(), write, check a pickled tree, detach, exit."""
    by_object = attach_shared(handle_object)
    by_dict = attach_shared(handle_dict)
    by_object.tree[1] = example  # one step into every field
    by_object.tree.env.reward[2] = 42.0
    by_dict.tree[:] = 3
    ok = tree_equal(by_object.tree[1, 0], example) and type(example).__name__ == "Sample"
    by_object.release()
    by_dict.release()
    ready.put(("ok" if ok else "mismatch", np.asarray(example.env.obs).tolist()))


def attach_and_hang(handle_dict, ready) -> None:
    """Attach, write, tell the parent, then wait to be killed."""
    shared = attach_shared(handle_dict)
    shared.tree[:] = 7
    ready.put("attached")
    time.sleep(60)
