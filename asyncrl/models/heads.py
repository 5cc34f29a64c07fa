"""Policy heads: the action distributions a policy network parameterises (torch.distributions).

Owns the mapping action space -> distribution; a head turns features into a distribution object
with ``sample``, ``mode``, ``log_prob`` (summed over action dims) and ``entropy``.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

torch.distributions.Distribution.set_default_validate_args(False)  # hot path; inputs are ours


class CategoricalDist:
    """Categorical over logits, computed directly from log-softmax (cheaper than building a
    torch.distributions object per call); ``sample_from(u)`` is the Gumbel-max trick."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.log_p = torch.log_softmax(logits, -1)

    def noise_shape(self) -> tuple[int, ...]:
        return (self.logits.shape[-1],)

    def sample_from(self, uniform: torch.Tensor) -> torch.Tensor:
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))
        return (self.log_p + gumbel).argmax(-1)

    def sample(self) -> torch.Tensor:
        return self.sample_from(torch.rand_like(self.log_p))

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.log_p.exp() * self.log_p).sum(-1)


class MultiCategoricalDist:
    """Independent categoricals, one per MultiDiscrete dimension."""

    def __init__(self, logits: torch.Tensor, nvec: list[int]):
        self.nvec = nvec
        self.dists = [Categorical(logits=chunk) for chunk in torch.split(logits, nvec, dim=-1)]

    def noise_shape(self) -> tuple[int, ...]:
        return (sum(self.nvec),)

    def sample_from(self, uniform: torch.Tensor) -> torch.Tensor:
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))
        chunks = torch.split(gumbel, self.nvec, dim=-1)
        return torch.stack([(d.logits + g).argmax(-1) for d, g in zip(self.dists, chunks)], -1)

    def sample(self) -> torch.Tensor:
        return torch.stack([d.sample() for d in self.dists], -1)

    def mode(self) -> torch.Tensor:
        return torch.stack([d.logits.argmax(-1) for d in self.dists], -1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        a = action.long()
        return sum(d.log_prob(a[..., i]) for i, d in enumerate(self.dists))

    def entropy(self) -> torch.Tensor:
        return sum(d.entropy() for d in self.dists)


class DiagGaussianDist:
    """Diagonal Gaussian with a state-independent log-std; log-prob and entropy summed over
    action dims, written out (no torch.distributions object per call)."""

    _LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def noise_shape(self) -> tuple[int, ...]:
        return (self.mean.shape[-1],)

    def sample_from(self, normal: torch.Tensor) -> torch.Tensor:
        return self.mean + self.log_std.exp() * normal

    def sample(self) -> torch.Tensor:
        return self.sample_from(torch.randn_like(self.mean))

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - self._LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + self._LOG_SQRT_2PI + self.log_std).sum(-1)


class PolicyHead(nn.Module):
    """Linear layer from features to the distribution parameters of ``action_space``."""

    def __init__(self, in_features: int, action_space: gym.Space, init_log_std: float = 0.0):
        super().__init__()
        self.kind: str
        if isinstance(action_space, gym.spaces.Discrete):
            self.kind, n = "categorical", int(action_space.n)
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.kind = "multicategorical"
            self.nvec = [int(x) for x in np.asarray(action_space.nvec).ravel()]
            n = sum(self.nvec)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.kind, n = "gaussian", int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((n,), float(init_log_std)))
        else:
            raise ValueError(
                f"policy head: unsupported action space {action_space!r}; supported: Discrete, "
                "MultiDiscrete, 1-d Box"
            )
        self.linear = nn.Linear(in_features, n)
        nn.init.orthogonal_(self.linear.weight, 0.01)  # near-uniform initial policy
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor):
        out = self.linear(features)
        if self.kind == "categorical":
            return CategoricalDist(out)
        if self.kind == "multicategorical":
            return MultiCategoricalDist(out, self.nvec)
        return DiagGaussianDist(out, self.log_std)
