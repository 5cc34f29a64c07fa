"""Networks for Q-value policy gradients (DDPG, TD3, SAC): deterministic and tanh-squashed
Gaussian actors, and an ensemble of Q-functions evaluated as one batched network (all critics
in one ``baddbmm`` per layer, instead of one small matmul per critic).

Actions inside these networks live in [-1, 1]^d; agents scale them to the env's bounds.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from asyncrl.models.mlp import MLP, activation

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class EnsembleLinear(nn.Module):
    """E independent linear layers applied to [E, N, in] -> [E, N, out] in one batched matmul."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def forward_member(self, x: torch.Tensor, member: int) -> torch.Tensor:
        """Member ``member`` alone: [N, in] -> [N, out]."""
        return torch.addmm(self.bias[member, 0], x, self.weight[member])


class EnsembleQ(nn.Module):
    """``members`` Q-functions Q_i(s, a); forward returns [E, N]."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int],
        members: int = 2,
        activation_name: str = "relu",
    ):
        super().__init__()
        self.members = members
        act = activation(activation_name)
        layers: list[nn.Module] = []
        last = obs_dim + action_dim
        for h in hidden_sizes:
            layers += [EnsembleLinear(members, last, h), act()]
            last = h
        layers.append(EnsembleLinear(members, last, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1)
        x = x.unsqueeze(0).expand(self.members, *x.shape)
        return self.net(x).squeeze(-1)

    def member(self, obs: torch.Tensor, action: torch.Tensor, member: int = 0) -> torch.Tensor:
        """Q_member(s, a) alone, [N]: what TD3's and DDPG's actor loss needs (Fujimoto et al.
        2018 use Q_1 only), without the cost of evaluating every member."""
        x = torch.cat([obs, action], -1)
        for layer in self.net:
            x = layer.forward_member(x, member) if isinstance(layer, EnsembleLinear) else layer(x)
        return x.squeeze(-1)


class DeterministicActor(nn.Module):
    """mu(s) = tanh(MLP(s)) in [-1, 1]^d."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int],
        activation_name: str = "relu",
    ):
        super().__init__()
        self.net = MLP(obs_dim, hidden_sizes, action_dim, activation_name)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class SquashedGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)); log pi(a|s) with the tanh change of variables
    (Haarnoja et al. 2018, appendix C, eq. 21): log pi = log N(u) - sum log(1 - tanh(u)^2)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int],
        activation_name: str = "relu",
    ):
        super().__init__()
        self.trunk = MLP(obs_dim, hidden_sizes, None, activation_name)
        self.mean = nn.Linear(self.trunk.output_size, action_dim)
        self.log_std = nn.Linear(self.trunk.output_size, action_dim)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(obs)
        log_std = self.log_std(f).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return self.mean(f), log_std

    def forward(
        self,
        obs: torch.Tensor,
        deterministic: bool = False,
        with_log_prob: bool = True,
        noise: torch.Tensor | None = None,
    ):
        """``noise``: the standard normal draw to use (shaped as the mean; default: a fresh
        one), e.g. a share of a larger minibatch's draw."""
        mean, log_std = self.distribution(obs)
        if deterministic:
            noise, u = torch.zeros_like(mean), mean
        else:
            noise = torch.randn_like(mean) if noise is None else noise
            u = mean + log_std.exp() * noise
        action = torch.tanh(u)
        if not with_log_prob:
            return action, None
        # (u - mean) / std is the noise itself: use it, rather than recompute it (fewer ops, the
        # same value and the same gradient, since the noise does not depend on the parameters).
        log_normal = -0.5 * noise.pow(2) - log_std
        log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
        const = 0.5 * math.log(2 * math.pi) * mean.shape[-1]
        return action, (log_normal - log_det).sum(-1) - const


def squashed_gaussian_log_prob(
    u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log density of a = tanh(u) where u ~ N(mean, exp(log_std)), summed over action dims.

    log(1 - tanh(u)^2) is computed as 2 (log 2 - u - softplus(-2u)) for numerical stability.
    """
    normal_logp = -0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    correction = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
    return (normal_logp - correction).sum(-1)


@torch.no_grad()
def polyak_update(
    target: nn.Module | Sequence[torch.Tensor],
    source: nn.Module | Sequence[torch.Tensor],
    tau: float,
) -> None:
    """theta_target <- (1 - tau) theta_target + tau theta (Lillicrap et al. 2016, sec. 3).

    Takes modules (parameters are averaged, buffers copied) or two matching lists of tensors
    (pass lists built once to skip walking the modules on every update). One fused
    ``_foreach_lerp_`` for all tensors: lerp(t, s, tau) = t + tau (s - t).
    """
    if isinstance(target, nn.Module):
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)
        for tb, sb in zip(target.buffers(), source.buffers()):
            tb.copy_(sb)
    else:
        torch._foreach_lerp_(list(target), list(source), tau)


# -- CPU matmul backend ------------------------------------------------------------------------
# On CPU, torch sends fp32 matmuls to MKL, unless reduced precision is allowed
# (torch.backends.mkldnn.matmul.fp32_precision = "bf16"): then they go to oneDNN, which may compute
# in bf16 where the hardware makes that fast (e.g. Intel AMX) and otherwise runs its own fp32
# kernels. On this development machine's AMD EPYC (AVX-512, no AMX) oneDNN's fp32 kernels are
# about twice as fast as MKL's (0.32 -> 0.16 ms per 256x256x256 matmul, one thread; MKL is known
# to take slower paths on non-Intel CPUs) and the results keep fp32 accuracy. So the learners
# route their updates through oneDNN only after a probe shows, on the machine at hand, that the
# products keep fp32 accuracy; and only for the update, so acting and evaluation use torch's
# defaults (the serial and parallel samplers act alike).


@functools.cache
def onednn_fp32_is_exact() -> bool:
    """Whether fp32 matmuls through oneDNN keep fp32 accuracy here (not silently bf16).

    Compares a few update-shaped products with float64: relative error ~1e-7 in fp32, ~2e-3
    when oneDNN rounds the inputs to bf16."""
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 256, 256, generator=gen), torch.randn(2, 256, 256, generator=gen)
    with _onednn_matmul():
        products = [torch.bmm(a, b), a[0] @ b[0], a[0].t() @ b[1], a[1] @ b[0].t()]
    a64, b64 = a.double(), b.double()
    refs = [torch.bmm(a64, b64), a64[0] @ b64[0], a64[0].t() @ b64[1], a64[1] @ b64[0].t()]
    return all(float((p.double() - r).norm() / r.norm()) < 1e-5 for p, r in zip(products, refs))


@contextlib.contextmanager
def _onednn_matmul() -> Iterator[None]:
    setting = torch.backends.mkldnn.matmul
    before = setting.fp32_precision
    setting.fp32_precision = "bf16"
    try:
        yield
    finally:
        setting.fp32_precision = before


def cpu_matmul_context(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """The context to run a CPU update in: oneDNN fp32 matmuls when ``enabled`` and exact here,
    else nothing."""
    if enabled and device.type == "cpu" and onednn_fp32_is_exact():
        return _onednn_matmul()
    return contextlib.nullcontext()
