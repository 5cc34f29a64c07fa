"""Policy-gradient agent (A2C, PPO): samples actions from an actor-critic and records the value
and log-probability the algorithm needs. Owns acting; the loss lives in algos/."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import Agent
from asyncrl.data import namedarraytuple
from asyncrl.models.policies import ActorCritic, ModelConfig

PgAgentInfo = namedarraytuple("PgAgentInfo", ["value", "log_prob"])


class PgAgent(Agent):
    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        model_config: ModelConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__(device)
        self.obs_space, self.action_space = obs_space, action_space
        self.model_config = model_config or ModelConfig()
        self.model = ActorCritic(obs_space, action_space, self.model_config).to(self.device)

    def info_example(self):
        return PgAgentInfo(np.zeros((), np.float32), np.zeros((), np.float32))

    @torch.no_grad()
    def step(self, obs) -> tuple[np.ndarray, PgAgentInfo]:
        """Sample actions for a batch of observations [N, ...]; returns numpy (action, info)."""
        dist, value = self.model(self.obs_to_torch(obs))
        action = dist.sample()
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
