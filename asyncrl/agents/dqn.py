"""Deep Q-learning agent: epsilon-greedy (or noisy-net) action selection from a QNetwork, for
DQN, its options and C51/Rainbow. Owns acting and the exploration schedule; losses are in algos/.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from asyncrl.agents.base import ENV_STREAMS_KEY, Agent, PerEnvNoise, act_stream
from asyncrl.models.noisy import NoisyLinear, reset_noise
from asyncrl.models.q import QModelConfig, QNetwork


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """start -> end linearly over ``duration`` steps, then end."""
    if duration <= 0:
        return end
    return start + min(max(t / duration, 0.0), 1.0) * (end - start)


class DqnAgent(Agent):
    """Epsilon-greedy (or noisy-net) acting.

    ``step(obs, env_ids)`` draws env b's exploration from env b's own stream (``self.noise``,
    seeded from (seed, b)): with epsilon > 0 two uniforms per env and step (the coin flip and
    the random action, drawn whether used or not); with noisy nets, fresh factorised noise for
    every noisy layer per env and step (each env acts with its own noise sample, as a single-env
    noisy net does), so no two envs or workers share draws and the same seed gives the same
    actions in every sampling mode. ``act`` (evaluation) uses a stream of its own (``self.rng``)
    and, for noisy nets, one noise sample from torch per call, and leaves the env streams alone.
    """

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
        self.noise = PerEnvNoise(seed, ENV_STREAMS_KEY)  # step(): one stream per env
        self.rng = act_stream(seed)  # act(): evaluation's epsilon draws
        self._noisy_layers = [m for m in self.model.modules() if isinstance(m, NoisyLinear)]
        self._noise_size = sum(m.in_features + m.out_features for m in self._noisy_layers)

    def info_example(self):
        return None

    def q_values(self, obs_t) -> torch.Tensor:
        """Expected Q [N, A] (the mean of the return distribution for C51)."""
        out = self.model(obs_t)
        if self.distributional:
            return (out.softmax(-1) * self.support).sum(-1)
        return out

    def _greedy(self, obs, env_ids) -> np.ndarray:
        obs_t = self.obs_to_torch(obs)
        if env_ids is None:
            return self.q_values(obs_t).argmax(-1).cpu().numpy()
        with self._per_env_noise(env_ids):
            return self.q_values(obs_t).argmax(-1).cpu().numpy()

    def _epsilon_greedy(self, obs, epsilon: float, env_ids=None) -> np.ndarray:
        """``env_ids`` given: draws from the env streams (and per-env noisy-net noise);
        None: from ``self.rng`` (and one noise sample from torch for the batch)."""
        if self.noisy and env_ids is None:
            reset_noise(self.model)
        if epsilon <= 0:
            return self._greedy(obs, env_ids)
        n = _batch_size(obs)
        if env_ids is None:
            u = self.rng.random((n, 2))
        else:
            u = self.noise.draw(env_ids, (2,), "uniform")
        explore = u[:, 0] < epsilon
        n_explore = int(explore.sum())
        if n_explore == n:  # all random: the network's choice would be discarded
            actions = np.empty(n, np.int64)
            if self.noisy and env_ids is not None:  # the noise is drawn all the same
                self.noise.draw(env_ids, (self._noise_size,), "normal")
        else:
            actions = self._greedy(obs, env_ids)
        if n_explore:
            random_actions = (u[explore, 1] * self.n_actions).astype(np.int64)
            actions[explore] = np.minimum(random_actions, self.n_actions - 1)
        return actions

    @contextmanager
    def _per_env_noise(self, env_ids):
        """Noisy layers act with env b's own factorised noise on row b (drawn from env b's
        stream): y_b = mu_w x_b + mu_b + eps_out_b * (sigma_w (eps_in_b * x_b) + sigma_b),
        which is (mu_w + sigma_w * eps_out_b eps_in_b^T) x_b + mu_b + sigma_b * eps_out_b."""
        if not self._noisy_layers:
            yield
            return
        z = torch.from_numpy(self.noise.draw(env_ids, (self._noise_size,), "normal"))
        f = (z.sign() * z.abs().sqrt()).to(self.device)  # f(x) = sgn(x) sqrt|x| (eq. 11)
        start = 0
        for m in self._noisy_layers:
            e_in = f[:, start : start + m.in_features]
            e_out = f[:, start + m.in_features : start + m.in_features + m.out_features]
            start += m.in_features + m.out_features
            m.forward = partial(_noisy_forward_per_row, m, e_in, e_out)
        try:
            yield
        finally:
            for m in self._noisy_layers:
                del m.forward

    @torch.no_grad()
    def step(self, obs, env_ids=None):
        """Actions for obs [N, ...] of the envs ``env_ids`` (global env indices; default
        0..N-1), exploring with each env's own random stream."""
        if env_ids is None:
            env_ids = np.arange(_batch_size(obs))
        return self._epsilon_greedy(obs, self.epsilon, env_ids), None

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        return self._epsilon_greedy(obs, self.eval_epsilon if deterministic else self.epsilon)


def _noisy_forward_per_row(m: NoisyLinear, eps_in, eps_out, x: torch.Tensor) -> torch.Tensor:
    y = nn.functional.linear(x, m.weight_mu, m.bias_mu)
    return y + eps_out * (nn.functional.linear(x * eps_in, m.weight_sigma) + m.bias_sigma)


def _batch_size(obs) -> int:
    """Leading dim of an observation batch (an array or a tree of arrays)."""
    while isinstance(obs, tuple):
        obs = next(x for x in obs if x is not None)
    return int(obs.shape[0])
