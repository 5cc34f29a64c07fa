"""Networks and math for Q-value policy gradients (asyncrl/models/qpg.py): the squashed-Gaussian
log-probability against independent references, the Polyak rule, the batched critic ensemble
against independent MLPs, and the CPU matmul context."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from asyncrl.models.qpg import (
    DeterministicActor,
    EnsembleLinear,
    EnsembleQ,
    SquashedGaussianActor,
    cpu_matmul_context,
    onednn_fp32_is_exact,
    polyak_update,
    squashed_gaussian_log_prob,
)

# -- squashed-Gaussian log-probability ---------------------------------------------------------


def test_log_prob_matches_torch_transformed_distribution():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    log_std = torch.rand(64, 3, generator=gen, dtype=torch.float64) * 2 - 1.5
    u = mean + log_std.exp() * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    u = u.clamp(-4, 4)  # keep tanh(u) away from +-1, where atanh in the reference loses digits
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = reference.log_prob(torch.tanh(u)).sum(-1)
    got = squashed_gaussian_log_prob(u, mean, log_std)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (0.7, 0.3), (-1.5, 0.8)])
def test_log_prob_is_the_derivative_of_the_cdf(mean, std):
    # P(tanh(u) <= a) = Phi((atanh(a) - mean) / std); its derivative in a is the density.
    a = torch.linspace(-0.95, 0.95, 39, dtype=torch.float64)
    h = 1e-6
    cdf = Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    ).cdf
    density = (cdf(torch.atanh(a + h)) - cdf(torch.atanh(a - h))) / (2 * h)
    u = torch.atanh(a)[:, None]
    m = torch.full_like(u, mean)
    log_std = torch.full_like(u, math.log(std))
    got = squashed_gaussian_log_prob(u, m, log_std).exp()
    torch.testing.assert_close(got, density, rtol=1e-6, atol=1e-9)


def test_density_integrates_to_one():
    # Midpoint rule over a in (-1, 1) in atanh coordinates; a = tanh(u) covers it all.
    u = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    du = u[1] - u[0]
    mean, log_std = torch.tensor(0.4, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)
    logp = squashed_gaussian_log_prob(u[:, None], mean.expand(len(u), 1), log_std.expand(len(u), 1))
    da_du = 1 - torch.tanh(u) ** 2
    assert float((logp.exp() * da_du).sum() * du) == pytest.approx(1.0, abs=1e-6)


def test_log_prob_stays_finite_where_tanh_saturates():
    u = torch.tensor([[-30.0], [-12.0], [12.0], [30.0]])
    logp = squashed_gaussian_log_prob(u, torch.zeros_like(u), torch.zeros_like(u))
    assert torch.isfinite(logp).all()
    # log(1 - tanh(u)^2) ~ log 4 - 2|u| for large |u|
    expected = (
        -0.5 * u.squeeze(-1) ** 2
        - 0.5 * math.log(2 * math.pi)
        - (math.log(4) - 2 * u.abs().squeeze(-1))
    )
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-4)


def test_actor_log_prob_is_that_of_its_own_sample():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(5, 2, [32, 32])
    obs = torch.randn(16, 5)
    torch.manual_seed(1)
    action, logp = actor(obs)
    mean, log_std = actor.distribution(obs)
    torch.manual_seed(1)
    u = mean + log_std.exp() * torch.randn_like(mean)  # the same noise as inside forward
    torch.testing.assert_close(action, torch.tanh(u))
    reference = TransformedDistribution(
        Normal(mean.double(), log_std.exp().double()), [TanhTransform()]
    )
    torch.testing.assert_close(
        logp.double(), reference.log_prob(torch.tanh(u.double())).sum(-1), rtol=1e-4, atol=1e-4
    )
    assert action.abs().max() <= 1


def test_actor_deterministic_is_tanh_of_mean_and_no_log_prob_on_request():
    actor = SquashedGaussianActor(4, 3, [16])
    obs = torch.randn(8, 4)
    action, logp = actor(obs, deterministic=True, with_log_prob=False)
    assert logp is None
    torch.testing.assert_close(action, torch.tanh(actor.distribution(obs)[0]))


def test_deterministic_actor_is_bounded():
    actor = DeterministicActor(4, 2, [16])
    for p in actor.parameters():
        nn.init.normal_(p, std=10.0)  # drive the pre-activation far out
    out = actor(torch.randn(32, 4))
    assert out.shape == (32, 2) and out.abs().max() <= 1


# -- Polyak averaging ----------------------------------------------------------------------------


def _module(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m[1].running_mean.normal_()  # a buffer that differs between the two copies
    return m


@pytest.mark.parametrize("tau", [0.005, 0.3, 1.0])
def test_polyak_update_moves_targets_by_the_rule(tau):
    target, source = _module(0), _module(1)
    before = [p.detach().double().clone() for p in target.parameters()]
    source_before = [p.detach().clone() for p in source.parameters()]
    polyak_update(target, source, tau)
    for t, b, s in zip(target.parameters(), before, source.parameters()):
        expected = (1 - tau) * b + tau * s.detach().double()
        torch.testing.assert_close(t.detach().double(), expected, rtol=0, atol=1e-7)
    for s, sb in zip(source.parameters(), source_before):
        assert torch.equal(s, sb)  # the source is untouched
    assert torch.equal(target[1].running_mean, source[1].running_mean)  # buffers are copied
    assert not any(p.grad is not None for p in target.parameters())


def test_polyak_update_on_tensor_lists_equals_the_module_form():
    target_a, target_b, source = _module(0), _module(0), _module(1)
    polyak_update(target_a, source, 0.1)
    polyak_update(list(target_b.parameters()), list(source.parameters()), 0.1)
    for a, b in zip(target_a.parameters(), target_b.parameters()):
        assert torch.equal(a, b)


def test_polyak_repeated_converges_geometrically():
    target, source = _module(0), _module(1)
    gap0 = [(s - t).detach().clone() for t, s in zip(target.parameters(), source.parameters())]
    for _ in range(10):
        polyak_update(target, source, 0.2)
    for t, s, g0 in zip(target.parameters(), source.parameters(), gap0):
        torch.testing.assert_close((s - t).detach(), g0 * 0.8**10, rtol=1e-4, atol=1e-6)


# -- the batched critic ensemble -----------------------------------------------------------------


def _independent_mlps(ens: EnsembleQ) -> list[nn.Sequential]:
    """One plain MLP per member, holding copies of that member's weights."""
    mlps = []
    for i in range(ens.members):
        layers = []
        for layer in ens.net:
            if isinstance(layer, EnsembleLinear):
                lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
                with torch.no_grad():
                    lin.weight.copy_(layer.weight[i].t())
                    lin.bias.copy_(layer.bias[i, 0])
                layers.append(lin)
            else:
                layers.append(type(layer)())
        mlps.append(nn.Sequential(*layers))
    return mlps


