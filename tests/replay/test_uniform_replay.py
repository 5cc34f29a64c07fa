"""UniformReplay: hand-computed n-step targets across terminated/truncated ends; the sampleable
window never reaches past the write cursor or into overwritten steps."""

import numpy as np
import pytest

from asyncrl.data import namedarraytuple
from asyncrl.replay import Transition, UniformReplay


def example(obs_shape=(), obs_dtype=np.float32):
    return Transition(np.zeros(obs_shape, obs_dtype), np.int64(0), np.float32(0), False, False)


def steps(obs, reward, terminated=None, truncated=None):
    """A [t, B] Transition batch from [t, B] lists (action = 100 * obs for checking)."""
    obs = np.asarray(obs, np.float32)
    zeros = np.zeros(obs.shape[:2], bool)
    return Transition(
        obs,
        (100 * obs).astype(np.int64),
        np.asarray(reward, np.float32),
        zeros.copy() if terminated is None else np.asarray(terminated, bool),
        zeros.copy() if truncated is None else np.asarray(truncated, bool),
    )


def by_time(replay, times, env=0):
    lo, _ = replay.valid_range()
    rows = np.asarray(times) % replay.rows
    return replay.batch_at(rows * replay.n_envs + env)


def test_n_step_targets_by_hand_across_terminated_and_truncated():
    # One env, gamma = 0.5, n = 3. obs[t] = t, reward[t] = t + 1.
    # Step 2 terminates, step 5 is truncated (final observation -5), no end after that.
    replay = UniformReplay(example(), size=20, n_envs=1, discount=0.5, n_step=3)
    t = np.arange(10)
    terminated = (t == 2)[:, None]
    truncated = (t == 5)[:, None]
    replay.append(
        steps(t[:, None], t[:, None] + 1, terminated, truncated), [(5, 0, np.float32(-5))]
    )
    assert replay.valid_range() == (0, 7)  # t + n must be written: t <= 10 - 1 - 3
    batch = by_time(replay, np.arange(7))
    # t=0: 1 + .5*2 + .25*3 (terminated at 2)    t=1: 2 + .5*3    t=2: 3
    # t=3: 4 + .5*5 + .25*6, bootstrap .125 from final obs of step 5
    # t=4: 5 + .5*6, bootstrap .25 from it     t=5: 6, bootstrap .5 from it
    # t=6: 7 + .5*8 + .25*9, bootstrap .125 from obs[9] (no end in the window)
    np.testing.assert_allclose(batch.reward, [2.75, 3.5, 3.0, 8.0, 8.0, 6.0, 13.25])
    np.testing.assert_array_equal(batch.done_n, [True, True, True, False, False, False, False])
    np.testing.assert_allclose(batch.discount, [0, 0, 0, 0.125, 0.25, 0.5, 0.125])
    np.testing.assert_array_equal(batch.next_observation[3:], [-5, -5, -5, 9])
    np.testing.assert_array_equal(batch.observation, np.arange(7))
    np.testing.assert_array_equal(batch.action, 100 * np.arange(7))
    np.testing.assert_array_equal(batch.weights, np.ones(7))


