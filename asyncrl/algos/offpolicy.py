"""Replay plumbing shared by the Q-value policy-gradient algorithms (DDPG, TD3, SAC): feed each
sampler batch to a replay buffer, hold the replay ratio (gradient updates per env step) after
``learning_starts``, save/restore the buffer with checkpoints. Subclasses own ``update``."""

from __future__ import annotations

import numpy as np
import torch

from asyncrl.data import to_torch


class ReplayLearner:
    """Subclasses set ``self.config`` (with buffer_size, gamma, n_step, batch_size,
    learning_starts, replay_ratio, save_replay) and implement ``update(sample) -> dict``."""

    def __init__(self, agent, config, seed: int = 0):
        self.agent, self.config, self.seed = agent, config, seed
        self.replay = None
        self._pending_replay_state = None
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.updates = 0
        self._update_credit = 0.0

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
            return {}
        agent.random_actions = False
        self._update_credit += cfg.replay_ratio * batch.env_steps
        n_updates = int(self._update_credit)
        self._update_credit -= n_updates
        stats: dict[str, list[float]] = {}
        agent.train_mode()
        for _ in range(n_updates):
            sample = to_torch(self.replay.sample(cfg.batch_size, self.rng), agent.device)
            for k, v in self.update(sample).items():
                stats.setdefault(k, []).append(v)
            self.updates += 1
        agent.eval_mode()
        agent.policy_version += 1
        return {
            k: float(np.mean([x.item() if isinstance(x, torch.Tensor) else x for x in v]))
            for k, v in stats.items()
        }

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


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
