"""PgAgent: acting on batches for every supported space, and parameters as plain tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from asyncrl.agents.pg import PgAgent
from asyncrl.data import namedarraytuple
from asyncrl.envs import space_example
from asyncrl.models import ModelConfig

SMALL = ModelConfig(hidden_sizes=[16])
DictObs = namedarraytuple("DictObs", ["goal", "position"])

CASES = {
    "box-discrete": (spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(3)),
    "box-multidiscrete": (spaces.Box(-1, 1, (4,), np.float32), spaces.MultiDiscrete([3, 2])),
    "box-box": (spaces.Box(-1, 1, (4,), np.float32), spaces.Box(-2, 2, (2,), np.float32)),
    "dict-discrete": (
        spaces.Dict({"goal": spaces.Discrete(3), "position": spaces.Box(-1, 1, (2,), np.float32)}),
        spaces.Discrete(3),
    ),
}


def _batch_obs(space, n, rng):
    if isinstance(space, spaces.Dict):
        return DictObs(rng.integers(3, size=n), rng.uniform(-1, 1, (n, 2)).astype(np.float32))
    return rng.uniform(-1, 1, (n, *space.shape)).astype(np.float32)


@pytest.mark.parametrize("case", list(CASES))
def test_step_returns_actions_of_the_space_and_their_log_probs(case):
    obs_space, action_space = CASES[case]
    torch.manual_seed(0)
    agent = PgAgent(obs_space, action_space, SMALL)
    obs = _batch_obs(obs_space, 5, np.random.default_rng(0))
    action, info = agent.step(obs)
    example = space_example(action_space)
    assert isinstance(action, np.ndarray) and action.shape == (5, *example.shape)
    assert info.value.shape == (5,) and info.log_prob.shape == (5,)
    assert info.value.dtype == np.float32 and info.log_prob.dtype == np.float32
    if not isinstance(action_space, spaces.Box):
        assert all(action_space.contains(a.astype(np.int64)) for a in action)
    # the recorded log-probability is the model's, for the action taken
    dist, value = agent.model(agent.obs_to_torch(obs))
    lp = dist.log_prob(torch.as_tensor(action)).detach().numpy()
    np.testing.assert_allclose(info.log_prob, lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info.value, value.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(agent.value(obs), info.value, rtol=1e-5, atol=1e-6)
    # the deterministic action is the distribution's mode, and repeatable
    np.testing.assert_array_equal(agent.act(obs), agent.act(obs))


def test_state_tensors_round_trip_including_normaliser():
    obs_space, action_space = (
        spaces.Box(-1, 1, (4,), np.float32),
        spaces.Box(-1, 1, (2,), np.float32),
    )
    cfg = ModelConfig(hidden_sizes=[16], normalize_obs=True)
    torch.manual_seed(0)
    a = PgAgent(obs_space, action_space, cfg)
    a.update_normalizer(torch.randn(32, 4) * 3 + 1)
    torch.manual_seed(1)
    b = PgAgent(obs_space, action_space, cfg)
    tensors = a.state_tensors()
    assert "normalizer.mean" in tensors and all(t.device.type == "cpu" for t in tensors.values())
    assert all(not t.requires_grad for t in tensors.values())
    b.load_state_tensors(tensors, policy_version=7)
    assert b.policy_version == 7
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(a.act(obs), b.act(obs))
    np.testing.assert_array_equal(a.value(obs), b.value(obs))
    # exported tensors are copies in spirit: changing the agent later does not change them
    saved = tensors["normalizer.mean"].clone()
    a.update_normalizer(torch.full((8, 4), 100.0))
    assert not torch.equal(a.state_tensors()["normalizer.mean"], saved)


def _fixed_policy(action_space, bias, log_std=None):
    """An agent whose policy ignores the observation: zero weights, the given logits/mean."""
    agent = PgAgent(spaces.Box(-1, 1, (2,), np.float32), action_space, SMALL, seed=3)
    with torch.no_grad():
        agent.model.pi.linear.weight.zero_()
        agent.model.pi.linear.bias.copy_(torch.as_tensor(bias))
        if log_std is not None:
            agent.model.pi.log_std.copy_(torch.as_tensor(log_std))
    return agent


def _many_steps(agent, envs=100, steps=200):
    """20k samples: 100 envs' noise streams, 200 steps each."""
    obs, ids = np.zeros((envs, 2), np.float32), np.arange(envs)
    out = [agent.step(obs, ids) for _ in range(steps)]
    return np.concatenate([a for a, _ in out]), np.concatenate([i.log_prob for _, i in out])


def test_sampled_categorical_actions_follow_the_policy():
    logits = [0.0, 1.0, -1.0, 2.0]
    agent = _fixed_policy(spaces.Discrete(4), logits)
    action, log_prob = _many_steps(agent)
    freq = np.bincount(action, minlength=4) / len(action)
    probs = torch.softmax(torch.tensor(logits), 0).numpy()
    np.testing.assert_allclose(freq, probs, atol=0.015)  # ~5 standard errors
    np.testing.assert_allclose(log_prob, np.log(probs[action]), rtol=1e-5)


def test_sampled_gaussian_actions_follow_the_policy():
    agent = _fixed_policy(spaces.Box(-5, 5, (2,), np.float32), [1.0, -2.0], log_std=[0.0, -1.0])
    action, _ = _many_steps(agent)
    np.testing.assert_allclose(action.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(action.std(0), [1.0, np.exp(-1.0)], rtol=0.03)


def test_sampling_noise_belongs_to_the_env_not_the_batch():
    # the same env index draws the same noise whichever batch it is stepped in (serial and
    # parallel samplers group envs differently)
    a = _fixed_policy(spaces.Discrete(4), [0.0, 0.5, 1.0, 1.5])
    b = _fixed_policy(spaces.Discrete(4), [0.0, 0.5, 1.0, 1.5])
    obs = np.zeros((4, 2), np.float32)
    together = np.stack([a.step(obs, np.arange(4))[0] for _ in range(20)])
    alone = np.stack(
        [
            np.concatenate(
                [b.step(obs[:2], np.array([0, 1]))[0], b.step(obs[2:], np.array([2, 3]))[0]]
            )
            for _ in range(20)
        ]
    )
    np.testing.assert_array_equal(together, alone)
    assert len(np.unique(together)) > 1
