"""GAE against numbers worked out by hand (gamma = lambda = 0.5, so gamma * lambda = 0.25)."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.algos.returns import discounted_return, gae

GAMMA, LAM = 0.5, 0.5


def _batch():
    """T=5, B=2. Env 0: terminated at t=1, truncated at t=3 (timeout value 8), runs on past the
    batch end (bootstrap 4). Env 1: no end until it terminates at the last step (its bootstrap
    value 100 must be ignored). timeout_value is 99 wherever no truncation happened: only a
    truncation may read it."""
    reward = np.array([[1, 0], [2, 0], [0, 4], [1, 0], [3, 2]], np.float32)
    value = np.array([[2, 1], [4, 2], [2, 2], [4, 4], [2, 2]], np.float32)
    terminated = np.array([[0, 0], [1, 0], [0, 0], [0, 0], [0, 1]], bool)
    truncated = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [0, 0]], bool)
    timeout_value = np.full((5, 2), 99.0, np.float32)
    timeout_value[3, 0] = 8.0
    bootstrap = np.array([4.0, 100.0], np.float32)
    return reward, value, terminated, truncated, timeout_value, bootstrap


def test_gae_matches_hand_computation_across_episode_ends():
    adv, ret = gae(*_batch(), GAMMA, LAM)
    # env 0, backwards; delta_t = r_t + 0.5 * v' - v_t, A_t = delta_t + 0.25 * A_{t+1} (cut at ends)
    #   t=4 batch end, v' = bootstrap 4:   delta = 3 + 2 - 2 = 3     A = 3
    #   t=3 truncated, v' = timeout 8:     delta = 1 + 4 - 4 = 1     A = 1      (trace cut)
    #   t=2 v' = v_3 = 4:                  delta = 0 + 2 - 2 = 0     A = 0 + 0.25 * 1 = 0.25
    #   t=1 terminated, v' = 0:            delta = 2 + 0 - 4 = -2    A = -2     (trace cut)
    #   t=0 v' = v_1 = 4:                  delta = 1 + 2 - 2 = 1     A = 1 + 0.25 * -2 = 0.5
    # env 1:
    #   t=4 terminated, v' = 0 (not 100):  delta = 2 + 0 - 2 = 0     A = 0
    #   t=3 v' = 2:                        delta = 0 + 1 - 4 = -3    A = -3
    #   t=2 v' = 4:                        delta = 4 + 2 - 2 = 4     A = 4 - 0.75 = 3.25
    #   t=1 v' = 2:                        delta = 0 + 1 - 2 = -1    A = -1 + 0.8125 = -0.1875
    #   t=0 v' = 2:                        delta = 0 + 1 - 1 = 0     A = -0.046875
    expected_adv = np.array(
        [[0.5, -0.046875], [-2.0, -0.1875], [0.25, 3.25], [1.0, -3.0], [3.0, 0.0]], np.float32
    )
    expected_ret = np.array(
        [[2.5, 0.953125], [2.0, 1.8125], [2.25, 5.25], [5.0, 1.0], [5.0, 2.0]], np.float32
    )
    np.testing.assert_allclose(adv, expected_adv, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ret, expected_ret, rtol=0, atol=1e-6)
    assert adv.dtype == np.float32 and ret.dtype == np.float32 and adv.shape == (5, 2)


def test_truncation_at_the_last_step_bootstraps_from_timeout_value_not_next_obs():
    # T=1: the env was truncated; the batch's bootstrap value belongs to the *next* episode
    adv, ret = gae(
        np.array([[1.0]], np.float32),
        np.array([[0.0]], np.float32),
        np.array([[False]]),
        np.array([[True]]),
        np.array([[6.0]], np.float32),
        np.array([-50.0], np.float32),
        0.9,
        0.95,
    )
    assert adv[0, 0] == pytest.approx(1.0 + 0.9 * 6.0)
    assert ret[0, 0] == pytest.approx(1.0 + 0.9 * 6.0)


def test_terminated_wins_over_truncated():
    args = (
        np.array([[1.0]], np.float32),
        np.array([[0.5]], np.float32),
        np.array([[True]]),
        np.array([[True]]),
        np.array([[6.0]], np.float32),
        np.array([3.0], np.float32),
    )
    adv, _ = gae(*args, 0.9, 0.95)
    assert adv[0, 0] == pytest.approx(0.5)  # 1 + 0 - 0.5


def test_lambda_zero_is_one_step_td_and_lambda_one_is_monte_carlo():
    reward, value, terminated, truncated, timeout_value, bootstrap = _batch()
    adv0, _ = gae(reward, value, terminated, truncated, timeout_value, bootstrap, GAMMA, 0.0)
    # lambda = 0: A_t = delta_t (the deltas worked out above)
    np.testing.assert_allclose(adv0[:, 0], [1, -2, 0, 1, 3], atol=1e-6)
    np.testing.assert_allclose(adv0[:, 1], [0, -1, 4, -3, 0], atol=1e-6)
    # lambda = 1, zero values: discounted reward-to-go with the same bootstrapping rules
    ret = discounted_return(reward, terminated, truncated, timeout_value, bootstrap, GAMMA)
    # env 0: t=4: 3 + 0.5*4 = 5; t=3: 1 + 0.5*8 = 5; t=2: 0 + 0.5*5 = 2.5; t=1: 2; t=0: 1 + 1 = 2
    # env 1: t=4: 2; t=3: 1; t=2: 4.5; t=1: 2.25; t=0: 1.125
    np.testing.assert_allclose(ret[:, 0], [2, 2, 2.5, 5, 5], atol=1e-6)
    np.testing.assert_allclose(ret[:, 1], [1.125, 2.25, 4.5, 1, 2], atol=1e-6)


def test_gae_leaves_inputs_untouched():
    batch = _batch()
    copies = [x.copy() for x in batch]
    gae(*batch, GAMMA, LAM)
    for x, c in zip(batch, copies):
        np.testing.assert_array_equal(x, c)
