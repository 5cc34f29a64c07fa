"""A vector of gymnasium envs stepped in one process, writing into preallocated buffers.

Owns: stepping B envs, autoreset, episode statistics on the raw reward, gymnasium's
terminated/truncated distinction, and the training-only Atari signals (life loss as terminal,
reward clipping) which are applied *after* the statistics so logged returns are raw game scores.
Must not know about agents or samplers.

Autoreset is "same step": when env b ends at step t, ``obs[b]`` returned by ``step`` is already
the first observation of the next episode, ``terminated[b]``/``truncated[b]`` say how it ended,
and for a truncation the env's last observation is returned in ``final_obs`` so the learner can
bootstrap from it (Pardo et al. 2018, "Time Limits in Reinforcement Learning").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from asyncrl.data import buffer_from_example, tree_map
from asyncrl.envs.spaces import space_example, space_to_tree, tree_to_space
from asyncrl.envs.spec import EnvSpec, make_env, validate_env_id


@dataclass
class EpisodeStats:
    returns: list[float]
    lengths: list[int]


class VecEnv:
    """B envs built from one spec; ``reset()`` then ``step(actions)``.

    ``training`` enables the Atari training-only signals (see module docstring); evaluation envs
    use ``training=False``.
    """

    def __init__(
        self,
        spec: EnvSpec,
        num_envs: int,
        seed: int = 0,
        training: bool = True,
        render_mode: str | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.spec = spec
        self.family = validate_env_id(spec)
        self.num_envs = num_envs
        self.seed = seed
        self.envs = [make_env(spec, render_mode=render_mode) for _ in range(num_envs)]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.obs_example = space_example(self.observation_space)
        self.action_example = space_example(self.action_space)
        self.obs = buffer_from_example(self.obs_example, num_envs)
        self.reward = np.zeros(num_envs, np.float32)
        self.terminated = np.zeros(num_envs, bool)
        self.truncated = np.zeros(num_envs, bool)
        self._ep_return = np.zeros(num_envs, np.float64)
        self._ep_length = np.zeros(num_envs, np.int64)
        self._done_returns: list[float] = []
        self._done_lengths: list[int] = []
        is_atari = self.family == "atari"
        self.life_loss_terminal = training and is_atari and spec.terminal_on_life_loss
        self.clip_reward = training and is_atari and spec.clip_reward
        self._box_action = isinstance(self.action_space, gym.spaces.Box)
        self._discrete_action = isinstance(self.action_space, gym.spaces.Discrete)
        self._structured_obs = isinstance(
            self.observation_space, gym.spaces.Dict | gym.spaces.Tuple
        )
        if self._box_action:
            self._low = self.action_space.low
            self._high = self.action_space.high
        self._needs_reset = True

    def _write_obs(self, b: int, obs: Any) -> None:
        self.obs[b] = space_to_tree(self.observation_space, obs) if self._structured_obs else obs

    def reset(self) -> Any:
        """Reset every env (seeded ``seed + b`` on the first call); returns the obs buffer."""
        for b, env in enumerate(self.envs):
            seed = self.seed + b if self._needs_reset else None
            obs, _ = env.reset(seed=seed)
            if seed is not None:
                env.action_space.seed(seed)
            self._write_obs(b, obs)
        self._ep_return[:] = 0
        self._ep_length[:] = 0
        self._needs_reset = False
        return self.obs

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list]:
        """Step all envs. Returns (obs, reward, terminated, truncated, final_obs) where the arrays
        are this object's buffers (overwritten next step) and ``final_obs`` is a list of
        ``(b, last_observation)`` for envs that were truncated (not terminated) this step."""
        final_obs: list[tuple[int, Any]] = []
        for b, env in enumerate(self.envs):
            a = actions[b]
            if self._discrete_action:
                a = int(a)
            elif self._box_action:
                a = np.clip(a, self._low, self._high)
            elif not isinstance(a, np.ndarray):
                a = tree_to_space(self.action_space, a)
            obs, reward, terminated, truncated, info = env.step(a)
            self._ep_return[b] += reward
            self._ep_length[b] += 1
            if self.clip_reward:
                reward = np.sign(reward)
            self.reward[b] = reward
            self.terminated[b] = terminated
            self.truncated[b] = truncated and not terminated
            if terminated or truncated:
                self._done_returns.append(float(self._ep_return[b]))
                self._done_lengths.append(int(self._ep_length[b]))
                self._ep_return[b] = 0.0
                self._ep_length[b] = 0
                if truncated and not terminated:
                    # a copy: the reset below may reuse the array the env handed out
                    last = (
                        space_to_tree(self.observation_space, obs) if self._structured_obs else obs
                    )
                    final_obs.append((b, tree_map(np.array, last)))
                obs, _ = env.reset()
            elif self.life_loss_terminal and info.get("life_loss", False):
                self.terminated[b] = True  # learner sees a terminal; the game goes on
            self._write_obs(b, obs)
        return self.obs, self.reward, self.terminated, self.truncated, final_obs

    def reset_envs(self, envs) -> Any:
        """Start a new episode in the given envs (continuing their random streams), e.g. after
        an evaluation cut one short; their episode statistics are discarded. Returns obs."""
        for b in envs:
            obs, _ = self.envs[int(b)].reset()
            self._write_obs(int(b), obs)
            self._ep_return[b] = 0.0
            self._ep_length[b] = 0
        return self.obs

    def pop_episode_stats(self) -> EpisodeStats:
        stats = EpisodeStats(self._done_returns, self._done_lengths)
        self._done_returns, self._done_lengths = [], []
        return stats

    def render(self, b: int = 0):
        return self.envs[b].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
