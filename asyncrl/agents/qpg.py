"""Agents for Q-value policy gradients: a deterministic actor with exploration noise (Gaussian,
or Ornstein-Uhlenbeck for DDPG) or a tanh-squashed Gaussian actor (SAC); actions are scaled from
[-1, 1] to the env's bounds. Owns acting and exploration; losses are in algos/."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import Agent
from asyncrl.models.policies import FlattenObs
from asyncrl.models.qpg import DeterministicActor, SquashedGaussianActor


class OrnsteinUhlenbeckNoise:
    """dx = theta (mu - x) dt + sigma sqrt(dt) N(0, 1), one process per env and action dim
    (Lillicrap et al. 2016 use theta 0.15, sigma 0.2)."""

    def __init__(self, shape, sigma: float, theta: float = 0.15, dt: float = 1e-2, rng=None):
        self.shape, self.sigma, self.theta, self.dt = shape, sigma, theta, dt
        self.rng = rng or np.random.default_rng()
        self.x = np.zeros(shape, np.float32)

    def __call__(self) -> np.ndarray:
        self.x += self.theta * -self.x * self.dt + self.sigma * np.sqrt(
            self.dt
        ) * self.rng.standard_normal(self.shape).astype(np.float32)
        return self.x

    def reset(self, mask: np.ndarray | None = None) -> None:
        if mask is None:
            self.x[:] = 0
        else:
            self.x[mask] = 0


class QpgAgent(Agent):
    """``kind``: ``deterministic`` (DDPG, TD3) or ``gaussian`` (SAC)."""

    acting_fields = ("random_actions",)

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes,
        kind: str = "gaussian",
        activation_name: str = "relu",
        noise: str = "gaussian",  # gaussian | ou | none (deterministic actors)
        noise_sigma: float = 0.1,
        ou_theta: float = 0.15,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        super().__init__(device)
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"DDPG/TD3/SAC need a 1-d Box action space, got {action_space!r}")
        if not np.all(np.isfinite(action_space.low)) or not np.all(np.isfinite(action_space.high)):
            raise ValueError("DDPG/TD3/SAC need finite action bounds")
        self.obs_space, self.action_space = obs_space, action_space
        self.flatten = FlattenObs(obs_space)
        obs_dim, self.action_dim = self.flatten.output_size, int(action_space.shape[0])
        self.kind = kind
        if kind == "deterministic":
            self.model = DeterministicActor(obs_dim, self.action_dim, hidden_sizes, activation_name)
        elif kind == "gaussian":
            self.model = SquashedGaussianActor(
                obs_dim, self.action_dim, hidden_sizes, activation_name
            )
        else:
            raise ValueError(f"unknown actor kind {kind!r}")
        self.model.to(self.device)
        self.low = action_space.low.astype(np.float32)
        self.high = action_space.high.astype(np.float32)
        self.center = (self.high + self.low) / 2
        self.half_range = (self.high - self.low) / 2
        self._bounds_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.noise_kind, self.noise_sigma, self.ou_theta = noise, noise_sigma, ou_theta
        self.rng = np.random.default_rng(seed)
        self._ou: OrnsteinUhlenbeckNoise | None = None
        self.random_actions = True  # uniform random actions until the learner says otherwise

    def info_example(self):
        return None

    def features(self, obs_t) -> torch.Tensor:
        return self.flatten(obs_t)

    def to_env(self, a: np.ndarray) -> np.ndarray:
        return (self.center + self.half_range * a).astype(np.float32)

    def from_env(self, a):
        """Env-scale actions -> [-1, 1] (torch or numpy); the inverse of ``to_env``."""
        if isinstance(a, torch.Tensor):
            c, h = self._bounds_on(a.device)
            return ((a - c) / h).clamp(-1.0, 1.0)
        return np.clip((a - self.center) / self.half_range, -1.0, 1.0)

    def _bounds_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(center, half_range) as tensors on ``device``, made once (from_env runs per update)."""
        cached = self._bounds_cache.get(device)
        if cached is None:
            cached = (
                torch.as_tensor(self.center, device=device),
                torch.as_tensor(self.half_range, device=device),
            )
            self._bounds_cache[device] = cached
        return cached

    @torch.no_grad()
    def step(self, obs, env_ids=None):
        n = _batch_size(obs)
        if self.random_actions:
            a = self.rng.uniform(-1.0, 1.0, (n, self.action_dim)).astype(np.float32)
            return self.to_env(a), None
        x = self.features(self.obs_to_torch(obs))
        if self.kind == "gaussian":
            a, _ = self.model(x, deterministic=False, with_log_prob=False)
            a = a.cpu().numpy()
        else:
            a = self.model(x).cpu().numpy()
            if self.noise_kind == "gaussian":
                a = a + self.noise_sigma * self.rng.standard_normal(a.shape).astype(np.float32)
            elif self.noise_kind == "ou":
                if self._ou is None or self._ou.shape != a.shape:
                    self._ou = OrnsteinUhlenbeckNoise(
                        a.shape, self.noise_sigma, self.ou_theta, rng=self.rng
                    )
                a = a + self._ou()
            a = np.clip(a, -1.0, 1.0)
        return self.to_env(a), None

    def on_episode_end(self, done_mask: np.ndarray) -> None:
        if self._ou is not None:
            self._ou.reset(done_mask)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        x = self.features(self.obs_to_torch(obs))
        if self.kind == "gaussian":
            a, _ = self.model(x, deterministic=deterministic, with_log_prob=False)
        else:
            a = self.model(x)
        return self.to_env(a.cpu().numpy())


def _batch_size(obs) -> int:
    while isinstance(obs, tuple):
        obs = next(o for o in obs if o is not None)
    return obs.shape[0]
