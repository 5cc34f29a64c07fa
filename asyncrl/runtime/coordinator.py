"""The coordinator: one asyncio loop (in a thread of the training process) that owns the workers.

Owns: registering workers (local ones it starts itself, remote ones that connect), their
heartbeats and deaths, routing sample requests and batches, broadcasting parameters with a
version number, and central inference (batched ACT_REQUESTs) in the central/alternating modes.
It never sees a loss; the sampler in ``asyncrl/samplers/runtime.py`` turns its batches into
Samples for the training loop.

ZeroMQ pattern: ROUTER (here) / DEALER (workers), the guide's asynchronous client/server, with
"Paranoid Pirate" heartbeating both ways: each side sends HEARTBEAT every ``heartbeat_s``; a
worker silent for ``worker_timeout_s`` (or whose local process exited) is declared dead, its
in-flight batch is dropped and re-requested from its replacement (local workers are restarted
in the same slot) or left out of the batch (remote workers). Local workers connect over ipc
without keys; remote workers connect to ``bind`` over TCP, with CURVE when a key directory is
given (an unknown key is refused by the ZAP handler and logged; a peer without CURVE or with
another server key fails the handshake, which a socket monitor counts and logs).
Local workers run in their own session (process group), so a terminal's Ctrl-C reaches the
training process only, which then stops them; they exit by themselves if it dies.

Structured concurrency: every task belongs to the loop's task set and is cancelled on stop();
sockets have timeouts (see transport.SocketOptions); stop() sends STOP, waits, then kills.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from asyncrl.data import example_schema, namedarraytuple, tree_map
from asyncrl.runtime.protocol import Header, MsgType, ProtocolError, VersionMismatch
from asyncrl.runtime.supervision import RestartPolicy
from asyncrl.runtime.transport import (
    PeerUnreachable,
    ShmReceiver,
    SocketOptions,
    bound_endpoint,
    choose_path,
    install_event_loop,
    recv_from,
    release_header,
    router,
    send_to,
)

log = logging.getLogger("asyncrl.coordinator")

ActReply = namedarraytuple("ActReply", ["action", "agent_info"])
Params = None  # namedarraytuple classes are made per parameter count


class RuntimeError_(RuntimeError):
    """The runtime cannot go on (no workers, a worker keeps failing); one line for the user."""


@dataclass
class WorkerRecord:
    peer: bytes
    local: bool
    slot: int  # local slot index, -1 for remote workers
    env_offset: int
    num_envs: int
    path: str
    socket_name: str  # "local" | "remote"
    pid: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    steps_per_s: float = 0.0
    steps: int = 0
    alive: bool = True
    host: str = ""
    misses: int = 0  # rounds in a row this (remote) worker was too late for
    delivered: int = 0  # batches it delivered
    since: float = field(default_factory=time.monotonic)  # registered at
    requests: int = 0  # batches asked of it (all but an owed one were delivered)


@dataclass
class RemoteLimits:
    """What remote peers may make the coordinator hold (sampler.max_remote_* settings)."""

    max_workers: int = 32  # remote workers registered at once
    max_envs: int = 1024  # envs of all remote workers together
    max_envs_per_worker: int = 256  # envs one remote worker may ask for
    grace_s: float = 5.0  # a remote batch later than max(grace_s, 2x the round so far) ...
    misses: int = 3  # ... is left out of the round; this many misses in a row drop the worker


REMOTE_RECV_HWM = 8  # messages queued per remote peer (a worker has ~3 in flight)
DROP_LOG_PERIOD_S = 10.0  # a (peer, reason) pair is logged at most this often

# Identities of the workers this coordinator starts itself; never accepted from the network.
LOCAL_ID_PREFIX = b"local-"


@dataclass
class Delivery:
    worker: WorkerRecord
    tree: Any  # WorkerBatch view (valid during the deliver callback only)
    meta: dict
    final: list  # [(t, b_local, obs)]


class Coordinator:
    """Runs the runtime's event loop in a background thread; call its blocking methods from the
    training loop. ``config_dict`` is ``TrainConfig.to_dict()`` (what workers rebuild)."""

    def __init__(
        self,
        config_dict: dict,
        *,
        mode: str,
        horizon: int,
        local_workers: int,
        envs_per_worker: int,
        bind: str = "",
        keys: str = "",
        insecure: bool = False,
        heartbeat_s: float = 1.0,
        worker_timeout_s: float = 5.0,
        torch_threads: int = 1,
        info_example: Any = None,
        allow_remote_sizes: bool = True,
        run_id: str | None = None,
        worker_log_level: str = "WARNING",
        restart_policy: RestartPolicy | None = None,
        limits: RemoteLimits | None = None,
        remote_max_message_bytes: int = 0,
    ):
        self.config_dict = config_dict
        self.mode, self.horizon = mode, horizon
        self.local_workers, self.envs_per_worker = local_workers, envs_per_worker
        self.bind, self.keys = bind, keys
        from asyncrl.runtime.auth import check_bind_security

        refusal = check_bind_security(bind, keys, insecure)
        if refusal:
            raise RuntimeError_(refusal)
        if bind and not keys and insecure:
            log.warning("remote workers join %s WITHOUT authentication (--insecure)", bind)
        self.heartbeat_s, self.worker_timeout_s = heartbeat_s, worker_timeout_s
        self.limits = limits or RemoteLimits()
        # Largest message a remote peer may send (libzmq drops a peer sending a bigger frame):
        # the run's largest legitimate batch, so a hostile peer cannot make us buffer more.
        self.remote_max_message_bytes = remote_max_message_bytes
        self.torch_threads = torch_threads
        self.info_schema = example_schema(info_example) if info_example is not None else None
        self.allow_remote_sizes = allow_remote_sizes
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.worker_log_level = worker_log_level
        self.workers: dict[bytes, WorkerRecord] = {}
        self.processes: dict[int, subprocess.Popen] = {}
        self.restarts: dict[int, int] = {}
        self.restart_policy = restart_policy or RestartPolicy()
        self._restart_timers: dict[int, asyncio.TimerHandle] = {}
        # Set (on the loop) when a local slot is given up: the run cannot sample any more.
        self.failure: RuntimeError_ | None = None
        self.lost_batches = 0
        self.missed_batches = 0  # remote batches left out of a round for being late
        self._last_round_s = 0.0  # how long the last round that delivered took
        self.dropped_messages = 0
        self._drop_log: dict[tuple, list] = {}  # (peer, kind) -> [last logged at, not logged]
        self.refused_workers = 0
        self._remote_offset = local_workers * envs_per_worker
        self._remote_serial = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self._registered = None  # asyncio.Condition, made in the loop
        self._itr: int | None = None
        self._itr_expected: set[bytes] = set()
        self._itr_slots_pending: set[int] = set()
        self._itr_done: asyncio.Event | None = None
        self._itr_request: tuple | None = None
        self._deliver: Callable[[Delivery], None] | None = None
        self._finals: dict[bytes, list] = {}
        self._agent = None
        self._act_queue: asyncio.Queue | None = None
        self._stopping = False
        self.local_endpoint = ""
        self.remote_endpoint = ""
        self._ipc_dir: str | None = None
        self._authenticator = None

    # ------------------------------------------------------------------ life cycle (caller)
    def start(self, timeout: float = 30.0) -> None:
        # Central inference runs the agent on the loop's thread. torch's intra-op thread count
        # is per thread (OpenMP's setting is thread-local): a new thread would use one thread
        # per core whatever the caller set, and on a busy machine each tiny forward pass then
        # costs milliseconds of spinning. Give the loop thread the caller's setting.
        torch = sys.modules.get("torch")
        self._inference_threads = torch.get_num_threads() if torch is not None else 0
        self._thread = threading.Thread(
            target=self._thread_main, name="asyncrl-coordinator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError_("the coordinator's event loop did not start")
        if self._start_error is not None:
            raise self._start_error
        for slot in range(self.local_workers):
            self._spawn_local(slot)

    def _thread_main(self) -> None:
        if self._inference_threads:
            sys.modules["torch"].set_num_threads(self._inference_threads)
        install_event_loop()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._start_error = e if isinstance(e, Exception) else RuntimeError_(str(e))
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._teardown())
            loop.close()

    def call(self, coro, timeout: float | None = None):
        """Run ``coro`` on the coordinator's loop from another thread and wait for its result."""
        if self._loop is None:
            raise RuntimeError_("coordinator not started")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """STOP every worker, wait for local processes (kill stragglers), close the sockets."""
        if self._loop is None or self._stopping:
            self._reap(0)
            return
        self._stopping = True  # from now on no worker is restarted
        try:
            try:
                self.call(self._broadcast_stop(), timeout=timeout)
            except Exception:  # noqa: BLE001 - best effort; processes are killed below
                pass
            self._reap(timeout)
            if self._loop.is_running():
                self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout)
            self._reap(1.0)  # a replacement started on the loop while the first reap ran
        finally:
            self._remove_ipc_dir()

    def _remove_ipc_dir(self) -> None:
        if self._ipc_dir is not None:
            for p in Path(self._ipc_dir).glob("*"):
                p.unlink(missing_ok=True)
            try:
                os.rmdir(self._ipc_dir)
            except OSError:
                pass

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in list(self.processes.values()):
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.processes.clear()

    # ------------------------------------------------------------------ setup / teardown (loop)
    async def _setup(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.shm = ShmReceiver()
        self._registered = asyncio.Condition()
        self._act_queue = asyncio.Queue()
        options = SocketOptions(send_timeout_s=10.0, recv_timeout_s=None)
        if os.name == "posix":
            self._ipc_dir = tempfile.mkdtemp(prefix="asyncrl-")
            local_bind = f"ipc://{self._ipc_dir}/coordinator.sock"
        else:  # pragma: no cover - no ipc transport on Windows
            local_bind = "tcp://127.0.0.1:*"
        self.local_sock = router(self.ctx, local_bind, options)
        self.local_endpoint = bound_endpoint(self.local_sock)
        self.remote_sock = None
        if self.bind:
            curve = None
            if self.keys:
                from asyncrl.runtime.auth import ServerCurve, start_authenticator

                key_dir = Path(self.keys)
                secret_file = key_dir / "server.key_secret"
                if not secret_file.exists() or not (key_dir / "authorized").is_dir():
                    raise RuntimeError_(
                        f"key directory {self.keys!r} lacks server.key_secret or "
                        "authorized/ (make one with `asyncrl keygen DIR`)"
                    )
                self._authenticator = start_authenticator(self.ctx, key_dir / "authorized")
                curve = ServerCurve(secret_file, self._authenticator)
            # A remote peer's messages wait in a short queue (libzmq stops reading its socket
            # when it is full): what one peer can make this process buffer is about
            # (REMOTE_RECV_HWM + 1) messages of at most remote_max_message_bytes each.
            remote_options = dataclasses.replace(options, recv_hwm=REMOTE_RECV_HWM)
            if self.remote_max_message_bytes > 0:
                remote_options = dataclasses.replace(
                    remote_options, max_message_bytes=self.remote_max_message_bytes
                )
            try:
                self.remote_sock = router(self.ctx, self.bind, remote_options, curve=curve)
            except zmq.ZMQError as e:
                raise RuntimeError_(f"cannot bind {self.bind!r}: {e}") from None
            self.remote_endpoint = bound_endpoint(self.remote_sock)
        self._spawn_task(self._reader(self.local_sock, "local"))
        if self.remote_sock is not None:
            self._spawn_task(self._reader(self.remote_sock, "remote"))
            if self._authenticator is not None:
                self._spawn_task(self._watch_handshakes(self.remote_sock))
        self._spawn_task(self._monitor())
        self._spawn_task(self._inference())

    async def _watch_handshakes(self, sock) -> None:
        """Count (and log) connections refused during the CURVE handshake. The ZAP handler
        logs an unknown key itself; a peer without CURVE or with the wrong server key fails
        before ZAP is asked, and only this monitor sees it."""
        from zmq.utils.monitor import parse_monitor_message

        events = (
            zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        monitor = sock.get_monitor_socket(events)
        last_logged = -1e9
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                self.refused_workers += 1
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    continue  # logged by the ZAP handler, with the key
                now = time.monotonic()
                if now - last_logged >= 60.0:  # a peer retrying is logged once a minute
                    last_logged = now
                    log.warning(
                        "refused a connection to %s: CURVE handshake failed (a worker without "
                        "keys, or with another coordinator's server.key)",
                        self.remote_endpoint,
                    )
        finally:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            monitor.close(linger=0)

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            log.error("coordinator task failed: %r", task.exception())

    async def _teardown(self) -> None:
        for handle in self._restart_timers.values():
            handle.cancel()
        self._restart_timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.shm.close()
        if self._authenticator is not None:
            try:
                self._authenticator.stop()
            except Exception:  # noqa: BLE001
                pass
        for sock in (self.local_sock, self.remote_sock):
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()

    # ------------------------------------------------------------------ local processes
    def _spawn_local(self, slot: int) -> None:
        """Start local worker ``slot`` as a fresh interpreter (spawn semantics, no fork)."""
        cmd = [
            sys.executable,
            # A worker's segments are registered with its own resource tracker, which unlinks
            # them if the worker is killed (it cannot): that cleanup is by design here, so its
            # "leaked shared_memory objects" warning is not for the user (-W options pass on to
            # the tracker process; the filter matches warnings issued by that module only).
            "-W",
            "ignore::UserWarning:multiprocessing.resource_tracker",
            "-m",
            "workers.sampler",
            "--connect",
            self.local_endpoint,
            "--slot",
            str(slot),
            "--id",
            f"local-{slot}-{self.restarts.get(slot, 0)}",
            "--parent-pid",
            str(os.getpid()),
            "--heartbeat",
            str(self.heartbeat_s),
            "--dead-after",
            str(max(10.0, 6 * self.worker_timeout_s)),
            "--log-level",
            self.worker_log_level,
        ]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.torch_threads))
        # Make the workers package importable however this process was started.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # Its own session (process group): Ctrl-C in a terminal signals the whole foreground
        # group, and workers that quit on their own mid-batch would be restarted while the
        # run is stopping. The training process stops them (STOP, then kill); they also exit
        # when it dies (--parent-pid).
        if os.name == "posix":
            group = {"start_new_session": True}
        else:  # pragma: no cover - Windows
            group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self.processes[slot] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, **group)

    def kill_local(self, slot: int, sig: int = 9) -> int:
        """Send ``sig`` to local worker ``slot`` (tests and fault drills); returns its pid.
        ProcessLookupError if none runs in that slot now (waiting for a restart, given up)."""
        proc = self.processes.get(slot)
        if proc is None or proc.returncode is not None or proc.poll() is not None:
            raise ProcessLookupError(f"no local worker runs in slot {slot} now")
        os.kill(proc.pid, sig)
        return proc.pid

    def _restart(self, slot: int, why: str, productive: bool) -> None:
        """The worker of local ``slot`` is dead (process gone): start its replacement now or
        after a back-off, or give up on the slot (the run then ends, see ``failure``)."""
        self.restarts[slot] = self.restarts.get(slot, 0) + 1
        if self._stopping or self.failure is not None or slot in self._restart_timers:
            return
        policy = self.restart_policy
        now = time.monotonic()
        delay = policy.on_death(slot, now, productive)
        if delay is None:
            self._give_up(slot, why, policy.failures(slot, now))
        elif delay <= 0:
            self._spawn_local(slot)
        else:
            log.warning(
                "local worker %d died without delivering a batch (%s); restarting it in %.1f s",
                slot,
                why,
                delay,
            )
            self._restart_timers[slot] = self._loop.call_later(delay, self._respawn, slot)

    def _respawn(self, slot: int) -> None:
        self._restart_timers.pop(slot, None)
        if not self._stopping and self.failure is None:
            self._spawn_local(slot)

    def _give_up(self, slot: int, why: str, failures: int) -> None:
        policy = self.restart_policy
        message = (
            f"local worker {slot} failed {failures} times within {policy.window_s:.0f} s without "
            f"delivering a batch (last: {why}); the run cannot sample (see train.log)"
        )
        log.error("%s", message)
        self.failure = RuntimeError_(message)
        self.processes.pop(slot, None)
        self._itr_slots_pending.discard(slot)
        # End the round now (the sampler raises ``failure``), and wake a wait for workers.
        if self._itr_done is not None:
            self._itr_done.set()
        if self._registered is not None:
            self._spawn_task(self._notify_registered())

    async def _notify_registered(self) -> None:
        async with self._registered:
            self._registered.notify_all()

    # ------------------------------------------------------------------ messages
    async def _reader(self, sock, name: str) -> None:
        while True:
            try:
                peer, header, tree = await recv_from(sock, shm=self.shm)
            except VersionMismatch as e:
                self.dropped_messages += 1
                self._log_drop(e.peer, "version", "refused peer %r: %s", e.peer, e.reason)
                await self._try_send(
                    sock,
                    e.peer,
                    Header(MsgType.REFUSED, run_id=self.run_id, meta={"reason": e.reason}),
                )
                continue
            except ProtocolError as e:
                self.dropped_messages += 1
                self._log_drop(
                    e.peer, e.reason[:24], "dropped a message from %r: %s", e.peer, e.reason
                )
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a socket hiccup must not kill the loop
                self.dropped_messages += 1
                self._log_drop(None, name, "receive failed on the %s socket: %r", name, e)
                await asyncio.sleep(0.01)
                continue
            try:
                await self._handle(sock, name, peer, header, tree)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - bad content from one peer: drop and log
                self.dropped_messages += 1
                self._log_drop(
                    peer,
                    f"{header.type.name}:{type(e).__name__}",
                    "dropped %s from %r: %s: %s",
                    header.type.name,
                    peer,
                    type(e).__name__,
                    str(e)[:200],
                )

    def _log_drop(self, peer: bytes | None, kind: str, fmt: str, *args: Any) -> None:
        """Log a dropped or refused message, at most once per ``DROP_LOG_PERIOD_S`` for each
        (peer, kind); the next line says how many were not logged meanwhile. (A peer sending
        100,000 bad messages writes a handful of lines; the count is in the progress line.)"""
        key = (peer[:64] if peer else None, kind)
        now = time.monotonic()
        entry = self._drop_log.get(key)
        if entry is not None and now - entry[0] < DROP_LOG_PERIOD_S:
            entry[1] += 1
            return
        suppressed = entry[1] if entry is not None else 0
        if entry is None and len(self._drop_log) >= 1024:  # bounded: forget the oldest key
            self._drop_log.pop(next(iter(self._drop_log)))
        self._drop_log[key] = [now, 0]
        if suppressed:
            fmt += " (and %d more like it not logged)"
            args = (*args, suppressed)
        log.warning(fmt, *args)

    async def _try_send(self, sock, peer: bytes, header: Header, tree: Any = None) -> bool:
        try:
            await send_to(sock, peer, header, tree, timeout=5.0)
            return True
        except (PeerUnreachable, TimeoutError, zmq.ZMQError) as e:
            log.info("could not send %s to %r: %s", header.type.name, peer, e)
            return False

    async def _handle(self, sock, name: str, peer: bytes, header: Header, tree: Any) -> None:
        t = header.type
        if t == MsgType.REGISTER:
            await self._on_register(sock, name, peer, header)
            return
        worker = self.workers.get(peer)
        if worker is not None and worker.socket_name != name:
            worker = None  # a registered identity spoken on the other socket: not that worker
        if worker is None:
            self.dropped_messages += 1
            self._log_drop(
                peer, "unregistered", "dropped %s from unregistered peer %r", t.name, peer
            )
            if t == MsgType.SAMPLES and header.slot is not None:
                await self._try_send(sock, peer, release_header(header))
            await self._try_send(
                sock,
                peer,
                Header(MsgType.REFUSED, run_id=self.run_id, meta={"reason": "not registered"}),
            )
            return
        if header.run_id != self.run_id:
            raise ProtocolError(f"run id {header.run_id!r} is not this run's")
        worker.last_seen = time.monotonic()
        if t == MsgType.HEARTBEAT:
            worker.steps_per_s = float(header.meta.get("steps_per_s", 0.0) or 0.0)
            worker.steps = int(header.meta.get("steps", 0) or 0)
        elif t == MsgType.METRICS:
            final = header.meta.get("final", [])
            if tree is None or len(final) != _first_dim(tree):
                raise ProtocolError("METRICS: final observations and indices differ")
            obs = [tree_map(lambda x, i=i: np.array(x[i]), tree) for i in range(len(final))]
            self._finals[peer] = [(int(tt), int(b), o) for (tt, b), o in zip(final, obs)]
        elif t == MsgType.SAMPLES:
            try:
                self._on_samples(worker, header, tree)
            finally:
                if header.slot is not None:
                    await self._try_send(sock, peer, release_header(header))
        elif t == MsgType.ACT_REQUEST:
            await self._act_queue.put((sock, worker, header, tree))
        elif t == MsgType.BYE:
            self._declare_dead(worker, "said goodbye")
        else:
            raise ProtocolError(f"unexpected message type {t.name} from a worker")

    async def _refuse(self, sock, peer: bytes, reason: str) -> None:
        """Answer a REGISTER that cannot be accepted with REFUSED and its reason (logged at a
        limited rate: a peer retrying in a loop must not flood the log)."""
        self.refused_workers += 1
        self._log_drop(peer, "refused", "refused worker %r: %s", peer, reason)
        await self._try_send(
            sock, peer, Header(MsgType.REFUSED, run_id=self.run_id, meta={"reason": reason})
        )

    def _remote_register_refusal(self, peer: bytes, meta: dict) -> str:
        """'' if a remote REGISTER may be accepted, else why not (one line for the worker)."""
        if not self.allow_remote_sizes:
            return "this run takes local workers only (off-policy replay needs a fixed env count)"
        if self.mode != "parallel":
            return f"remote workers join parallel-mode runs only (this run is {self.mode})"
        if peer.startswith(LOCAL_ID_PREFIX):
            return f"identity {peer[:64]!r} is reserved for this coordinator's local workers"
        existing = self.workers.get(peer)
        if existing is not None and existing.socket_name != "remote":
            return f"identity {peer[:64]!r} is taken"
        envs, pid, probe = meta.get("envs", 0), meta.get("pid", 0), meta.get("probe")
        limit = self.limits.max_envs_per_worker
        if type(envs) is not int or not 0 <= envs <= limit:
            return f"envs must be an integer in 0..{limit} (0: the run's default), got {envs!r}"[
                :200
            ]
        if type(pid) is not int or pid < 0:
            return f"pid must be a non-negative integer, got {pid!r}"[:200]
        if probe is not None and type(probe) is not dict:
            return "probe must be a map (asyncrl.runtime.LocalityProbe)"
        remote = [w for w in self.workers.values() if not w.local and w.peer != peer]
        if len(remote) >= self.limits.max_workers:
            return (
                f"this run has its maximum of {self.limits.max_workers} remote workers "
                "(sampler.max_remote_workers)"
            )
        n_envs = envs or self.envs_per_worker
        held = sum(w.num_envs for w in remote)
        if held + n_envs > self.limits.max_envs:
            return (
                f"{n_envs} more envs would exceed the run's {self.limits.max_envs} remote envs "
                f"({held} taken; sampler.max_remote_envs)"
            )
        return ""

    async def _on_register(self, sock, name: str, peer: bytes, header: Header) -> None:
        meta = header.meta if isinstance(header.meta, dict) else {}
        if self._stopping:
            await self._refuse(sock, peer, "run is stopping")
            return
        if name == "local":
            slot = meta.get("slot", -1)
            if type(slot) is not int or not 0 <= slot < self.local_workers:
                await self._refuse(sock, peer, f"bad local slot {slot!r}"[:100])
                return
            offset, n_envs = slot * self.envs_per_worker, self.envs_per_worker
            # A replacement takes over its slot: forget the old record.
            for other in [w for w in self.workers.values() if w.local and w.slot == slot]:
                self._forget(other)
        else:
            reason = self._remote_register_refusal(peer, meta)
            if reason:
                await self._refuse(sock, peer, reason)
                return
            old = self.workers.get(peer)
            if old is not None:  # the same peer registering again: its old record goes
                self._forget(old)
            slot = -1
            n_envs = meta.get("envs", 0) or self.envs_per_worker
            offset = self._remote_offset
            self._remote_offset += n_envs
        path = choose_path(meta.get("probe"))
        if path == "shm":
            self.shm.allow(peer)
        record = WorkerRecord(
            peer=peer,
            local=(name == "local"),
            slot=slot,
            env_offset=offset,
            num_envs=n_envs,
            path=path,
            socket_name=name,
            pid=int(meta.get("pid", 0) or 0),
            host=str((meta.get("probe") or {}).get("hostname", "")),
        )
        self.workers[peer] = record
        reply = Header(
            MsgType.REGISTERED,
            run_id=self.run_id,
            worker_id=peer.decode(errors="replace"),
            meta={
                "config": self.config_dict,
                "env_offset": offset,
                "num_envs": n_envs,
                "horizon": self.horizon,
                "mode": self.mode,
                "path": path,
                "heartbeat_s": self.heartbeat_s,
                "torch_threads": self.torch_threads,
                "info_schema": self.info_schema,
                "seed_offset": 100_003 * self.restarts.get(slot, 0) if slot >= 0 else 0,
            },
        )
        if not await self._try_send(sock, peer, reply):
            self._forget(record)
            return
        log.info(
            "worker %r registered (%s, envs %d..%d, %s)",
            peer,
            name,
            offset,
            offset + n_envs - 1,
            path,
        )
        async with self._registered:
            self._registered.notify_all()
        # A replacement of a worker whose batch is still owed picks up the request.
        if self._itr is not None and record.local and record.slot in self._itr_slots_pending:
            self._itr_expected.add(peer)
            await self._send_request(record)

    def _forget(self, worker: WorkerRecord) -> None:
        self.workers.pop(worker.peer, None)
        self._finals.pop(worker.peer, None)
        self.shm.forget(worker.peer)

    def _declare_dead(self, worker: WorkerRecord, why: str) -> None:
        if not worker.alive:
            return
        worker.alive = False
        owed = self._itr is not None and worker.peer in self._itr_expected
        (log.info if self._stopping or why == "said goodbye" and not owed else log.warning)(
            "worker %r is gone (%s)%s", worker.peer, why, "; its batch is lost" if owed else ""
        )
        if owed:
            self.lost_batches += 1
            self._itr_expected.discard(worker.peer)
        self._forget(worker)
        if worker.local and not self._stopping:
            proc = self.processes.get(worker.slot)
            if proc is not None and proc.poll() is None:
                proc.kill()  # a stalled local worker: make sure it is gone before replacing it
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            delivered = worker.delivered
            uptime = time.monotonic() - worker.since
            self._restart(worker.slot, why, self.restart_policy.productive(delivered, uptime))
        elif owed:
            self._check_itr_done()

    async def _monitor(self) -> None:
        """Heartbeats out, deaths in: the Paranoid Pirate's two timers."""
        last_beat = 0.0
        while True:
            now = time.monotonic()
            for worker in list(self.workers.values()):
                proc = self.processes.get(worker.slot) if worker.local else None
                if proc is not None and proc.poll() is not None:
                    self._declare_dead(worker, f"process exited with {proc.returncode}")
                elif now - worker.last_seen > self.worker_timeout_s:
                    self._declare_dead(worker, f"silent for {now - worker.last_seen:.1f} s")
            # Local processes that died before registering.
            registered_slots = {w.slot for w in self.workers.values() if w.local}
            for slot, proc in list(self.processes.items()):
                if (
                    slot not in registered_slots
                    and slot not in self._restart_timers  # dead, its replacement is due
                    and proc.poll() is not None
                    and not self._stopping
                ):
                    log.warning(
                        "local worker %d exited with %s before registering", slot, proc.returncode
                    )
                    self._restart(slot, f"exited with {proc.returncode} before registering", False)
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                for worker in list(self.workers.values()):
                    sock = self.local_sock if worker.socket_name == "local" else self.remote_sock
                    await self._try_send(
                        sock, worker.peer, Header(MsgType.HEARTBEAT, run_id=self.run_id)
                    )
            await asyncio.sleep(min(0.2, self.heartbeat_s / 2))

    async def _broadcast_stop(self) -> None:
        for worker in list(self.workers.values()):
            sock = self.local_sock if worker.socket_name == "local" else self.remote_sock
            await self._try_send(sock, worker.peer, Header(MsgType.STOP, run_id=self.run_id))

    # ------------------------------------------------------------------ batches
    async def wait_for_workers(self, count: int, timeout: float) -> int:
        async with self._registered:
            try:
                await asyncio.wait_for(
                    self._registered.wait_for(
                        lambda: len(self.alive_workers()) >= count or self.failure is not None
                    ),
                    timeout,
                )
            except asyncio.TimeoutError:
                pass
        if self.failure is not None:
            raise self.failure
        return len(self.alive_workers())

    def alive_workers(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.alive]

    async def _send_request(self, worker: WorkerRecord) -> None:
        itr, names, params, version, acting = self._itr_request
        worker.requests += 1
        sock = self.local_sock if worker.socket_name == "local" else self.remote_sock
        meta = {"sample": itr, "acting": acting}
        if params is not None:
            meta["names"] = names
        ok = await self._try_send(
            sock,
            worker.peer,
            Header(MsgType.PARAMS, run_id=self.run_id, policy_version=version, meta=meta),
            params,
        )
        if not ok:
            self._declare_dead(worker, "unreachable")

    async def sample(
        self,
        itr: int,
        names: list[str] | None,
        params: Any,
        policy_version: int,
        deliver: Callable[[Delivery], None],
        min_workers: int,
        timeout: float,
        acting: dict | None = None,
    ) -> int:
        """Ask every registered worker for one batch; ``deliver`` is called (on this loop) for
        each batch as it arrives. Returns the number of batches delivered.

        Local workers are waited for (a dead one is replaced and asked again). A remote worker
        costs the round a bounded wait: once the local workers are done (or, with none, once
        some batch arrived or ``timeout / 4`` passed), a remote batch that has not come within
        ``max(limits.grace_s, 2 x the round so far)`` is left out of the round (its worker
        missed it); ``limits.misses`` misses in a row drop that worker. A round with nothing
        delivered is asked again of whoever is registered. ``RuntimeError_`` (one line) when
        fewer than ``min_workers`` are registered for ``timeout`` seconds, or local workers
        delivered nothing for that long."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.alive_workers()) < min_workers:
                left = max(deadline - time.monotonic(), 0.0)
                n = await self.wait_for_workers(min_workers, left)
                if n < min_workers:
                    raise RuntimeError_(
                        f"only {n} of {min_workers} workers registered within {timeout:.0f} s"
                    )
            delivered = await self._round(itr, names, params, policy_version, deliver, acting)
            if self.failure is not None:  # a local slot was given up: the run ends
                raise self.failure
            if delivered:
                return delivered
            if time.monotonic() > deadline:
                raise RuntimeError_(
                    f"no batch within {timeout:.0f} s (workers {len(self.alive_workers())})"
                )

    async def _round(self, itr, names, params, policy_version, deliver, acting) -> int:
        self._itr = itr
        self._itr_request = (itr, names, params, policy_version, acting or {})
        self._deliver = deliver
        self._delivered = 0
        self._itr_done = asyncio.Event()
        workers = self.alive_workers()
        self._itr_expected = {w.peer for w in workers}
        self._itr_slots_pending = {w.slot for w in workers if w.local}
        # Local slots whose worker is restarting right now are owed too.
        self._itr_slots_pending |= {
            s
            for s in range(self.local_workers)
            if s in self.processes and s not in {w.slot for w in workers if w.local}
        }
        for w in workers:
            await self._send_request(w)
        started = time.monotonic()
        local_done_at: float | None = None
        while not self._itr_done.is_set():
            self._check_itr_done()
            try:
                await asyncio.wait_for(self._itr_done.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            if self._itr_done.is_set():
                break
            now = time.monotonic()
            locals_pending = bool(self._itr_slots_pending) or any(
                self.workers[p].local for p in self._itr_expected if p in self.workers
            )
            if locals_pending:
                continue
            if local_done_at is None:
                if self.local_workers or self._delivered or now - started > self._remote_wait_s:
                    local_done_at = now
                else:
                    continue
            grace = max(self.limits.grace_s, 2.0 * (local_done_at - started))
            if now - local_done_at > grace:
                self._miss_remote(grace)
        self._itr = None
        if self._delivered:
            self._last_round_s = time.monotonic() - started
        return self._delivered

    @property
    def _remote_wait_s(self) -> float:
        """With no local workers and no batch yet: how long remote workers get at most (four
        grace periods, or twice the last round that delivered)."""
        return max(4.0 * self.limits.grace_s, 2.0 * self._last_round_s)

    def _miss_remote(self, waited: float) -> None:
        """Leave the remote workers still owing this round's batch out of it."""
        for peer in list(self._itr_expected):
            worker = self.workers.get(peer)
            self._itr_expected.discard(peer)
            if worker is None or worker.local:
                continue
            worker.misses += 1
            self.missed_batches += 1
            self._log_drop(
                peer,
                "late",
                "remote worker %r is %.1f s late; its columns are left out of this batch "
                "(%d of %d misses before it is dropped)",
                peer,
                waited,
                worker.misses,
                self.limits.misses,
            )
            if worker.misses >= self.limits.misses:
                self._declare_dead(worker, f"missed {worker.misses} batches in a row")
        self._check_itr_done()

    def _check_itr_done(self) -> None:
        if self._itr_done is not None and not self._itr_expected and not self._itr_slots_pending:
            self._itr_done.set()

    def _on_samples(self, worker: WorkerRecord, header: Header, tree: Any) -> None:
        if header.seq != self._itr or worker.peer not in self._itr_expected:
            self.dropped_messages += 1
            log.info("dropped a stale batch %d from %r", header.seq, worker.peer)
            return
        if tree is None:
            raise ProtocolError("SAMPLES without arrays")
        final = self._finals.pop(worker.peer, [])
        meta = header.meta if isinstance(header.meta, dict) else {}
        try:
            self._deliver(Delivery(worker, tree, meta, final))
        except Exception as e:  # noqa: BLE001 - a batch that does not fit: drop it, not the run
            self.dropped_messages += 1
            log.warning(
                "dropped a malformed batch from %r: %s: %s", worker.peer, type(e).__name__, e
            )
            # Its batch is lost; a local worker is replaced (and asked again), a remote one
            # is forgotten (told so if it speaks again) and the batch goes on without it.
            self._declare_dead(worker, "sent a malformed batch")
            return
        self._delivered += 1
        worker.delivered += 1
        worker.misses = 0
        self._itr_expected.discard(worker.peer)
        self._itr_slots_pending.discard(worker.slot)
        self._check_itr_done()

    # ------------------------------------------------------------------ central inference
    def serve(self, agent) -> None:
        """Central modes: answer ACT_REQUESTs with ``agent`` (the learner's own object)."""
        self._agent = agent

    async def _inference(self) -> None:
        """Greedy batching: take every request waiting, act on all of them in one call."""
        while True:
            first = await self._act_queue.get()
            batch = [first]
            while not self._act_queue.empty():
                batch.append(self._act_queue.get_nowait())
            for what in ("act", "value"):
                group = [r for r in batch if r[2].meta.get("what", "act") == what]
                if group:
                    try:
                        await self._answer(group, what)
                    except Exception as e:  # noqa: BLE001 - one bad request must not stop inference
                        self.dropped_messages += len(group)
                        log.warning(
                            "inference failed for %d requests: %s: %s",
                            len(group),
                            type(e).__name__,
                            e,
                        )

    async def _answer(self, group: list, what: str) -> None:
        agent = self._agent
        if agent is None:
            raise RuntimeError_("ACT_REQUEST but no central agent is served")
        obs = [r[3].observation for r in group]
        ids = [np.asarray(r[3].env_ids) for r in group]
        sizes = [len(i) for i in ids]
        all_obs = tree_map(lambda *xs: np.concatenate(xs), *obs) if len(obs) > 1 else obs[0]
        all_ids = np.concatenate(ids)
        if what == "value":
            values = agent.value(all_obs).astype(np.float32)
            parts = np.split(values, np.cumsum(sizes)[:-1])
            infos = [None] * len(group)
        else:
            resets = [getattr(r[3], "reset", None) for r in group]
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
                on_episode_end(mask, all_ids)  # per-env exploration state (DDPG's OU noise)
            action, info = agent.step(all_obs, all_ids)
            parts = np.split(action, np.cumsum(sizes)[:-1])
            if info is None:
                infos = [None] * len(group)
            else:
                bounds = np.cumsum([0, *sizes])
                infos = [info[bounds[i] : bounds[i + 1]] for i in range(len(group))]
        for (sock, worker, header, _), a, inf in zip(group, parts, infos):
            reply = Header(
                MsgType.ACT_REPLY,
                run_id=self.run_id,
                seq=header.seq,
                policy_version=getattr(agent, "policy_version", 0),
            )
            await self._try_send(sock, worker.peer, reply, ActReply(np.ascontiguousarray(a), inf))

    # ------------------------------------------------------------------ status
    def status(self) -> str:
        alive = self.alive_workers()
        rate = sum(w.steps_per_s for w in alive)
        text = f"workers {len(alive)}"
        if alive:
            text += f" ({rate:,.0f} steps/s sampling)"
        if self.lost_batches:
            text += f" lost {self.lost_batches}"
        if self.missed_batches:
            text += f" late {self.missed_batches}"
        if self.dropped_messages:
            text += f" dropped {self.dropped_messages}"
        return text

    def counters(self) -> dict[str, int]:
        """Fault counters for progress.csv: batches lost with a dead worker, remote batches
        left out for being late, messages dropped (malformed, foreign, stale), refused peers."""
        return {
            "lost_batches": self.lost_batches,
            "late_batches": self.missed_batches,
            "dropped_messages": self.dropped_messages,
            "refused_workers": self.refused_workers,
        }


def _first_dim(tree) -> int:
    while isinstance(tree, tuple):
        tree = next(t for t in tree if t is not None)
    return int(np.shape(tree)[0])
