"""Agents for Q-value policy gradients: a deterministic actor with exploration noise (Gaussian,
or Ornstein-Uhlenbeck for DDPG) or a tanh-squashed Gaussian actor (SAC); actions are scaled from
[-1, 1] to the env's bounds. Owns acting and exploration; losses are in algos/."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import ENV_STREAMS_KEY, Agent, PerEnvNoise, act_stream
from asyncrl.models.policies import FlattenObs
from asyncrl.models.qpg import DeterministicActor, SquashedGaussianActor


class OrnsteinUhlenbeckNoise:
    """dx = theta (mu - x) dt + sigma sqrt(dt) N(0, 1), one process per env and action dim
    (Lillicrap et al. 2016 use theta 0.15, sigma 0.2). Row b of ``x`` is env b's process:
    ``__call__`` advances every row with normals from ``rng``; ``advance`` advances the given
    rows with normals the caller drew (the agent draws env b's from env b's stream)."""

    def __init__(self, shape, sigma: float, theta: float = 0.15, dt: float = 1e-2, rng=None):
        self.shape, self.sigma, self.theta, self.dt = tuple(shape), sigma, theta, dt
        self.rng = rng or np.random.default_rng()
        self.x = np.zeros(shape, np.float32)

    def __call__(self) -> np.ndarray:
        return self.advance(slice(None), self.rng.standard_normal(self.shape).astype(np.float32))

    def advance(self, rows, normal: np.ndarray) -> np.ndarray:
        """x[rows] += theta (0 - x[rows]) dt + sigma sqrt(dt) normal; returns the new x[rows]."""
        x = self.x[rows]
        x += self.theta * -x * self.dt + self.sigma * np.sqrt(self.dt) * normal
        self.x[rows] = x
        return x

    def grow(self, n_rows: int) -> None:
        """Room for env rows 0..n_rows-1 (new rows start at 0)."""
        if n_rows > self.x.shape[0]:
            x = np.zeros((n_rows, *self.x.shape[1:]), np.float32)
            x[: self.x.shape[0]] = self.x
            self.x, self.shape = x, x.shape

    def reset(self, mask: np.ndarray | None = None) -> None:
        if mask is None:
            self.x[:] = 0
        else:
            self.x[mask] = 0


class QpgAgent(Agent):
    """``kind``: ``deterministic`` (DDPG, TD3) or ``gaussian`` (SAC).

    ``step(obs, env_ids)`` draws env b's exploration from env b's own stream (``self.noise``,
    seeded from (seed, b)), one draw of ``action_dim`` numbers per env and step: uniforms for
    the random actions before learning starts, then standard normals: SAC's policy sample
    a = tanh(mean + std * normal) (the reparameterisation, with the normal from the env's
    stream, not torch's), TD3's Gaussian noise, or the increment of env b's own
    Ornstein-Uhlenbeck process (DDPG; ``on_episode_end`` zeroes the processes of envs whose
    episode ended). No two envs or workers share draws, and the same seed gives the same
    actions in every sampling mode. ``act`` (evaluation) leaves the env streams alone; its
    stochastic SAC action draws from ``self.rng``."""

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
        self.noise = PerEnvNoise(seed, ENV_STREAMS_KEY)  # step(): one stream per env
        self.rng = act_stream(seed)  # act(deterministic=False)
        self._ou: OrnsteinUhlenbeckNoise | None = None  # row b: env b's OU process
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
        """Actions for obs [N, ...] of the envs ``env_ids`` (global env indices; default
        0..N-1), exploring with each env's own random stream."""
        ids = np.arange(_batch_size(obs)) if env_ids is None else np.asarray(env_ids)
        shape = (self.action_dim,)
        if self.random_actions:
            return self.to_env(2.0 * self.noise.draw(ids, shape, "uniform") - 1.0), None
        x = self.features(self.obs_to_torch(obs))
        if self.kind == "gaussian":
            normal = torch.from_numpy(self.noise.draw(ids, shape, "normal")).to(x.device)
            a = self._squashed_sample(x, normal).cpu().numpy()
        else:
            a = self.model(x).cpu().numpy()
            if self.noise_kind == "gaussian":
                a = a + self.noise_sigma * self.noise.draw(ids, shape, "normal")
            elif self.noise_kind == "ou":
                n_rows = int(ids.max()) + 1
                if self._ou is None:
                    self._ou = OrnsteinUhlenbeckNoise(
                        (n_rows, self.action_dim), self.noise_sigma, self.ou_theta
                    )
                self._ou.grow(n_rows)
                a = a + self._ou.advance(ids, self.noise.draw(ids, shape, "normal"))
            a = np.clip(a, -1.0, 1.0)
        return self.to_env(a), None

    def _squashed_sample(self, x: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """tanh(mean + std * normal): the actor's sample for a given standard normal."""
        mean, log_std = self.model.distribution(x)
        return torch.tanh(mean + log_std.exp() * normal)

    def on_episode_end(self, done_mask: np.ndarray, env_ids=None) -> None:
        """Zero the OU processes of the envs whose episode ended (``done_mask`` [N] over
        ``env_ids``, default 0..N-1)."""
        if self._ou is None:
            return
        ids = np.arange(len(done_mask)) if env_ids is None else np.asarray(env_ids)
        rows = ids[np.asarray(done_mask, bool)]
        self._ou.x[rows[rows < self._ou.x.shape[0]]] = 0

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        x = self.features(self.obs_to_torch(obs))
        if self.kind == "gaussian":
            if deterministic:
                a, _ = self.model(x, deterministic=True, with_log_prob=False)
            else:
                n = (x.shape[0], self.action_dim)
                normal = torch.from_numpy(self.rng.standard_normal(n, np.float32))
                a = self._squashed_sample(x, normal.to(x.device))
        else:
            a = self.model(x)
        return self.to_env(a.cpu().numpy())


def _batch_size(obs) -> int:
    while isinstance(obs, tuple):
        obs = next(o for o in obs if o is not None)
    return obs.shape[0]
