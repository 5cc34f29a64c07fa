"""SAC (asyncrl/algos/sac.py) and the replay plumbing it shares (asyncrl/algos/offpolicy.py):
alpha moves toward the target entropy, the critic target, which parameters each loss moves, the
replay ratio and learning starts; and the QPG agent's action scaling to the env's bounds
(asyncrl/agents/qpg.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from asyncrl.agents.qpg import QpgAgent
from asyncrl.algos.sac import SAC, SACConfig, make_sac_agent
from asyncrl.data import buffer_from_example
from asyncrl.replay import ReplaySample
from asyncrl.samplers.base import SampleBatch, samples_example
from tests.algos._qpg_helpers import OBS_SPACE, make_learner
from tests.algos._qpg_helpers import random_sample as _random_sample

ACTION_SPACE = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


def make_sac(**kw) -> SAC:
    return make_learner(SAC, SACConfig, make_sac_agent, ACTION_SPACE, **kw)


def random_sample(n: int = 64, seed: int = 0) -> ReplaySample:
    return _random_sample(ACTION_SPACE, n, seed)


def policy_entropy(sac: SAC, sample: ReplaySample) -> float:
    with torch.no_grad():
        _, logp = sac.agent.model(sac.agent.features(sample.observation))
    return float(-logp.mean())


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params))


# -- entropy temperature -------------------------------------------------------------------------


@pytest.mark.parametrize("offset, direction", [(-20.0, "down"), (+20.0, "up")])
def test_alpha_moves_toward_the_target_entropy(offset, direction):
    sample = random_sample()
    probe = make_sac()
    entropy = policy_entropy(probe, sample)
    # target below the policy's entropy: too much entropy, alpha must fall; above: rise
    sac = make_sac(target_entropy=entropy + offset, alpha=0.5)
    alphas = [float(sac.log_alpha.detach().exp())]
    for _ in range(5):
        sac.update(sample)
        alphas.append(float(sac.log_alpha.detach().exp()))
    steps = np.diff(alphas)
    if direction == "down":
        assert (steps < 0).all(), alphas
    else:
        assert (steps > 0).all(), alphas


def test_alpha_gradient_is_entropy_minus_target():
    sac = make_sac(target_entropy=-1.5, alpha=0.3)
    sample = random_sample()
    torch.manual_seed(3)
    sac.update(sample)
    # Adam's first step moves log alpha by lr * sign(grad) (m/sqrt(v) = sign at step 1)
    grad = sac.alpha_opt.state[sac.log_alpha]["exp_avg"] / (1 - 0.9)
    assert float(sac.log_alpha.detach()) == pytest.approx(
        np.log(0.3) - 3e-4 * np.sign(float(grad)), abs=1e-7
    )
    # the gradient of -(log alpha (log pi + H)) is -(E log pi + H) = entropy - target
    fresh = make_sac(target_entropy=-1.5, alpha=0.3)
    torch.manual_seed(3)
    entropy = fresh.update(sample)["entropy"]
    assert float(grad) == pytest.approx(float(entropy) + 1.5, rel=1e-4)


def test_fixed_alpha_stays_fixed():
    sac = make_sac(auto_alpha=False, alpha=0.05)
    for _ in range(3):
        out = sac.update(random_sample())
    assert float(sac.log_alpha.detach().exp()) == pytest.approx(0.05)
    assert float(out["alpha"]) == pytest.approx(0.05)


def test_default_target_entropy_is_minus_action_dim():
    assert make_sac().target_entropy == -2.0


# -- the losses move what they should --------------------------------------------------------------


def test_update_moves_critic_actor_alpha_and_targets_by_polyak():
    sac = make_sac(tau=0.1)
    sample = random_sample()
    critic0, actor0 = snapshot(sac.critic_params), snapshot(sac.actor_params)
    target0 = snapshot(sac.critic_target_params)
    out = sac.update(sample)
    assert set(out) == {"critic_loss", "actor_loss", "alpha", "entropy"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values())
    assert changed(critic0, sac.critic_params) and changed(actor0, sac.actor_params)
    for t0, t, p in zip(target0, sac.critic_target_params, sac.critic_params):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * p.detach(), rtol=0, atol=1e-7)
    assert not any(t.requires_grad for t in sac.critic_target_params)


def test_actor_loss_leaves_critic_gradients_alone():
    # The critic's gradients after an update are exactly those of the critic loss: the actor's
    # backward (through the critic) must not add to them.
    sac = make_sac()
    sample = random_sample()
    torch.manual_seed(5)
    sac.update(sample)
    grads_after_update = snapshot(p.grad for p in sac.critic_params)
    # recompute the critic loss's gradient at the pre-step parameters of the same update
    sac2 = make_sac()
    torch.manual_seed(5)
    s = sample
    obs, next_obs = s.observation, s.next_observation
    alpha = sac2.log_alpha.detach().exp()
    with torch.no_grad():
        next_a, next_logp = sac2.agent.model(next_obs)
        next_q = sac2.critic_target(next_obs, next_a).min(0).values - alpha * next_logp
        target = s.reward + s.discount * next_q
    q = sac2.critic(obs, sac2.agent.from_env(s.action))
    (0.5 * (q - target).pow(2).mean(1).sum()).backward()
    for g, p in zip(grads_after_update, sac2.critic_params):
        torch.testing.assert_close(g, p.grad)


def test_critic_target_is_clipped_double_q_minus_alpha_log_pi():
    # y = r + discount * (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s')
    sac = make_sac(alpha=0.2, auto_alpha=False)
    s = random_sample(8)
    with torch.no_grad():
        sac.critic_target.net[-1].bias[1].fill_(100.0)  # critic 1 larger: the min is critic 0's
    q = sac.critic(s.observation, sac.agent.from_env(s.action)).detach()
    torch.manual_seed(11)
    with torch.no_grad():
        next_a, next_logp = sac.agent.model(s.next_observation)
        q_next = sac.critic_target(s.next_observation, next_a)
    assert (q_next[0] < q_next[1]).all()
    target = s.reward + s.discount * (q_next[0] - 0.2 * next_logp)
    torch.manual_seed(11)  # the update draws the same a'
    out = sac.update(s)
    torch.testing.assert_close(out["critic_loss"], 0.5 * (q - target).pow(2).mean(1).sum())


# -- replay ratio, learning starts, stats ----------------------------------------------------------


def fake_batch(steps: int, rng: np.random.Generator) -> SampleBatch:
    example = samples_example(np.zeros(3, np.float32), np.zeros(2, np.float32), None)
    buf = buffer_from_example(example, (steps, 1))
    buf.env.observation[...] = rng.standard_normal((steps, 1, 3))
    buf.agent.action[...] = rng.uniform(ACTION_SPACE.low, ACTION_SPACE.high, (steps, 1, 2))
    buf.env.reward[...] = rng.standard_normal((steps, 1))
    return SampleBatch(samples=buf, bootstrap_value=None, next_observation=None, env_steps=steps)


@pytest.mark.parametrize("replay_ratio, horizon", [(1.0, 1), (0.5, 1), (2.0, 4), (0.25, 3)])
def test_replay_ratio_and_learning_starts(replay_ratio, horizon):
    sac = make_sac(replay_ratio=replay_ratio, learning_starts=20, batch_size=8)
    rng = np.random.default_rng(0)
    assert sac.agent.random_actions
    for _ in range(40 // horizon):
        info = sac.optimize(fake_batch(horizon, rng), 0.0)
        if sac.env_steps < 20:
            assert sac.updates == 0 and sac.agent.random_actions
            assert set(info) == set(SAC.stat_names) and all(np.isnan(v) for v in info.values())
    assert not sac.agent.random_actions
    first_learning_batch_end = -(-20 // horizon) * horizon  # the first batch reaching 20 steps
    steps_counted = sac.env_steps - first_learning_batch_end + horizon
    assert sac.updates == int(replay_ratio * steps_counted)
    assert torch.backends.mkldnn.matmul.fp32_precision == "none"  # the update context is closed


def test_optimize_returns_plain_float_means():
    sac = make_sac(learning_starts=10, batch_size=8, replay_ratio=3.0)
    rng = np.random.default_rng(0)
    for _ in range(12):
        info = sac.optimize(fake_batch(1, rng), 0.0)
    assert set(info) == {"critic_loss", "actor_loss", "alpha", "entropy"}
    assert all(type(v) is float and np.isfinite(v) for v in info.values())


def test_replay_minibatch_is_reused_not_reallocated():
    sac = make_sac(learning_starts=10, batch_size=8)
    rng = np.random.default_rng(0)
    for _ in range(12):
        sac.optimize(fake_batch(1, rng), 0.0)
    first = sac._sample()
    second = sac._sample()
    assert first.observation.data_ptr() == second.observation.data_ptr()
    assert first.observation.shape == (8, 3)


# -- the agent: action scaling --------------------------------------------------------------------


def test_action_scaling_maps_unit_box_to_bounds_and_back():
    agent = QpgAgent(OBS_SPACE, ACTION_SPACE, [8], "gaussian")
    unit = np.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.5, -0.5]], np.float32)
    env = agent.to_env(unit)
    np.testing.assert_allclose(env[0], ACTION_SPACE.low)
    np.testing.assert_allclose(env[1], ACTION_SPACE.high)
    np.testing.assert_allclose(env[2], [0.0, 0.5])
    np.testing.assert_allclose(env[3], [1.0, 0.25])
    np.testing.assert_allclose(agent.from_env(env), unit, atol=1e-6)
    torch.testing.assert_close(agent.from_env(torch.from_numpy(env)), torch.from_numpy(unit))
    # out-of-bounds env actions clip to the unit box
    np.testing.assert_allclose(agent.from_env(np.array([[9.0, -9.0]], np.float32)), [[1.0, -1.0]])


def test_agent_actions_stay_within_bounds():
    agent = QpgAgent(OBS_SPACE, ACTION_SPACE, [8], "gaussian", seed=1)
    obs = np.random.default_rng(0).standard_normal((256, 3)).astype(np.float32)
    for random_actions in (True, False):
        agent.random_actions = random_actions
        a, _ = agent.step(obs)
        assert a.shape == (256, 2) and a.dtype == np.float32
        assert (a >= ACTION_SPACE.low).all() and (a <= ACTION_SPACE.high).all()
    uniform, _ = QpgAgent(OBS_SPACE, ACTION_SPACE, [8], "gaussian", seed=1).step(
        np.zeros((20_000, 3), np.float32)
    )
    # uniform random actions before learning starts cover the box evenly
    np.testing.assert_allclose(
        uniform.mean(0), (ACTION_SPACE.low + ACTION_SPACE.high) / 2, atol=0.03
    )
    det = agent.act(obs, deterministic=True)
    assert (det >= ACTION_SPACE.low).all() and (det <= ACTION_SPACE.high).all()


def test_agent_rejects_unbounded_or_discrete_actions():
    with pytest.raises(ValueError, match="Box"):
        QpgAgent(OBS_SPACE, gym.spaces.Discrete(3), [8])
    with pytest.raises(ValueError, match="finite"):
        QpgAgent(OBS_SPACE, gym.spaces.Box(-np.inf, np.inf, (2,)), [8])
