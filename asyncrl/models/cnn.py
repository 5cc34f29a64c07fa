"""The Nature CNN (Mnih et al. 2015) for stacked 84x84 frames. Owns only conv layers."""

from __future__ import annotations

import torch
from torch import nn


class NatureCNN(nn.Module):
    """conv 32x8x8/4 -> 64x4x4/2 -> 64x3x3/1 -> linear 512, ReLU; uint8 input scaled by 1/255."""

    def __init__(
        self, in_channels: int = 4, image_hw: tuple[int, int] = (84, 84), features: int = 512
    ):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.convs(torch.zeros(1, in_channels, *image_hw)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, features), nn.ReLU())
        self.output_size = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() * (1.0 / 255.0)
        return self.fc(self.convs(x))
