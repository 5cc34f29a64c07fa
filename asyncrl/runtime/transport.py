"""asyncio ZeroMQ transport: sockets with timeouts, protocol send/recv, shared-memory slot rings.

Owns sockets, their options, and how a batch travels (array frames, or a shared-memory slot and
a small header); it does not own message formats (``protocol.py``), keys (``auth.py``), or what
the coordinator and workers do with messages.

Pattern: ROUTER/DEALER, the "asynchronous client/server" of the ZeroMQ guide (ch. 3). The
coordinator binds one ROUTER; each worker connects one DEALER whose routing identity is its
worker id. Either side sends whenever it likes; the ROUTER addresses a worker by identity
(``send_to``/``recv_from``), a DEALER talks to its one server (``send``/``recv``). Liveness is the
application's heartbeat (the guide's "Paranoid Pirate", ch. 4, built by the coordinator) on top
of ZMTP heartbeats that drop dead TCP connections.

Timeouts (every socket has one story): ``SocketOptions`` sets LINGER (close waits at most this
long to flush), send/receive high-water marks (a slow peer back-pressures instead of eating
memory), SNDTIMEO (a send that cannot be queued raises ``TimeoutError``), RCVTIMEO (None: a
server loop waits for input forever and notices silent peers by heartbeat; a worker sets one),
MAXMSGSIZE (libzmq drops a peer that sends a larger frame) and ZMTP heartbeats. Every call also
takes ``timeout=`` seconds, which bounds that call further (the shorter of the two applies).

Shared memory (same-host peers): a ``BatchSender`` owns K slots, each one ``SharedArrayTree``;
the producer writes a batch into a free slot in place, the socket carries only the header with
the slot index and the segment name (plus the full handle the first time), the receiver's
``ShmReceiver`` attaches once per segment and returns a view, and the receiver answers RELEASE
when it is done so the slot can be reused. Between hosts the same ``BatchSender`` sends the
slot's arrays as frames, zero-copy, and reuses a slot once ZeroMQ has let go of its memory.
``choose_path`` picks per worker: same host iff the peer's hostname and boot id match ours and
we can read the random token the peer wrote into a shared-memory probe (so two containers on
one kernel without a shared /dev/shm correctly fall back to frames).

Zero copy has one rule: an array passed to ``send``/``send_to`` must not be written until
ZeroMQ has sent it (``track=True`` returns a ``zmq.MessageTracker``); ``BatchSender`` does this
bookkeeping for you. Received arrays are views of the received frames (no copy).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket as pysocket
import warnings
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import zmq
import zmq.asyncio

from asyncrl.data import (
    SharedArrayTree,
    SharedHandle,
    buffer_from_schema,
    example_schema,
    flatten,
)
from asyncrl.data.namedarraytuple import tree_leaves
from asyncrl.runtime.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Header,
    MsgType,
    ProtocolError,
    decode,
    encode,
    pack_header,
    pack_schema,
)

log = logging.getLogger(__name__)

Path = Literal["shm", "frames"]


# ---------------------------------------------------------------------------------------------
# Event loop


def install_event_loop() -> str:
    """Use uvloop for new event loops when it is installed; returns "uvloop" or "asyncio"."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    with warnings.catch_warnings():  # the policy API is deprecated on Python >= 3.14
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def run(main: Coroutine) -> Any:
    """``asyncio.run(main)`` on uvloop when it is installed."""
    install_event_loop()
    return asyncio.run(main)


# ---------------------------------------------------------------------------------------------
# Sockets


@dataclass(frozen=True)
class SocketOptions:
    """The timeout and memory story of one socket (see the module docstring)."""

    linger_ms: int = 500  # close() waits at most this long to flush queued messages
    send_hwm: int = 64  # messages queued per peer before a send waits (then SNDTIMEO)
    recv_hwm: int = 64  # messages queued per peer before the peer is back-pressured
    send_timeout_s: float | None = 10.0  # a send that cannot be queued raises TimeoutError
    recv_timeout_s: float | None = None  # None: wait forever (servers; liveness by heartbeat)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # larger messages are refused
    zmtp_heartbeat_ms: int = 2000  # ZMTP ping interval: dead TCP peers are dropped ...
    zmtp_heartbeat_timeout_ms: int = 10000  # ... after this long without traffic
    reconnect_ms: int = 100  # DEALER reconnect interval, backing off ...
    reconnect_max_ms: int = 5000  # ... up to this (a refused CURVE key retries slowly)


