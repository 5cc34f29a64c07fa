"""The registry: who the workers are (local slots, remote peers), which REGISTERs are
accepted, who is alive. The coordinator answers the messages; this module holds the records.

Owns ``WorkerRecord``s and the rules for accepting a remote worker (``RemoteLimits``). Must not
send anything or know what a batch is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Identities of the workers a coordinator starts itself; never accepted from the network.
LOCAL_ID_PREFIX = b"local-"


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
    policy_version: int = -1  # the newest parameters sent to it (async parallel mode)


@dataclass
class RemoteLimits:
    """What remote peers may make the coordinator hold (sampler.max_remote_* settings)."""

    max_workers: int = 32  # remote workers registered at once
    max_envs: int = 1024  # envs of all remote workers together
    max_envs_per_worker: int = 256  # envs one remote worker may ask for
    grace_s: float = 5.0  # a remote batch later than max(grace_s, 2x the round so far) ...
    misses: int = 3  # ... is left out of the round; this many misses in a row drop the worker


class Registry:
    """The workers by ROUTER identity."""

    def __init__(self, limits: RemoteLimits, envs_per_worker: int):
        self.limits = limits
        self.envs_per_worker = envs_per_worker
        self.workers: dict[bytes, WorkerRecord] = {}

    def get(self, peer: bytes, socket_name: str) -> WorkerRecord | None:
        """The worker speaking as ``peer`` on ``socket_name`` (an identity registered on the
        other socket is not that worker)."""
        worker = self.workers.get(peer)
        return worker if worker is not None and worker.socket_name == socket_name else None

    def alive(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.alive]

    def local_in_slot(self, slot: int) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.local and w.slot == slot]

    def registered_slots(self) -> set[int]:
        return {w.slot for w in self.workers.values() if w.local}

    def add(self, record: WorkerRecord) -> None:
        self.workers[record.peer] = record

    def remove(self, peer: bytes) -> None:
        self.workers.pop(peer, None)

    def remote_refusal(self, peer: bytes, meta: dict, *, mode: str, allow_remote: str) -> str:
        """'' if a remote REGISTER may be accepted, else why not (one line for the worker).
        ``allow_remote`` is '' when the run takes remote workers, else the reason it does not."""
        if allow_remote:
            return allow_remote
        if mode != "parallel":
            return f"remote workers join parallel-mode runs only (this run is {mode})"
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
