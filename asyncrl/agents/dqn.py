"""Deep Q-learning agent: epsilon-greedy (or noisy-net) action selection from a QNetwork, for
DQN, its options and C51/Rainbow. Owns acting and the exploration schedule; losses are in algos/.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import Agent
from asyncrl.models.noisy import reset_noise
from asyncrl.models.q import QModelConfig, QNetwork


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """start -> end linearly over ``duration`` steps, then end."""
    if duration <= 0:
        return end
    return start + min(max(t / duration, 0.0), 1.0) * (end - start)


class DqnAgent(Agent):
    acting_fields = ("epsilon",)

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        model_config: QModelConfig | None = None,
        device: str | torch.device = "cpu",
        v_min: float = -10.0,
        v_max: float = 10.0,
        eval_epsilon: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(device)
        self.obs_space, self.action_space = obs_space, action_space
        self.model_config = model_config or QModelConfig()
        self.model = QNetwork(obs_space, action_space, self.model_config).to(self.device)
        self.n_actions = self.model.n_actions
        self.distributional = self.model_config.n_atoms > 1
        self.noisy = self.model_config.noisy
        support = torch.linspace(v_min, v_max, max(self.model_config.n_atoms, 2))
        self.support = support.to(self.device)
        self.epsilon = 1.0 if not self.noisy else 0.0
        self.eval_epsilon = eval_epsilon
        self.rng = np.random.default_rng(seed)

    def info_example(self):
        return None

    def q_values(self, obs_t) -> torch.Tensor:
        """Expected Q [N, A] (the mean of the return distribution for C51)."""
        out = self.model(obs_t)
        if self.distributional:
            return (out.softmax(-1) * self.support).sum(-1)
        return out

    def _epsilon_greedy(self, obs, epsilon: float) -> np.ndarray:
        if self.noisy:
            reset_noise(self.model)
        if epsilon <= 0:
            return self.q_values(self.obs_to_torch(obs)).argmax(-1).cpu().numpy()
        n = _batch_size(obs)
        explore = self.rng.random(n) < epsilon
        n_explore = int(explore.sum())
        if n_explore == n:  # all random: the network's choice would be discarded
            actions = np.empty(n, np.int64)
        else:
            actions = self.q_values(self.obs_to_torch(obs)).argmax(-1).cpu().numpy()
        if n_explore:
            actions[explore] = self.rng.integers(0, self.n_actions, n_explore)
        return actions

    @torch.no_grad()
    def step(self, obs, env_ids=None):
        return self._epsilon_greedy(obs, self.epsilon), None

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        return self._epsilon_greedy(obs, self.eval_epsilon if deterministic else self.epsilon)


def _batch_size(obs) -> int:
    """Leading dim of an observation batch (an array or a tree of arrays)."""
    while isinstance(obs, tuple):
        obs = next(x for x in obs if x is not None)
    return int(obs.shape[0])
