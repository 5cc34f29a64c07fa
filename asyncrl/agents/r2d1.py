"""Recurrent Q-learning agent (R2D1): epsilon-greedy acting from a recurrent Q-network, with the
recurrent state of every env it acts for (held as ``RecurrentPgAgent`` holds it: per global env
id, wherever inference runs; see agents/recurrent.py).

Samples carry, per step, the state before the step and the previous reward
(``RnnQInfo.rnn_state``, ``prev_reward``); the sequence replay keeps them at its sequence starts.
Exploration draws two uniforms per env and step from the env's own stream (the coin flip and
the random action, drawn whether used or not), as ``DqnAgent`` does, so every sampling mode
sees the same actions for the same seed.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import ENV_STREAMS_KEY, Agent, PerEnvNoise, act_stream
from asyncrl.agents.recurrent import EnvStates, RecurrentEnvs, _action_example, _first_leaf
from asyncrl.data import namedarraytuple
from asyncrl.models.recurrent import RecurrentQNetwork

RnnQInfo = namedarraytuple("RnnQInfo", ["rnn_state", "prev_reward"])


class R2d1Agent(RecurrentEnvs, Agent):
    acting_fields = ("epsilon",)

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        model_config,
        device: str | torch.device = "cpu",
        eval_epsilon: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(device)
        self.obs_space, self.action_space = obs_space, action_space
        self.model = RecurrentQNetwork(obs_space, action_space, model_config).to(self.device)
        self.n_actions = self.model.n_actions
        self.state_size = self.model.state_size
        self.epsilon = 1.0
        self.eval_epsilon = float(eval_epsilon)
        self.noise = PerEnvNoise(seed, ENV_STREAMS_KEY)
        self.rng = act_stream(seed)
        self.action_example = _action_example(action_space)
        self.envs = EnvStates(self.state_size, self.action_example)
        self.eval_envs = EnvStates(self.state_size, self.action_example)

    def info_example(self):
        z = np.zeros((), np.float32)
        return RnnQInfo(np.zeros(self.state_size, np.float32), z)

    def _q(self, e: EnvStates, obs, rows) -> tuple[torch.Tensor, np.ndarray]:
        q, state = self.model.step(
            self.obs_to_torch(obs), self._t(e.prev_action[rows]), self._t(e.prev_reward[rows]),
            self._t(e.state[rows]),
        )  # fmt: skip
        return q, state.cpu().numpy()

    @torch.no_grad()
    def step(self, obs, env_ids: np.ndarray | None = None) -> tuple[np.ndarray, RnnQInfo]:
        """Epsilon-greedy actions for obs [N, ...] of envs ``env_ids`` (default 0..N-1),
        advancing their states."""
        n = int(np.shape(_first_leaf(obs))[0])
        ids = np.arange(n) if env_ids is None else np.asarray(env_ids)
        e = self.envs
        rows = e.of(ids)
        state, prev_reward = e.state[rows], e.prev_reward[rows]
        q, new_state = self._q(e, obs, rows)
        u = self.noise.draw(ids, (2,), "uniform")
        action = self._explore(q.argmax(-1).cpu().numpy(), u, self.epsilon)
        e.state[rows] = new_state
        e.prev_action[rows] = action
        return action, RnnQInfo(state, prev_reward)

    def _explore(self, greedy: np.ndarray, u: np.ndarray, epsilon: float) -> np.ndarray:
        explore = u[:, 0] < epsilon
        random_actions = np.minimum((u[:, 1] * self.n_actions).astype(np.int64), self.n_actions - 1)
        return np.where(explore, random_actions, greedy).astype(np.int64)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        """Evaluation: epsilon-greedy with ``eval_epsilon`` (``deterministic``) or the training
        epsilon, from the evaluation envs' own states and ``self.rng``."""
        n = int(np.shape(_first_leaf(obs))[0])
        e = self.eval_envs
        rows = e.of(np.arange(n))
        q, new_state = self._q(e, obs, rows)
        epsilon = self.eval_epsilon if deterministic else self.epsilon
        action = self._explore(q.argmax(-1).cpu().numpy(), self.rng.random((n, 2)), epsilon)
        e.state[rows] = new_state
        e.prev_action[rows] = action
        return action
