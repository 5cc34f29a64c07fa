"""The coordinator: the runtime's composition root, one asyncio loop (in a thread of the
training process) that owns the workers' sockets and routes their messages to the roles.

Roles, one module each (see docs/architecture.md):
- loop host (``loop.py``): the thread, the loop, the task set, ``call`` for blocking callers;
- launcher (``launcher.py``; Ray actors and Slurm jobs in ``cluster.py``): starts, restarts and
  reaps the worker slots' programs, and the learner process (always local);
- registry (``registry.py``): worker records, which REGISTERs are accepted;
- flow control (``flow.py``): synchronous rounds, or asynchronous credits and learner slots;
- inference server (``inference.py``): central/alternating ACT_REQUESTs, in its own thread;
- the learner link: a third socket on which the learner process (``workers/optimizer.py``,
  asynchronous runs) registers; its messages go to the sampler layer's handler.
This module owns the sockets, dispatching messages to those roles, heartbeats and deaths (the
restart policy in ``supervision.py``), and the fault counters. It never sees a loss; the
sampler in ``asyncrl/samplers/runtime.py`` turns batches into Samples.

ZeroMQ pattern: ROUTER (here) / DEALER (workers), the guide's asynchronous client/server, with
"Paranoid Pirate" heartbeating both ways: each side sends HEARTBEAT every ``heartbeat_s``; a
worker silent for ``worker_timeout_s`` (or whose local process exited) is declared dead, its
in-flight batch is dropped and re-requested from its replacement (local workers are restarted
in the same slot) or left out of the batch (remote workers). Local workers connect over ipc
without keys; remote workers connect to ``bind`` over TCP, with CURVE when a key directory is
given (an unknown key is refused by the ZAP handler and logged; a peer without CURVE or with
another server key fails the handshake, which a socket monitor counts and logs). Workers that a
remote launcher (Ray, Slurm) started take fixed slots like local ones, but join over TCP: at
``bind``, or, without one, at an endpoint bound here for them with per-run CURVE keys (in the
run's temporary directory); their REGISTER carries the run's secret launch token, without which
no TCP peer may claim a slot.
A learner process that exits ends the run (``failure``), it is never restarted.

Structured concurrency: every task belongs to the loop host's task set and is cancelled on
stop(); sockets have timeouts (see transport.SocketOptions); stop() sends STOP, waits, kills.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import logging
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from asyncrl.data import example_schema, tree_map
from asyncrl.runtime.flow import AsyncFlow, Delivery, SyncRounds
from asyncrl.runtime.inference import ActReply, InferenceServer
from asyncrl.runtime.launcher import JoinKeys, Launcher, LauncherError, LocalLauncher
from asyncrl.runtime.loop import LoopHost
from asyncrl.runtime.protocol import Header, MsgType, ProtocolError, VersionMismatch
from asyncrl.runtime.registry import LOCAL_ID_PREFIX, Registry, RemoteLimits, WorkerRecord
from asyncrl.runtime.supervision import RestartPolicy
from asyncrl.runtime.transport import (
    PeerUnreachable,
    ShmReceiver,
    SocketOptions,
    bound_endpoint,
    choose_path,
    recv_from,
    release_header,
    router,
    send_to,
)

log = logging.getLogger("asyncrl.coordinator")

__all__ = [
    "LOCAL_ID_PREFIX",
    "ActReply",
    "Coordinator",
    "Delivery",
    "RemoteLimits",
    "RuntimeError_",
    "WorkerRecord",
]

Params = None  # namedarraytuple classes are made per parameter count


class RuntimeError_(RuntimeError):
    """The runtime cannot go on (no workers, a worker keeps failing, the learner died); one
    line for the user."""


REMOTE_RECV_HWM = 8  # messages queued per remote peer (a worker has ~3 in flight)
DROP_LOG_PERIOD_S = 10.0  # a (peer, reason) pair is logged at most this often
LEARNER = "learner"  # the launcher's key (and ROUTER identity) of the learner process


class Coordinator:
    """Runs the runtime's event loop in a background thread; call its blocking methods from the
    training loop. ``config_dict`` is ``TrainConfig.to_dict()`` (what workers rebuild).

    Asynchronous runs pass ``async_flow=(slots, credits, deliver, complete)`` (see
    ``flow.AsyncFlow``) and ``learner=(meta, on_message)``: the learner process is started and
    answered with ``meta`` at its REGISTER; its later messages go to ``on_message(header,
    tree)`` on the loop."""

    Error = RuntimeError_

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
        async_flow: tuple | None = None,
        learner: tuple | None = None,
        refuse_remote: str = "",
        launcher: Launcher | None = None,
        inference_wait_s: float = 0.001,
        worker_affinity: str = "",
        inference_affinity: str = "",
        inference_spin_s: float = 0.0,
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
        # Why remote workers are turned away ('' if they are welcome).
        self.refuse_remote = refuse_remote or (
            ""
            if allow_remote_sizes
            else "synchronous off-policy runs take local workers only (their replay needs a "
            "fixed env count; asynchronous runs, --async, take remote workers)"
        )
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.worker_log_level = worker_log_level
        self.host = LoopHost("asyncrl-coordinator")
        # The worker slots' launcher; the learner is always a local process (it attaches the
        # training process's shared memory), so a remote launcher gets a local one beside it.
        self.launcher: Launcher = launcher or LocalLauncher(torch_threads)
        self.learner_launcher = (
            LocalLauncher(torch_threads) if self.launcher.remote else self.launcher
        )
        # Proves a TCP REGISTER claiming a slot comes from a program our launcher started (an
        # authorized remote worker has the CURVE key, not this).
        self.launch_token = secrets.token_urlsafe(24)
        self.launch_endpoint = ""  # where launched workers connect (remote launchers)
        self.registry = Registry(self.limits, envs_per_worker)
        self.workers = self.registry.workers  # by ROUTER identity
        self.rounds = SyncRounds(self)
        self.flow: AsyncFlow | SyncRounds = self.rounds
        if async_flow is not None:
            # (slots, credits, deliver, complete[, deliver_remote]): see AsyncFlow
            self.flow = AsyncFlow(self, *async_flow)
        self._learner = learner  # (meta, on_message) or None
        self.learner_registered = False
        self.restarts: dict[int, int] = {}
        self.restart_policy = restart_policy or RestartPolicy()
        self._restart_timers: dict[int, Any] = {}
        # Set (on the loop) when the run cannot go on (a local slot given up, the learner died).
        self.failure: RuntimeError_ | None = None
        self.lost_batches = 0
        self.missed_batches = 0  # remote batches left out of a round for being late
        self.dropped_messages = 0
        self._drop_log: dict[tuple, list] = {}  # (peer, kind) -> [last logged at, not logged]
        self.refused_workers = 0
        self._remote_offset = local_workers * envs_per_worker
        self._remote_serial = itertools.count()
        self._registered = None  # asyncio.Condition, made in the loop
        self._finals: dict[bytes, list] = {}
        self._agent = None
        self.inference: InferenceServer | None = None
        self.inference_endpoint = ""  # the shared-memory inference channel (same-host workers)
        self.inference_wait_s = inference_wait_s
        self.worker_affinity = worker_affinity  # "", "auto" or CPU list: see workers/sampler.py
        self.inference_cpus = tuple(int(c) for c in inference_affinity.split(",") if c)
        self.inference_spin_s = inference_spin_s
        self._params_for_workers: tuple | None = None  # async: (names, params, version)
        self._acting: dict = {}
        self._stopping = False
        self.local_endpoint = ""
        self.remote_endpoint = ""
        self.learner_endpoint = ""
        self._ipc_dir: str | None = None
        self._authenticator = None
        self.local_sock = self.remote_sock = self.learner_sock = None

    # ------------------------------------------------------------------ life cycle (caller)
    def start(self, timeout: float = 30.0) -> None:
        try:
            if self.launcher.remote and self.local_workers:
                self.launcher.prepare(self.local_workers)  # join the cluster, reserve the slots
            self.host.start(self._setup, self._teardown, timeout)
        except RuntimeError_:
            self.launcher.close()
            raise
        except RuntimeError as e:  # LauncherError included
            self.launcher.close()
            raise RuntimeError_(str(e)) from None
        try:
            for slot in range(self.local_workers):
                self._spawn_local(slot)
        except LauncherError as e:
            raise RuntimeError_(str(e)) from None
        if self._learner is not None:
            self.learner_launcher.start(
                LEARNER,
                "learner",
                [
                    "--connect",
                    self.learner_endpoint,
                    "--parent-pid",
                    str(os.getpid()),
                    "--log-level",
                    self.worker_log_level,
                ],
            )

    def call(self, coro, timeout: float | None = None):
        """Run ``coro`` on the coordinator's loop from another thread and wait for its result."""
        if self.host.loop is None:
            coro.close()
            raise RuntimeError_("coordinator not started")
        return self.host.call(coro, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """STOP every worker (and the learner), wait for local processes (kill stragglers),
        close the sockets."""
        if self.host.loop is None or self._stopping:
            for launcher in self._launchers():
                launcher.reap(0)
                launcher.close()
            return
        self._stopping = True  # from now on no worker is restarted
        self.host.stopping = True
        try:
            try:
                self.call(self._broadcast_stop(), timeout=timeout)
            except Exception:  # noqa: BLE001 - best effort; processes are killed below
                pass
            for launcher in self._launchers():
                launcher.reap(timeout)
            self.host.stop(timeout)
            for launcher in self._launchers():  # a replacement started while the first reap ran
                launcher.reap(1.0)
        finally:
            for launcher in self._launchers():
                launcher.close()
            if self.inference is not None:
                self.inference.close()
            self._remove_ipc_dir()

    def _launchers(self) -> list:
        if self.learner_launcher is self.launcher:
            return [self.launcher]
        return [self.launcher, self.learner_launcher]

    def _remove_ipc_dir(self) -> None:
        if self._ipc_dir is not None:  # ours (mkdtemp): sockets and the per-run keys
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    # ------------------------------------------------------------------ setup / teardown (loop)
    async def _setup(self) -> None:
        import asyncio

        self.ctx = zmq.asyncio.Context()
        self.shm = ShmReceiver()
        self._registered = asyncio.Condition()
        options = SocketOptions(send_timeout_s=10.0, recv_timeout_s=None)
        self._ipc_dir = tempfile.mkdtemp(prefix="asyncrl-")  # mode 700: sockets and keys
        if os.name == "posix":
            local_bind = f"ipc://{self._ipc_dir}/coordinator.sock"
            learner_bind = f"ipc://{self._ipc_dir}/learner.sock"
        else:  # pragma: no cover - no ipc transport on Windows
            local_bind = learner_bind = "tcp://127.0.0.1:*"
        self.local_sock = router(self.ctx, local_bind, options)
        self.local_endpoint = bound_endpoint(self.local_sock)
        if self._learner is not None:
            self.learner_sock = router(self.ctx, learner_bind, options)
            self.learner_endpoint = bound_endpoint(self.learner_sock)
        launched = self.launcher.remote and self.local_workers > 0
        if self.bind or launched:
            curve = None
            secret_file, allowed, extra = self._server_keys(launched)
            if secret_file is not None:
                from asyncrl.runtime.auth import ServerCurve, start_authenticator

                self._authenticator = start_authenticator(self.ctx, allowed, extra)
                curve = ServerCurve(secret_file, self._authenticator)
            # A remote peer's messages wait in a short queue (libzmq stops reading its socket
            # when it is full): what one peer can make this process buffer is about
            # (REMOTE_RECV_HWM + 1) messages of at most remote_max_message_bytes each.
            remote_options = dataclasses.replace(options, recv_hwm=REMOTE_RECV_HWM)
            if self.remote_max_message_bytes > 0:
                remote_options = dataclasses.replace(
                    remote_options, max_message_bytes=self.remote_max_message_bytes
                )
            # Without sampler.bind the socket is bound for launched workers only: on loopback
            # when the cluster is this machine, else on the address the cluster reaches us at.
            bind = self.bind or f"tcp://{self.launcher.join_host or '127.0.0.1'}:*"
            try:
                self.remote_sock = router(self.ctx, bind, remote_options, curve=curve)
            except zmq.ZMQError as e:
                raise RuntimeError_(f"cannot bind {bind!r}: {e}") from None
            bound = bound_endpoint(self.remote_sock)
            self.remote_endpoint = bound if self.bind else ""
            if launched:
                self.launch_endpoint = _reachable(bound, self.launcher.join_host)
        if self.inference is not None and os.name == "posix":
            self.inference_endpoint = self.inference.open_channel(
                os.path.join(self._ipc_dir, "inference.sock"),
                self._may_attach,
                synchronous=not isinstance(self.flow, AsyncFlow),
                wait_s=self.inference_wait_s,
                cpus=self.inference_cpus,
                spin_s=self.inference_spin_s,
            )
        spawn = self.host.spawn
        spawn(self._reader(self.local_sock, "local"))
        if self.learner_sock is not None:
            spawn(self._reader(self.learner_sock, "learner"))
        if self.remote_sock is not None:
            spawn(self._reader(self.remote_sock, "remote"))
            if self._authenticator is not None:
                from asyncrl.runtime.auth import watch_handshakes

                spawn(watch_handshakes(self.remote_sock, bound, self._on_refused))
        spawn(self._monitor())

    def _server_keys(self, launched: bool) -> tuple[Path | None, Path | None, set]:
        """(server secret file, allowed-keys directory, extra allowed keys) of the TCP socket;
        (None, None, set()) for no CURVE. A remote launcher's workers get a client key pair made
        for this run (``launcher.keys``); without the user's keys the server's pair is made
        for this run too, and only the run's client key is allowed."""
        from asyncrl.runtime.auth import generate_keypair, load_keypair

        run_keys = Path(self._ipc_dir) / "keys"
        if self.keys:
            key_dir = Path(self.keys)
            secret_file, allowed = key_dir / "server.key_secret", key_dir / "authorized"
            if not secret_file.exists() or not allowed.is_dir():
                raise RuntimeError_(
                    f"key directory {self.keys!r} lacks server.key_secret or "
                    "authorized/ (make one with `asyncrl keygen DIR`)"
                )
        elif self.bind:  # the user's bind without keys (loopback, or --insecure): no CURVE
            return None, None, set()
        else:
            _, secret_file = generate_keypair(run_keys, "server")
            allowed = run_keys / "authorized"
            allowed.mkdir()
        extra: set = set()
        if launched:
            _, client_secret_file = generate_keypair(run_keys, "launched")
            client_pub, client_secret = load_keypair(client_secret_file)
            extra.add(client_pub)
            server_pub, _ = load_keypair(secret_file)
            self.launcher.keys = JoinKeys(
                server_pub.decode(), client_pub.decode(), client_secret.decode()
            )
        return secret_file, allowed, extra

    def _on_refused(self) -> None:
        self.refused_workers += 1

    async def _teardown(self) -> None:
        for handle in self._restart_timers.values():
            handle.cancel()
        self._restart_timers.clear()
        self.shm.close()
        if self._authenticator is not None:
            try:
                self._authenticator.stop()
            except Exception:  # noqa: BLE001
                pass
        for sock in (self.local_sock, self.remote_sock, self.learner_sock):
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()

    # ------------------------------------------------------------------ local processes
    def _spawn_local(self, slot: int) -> None:
        """Start the worker of ``slot`` (the launcher's key is the slot number): a local
        process on ipc, or, with a remote launcher, a program that joins over TCP with the
        launch token (its identity random in part: no peer can take it before it connects)."""
        incarnation = self.restarts.get(slot, 0)
        if self.launcher.remote:
            where = [
                "--connect",
                self.launch_endpoint,
                "--id",
                f"local-{slot}-{incarnation}-{secrets.token_hex(4)}",
                "--launch-token",
                self.launch_token,
            ]
        else:
            where = [
                "--connect",
                self.local_endpoint,
                "--id",
                f"local-{slot}-{incarnation}",
                "--parent-pid",
                str(os.getpid()),
            ]
        self.launcher.start(
            slot,
            "sampler",
            [
                *where,
                "--slot",
                str(slot),
                "--heartbeat",
                str(self.heartbeat_s),
                "--dead-after",
                str(max(10.0, 6 * self.worker_timeout_s)),
                "--log-level",
                self.worker_log_level,
            ],
        )

    @property
    def processes(self) -> dict:
        return self.launcher.processes

    def kill_local(self, slot: int, sig: int = 9) -> int:
        """Send ``sig`` to local worker ``slot`` (tests and fault drills); returns its pid.
        ProcessLookupError if none runs in that slot now (waiting for a restart, given up)."""
        try:
            return self.launcher.kill(slot, sig)
        except ProcessLookupError:
            raise ProcessLookupError(f"no local worker runs in slot {slot} now") from None

    def kill_learner(self, sig: int = 9) -> int:
        """Send ``sig`` to the learner process (tests and fault drills); returns its pid."""
        return self.learner_launcher.kill(LEARNER, sig)

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
            self._restart_timers[slot] = self.host.loop.call_later(delay, self._respawn, slot)

    def _respawn(self, slot: int) -> None:
        self._restart_timers.pop(slot, None)
        if not self._stopping and self.failure is None:
            self._spawn_local(slot)

    def _give_up(self, slot: int, why: str, failures: int) -> None:
        policy = self.restart_policy
        self.launcher.forget(slot)
        self.rounds.on_give_up(slot)
        self._fail(
            f"local worker {slot} failed {failures} times within {policy.window_s:.0f} s "
            f"without delivering a batch (last: {why}); the run cannot sample (see train.log)"
        )

    def _fail(self, message: str) -> None:
        """The run cannot go on: record why, end a round, wake whoever waits."""
        if self.failure is not None:
            return
        log.error("%s", message)
        self.failure = RuntimeError_(message)
        self.flow.wake()
        if self._registered is not None:
            self.host.spawn(self._notify_registered())
        if self._learner is not None:  # the sampler layer's waits end too
            self._learner[1](None, None)

    async def _notify_registered(self) -> None:
        async with self._registered:
            self._registered.notify_all()

    # ------------------------------------------------------------------ messages
    async def _reader(self, sock, name: str) -> None:
        import asyncio

        while True:
            try:
                peer, header, tree = await recv_from(sock, shm=self.shm)
            except VersionMismatch as e:
                self.dropped_messages += 1
                self.log_drop(e.peer, "version", "refused peer %r: %s", e.peer, e.reason)
                await self._try_send(
                    sock,
                    e.peer,
                    Header(MsgType.REFUSED, run_id=self.run_id, meta={"reason": e.reason}),
                )
                continue
            except ProtocolError as e:
                self.dropped_messages += 1
                self.log_drop(
                    e.peer, e.reason[:24], "dropped a message from %r: %s", e.peer, e.reason
                )
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a socket hiccup must not kill the loop
                self.dropped_messages += 1
                self.log_drop(None, name, "receive failed on the %s socket: %r", name, e)
                await asyncio.sleep(0.01)
                continue
            try:
                if name == "learner":
                    await self._handle_learner(peer, header, tree)
                else:
                    await self._handle(sock, name, peer, header, tree)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - bad content from one peer: drop and log
                self.dropped_messages += 1
                self.log_drop(
                    peer,
                    f"{header.type.name}:{type(e).__name__}",
                    "dropped %s from %r: %s: %s",
                    header.type.name,
                    peer,
                    type(e).__name__,
                    str(e)[:200],
                )

    def log_drop(self, peer: bytes | None, kind: str, fmt: str, *args: Any) -> None:
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

    _log_drop = log_drop

    async def _try_send(self, sock, peer: bytes, header: Header, tree: Any = None) -> bool:
        try:
            await send_to(sock, peer, header, tree, timeout=5.0)
            return True
        except (PeerUnreachable, TimeoutError, zmq.ZMQError) as e:
            log.info("could not send %s to %r: %s", header.type.name, peer, e)
            return False

    def _sock(self, worker: WorkerRecord):
        return self.local_sock if worker.socket_name == "local" else self.remote_sock

    async def _handle(self, sock, name: str, peer: bytes, header: Header, tree: Any) -> None:
        t = header.type
        if t == MsgType.REGISTER:
            await self._on_register(sock, name, peer, header)
            return
        worker = self.registry.get(peer, name)
        if worker is None:
            self.dropped_messages += 1
            self.log_drop(
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
                self.flow.on_samples(worker, header, tree)
            finally:
                if header.slot is not None:
                    await self._try_send(sock, peer, release_header(header))
        elif t == MsgType.ACT_REQUEST:
            if self.inference is None:
                raise ProtocolError("ACT_REQUEST but no central agent is served")
            what = header.meta.get("what", "act") if isinstance(header.meta, dict) else "act"
            self.inference.submit((sock, worker, header), tree, what)
        elif t == MsgType.BYE:
            self.declare_dead(worker, "said goodbye")
        else:
            raise ProtocolError(f"unexpected message type {t.name} from a worker")

    def pop_finals(self, peer: bytes) -> list:
        return self._finals.pop(peer, [])

    async def _refuse(self, sock, peer: bytes, reason: str) -> None:
        """Answer a REGISTER that cannot be accepted with REFUSED and its reason (logged at a
        limited rate: a peer retrying in a loop must not flood the log)."""
        self.refused_workers += 1
        self.log_drop(peer, "refused", "refused worker %r: %s", peer, reason)
        await self._try_send(
            sock, peer, Header(MsgType.REFUSED, run_id=self.run_id, meta={"reason": reason})
        )

    def _remote_register_refusal(self, peer: bytes, meta: dict) -> str:
        if not self.bind:  # the TCP socket was bound for launched workers only
            return "this run takes no remote workers (it has no sampler.bind)"
        return self.registry.remote_refusal(
            peer, meta, mode=self.mode, allow_remote=self.refuse_remote
        )

    def _launch_refusal(self, meta: dict) -> str:
        """'' if a TCP REGISTER claiming a slot carries this run's launch token, else why not."""
        token = meta.get("launch_token")
        if (
            not self.launcher.remote
            or type(token) is not str
            or not hmac.compare_digest(token.encode(), self.launch_token.encode())
        ):
            return (
                f"claiming worker slot {meta.get('slot')!r} needs this run's launch token "
                "(only the workers its launcher started take slots)"
            )[:200]
        return ""

    async def _on_register(self, sock, name: str, peer: bytes, header: Header) -> None:
        meta = header.meta if isinstance(header.meta, dict) else {}
        if self._stopping:
            await self._refuse(sock, peer, "run is stopping")
            return
        # A TCP peer claiming a slot (or showing a token) must be one our launcher started.
        launched = name == "remote" and (
            "launch_token" in meta or meta.get("slot", -1) not in (-1, None)
        )
        if launched:
            reason = self._launch_refusal(meta)
            if reason:
                await self._refuse(sock, peer, reason)
                return
        if name == "local" or launched:
            slot = meta.get("slot", -1)
            if type(slot) is not int or not 0 <= slot < self.local_workers:
                await self._refuse(sock, peer, f"bad local slot {slot!r}"[:100])
                return
            offset, n_envs = slot * self.envs_per_worker, self.envs_per_worker
            # A replacement takes over its slot: forget the old record.
            for other in self.registry.local_in_slot(slot):
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
            local=(name == "local" or launched),  # a slot worker
            slot=slot,
            env_offset=offset,
            num_envs=n_envs,
            path=path,
            socket_name=name,
            pid=int(meta.get("pid", 0) or 0),
            host=str((meta.get("probe") or {}).get("hostname", "")),
        )
        self.registry.add(record)
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
                # same host: actions through shared memory, the socket carries 8-byte requests
                "inference": self.inference_endpoint if path == "shm" else "",
                "inference_spin_s": self.inference_spin_s,
                "heartbeat_s": self.heartbeat_s,
                "torch_threads": self.torch_threads,
                "affinity": self.worker_affinity if (name == "local" and slot >= 0) else "",
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
            f"slot {slot}, launched" if launched else name,
            offset,
            offset + n_envs - 1,
            path,
        )
        async with self._registered:
            self._registered.notify_all()
        await self.flow.on_register(record)

    def _may_attach(self, peer: bytes, env_ids: list, pid: int = 0) -> str:
        """The inference thread asks: may this peer use the shared-memory channel with these
        env ids? '' if so, else why not (runs on the inference thread: reads only). ``pid``:
        the connected process (the kernel's word), which must be the one that registered."""
        worker = self.workers.get(peer)
        if worker is None or not worker.alive:
            return "not a registered worker"
        if worker.path != "shm":
            return "not a same-host worker"
        if pid and worker.pid and pid != worker.pid:
            return f"process {pid} is not the worker that registered"
        lo, hi = worker.env_offset, worker.env_offset + worker.num_envs
        ids = np.concatenate(env_ids) if env_ids else np.zeros(0, np.int64)
        if len(ids) != worker.num_envs or len(np.unique(ids)) != len(ids):
            return f"env ids must be the worker's {worker.num_envs} envs, each once"
        if ids.min() < lo or ids.max() >= hi:
            return f"env ids outside the worker's envs {lo}..{hi - 1}"
        return ""

    def _forget(self, worker: WorkerRecord, unlink: bool = False) -> None:
        if self.inference is not None:
            self.inference.forget(worker.peer)
        self.registry.remove(worker.peer)
        self._finals.pop(worker.peer, None)
        self.shm.forget(worker.peer, unlink)

    def declare_dead(self, worker: WorkerRecord, why: str) -> None:
        if not worker.alive:
            return
        worker.alive = False
        owed = self.flow.owes(worker)
        (log.info if self._stopping or why == "said goodbye" and not owed else log.warning)(
            "worker %r is gone (%s)%s",
            worker.peer,
            why,
            "; its batch is lost"
            if owed and not worker.local
            else "; its batch is asked of its replacement"
            if owed
            else "",
        )
        if owed:
            self.lost_batches += 1
        self.flow.on_dead(worker, owed)
        # A launched worker that died without its goodbye may have taken its resource tracker
        # with it (Ray and Slurm end a dead worker's children): its batch slots are unlinked here.
        self._forget(worker, unlink=worker.local and self.launcher.remote and why != "said goodbye")
        if worker.local and not self._stopping:
            # a stalled local worker: make sure it is gone before replacing it
            self.launcher.kill_and_wait(worker.slot)
            delivered = worker.delivered
            uptime = time.monotonic() - worker.since
            self._restart(worker.slot, why, self.restart_policy.productive(delivered, uptime))
        self.flow.after_dead(worker, owed)

    _declare_dead = declare_dead

    async def _monitor(self) -> None:
        """Heartbeats out, deaths in: the Paranoid Pirate's two timers."""
        import asyncio

        last_beat = 0.0
        while True:
            now = time.monotonic()
            for worker in list(self.workers.values()):
                code = self.launcher.exit_code(worker.slot) if worker.local else None
                if code is not None:
                    self.declare_dead(worker, f"process exited with {code}")
                elif now - worker.last_seen > self.worker_timeout_s:
                    self.declare_dead(worker, f"silent for {now - worker.last_seen:.1f} s")
            # Local processes that died before registering.
            registered_slots = self.registry.registered_slots()
            for slot in [k for k in list(self.launcher.processes) if isinstance(k, int)]:
                code = self.launcher.exit_code(slot)
                if (
                    slot not in registered_slots
                    and slot not in self._restart_timers  # dead, its replacement is due
                    and code is not None
                    and not self._stopping
                ):
                    log.warning("local worker %d exited with %s before registering", slot, code)
                    self._restart(slot, f"exited with {code} before registering", False)
            if self._learner is not None and not self._stopping:
                code = self.learner_launcher.exit_code(LEARNER)
                if code is not None and self.failure is None:
                    self._fail(
                        f"the learner process exited with code {code}; the run cannot "
                        "optimize (resume it from its last checkpoint with --resume)"
                    )
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                for worker in list(self.workers.values()):
                    await self._try_send(
                        self._sock(worker),
                        worker.peer,
                        Header(MsgType.HEARTBEAT, run_id=self.run_id),
                    )
            await asyncio.sleep(min(0.2, self.heartbeat_s / 2))

    async def _broadcast_stop(self) -> None:
        for worker in list(self.workers.values()):
            await self._try_send(
                self._sock(worker), worker.peer, Header(MsgType.STOP, run_id=self.run_id)
            )
        if self.learner_sock is not None and self.learner_registered:
            await self._try_send(
                self.learner_sock, LEARNER.encode(), Header(MsgType.STOP, run_id=self.run_id)
            )

    # ------------------------------------------------------------------ the learner link
    async def _handle_learner(self, peer: bytes, header: Header, tree: Any) -> None:
        if peer != LEARNER.encode():
            raise ProtocolError(f"unknown peer {peer[:64]!r} on the learner socket")
        if header.type == MsgType.REGISTER:
            self.learner_registered = True
            meta, _ = self._learner
            reply = Header(MsgType.REGISTERED, run_id=self.run_id, meta=meta)
            await self._try_send(self.learner_sock, peer, reply)
            return
        if header.run_id != self.run_id:
            raise ProtocolError(f"run id {header.run_id!r} is not this run's")
        if header.type == MsgType.ERROR:
            reason = header.meta.get("reason", "?") if isinstance(header.meta, dict) else "?"
            self._fail(f"the learner failed: {reason}")
            return
        self._learner[1](header, tree)

    async def send_learner(self, header: Header, tree: Any = None) -> bool:
        """On the loop: send a message to the learner process."""
        header.run_id = self.run_id
        return await self._try_send(self.learner_sock, LEARNER.encode(), header, tree)

    def publish(
        self, names: list[str], params: Any, version: int, acting: dict, state: Any = None
    ) -> None:
        """On the loop (asynchronous runs): the learner's newest parameters (arrays, as sent
        to workers). Parallel-mode workers get them with their next request; the inference
        server loads ``state`` (what its agent's ``load_state_tensors`` takes) before its next
        forward pass."""
        self._params_for_workers = (names, params, version)
        self._acting = acting or {}
        if self.inference is not None and state is not None:
            self.inference.load_params(state, version, acting)

    def request_args(self, worker: WorkerRecord) -> tuple:
        """(acting, names, params, version) for an asynchronous request to ``worker``: the
        parameters only when it has not got this version yet (parallel mode)."""
        if self._params_for_workers is None:
            return self._acting, None, None, 0
        names, params, version = self._params_for_workers
        if self.mode != "parallel" or worker.policy_version == version:
            return self._acting, None, None, version
        worker.policy_version = version
        return self._acting, names, params, version

    # ------------------------------------------------------------------ batches
    async def send_request(
        self, worker: WorkerRecord, number: int, version: int, acting: dict, names, params
    ) -> bool:
        """Ask ``worker`` for batch ``number`` (the PARAMS message, with parameters when
        ``params`` is given)."""
        worker.requests += 1
        meta = {"sample": number, "acting": acting or {}}
        if params is not None:
            meta["names"] = names
        ok = await self._try_send(
            self._sock(worker),
            worker.peer,
            Header(MsgType.PARAMS, run_id=self.run_id, policy_version=version, meta=meta),
            params,
        )
        if not ok:
            self.declare_dead(worker, "unreachable")
        return ok

    async def wait_for_workers(self, count: int, timeout: float) -> int:
        import asyncio

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
        return self.registry.alive()

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
        """Synchronous runs: ask every registered worker for one batch; ``deliver`` is called
        (on this loop) for each batch as it arrives. Returns the number of batches delivered.

        Local workers are waited for (a dead one is replaced and asked again). A remote worker
        costs the round a bounded wait: once the local workers are done (or, with none, once
        some batch arrived or ``timeout / 4`` passed), a remote batch that has not come within
        ``max(limits.grace_s, 2 x the round so far)`` is left out of the round (its worker
        missed it); ``limits.misses`` misses in a row drop that worker. A round with nothing
        delivered is asked again of whoever is registered. ``RuntimeError_`` (one line) when
        fewer than ``min_workers`` are registered for ``timeout`` seconds, or local workers
        delivered nothing for that long."""
        return await self.rounds.sample(
            itr, names, params, policy_version, deliver, min_workers, timeout, acting
        )

    @property
    def _itr(self) -> int | None:  # the synchronous round in progress (tests read it)
        return self.rounds.itr

    # ------------------------------------------------------------------ central inference
    def serve(self, agent) -> None:
        """Central modes: answer ACT_REQUESTs with ``agent`` (in synchronous runs the
        learner's own object; in asynchronous runs a copy the learner's parameters reach)."""
        self._agent = agent
        if self.inference is None:
            self.inference = InferenceServer(
                agent, self.host.call_soon, self._send_answers, self._inference_failed
            )
        else:
            self.inference.agent = agent

    def _send_answers(self, answers: list) -> None:
        for (sock, worker, header), reply, version in answers:
            out = Header(
                MsgType.ACT_REPLY, run_id=self.run_id, seq=header.seq, policy_version=version
            )
            self.host.spawn(self._try_send(sock, worker.peer, out, reply))

    def _inference_failed(self, keys: list, error: BaseException) -> None:
        """Requests the inference server could not answer: their workers would wait for the
        replies for ever, so they are let go (a local one is replaced; one that keeps failing
        ends the run through the restart limit)."""
        self.dropped_messages += len(keys)
        log.warning(
            "inference failed for %d requests: %s: %s", len(keys), type(error).__name__, error
        )
        log.debug("inference failure", exc_info=error)
        for _sock, worker, _header in keys:
            self.declare_dead(worker, "its action request failed")

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
            "dropped_messages": self.dropped_messages
            + (self.inference.dropped if self.inference is not None else 0),
            "refused_workers": self.refused_workers,
        }


def _reachable(endpoint: str, host: str) -> str:
    """``endpoint`` with a wildcard host (``*``, 0.0.0.0, ::) replaced by ``host``: the address
    to connect to, not to bind."""
    address, _, port = endpoint[len("tcp://") :].rpartition(":")
    if host and address.strip("[]") in ("*", "0.0.0.0", "::", ""):
        return f"tcp://{host}:{port}"
    return endpoint


def _first_dim(tree) -> int:
    while isinstance(tree, tuple):
        tree = next(t for t in tree if t is not None)
    return int(np.shape(tree)[0])