def _ms(seconds: float | None) -> int:
    return -1 if seconds is None else max(0, int(seconds * 1000))


def _configure(sock: zmq.Socket, options: SocketOptions) -> None:
    sock.linger = options.linger_ms
    sock.sndhwm = options.send_hwm
    sock.rcvhwm = options.recv_hwm
    sock.sndtimeo = _ms(options.send_timeout_s)
    sock.rcvtimeo = _ms(options.recv_timeout_s)
    sock.maxmsgsize = options.max_message_bytes
    sock.heartbeat_ivl = options.zmtp_heartbeat_ms
    sock.heartbeat_timeout = options.zmtp_heartbeat_timeout_ms
    sock.heartbeat_ttl = options.zmtp_heartbeat_timeout_ms
    sock.reconnect_ivl = options.reconnect_ms
    sock.reconnect_ivl_max = options.reconnect_max_ms


def router(
    context: zmq.asyncio.Context,
    bind: str | Sequence[str],
    options: SocketOptions = SocketOptions(),
    *,
    curve: Any = None,
) -> zmq.asyncio.Socket:
    """The coordinator's ROUTER, bound to ``bind`` (e.g. "tcp://127.0.0.1:*" for a free port).

    ROUTER_MANDATORY makes a send to a departed worker raise ``PeerUnreachable`` instead of
    vanishing; ROUTER_HANDOVER lets a restarted worker with the same id take over its route.
    ``curve`` is an ``auth.ServerCurve`` for remote workers.
    """
    sock = context.socket(zmq.ROUTER)
    try:
        _configure(sock, options)
        sock.router_mandatory = 1
        sock.router_handover = 1
        if curve is not None:
            curve.apply(sock)
        for endpoint in [bind] if isinstance(bind, str) else bind:
            sock.bind(endpoint)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


def _dealer_socket(
    context: zmq.asyncio.Context,
    identity: str | bytes,
    options: SocketOptions,
    curve: Any,
) -> zmq.asyncio.Socket:
    sock = context.socket(zmq.DEALER)
    try:
        _configure(sock, options)
        sock.identity = identity.encode() if isinstance(identity, str) else identity
        sock.immediate = 1
        if curve is not None:
            curve.apply(sock)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


def dealer(
    context: zmq.asyncio.Context,
    connect: str,
    identity: str | bytes,
    options: SocketOptions = SocketOptions(),
    *,
    curve: Any = None,
) -> zmq.asyncio.Socket:
    """A worker's DEALER connected to ``connect`` with routing identity ``identity``.

    IMMEDIATE: messages are queued only on a finished connection, so a send while the server is
    unreachable (or refuses our key) waits and then raises ``TimeoutError`` instead of piling up.
    ``curve`` is an ``auth.ClientCurve``. Connecting is asynchronous: use ``connect_dealer`` to
    wait for the handshake and learn about a refused key.
    """
    sock = _dealer_socket(context, identity, options, curve)
    try:
        sock.connect(connect)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


async def connect_dealer(
    context: zmq.asyncio.Context,
    connect: str,
    identity: str | bytes,
    options: SocketOptions = SocketOptions(),
    *,
    curve: Any = None,
    handshake_timeout: float = 10.0,
) -> zmq.asyncio.Socket:
    """``dealer`` that waits until the connection is established (handshake done).

    Raises ``auth.AuthenticationFailed`` when the server refuses our CURVE key and
    ``TimeoutError`` when the server does not answer within ``handshake_timeout`` seconds.
    """
    from asyncrl.runtime.auth import HandshakeWatch

    sock = _dealer_socket(context, identity, options, curve)
    try:
        watch = HandshakeWatch(sock)
        sock.connect(connect)
        await watch.wait(handshake_timeout)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def bound_endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket last bound, with the real port ("tcp://127.0.0.1:41234")."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


