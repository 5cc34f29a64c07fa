"""PrioritizedReplay: new steps at max priority once their window completes, unsampleable steps
at zero, proportional sampling, hand-computed importance weights, beta annealing."""

import numpy as np
import pytest
import torch

from asyncrl.replay import PrioritizedReplay, Transition


def example():
    return Transition(np.zeros((), np.float32), np.int64(0), np.float32(0), False, False)


def batch(t, n_envs, start=0):
    obs = (start + np.arange(t, dtype=np.float32))[:, None].repeat(n_envs, 1)
    zeros = np.zeros((t, n_envs), bool)
    return Transition(
        obs, np.zeros((t, n_envs), np.int64), np.ones((t, n_envs), np.float32), zeros, zeros.copy()
    )


def test_priorities_follow_the_sampleable_window():
    replay = PrioritizedReplay(example(), size=2 * 6, n_envs=2, n_step=2)
    replay.append(batch(3, 2))
    # Only time 0 has steps 0..2 written.
    np.testing.assert_array_equal(replay.tree.priorities, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    replay.update_priorities(np.array([0, 1]), np.array([3.0, 0.5]))
    replay.append(batch(5, 2, start=3))  # 8 steps into 6 rows: times 2..7 live, 2..5 sampleable
    expected = np.zeros((6, 2))
    expected[[2, 3, 4, 5]] = replay.max_priority
    np.testing.assert_allclose(replay.tree.priorities, expected.ravel())
    assert replay.max_priority == pytest.approx((3.0 + 1e-6) ** 0.6)
    assert set(replay.valid_indices()) == set(np.flatnonzero(expected.ravel()))


def test_importance_weights_by_hand_and_beta_annealing():
    replay = PrioritizedReplay(
        example(), size=8, n_envs=1, n_step=1, alpha=1.0, beta=0.5, beta_final=1.0
    )
    replay.append(batch(5, 1))  # times 0..3 sampleable
    replay.update_priorities(np.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]) - 1e-6)
    # P = p / 10; w = (N P)^-beta / max w with N = 4.
    rng = np.random.default_rng(0)
    sample = replay.sample(64, rng)
    p = sample.indices + 1.0
    w = (4 * p / 10) ** -0.5
    np.testing.assert_allclose(sample.weights, w / w.max(), rtol=1e-5)
    assert replay.anneal_beta(0.5) == pytest.approx(0.75)
    assert replay.anneal_beta(2.0) == 1.0
    sample = replay.sample(64, rng)
    p = sample.indices + 1.0
    np.testing.assert_allclose(sample.weights, (1.0 / p) / (1.0 / p).max(), rtol=1e-5)


def test_sampling_is_proportional_to_priority():
    replay = PrioritizedReplay(example(), size=10, n_envs=1, n_step=1, alpha=1.0)
    replay.append(batch(5, 1))
    replay.update_priorities(np.arange(4), np.array([1.0, 0.0, 3.0, 6.0]) - 1e-6)
    rng = np.random.default_rng(3)
    counts = np.bincount(
        np.concatenate([replay.sample(500, rng).indices for _ in range(40)]), minlength=4
    )
    frequencies = counts / counts.sum()
    np.testing.assert_allclose(frequencies, [0.1, 0.0, 0.3, 0.6], atol=0.01)


def test_stale_updates_are_skipped():
    replay = PrioritizedReplay(example(), size=4, n_envs=1, n_step=1)
    replay.append(batch(3, 1))  # times 0, 1 sampleable
    replay.update_priorities(np.array([2, 3]), np.array([5.0, 5.0]))  # not sampleable: ignored
    np.testing.assert_array_equal(replay.tree.priorities, [1, 1, 0, 0])
    assert replay.max_priority == 1.0
    with pytest.raises(ValueError, match="td_errors"):
        replay.update_priorities(np.array([0]), np.array([1.0, 2.0]))


@pytest.mark.parametrize("n_step", [1, 3])
def test_positive_priority_exactly_where_sampleable_under_random_appends(n_step):
    rng = np.random.default_rng(4)
    replay = PrioritizedReplay(example(), size=2 * 9, n_envs=2, n_step=n_step)
    written = 0
    for _ in range(40):
        t = int(rng.integers(1, replay.rows + 1))  # up to a whole ring in one append
        replay.append(batch(t, 2, start=written))
        written += t
        positive = set(np.flatnonzero(replay.tree.priorities > 0))
        assert positive == set(replay.valid_indices())
        if len(replay):
            sample = replay.sample(16, rng)
            replay.update_priorities(sample.indices, rng.normal(size=16))
            lo, hi = replay.valid_range()  # observation == the step's absolute time here
            assert ((sample.observation >= lo) & (sample.observation < hi)).all()
