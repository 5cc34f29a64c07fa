"""Tiny gymnasium envs for the tests: one per space kind, cheap and deterministic given a seed.

Importing this module registers ``AsyncrlToyDict-v0`` (used by the end-to-end Dict test);
``tests.envs.toy_registry`` is the separate module that the ``imports=[...]`` test imports.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ToyEnv(gym.Env):
    """Box(3) observations, Discrete(2) actions; terminates after ``length`` steps.

    The observation carries the step count and seeded noise, so seeding is visible in the data.
    Reward is 1 when the action equals the parity of the step count.
    """

    metadata: dict = {"render_modes": []}

    def __init__(self, length: int = 5):
        self.length = length
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        noise = self.np_random.normal(size=2)
        return np.array([self.t, *noise], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.t % 2)
        self.t += 1
        return self._obs(), reward, self.t >= self.length, False, {}


class DictEnv(gym.Env):
    """Dict observations ``{"goal": Discrete(3), "position": Box(2)}``; Discrete(3) actions.

    Reward 1 when the action names the goal, else 0; 10 steps per episode (terminated). A random
    policy scores about 3.3 per episode, the optimal one 10: learning shows within a few thousand
    steps.
    """

    metadata: dict = {"render_modes": []}

    def __init__(self, length: int = 10):
        self.length = length
        self.observation_space = spaces.Dict(
            {"goal": spaces.Discrete(3), "position": spaces.Box(-1.0, 1.0, (2,), np.float32)}
        )
        self.action_space = spaces.Discrete(3)

    def _obs(self):
        self.goal = int(self.np_random.integers(3))
        pos = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        return {"goal": self.goal, "position": pos}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.goal)
        self.t += 1
        return self._obs(), reward, self.t >= self.length, False, {}


class TupleEnv(gym.Env):
    """Tuple observations ``(Box(2), Discrete(4))``; MultiDiscrete([3, 2]) actions."""

    metadata: dict = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Tuple(
            (spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(4))
        )
        self.action_space = spaces.MultiDiscrete([3, 2])
        self.last_action = None

    def _obs(self):
        return (
            self.np_random.uniform(-1, 1, size=2).astype(np.float32),
            int(self.np_random.integers(4)),
        )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        action = np.asarray(action)
        assert action.shape == (2,) and self.action_space.contains(action.astype(np.int64)), action
        self.last_action = action.copy()
        return self._obs(), float(action.sum()), False, False, {}


class BoxActionEnv(gym.Env):
    """Box(2) observations, Box(-1, 1, (2,)) actions; records the (clipped) action it received."""

    metadata: dict = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.last_action = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.last_action = np.array(action, np.float32)
        return self.last_action.clip(-1, 1), -float(np.square(action).sum()), False, False, {}


class BufferReuseEnv(ToyEnv):
    """ToyEnv that writes every observation into one array it owns (as some simulators do)."""

    def __init__(self, length: int = 5):
        super().__init__(length)
        self._buf = np.zeros(3, np.float32)

    def _obs(self) -> np.ndarray:
        self._buf[:] = super()._obs()
        return self._buf


DICT_ENV_ID = "AsyncrlToyDict-v0"
if DICT_ENV_ID not in gym.registry:
    gym.register(DICT_ENV_ID, entry_point="tests.envs.toy_envs:DictEnv", max_episode_steps=50)


class SlowCartPole(gym.Wrapper):
    """CartPole-v1 whose every step takes ``step_s`` seconds more: a slow sampler."""

    def __init__(self, step_s: float = 0.002):
        super().__init__(gym.make("CartPole-v1"))
        self.step_s = step_s

    def step(self, action):
        import time

        time.sleep(self.step_s)
        return self.env.step(action)


SLOW_ID = "AsyncrlSlowCartPole-v1"
if SLOW_ID not in gym.registry:
    gym.register(SLOW_ID, entry_point="tests.envs.toy_envs:SlowCartPole", max_episode_steps=500)