# ---------------------------------------------------------------------------------------------
# Send / receive protocol messages


class PeerUnreachable(ConnectionError):
    """A ROUTER send named a peer that is not connected (left, died, never came)."""

    def __init__(self, peer: bytes):
        super().__init__(f"peer {peer!r} is not connected")
        self.peer = peer


def _expire(future: asyncio.Future) -> None:
    # pyzmq's own SNDTIMEO/RCVTIMEO do the same: a done future is skipped by its event handler,
    # so the send is never performed / no message is consumed for it.
    if not future.done():
        future.set_exception(zmq.Again())


async def _await(future: Any, timeout: float | None, what: str, peer: bytes | None) -> Any:
    """Await a pyzmq future at most ``timeout`` s (the socket's SNDTIMEO/RCVTIMEO apply too).

    Cheaper than ``asyncio.wait_for`` (no task, no extra future) on the per-message path.
    """
    handle = None
    try:
        if timeout is not None and not future.done():
            handle = asyncio.get_running_loop().call_later(timeout, _expire, future)
        return await future
    except zmq.Again:
        raise TimeoutError(f"{what} timed out" + (f" (peer {peer!r})" if peer else "")) from None
    except zmq.ZMQError as e:
        if e.errno == zmq.EHOSTUNREACH and peer is not None:
            raise PeerUnreachable(peer) from None
        raise
    finally:
        if handle is not None:
            handle.cancel()


def _track(frames: list[Any], sock: zmq.Socket) -> tuple[list[Any], zmq.MessageTracker | None]:
    """Wrap the frames ZeroMQ will send zero-copy in tracked ``zmq.Frame``s.

    Frames below the socket's copy threshold are copied by pyzmq at send time and need no
    tracking. The tracker is done once libzmq has released every zero-copy frame.
    """
    threshold = sock.copy_threshold
    trackers = []
    out = []
    for f in frames:
        if not isinstance(f, bytes) and memoryview(f).nbytes >= threshold:
            f = zmq.Frame(f, copy=False, track=True)
            trackers.append(f.tracker)
        out.append(f)
    return out, (zmq.MessageTracker(*trackers) if trackers else None)


async def send(
    sock: zmq.asyncio.Socket,
    header: Header,
    tree: Any = None,
    *,
    track: bool = False,
    timeout: float | None = None,
) -> zmq.MessageTracker | None:
    """Send one message on a DEALER (or any socket without routing frames), zero-copy.

    With ``track=True`` returns a tracker (None when every frame was small enough to be
    copied): do not write the tree's arrays until ``tracker.done``.
    """
    frames = encode(header, tree)
    tracker = None
    if track:
        frames, tracker = _track(frames, sock)
    await _await(sock.send_multipart(frames, copy=False), timeout, "send", None)
    return tracker


async def send_to(
    sock: zmq.asyncio.Socket,
    peer: bytes,
    header: Header,
    tree: Any = None,
    *,
    track: bool = False,
    timeout: float | None = None,
) -> zmq.MessageTracker | None:
    """Send one message from a ROUTER to ``peer``; raises ``PeerUnreachable`` if it is gone."""
    frames = [peer, *encode(header, tree)]
    tracker = None
    if track:
        frames, tracker = _track(frames, sock)
    await _await(sock.send_multipart(frames, copy=False), timeout, "send", peer)
    return tracker


def _max_bytes(sock: zmq.Socket) -> int:
    limit = sock.getsockopt(zmq.MAXMSGSIZE)
    return DEFAULT_MAX_MESSAGE_BYTES if limit < 0 else limit


def _decode(
    frames: list[Any], sock: zmq.Socket, shm: ShmReceiver | None, peer: bytes
) -> tuple[Header, Any]:
    header, tree = decode(frames, _max_bytes(sock))
    if header.slot is not None and header.type != MsgType.RELEASE:
        if shm is None:
            raise ProtocolError("shared-memory message on a socket without a ShmReceiver")
        tree = shm.resolve(peer, header)
    return header, tree


