"""The asynchronous sampler: workers (parallel, central or alternating) collect batches into
learner slots in shared memory while the learner process (``workers/optimizer.py``) optimizes
on the slots already complete; nobody waits for a round.

Owns the K learner slots (``LearnerBatch``: Samples [T, B], bootstrap values [B], the policy
version that acted per column [B]), writing a worker's batch into its columns, telling the
learner when a slot is complete (LEARN), and turning the learner's answers (LEARNED) into
reports for the training loop, parameters for the workers and the inference server, and freed
slots. The coordinator (``runtime/``) owns processes, sockets and flow control (``AsyncFlow``).

The training process keeps a mirror of the agent (evaluation, checkpoints, ``asyncrl eval``):
``sync_agent`` loads the newest published parameters into it.
"""

from __future__ import annotations

import atexit
import copy
import logging
import queue
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from asyncrl.configs.config import ConfigError, TrainConfig
from asyncrl.data import SharedArrayTree, namedarraytuple, tree_leaves
from asyncrl.envs.spaces import space_example
from asyncrl.samplers.base import samples_example
from asyncrl.samplers.runtime import RuntimeSampler, _stop_quietly, worker_config

log = logging.getLogger("asyncrl.sampler")

LearnerBatch = namedarraytuple("LearnerBatch", ["samples", "bootstrap_value", "policy_version"])
# A remote worker's batch on its way to the learner (frames, not a learner slot).
RemoteLearn = namedarraytuple("RemoteLearn", ["samples", "bootstrap_value", "finals"])


@dataclass
class LearnerReport:
    """One batch the learner optimized on: what the training loop records."""

    env_steps: int
    returns: list[float]
    lengths: list[int]
    info: dict
    updates: int
    policy_version: int
    learn_s: float = 0.0  # the learner's time in algo.optimize so far
    extra: dict = field(default_factory=dict)


