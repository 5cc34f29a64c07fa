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
import math
import weakref

import numpy as np

from asyncrl.configs.config import ConfigError, TrainConfig
from asyncrl.data import buffer_from_example, namedarraytuple, tree_leaves
from asyncrl.envs import EpisodeStats, make_env
from asyncrl.envs.spaces import space_example
from asyncrl.samplers.base import SampleBatch, Sampler, samples_example

log = logging.getLogger("asyncrl.sampler")


class RuntimeSampler(Sampler):
    def __init__(self, cfg: TrainConfig, seed: int = 0, register_timeout_s: float | None = None):
        s = cfg.sampler
        if s.mode not in ("parallel", "central", "alternating"):
            raise ConfigError(f"RuntimeSampler: mode {s.mode!r} is not a runtime mode")
        if s.workers > 0 and s.num_envs % s.workers:
            raise ConfigError(
                f"sampler.num_envs={s.num_envs} must be a multiple of sampler.workers={s.workers}"
            )
        from asyncrl.runtime.auth import check_bind_security

        refusal = check_bind_security(s.bind, s.keys, s.insecure)
        if refusal:
            raise ConfigError(refusal)
        if s.workers == 0 and not s.bind:
            raise ConfigError("sampler.workers=0 needs sampler.bind (remote workers only)")
        if s.mode == "alternating" and s.workers and s.num_envs // s.workers < 2:
            raise ConfigError("alternating mode needs at least 2 envs per worker")
        if s.launcher != "local":  # before any process starts: one line, how to install it
            from asyncrl.runtime.cluster import missing_dependency

            missing = missing_dependency(s.launcher)
            if missing:
                raise ConfigError(missing)
        if s.restart_limit < 0:
            raise ConfigError(f"sampler.restart_limit must be >= 0, got {s.restart_limit}")
        if not s.restart_window_s > 0:
            raise ConfigError(f"sampler.restart_window_s must be > 0, got {s.restart_window_s}")
        if not 0 <= s.restart_backoff_s <= 8.0:
            raise ConfigError(
                f"sampler.restart_backoff_s must be in [0, 8], got {s.restart_backoff_s}"
            )
        self.cfg = cfg
        self.seed = seed
        self.mode = s.mode
        self.horizon = s.horizon
        self.local_workers = s.workers
        self.envs_per_worker = s.num_envs // s.workers if s.workers else s.num_envs
        self.num_envs = self.local_workers * self.envs_per_worker
        self.register_timeout_s = (
            s.register_timeout_s if register_timeout_s is None else register_timeout_s
        )
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
        from asyncrl.configs.registry import ALGO_CONFIGS
        from asyncrl.runtime.coordinator import Coordinator

        self.agent = agent
        info_example = agent.info_example()
        self.example = samples_example(
            space_example(self.obs_space), space_example(self.action_space), info_example
        )
        self._capacity = max(self.num_envs, 1)
        self.buf = buffer_from_example(self.example, (self.horizon, self._capacity))
        self.bootstrap = np.zeros(self._capacity, np.float32)
        config_dict = worker_config(self.cfg)
        config_dict["seed"] = self.seed  # a resumed run samples on fresh env seeds
        offpolicy = ALGO_CONFIGS[self.cfg.algo].kind == "offpolicy"
        self.coordinator = Coordinator(
            config_dict,
            **self._coordinator_settings(info_example),
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

    def _coordinator_settings(self, info_example) -> dict:
        """The Coordinator's settings from the run's config (both runtime samplers)."""
        from asyncrl.runtime.coordinator import RemoteLimits
        from asyncrl.runtime.supervision import RestartPolicy

        s = self.cfg.sampler
        return dict(
            mode=self.mode,
            horizon=self.horizon,
            local_workers=self.local_workers,
            envs_per_worker=self.envs_per_worker,
            bind=s.bind,
            keys=s.keys,
            insecure=s.insecure,
            heartbeat_s=s.heartbeat_s,
            worker_timeout_s=s.worker_timeout_s,
            torch_threads=1,
            info_example=info_example,
            remote_max_message_bytes=self._remote_message_limit(),
            limits=RemoteLimits(
                max_workers=s.max_remote_workers,
                max_envs=s.max_remote_envs,
                max_envs_per_worker=s.max_envs_per_worker,
                grace_s=s.remote_grace_s,
                misses=s.remote_misses,
            ),
            restart_policy=RestartPolicy(
                max_failures=s.restart_limit,
                window_s=s.restart_window_s,
                backoff_s=s.restart_backoff_s,
            ),
            launcher=self._launcher(),
            inference_wait_s=max(s.inference_wait_ms, 0.0) / 1000.0,
            worker_affinity=s.worker_affinity,
            inference_affinity=s.inference_affinity,
            inference_spin_s=s.inference_spin_us / 1e6,
        )

    def _launcher(self):
        """The worker slots' launcher (``sampler.launcher``); None: local processes. Slurm
        jobs write their files and logs to ``RUN_DIR/submitit/workers/`` (beside the files of
        ``asyncrl submit``'s own job in ``RUN_DIR/submitit/``)."""
        from pathlib import Path

        s = self.cfg.sampler
        if s.launcher == "ray":
            from asyncrl.runtime.cluster import RayLauncher

            return RayLauncher(address=s.ray_address, strategy=s.ray_strategy)
        if s.launcher == "slurm":
            from asyncrl.runtime.cluster import SlurmLauncher

            return SlurmLauncher(
                folder=Path(self.cfg.run_dir) / "submitit" / "workers" if self.cfg.run_dir else "",
                cluster=s.slurm_cluster,
                partition=s.slurm_partition,
                time_min=s.slurm_time_min,
                cpus=s.slurm_cpus,
                gpus=s.slurm_gpus,
            )
        return None

    def _remote_message_limit(self) -> int:
        """Bytes of the largest batch a remote worker may send (its most envs), plus 1 MiB for
        headers and final observations; at least 4 MiB, at most the transport's default."""
        from asyncrl.runtime.protocol import DEFAULT_MAX_MESSAGE_BYTES

        step_bytes = sum(int(np.asarray(x).nbytes) for x in tree_leaves(self.example)) + 4
        envs = self.cfg.sampler.max_envs_per_worker
        if self.cfg.sampler.launcher != "local":  # launched slot workers send on that socket too
            envs = max(envs, self.envs_per_worker)
        batch = self.horizon * envs * step_bytes
        return int(min(max(batch + 2**20, 4 * 2**20), DEFAULT_MAX_MESSAGE_BYTES))

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
        from asyncrl.runtime.coordinator import Delivery, RuntimeError_

        if self.coordinator.failure is not None:  # a local slot was given up: end the run
            raise self.coordinator.failure
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
            ep_returns, ep_lengths = self._check_episodes(d.meta, w.num_envs)
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
            returns.extend(ep_returns)
            lengths.extend(ep_lengths)
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
        if self.coordinator.failure is not None:
            raise self.coordinator.failure
        if delivered == 0:
            raise RuntimeError_("no worker delivered a batch")
        missing = set(range(self.local_workers)) - local_slots
        if missing:  # their columns would hold the previous batch: never hand that out
            raise RuntimeError_(
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

    def _check_episodes(self, meta: dict, num_envs: int) -> tuple[list[float], list[int]]:
        """The finished episodes a batch reports (meta ``returns``/``lengths``), checked before
        any of the batch is written: lists of equal length, at most one episode per step and
        env, finite returns, lengths >= 1."""
        rets, lens = meta.get("returns", []), meta.get("lengths", [])
        if type(rets) is not list or type(lens) is not list or len(rets) != len(lens):
            raise ValueError("meta returns/lengths must be two lists of the same length")
        if len(rets) > self.horizon * num_envs:
            raise ValueError(f"{len(rets)} episodes in a batch of {self.horizon}x{num_envs} steps")
        if not all(type(r) in (int, float) and math.isfinite(r) for r in rets):
            raise ValueError("meta returns must be finite numbers")
        if not all(type(n) is int and n >= 1 for n in lens):
            raise ValueError("meta lengths must be integers >= 1")
        return [float(r) for r in rets], lens

    def status(self) -> str:
        return self.coordinator.status() if self.coordinator is not None else ""

    def counters(self) -> dict[str, int]:
        return self.coordinator.counters() if self.coordinator is not None else {}

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            atexit.unregister(self._finalizer)
            self._finalizer = None


def worker_config(cfg: TrainConfig) -> dict:
    """What a worker needs to build its envs and agent copy, and nothing more: the config
    without the run directory, the network settings and key paths, or the logging settings
    (a remote peer learns nothing about this machine's files)."""
    d = cfg.to_dict()
    d.pop("run_dir", None)
    d.pop("log", None)
    d.pop("preset", None)
    sampler = d.get("sampler", {})
    for key in ("bind", "keys", "insecure", "ray_address"):
        sampler.pop(key, None)
    # Without the bind, a remote-only run's `workers = 0` would not validate on the worker
    # (`config_from_dict`), and every remote worker would exit; the worker does not use it.
    sampler["workers"] = max(1, int(sampler.get("workers", 1)))
    return d


def _stop_quietly(coordinator) -> None:
    try:
        coordinator.stop()
    except Exception as e:  # noqa: BLE001 - shutting down anyway
        log.warning("coordinator stop: %s", e)