async def recv(
    sock: zmq.asyncio.Socket, *, timeout: float | None = None, shm: ShmReceiver | None = None
) -> tuple[Header, Any]:
    """Receive one message on a DEALER: (header, tree of views of the frames, or None).

    Raises ``ProtocolError`` for a malformed message (the message is consumed; keep receiving)
    and ``TimeoutError`` when nothing arrives in time. Shared-memory messages need ``shm``.
    """
    frames = await _await(sock.recv_multipart(copy=False), timeout, "recv", None)
    return _decode(frames, sock, shm, b"")


async def recv_from(
    sock: zmq.asyncio.Socket, *, timeout: float | None = None, shm: ShmReceiver | None = None
) -> tuple[bytes, Header, Any]:
    """Receive one message on a ROUTER: (peer identity, header, tree or None).

    A malformed message raises ``ProtocolError`` with ``.peer`` set, so the caller can log and
    answer ERROR/REFUSED (``VersionMismatch`` for another protocol version) and go on.
    """
    frames = await _await(sock.recv_multipart(copy=False), timeout, "recv", None)
    peer = frames[0].bytes
    try:
        header, tree = _decode(frames[1:], sock, shm, peer)
    except ProtocolError as e:
        e.peer = peer
        raise
    return peer, header, tree


def remove_orphaned_ipc(endpoint: str, folder_prefix: str) -> None:
    """Remove an ipc endpoint's socket file and its folder when the folder's name starts with
    ``folder_prefix`` (a private ``tempfile.mkdtemp`` folder of a process that died without
    cleaning up); anything else is left alone. Never raises."""
    if not endpoint.startswith("ipc://"):
        return
    sock_path = endpoint[len("ipc://") :]
    folder = os.path.dirname(sock_path)
    if not os.path.basename(folder).startswith(folder_prefix):
        return
    for remove, path in ((os.unlink, sock_path), (os.rmdir, folder)):
        try:
            remove(path)
        except OSError:
            pass  # gone already (another process got there first), or not empty


# ---------------------------------------------------------------------------------------------
# Same host or not


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # not Linux: hostname (plus the probe) has to do
        return ""


def host_identity() -> dict[str, str]:
    """Plain data naming this machine and boot: {"hostname", "boot_id"}."""
    return {"hostname": pysocket.gethostname(), "boot_id": _boot_id()}


