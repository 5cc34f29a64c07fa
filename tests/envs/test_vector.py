"""VecEnv: same-step autoreset, terminated vs truncated (final_obs), seeding, spaces."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.data import is_namedarraytuple
from asyncrl.envs import EnvSpec, VecEnv

TOY = "tests.envs.toy_envs:ToyEnv"


def test_truncation_gives_final_obs_and_autoresets():
    # ToyEnv would run 10 steps; the TimeLimit cuts it at 3 -> truncated, not terminated
    spec = EnvSpec(id=TOY, kwargs={"length": 10}, max_episode_steps=3)
    with VecEnv(spec, 2, seed=0) as env:
        obs = env.reset()
        assert obs[:, 0].tolist() == [0, 0]
        for t in (1, 2):
            obs, _, terminated, truncated, final_obs = env.step(np.zeros(2, np.int64))
            assert obs[:, 0].tolist() == [t, t]
            assert not terminated.any() and not truncated.any() and final_obs == []
        obs, reward, terminated, truncated, final_obs = env.step(np.zeros(2, np.int64))
        assert truncated.tolist() == [True, True] and terminated.tolist() == [False, False]
        assert [b for b, _ in final_obs] == [0, 1]
        for _, last in final_obs:
            assert last[0] == 3  # the env's real last observation ...
        assert obs[:, 0].tolist() == [0, 0]  # ... while obs is already the next episode's first
        stats = env.pop_episode_stats()
        assert stats.lengths == [3, 3] and stats.returns == [2.0, 2.0]  # action 0 pays on t=0, 2


def test_terminal_gives_no_final_obs():
    with VecEnv(EnvSpec(id=TOY, kwargs={"length": 2}), 1, seed=0) as env:
        env.reset()
        env.step(np.array([0]))
        obs, _, terminated, truncated, final_obs = env.step(np.array([1]))
        assert terminated.tolist() == [True] and truncated.tolist() == [False]
        assert final_obs == []
        assert obs[0, 0] == 0  # reset happened in the same step
        assert env.pop_episode_stats().lengths == [2]


def test_terminal_at_the_time_limit_counts_as_terminated():
    # gymnasium reports terminated and truncated together here; no bootstrap is due
    with VecEnv(EnvSpec(id=TOY, kwargs={"length": 2}, max_episode_steps=2), 1, seed=0) as env:
        env.reset()
        env.step(np.array([0]))
        _, _, terminated, truncated, final_obs = env.step(np.array([0]))
        assert terminated.tolist() == [True] and truncated.tolist() == [False] and final_obs == []


def test_final_obs_is_not_overwritten_by_later_steps():
    spec = EnvSpec(id="CartPole-v1", max_episode_steps=2)
    with VecEnv(spec, 1, seed=3) as env:
        env.reset()
        env.step(np.array([0]))
        _, _, _, truncated, final_obs = env.step(np.array([0]))
        assert truncated[0]
        kept = final_obs[0][1].copy()
        env.step(np.array([1]))
        env.step(np.array([1]))
        np.testing.assert_array_equal(final_obs[0][1], kept)


def test_final_obs_survives_an_env_that_reuses_its_obs_array():
    spec = EnvSpec(
        id="tests.envs.toy_envs:BufferReuseEnv", kwargs={"length": 10}, max_episode_steps=2
    )
    with VecEnv(spec, 1, seed=0) as env:
        env.reset()
        env.step(np.array([0]))
        obs, _, _, truncated, final_obs = env.step(np.array([0]))
        assert truncated[0] and obs[0, 0] == 0
        assert final_obs[0][1][0] == 2  # not the reset observation written into the same array


def _rollout(env_id, seed, steps=60, num_envs=3, **spec_kwargs):
    rng = np.random.default_rng(123)  # the same actions for both envs
    with VecEnv(EnvSpec(id=env_id, **spec_kwargs), num_envs, seed=seed) as env:
        n = env.action_space.n
        out = [env.reset().copy()]
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(rng.integers(n, size=num_envs))
            out += [obs.copy(), reward.copy(), terminated.copy(), truncated.copy()]
        return out


@pytest.mark.parametrize("env_id", ["CartPole-v1", TOY])
def test_same_seed_same_trajectories(env_id):
    a, b, c = _rollout(env_id, 5), _rollout(env_id, 5), _rollout(env_id, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_envs_in_one_vector_get_distinct_seeds():
    with VecEnv(EnvSpec(id="CartPole-v1"), 3, seed=0) as env:
        obs = env.reset()
        assert not np.array_equal(obs[0], obs[1]) and not np.array_equal(obs[1], obs[2])


def test_dict_observations_become_namedarraytuples():
    spec = EnvSpec(id="tests.envs.toy_envs:DictEnv", kwargs={"length": 2})
    with VecEnv(spec, 4, seed=0) as env:
        obs = env.reset()
        assert is_namedarraytuple(obs) and obs._fields == ("goal", "position")
        assert obs.goal.shape == (4,) and obs.goal.dtype == np.int64
        assert obs.position.shape == (4, 2) and obs.position.dtype == np.float32
        assert set(obs.goal.tolist()) <= {0, 1, 2}
        goals = obs.goal.copy()
        _, reward, *_ = env.step(goals)  # naming the goal pays 1
        assert reward.tolist() == [1.0] * 4
        obs, _, terminated, _, _ = env.step(np.zeros(4, np.int64))
        assert terminated.all() and is_namedarraytuple(obs)
        first = obs[0]  # indexing works on every field at once
        assert first.goal.shape == () and first.position.shape == (2,)


def test_dict_final_obs_is_a_tree():
    spec = EnvSpec(id="tests.envs.toy_envs:DictEnv", kwargs={"length": 5}, max_episode_steps=1)
    with VecEnv(spec, 2, seed=0) as env:
        env.reset()
        *_, truncated, final_obs = env.step(np.zeros(2, np.int64))
        assert truncated.all() and len(final_obs) == 2
        assert all(is_namedarraytuple(o) and o.position.shape == (2,) for _, o in final_obs)


def test_tuple_observations_and_multidiscrete_actions():
    with VecEnv(EnvSpec(id="tests.envs.toy_envs:TupleEnv"), 2, seed=0) as env:
        obs = env.reset()
        assert is_namedarraytuple(obs) and obs._fields == ("f0", "f1")
        assert obs.f0.shape == (2, 2) and obs.f1.shape == (2,)
        assert env.action_example.shape == (2,) and env.action_example.dtype == np.int64
        actions = np.array([[2, 1], [0, 0]])
        _, reward, *_ = env.step(actions)
        assert reward.tolist() == [3.0, 0.0]
        np.testing.assert_array_equal(env.envs[0].unwrapped.last_action, [2, 1])


def test_box_actions_are_clipped_to_the_space():
    with VecEnv(EnvSpec(id="tests.envs.toy_envs:BoxActionEnv"), 2, seed=0) as env:
        env.reset()
        assert env.action_example.shape == (2,) and env.action_example.dtype == np.float32
        env.step(np.array([[0.5, -3.0], [2.0, 0.25]], np.float32))
        np.testing.assert_allclose(env.envs[0].unwrapped.last_action, [0.5, -1.0])
        np.testing.assert_allclose(env.envs[1].unwrapped.last_action, [1.0, 0.25])


def test_episode_stats_report_every_finished_episode():
    with VecEnv(EnvSpec(id=TOY, kwargs={"length": 3}), 2, seed=0) as env:
        env.reset()
        for _ in range(7):
            env.step(np.array([0, 1]))
        stats = env.pop_episode_stats()
        # two episodes per env; action 0 pays on t=0,2 (2 per episode), action 1 on t=1 (1)
        assert sorted(stats.returns) == [1.0, 1.0, 2.0, 2.0] and stats.lengths == [3] * 4
        assert env.pop_episode_stats().returns == []


def test_num_envs_must_be_positive():
    with pytest.raises(ValueError, match="num_envs"):
        VecEnv(EnvSpec(id=TOY), 0)
