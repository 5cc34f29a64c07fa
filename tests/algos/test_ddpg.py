"""DDPG (asyncrl/algos/ddpg.py): one critic, an actor step and Polyak targets on every update, no
target smoothing; Ornstein-Uhlenbeck exploration noise (asyncrl/agents/qpg.py) with the right
statistics and per-env resets; checkpoint state round trip of the replay learner."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from asyncrl.agents.qpg import OrnsteinUhlenbeckNoise
from asyncrl.algos.ddpg import DDPG, DDPGConfig
from asyncrl.algos.td3 import make_td3_agent
from asyncrl.data import buffer_from_example
from asyncrl.replay import ReplaySample
from asyncrl.samplers.base import SampleBatch, samples_example
from tests.algos._qpg_helpers import make_learner
from tests.algos._qpg_helpers import random_sample as _random_sample

ACTION_SPACE = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def make_ddpg(**kw) -> DDPG:
    return make_learner(DDPG, DDPGConfig, make_td3_agent, ACTION_SPACE, **kw)


def random_sample(n: int = 32, seed: int = 0) -> ReplaySample:
    return _random_sample(ACTION_SPACE, n, seed)


def test_ddpg_has_one_critic_and_updates_actor_and_targets_every_step():
    ddpg = make_ddpg(tau=0.01)
    assert ddpg.critic.members == 1
    for n in range(3):
        actor0 = [p.detach().clone() for p in ddpg.actor_params]
        out = ddpg.update(random_sample(seed=n))
        assert "actor_loss" in out
        assert any(not torch.equal(a, p) for a, p in zip(actor0, ddpg.actor_params))
    assert ddpg.actor_updates == ddpg.critic_updates == 3


def test_ddpg_target_action_is_unsmoothed():
    ddpg = make_ddpg()
    seen = []
    real = ddpg.critic_target

    def spy(obs, action):
        seen.append(action.detach().clone())
        return real(obs, action)

    ddpg.critic_target = spy
    s = random_sample()
    with torch.no_grad():
        expected = ddpg.actor_target(s.next_observation)
    ddpg.update(s)
    torch.testing.assert_close(seen[0], expected)


def test_ddpg_paper_defaults():
    cfg = DDPGConfig()
    assert (cfg.actor_lr, cfg.critic_lr, cfg.tau, cfg.batch_size) == (1e-4, 1e-3, 1e-3, 64)
    assert cfg.noise == "ou" and cfg.hidden_sizes == [400, 300] and cfg.policy_delay == 1


# -- Ornstein-Uhlenbeck noise ---------------------------------------------------------------------


def test_ou_noise_variance_mean_and_autocorrelation():
    sigma, theta, dt = 0.2, 0.15, 1e-2
    a = 1 - theta * dt  # x_{t+1} = a x_t + sigma sqrt(dt) eps
    noise = OrnsteinUhlenbeckNoise((4000, 2), sigma, theta, dt, rng=np.random.default_rng(0))
    xs = {}
    for t in range(1, 3001):
        x = noise()
        if t in (10, 100, 3000 - 50, 3000):
            xs[t] = x.copy()
    for t in (10, 100, 3000):
        exact_var = sigma**2 * dt * (1 - a ** (2 * t)) / (1 - a**2)  # from x_0 = 0
        assert xs[t].var() == pytest.approx(exact_var, rel=0.05), t
        assert abs(xs[t].mean()) < 4 * np.sqrt(exact_var / xs[t].size)
    stationary = sigma**2 * dt / (1 - a**2)  # ~ sigma^2 / (2 theta) = 0.133
    corr = np.corrcoef(xs[3000 - 50].ravel(), xs[3000].ravel())[0, 1]
    assert corr == pytest.approx(a**50, abs=0.03)  # lag-50 autocorrelation
    assert xs[3000].var() == pytest.approx(stationary, rel=0.05)


def test_ou_noise_resets_only_the_finished_envs():
    noise = OrnsteinUhlenbeckNoise((3, 2), 0.2, rng=np.random.default_rng(0))
    for _ in range(10):
        noise()
    before = noise.x.copy()
    noise.reset(np.array([False, True, False]))
    np.testing.assert_array_equal(noise.x[1], 0)
    np.testing.assert_array_equal(noise.x[[0, 2]], before[[0, 2]])
    noise.reset()
    assert not noise.x.any()


def test_agent_with_ou_noise_adds_it_and_resets_at_episode_end():
    ddpg = make_ddpg(noise="ou", exploration_noise=0.2)
    agent = ddpg.agent
    agent.random_actions = False
    obs = np.zeros((4, 3), np.float32)
    clean = agent.act(obs)
    for _ in range(20):
        noisy, _ = agent.step(obs)
    np.testing.assert_allclose(noisy, np.clip(clean + agent._ou.x, -1, 1), atol=1e-6)
    agent.on_episode_end(np.array([True, False, False, False]))
    assert not agent._ou.x[0].any() and agent._ou.x[1:].any()


# -- checkpoint state ------------------------------------------------------------------------------


def fake_batch(steps: int, rng: np.random.Generator) -> SampleBatch:
    example = samples_example(np.zeros(3, np.float32), np.zeros(2, np.float32), None)
    buf = buffer_from_example(example, (steps, 1))
    buf.env.observation[...] = rng.standard_normal((steps, 1, 3))
    buf.agent.action[...] = rng.uniform(-1, 1, (steps, 1, 2))
    buf.env.reward[...] = rng.standard_normal((steps, 1))
    return SampleBatch(samples=buf, bootstrap_value=None, next_observation=None, env_steps=steps)


def test_state_dict_round_trip_continues_identically():
    original = make_ddpg(learning_starts=10, batch_size=8)
    rng = np.random.default_rng(0)
    for _ in range(30):
        original.optimize(fake_batch(1, rng), 0.0)
    # through bytes, as a checkpoint file does: state_dict() holds views of live tensors
    buffer = io.BytesIO()
    torch.save({"algo": original.state_dict(), "agent": original.agent.state_tensors()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    state, agent_state = saved["algo"], saved["agent"]
    restored = make_ddpg(learning_starts=10, batch_size=8)
    restored.agent.load_state_tensors(agent_state)
    restored.load_state_dict(state)
    assert restored.updates == original.updates and restored.env_steps == original.env_steps
    batch = fake_batch(1, np.random.default_rng(1))
    for learner in (original, restored):
        torch.manual_seed(7)
        learner.optimize(batch, 0.0)
    for a, b in zip(
        original.critic_params + original.actor_params,
        restored.critic_params + restored.actor_params,
    ):
        assert torch.equal(a, b)
    for a, b in zip(original.critic_target.parameters(), restored.critic_target.parameters()):
        assert torch.equal(a, b)
