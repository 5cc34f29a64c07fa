"""Evaluation cannot run away: a per-episode step cap and a budget for the whole evaluation,
each announced in the log when it bites; an untrained agent's Breakout evaluation ends."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from asyncrl.algos import ALGOS
from asyncrl.configs.config import resolve_config
from asyncrl.envs import EnvSpec, VecEnv
from asyncrl.runners.evaluation import ATARI_EVAL_FRAMES, eval_limits, evaluate


class CountingAgent:
    """Always the same action; counts its calls (one per vector step)."""

    def __init__(self, action: int = 0):
        self.action, self.calls = action, 0

    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        self.calls += 1
        return np.full(len(obs), self.action, np.int64)


def test_limits_default_to_the_env_time_limit_and_atari_five_minutes():
    cap, budget = eval_limits(EnvSpec(id="CartPole-v1"), 10)
    assert (cap, budget) == (500, 5000)  # full episodes always fit
    cap, budget = eval_limits(EnvSpec(id="CartPole-v1"), 10, eval_every=20_000)
    assert budget == 20_000  # never less than the training between two evaluations
    cap, budget = eval_limits(EnvSpec(id="ALE/Breakout-v5"), 10)
    assert cap == ATARI_EVAL_FRAMES // 4 and budget == 10 * 500


def test_per_episode_cap_cuts_episodes_and_says_so(caplog):
    # Pendulum never terminates: episodes end only by the cap here (its time limit is 200)
    agent = CountingAgent()
    agent.act = lambda obs, deterministic=True: np.zeros((len(obs), 1), np.float32)
    with caplog.at_level(logging.WARNING, logger="asyncrl.eval"):
        rets = evaluate(agent, EnvSpec(id="Pendulum-v1"), 4, num_envs=2, max_episode_steps=30)
    assert len(rets) == 4
    assert all(r < 0 for r in rets)  # a Pendulum return is a sum of negative rewards
    assert any("reached the cap of 30 steps" in r.getMessage() for r in caplog.records)
    # the cut episodes hold 30 steps of reward each: the same as a 30-step time limit
    with VecEnv(EnvSpec(id="Pendulum-v1", max_episode_steps=30), 2, seed=10_000) as env:
        env.reset()
        for _ in range(30):
            env.step(np.zeros((2, 1), np.float32))
        first = env.pop_episode_stats().returns
    np.testing.assert_allclose(sorted(rets[[0, 2]]), sorted(first), rtol=1e-6)


def test_budget_ends_an_evaluation_that_never_finishes(caplog):
    # Breakout without FIRE on reset, an agent sending NOOP: the ball is never launched and
    # no episode would end before ALE's 108k-frame limit
    agent = CountingAgent(0)
    spec = EnvSpec(id="ALE/Breakout-v5", fire_reset=False)
    with caplog.at_level(logging.WARNING, logger="asyncrl.eval"):
        rets = evaluate(agent, spec, 4, num_envs=2, max_steps=200)
    assert agent.calls == 100  # 2 envs x 100 steps = the budget
    assert len(rets) == 2  # no episode finished: the two in progress, cut at the budget
    assert np.all(rets == 0)
    assert any("evaluation budget of 200 env steps" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_untrained_ppo_evaluation_on_breakout_ends_within_its_budget(caplog):
    """The defect: an untrained PPO agent's deterministic policy in Breakout. With FIRE on
    reset the ball is in play; the budget bounds the whole evaluation."""
    cfg = resolve_config("ppo", "ALE/Breakout-v5")
    with VecEnv(cfg.env, 1) as env:
        spaces = env.observation_space, env.action_space
    agent = ALGOS["ppo"].make_agent(*spaces, cfg.model, "cpu", cfg.algo_params)
    agent.eval_mode()
    calls = []
    act = agent.act
    agent.act = lambda obs, deterministic=True: calls.append(1) or act(obs, deterministic)
    cap, budget = eval_limits(cfg.env, 10, eval_every=300)
    assert budget == 5000
    with caplog.at_level(logging.WARNING, logger="asyncrl.eval"):
        rets = evaluate(agent, cfg.env, 10, max_episode_steps=cap, max_steps=budget)
    assert 1 <= len(rets) <= 10
    assert len(calls) <= budget  # each call steps at least one env still owed an episode