def test_one_step_targets_and_terminated_beats_truncated():
    replay = UniformReplay(example(), size=10, n_envs=2, discount=0.9, n_step=1)
    obs = [[0, 10], [1, 11], [2, 12], [3, 13]]
    reward = [[1, 2], [3, 4], [5, 6], [7, 8]]
    terminated = [[False, True], [False, False], [True, False], [False, False]]
    truncated = [[False, True], [True, False], [True, False], [False, False]]
    # Env 1 at t=0 is terminated and truncated: terminated wins, no final obs needed.
    replay.append(steps(obs, reward, terminated, truncated), [(1, 0, np.float32(-1))])
    batch = replay.batch_at(replay.valid_indices())  # times 0..2, envs interleaved
    np.testing.assert_allclose(batch.reward, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(batch.done_n, [False, True, False, False, True, False])
    np.testing.assert_allclose(batch.discount, [0.9, 0, 0.9, 0.9, 0, 0.9])
    np.testing.assert_array_equal(batch.next_observation[[0, 2, 3, 5]], [1, -1, 12, 13])


def test_missing_final_observation_is_an_error():
    replay = UniformReplay(example(), size=10, n_envs=1)
    with pytest.raises(ValueError, match="final_observation"):
        replay.append(steps([[0], [1]], [[0], [0]], truncated=[[False], [True]]))
    with pytest.raises(ValueError, match=r"\[t, B=1\]"):
        replay.append(steps([[0]], [[0]])[0])


def test_sampling_waits_for_a_complete_window():
    replay = UniformReplay(example(), size=10, n_envs=1, n_step=3)
    replay.append(steps([[0], [1], [2]], [[0], [0], [0]]))
    assert len(replay) == 0
    with pytest.raises(ValueError, match="learning-starts"):
        replay.sample(4)
    replay.append(steps([[3]], [[0]]))
    assert len(replay) == 1
    assert replay.sample(8, np.random.default_rng(0)).observation.tolist() == [0] * 8


def reference_targets(history, time, env, discount, n_step):
    """Per-transition loop over the full history (the test's independent reference)."""
    obs, reward, terminated, truncated, finals = history
    ret, k = 0.0, 0
    for k in range(n_step):
        ret += discount**k * reward[time + k][env]
        if terminated[time + k][env]:
            return ret, True, 0.0, None
        if truncated[time + k][env]:
            return ret, False, discount ** (k + 1), finals[(time + k, env)]
    return ret, False, discount**n_step, obs[time + n_step][env]


def test_random_stream_against_reference_with_wraparound_and_chunked_appends():
    rng = np.random.default_rng(1)
    n_envs, n_step, discount = 3, 4, 0.9
    replay = UniformReplay(
        example((2,)), size=3 * 11, n_envs=n_envs, discount=discount, n_step=n_step
    )
    obs_all, rew_all, term_all, trunc_all, finals = [], [], [], [], {}
    written = 0
    for _ in range(25):
        t = int(rng.integers(1, 6))
        obs = rng.normal(size=(t, n_envs, 2)).astype(np.float32)
        reward = rng.normal(size=(t, n_envs)).astype(np.float32)
        terminated = rng.random((t, n_envs)) < 0.15
        truncated = rng.random((t, n_envs)) < 0.15
        final_dense = rng.normal(size=(t, n_envs, 2)).astype(np.float32)
        for i, b in zip(*np.nonzero(truncated & ~terminated)):
            finals[(written + i, b)] = final_dense[i, b]
        replay.append(
            Transition(obs, np.zeros((t, n_envs), np.int64), reward, terminated, truncated),
            final_dense,
        )
        obs_all += list(obs)
        rew_all += list(reward)
        term_all += list(terminated)
        trunc_all += list(truncated)
        written += t
        lo, hi = replay.valid_range()
        assert lo == max(0, written - 11) and hi == max(lo, written - n_step)
        if hi == lo:
            continue
        batch = replay.batch_at(replay.valid_indices())
        times = np.repeat(np.arange(lo, hi), n_envs)
        envs = np.tile(np.arange(n_envs), hi - lo)
        history = (obs_all, rew_all, term_all, trunc_all, finals)
        for i, (time, env) in enumerate(zip(times, envs)):
            ret, done, disc, nxt = reference_targets(history, time, env, discount, n_step)
            np.testing.assert_allclose(batch.reward[i], ret, rtol=1e-5, atol=1e-5)
            assert batch.done_n[i] == done
            np.testing.assert_allclose(batch.discount[i], disc, rtol=1e-6)
            np.testing.assert_array_equal(batch.observation[i], obs_all[time][env])
            if nxt is not None:
                np.testing.assert_array_equal(batch.next_observation[i], nxt)
        # Random samples only ever come from the sampleable window.
        sample = replay.sample(64, rng)
        assert np.isin(sample.indices, replay.valid_indices()).all()
    assert replay.observations.final.capacity >= 16  # side store grew as needed, never leaked
    live = (replay.observations.final_slot >= 0).sum()
    assert live + replay.observations.final.n_free == replay.observations.final.capacity


def test_tree_observations():
    Obs = namedarraytuple("Obs", ["pixels", "position"])
    ex = Transition(
        Obs(np.zeros((2, 2), np.uint8), np.zeros(3, np.float32)),
        np.int64(0),
        np.float32(0),
        False,
        False,
    )
    replay = UniformReplay(ex, size=8, n_envs=1, n_step=1)
    t = 4
    obs = Obs(
        np.arange(t * 4, dtype=np.uint8).reshape(t, 1, 2, 2),
        np.ones((t, 1, 3), np.float32) * np.arange(t)[:, None, None],
    )
    final = Obs(np.full((t, 1, 2, 2), 99, np.uint8), np.full((t, 1, 3), -1, np.float32))
    truncated = np.zeros((t, 1), bool)
    truncated[1] = True
    replay.append(
        Transition(
            obs,
            np.zeros((t, 1), np.int64),
            np.ones((t, 1), np.float32),
            np.zeros((t, 1), bool),
            truncated,
        ),
        final,
    )
    batch = replay.batch_at(replay.valid_indices())
    assert isinstance(batch.observation, Obs)
    np.testing.assert_array_equal(batch.next_observation.pixels[1], np.full((2, 2), 99))
    np.testing.assert_array_equal(batch.next_observation.position[0], [1, 1, 1])
    np.testing.assert_array_equal(batch.next_observation.position[2], [3, 3, 3])


def test_a_bad_batch_is_refused_before_anything_is_written():
    replay = UniformReplay(example((2,)), size=10, n_envs=2)
    good = Transition(
        np.ones((3, 2, 2), np.float32),
        np.zeros((3, 2), np.int64),
        np.zeros((3, 2), np.float32),
        np.zeros((3, 2), bool),
        np.zeros((3, 2), bool),
    )
    replay.append(good)
    before = replay.state_dict()
    before = {k: np.array(v, copy=True) for k, v in before.items()}
    bad_action = good._replace(action=np.zeros((3, 2, 1), np.int64))
    with pytest.raises(ValueError, match=r"action has shape \[3, 2, 1\], expected \[3, 2\]"):
        replay.append(bad_action)
    with pytest.raises(ValueError, match="observation has shape"):
        replay.append(good._replace(observation=np.ones((3, 2, 3), np.float32)))
    after = replay.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
