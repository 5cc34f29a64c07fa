"""ROUTER/DEALER exchanges on loopback sockets (tcp and ipc), timeouts, bad input, slot reuse."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq
import zmq.asyncio

from asyncrl.data import tree_equal
from asyncrl.runtime import (
    BatchSender,
    Header,
    MsgType,
    PeerUnreachable,
    ProtocolError,
    ShmReceiver,
    SocketOptions,
    VersionMismatch,
    bound_endpoint,
    connect_dealer,
    dealer,
    install_event_loop,
    recv,
    recv_from,
    router,
    send,
    send_to,
)
from asyncrl.runtime.protocol import PROTOCOL_VERSION

from ._peers import fill, make_batch


@pytest.fixture
def context():
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


def bind(context, transport, ipc_endpoint, **options):
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else ipc_endpoint
    sock = router(context, endpoint, SocketOptions(**options))
    return sock, bound_endpoint(sock)


def test_install_event_loop_prefers_uvloop():
    pytest.importorskip("uvloop")
    try:
        assert install_event_loop() == "uvloop"
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_router_dealer_exchange(transport, context, ipc_endpoint, arun):
    async def main():
        server, endpoint = bind(context, transport, ipc_endpoint)
        worker = await connect_dealer(context, endpoint, "worker-1", handshake_timeout=5)
        batch = fill(make_batch(), 4)
        await send(worker, Header(MsgType.SAMPLES, "run", "worker-1", 1, 2), batch)
        peer, header, got = await recv_from(server, timeout=5)
        assert peer == b"worker-1"
        assert (header.type, header.seq, header.policy_version) == (MsgType.SAMPLES, 1, 2)
        assert tree_equal(got, batch)
        # Zero copy on receive: the leaves are views of the received frames.
        assert not got.env.observation.flags.owndata
        params = fill(make_batch(), 9).env
        await send_to(server, peer, header.reply(MsgType.PARAMS, policy_version=3), params)
        reply, got = await recv(worker, timeout=5)
        assert reply.type == MsgType.PARAMS and reply.policy_version == 3
        assert tree_equal(got, params)

    arun(main())


def test_recv_timeouts(context, ipc_endpoint, arun):
    async def main():
        server, endpoint = bind(context, "tcp", ipc_endpoint, recv_timeout_s=0.1)
        with pytest.raises(TimeoutError):
            await recv_from(server)  # the socket's RCVTIMEO
        with pytest.raises(TimeoutError):
            await recv_from(server, timeout=0.05)  # per call
        worker = dealer(context, endpoint, "w")
        with pytest.raises(TimeoutError):
            await recv(worker, timeout=0.05)

    arun(main())


def test_send_to_an_unreachable_peer_or_server(context, ipc_endpoint, arun):
    async def main():
        server, endpoint = bind(context, "tcp", ipc_endpoint)
        with pytest.raises(PeerUnreachable):
            await send_to(server, b"nobody", Header(MsgType.STOP))
        # IMMEDIATE: nothing is queued for a server that is not there; the send times out.
        lonely = dealer(context, "tcp://127.0.0.1:1", "w", SocketOptions(send_timeout_s=0.1))
        with pytest.raises(TimeoutError):
            await send(lonely, Header(MsgType.HEARTBEAT))
        with pytest.raises(TimeoutError):
            await connect_dealer(context, "tcp://127.0.0.1:1", "w", handshake_timeout=0.2)

    arun(main())


def test_bad_messages_are_reported_and_the_socket_keeps_working(context, ipc_endpoint, arun):
    async def main():
        server, endpoint = bind(context, "tcp", ipc_endpoint, max_message_bytes=100_000)
        raw = context.socket(zmq.DEALER)  # a peer that sends whatever it likes
        raw.identity = b"rogue"
        raw.linger = 0
        raw.connect(endpoint)
        batch = fill(make_batch(), 1)
        good = encode_frames(Header(MsgType.SAMPLES), batch)
        wrong_version = Header(MsgType.REGISTER, version=PROTOCOL_VERSION + 1)
        cases = [
            ([b"\xde\xad\xbe\xef"], ProtocolError),
            (good[:-1], ProtocolError),  # truncated: a frame missing
            ([*good, b"x"], ProtocolError),
            ([good[0], *good[1:-1], bytes(memoryview(good[-1]))[:3]], ProtocolError),
            ([encode_frames(wrong_version)[0]], VersionMismatch),
            ([encode_frames(Header(MsgType.SAMPLES), np.zeros(60_000))[0]], ProtocolError),
        ]
        for frames, error in cases:
            await raw.send_multipart(frames)
            with pytest.raises(error) as info:
                await recv_from(server, timeout=5)
            assert info.value.peer == b"rogue"
        # A frame above MAXMSGSIZE never reaches us: libzmq drops that connection.
        await raw.send_multipart([b"x" * 200_000])
        with pytest.raises(TimeoutError):
            await recv_from(server, timeout=0.3)
        raw.close()
        # ... and a well-behaved worker is still served.
        worker = dealer(context, endpoint, "good")
        await send(worker, Header(MsgType.SAMPLES), batch)
        peer, header, got = await recv_from(server, timeout=5)
        assert peer == b"good" and tree_equal(got, batch)

    arun(main())


def encode_frames(header, tree=None):
    from asyncrl.runtime import encode

    return encode(header, tree)


def test_shm_message_needs_an_allowed_peer(context, ipc_endpoint, arun):
    async def main():
        server, endpoint = bind(context, "tcp", ipc_endpoint)
        worker = dealer(context, endpoint, "w")
        receiver = ShmReceiver()
        with BatchSender(worker, make_batch(), path="shm", slots=1) as sender:
            await sender.send_tree(Header(MsgType.SAMPLES), fill(make_batch(), 1))
            with pytest.raises(ProtocolError, match="without a ShmReceiver"):
                await recv_from(server, timeout=5)
            sender.reset()
            await sender.send_tree(Header(MsgType.SAMPLES), fill(make_batch(), 2))
            with pytest.raises(ProtocolError, match="not allowed"):
                await recv_from(server, timeout=5, shm=receiver)
            receiver.allow(b"w")
            sender.reset()  # a receiver that restarted: announced again
            await sender.send_tree(Header(MsgType.SAMPLES), fill(make_batch(), 3))
            _, header, got = await recv_from(server, timeout=5, shm=receiver)
            assert header.shm["name"].startswith("asyncrl_") and "schema" in header.shm
            assert tree_equal(got, fill(make_batch(), 3))
            receiver.close()
        # A name that was never announced (or no longer exists) is refused, not attached.
        await send(worker, Header(MsgType.SAMPLES, slot=0, shm={"name": "asyncrl_gone"}))
        receiver.allow(b"w")
        with pytest.raises(ProtocolError, match="unknown shared-memory segment"):
            await recv_from(server, timeout=5, shm=receiver)
        missing = {"name": "asyncrl_gone", "schema": {"dtype": "|u1", "shape": [4]},
                   "leading_dims": []}  # fmt: skip
        await send(worker, Header(MsgType.SAMPLES, slot=0, shm=missing))
        with pytest.raises(ProtocolError, match="cannot attach"):
            await recv_from(server, timeout=5, shm=receiver)
        receiver.close()

    arun(main())


def test_frames_slots_are_not_reused_while_in_flight(context, ipc_endpoint, arun):
    """Zero-copy frames: a slot is rewritten only after ZeroMQ let go of it, so no batch is torn."""

    async def main():
        server, endpoint = bind(context, "tcp", ipc_endpoint, recv_hwm=2)
        worker = await connect_dealer(context, endpoint, "w", SocketOptions(send_hwm=2))
        big = np.zeros((16, 64, 256), np.uint8)  # 256 KB: sent zero-copy (above copy_threshold)

        async def produce():
            with BatchSender(worker, big, path="frames", slots=2) as sender:
                for seq in range(40):
                    slot, tree = await sender.acquire(timeout=5)
                    tree[...] = seq % 256
                    await sender.send(Header(MsgType.SAMPLES, seq=seq), slot, timeout=5)
                while sender.in_flight:
                    await asyncio.sleep(0.001)

        producer = asyncio.ensure_future(produce())
        for seq in range(40):
            await asyncio.sleep(0.002)  # a slow consumer: messages back up in the pipes
            _, header, got = await recv_from(server, timeout=5)
            assert header.seq == seq
            assert got.min() == got.max() == seq % 256
        await producer

    arun(main())


def test_batch_sender_validates(context):
    sock = context.socket(zmq.DEALER)
    with pytest.raises(ValueError):
        BatchSender(sock, make_batch(), path="carrier-pigeon")
    with pytest.raises(ValueError):
        BatchSender(sock, make_batch(), slots=0)
    sock.close(linger=0)