class AsyncRuntimeSampler(RuntimeSampler):
    """``initialize(agent)`` starts workers and the learner and waits until the learner is
    ready; ``next_report(timeout)`` blocks until the learner finished a batch; ``sync_agent``
    loads the newest parameters into the mirror agent; ``learner_state(path)`` asks the
    learner to write its state; ``close()`` stops everything."""

    def __init__(self, cfg: TrainConfig, seed: int = 0, register_timeout_s: float | None = None):
        super().__init__(cfg, seed, register_timeout_s)
        if self.local_workers < 1:
            raise ConfigError("asynchronous runs need local workers (sampler.workers >= 1)")
        self.slots_n = cfg.sampler.async_batches
        self.resume_path = ""
        self.rescue_path = ""  # where a failing learner writes its state (see async_loop)
        self.reports: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._state_done: dict[int, threading.Event] = {}
        self._state_seq = 0
        self._latest: tuple | None = None  # (names, params copies, version)
        self._env_steps_sent = 0
        self.start_steps = 0  # env steps done before this process (a resumed run)
        self.inference_agent = None  # central/alternating: the agent that answers ACT_REQUESTs
        self._remote_pending: dict[int, dict] = {}  # remote batches at the learner, by seq
        self._remote_seq = 0
        self.remote_steps = 0  # env steps of remote workers' batches the learner learned
        self.replay_sources = 0  # rings in the learner's replay (off-policy; 0: none yet)

    # ------------------------------------------------------------------ setup
    def initialize(self, agent) -> None:
        from asyncrl.runtime.coordinator import Coordinator

        self.agent = agent
        info_example = agent.info_example()
        self.example = samples_example(
            space_example(self.obs_space), space_example(self.action_space), info_example
        )
        T, B = self.horizon, self.num_envs
        self.slots = [
            SharedArrayTree.allocate(_slot_example(self.example, T, B), ())
            for _ in range(self.slots_n)
        ]
        self.buf = self.slots[0].tree.samples  # the layout _check_batch compares against
        self._pending = [self._empty_pending() for _ in range(self.slots_n)]
        self._finalizer = weakref.finalize(self, _release_all, self.slots)
        self._env_steps_sent = self.start_steps
        config_dict = worker_config(self.cfg)
        config_dict["seed"] = self.seed
        learner_cfg = self.cfg.to_dict()
        learner_meta = {
            "config": learner_cfg,
            "slots": [s.handle.to_dict() for s in self.slots],
            "horizon": T,
            "resume": str(self.resume_path),
            "rescue": str(self.rescue_path),
            "torch_threads": max(1, self.cfg.torch_threads),
            "total_steps": self.cfg.steps,
        }
        self.coordinator = Coordinator(
            config_dict,
            **self._coordinator_settings(info_example),
            async_flow=(self.slots_n, 2, self._deliver, self._complete, self._deliver_remote),
            learner=(learner_meta, self._on_learner),
        )
        if self.mode != "parallel":
            # The inference server's own agent (on the run's device when the loop built one
            # there): the mirror is read by evaluation meanwhile.
            self.coordinator.serve(self.inference_agent or copy.deepcopy(agent))
        self.coordinator.start()
        self._coord_finalizer = weakref.finalize(self, _stop_quietly, self.coordinator)
        atexit.register(self._coord_finalizer)
        if not self._ready.wait(self.register_timeout_s):
            raise self.coordinator.Error(
                f"the learner process was not ready within {self.register_timeout_s:.0f} s"
            )
        self._raise_failure()
        self.sync_agent(agent)
        self.coordinator.call(self._start_flow(), timeout=30)

    async def _start_flow(self) -> None:
        self.coordinator.flow.start()
        await self.coordinator.flow.issue_all()

    @staticmethod
    def _empty_pending() -> dict:
        return {"returns": [], "lengths": [], "finals": []}

    # ------------------------------------------------------------------ on the loop
    def _deliver(self, d, k: int) -> None:
        w = d.worker
        sources = self._check_batch(d.tree, w.num_envs, d.final)
        ep_returns, ep_lengths = self._check_episodes(d.meta, w.num_envs)
        slot = self.slots[k].tree
        cols = slice(w.env_offset, w.env_offset + w.num_envs)
        for dst, src in zip(tree_leaves(slot.samples), sources):
            dst[:, cols] = src
        slot.bootstrap_value[cols] = d.tree.bootstrap_value
        slot.policy_version[cols] = d.policy_version
        pending = self._pending[k]
        pending["returns"].extend(ep_returns)
        pending["lengths"].extend(ep_lengths)
        pending["finals"].extend((t, w.env_offset + b, o) for t, b, o in d.final)

    def _deliver_remote(self, d, source: str) -> None:
        """A remote worker's batch: checked here, learned on its own as a batch of ``source``
        (the learner's replay keeps a ring per source; on-policy learners optimize on it)."""
        from asyncrl.data import tree_map
        from asyncrl.runtime.protocol import Header, MsgType

        w = d.worker
        self._check_batch(d.tree, w.num_envs, d.final)
        ep_returns, ep_lengths = self._check_episodes(d.meta, w.num_envs)
        steps = self.horizon * w.num_envs
        self._env_steps_sent += steps
        self._remote_seq += 1
        seq = self._remote_seq
        self._remote_pending[seq] = {"returns": ep_returns, "lengths": ep_lengths, "steps": steps}
        finals = sorted(d.final, key=lambda x: (x[0], x[1]))
        meta = {
            "source": source,
            "finals": [[int(t), int(b)] for t, b, _ in finals],
            "env_steps": self._env_steps_sent,
            "acted": int(d.policy_version),
        }
        final_tree = (
            tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in finals]) if finals else None
        )
        tree = RemoteLearn(d.tree.samples, np.asarray(d.tree.bootstrap_value), final_tree)
        header = Header(MsgType.LEARN, seq=seq, meta=meta)
        self.coordinator.host.spawn(self.coordinator.send_learner(header, tree))

    def _complete(self, k: int, batch_number: int) -> None:
        from asyncrl.data import tree_map
        from asyncrl.runtime.protocol import Header, MsgType

        finals = sorted(self._pending[k]["finals"], key=lambda x: (x[0], x[1]))
        self._env_steps_sent += self.horizon * self.num_envs
        meta = {
            "slot": k,
            "finals": [[int(t), int(b)] for t, b, _ in finals],
            "env_steps": self._env_steps_sent,
        }
        tree = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in finals]) if finals else None
        header = Header(MsgType.LEARN, seq=batch_number, meta=meta)
        self.coordinator.host.spawn(self.coordinator.send_learner(header, tree))

    def _on_learner(self, header, tree) -> None:
        from asyncrl.runtime.protocol import MsgType

        if header is None:  # the run failed (see coordinator.failure)
            self._ready.set()
            self.reports.put(None)
            for event in self._state_done.values():
                event.set()
            return
        meta = header.meta if isinstance(header.meta, dict) else {}
        if header.type == MsgType.LEARNER_STATE:
            event = self._state_done.get(header.seq)
            if event is not None:
                event.set()
            return
        if header.type != MsgType.LEARNED:
            raise ValueError(f"unexpected {header.type.name} from the learner")
        names = list(meta["names"])
        self.replay_sources = int(meta.get("replay_sources", self.replay_sources))
        params = [np.array(p) for p in tree]
        version = int(header.policy_version)
        self._latest = (names, params, version)
        Params = namedarraytuple("Params", [f"p{i}" for i in range(len(params))])
        state = None
        if self.mode != "parallel":  # the inference server's agent takes torch tensors
            state = {n: torch.from_numpy(p) for n, p in zip(names, params)}
        self.coordinator.publish(names, Params(*params), version, meta.get("acting") or {}, state)
        if meta.get("source"):  # a remote worker's batch
            pending = self._remote_pending.pop(int(header.seq), None)
            if pending is not None:
                self.remote_steps += pending["steps"]
                self._report(pending["steps"], pending, meta, version)
            self.coordinator.host.spawn(self.coordinator.flow.remote_learned(meta["source"]))
            return
        k = meta.get("slot")
        if k is None:  # the first: the learner is ready
            self._ready.set()
            return
        k = int(k)
        pending, self._pending[k] = self._pending[k], self._empty_pending()
        self._report(self.horizon * self.num_envs, pending, meta, version)
        self.coordinator.host.spawn(self.coordinator.flow.release(k))

    def _report(self, env_steps: int, pending: dict, meta: dict, version: int) -> None:
        """Queue the report of one learned batch (a learner slot's or a remote worker's)."""
        self.reports.put(
            LearnerReport(
                env_steps=env_steps,
                returns=pending["returns"],
                lengths=pending["lengths"],
                info=dict(meta.get("info") or {}),
                updates=int(meta.get("updates", 0)),
                policy_version=version,
                learn_s=float(meta.get("learn_s", 0.0)),
                extra={"waits": self.coordinator.flow.waits},
            )
        )

    # ------------------------------------------------------------------ the training loop
    def _raise_failure(self) -> None:
        if self.coordinator is not None and self.coordinator.failure is not None:
            raise self.coordinator.failure

    def next_report(self, timeout: float | None = None) -> LearnerReport | None:
        """The next batch the learner finished (None after ``timeout`` seconds); raises the
        runtime's one-line error when the run cannot go on (e.g. the learner died)."""
        self._raise_failure()
        try:
            report = self.reports.get(timeout=timeout)
        except queue.Empty:
            self._raise_failure()
            return None
        self._raise_failure()
        return report

    def counters(self) -> dict[str, int]:
        counters = super().counters()
        if counters:
            from asyncrl.configs.registry import ALGO_CONFIGS

            counters["remote_steps"] = self.remote_steps
            if ALGO_CONFIGS[self.cfg.algo].kind == "offpolicy":
                counters["replay_sources"] = self.replay_sources
        return counters

    def obtain(self):  # pragma: no cover - the asynchronous loop uses next_report
        raise NotImplementedError("AsyncRuntimeSampler has no obtain(); use next_report()")

    def sync_agent(self, agent) -> None:
        """Load the newest published parameters into ``agent`` (the training process's mirror)."""
        if self._latest is None:
            return
        names, params, version = self._latest
        agent.load_state_tensors({n: torch.from_numpy(p) for n, p in zip(names, params)}, version)

    def learner_state(self, path: str, timeout: float = 300.0) -> bool:
        """Ask the learner to write its state (agent, algorithm) to ``path``; False if it
        cannot (the learner is gone)."""
        from asyncrl.runtime.protocol import Header, MsgType

        if self.coordinator is None or self.coordinator.failure is not None:
            return False
        self._state_seq += 1
        seq = self._state_seq
        event = self._state_done[seq] = threading.Event()
        header = Header(MsgType.LEARNER_STATE, seq=seq, meta={"path": str(path)})
        try:
            if not self.coordinator.call(self.coordinator.send_learner(header), timeout=30):
                return False
            return event.wait(timeout) and self.coordinator.failure is None
        finally:
            self._state_done.pop(seq, None)

    def close(self) -> None:
        finalizer = getattr(self, "_coord_finalizer", None)
        if finalizer is not None:
            finalizer()
            atexit.unregister(finalizer)
            self._coord_finalizer = None
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None


def _slot_example(example, horizon: int, num_envs: int) -> LearnerBatch:
    """One learner slot's layout with every leading dim in place (zero-copy broadcasts: only
    dtypes and shapes are read)."""
    from asyncrl.data import tree_map

    lead = (horizon, num_envs)
    samples = tree_map(lambda x: np.broadcast_to(np.asarray(x), lead + np.shape(x)), example)
    return LearnerBatch(
        samples,
        np.broadcast_to(np.float32(0), (num_envs,)),
        np.broadcast_to(np.int64(0), (num_envs,)),
    )


def _release_all(slots) -> None:
    for s in slots:
        s.release()
