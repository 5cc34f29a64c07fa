"""Noisy linear layers with factorised Gaussian noise (Fortunato et al. 2018, "Noisy Networks
for Exploration", eq. 10-11). Owns the layer and its noise; callers decide when to resample."""

from __future__ import annotations

import math

import torch
from torch import nn


def _scaled_noise(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    x = torch.randn(n, generator=generator)
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """y = (mu_w + sigma_w * eps_w) x + (mu_b + sigma_b * eps_b); eps_w = f(eps_out) f(eps_in)^T."""

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, sigma0 / math.sqrt(in_features))
        nn.init.constant_(self.bias_sigma, sigma0 / math.sqrt(in_features))
        self.reset_noise()

    @torch.no_grad()
    def reset_noise(self) -> None:
        self.eps_in.copy_(_scaled_noise(self.in_features))
        self.eps_out.copy_(_scaled_noise(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return nn.functional.linear(x, weight, bias)


def reset_noise(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, NoisyLinear):
            m.reset_noise()
