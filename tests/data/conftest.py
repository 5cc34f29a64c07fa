"""Fixtures for the data tests: track the shared-memory segments a test creates."""

from __future__ import annotations

import os
import sys

import pytest

from asyncrl.data import SharedArrayTree

buffer_module = sys.modules["asyncrl.data.buffer"]


def shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name))


@pytest.fixture
def shm_names(monkeypatch):
    """Names of every segment the test allocates; after the test none may remain in /dev/shm.

    Only this test's own names are checked: other test processes may use /dev/shm meanwhile.
    """
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm (Linux)")
    names: list[str] = []
    original = SharedArrayTree.allocate.__func__

    def recording_allocate(cls, *args, **kwargs):
        tree = original(cls, *args, **kwargs)
        names.append(tree.handle.name)
        return tree

    monkeypatch.setattr(SharedArrayTree, "allocate", classmethod(recording_allocate))
    yield names
    left = [n for n in names if shm_exists(n)]
    leaked_owners = [
        o.handle.name for o in buffer_module._OWNERS.values() if o.handle.name in names
    ]
    for key, owner in list(buffer_module._OWNERS.items()):
        if owner.handle.name in names:
            buffer_module._OWNERS.pop(key).release()
    assert not left, f"segments left in /dev/shm after the test: {left}"
    assert not leaked_owners, f"buffers never released: {leaked_owners}"
