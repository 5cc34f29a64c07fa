"""Fixtures for the runtime tests: an asyncio runner with a deadline, ipc paths, shm checks, a
coordinator whose local slots are filled by hand, and raw ZeroMQ peers standing in for workers."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
import zmq

from asyncrl.data import namedarraytuple
from asyncrl.runtime import install_event_loop
from asyncrl.runtime.coordinator import Coordinator
from asyncrl.runtime.protocol import Header, MsgType, decode, encode

Info = namedarraytuple("Info", ["value", "log_prob"])


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


@pytest.fixture
def make_coordinator(monkeypatch):
    """A started coordinator whose local slots are filled by hand (no worker processes)."""
    monkeypatch.setattr(Coordinator, "_spawn_local", lambda self, slot: None)
    made = []

    def make(**kwargs):
        options = dict(
            mode="central",
            horizon=4,
            local_workers=2,
            envs_per_worker=2,
            worker_timeout_s=60.0,
            info_example=Info(np.zeros((), np.float32), np.zeros((), np.float32)),
        )
        options.update(kwargs)
        coord = Coordinator({"algo": "fake"}, **options)
        coord.start()
        made.append(coord)
        return coord

    yield make
    for coord in made:
        coord.stop()


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw_peer(ctx, endpoint: str, identity: str):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.identity = identity.encode()
    sock.connect(endpoint)
    return sock


def recv_reply(sock, timeout_s: float = 10.0, skip=(MsgType.HEARTBEAT,)):
    deadline = time.monotonic() + timeout_s
    while sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
        header, tree = decode(sock.recv_multipart(copy=False))
        if header.type not in skip:
            return header, tree
    raise AssertionError("no answer from the coordinator")


def register_local(ctx, coord, slot: int):
    sock = raw_peer(ctx, coord.local_endpoint, f"fake-{slot}")
    sock.send_multipart(
        encode(Header(MsgType.REGISTER, worker_id=f"fake-{slot}", meta={"slot": slot}))
    )
    header, _ = recv_reply(sock)
    assert header.type == MsgType.REGISTERED, header
    assert header.meta["env_offset"] == 2 * slot and header.meta["num_envs"] == 2
    assert header.meta["path"] == "frames"  # no locality probe, no shared memory
    return sock, header.run_id
