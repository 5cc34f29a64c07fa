"""Policy-gradient agent (A2C, PPO): samples actions from an actor-critic and records the value
and log-probability the algorithm needs. Owns acting; the loss lives in algos/."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import Agent, PerEnvNoise
from asyncrl.data import namedarraytuple
from asyncrl.models.policies import ActorCritic, ModelConfig

PgAgentInfo = namedarraytuple("PgAgentInfo", ["value", "log_prob"])

__all__ = ["PerEnvNoise", "PgAgent", "PgAgentInfo"]


class PgAgent(Agent):
    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        model_config: ModelConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        super().__init__(device)
        self.obs_space, self.action_space = obs_space, action_space
        self.model_config = model_config or ModelConfig()
        self.model = ActorCritic(obs_space, action_space, self.model_config).to(self.device)
        self.noise = PerEnvNoise(seed)

    def info_example(self):
        return PgAgentInfo(np.zeros((), np.float32), np.zeros((), np.float32))

    @torch.no_grad()
    def step(self, obs, env_ids: np.ndarray | None = None) -> tuple[np.ndarray, PgAgentInfo]:
        """Sample actions for a batch of observations [N, ...]; returns numpy (action, info).

        Sampling noise comes from one random stream per env (``env_ids``, global env indices,
        default 0..N-1), so the same env sees the same noise whichever process or batch it is
        stepped in: serial and parallel sampling give identical trajectories."""
        dist, value = self.model(self.obs_to_torch(obs))
        n = value.shape[0]
        noise = self.noise.draw(
            np.arange(n) if env_ids is None else env_ids,
            dist.noise_shape(),
            "uniform" if self.model.pi.kind != "gaussian" else "normal",
        )
        action = dist.sample_from(torch.from_numpy(noise).to(value.device))
        log_prob = dist.log_prob(action)
        return action.cpu().numpy(), PgAgentInfo(value.cpu().numpy(), log_prob.cpu().numpy())

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        dist, _ = self.model(self.obs_to_torch(obs))
        return (dist.mode() if deterministic else dist.sample()).cpu().numpy()

    @torch.no_grad()
    def value(self, obs) -> np.ndarray:
        return self.model.value(self.obs_to_torch(obs)).cpu().numpy()

    def update_normalizer(self, obs_torch) -> None:
        if self.model.normalizer is not None:
            self.model.normalizer.update(obs_torch)