@pytest.mark.parametrize("members", [1, 2, 3])
def test_ensemble_q_equals_independent_mlps(members):
    torch.manual_seed(0)
    ens = EnsembleQ(5, 2, [32, 16], members=members)
    mlps = _independent_mlps(ens)
    obs, action = torch.randn(10, 5), torch.rand(10, 2) * 2 - 1
    q = ens(obs, action)
    assert q.shape == (members, 10)
    x = torch.cat([obs, action], -1)
    expected = torch.stack([m(x).squeeze(-1) for m in mlps])
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-6)
    # and the gradients each member's weights receive are those of its own MLP
    q.sum().backward()
    for m in mlps:
        m(x).sum().backward()
    first = ens.net[0]
    for i, m in enumerate(mlps):
        torch.testing.assert_close(first.weight.grad[i].t(), m[0].weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(first.bias.grad[i, 0], m[0].bias.grad, rtol=1e-5, atol=1e-6)


def test_ensemble_members_are_initialised_independently():
    torch.manual_seed(0)
    ens = EnsembleQ(3, 1, [8])
    w = ens.net[0].weight
    assert not torch.equal(w[0], w[1])
    bound = 1 / math.sqrt(4)  # nn.Linear's default init bound for fan-in 4
    assert w.abs().max() <= bound


def test_ensemble_single_member_forward_equals_its_row():
    torch.manual_seed(0)
    ens = EnsembleQ(4, 2, [16, 16], members=2)
    obs, action = torch.randn(7, 4), torch.randn(7, 2)
    full = ens(obs, action)
    for i in range(2):
        torch.testing.assert_close(ens.member(obs, action, i), full[i], rtol=1e-5, atol=1e-6)


# -- CPU matmul backend ----------------------------------------------------------------------------


def test_cpu_matmul_context_restores_the_setting_and_keeps_fp32_accuracy():
    setting = torch.backends.mkldnn.matmul
    before = setting.fp32_precision
    torch.manual_seed(0)
    ens = EnsembleQ(3, 1, [256, 256])
    obs, action = torch.randn(256, 3), torch.randn(256, 1)
    plain = ens(obs, action)
    with cpu_matmul_context(True, torch.device("cpu")):
        if onednn_fp32_is_exact():
            assert setting.fp32_precision == "bf16"  # oneDNN allowed; it stays fp32 here
        routed = ens(obs, action)
    assert setting.fp32_precision == before
    torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-5)
    with cpu_matmul_context(False, torch.device("cpu")):
        assert setting.fp32_precision == before
