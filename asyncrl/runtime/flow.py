"""Flow control: which worker is asked for which batch, and when.

- ``SyncRounds`` (synchronous runs): a round asks every registered worker for one batch and
  ends when all local workers delivered (a dead one's replacement is asked again) and remote
  ones delivered or missed their grace period.
- ``AsyncFlow`` (asynchronous runs): no rounds. Batch ``n`` of every local slot goes to learner
  slot ``n % K`` (K = batches in flight); a worker is asked for batch ``n`` only while that slot
  accepts generation ``n`` and the worker has fewer than ``credits`` requests outstanding, so
  workers run ahead of the learner by at most K batches and then wait (back-pressure), and a
  worker gets its next request while it still collects the current one (it never waits on a
  round trip). A slot is complete when every local slot delivered into it; the learner frees it.
  Remote workers (when the run takes them) fill no learner slot: each of their batches goes to
  the learner on its own (``deliver_remote``) as a batch of its source, and a remote worker has
  at most ``credits`` batches requested or being learned at once, so a fast remote worker
  cannot queue more than that at the learner either.

Owns the bookkeeping of requests and deliveries only; the coordinator (``rt``) owns the
sockets and the registry, the sampler layer owns the arrays (``deliver``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asyncrl.runtime.protocol import Header, ProtocolError
from asyncrl.runtime.registry import WorkerRecord

log = logging.getLogger("asyncrl.coordinator")


@dataclass
class Delivery:
    worker: WorkerRecord
    tree: Any  # WorkerBatch view (valid during the deliver callback only)
    meta: dict
    final: list  # [(t, b_local, obs)]
    policy_version: int = 0  # the version that acted for this batch (its first step)
    batch_number: int = 0  # async: the worker slot's batch number (learner slot = n % K)


class SyncRounds:
    """The synchronous round (``Coordinator.sample``)."""

    def __init__(self, rt):
        self.rt = rt
        self.itr: int | None = None
        self.expected: set[bytes] = set()
        self.slots_pending: set[int] = set()
        self.done: asyncio.Event | None = None
        self.request: tuple | None = None
        self.deliver: Callable[[Delivery], None] | None = None
        self.delivered = 0
        self.last_round_s = 0.0  # how long the last round that delivered took
        self.asked: set[bytes] = set()  # the peers sent this round's request

    async def send_request(self, worker: WorkerRecord) -> None:
        itr, names, params, version, acting = self.request
        self.asked.add(worker.peer)
        await self.rt.send_request(worker, itr, version, acting, names, params)

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
        rt = self.rt
        deadline = time.monotonic() + timeout
        while True:
            if len(rt.alive_workers()) < min_workers:
                left = max(deadline - time.monotonic(), 0.0)
                n = await rt.wait_for_workers(min_workers, left)
                if n < min_workers:
                    raise rt.Error(
                        f"only {n} of {min_workers} workers registered within {timeout:.0f} s"
                    )
            delivered = await self._round(itr, names, params, policy_version, deliver, acting)
            if rt.failure is not None:  # a local slot was given up: the run ends
                raise rt.failure
            if delivered:
                return delivered
            if time.monotonic() > deadline:
                raise rt.Error(
                    f"no batch within {timeout:.0f} s (workers {len(rt.alive_workers())})"
                )

    async def _round(self, itr, names, params, policy_version, deliver, acting) -> int:
        rt = self.rt
        self.itr = itr
        self.request = (itr, names, params, policy_version, acting or {})
        self.deliver = deliver
        self.delivered = 0
        self.done = asyncio.Event()
        self.asked = set()
        workers = rt.alive_workers()
        self.expected = {w.peer for w in workers}
        self.slots_pending = {w.slot for w in workers if w.local}
        # Local slots whose worker is restarting right now are owed too.
        self.slots_pending |= {
            s
            for s in range(rt.local_workers)
            if s in rt.launcher.processes and s not in {w.slot for w in workers if w.local}
        }
        if rt.inference is not None:  # the shared-memory inference channel waits for these
            registered = {w.slot for w in workers if w.local}
            rt.inference.begin_round(
                [w.peer for w in workers if w.path == "shm"],
                starting=len(self.slots_pending - registered),  # and for these slots' workers
            )
        for w in workers:
            await self.send_request(w)
        started = time.monotonic()
        local_done_at: float | None = None
        while not self.done.is_set():
            self.check_done()
            try:
                await asyncio.wait_for(self.done.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            if self.done.is_set():
                break
            now = time.monotonic()
            locals_pending = bool(self.slots_pending) or any(
                rt.workers[p].local for p in self.expected if p in rt.workers
            )
            if locals_pending:
                continue
            if local_done_at is None:
                if rt.local_workers or self.delivered or now - started > self.remote_wait_s:
                    local_done_at = now
                else:
                    continue
            grace = max(rt.limits.grace_s, 2.0 * (local_done_at - started))
            if now - local_done_at > grace:
                self._miss_remote(grace)
        self.itr = None
        if self.delivered:
            self.last_round_s = time.monotonic() - started
        return self.delivered

    @property
    def remote_wait_s(self) -> float:
        """With no local workers and no batch yet: how long remote workers get at most (four
        grace periods, or twice the last round that delivered)."""
        return max(4.0 * self.rt.limits.grace_s, 2.0 * self.last_round_s)

    def _miss_remote(self, waited: float) -> None:
        """Leave the remote workers still owing this round's batch out of it."""
        rt = self.rt
        for peer in list(self.expected):
            worker = rt.workers.get(peer)
            self.expected.discard(peer)
            if worker is None or worker.local:
                continue
            worker.misses += 1
            rt.missed_batches += 1
            rt.log_drop(
                peer,
                "late",
                "remote worker %r is %.1f s late; its columns are left out of this batch "
                "(%d of %d misses before it is dropped)",
                peer,
                waited,
                worker.misses,
                rt.limits.misses,
            )
            if worker.misses >= rt.limits.misses:
                rt.declare_dead(worker, f"missed {worker.misses} batches in a row")
        self.check_done()

    def check_done(self) -> None:
        if self.done is not None and not self.expected and not self.slots_pending:
            self.done.set()

    def wake(self) -> None:
        """End the round now (the run failed)."""
        if self.done is not None:
            self.done.set()

    # ------------------------------------------------------------------ coordinator hooks
    def owes(self, worker: WorkerRecord) -> bool:
        return self.itr is not None and worker.peer in self.expected

    async def on_register(self, record: WorkerRecord) -> None:
        """A replacement of a worker whose batch is still owed picks up the request (once: a
        worker that registered just before the round began was asked by the round itself)."""
        if (
            self.itr is not None
            and record.local
            and record.slot in self.slots_pending
            and record.peer not in self.asked
        ):
            self.expected.add(record.peer)
            await self.send_request(record)

    def on_dead(self, worker: WorkerRecord, owed: bool) -> None:
        if owed:
            self.expected.discard(worker.peer)

    def after_dead(self, worker: WorkerRecord, owed: bool) -> None:
        if owed and not worker.local:
            self.check_done()

    def on_give_up(self, slot: int) -> None:
        self.slots_pending.discard(slot)
        self.wake()

    def on_samples(self, worker: WorkerRecord, header: Header, tree: Any) -> None:
        rt = self.rt
        if header.seq != self.itr or worker.peer not in self.expected:
            rt.dropped_messages += 1
            log.info("dropped a stale batch %d from %r", header.seq, worker.peer)
            return
        if tree is None:
            raise ProtocolError("SAMPLES without arrays")
        final = rt.pop_finals(worker.peer)
        meta = header.meta if isinstance(header.meta, dict) else {}
        try:
            self.deliver(Delivery(worker, tree, meta, final, header.policy_version, header.seq))
        except Exception as e:  # noqa: BLE001 - a batch that does not fit: drop it, not the run
            rt.dropped_messages += 1
            log.warning(
                "dropped a malformed batch from %r: %s: %s", worker.peer, type(e).__name__, e
            )
            # Its batch is lost; a local worker is replaced (and asked again), a remote one
            # is forgotten (told so if it speaks again) and the batch goes on without it.
            rt.declare_dead(worker, "sent a malformed batch")
            return
        self.delivered += 1
        worker.delivered += 1
        worker.misses = 0
        self.expected.discard(worker.peer)
        self.slots_pending.discard(worker.slot)
        self.check_done()


