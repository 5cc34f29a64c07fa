"""Targets for the processes the runtime tests start (spawn needs importable functions)."""

from __future__ import annotations

import asyncio

import numpy as np
import zmq
import zmq.asyncio

from asyncrl.data import namedarraytuple
from asyncrl.runtime import (
    BatchSender,
    Header,
    LocalityProbe,
    MsgType,
    SocketOptions,
    dealer,
    install_event_loop,
    recv,
    send,
)

Agent = namedarraytuple("Agent", ["action"])
Env = namedarraytuple("Env", ["observation", "reward", "terminated"])
Samples = namedarraytuple("Samples", ["agent", "env"])
T, B = 4, 2


def make_batch() -> Samples:
    return Samples(
        Agent(np.zeros((T, B), np.int64)),
        Env(
            np.zeros((T, B, 3, 8, 8), np.uint8),
            np.zeros((T, B), np.float32),
            np.zeros((T, B), bool),
        ),
    )


def fill(batch: Samples, seq: int) -> Samples:
    """Write the content of batch ``seq`` in place (both sides compute it independently)."""
    batch.agent.action[...] = np.arange(T * B).reshape(T, B) + seq
    batch.env.observation[...] = (np.arange(T * B * 3 * 64) * 7 + seq).reshape(T, B, 3, 8, 8) % 251
    batch.env.reward[...] = np.linspace(-1, 1, T * B).reshape(T, B) * seq
    batch.env.terminated[...] = (np.arange(T * B).reshape(T, B) + seq) % 3 == 0
    return batch


def batch_worker(endpoint: str, batches: int, slots: int) -> None:
    """Register with a locality probe, send ``batches`` batches on the path the server picks."""
    install_event_loop()
    asyncio.run(_batch_worker(endpoint, batches, slots))


async def _batch_worker(endpoint: str, batches: int, slots: int) -> None:
    ctx = zmq.asyncio.Context()
    sock = dealer(ctx, endpoint, "worker-1", SocketOptions(recv_timeout_s=20, linger_ms=2000))
    try:
        with LocalityProbe() as probe:
            await send(sock, Header(MsgType.REGISTER, "run", "worker-1", meta=probe.to_dict()))
            reply, _ = await recv(sock)
        assert reply.type == MsgType.REGISTERED, reply
        with BatchSender(sock, make_batch(), path=reply.meta["path"], slots=slots) as sender:
            for seq in range(batches):
                while sock.get(zmq.EVENTS) & zmq.POLLIN:
                    sender.on_release((await recv(sock))[0])
                if sender.path == "shm":
                    while sender.free_slots == 0:
                        sender.on_release((await recv(sock))[0])
                slot, tree = await sender.acquire(timeout=20)
                fill(tree, seq)
                await sender.send(Header(MsgType.SAMPLES, "run", "worker-1", seq), slot)
            if sender.path == "shm":
                while sender.in_flight:
                    sender.on_release((await recv(sock))[0])
            await send(sock, Header(MsgType.BYE, "run", "worker-1", batches))
    finally:
        sock.close()
        ctx.term()
