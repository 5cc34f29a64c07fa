"""Recurrent policy-gradient agent (recurrent PPO, A2C, APPO): the recurrent actor-critic plus
the recurrent state of every env it acts for.

The state lives with the agent object, wherever inference runs: in each worker (parallel
mode), in the inference server (central, alternating), in this process (serial). Per global
env id it keeps the core's state, the previous action and the previous reward (the core's extra
inputs). The sampler tells it each step's rewards (``observe``) and which episodes ended
(``on_episode_end``, from the collector, or the ``reset`` flags of central ACT_REQUESTs); an
ended episode's state is zeroed, so the next step starts from zero. A worker that is replaced
starts its envs' episodes over and flags them all as reset with its first request.

Samples carry, per step, the state *before* the step and the previous reward
(``RnnPgInfo.rnn_state``, ``prev_reward``), so the learner can restart an unroll at any step.
The state an episode had when it ended is kept until the env's next end, for the value of a
time-limit's final observation (``value(..., final=True)``); an env with two episode ends in
one batch, the first a time limit, gets the later state for it.

Evaluation (``act``) keeps a separate state per evaluation env (``reset_eval`` at the start,
``observe_eval`` after each step). Checkpoints do not hold the state: resumed runs restart
their episodes, as feed-forward runs do.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from asyncrl.agents.base import Agent, PerEnvNoise
from asyncrl.data import namedarraytuple
from asyncrl.models.policies import ModelConfig
from asyncrl.models.recurrent import RecurrentActorCritic

RnnPgInfo = namedarraytuple("RnnPgInfo", ["value", "log_prob", "rnn_state", "prev_reward"])


class EnvStates:
    """Rows of per-env recurrent state, previous action and previous reward, by env id."""

    FIELDS = (
        "state", "prev_action", "prev_reward", "final_state", "final_action", "final_reward",
    )  # fmt: skip

    def __init__(self, state_size: int, action_example):
        self.rows: dict[int, int] = {}
        self.action_example = np.asarray(action_example)
        self.state = np.zeros((0, state_size), np.float32)
        self.prev_action = np.zeros((0, *self.action_example.shape), self.action_example.dtype)
        self.prev_reward = np.zeros(0, np.float32)
        # what an env had when its latest episode ended (time-limit bootstrap values)
        self.final_state = self.state.copy()
        self.final_action = self.prev_action.copy()
        self.final_reward = self.prev_reward.copy()

    def of(self, env_ids) -> np.ndarray:
        ids = np.asarray(env_ids, np.int64).reshape(-1)
        rows = self.rows
        new = [int(e) for e in dict.fromkeys(ids.tolist()) if int(e) not in rows]
        if new:
            for e in new:
                rows[e] = len(rows)
            grow = len(rows) - len(self.prev_reward)
            for key in self.FIELDS:
                arr = getattr(self, key)
                setattr(
                    self, key, np.concatenate([arr, np.zeros((grow, *arr.shape[1:]), arr.dtype)])
                )
        return np.fromiter((rows[int(e)] for e in ids), np.int64, len(ids))

    def end(self, rows: np.ndarray) -> None:
        self.final_state[rows] = self.state[rows]
        self.final_action[rows] = self.prev_action[rows]
        self.final_reward[rows] = self.prev_reward[rows]
        self.state[rows] = 0
        self.prev_action[rows] = 0
        self.prev_reward[rows] = 0


class RecurrentEnvs:
    """What every recurrent agent does with its ``envs`` and ``eval_envs`` (:class:`EnvStates`):
    take each step's rewards, zero the state of ended episodes, start evaluations afresh."""

    recurrent = True
    envs: EnvStates
    eval_envs: EnvStates
    device: torch.device

    def _t(self, x) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def observe(self, reward, env_ids) -> None:
        """The rewards of the step just taken (the next step's previous-reward input)."""
        rows = self.envs.of(env_ids)  # first: it may grow the arrays
        self.envs.prev_reward[rows] = np.asarray(reward, np.float32)

    def on_episode_end(self, done: np.ndarray, env_ids: np.ndarray | None = None) -> None:
        done = np.asarray(done, bool)
        ids = np.arange(len(done)) if env_ids is None else np.asarray(env_ids)
        if done.any():
            self.envs.end(self.envs.of(ids[done]))

    def reset_eval(self) -> None:
        self.eval_envs = EnvStates(self.envs.state.shape[1], self.envs.action_example)

    def observe_eval(self, reward, ended) -> None:
        e = self.eval_envs
        rows = e.of(np.arange(len(ended)))
        e.prev_reward[rows] = np.asarray(reward, np.float32)
        ended = np.asarray(ended, bool)
        if ended.any():
            e.end(rows[ended])


