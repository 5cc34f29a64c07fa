"""TD3 (asyncrl/algos/td3.py): delayed policy and target updates at exactly the set delay, the
Polyak rule on both targets, target policy smoothing, clipped double-Q, Q_1 for the actor, and
Gaussian exploration noise within bounds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from asyncrl.algos.td3 import TD3, TD3Config, make_td3_agent
from asyncrl.replay import ReplaySample
from tests.algos._qpg_helpers import make_learner
from tests.algos._qpg_helpers import random_sample as _random_sample

ACTION_SPACE = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)


def make_td3(**kw) -> TD3:
    return make_learner(TD3, TD3Config, make_td3_agent, ACTION_SPACE, **kw)


def random_sample(n: int = 32, seed: int = 0) -> ReplaySample:
    return _random_sample(ACTION_SPACE, n, seed)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params))


@pytest.mark.parametrize("delay", [1, 2, 3])
def test_actor_and_targets_update_exactly_every_policy_delay_critic_updates(delay):
    td3 = make_td3(policy_delay=delay, tau=0.05)
    critic_target = list(td3.critic_target.parameters())
    actor_target = list(td3.actor_target.parameters())
    for n in range(1, 3 * delay + 2):
        critic0, actor0 = snapshot(td3.critic_params), snapshot(td3.actor_params)
        ct0, at0 = snapshot(critic_target), snapshot(actor_target)
        out = td3.update(random_sample(seed=n))
        assert changed(critic0, td3.critic_params)  # the critic learns every update
        delayed = n % delay == 0
        assert changed(actor0, td3.actor_params) == delayed, n
        assert changed(ct0, critic_target) == delayed, n
        assert changed(at0, actor_target) == delayed, n
        assert ("actor_loss" in out) == delayed
        if delayed:  # the targets moved by exactly the Polyak rule, towards the new weights
            for t0, t, p in zip(
                ct0 + at0, critic_target + actor_target, td3.critic_params + td3.actor_params
            ):
                torch.testing.assert_close(t, 0.95 * t0 + 0.05 * p.detach(), rtol=0, atol=1e-7)
    assert td3.critic_updates == 3 * delay + 1
    assert td3.actor_updates == (3 * delay + 1) // delay


def test_actor_follows_q1_only():
    # critic_lr 0: the critic step before the actor's leaves Q_1 as it was, so the actor's
    # gradient is the one computed here, whatever the initial weights
    td3 = make_td3(policy_delay=1, critic_lr=0.0)
    s = random_sample()
    obs = s.observation
    # gradient of -mean Q_1(s, mu(s)) w.r.t. the actor, computed by hand before the update
    td3.agent.model.zero_grad()
    (-td3.critic.member(obs, td3.agent.model(obs), 0).mean()).backward()
    expected_q1 = [p.grad.clone() for p in td3.actor_params]
    td3.agent.model.zero_grad()
    (-td3.critic(obs, td3.agent.model(obs))[1].mean()).backward()
    q2_grads = [p.grad.clone() for p in td3.actor_params]
    td3.agent.model.zero_grad()
    td3.update(s)  # one (zero-size) critic step first, then the actor's: Q_1's gradient above
    got = [p.grad for p in td3.actor_params]
    cos_q1 = sum((g * e).sum() for g, e in zip(got, expected_q1)) / (
        torch.sqrt(sum((g * g).sum() for g in got))
        * torch.sqrt(sum((e * e).sum() for e in expected_q1))
    )
    cos_q2 = sum((g * e).sum() for g, e in zip(got, q2_grads)) / (
        torch.sqrt(sum((g * g).sum() for g in got))
        * torch.sqrt(sum((e * e).sum() for e in q2_grads))
    )
    assert cos_q1 > 0.99 and cos_q1 > cos_q2


def test_critic_member_equals_full_forward_row():
    td3 = make_td3()
    s = random_sample()
    a = td3.agent.model(s.observation)
    torch.testing.assert_close(
        td3.critic.member(s.observation, a, 0), td3.critic(s.observation, a)[0]
    )


def test_target_uses_min_of_the_two_target_critics_and_smoothing_noise_is_clipped():
    td3 = make_td3(target_noise=5.0, target_noise_clip=0.5)
    with torch.no_grad():
        td3.critic_target.net[-1].bias[0].fill_(-50.0)  # critic 0 is always the smaller
    s = random_sample(8)
    # stand-in actor target: mu'(s') = 0.9, so smoothed actions lie in [0.4, 1.0] after clips
    seen = []

    class SpyCritic(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, obs, action):
            seen.append(action.detach().clone())
            return self.inner(obs, action)

    td3.actor_target = lambda obs: torch.full((obs.shape[0], 2), 0.9)
    real = td3.critic_target
    td3.critic_target = SpyCritic(real)
    td3.update(s)
    smoothed = seen[0]
    assert smoothed.min() >= 0.4 - 1e-6 and smoothed.max() <= 1.0
    assert (smoothed == 1.0).any() and (smoothed < 0.9).any()  # the noise was applied, and clipped
    with torch.no_grad():
        q = real(s.next_observation, smoothed)
    assert (q[0] < q[1]).all()  # so the min in the target is critic 0's value


def test_gaussian_exploration_noise_has_the_set_scale_and_stays_in_bounds():
    td3 = make_td3(exploration_noise=0.1)
    agent = td3.agent
    agent.random_actions = False
    obs = np.zeros((20_000, 3), np.float32)
    noisy, _ = agent.step(obs)
    mean_action = agent.act(obs[:1])  # the deterministic action
    unit_noise = agent.from_env(noisy) - agent.from_env(mean_action)
    inside = np.abs(agent.from_env(mean_action)) < 0.6  # far enough from the bounds: no clipping
    assert inside.all()
    np.testing.assert_allclose(unit_noise.std(0), 0.1, rtol=0.05)
    np.testing.assert_allclose(unit_noise.mean(0), 0.0, atol=0.005)
    assert (noisy >= -2).all() and (noisy <= 2).all()
