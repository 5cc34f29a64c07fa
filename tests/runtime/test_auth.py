"""CURVE: a worker with a known key connects and exchanges; an unknown key is refused and logged."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import zmq
import zmq.asyncio

from asyncrl.runtime import (
    AuthenticationFailed,
    ClientCurve,
    Header,
    MsgType,
    ServerCurve,
    SocketOptions,
    bound_endpoint,
    connect_dealer,
    dealer,
    generate_keypair,
    load_keypair,
    recv,
    recv_from,
    router,
    send,
    send_to,
    start_authenticator,
)

from ._peers import fill, make_batch


@pytest.fixture
def keys(tmp_path):
    """Server keys, an allowed worker key and an unknown worker key, as `asyncrl keygen` makes."""
    allowed = tmp_path / "allowed"
    server_public, server_secret = generate_keypair(tmp_path / "server", "server")
    good_public, good_secret = generate_keypair(tmp_path / "good", "worker")
    _, bad_secret = generate_keypair(tmp_path / "bad", "worker")
    allowed.mkdir()
    (allowed / "worker.key").write_bytes(good_public.read_bytes())
    return {
        "allowed": allowed,
        "server_public": server_public,
        "server_secret": server_secret,
        "good_secret": good_secret,
        "bad_secret": bad_secret,
    }


def test_generate_keypair(tmp_path):
    public, secret = generate_keypair(tmp_path / "k", "w")
    assert public.name == "w.key" and secret.name == "w.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    pub, sec = load_keypair(secret)
    assert len(pub) == len(sec) == 40
    with pytest.raises(ValueError, match="no secret key"):
        load_keypair(public)


def test_known_key_exchanges_unknown_key_is_refused_and_logged(keys, arun, caplog):
    caplog.set_level(logging.WARNING, logger="asyncrl.runtime.auth")

    async def main():
        ctx = zmq.asyncio.Context()
        authenticator = start_authenticator(ctx, keys["allowed"])
        try:
            server = router(
                ctx,
                "tcp://127.0.0.1:*",
                curve=ServerCurve(keys["server_secret"], authenticator),
            )
            endpoint = bound_endpoint(server)

            good = await connect_dealer(
                ctx,
                endpoint,
                "good",
                curve=ClientCurve(keys["good_secret"], keys["server_public"]),
                handshake_timeout=5,
            )
            batch = fill(make_batch(), 5)
            await send(good, Header(MsgType.SAMPLES, "run", "good", 1), batch)
            peer, header, got = await recv_from(server, timeout=5)
            assert (
                peer == b"good"
                and header.seq == 1
                and got.env.reward.sum() == batch.env.reward.sum()
            )
            await send_to(server, peer, header.reply(MsgType.STOP))
            assert (await recv(good, timeout=5))[0].type == MsgType.STOP

            bad_curve = ClientCurve(keys["bad_secret"], keys["server_public"])
            # A plain client with the unknown key: its message never arrives, it gets nothing.
            bad = dealer(ctx, endpoint, "bad", SocketOptions(send_timeout_s=0.5), curve=bad_curve)
            with pytest.raises(TimeoutError):
                await send(bad, Header(MsgType.REGISTER, "run", "bad"))
            with pytest.raises(TimeoutError):
                await recv(bad, timeout=0.3)
            with pytest.raises(TimeoutError):
                await recv_from(server, timeout=0.3)
            # connect_dealer turns the refusal into a clear error for the worker.
            with pytest.raises(AuthenticationFailed, match="refused this client's key"):
                await connect_dealer(ctx, endpoint, "bad2", curve=bad_curve, handshake_timeout=5)
            # A client without CURVE at all does not get through either.
            plain = dealer(ctx, endpoint, "plain", SocketOptions(send_timeout_s=0.3))
            with pytest.raises(TimeoutError):
                await send(plain, Header(MsgType.REGISTER))
            # The known worker is still served.
            await send(good, Header(MsgType.HEARTBEAT, "run", "good", 2))
            assert (await recv_from(server, timeout=5))[1].type == MsgType.HEARTBEAT
            return authenticator.refused
        finally:
            authenticator.stop()
            ctx.destroy(linger=0)

    refused = arun(main())
    bad_public = load_keypair(keys["bad_secret"])[0].decode()
    assert refused and all(key == bad_public for key, _ in refused)
    warnings = [r for r in caplog.records if "refused CURVE client key" in r.getMessage()]
    assert warnings and bad_public in warnings[0].getMessage()
    assert "127.0.0.1" in warnings[0].getMessage()
    assert len(warnings) == 1  # repeated retries of one key are not logged again at WARNING


def test_key_added_while_running_is_accepted(keys, tmp_path, arun):
    async def main():
        ctx = zmq.asyncio.Context()
        authenticator = start_authenticator(ctx, keys["allowed"])
        try:
            server = router(
                ctx, "tcp://127.0.0.1:*", curve=ServerCurve(keys["server_secret"], authenticator)
            )
            late_public, late_secret = generate_keypair(tmp_path / "late", "late")
            (keys["allowed"] / "late.key").write_bytes(late_public.read_bytes())
            late = await connect_dealer(
                ctx,
                bound_endpoint(server),
                "late",
                curve=ClientCurve(late_secret, keys["server_public"]),
                handshake_timeout=5,
            )
            await send(late, Header(MsgType.REGISTER))
            assert (await recv_from(server, timeout=5))[0] == b"late"
        finally:
            authenticator.stop()
            ctx.destroy(linger=0)

    arun(main())


def test_server_curve_requires_a_running_authenticator(keys):
    ctx = zmq.asyncio.Context()
    try:
        from asyncrl.runtime import KeyDirectoryAuthenticator

        never_started = KeyDirectoryAuthenticator(ctx, keys["allowed"])
        with pytest.raises(RuntimeError, match="start the authenticator"):
            router(
                ctx, "tcp://127.0.0.1:*", curve=ServerCurve(keys["server_secret"], never_started)
            )
        with pytest.raises(FileNotFoundError):
            KeyDirectoryAuthenticator(ctx, keys["allowed"] / "missing")
    finally:
        ctx.destroy(linger=0)
