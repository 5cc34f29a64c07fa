"""Multi-layer perceptron and weight initialisation. Owns nothing but layers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    """Orthogonal weights, zero bias (the PPO implementation detail of Engstrom et al. 2020)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class MLP(nn.Sequential):
    """Linear layers with an activation between them; no activation after the output layer.

    ``output_size=None`` ends with the last hidden layer (activated) as a feature extractor.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_size: int | None = None,
        activation_name: str = "tanh",
    ):
        act = activation(activation_name)
        layers: list[nn.Module] = []
        last = input_size
        for h in hidden_sizes:
            layers += [nn.Linear(last, h), act()]
            last = h
        if output_size is not None:
            layers.append(nn.Linear(last, output_size))
            last = output_size
        super().__init__(*layers)
        self.output_size = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x)
