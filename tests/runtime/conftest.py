"""Fixtures for the runtime tests: an asyncio runner with a deadline, ipc paths, shm checks."""

from __future__ import annotations

import asyncio
import os

import pytest

from asyncrl.runtime import install_event_loop


@pytest.fixture
def arun():
    """Run a coroutine on a fresh (uv)loop, failing the test if it takes over ``timeout`` s."""
    install_event_loop()

    def run(coro, timeout: float = 20.0):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    yield run
    asyncio.set_event_loop_policy(None)


@pytest.fixture
def ipc_endpoint(tmp_path):
    path = tmp_path / "sock"
    if len(str(path)) > 100:  # sun_path limit
        pytest.skip("tmp path too long for an ipc endpoint")
    return f"ipc://{path}"


def shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name))