class AsyncFlow:
    """Asynchronous flow control over ``slots`` learner slots (see the module docstring).

    ``deliver(delivery, learner_slot)`` writes a worker's batch into learner slot
    ``learner_slot`` (raising if it does not fit); ``complete(learner_slot, batch_number)`` is
    called once every local slot delivered into it. ``release(learner_slot)`` (the learner is
    done with it) opens the slot for the next generation and asks the workers for more.
    ``request_args()`` gives (acting, names, params, version) for the next request to a worker.

    ``deliver_remote(delivery, source)`` (None: remote workers get no requests) hands a remote
    worker's batch to the learner; ``source`` names that worker's registration (a worker that
    registers again is a new source). ``remote_learned(source)`` (the learner is done with one
    of its batches) lets it collect another.
    """

    def __init__(
        self,
        rt,
        slots: int,
        credits: int,
        deliver: Callable[[Delivery, int], None],
        complete: Callable[[int, int], None],
        deliver_remote: Callable[[Delivery, str], None] | None = None,
    ):
        if slots < 1 or credits < 1:
            raise ValueError(f"AsyncFlow needs slots >= 1 and credits >= 1, got {slots}, {credits}")
        self.rt = rt
        self.slots, self.credits = slots, credits
        self.deliver, self.complete = deliver, complete
        self.generation = list(range(slots))  # the batch number each learner slot accepts
        self.filled: list[set[int]] = [set() for _ in range(slots)]  # local slots delivered
        self.next_batch: dict[int, int] = {s: 0 for s in range(rt.local_workers)}
        self.outstanding: dict[int, set[int]] = {s: set() for s in range(rt.local_workers)}
        self.running = False
        self.waits = 0  # requests held back because the learner slot was not free yet
        self.deliver_remote = deliver_remote
        self.remote: dict[bytes, _RemoteSource] = {}  # by peer, while registered
        self._sources = 0

    def start(self) -> None:
        self.running = True

    async def issue(self, worker: WorkerRecord) -> None:
        """Ask ``worker`` for every batch it may collect now."""
        if not self.running or not worker.alive:
            return
        if not worker.local:
            await self._issue_remote(worker)
            return
        s = worker.slot
        out = self.outstanding[s]
        while len(out) < self.credits:
            n = self.next_batch[s]
            if self.generation[n % self.slots] != n:
                self.waits += 1
                return  # its learner slot still holds an older batch: back-pressure
            out.add(n)
            self.next_batch[s] = n + 1
            if not await self._send(worker, n):
                return

    async def _send(self, worker: WorkerRecord, n: int) -> bool:
        acting, names, params, version = self.rt.request_args(worker)
        return await self.rt.send_request(worker, n, version, acting, names, params)

    async def issue_all(self) -> None:
        for worker in self.rt.alive_workers():
            await self.issue(worker)

    async def _issue_remote(self, worker: WorkerRecord) -> None:
        src = self.remote.get(worker.peer)
        while src is not None and len(src.outstanding) + src.learning < self.credits:
            n = src.next_batch
            src.outstanding.add(n)
            src.next_batch = n + 1
            if not await self._send(worker, n):
                return

    async def remote_learned(self, source: str) -> None:
        """The learner is done with a batch of ``source``: its worker may collect another."""
        for peer, src in self.remote.items():
            if src.name == source:
                src.learning = max(0, src.learning - 1)
                worker = self.rt.workers.get(peer)
                if worker is not None and worker.alive and not worker.local:
                    await self.issue(worker)
                return

    async def release(self, learner_slot: int) -> None:
        self.generation[learner_slot] += self.slots
        self.filled[learner_slot].clear()
        await self.issue_all()

    # ------------------------------------------------------------------ coordinator hooks
    def owes(self, worker: WorkerRecord) -> bool:
        return worker.local and bool(self.outstanding.get(worker.slot))

    async def on_register(self, record: WorkerRecord) -> None:
        """A replacement in a slot takes over that slot's outstanding requests, in order; a
        remote worker becomes a new source."""
        if not record.local:
            if self.deliver_remote is not None:
                self._sources += 1
                name = f"remote-{self._sources}-{record.peer.hex()[:32]}"
                self.remote[record.peer] = _RemoteSource(name)
                await self.issue(record)
            return
        for n in sorted(self.outstanding[record.slot]):
            if not await self._send(record, n):
                return
        await self.issue(record)

    def on_dead(self, worker: WorkerRecord, owed: bool) -> None:
        # A local slot's requests stay outstanding: its replacement is asked again. A remote
        # worker's requests end with it (the batches it delivered are still learned).
        if not worker.local:
            self.remote.pop(worker.peer, None)

    def after_dead(self, worker: WorkerRecord, owed: bool) -> None:
        pass

    def on_give_up(self, slot: int) -> None:
        pass

    def wake(self) -> None:
        pass

    def on_samples(self, worker: WorkerRecord, header: Header, tree: Any) -> None:
        rt = self.rt
        n = header.seq
        if not worker.local:
            self._on_remote_samples(worker, header, tree)
            return
        if n not in self.outstanding[worker.slot]:
            rt.dropped_messages += 1
            log.info("dropped a stale batch %d from %r", n, worker.peer)
            return
        if tree is None:
            raise ProtocolError("SAMPLES without arrays")
        k = n % self.slots
        final = rt.pop_finals(worker.peer)
        meta = header.meta if isinstance(header.meta, dict) else {}
        try:
            self.deliver(Delivery(worker, tree, meta, final, header.policy_version, n), k)
        except Exception as e:  # noqa: BLE001 - a batch that does not fit: drop it, not the run
            rt.dropped_messages += 1
            log.warning(
                "dropped a malformed batch from %r: %s: %s", worker.peer, type(e).__name__, e
            )
            rt.declare_dead(worker, "sent a malformed batch")
            return
        self.outstanding[worker.slot].discard(n)
        worker.delivered += 1
        self.filled[k].add(worker.slot)
        if len(self.filled[k]) == rt.local_workers:
            self.complete(k, n)
        rt.host.spawn(self.issue(worker))

    def _on_remote_samples(self, worker: WorkerRecord, header: Header, tree: Any) -> None:
        rt = self.rt
        src = self.remote.get(worker.peer)
        n = header.seq
        if src is None or n not in src.outstanding:
            rt.dropped_messages += 1
            log.info("dropped a stale batch %d from %r", n, worker.peer)
            return
        if tree is None:
            raise ProtocolError("SAMPLES without arrays")
        final = rt.pop_finals(worker.peer)
        meta = header.meta if isinstance(header.meta, dict) else {}
        try:
            self.deliver_remote(
                Delivery(worker, tree, meta, final, header.policy_version, n), src.name
            )
        except Exception as e:  # noqa: BLE001 - a batch that does not fit: drop it, not the run
            rt.dropped_messages += 1
            log.warning(
                "dropped a malformed batch from %r: %s: %s", worker.peer, type(e).__name__, e
            )
            rt.declare_dead(worker, "sent a malformed batch")
            return
        src.outstanding.discard(n)
        src.learning += 1
        worker.delivered += 1


@dataclass
class _RemoteSource:
    """A registered remote worker in an asynchronous run."""

    name: str  # its replay source (one per registration)
    next_batch: int = 0
    outstanding: set[int] = field(default_factory=set)  # asked of it, not delivered yet
    learning: int = 0  # its batches at the learner, not learned yet