class RecurrentPgAgent(RecurrentEnvs, Agent):
    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        model_config: ModelConfig | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        super().__init__(device)
        self.obs_space, self.action_space = obs_space, action_space
        self.model_config = model_config or ModelConfig(core="lstm")
        self.model = RecurrentActorCritic(obs_space, action_space, self.model_config).to(
            self.device
        )
        self.noise = PerEnvNoise(seed)
        self.state_size = self.model.state_size
        self.action_example = _action_example(action_space)
        self.envs = EnvStates(self.state_size, self.action_example)
        self.eval_envs = EnvStates(self.state_size, self.action_example)

    def info_example(self):
        z = np.zeros((), np.float32)
        return RnnPgInfo(z, z, np.zeros(self.state_size, np.float32), z)

    # -- acting -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, obs, env_ids: np.ndarray | None = None) -> tuple[np.ndarray, RnnPgInfo]:
        """Actions for obs [N, ...] of envs ``env_ids`` (default 0..N-1), advancing their
        states; noise from one stream per env, as ``PgAgent.step``."""
        obs_t = self.obs_to_torch(obs)
        n = int(np.shape(_first_leaf(obs))[0])
        ids = np.arange(n) if env_ids is None else np.asarray(env_ids)
        e = self.envs
        rows = e.of(ids)
        state, prev_reward = e.state[rows], e.prev_reward[rows]
        dist, value, new_state = self.model.step(
            obs_t, self._t(e.prev_action[rows]), self._t(prev_reward), self._t(state)
        )
        noise = self.noise.draw(
            ids, dist.noise_shape(), "uniform" if self.model.pi.kind != "gaussian" else "normal"
        )
        action = dist.sample_from(torch.from_numpy(noise).to(value.device))
        log_prob = dist.log_prob(action)
        action_np = action.cpu().numpy()
        e.state[rows] = new_state.cpu().numpy()
        e.prev_action[rows] = action_np
        info = RnnPgInfo(value.cpu().numpy(), log_prob.cpu().numpy(), state, prev_reward)
        return action_np, info

    @torch.no_grad()
    def value(self, obs, env_ids: np.ndarray | None = None, final: bool = False) -> np.ndarray:
        """V of obs [N, ...] from the envs' current states (``final``: from the state their
        latest episode ended with: the value of a time limit's final observation)."""
        obs_t = self.obs_to_torch(obs)
        n = int(np.shape(_first_leaf(obs))[0])
        e = self.envs
        rows = e.of(np.arange(n) if env_ids is None else env_ids)
        if final:
            state, pa, pr = e.final_state[rows], e.final_action[rows], e.final_reward[rows]
        else:
            state, pa, pr = e.state[rows], e.prev_action[rows], e.prev_reward[rows]
        _, value, _ = self.model.step(obs_t, self._t(pa), self._t(pr), self._t(state))
        return value.cpu().numpy()

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        obs_t = self.obs_to_torch(obs)
        n = int(np.shape(_first_leaf(obs))[0])
        e = self.eval_envs
        rows = e.of(np.arange(n))
        dist, _, new_state = self.model.step(
            obs_t, self._t(e.prev_action[rows]), self._t(e.prev_reward[rows]),
            self._t(e.state[rows]),
        )  # fmt: skip
        action = (dist.mode() if deterministic else dist.sample()).cpu().numpy()
        e.state[rows] = new_state.cpu().numpy()
        e.prev_action[rows] = action
        return action

    def update_normalizer(self, obs_torch) -> None:
        if self.model.normalizer is not None:
            self.model.normalizer.update(obs_torch)


def _first_leaf(tree):
    while isinstance(tree, tuple):
        tree = next(t for t in tree if t is not None)
    return tree


def _action_example(space: gym.Space) -> np.ndarray:
    """One zero action (what the samplers store: int64 for Discrete, float32 for a Box)."""
    if isinstance(space, gym.spaces.Discrete):
        return np.zeros((), np.int64)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return np.zeros(space.shape, np.int64)
    return np.zeros(space.shape, np.float32)
