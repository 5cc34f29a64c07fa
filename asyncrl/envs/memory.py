"""Memory tasks: envs a feed-forward agent cannot solve from one observation, for recurrent
agents. Registered with gymnasium when ``asyncrl.envs`` is imported.

- ``asyncrl/CartPoleNoVel-v1``: CartPole-v1 whose observation keeps the cart position and the
  pole angle and drops both velocities (the masked-velocity CartPole of the recurrent
  baselines: sb3-contrib's ``CartPoleNoVel-v1``, RL-Zoo's ``ppo_lstm.yml``). The velocities must
  be inferred from successive observations. Same dynamics, rewards and 500-step limit.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

KEPT = [0, 2]  # cart position, pole angle (velocities 1 and 3 are dropped)


class CartPoleNoVelocity(CartPoleEnv):
    """CartPole with the cart and pole velocities masked from the observation."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        high = np.array([self.x_threshold * 2, self.theta_threshold_radians * 2], np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return obs[KEPT], info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[KEPT], reward, terminated, truncated, info


def register() -> None:
    if "asyncrl/CartPoleNoVel-v1" not in gym.registry:
        gym.register(
            "asyncrl/CartPoleNoVel-v1",
            entry_point="asyncrl.envs.memory:CartPoleNoVelocity",
            max_episode_steps=500,
            reward_threshold=475.0,
        )


register()
