"""Q-networks for the deep Q-learning family: MLP or Nature-CNN trunk, then a plain, dueling
(Wang et al. 2016) and/or distributional (C51, Bellemare et al. 2017) head, optionally with noisy
layers (Fortunato et al. 2018). Owns architecture only; acting is in agents/, losses in algos/."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import nn

from asyncrl.models.cnn import NatureCNN
from asyncrl.models.mlp import MLP
from asyncrl.models.noisy import NoisyLinear
from asyncrl.models.policies import FlattenObs, is_image_space


@dataclass
class QModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])  # MLP trunk (vector obs)
    activation: str = "relu"
    head_hidden: int = 0  # hidden units in each head stream after the trunk (0: linear heads)
    dueling: bool = False  # separate value and advantage streams
    noisy: bool = False  # noisy linear layers in the heads (exploration without epsilon)
    noisy_sigma0: float = 0.5
    n_atoms: int = 1  # >1: a categorical distribution over returns per action (C51)


class QNetwork(nn.Module):
    """obs [N, ...] -> Q [N, A] (n_atoms == 1) or logits [N, A, n_atoms]."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, config: QModelConfig):
        super().__init__()
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"Q-learning needs a Discrete action space, got {action_space!r}")
        self.n_actions = int(action_space.n)
        self.n_atoms = config.n_atoms
        self.dueling = config.dueling
        if is_image_space(obs_space):
            self.flatten = None
            self.trunk = NatureCNN(obs_space.shape[0], tuple(obs_space.shape[1:]))
        else:
            self.flatten = FlattenObs(obs_space)
            self.trunk = MLP(self.flatten.output_size, config.hidden_sizes, None, config.activation)
        feat = self.trunk.output_size
        linear = (
            (lambda i, o: NoisyLinear(i, o, config.noisy_sigma0)) if config.noisy else nn.Linear
        )

        def stream(out: int) -> nn.Module:
            if config.head_hidden > 0:
                return nn.Sequential(
                    linear(feat, config.head_hidden), nn.ReLU(), linear(config.head_hidden, out)
                )
            return linear(feat, out)

        self.advantage = stream(self.n_actions * self.n_atoms)
        self.value = stream(self.n_atoms) if config.dueling else None

    def forward(self, obs) -> torch.Tensor:
        x = obs if self.flatten is None else self.flatten(obs)
        f = self.trunk(x)
        a = self.advantage(f)  # [N, A * K]
        v = None if self.value is None else self.value(f)  # [N, K]
        if self.n_atoms > 1:  # (no reshapes for plain Q: two fewer autograd nodes per pass)
            a = a.view(-1, self.n_actions, self.n_atoms)
            v = None if v is None else v.view(-1, 1, self.n_atoms)
        if v is not None:
            a = v + a - a.mean(1, keepdim=True)  # Wang et al. 2016, eq. 9
        return a
