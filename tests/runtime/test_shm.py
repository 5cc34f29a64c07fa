"""Batches between two real processes (spawn): shared-memory slots on one host, frames otherwise."""

from __future__ import annotations

import multiprocessing
import socket

import pytest
import zmq
import zmq.asyncio

from asyncrl.data import tree_equal
from asyncrl.runtime import (
    Header,
    LocalityProbe,
    MsgType,
    ShmReceiver,
    bound_endpoint,
    choose_path,
    is_same_host,
    recv_from,
    release_header,
    router,
    send_to,
)

from ._peers import batch_worker, fill, make_batch
from .conftest import shm_exists

BATCHES = 6
SLOTS = 2  # fewer slots than batches: every slot is reused


def serve(endpoint: str, prefer: str) -> tuple[str, set[str], list[int]]:
    """Register one spawned worker, receive its batches, check each, release shm slots."""

    async def main():
        ctx = zmq.asyncio.Context()
        server = router(ctx, endpoint)
        receiver = ShmReceiver()
        names: set[str] = set()
        seqs: list[int] = []
        worker = multiprocessing.get_context("spawn").Process(
            target=batch_worker, args=(bound_endpoint(server), BATCHES, SLOTS)
        )
        worker.start()
        try:
            peer, hello, _ = await recv_from(server, timeout=30)  # child start-up imports torch
            assert hello.type == MsgType.REGISTER and peer == b"worker-1"
            names.add(hello.meta["probe"]["name"])
            path = choose_path(hello.meta, prefer=prefer)
            if path == "shm":
                receiver.allow(peer)
            await send_to(server, peer, hello.reply(MsgType.REGISTERED, meta={"path": path}))
            while True:
                peer, header, batch = await recv_from(server, timeout=20, shm=receiver)
                if header.type == MsgType.BYE:
                    break
                assert header.type == MsgType.SAMPLES
                assert (header.slot is not None) == (path == "shm")
                assert tree_equal(batch, fill(make_batch(), header.seq)), header.seq
                seqs.append(header.seq)
                if header.slot is not None:
                    names.add(header.shm["name"])
                    await send_to(server, peer, release_header(header))
            receiver.forget(peer)
        finally:
            worker.join(20)
            if worker.is_alive():
                worker.kill()
                worker.join()
            receiver.close()
            server.close(linger=0)
            ctx.term()
        assert worker.exitcode == 0
        return path, names, seqs

    from asyncrl.runtime import run

    return run(main())


@pytest.mark.parametrize(
    "transport, prefer, expected_path",
    [("ipc", "auto", "shm"), ("tcp", "auto", "shm"), ("tcp", "frames", "frames")],
)
def test_batches_between_processes(transport, prefer, expected_path, ipc_endpoint):
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else ipc_endpoint
    path, names, seqs = serve(endpoint, prefer)
    assert path == expected_path
    assert seqs == list(range(BATCHES))
    if path == "shm":
        assert len(names) == 1 + SLOTS  # the probe and each slot, announced once
    # The worker unlinked its probe and slots; we detached: nothing is left in /dev/shm.
    assert names and not [n for n in names if shm_exists(n)]


def test_locality_probe():
    with LocalityProbe() as probe:
        info = probe.to_dict()
        assert is_same_host(info) and choose_path(info) == "shm"
        assert choose_path(info, prefer="frames") == "frames"
        assert not is_same_host({**info, "hostname": socket.gethostname() + "-elsewhere"})
        assert not is_same_host({**info, "boot_id": "another-boot"})
        assert not is_same_host({**info, "token": "00" * 16})  # another namespace's segment
        assert not is_same_host({**info, "probe": {"name": "/etc/passwd"}})
        name = info["probe"]["name"]
    assert not shm_exists(name)
    assert not is_same_host(info)  # segment gone: not provably local
    assert not is_same_host(None) and choose_path("garbage") == "frames"


def test_release_header_names_the_slot():
    h = Header(MsgType.SAMPLES, "r", "w", 3, slot=1, shm={"name": "asyncrl_ab", "schema": {}})
    rel = release_header(h)
    assert (rel.type, rel.slot, rel.shm, rel.worker_id) == (
        MsgType.RELEASE,
        1,
        {"name": "asyncrl_ab"},
        "w",
    )
    with pytest.raises(ValueError):
        release_header(Header(MsgType.SAMPLES))
