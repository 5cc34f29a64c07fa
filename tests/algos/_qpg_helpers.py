"""Shared set-up for the DDPG/TD3/SAC unit tests: a small learner on a 3-d observation and a
2-d Box action space, and random replay minibatches with actions inside that space's bounds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.replay import ReplaySample

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)


def make_learner(algo_cls, config_cls, make_agent, action_space: gym.spaces.Box, **kw):
    base = dict(hidden_sizes=[32, 32], batch_size=16, buffer_size=1000, learning_starts=20)
    base.update(kw)
    cfg = config_cls(**base)
    torch.manual_seed(0)
    agent = make_agent(OBS_SPACE, action_space, None, "cpu", cfg)
    return algo_cls(agent, cfg, seed=0)


def random_sample(action_space: gym.spaces.Box, n: int, seed: int = 0) -> ReplaySample:
    gen = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(action_space.low), torch.tensor(action_space.high)
    return ReplaySample(
        observation=torch.randn(n, 3, generator=gen),
        action=low + (high - low) * torch.rand(n, 2, generator=gen),
        reward=torch.randn(n, generator=gen),
        done_n=torch.zeros(n, dtype=torch.bool),
        discount=torch.full((n,), 0.99),
        next_observation=torch.randn(n, 3, generator=gen),
        weights=torch.ones(n),
        indices=torch.arange(n),
    )
