"""Replay plumbing shared by the Q-value policy-gradient algorithms (DDPG, TD3, SAC): feed each
sampler batch to a replay buffer, hold the replay ratio (gradient updates per env step) after
``learning_starts``, save/restore the buffer with checkpoints. Subclasses own ``update``."""

from __future__ import annotations

import math

import numpy as np
import torch

from asyncrl.data import to_torch
from asyncrl.models.qpg import cpu_matmul_context

# Layers whose forward depends on train()/eval(); the actors here are MLPs without them.
_MODE_DEPENDENT = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)


class ReplayLearner:
    """Subclasses set ``self.config`` (with buffer_size, gamma, n_step, batch_size,
    learning_starts, replay_ratio, save_replay, onednn_matmul), name their statistics in
    ``stat_names`` and implement ``update(sample) -> dict`` returning 0-d tensors (no host sync
    per update)."""

    stat_names: tuple[str, ...] = ()

    def __init__(self, agent, config, seed: int = 0):
        self.agent, self.config, self.seed = agent, config, seed
        self.replay = None
        self._pending_replay_state = None
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.updates = 0
        self._update_credit = 0.0
        self._batch_numpy = None  # the reused replay minibatch (numpy) and its torch views
        self._batch_torch = None
        self._last_stats: dict[str, float] = {}  # latest value of each statistic
        self._mode_dependent: bool | None = None  # does the actor behave differently in train()?

    def _make_replay(self, batch):
        from asyncrl.replay import UniformReplay

        cfg = self.config
        n_envs = batch.samples.env.reward.shape[1]
        replay = UniformReplay(
            batch.samples[0, 0],
            cfg.buffer_size,
            n_envs,
            cfg.gamma,
            getattr(cfg, "n_step", 1),
            seed=self.seed,
        )
        if self._pending_replay_state is not None:
            replay.load_state_dict(self._pending_replay_state)
            self._pending_replay_state = None
        return replay

    def update(self, sample) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def optimize(self, batch, progress: float) -> dict[str, float]:
        cfg, agent = self.config, self.agent
        if self.replay is None:
            self.replay = self._make_replay(batch)
        self.replay.append(batch.samples, batch.final_observations)
        self.env_steps += batch.env_steps
        done = batch.samples.env.terminated[-1] | batch.samples.env.truncated[-1]
        if hasattr(agent, "on_episode_end") and done.any():
            agent.on_episode_end(done)
        if self.env_steps < cfg.learning_starts:
            return self._stats()
        agent.random_actions = False
        self._update_credit += cfg.replay_ratio * batch.env_steps
        n_updates = int(self._update_credit)
        self._update_credit -= n_updates
        if n_updates == 0:
            return self._stats()
        stats: dict[str, list[torch.Tensor]] = {}
        if self._mode_dependent is None:
            self._mode_dependent = any(
                isinstance(m, _MODE_DEPENDENT) for m in agent.model.modules()
            )
        if self._mode_dependent:  # walking the modules costs ~0.1 ms: only when it matters
            agent.train_mode()
        with cpu_matmul_context(getattr(cfg, "onednn_matmul", True), agent.device):
            for _ in range(n_updates):
                for k, v in self.update(self._sample()).items():
                    stats.setdefault(k, []).append(v)
                self.updates += 1
        if self._mode_dependent:
            agent.eval_mode()
        agent.policy_version += 1
        if stats:
            # Losses stay tensors during the updates; one host sync here for all of them.
            means = [
                torch.stack([torch.as_tensor(x) for x in v]).float().mean() for v in stats.values()
            ]
            self._last_stats.update(zip(stats, torch.stack(means).tolist()))
        return self._stats()

    def _stats(self) -> dict[str, float]:
        # Every call returns the same keys, so progress.csv (whose columns its first row fixes)
        # has a column per statistic from the start: NaN before the first update, and for a
        # statistic this call's updates did not produce (TD3's delayed actor loss) its latest.
        return {**dict.fromkeys(self.stat_names, math.nan), **self._last_stats}

    def _sample(self):
        """A replay minibatch as torch tensors on the agent's device.

        The numpy batch is allocated once and filled in place; on CPU its torch views are made
        once too (zero copy), so a sample costs only the gathers."""
        cfg = self.config
        if self._batch_numpy is None:
            self._batch_numpy = self.replay.batch_buffer(cfg.batch_size)
            if self.agent.device.type == "cpu":
                self._batch_torch = to_torch(self._batch_numpy)
        self.replay.sample(cfg.batch_size, self.rng, out=self._batch_numpy)
        if self._batch_torch is not None:
            return self._batch_torch
        return to_torch(self._batch_numpy, self.agent.device)

    # -- checkpoints ---------------------------------------------------------------------
    def learner_state(self) -> dict:  # subclasses add networks and optimizers
        return {}

    def load_learner_state(self, s: dict) -> None:  # pragma: no cover - abstract
        pass

    def state_dict(self) -> dict:
        s = {
            "learner": self.learner_state(),
            "updates": self.updates,
            "env_steps": self.env_steps,
            "update_credit": self._update_credit,
            "rng": self.rng.bit_generator.state,
            "agent_rng": self.agent.rng.bit_generator.state,
            "random_actions": self.agent.random_actions,
            "torch_rng": torch.get_rng_state(),
        }
        if self.config.save_replay and self.replay is not None:
            s["replay"] = self.replay.state_dict()
        return s

    def load_state_dict(self, s: dict) -> None:
        self.load_learner_state(s["learner"])
        self.updates, self.env_steps = s["updates"], s["env_steps"]
        self._update_credit = s["update_credit"]
        self.rng.bit_generator.state = s["rng"]
        self.agent.rng.bit_generator.state = s["agent_rng"]
        self.agent.random_actions = s["random_actions"]
        self._pending_replay_state = s.get("replay")
        if not self.config.save_replay:
            # The buffer restarts empty: wait for it to refill before updating again.
            self.config.learning_starts = self.env_steps + self.config.learning_starts
