"""V-trace against the sum formula of IMPALA eq. 1 written out with explicit products (numpy,
float64), against GAE where the two must agree (on-policy), and a truncation worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asyncrl.algos.returns import gae, vtrace


def _vtrace_by_the_sum(
    log_rho,
    discount,
    reward,
    value,
    bootstrap,
    rho_bar,
    c_bar,
    pg_rho_bar,
    truncated=None,
    timeout_value=None,
):
    """v_s = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) delta_t V, term by term; the
    product is cut (0) across a truncated step, whose next value is its timeout value."""
    T, B = value.shape
    ratio = np.exp(log_rho)
    cut = np.zeros((T, B), bool) if truncated is None else truncated

    def next_value(t, b, later):  # V(x_{t+1}) (later=value) or v_{t+1} (later=vs)
        if cut[t, b]:
            return timeout_value[t, b]
        return later[t + 1, b] if t + 1 < T else bootstrap[b]

    vs = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            total = value[s, b]
            for t in range(s, T):
                product = 1.0
                for i in range(s, t):
                    product *= discount[i, b] * min(c_bar, ratio[i, b]) * (not cut[i, b])
                target = reward[t, b] + discount[t, b] * next_value(t, b, value)
                delta = min(rho_bar, ratio[t, b]) * (target - value[t, b])
                total += product * delta
            vs[s, b] = total
    adv = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            target = reward[s, b] + discount[s, b] * next_value(s, b, vs)
            adv[s, b] = min(pg_rho_bar, ratio[s, b]) * (target - value[s, b])
    return vs, adv


def _random_inputs(rng, T, B):
    log_rho = rng.uniform(-2.5, 2.5, (T, B))  # ratios 0.08 .. 12: both sides of every clip
    gamma = rng.uniform(0.8, 1.0, (T, B))
    discount = gamma * (rng.random((T, B)) > 0.25)  # about a quarter of the steps terminate
    reward = rng.normal(size=(T, B))
    value = rng.normal(size=(T, B))
    bootstrap = rng.normal(size=B)
    return log_rho, discount, reward, value, bootstrap


def _torch(*arrays):
    return [None if a is None else torch.from_numpy(np.asarray(a)) for a in arrays]


@pytest.mark.parametrize(
    "rho_bar, c_bar, pg_rho_bar", [(1.0, 0.7, 1.0), (2.0, 0.5, 1.5), (0.5, 2.0, 3.0)]
)
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("with_truncation", [False, True])
def test_vtrace_matches_the_sum_formula(rho_bar, c_bar, pg_rho_bar, B, with_truncation):
    rng = np.random.default_rng(100 * B + int(10 * c_bar) + with_truncation)
    T = 7
    log_rho, discount, reward, value, bootstrap = _random_inputs(rng, T, B)
    ratio = np.exp(log_rho)
    for bar in (rho_bar, c_bar, pg_rho_bar):  # the clips bind on some steps and not on others
        assert (ratio < bar).any() and (ratio > bar).any()
    truncated = timeout_value = None
    if with_truncation:
        truncated = (rng.random((T, B)) < 0.2) & (discount > 0)
        timeout_value = rng.normal(size=(T, B))
    vs, adv = vtrace(
        *_torch(log_rho, discount, reward, value, bootstrap, truncated, timeout_value),
        rho_bar=rho_bar,
        c_bar=c_bar,
        pg_rho_bar=pg_rho_bar,
    )
    expected_vs, expected_adv = _vtrace_by_the_sum(
        log_rho,
        discount,
        reward,
        value,
        bootstrap,
        rho_bar,
        c_bar,
        pg_rho_bar,
        truncated,
        timeout_value,
    )
    assert vs.dtype == torch.float64 and vs.shape == (T, B)
    np.testing.assert_allclose(vs.numpy(), expected_vs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(adv.numpy(), expected_adv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bar", [1.0, math.inf])
def test_on_policy_vtrace_is_the_n_step_return(bar):
    # all ratios 1, clips that do not bind: v_s is the discounted return to the end of the batch
    # bootstrapped with the last value (= GAE with lambda 1 plus values), through terminations
    # and time limits alike, and A_s = r_s + gamma_s v_{s+1} - V(x_s)
    rng = np.random.default_rng(0)
    T, B, gamma = 9, 4, 0.9
    reward = rng.normal(size=(T, B)).astype(np.float32)
    value = rng.normal(size=(T, B)).astype(np.float32)
    terminated = rng.random((T, B)) < 0.15
    truncated = (rng.random((T, B)) < 0.15) & ~terminated
    timeout_value = np.where(truncated, rng.normal(size=(T, B)), 99.0).astype(np.float32)
    bootstrap = rng.normal(size=B).astype(np.float32)
    discount = (gamma * ~terminated).astype(np.float32)
    vs, adv = vtrace(
        *_torch(np.zeros((T, B), np.float32), discount, reward, value, bootstrap, truncated),
        timeout_value=torch.from_numpy(timeout_value),
        rho_bar=bar,
        c_bar=bar,
        pg_rho_bar=bar,
    )
    _, gae_return = gae(
        reward, value, terminated, truncated, timeout_value, bootstrap, gamma, lam=1.0
    )
    np.testing.assert_allclose(vs.numpy(), gae_return, rtol=1e-5, atol=1e-5)
    # the same return written as the plain recursion G_t = r_t + gamma_t G_{t+1}
    expected = np.zeros((T, B))
    following = bootstrap.astype(np.float64)
    for t in range(T - 1, -1, -1):
        following = np.where(truncated[t], timeout_value[t], following)
        following = reward[t] + discount[t] * following
        expected[t] = following
    np.testing.assert_allclose(vs.numpy(), expected, rtol=1e-5, atol=1e-5)
    next_vs = np.concatenate([vs.numpy()[1:], bootstrap[None]])
    next_vs = np.where(truncated, timeout_value, next_vs)
    np.testing.assert_allclose(
        adv.numpy(), reward + discount * next_vs - value, rtol=1e-5, atol=1e-5
    )


def test_on_policy_vtrace_with_c_bar_lambda_is_gae_lambda():
    # IMPALA sec. 4.1: on-policy, c_i = c_bar = lambda gives the TD(lambda) targets, i.e. GAE
    rng = np.random.default_rng(1)
    T, B, gamma, lam = 8, 3, 0.95, 0.8
    reward = rng.normal(size=(T, B)).astype(np.float32)
    value = rng.normal(size=(T, B)).astype(np.float32)
    terminated = rng.random((T, B)) < 0.2
    truncated = np.zeros((T, B), bool)
    bootstrap = rng.normal(size=B).astype(np.float32)
    vs, _ = vtrace(
        *_torch(np.zeros((T, B)), gamma * ~terminated, reward, value, bootstrap),
        c_bar=lam,
    )
    _, gae_return = gae(reward, value, terminated, truncated, 0 * value, bootstrap, gamma, lam)
    np.testing.assert_allclose(vs.numpy(), gae_return, rtol=1e-5, atol=1e-5)


def test_truncation_by_hand():
    """T=3, gamma 0.5, rewards 1 2 3, values 2 4 1, bootstrap 10; timeout_value 99 wherever no
    truncation happened (only a truncation may read it).

    Column 0: ratios 2, 0.5, 1 (rho = c = 1, 0.5, 1 with bars 1), truncated at t=1 (timeout 6):
      t=2: delta = 1 * (3 + 0.5 * 10 - 1) = 7                 v_2 = 1 + 7 = 8
      t=1: delta = 0.5 * (2 + 0.5 * 6 - 4) = 0.5, trace cut   v_1 = 4 + 0.5 = 4.5
           (uncut it would add 0.5 * 0.5 * (v_2 - V_2) = 1.75)
      t=0: delta = 1 * (1 + 0.5 * 4 - 2) = 1                  v_0 = 2 + 1 + 0.5 * 1 * 0.5 = 3.25
      A_2 = 1 * (3 + 5 - 1) = 7, A_1 = 0.5 * (2 + 0.5 * 6 - 4) = 0.5 (the timeout value, not v_2),
      A_0 = 1 * (1 + 0.5 * 4.5 - 2) = 1.25
    Column 1: ratios 1, terminated at t=1 (gamma_1 = 0):
      v_2 = 8; t=1: delta = 2 - 4 = -2, v_1 = 2; t=0: delta = 1, v_0 = 2 + 1 + 0.5 * (2 - 4) = 2
      A_2 = 7, A_1 = -2, A_0 = 1 + 0.5 * 2 - 2 = 0
    """
    log_rho = torch.log(torch.tensor([[2.0, 1.0], [0.5, 1.0], [1.0, 1.0]], dtype=torch.float64))
    discount = torch.tensor([[0.5, 0.5], [0.5, 0.0], [0.5, 0.5]], dtype=torch.float64)
    reward = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    value = torch.tensor([[2.0, 2.0], [4.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    bootstrap = torch.tensor([10.0, 10.0], dtype=torch.float64)
    truncated = torch.tensor([[False, False], [True, False], [False, False]])
    timeout_value = torch.tensor([[99.0, 99.0], [6.0, 99.0], [99.0, 99.0]], dtype=torch.float64)
    vs, adv = vtrace(log_rho, discount, reward, value, bootstrap, truncated, timeout_value)
    expected_vs = [[3.25, 2.0], [4.5, 2.0], [8.0, 8.0]]
    expected_adv = [[1.25, 0.0], [0.5, -2.0], [7.0, 7.0]]
    np.testing.assert_allclose(vs.numpy(), expected_vs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(adv.numpy(), expected_adv, rtol=0, atol=1e-12)


def test_targets_carry_no_gradient_and_bad_shapes_are_named():
    T, B = 4, 2
    value = torch.zeros(T, B, requires_grad=True)
    vs, adv = vtrace(torch.zeros(T, B), torch.ones(T, B), torch.ones(T, B), value, torch.zeros(B))
    assert not vs.requires_grad and not adv.requires_grad
    with pytest.raises(ValueError, match=r"bootstrap_value has shape \(3,\), expected \(2,\)"):
        vtrace(torch.zeros(T, B), torch.ones(T, B), torch.ones(T, B), value, torch.zeros(3))
    with pytest.raises(ValueError, match="reward has shape"):
        vtrace(torch.zeros(T, B), torch.ones(T, B), torch.ones(T), value, torch.zeros(B))
    with pytest.raises(ValueError, match="together"):
        vtrace(
            torch.zeros(T, B),
            torch.ones(T, B),
            torch.ones(T, B),
            value,
            torch.zeros(B),
            truncated=torch.zeros(T, B, dtype=torch.bool),
        )
