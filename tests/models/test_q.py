"""Q-networks (asyncrl/models/q.py) and noisy layers (asyncrl/models/noisy.py): output shapes,
the dueling head's mean-advantage identity, and factorised Gaussian noise."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from asyncrl.agents.dqn import DqnAgent
from asyncrl.models.noisy import NoisyLinear, reset_noise
from asyncrl.models.q import QModelConfig, QNetwork

VEC = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
ACTIONS = gym.spaces.Discrete(3)


@pytest.mark.parametrize("n_atoms", [1, 7])
@pytest.mark.parametrize("dueling", [False, True])
def test_output_shapes(dueling, n_atoms):
    net = QNetwork(VEC, ACTIONS, QModelConfig([16, 16], dueling=dueling, n_atoms=n_atoms))
    out = net(torch.randn(4, 5))
    assert out.shape == ((4, 3) if n_atoms == 1 else (4, 3, n_atoms))


def test_image_observations_use_the_nature_cnn():
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    net = QNetwork(space, ACTIONS, QModelConfig(dueling=True))
    out = net(torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_needs_discrete_actions():
    with pytest.raises(ValueError, match="Discrete"):
        QNetwork(VEC, gym.spaces.Box(-1, 1, (2,), np.float32), QModelConfig())


@pytest.mark.parametrize("n_atoms", [1, 7])
@pytest.mark.parametrize("head_hidden", [0, 8])
def test_dueling_mean_advantage_identity(n_atoms, head_hidden):
    # Wang et al. 2016, eq. 9: Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'); so mean_a Q(s, a) =
    # V(s), and Q(s, a) - Q(s, b) = A(s, a) - A(s, b) (per atom for a distributional head).
    torch.manual_seed(0)
    net = QNetwork(
        VEC, ACTIONS, QModelConfig([16], dueling=True, n_atoms=n_atoms, head_hidden=head_hidden)
    )
    obs = torch.randn(6, 5)
    with torch.no_grad():
        q = net(obs).reshape(6, 3, n_atoms)
        features = net.trunk(net.flatten(obs))
        value = net.value(features).reshape(6, 1, n_atoms)
        advantage = net.advantage(features).reshape(6, 3, n_atoms)
    torch.testing.assert_close(q.mean(1, keepdim=True), value)
    torch.testing.assert_close(q - q[:, :1], advantage - advantage[:, :1])
    torch.testing.assert_close(q, value + advantage - advantage.mean(1, keepdim=True))


def test_plain_head_has_no_value_stream():
    net = QNetwork(VEC, ACTIONS, QModelConfig([16]))
    assert net.value is None
    assert not any(isinstance(m, NoisyLinear) for m in net.modules())


# -- noisy layers -----------------------------------------------------------------------------


def test_noisy_linear_is_the_factorised_formula():
    torch.manual_seed(1)
    layer = NoisyLinear(6, 4, sigma0=0.5)
    x = torch.randn(3, 6)
    f_in, f_out = layer.eps_in, layer.eps_out  # already f(eps) = sign(eps) sqrt(|eps|)
    weight = layer.weight_mu + layer.weight_sigma * torch.outer(f_out, f_in)
    bias = layer.bias_mu + layer.bias_sigma * f_out
    torch.testing.assert_close(layer(x), x @ weight.T + bias)
    # sigma starts at sigma0 / sqrt(in_features) (Fortunato et al. 2018, sec. 3.2)
    torch.testing.assert_close(layer.weight_sigma, torch.full((4, 6), 0.5 / math.sqrt(6)))
    assert (layer.eps_in != 0).all() and (layer.eps_out != 0).all()


def test_noise_changes_outputs_only_when_reset():
    torch.manual_seed(2)
    layer = NoisyLinear(8, 5)
    x = torch.randn(4, 8)
    first = layer(x)
    torch.testing.assert_close(layer(x), first)  # the same noise until it is resampled
    layer.reset_noise()
    second = layer(x)
    assert not torch.allclose(first, second)
    # without sigma the layer is its mean: noise has no effect
    with torch.no_grad():
        layer.weight_sigma.zero_()
        layer.bias_sigma.zero_()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight_mu, layer.bias_mu))


def test_sigma_is_learned():
    layer = NoisyLinear(3, 2)
    layer(torch.randn(5, 3)).sum().backward()
    assert layer.weight_sigma.grad.abs().sum() > 0 and layer.bias_sigma.grad.abs().sum() > 0


def test_reset_noise_reaches_every_noisy_layer_of_a_q_network():
    torch.manual_seed(3)
    net = QNetwork(VEC, ACTIONS, QModelConfig([16], dueling=True, noisy=True, head_hidden=8))
    noisy = [m for m in net.modules() if isinstance(m, NoisyLinear)]
    assert len(noisy) == 4  # two layers in each of the two streams; the trunk is plain
    before = [(m.eps_in.clone(), m.eps_out.clone()) for m in noisy]
    obs = torch.randn(2, 5)
    q_before = net(obs)
    reset_noise(net)
    for m, (e_in, e_out) in zip(noisy, before):
        assert not torch.equal(m.eps_in, e_in) and not torch.equal(m.eps_out, e_out)
    assert not torch.allclose(net(obs), q_before)
    # noise is not part of the parameters saved in checkpoints
    assert not any("eps" in k for k in net.state_dict())


# -- acting -----------------------------------------------------------------------------------


def _agent(**kw) -> DqnAgent:
    torch.manual_seed(4)
    return DqnAgent(VEC, ACTIONS, QModelConfig([16], **kw), seed=0)


def test_epsilon_greedy():
    agent = _agent()
    obs = np.random.default_rng(0).standard_normal((2000, 5)).astype(np.float32)
    with torch.no_grad():
        greedy = agent.model(torch.from_numpy(obs)).argmax(1).numpy()
    agent.epsilon = 0.0
    np.testing.assert_array_equal(agent.step(obs)[0], greedy)
    agent.epsilon = 0.3
    actions, _ = agent.step(obs)
    # 70% greedy, plus a third of the random 30% that pick the greedy action anyway
    assert abs((actions == greedy).mean() - 0.8) < 0.04
    agent.epsilon = 1.0
    actions, _ = agent.step(obs)
    assert abs((actions == greedy).mean() - 1 / 3) < 0.04
    assert set(np.bincount(actions, minlength=3) > 550) == {True}


def test_all_random_actions_skip_the_network():
    agent = _agent()
    calls = []
    agent.model.register_forward_hook(lambda *args: calls.append(1))
    agent.epsilon = 1.0
    actions, _ = agent.step(np.zeros((1, 5), np.float32))
    assert actions.shape == (1,) and actions.dtype == np.int64 and calls == []
    agent.epsilon = 0.0
    agent.step(np.zeros((1, 5), np.float32))
    assert calls == [1]


def test_evaluation_uses_eval_epsilon():
    agent = _agent()
    agent.epsilon, agent.eval_epsilon = 1.0, 0.0
    obs = np.random.default_rng(1).standard_normal((50, 5)).astype(np.float32)
    with torch.no_grad():
        greedy = agent.model(torch.from_numpy(obs)).argmax(1).numpy()
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), greedy)


def test_noisy_agent_resamples_noise_per_step():
    agent = _agent(noisy=True)
    assert agent.epsilon == 0.0
    layer = next(m for m in agent.model.modules() if isinstance(m, NoisyLinear))
    outputs = []
    layer.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    obs = np.zeros((1, 5), np.float32)
    agent.step(obs)
    agent.step(obs)  # the same observation: only fresh noise can change the layer's output
    assert len(outputs) == 2 and not torch.equal(outputs[0], outputs[1])