class LocalityProbe:
    """Worker side: a tiny shared-memory segment holding a random token.

    Send ``to_dict()`` in REGISTER's meta; the coordinator's ``choose_path`` reads it back. Close
    the probe once the coordinator has answered.
    """

    def __init__(self) -> None:
        self.token = secrets.token_bytes(16)
        self._segment = SharedArrayTree.allocate(np.zeros(16, np.uint8))
        self._segment.tree[:] = np.frombuffer(self.token, np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {
            **host_identity(),
            "probe": self._segment.handle.to_dict(),
            "token": self.token.hex(),
        }

    def close(self) -> None:
        if self._segment is not None:
            self._segment.release()
            self._segment = None

    def __enter__(self) -> LocalityProbe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def is_same_host(probe: Any) -> bool:
    """True iff ``probe`` (a ``LocalityProbe.to_dict()`` from the peer) proves shared memory."""
    if not isinstance(probe, dict):
        return False
    if probe.get("hostname") != pysocket.gethostname() or probe.get("boot_id") != _boot_id():
        return False
    handle, token = probe.get("probe"), probe.get("token")
    if not isinstance(handle, dict) or not isinstance(token, str):
        return False
    name = handle.get("name")
    if not isinstance(name, str) or not name.startswith("asyncrl_"):
        return False
    try:
        _check_schema(handle.get("schema"))
        attached = SharedArrayTree.attach(SharedHandle(name, handle["schema"], ()))
    except Exception:  # missing segment, other namespace, malformed handle: not local
        return False
    try:
        return attached.tree.nbytes == 16 and attached.tree.tobytes().hex() == token
    except Exception:
        return False
    finally:
        attached.release()


def choose_path(probe: Any, prefer: Literal["auto", "shm", "frames"] = "auto") -> Path:
    """Pick how a worker's batches travel: "shm" for a proven same-host peer, else "frames".

    ``prefer="frames"`` forces frames (e.g. to benchmark TCP); ``prefer="shm"`` still falls back
    to frames when the probe fails, since shared memory cannot work then.
    """
    if prefer == "frames":
        return "frames"
    return "shm" if is_same_host(probe) else "frames"


# ---------------------------------------------------------------------------------------------
# Batch slots


_FREE, _WRITING, _IN_FLIGHT = 0, 1, 2
_RECHECK_S = 0.005


class BatchSender:
    """Sends batches of one fixed schema to one peer through K reusable slots.

    ``path="shm"``: each slot is a shared-memory segment; ``send`` sends only the header
    (slot index + segment name, the full handle on first use); the slot is free again when the
    receiver's RELEASE comes back (``on_release``). ``path="frames"``: each slot is a private
    buffer sent zero-copy as frames; it is free again once ZeroMQ has let go of its memory
    (noticed by a weak reference to the array view handed to ZeroMQ, which pyzmq drops when
    libzmq frees the message: no polling, no per-frame tracker).

    The producer either writes in place (``slot, tree = await acquire()``, fill ``tree``,
    ``await send(header, slot)``) or lets ``send_tree`` copy a finished batch into a slot.
    ``peer`` is the ROUTER identity when sending from a ROUTER. Close with ``close()``: the
    shared segments are unlinked (the receiver's existing views stay valid until it detaches).
    """

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        example: Any,
        *,
        path: Path = "frames",
        slots: int = 4,
        leading_dims: tuple[int, ...] | int = (),
        peer: bytes | None = None,
    ):
        if path not in ("shm", "frames"):
            raise ValueError(f"path must be 'shm' or 'frames', got {path!r}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.sock = sock
        self.path = path
        self.peer = peer
        schema = example_schema(example)
        self._segments: list[SharedArrayTree] = []
        if path == "shm":
            for _ in range(slots):
                self._segments.append(SharedArrayTree.allocate(schema, leading_dims))
            self.trees = [s.tree for s in self._segments]
            self._names = {s.handle.name: i for i, s in enumerate(self._segments)}
        else:
            self.trees = [buffer_from_schema(schema, leading_dims) for _ in range(slots)]
            self._names = {}
        # The wire schema of every slot, packed once (flatten would redo it per message).
        self._schema, leaves = flatten(self.trees[0])
        self._schema_bytes = pack_schema(self._schema)
        self._leaves = [tree_leaves(tree) for tree in self.trees]
        self._zero_copy = [leaf.nbytes >= sock.copy_threshold for leaf in leaves]
        self._state = [_FREE] * slots
        # Per slot, {id(weakref): weakref} of the array views ZeroMQ still holds.
        self._held: list[dict[int, weakref.ref]] = [{} for _ in range(slots)]
        self._announced = [False] * slots
        self._freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = False
        self._wake_pending = False
        self._wake_threshold = max(1, slots // 2)
        self._next = 0

    @property
    def slots(self) -> int:
        return len(self.trees)

    @property
    def in_flight(self) -> int:
        """Slots sent and not yet free again (shm: not released; frames: not yet sent out)."""
        return sum(not self._is_free(i) and s != _WRITING for i, s in enumerate(self._state))

    @property
    def free_slots(self) -> int:
        return sum(self._is_free(i) for i in range(len(self._state)))

    def _is_free(self, i: int) -> bool:
        state = self._state[i]
        if state == _IN_FLIGHT and self.path == "frames" and not self._held[i]:
            state = self._state[i] = _FREE
        return state == _FREE

    def _take_free(self) -> int | None:
        n = len(self._state)
        for k in range(n):
            i = (self._next + k) % n
            if self._is_free(i):
                self._state[i] = _WRITING
                self._next = (i + 1) % n
                return i
        return None

    def _wake(self) -> None:
        self._wake_pending = False
        if self._waiting:
            self._freed.set()

    def _view_released(self, ref: weakref.ref, slot: int) -> None:
        # Runs in pyzmq's garbage-collection thread once libzmq has freed the frame. Waking the
        # loop from another thread costs a syscall and a loop iteration, so a waiting sender is
        # woken once half of the slots are free, not for every frame (acquire also re-checks
        # every few milliseconds, so one free slot is never missed for long).
        held = self._held[slot]
        held.pop(id(ref), None)
        if held or not self._waiting or self._wake_pending or self._loop is None:
            return
        free = sum(not h for h in self._held)
        if free >= self._wake_threshold:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass

    async def acquire(self, timeout: float | None = None) -> tuple[int, Any]:
        """A free slot index and its writable tree; waits (at most ``timeout`` s) for one."""
        i = self._take_free()
        if i is not None:
            return i, self.trees[i]
        loop = self._loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self._waiting = True
        try:
            while True:
                self._freed.clear()
                i = self._take_free()  # after clear(): a release from now on wakes us
                if i is not None:
                    return i, self.trees[i]
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"no free {self.path} slot within {timeout} s: the receiver does not "
                        + ("release slots" if self.path == "shm" else "drain its socket")
                    )
                if self.path == "frames":  # see _view_released: re-check at least this often
                    remaining = _RECHECK_S if remaining is None else min(remaining, _RECHECK_S)
                try:
                    await asyncio.wait_for(self._freed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._waiting = False

    async def send(self, header: Header, slot: int, *, timeout: float | None = None) -> None:
        """Send the batch in ``slot`` (acquired and filled) with ``header``."""
        if self._state[slot] != _WRITING:
            raise ValueError(f"slot {slot} was not acquired (or was already sent)")
        leaf = None
        try:
            if self.path == "shm":
                segment = self._segments[slot]
                header.slot, header.schema = slot, None
                if self._announced[slot]:
                    header.shm = {"name": segment.handle.name}
                else:
                    header.shm = segment.handle.to_dict()
                frames = [pack_header(header)]
            else:
                header.slot = header.shm = None
                header.schema = self._schema
                frames = [pack_header(header, self._schema_bytes)]
                held = self._held[slot]
                for leaf, zero_copy in zip(self._leaves[slot], self._zero_copy):
                    if zero_copy:  # a fresh view, so that we see when ZeroMQ lets go of it
                        leaf = leaf.view()
                        ref = weakref.ref(leaf, partial(self._view_released, slot=slot))
                        held[id(ref)] = ref
                    frames.append(leaf)
            if self.peer is not None:
                frames.insert(0, self.peer)
            future = self.sock.send_multipart(frames, copy=False)
            del frames, leaf  # ZeroMQ (or the pending send) holds the only references now
            await _await(future, timeout, "send", self.peer)
        except BaseException:
            self._state[slot] = _FREE  # not queued: nobody else holds the slot
            raise
        self._state[slot] = _IN_FLIGHT
        if self.path == "shm":
            self._announced[slot] = True

    async def send_tree(self, header: Header, tree: Any, *, timeout: float | None = None) -> int:
        """Copy ``tree`` into a free slot and send it; returns the slot index."""
        slot, buffer = await self.acquire(timeout)
        try:
            for dst, src in zip(tree_leaves(buffer), tree_leaves(tree), strict=True):
                np.copyto(dst, np.asarray(src))
        except BaseException:
            self._state[slot] = _FREE
            raise
        await self.send(header, slot, timeout=timeout)
        return slot

    def on_release(self, header: Header) -> bool:
        """Handle a RELEASE from the receiver; True if it freed one of our slots."""
        if header.type != MsgType.RELEASE or header.slot is None or header.shm is None:
            return False
        slot = self._names.get(header.shm.get("name"))
        if slot is None or slot != header.slot or self._state[slot] != _IN_FLIGHT:
            return False
        self._state[slot] = _FREE
        self._wake()
        return True

    def reset(self) -> None:
        """Forget the receiver (it restarted): shm slots free, handles announced anew.

        Frames still held by ZeroMQ keep their slots busy until it lets go of them.
        """
        self._state = [_FREE if self.path == "shm" or not held else _IN_FLIGHT
                       for held in self._held]  # fmt: skip
        self._announced = [False] * len(self.trees)
        self._wake()

    def close(self) -> None:
        for segment in self._segments:
            segment.release()
        self._segments = []
        self.trees = []

    def __enter__(self) -> BatchSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def release_header(header: Header) -> Header:
    """The RELEASE answer to a shared-memory message: the sender may reuse that slot."""
    if header.slot is None or header.shm is None:
        raise ValueError("not a shared-memory message")
    return header.reply(MsgType.RELEASE, slot=header.slot, shm={"name": header.shm["name"]})


class ShmReceiver:
    """Receiver side of shared-memory slots: attaches each peer's segments once, returns views.

    Only peers passed to ``allow`` (those ``choose_path`` found local) may send shm messages;
    anything else is a ``ProtocolError``. A view is valid until you answer RELEASE for it
    (``release_header``); copy what you keep longer. ``forget(peer)`` detaches a peer's
    segments (it left); ``close()`` detaches all. The sender owns and unlinks the segments.
    """

    def __init__(self, max_segments_per_peer: int = 64):
        self.max_segments_per_peer = max_segments_per_peer
        self._peers: dict[bytes, dict[str, SharedArrayTree]] = {}

    def allow(self, peer: bytes = b"") -> None:
        self._peers.setdefault(peer, {})

    def forget(self, peer: bytes = b"", unlink: bool = False) -> None:
        """Detach ``peer``'s segments; ``unlink`` also removes them, for a sender that died
        with nobody left to do it (a Ray actor's or a Slurm job's resource tracker dies with
        it: Ray and Slurm end a dead worker's child processes too)."""
        for segment in self._peers.pop(peer, {}).values():
            name = segment.handle.name
            segment.release()
            if unlink:
                _unlink_segment(name)

    def close(self) -> None:
        for peer in list(self._peers):
            self.forget(peer)

    def resolve(self, peer: bytes, header: Header) -> Any:
        segments = self._peers.get(peer)
        if segments is None:
            raise ProtocolError("shared-memory message from a peer not allowed to use it")
        name = header.shm["name"]
        segment = segments.get(name)
        if segment is None:
            if "schema" not in header.shm:
                raise ProtocolError(f"unknown shared-memory segment {name} and no handle")
            if len(segments) >= self.max_segments_per_peer:
                raise ProtocolError(f"peer announced more than {self.max_segments_per_peer} slots")
            try:
                handle = SharedHandle.from_dict(header.shm)
                _check_schema(handle.schema)
                segment = SharedArrayTree.attach(handle)
            except ProtocolError:
                raise
            except Exception as e:  # missing segment, too small for its schema, bad handle
                raise ProtocolError(
                    f"cannot attach shared memory {name}: {type(e).__name__}: {e}"[:200]
                ) from None
            segments[name] = segment
        return segment.tree


def _unlink_segment(name: str) -> None:
    """Remove another process's segment by name, without this process's resource tracker (it
    never registered the segment, and would complain about unregistering it)."""
    try:
        import _posixshmem
    except ImportError:  # pragma: no cover - Windows: a segment goes with its last handle
        return
    try:
        _posixshmem.shm_unlink(name if name.startswith("/") else "/" + name)
    except (FileNotFoundError, OSError):
        pass


def _check_schema(schema: Any, depth: int = 0) -> None:
    if depth > 32:
        raise ProtocolError("schema nested too deeply")
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise ProtocolError("malformed schema node")
    if "fields" in schema:
        children = schema.get("children")
        if not isinstance(children, list):
            raise ProtocolError("malformed schema: children must be a list")
        for child in children:
            _check_schema(child, depth + 1)
        return
    try:
        dtype = np.dtype(schema["dtype"])
    except Exception as e:
        raise ProtocolError(f"malformed leaf schema: {e}"[:200]) from None
    if dtype.hasobject:
        raise ProtocolError(f"refusing leaf dtype {dtype}")
