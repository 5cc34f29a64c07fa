"""Samplers on the runtime: parallel (agent copy in each worker), central (one batched agent here,
envs in workers) and alternating (two env groups per worker, one steps while the other's actions
are computed). Same interface and Samples as the serial sampler.

Owns the [T, B] Samples buffer of the training process and the mapping worker -> columns: local
worker w owns envs w*M .. w*M+M-1 (so env seeds and sampling streams match the serial sampler
env for env); remote workers' batches are appended after the local columns in arrival order.
The coordinator (asyncrl/runtime/coordinator.py) owns processes and sockets.
"""

from __future__ import annotations

import atexit
import logging
import weakref

import numpy as np

from asyncrl.configs.config import ConfigError, TrainConfig
from asyncrl.data import buffer_from_example, namedarraytuple, tree_leaves
from asyncrl.envs import EpisodeStats, make_env
from asyncrl.envs.spaces import space_example
from asyncrl.samplers.base import SampleBatch, Sampler, samples_example

log = logging.getLogger("asyncrl.sampler")


class RuntimeSampler(Sampler):
    def __init__(self, cfg: TrainConfig, seed: int = 0, register_timeout_s: float = 120.0):
        s = cfg.sampler
        if s.mode not in ("parallel", "central", "alternating"):
            raise ConfigError(f"RuntimeSampler: mode {s.mode!r} is not a runtime mode")
        if s.workers > 0 and s.num_envs % s.workers:
            raise ConfigError(
                f"sampler.num_envs={s.num_envs} must be a multiple of sampler.workers={s.workers}"
            )
        if s.workers == 0 and not s.bind:
            raise ConfigError("sampler.workers=0 needs sampler.bind (remote workers only)")
        if s.mode == "alternating" and s.workers and s.num_envs // s.workers < 2:
            raise ConfigError("alternating mode needs at least 2 envs per worker")
        self.cfg = cfg
        self.seed = seed
        self.mode = s.mode
        self.horizon = s.horizon
        self.local_workers = s.workers
        self.envs_per_worker = s.num_envs // s.workers if s.workers else s.num_envs
        self.num_envs = self.local_workers * self.envs_per_worker
        self.register_timeout_s = register_timeout_s
        env = make_env(cfg.env)  # spaces only: checks the env builds before processes start
        try:
            self.obs_space, self.action_space = env.observation_space, env.action_space
        finally:
            env.close()
        self.coordinator = None
        self.itr = 0
        self._finalizer = None

    # ------------------------------------------------------------------ setup
    def initialize(self, agent) -> None:
        from asyncrl.algos import ALGOS
        from asyncrl.runtime.coordinator import Coordinator

        self.agent = agent
        info_example = agent.info_example()
        self.example = samples_example(
            space_example(self.obs_space), space_example(self.action_space), info_example
        )
        self._capacity = max(self.num_envs, 1)
        self.buf = buffer_from_example(self.example, (self.horizon, self._capacity))
        self.bootstrap = np.zeros(self._capacity, np.float32)
        config_dict = self.cfg.to_dict()
        config_dict["seed"] = self.seed  # a resumed run samples on fresh env seeds
        offpolicy = ALGOS[self.cfg.algo].kind == "offpolicy"
        self.coordinator = Coordinator(
            config_dict,
            mode=self.mode,
            horizon=self.horizon,
            local_workers=self.local_workers,
            envs_per_worker=self.envs_per_worker,
            bind=self.cfg.sampler.bind,
            keys=self.cfg.sampler.keys,
            heartbeat_s=self.cfg.sampler.heartbeat_s,
            worker_timeout_s=self.cfg.sampler.worker_timeout_s,
            torch_threads=1,
            info_example=info_example,
            allow_remote_sizes=not offpolicy,
        )
        if self.mode != "parallel":
            self.coordinator.serve(agent)
        self.coordinator.start()
        self._finalizer = weakref.finalize(self, _stop_quietly, self.coordinator)
        atexit.register(self._finalizer)
        if self.coordinator.remote_endpoint:
            log.warning(
                "coordinator accepting remote workers at %s", self.coordinator.remote_endpoint
            )
        names = list(agent.state_tensors().keys())
        self._param_names = names
        self._Params = namedarraytuple("Params", [f"p{i}" for i in range(len(names))])

    # ------------------------------------------------------------------ sampling
    def _ensure_capacity(self, columns: int) -> None:
        if columns <= self._capacity:
            return
        new_cap = max(columns, 2 * self._capacity)
        buf = buffer_from_example(self.example, (self.horizon, new_cap))
        for dst, src in zip(tree_leaves(buf), tree_leaves(self.buf)):
            dst[:, : self._capacity] = src
        boot = np.zeros(new_cap, np.float32)
        boot[: self._capacity] = self.bootstrap
        self.buf, self.bootstrap, self._capacity = buf, boot, new_cap

    def obtain(self) -> SampleBatch:
        from asyncrl.runtime.coordinator import Delivery

        self.itr += 1
        params = None
        if self.mode == "parallel":
            state = self.agent.state_tensors()
            params = self._Params(*(t.numpy() for t in state.values()))
        remote_cols = [self.num_envs]
        returns: list[float] = []
        lengths: list[int] = []
        finals: list = []

        local_slots: set[int] = set()

        def deliver(d: Delivery) -> None:
            w = d.worker
            # Check the whole batch before writing any of it: a malformed one (raising here,
            # so the coordinator drops it and lets the worker go) must not leave half-written
            # columns behind.
            sources = self._check_batch(d.tree, w.num_envs, d.final)
            if w.local:
                col = w.env_offset
                local_slots.add(w.slot)
            else:
                col = remote_cols[0]
                remote_cols[0] += w.num_envs
                self._ensure_capacity(remote_cols[0])
            cols = slice(col, col + w.num_envs)
            for dst, src in zip(tree_leaves(self.buf), sources):
                dst[:, cols] = src
            self.bootstrap[cols] = d.tree.bootstrap_value
            returns.extend(float(r) for r in d.meta.get("returns", []))
            lengths.extend(int(n) for n in d.meta.get("lengths", []))
            finals.extend((t, col + b, o) for t, b, o in d.final)

        names = self._param_names if params is not None else None
        delivered = self.coordinator.call(
            self.coordinator.sample(
                self.itr,
                names,
                params,
                self.agent.policy_version,
                deliver,
                self.cfg.sampler.min_workers,
                self.register_timeout_s,
                self.agent.acting_state(),
            )
        )
        if delivered == 0:
            raise RuntimeError("no worker delivered a batch")
        missing = set(range(self.local_workers)) - local_slots
        if missing:  # their columns would hold the previous batch: never hand that out
            raise RuntimeError(
                f"local worker(s) {sorted(missing)} delivered no batch (they kept failing; "
                "see the log)"
            )
        width = max(remote_cols[0], self.num_envs)
        samples = self.buf if width == self._capacity else self.buf[:, :width]
        finals.sort(key=lambda x: (x[0], x[1]))
        env_steps = self.horizon * (self.num_envs if remote_cols[0] == self.num_envs else width)
        return SampleBatch(
            samples=samples,
            bootstrap_value=self.bootstrap[:width],
            next_observation=None,
            final_observations=finals,
            episodes=EpisodeStats(returns, lengths),
            env_steps=env_steps,
        )

    def _check_batch(self, tree, num_envs: int, final) -> list:
        """The leaves of a worker's batch if it fits its [T, num_envs] columns exactly."""
        try:
            sources = tree_leaves(tree.samples)
            boot = np.asarray(tree.bootstrap_value)
        except AttributeError:
            raise ValueError("not a worker batch (samples, bootstrap_value)") from None
        targets = tree_leaves(self.buf)
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} arrays, the Samples layout has {len(targets)}")
        for dst, src in zip(targets, sources):
            want = (self.horizon, num_envs, *dst.shape[2:])
            if src.shape != want or src.dtype != dst.dtype:
                raise ValueError(
                    f"array {src.dtype}{list(src.shape)} where {dst.dtype}{list(want)} belongs"
                )
        if boot.shape != (num_envs,):
            raise ValueError(f"bootstrap_value of shape {boot.shape}, expected ({num_envs},)")
        for t, b, _ in final:
            if not (0 <= t < self.horizon and 0 <= b < num_envs):
                raise ValueError(f"final observation at ({t}, {b}) outside the batch")
        return sources

    def status(self) -> str:
        return self.coordinator.status() if self.coordinator is not None else ""

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            atexit.unregister(self._finalizer)
            self._finalizer = None


def _stop_quietly(coordinator) -> None:
    try:
        coordinator.stop()
    except Exception as e:  # noqa: BLE001 - shutting down anyway
        log.warning("coordinator stop: %s", e)
