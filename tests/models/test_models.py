"""Models: MLP, Nature CNN, observation flattening, policy heads, actor-critic, normaliser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from asyncrl.models import MLP, ActorCritic, ModelConfig, NatureCNN, PolicyHead, RunningNorm
from asyncrl.models.policies import FlattenObs


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # numpy's check: torch.testing.assert_close costs a 1.5 s import on first use
    np.testing.assert_allclose(
        actual.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_mlp_sizes_and_bad_activation():
    mlp = MLP(5, [16, 8], 3, "relu")
    assert mlp(torch.zeros(4, 5)).shape == (4, 3) and mlp.output_size == 3
    trunk = MLP(5, [16, 8])
    assert trunk(torch.zeros(2, 5)).shape == (2, 8) and trunk.output_size == 8
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(5, [4], None, "swish")


def test_nature_cnn_scales_uint8_input():
    torch.manual_seed(0)
    cnn = NatureCNN(4, (84, 84))
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    out = cnn(frames)
    assert out.shape == (2, 512) and cnn.output_size == 512
    assert_close(out, cnn(frames.float() / 255.0))


def test_flatten_obs_one_hots_discrete_leaves_of_a_dict():
    from asyncrl.data import namedarraytuple

    space = spaces.Dict({"goal": spaces.Discrete(3), "position": spaces.Box(-1, 1, (2,))})
    flat = FlattenObs(space)
    assert flat.output_size == 5
    Obs = namedarraytuple("Obs", ["goal", "position"])
    obs = Obs(torch.tensor([2, 0]), torch.tensor([[0.5, -0.5], [1.0, 0.0]]))
    expected = torch.tensor([[0, 0, 1, 0.5, -0.5], [1, 0, 0, 1.0, 0.0]])
    assert_close(flat(obs), expected)


def test_categorical_head():
    head = PolicyHead(4, spaces.Discrete(3))
    dist = head(torch.randn(5, 4))
    a = dist.sample()
    assert a.shape == (5,)
    logits = head.linear(torch.zeros(1, 4))
    assert torch.allclose(logits, torch.zeros_like(logits))  # zero bias; small init
    assert dist.log_prob(a).shape == (5,) and dist.entropy().shape == (5,)
    assert torch.equal(dist.mode(), dist.logits.argmax(-1))


def test_multicategorical_head_sums_log_probs():
    head = PolicyHead(4, spaces.MultiDiscrete([3, 2]))
    feats = torch.randn(6, 4)
    dist = head(feats)
    a = dist.sample()
    assert a.shape == (6, 2) and (a[:, 0] < 3).all() and (a[:, 1] < 2).all()
    logits = head.linear(feats)
    lp0 = torch.log_softmax(logits[:, :3], -1).gather(1, a[:, :1]).squeeze(1)
    lp1 = torch.log_softmax(logits[:, 3:], -1).gather(1, a[:, 1:]).squeeze(1)
    assert_close(dist.log_prob(a), lp0 + lp1)
    assert dist.mode().shape == (6, 2) and dist.entropy().shape == (6,)


def test_gaussian_head_sums_over_action_dims():
    head = PolicyHead(4, spaces.Box(-1, 1, (3,)), init_log_std=-0.5)
    dist = head(torch.randn(2, 4))
    a = dist.sample()
    assert a.shape == (2, 3)
    normal = torch.distributions.Normal(dist.mode(), torch.full((3,), -0.5).exp())
    assert_close(dist.log_prob(a), normal.log_prob(a).sum(-1))
    assert_close(dist.entropy(), normal.entropy().sum(-1))


def test_unsupported_action_space_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported action space"):
        PolicyHead(4, spaces.Box(-1, 1, (2, 2)))


@pytest.mark.parametrize("shared", [False, True])
def test_actor_critic_on_vectors(shared):
    space = spaces.Box(-1, 1, (4,))
    model = ActorCritic(
        space, spaces.Discrete(2), ModelConfig(hidden_sizes=[8], shared_trunk=shared)
    )
    dist, value = model(torch.zeros(3, 4))
    assert value.shape == (3,) and dist.sample().shape == (3,)
    assert_close(model.value(torch.ones(3, 4)), model(torch.ones(3, 4))[1])
    assert (model.value_trunk is None) == shared


def test_actor_critic_on_images():
    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    model = ActorCritic(space, spaces.Discrete(6), ModelConfig())
    obs = torch.zeros(2, 4, 84, 84, dtype=torch.uint8)
    dist, value = model(obs)
    assert value.shape == (2,) and dist.sample().shape == (2,)
    assert_close(model.value(obs), value)


def test_normalize_obs_needs_a_box():
    space = spaces.Dict({"a": spaces.Box(-1, 1, (2,))})
    with pytest.raises(ValueError, match="normalize_obs needs a Box"):
        ActorCritic(space, spaces.Discrete(2), ModelConfig(normalize_obs=True))


def test_running_norm_matches_numpy_statistics():
    rng = np.random.default_rng(0)
    norm = RunningNorm((3,))
    chunks = [rng.normal(loc=[1, -2, 5], scale=[1, 3, 0.5], size=(n, 3)) for n in (7, 50, 13)]
    for c in chunks:
        norm.update(torch.as_tensor(c, dtype=torch.float32))
    data = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-4, atol=1e-5)
    x = torch.as_tensor(data[:4], dtype=torch.float32)
    expected = (data[:4] - data.mean(0)) / np.sqrt(data.var(0) + 1e-8)
    np.testing.assert_allclose(norm(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    big = torch.full((1, 3), 1e6)
    assert norm(big).max().item() == pytest.approx(10.0)  # clipped
