"""SerialSampler: the Samples schema [T, B], bootstrap values and time-limit bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.agents.pg import PgAgent
from asyncrl.data import is_namedarraytuple
from asyncrl.envs import EnvSpec
from asyncrl.models import ModelConfig
from asyncrl.samplers import SerialSampler

TOY = "tests.envs.toy_envs:ToyEnv"


def _sampler(spec, num_envs=2, horizon=4, seed=0):
    sampler = SerialSampler(spec, num_envs, horizon, seed=seed)
    agent = PgAgent(sampler.obs_space, sampler.action_space, ModelConfig(hidden_sizes=[8]))
    sampler.initialize(agent)
    return sampler, agent


def test_samples_have_the_rlpyt_shape_and_follow_the_env():
    sampler, agent = _sampler(EnvSpec(id=TOY, kwargs={"length": 3}), num_envs=2, horizon=4)
    with sampler:
        batch = sampler.obtain()
        s = batch.samples
        assert batch.env_steps == 8
        assert s.env.observation.shape == (4, 2, 3) and s.agent.action.shape == (4, 2)
        assert s.env.reward.shape == s.env.terminated.shape == s.env.truncated.shape == (4, 2)
        assert s.agent.agent_info.value.shape == (4, 2)
        # observation[t] is what the agent saw before action[t]: the step counter 0, 1, 2, 0
        assert s.env.observation[:, :, 0].tolist() == [[0, 0], [1, 1], [2, 2], [0, 0]]
        assert s.env.terminated.tolist() == [[False] * 2, [False] * 2, [True] * 2, [False] * 2]
        # ToyEnv pays 1 when the action equals the step parity
        parity = s.env.observation[:, :, 0].astype(np.int64) % 2
        np.testing.assert_array_equal(s.env.reward, (s.agent.action == parity).astype(np.float32))
        # prev_action: the previous action, zeroed at the start of an episode
        np.testing.assert_array_equal(s.agent.prev_action[1:3], s.agent.action[0:2])
        assert s.agent.prev_action[3].tolist() == [0, 0]
        np.testing.assert_allclose(
            batch.bootstrap_value, agent.value(batch.next_observation), rtol=1e-6
        )
        assert batch.episodes.lengths == [3, 3]
        assert batch.final_observations == []
        assert (s.env.env_info.timeout_value == 0).all()
        # the next batch continues where this one stopped
        s2 = sampler.obtain().samples
        assert s2.env.observation[:, :, 0].tolist() == [[1, 1], [2, 2], [0, 0], [1, 1]]


def test_truncation_records_the_value_of_the_final_observation():
    spec = EnvSpec(id=TOY, kwargs={"length": 100}, max_episode_steps=2)
    sampler, agent = _sampler(spec, num_envs=2, horizon=5)
    with sampler:
        batch = sampler.obtain()
        s = batch.samples
        assert s.env.truncated[:, 0].tolist() == [False, True, False, True, False]
        assert not s.env.terminated.any()
        assert [(t, b) for t, b, _ in batch.final_observations] == [(1, 0), (1, 1), (3, 0), (3, 1)]
        for t, b, obs in batch.final_observations:
            assert obs[0] == 2  # the real last observation, not the reset one
            expected = agent.value(obs[None])[0]
            assert s.env.env_info.timeout_value[t, b] == pytest.approx(expected, rel=1e-5)
        untouched = ~s.env.truncated
        assert (s.env.env_info.timeout_value[untouched] == 0).all()
        # a later batch without truncations at those cells starts from zeros again
        batch = sampler.obtain()
        cells = [(t, b) for t, b, _ in batch.final_observations]
        assert cells == [(t, b) for t in (0, 2, 4) for b in (0, 1)]
        assert (batch.samples.env.env_info.timeout_value[1] == 0).all()


def test_dict_observations_are_sampled_as_trees():
    sampler, _ = _sampler(EnvSpec(id="tests.envs.toy_envs:DictEnv", kwargs={"length": 3}), 3, 4)
    with sampler:
        obs = sampler.obtain().samples.env.observation
        assert is_namedarraytuple(obs)
        assert obs.goal.shape == (4, 3) and obs.position.shape == (4, 3, 2)


def test_same_seed_same_samples():
    spec = EnvSpec(id="CartPole-v1")

    def run():
        import torch

        torch.manual_seed(0)
        sampler, _ = _sampler(spec, num_envs=2, horizon=16, seed=3)
        with sampler:
            s = sampler.obtain().samples
            return s.env.observation.copy(), s.agent.action.copy()

    (o1, a1), (o2, a2) = run(), run()
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(a1, a2)
