"""The inference server (central and alternating modes): batches the action requests of all
workers and runs the agent on them in a thread of its own, never on the event loop.

Owns the inference thread, its shared-memory channel for same-host workers and, in
asynchronous runs, applying new parameters between batches (``load_params``). Must not touch
the coordinator's sockets: requests that come as ordinary ``ACT_REQUEST`` messages (workers
on other hosts, variable-size value requests) are handed in with ``submit`` and answered
through the ``reply`` callback, which runs on the loop. Knows an agent only by ``step``,
``value``, ``observe``, ``on_episode_end``, ``load_state_tensors`` and ``policy_version``.

The shared-memory channel (Sample Factory's shape: observations and actions in shared
memory, only indices on the queues). Each same-host worker maps one segment per env group
(``InferenceSlot``: observation, env ids, reset mask, previous reward, action, agent info,
value) and tells the server once (``ATTACH``, whose layout is checked then, once); from then
on a request is 8 bytes (kind, group, flags, sequence number) and a reply 16 (the same and
the policy version) on a Unix stream socket in the run's private directory. Not ZeroMQ here:
its I/O threads put four thread hand-offs in every round trip (about 80 us over ipc on this
2-core machine against 5 us for a Unix socket), and these are the only messages sent per env
step. The server's thread blocks in ``poll`` on the listening socket, the workers'
connections and a pipe that ``submit`` writes to, and reads every message that is ready per
wake-up.

Batching. Requests are grouped per *split* (group index g of every worker: in alternating
mode split 0 of all workers steps while split 1 is inferred). A split is served when every
active worker's request for it is in, so a forward pass always sees the same rows in the
same order (env-id order) and a run's numbers do not depend on timing (torch's CPU kernels
round a row differently in batches of different sizes). Synchronous runs wait for the
whole split (a worker that dies leaves it; a split still short after ``SPLIT_GUARD_S`` is
served as it is, with a warning); asynchronous runs wait at most ``wait_s`` for the rest of
a split. A worker is active from ``begin_round`` (the synchronous round that asks it for a
batch) or its first request, until it says its batch is done (``END``).
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from asyncrl.data import namedarraytuple, tree_map
from asyncrl.data.buffer import SharedArrayTree, SharedHandle
from asyncrl.runtime.protocol import ProtocolError

log = logging.getLogger("asyncrl.coordinator")

ActReply = namedarraytuple("ActReply", ["action", "agent_info"])
# One env group's request and reply, in shared memory: leading dim = the group's envs.
InferenceSlot = namedarraytuple(
    "InferenceSlot",
    ["observation", "env_ids", "reset", "reward", "action", "agent_info", "value"],
)

# The channel's messages (little-endian, fixed size; ATTACH alone is length-prefixed msgpack).
REQUEST = struct.Struct("<BBBxI")  # kind, group, flags, seq
REPLY = struct.Struct("<BBBxIq")  # kind, group, status, seq, policy version
KIND_ACT, KIND_VALUE, KIND_END = 1, 2, 3
FLAG_RESET, FLAG_REWARD = 1, 2
STATUS_OK, STATUS_FAILED = 0, 1
MAX_ATTACH_BYTES = 1 << 20
MAX_GROUPS = 8
MAX_GROUP_ENVS = 1 << 16
SPLIT_GUARD_S = 30.0  # synchronous runs: the longest a split waits for a worker's request

_STOP = object()


def slot_example(obs_example: Any, action_example: Any, info_example: Any) -> Any:
    """One env's ``InferenceSlot`` (allocate with the group's env count as leading dim)."""
    return InferenceSlot(
        observation=obs_example,
        env_ids=np.int64(0),
        reset=np.bool_(False),
        reward=np.float32(0),
        action=np.asarray(action_example),
        agent_info=info_example,
        value=np.float32(0),
    )


class _Request:
    """What ``_answer`` reads of a request (an ACT_REQUEST's tree, or shared-memory views)."""

    __slots__ = ("observation", "env_ids", "reset", "reward")

    def __init__(self, observation, env_ids, reset=None, reward=None):
        self.observation = observation
        self.env_ids = env_ids
        self.reset = reset
        self.reward = reward


class _Conn:
    """A worker's connection to the channel: bytes not parsed yet, the process id."""

    __slots__ = ("sock", "pid", "buf", "peer")

    def __init__(self, sock: socket.socket, pid: int):
        self.sock, self.pid = sock, pid
        self.buf = bytearray()
        self.peer: bytes | None = None  # set by a valid ATTACH


class _Attached:
    """A worker on the shared-memory channel: its segments, one per env group."""

    __slots__ = ("peer", "segments", "views", "ids", "first", "conn")

    def __init__(self, peer: bytes, segments: list, views: list, conn: _Conn):
        self.peer, self.conn = peer, conn
        self.segments = segments
        self.views = views
        self.ids = [np.array(v.env_ids, copy=True) for v in views]
        self.first = [int(i[0]) for i in self.ids]

    def release(self) -> None:
        for s in self.segments:
            s.release()
        self.segments, self.views = [], []


class InferenceServer:
    """``submit(key, request, what)`` from the loop; ``reply(answers)`` is called on the loop
    with ``[(key, ActReply, policy_version)]`` for each served group, ``failed(n, error)`` when
    a group could not be served. ``open_channel`` adds the shared-memory channel."""

    def __init__(
        self,
        agent: Any,
        call_soon: Callable[..., None],
        reply: Callable[[list], None],
        failed: Callable[[int, BaseException], None],
    ):
        self.agent = agent
        self._call_soon = call_soon
        self._reply = reply
        self._failed = failed
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe must not block the event loop
        self._params: tuple | None = None  # newest (state, version, acting) not yet applied
        self._params_lock = threading.Lock()
        torch = sys.modules.get("torch")
        self._threads = torch.get_num_threads() if torch is not None else 0
        # the shared-memory channel (owned by the thread once opened)
        self._listener: socket.socket | None = None
        self._path = ""
        self._poll = select.poll()
        self._conns: dict[int, _Conn] = {}  # by file descriptor
        self._may_attach: Callable[[bytes, list, int], str] | None = None
        self._attached: dict[bytes, _Attached] = {}
        self._pending: dict[tuple[int, int], dict[bytes, tuple[int, int]]] = {}
        self._since: dict[tuple[int, int], float] = {}
        self._active: set[bytes] = set()
        self._starting = 0  # workers a synchronous round waits for that have not attached
        self._gone: set[bytes] = set()  # closed their connection (until they attach again)
        self._synchronous = True
        self.wait_s = 0.001
        self.spin_s = 0.0  # poll without blocking this long before sleeping (open_channel)
        self.dropped = 0  # malformed channel messages (the coordinator counts them)
        self.partial_splits = 0  # splits served short (guard or deadline)
        self._last_drop_log = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="asyncrl-inference", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from the loop
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):  # a full pipe wakes the thread anyway
            pass

    def _command(self, *item: Any) -> None:
        self._queue.put(item)
        self._wake()

    def submit(self, key: Any, request: Any, what: str) -> None:
        self._command("request", key, request, what)

    def open_channel(
        self,
        endpoint: str,
        may_attach: Callable[[bytes, list], str],
        *,
        synchronous: bool = True,
        wait_s: float = 0.001,
        cpus: tuple[int, ...] = (),
        spin_s: float = 0.0,
        timeout: float = 10.0,
    ) -> str:
        """Listen for the shared-memory channel at the Unix socket path ``endpoint``; returns
        it. ``may_attach(peer, [env ids per group], pid)`` answers '' for a worker that may
        attach, else the reason it may not (pid: the connected process, 0 if unknown)."""
        done = threading.Event()
        result: list = []
        self.spin_s = max(0.0, float(spin_s))
        self._command("open", endpoint, may_attach, synchronous, wait_s, cpus, done, result)
        if not done.wait(timeout):
            raise TimeoutError("the inference thread did not open its channel")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def begin_round(self, peers, starting: int = 0) -> None:
        """A synchronous round asks these workers for a batch: wait for their requests, and
        for the first ``starting`` workers to attach (slots whose worker is starting)."""
        self._command("round", set(peers), starting)

    def forget(self, peer: bytes) -> None:
        """The worker is gone: drop its segments and requests."""
        self._command("forget", peer)

    def load_params(self, state: dict, version: int, acting: dict | None = None) -> None:
        """Newer parameters (asynchronous runs): applied before the next forward pass."""
        with self._params_lock:
            self._params = (state, version, acting)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put((_STOP,))
        self._wake()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        if self._threads:
            sys.modules["torch"].set_num_threads(self._threads)
        self._poll.register(self._wake_r, select.POLLIN)
        try:
            while True:
                spin = self.spin_s
                events = self._poll.poll(0) if spin else None
                if not events and spin:  # a short spin keeps the core awake for the next
                    deadline = time.perf_counter() + spin  # request (waking costs ~20 us)
                    while not events and time.perf_counter() < deadline:
                        events = self._poll.poll(0)
                if not events:
                    events = self._poll.poll(self._poll_timeout_ms())
                stop = False
                batch: list = []
                woken = False
                for fd, _ in events:  # every ready message; the channel's first (a batch's
                    if fd == self._wake_r:  # END comes before the next round's begin_round)
                        woken = True
                    elif self._listener is not None and fd == self._listener.fileno():
                        self._accept()
                    else:
                        self._read(fd)
                if woken:
                    try:
                        os.read(self._wake_r, 4096)
                    except (BlockingIOError, OSError):
                        pass
                    while True:  # every command and message-path request waiting
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        kind = item[0]
                        if kind is _STOP:
                            stop = True
                        elif kind == "request":
                            batch.append(item[1:])
                        elif kind == "open":
                            self._open(*item[1:])
                        elif kind == "round":  # (not the workers already gone)
                            self._active |= item[1] - self._gone
                            self._starting = item[2]
                        elif kind == "forget":
                            self._forget(item[1])
                if batch:
                    self._serve(batch)
                if self._pending:
                    self._serve_splits()
                if stop:
                    return
        finally:
            for a in self._attached.values():
                a.release()
            self._attached.clear()
            for conn in list(self._conns.values()):
                conn.sock.close()
            self._conns.clear()
            if self._listener is not None:
                self._listener.close()
                try:
                    os.unlink(self._path)
                except OSError:
                    pass

    def _poll_timeout_ms(self) -> int | None:
        if not self._since:
            return None
        wait = SPLIT_GUARD_S if self._synchronous else self.wait_s
        oldest = min(self._since.values())
        return max(0, int((oldest + wait - time.monotonic()) * 1000) + 1)

    def _open(self, endpoint, may_attach, synchronous, wait_s, cpus, done, result) -> None:
        try:
            if cpus and hasattr(os, "sched_setaffinity"):  # this thread only (Linux)
                os.sched_setaffinity(threading.get_native_id(), set(cpus))
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(endpoint)
                listener.listen(64)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                raise
            self._listener, self._path = listener, endpoint
            self._poll.register(listener.fileno(), select.POLLIN)
            self._may_attach = may_attach
            self._synchronous = bool(synchronous)
            self.wait_s = float(wait_s)
            result.append(endpoint)
        except BaseException as e:  # noqa: BLE001 - the caller raises it
            result.append(e)
        finally:
            done.set()

    def _drop(self, peer: bytes, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log > 5.0:
            self._last_drop_log = now
            log.warning("inference channel: dropped a message from %r: %s", peer, why)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:  # nothing more to accept (or the listener failed)
                return
            sock.setblocking(False)
            pid = 0
            if hasattr(socket, "SO_PEERCRED"):
                try:
                    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    pid = struct.unpack("3i", cred)[0]
                except OSError:
                    pass
            self._conns[sock.fileno()] = _Conn(sock, pid)
            self._poll.register(sock.fileno(), select.POLLIN)

    def _close_conn(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            try:
                self._poll.unregister(fd)
            except (KeyError, ValueError):
                pass
        conn.sock.close()
        attached = self._attached.get(conn.peer) if conn.peer is not None else None
        if attached is not None and attached.conn is conn:
            self._forget(conn.peer)
            self._gone.add(conn.peer)

    def _read(self, fd: int) -> None:
        conn = self._conns.get(fd)
        if conn is None:
            return
        try:
            data = conn.sock.recv(4096)  # (a 64 KB recv allocates 64 KB each time)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker closed its end (it exited)
            self._close_conn(conn)
            return
        buf = conn.buf
        buf += data
        if conn.peer is None:  # ATTACH: length-prefixed msgpack
            if len(buf) < 4:
                return
            (n,) = struct.unpack_from("<I", buf)
            if n > MAX_ATTACH_BYTES:
                self._drop(b"?", f"ATTACH of {n} bytes")
                self._close_conn(conn)
                return
            if len(buf) < 4 + n:
                return
            body = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            if not self._on_attach(conn, body):
                self._close_conn(conn)
                return
        size = REQUEST.size
        k = 0
        while len(buf) - k >= size:
            self._on_request(conn.peer, bytes(buf[k : k + size]))
            k += size
        if k:
            del buf[:k]

    def _on_request(self, peer: bytes, body: bytes) -> None:
        kind, group, flags, seq = REQUEST.unpack(body)
        attached = self._attached.get(peer)
        if attached is None:
            self._drop(peer, "request before ATTACH")
            return
        if kind == KIND_END:
            self._active.discard(peer)
            return
        if kind not in (KIND_ACT, KIND_VALUE) or group >= len(attached.views):
            self._drop(peer, f"bad request kind {kind} group {group}")
            return
        key = (kind, group)
        pending = self._pending.setdefault(key, {})
        if peer in pending:
            self._drop(peer, "a second request for a group before its reply")
            return
        pending[peer] = (seq, flags)
        self._since.setdefault(key, time.monotonic())
        self._active.add(peer)

    def _on_attach(self, conn: _Conn, body: bytes) -> bool:
        peer = b"?"
        try:
            meta = msgpack.unpackb(body, raw=False)
            if not isinstance(meta, dict) or not isinstance(meta.get("worker_id"), str):
                raise ProtocolError("ATTACH: a map with the worker id expected")
            peer = meta["worker_id"].encode()
            groups = meta.get("groups")
            if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
                raise ProtocolError("ATTACH: 1 to 8 groups expected")
            segments, views = [], []
            try:
                for handle in groups:
                    shm = SharedArrayTree.attach(_checked_handle(handle))
                    segments.append(shm)
                    views.append(_checked_slot(shm.tree, shm.handle))
            except BaseException:
                for s in segments:
                    s.release()
                raise
            attached = _Attached(peer, segments, views, conn)
            reason = self._may_attach(peer, attached.ids, conn.pid) if self._may_attach else ""
            if reason:
                attached.release()
                raise ProtocolError(reason)
        except ProtocolError as e:
            self._drop(peer, f"ATTACH refused: {e.reason}")  # counted before it is told
            self._answer_attach(conn, f"refused: {e.reason}"[:300])
            return False
        except Exception as e:  # noqa: BLE001 - missing segment, bad handle, bad msgpack
            self._drop(peer, f"ATTACH refused: {type(e).__name__}: {e}"[:200])
            self._answer_attach(conn, f"refused: {type(e).__name__}: {e}"[:300])
            return False
        active = peer in self._active
        old = self._attached.get(peer)
        if old is not None and old.conn is not conn:
            old.conn.peer = None  # its EOF must not forget the new attachment
            self._close_conn(old.conn)
        self._forget(peer)  # attaching again (new segments): the old ones go
        self._attached[peer] = attached
        self._gone.discard(peer)
        conn.peer = peer
        if not active and self._starting > 0:  # a slot's worker the round waits for
            self._starting -= 1
            active = True
        if active:  # asked for a batch before it attached
            self._active.add(peer)
        self._answer_attach(conn, "ok")
        return True

    def _answer_attach(self, conn: _Conn, text: str) -> None:
        data = text.encode()
        try:
            conn.sock.send(struct.pack("<I", len(data)) + data)
        except OSError:
            pass

    def _forget(self, peer: bytes) -> None:
        attached = self._attached.pop(peer, None)
        if attached is not None:
            attached.release()
        self._active.discard(peer)
        for key in list(self._pending):
            self._pending[key].pop(peer, None)
            if not self._pending[key]:
                del self._pending[key]
                self._since.pop(key, None)

    def _serve_splits(self) -> None:
        now = time.monotonic()
        for key in sorted(self._pending):
            pending = self._pending[key]
            group = key[1]
            # A worker with a request of another kind for this group (a value request while
            # the others still step) waits for its answer and sends no other before it.
            busy = set()
            for (_, g), others in self._pending.items():
                if g == group:
                    busy.update(others)
            waiting_for = [
                p
                for p in self._active
                if p not in busy
                and (
                    # peers a synchronous round asked for a batch, not attached yet: waited for
                    (self._synchronous and p not in self._attached)
                    or (p in self._attached and group < len(self._attached[p].views))
                )
            ]
            if self._synchronous and self._starting > 0:
                waiting_for.append(b"(starting)")
            if waiting_for:
                limit = SPLIT_GUARD_S if self._synchronous else self.wait_s
                if now - self._since[key] < limit:
                    continue
                self.partial_splits += 1
                if self._synchronous:
                    log.warning(
                        "inference: split %d waited %.0f s for %d workers; served without them",
                        group,
                        limit,
                        len(waiting_for),
                    )
            del self._pending[key]
            del self._since[key]
            self._serve_split(key, pending)

    def _serve_split(self, key: tuple[int, int], pending: dict) -> None:
        kind, group = key
        peers = sorted(pending, key=lambda p: self._attached[p].first[group])
        requests = []
        for peer in peers:
            view = self._attached[peer].views[group]
            flags = pending[peer][1]
            requests.append(
                _Request(
                    view.observation,
                    self._attached[peer].ids[group],
                    view.reset if flags & FLAG_RESET else None,
                    view.reward if flags & FLAG_REWARD else None,
                )
            )
        status, version = STATUS_OK, 0
        try:
            self._apply_params()
            what = "act" if kind == KIND_ACT else "value"
            answers = self._answer([(peer, r, what) for peer, r in zip(peers, requests)], what)
            for peer, (_, reply, _version) in zip(peers, answers):
                view = self._attached[peer].views[group]
                if kind == KIND_ACT:
                    view.action[:] = reply.action
                    if reply.agent_info is not None and view.agent_info is not None:
                        view.agent_info[:] = reply.agent_info
                else:
                    view.value[:] = reply.action
            version = answers[0][2] if answers else 0
        except Exception as e:  # noqa: BLE001 - one bad request must not stop inference
            status = STATUS_FAILED
            log.warning("inference failed for %d requests: %s: %s", len(peers), type(e).__name__, e)
            log.debug("inference failure", exc_info=e)
        for peer in peers:
            seq = pending[peer][0]
            conn = self._attached[peer].conn
            try:
                conn.sock.send(REPLY.pack(kind, group, status, seq, version))
            except OSError:  # gone (its EOF comes next) or not reading: it is let go
                self._close_conn(conn)

    def _apply_params(self) -> None:
        with self._params_lock:
            pending, self._params = self._params, None
        if pending is not None:
            state, version, acting = pending
            self.agent.load_state_tensors(state, version)
            if acting:
                self.agent.load_acting_state(acting)

    def _serve(self, batch: list) -> None:
        """ACT_REQUEST messages: actions of whatever is waiting in one forward pass; values one
        request at a time (their count varies, and a value's rounding should not)."""
        try:
            self._apply_params()
        except Exception as e:  # noqa: BLE001 - the thread must live on; the run sees the error
            self._call_soon(self._failed, [], e)
        acts = [r for r in batch if r[2] == "act"]
        groups = [acts] if acts else []
        groups += [[r] for r in batch if r[2] != "act"]
        for group in groups:
            what = group[0][2]
            try:
                answers = self._answer(group, what)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop inference
                self._call_soon(self._failed, [r[0] for r in group], e)
                continue
            self._call_soon(self._reply, answers)

    def _answer(self, group: list, what: str) -> list:
        agent = self.agent
        if agent is None:
            raise ProtocolError("ACT_REQUEST but no central agent is served")
        obs = [r[1].observation for r in group]
        ids = [np.asarray(r[1].env_ids) for r in group]
        sizes = [len(i) for i in ids]
        all_obs = tree_map(lambda *xs: np.concatenate(xs), *obs) if len(obs) > 1 else obs[0]
        all_ids = np.concatenate(ids) if len(ids) > 1 else ids[0]
        recurrent = getattr(agent, "recurrent", False)
        rewards = [getattr(r[1], "reward", None) for r in group]
        observe = getattr(agent, "observe", None)
        if observe is not None and any(x is not None for x in rewards):
            # recurrent agents: the previous step's rewards (the core's previous-reward input),
            # before any reset of the request
            reward = np.concatenate(
                [
                    np.zeros(n, np.float32) if x is None else np.asarray(x, np.float32)
                    for x, n in zip(rewards, sizes)
                ]
            )
            if len(reward) != len(all_ids):
                raise ProtocolError("ACT_REQUEST: rewards and env ids differ in length")
            observe(reward, all_ids)
        resets = [getattr(r[1], "reset", None) for r in group]
        on_episode_end = getattr(agent, "on_episode_end", None)
        if on_episode_end is not None and any(x is not None for x in resets):
            mask = np.concatenate(
                [
                    np.zeros(n, bool) if x is None else np.asarray(x, bool)
                    for x, n in zip(resets, sizes)
                ]
            )
            if len(mask) != len(all_ids):
                raise ProtocolError("ACT_REQUEST: reset mask and env ids differ in length")
            # per-env exploration (DDPG's OU noise) or recurrent state; a value request may
            # carry them too (a recurrent bootstrap value is a new episode's where one ended)
            on_episode_end(mask, all_ids)
        if what in ("value", "final_value"):
            if recurrent:  # from each env's state (final: the one its episode ended with)
                values = agent.value(all_obs, all_ids, final=what == "final_value")
            elif what == "final_value":
                raise ProtocolError("ACT_REQUEST what=final_value needs a recurrent agent")
            else:
                values = agent.value(all_obs)
            values = np.asarray(values, np.float32)
            parts = [values] if len(group) == 1 else np.split(values, np.cumsum(sizes)[:-1])
            infos = [None] * len(group)
        else:
            action, info = agent.step(all_obs, all_ids)
            parts = [action] if len(group) == 1 else np.split(action, np.cumsum(sizes)[:-1])
            if len(group) == 1:
                infos = [info]
            elif info is None:
                infos = [None] * len(group)
            else:
                bounds = np.cumsum([0, *sizes])
                infos = [info[bounds[i] : bounds[i + 1]] for i in range(len(group))]
        version = int(getattr(agent, "policy_version", 0))
        assert len(parts) == len(infos) == len(group)
        return [
            (r[0], ActReply(np.ascontiguousarray(a), inf), version)
            for r, a, inf in zip(group, parts, infos)
        ]


def _checked_handle(handle: Any) -> SharedHandle:
    from asyncrl.runtime.transport import _check_schema

    if not isinstance(handle, dict):
        raise ProtocolError("ATTACH: a group's handle must be a map")
    try:
        h = SharedHandle.from_dict(handle)
    except Exception as e:  # noqa: BLE001
        raise ProtocolError(f"ATTACH: bad handle: {type(e).__name__}: {e}"[:200]) from None
    if not isinstance(h.name, str) or len(h.leading_dims) != 1:
        raise ProtocolError("ATTACH: a group's handle needs a name and one leading dim")
    n = h.leading_dims[0]
    if type(n) is not int or not 1 <= n <= MAX_GROUP_ENVS:
        raise ProtocolError(f"ATTACH: a group has {n!r} envs")
    _check_schema(h.schema)
    return h


def _checked_slot(tree: Any, handle: SharedHandle) -> Any:
    if getattr(tree, "_fields", None) != InferenceSlot._fields:
        raise ProtocolError("ATTACH: a group's segment is not an InferenceSlot")
    n = handle.leading_dims[0]
    if tree.env_ids.dtype != np.int64 or tree.env_ids.shape != (n,):
        raise ProtocolError("ATTACH: env_ids must be int64 [n]")
    if tree.reset.dtype != np.bool_ or tree.reward.dtype != np.float32:
        raise ProtocolError("ATTACH: reset must be bool, reward float32")
    if tree.value.dtype != np.float32 or tree.value.shape != (n,):
        raise ProtocolError("ATTACH: value must be float32 [n]")
    return InferenceSlot(*tree)


class InferenceClient:
    """Worker side of the shared-memory channel: one thread's synchronous DEALER socket and one
    ``InferenceSlot`` segment per env group (``views[g]``: write ``observation`` (and
    ``reset``/``reward``) there, ``request(g)``, then ``wait(g)`` and read ``action`` /
    ``agent_info`` / ``value``). Owns and unlinks its segments on ``close``."""

    def __init__(
        self,
        endpoint: str,
        worker_id: str,
        env_ids: list[np.ndarray],
        example: Any,
        *,
        timeout_s: float = 30.0,
        should_stop: Callable[[], bool] = lambda: False,
        spin_s: float = 0.0,
    ):
        self.timeout_s = timeout_s
        self.spin_s = spin_s  # poll this long for a reply before sleeping in recv
        self.should_stop = should_stop
        self.segments = [SharedArrayTree.allocate(example, (len(ids),)) for ids in env_ids]
        self.views = [InferenceSlot(*s.tree) for s in self.segments]
        for view, ids in zip(self.views, env_ids):
            view.env_ids[:] = ids
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking socket with a kernel receive timeout: one recv system call per reply
        # (Python's own timeouts poll first: a second call on every reply).
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200_000))
        self._seq = 0
        self._sent: dict[int, int] = {}  # group -> seq awaited
        self._replied: dict[int, tuple[int, int]] = {}  # group -> (status, version)
        self._buf = bytearray()
        self.oldest_version: int | None = None
        try:
            self._sock.connect(endpoint)
            body = msgpack.packb(
                {"worker_id": worker_id, "groups": [s.handle.to_dict() for s in self.segments]}
            )
            self._sock.sendall(struct.pack("<I", len(body)) + body)
            (n,) = struct.unpack("<I", self._recv_exactly(4))
            answer = self._recv_exactly(min(n, 4096)).decode(errors="replace")
        except BaseException:
            self.close()
            raise
        if answer != "ok":
            self.close()
            raise ProtocolError(f"inference server: {answer}")

    def _recv_exactly(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        if self.spin_s and len(self._buf) < n:
            self._sock.setblocking(False)
            deadline = time.perf_counter() + self.spin_s
            try:
                while len(self._buf) < n and time.perf_counter() < deadline:
                    try:
                        self._buf += self._sock.recv(256)
                    except BlockingIOError:
                        pass
            finally:
                self._sock.setblocking(True)
        while len(self._buf) < n:
            try:
                data = self._sock.recv(256)
            except (BlockingIOError, TimeoutError, InterruptedError):  # 200 ms without a word
                data = None
            if data == b"":
                raise ConnectionError("the inference server closed the channel")
            if data:
                self._buf += data
                continue
            if self.should_stop():
                raise InterruptedError("worker stopping")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no answer from the inference server within {self.timeout_s:.0f} s"
                )
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def request(self, group: int, kind: int = KIND_ACT, reset: bool = False, reward: bool = False):
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        flags = (FLAG_RESET if reset else 0) | (FLAG_REWARD if reward else 0)
        self._sent[group] = self._seq
        self._sock.sendall(REQUEST.pack(kind, group, flags, self._seq))

    def end(self) -> None:
        """This batch's requests are over (the server stops waiting for ours)."""
        self._sock.sendall(REQUEST.pack(KIND_END, 0, 0, 0))

    def wait(self, group: int) -> int:
        """Block until group's reply; returns its policy version."""
        while group not in self._replied:
            kind, g, status, seq, version = REPLY.unpack(self._recv_exactly(REPLY.size))
            if self._sent.get(g) == seq:
                self._replied[g] = (status, version)
        status, version = self._replied.pop(group)
        del self._sent[group]
        if status != STATUS_OK:
            raise RuntimeError("the inference server could not answer this worker's request")
        if self.oldest_version is None or version < self.oldest_version:
            self.oldest_version = version
        return version

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for s in self.segments:
            s.release()
        self.segments = []
