"""Networks for Q-value policy gradients (DDPG, TD3, SAC): deterministic and tanh-squashed
Gaussian actors, and an ensemble of Q-functions evaluated as one batched network (all critics
in one ``baddbmm`` per layer, instead of one small matmul per critic).

Actions inside these networks live in [-1, 1]^d; agents scale them to the env's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    def forward(self, obs: torch.Tensor, deterministic: bool = False, with_log_prob: bool = True):
        mean, log_std = self.distribution(obs)
        if deterministic:
            u = mean
        else:
            u = mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(u)
        if not with_log_prob:
            return action, None
        return action, squashed_gaussian_log_prob(u, mean, log_std)


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
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, for parameters (buffers are copied)."""
    t_params = list(target.parameters())
    s_params = list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)
    for tb, sb in zip(target.buffers(), source.buffers()):
        tb.copy_(sb)
