"""Actor-critic networks built from the env's spaces (MLP or Nature CNN trunk, policy + value
heads). Owns architecture choices; agents own acting and algorithms own losses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import nn

from asyncrl.models.cnn import NatureCNN
from asyncrl.models.heads import PolicyHead
from asyncrl.models.mlp import MLP, orthogonal_init
from asyncrl.models.normalize import RunningNorm


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])  # MLP trunk widths
    activation: str = "tanh"  # tanh | relu | elu | gelu | silu
    shared_trunk: bool = False  # one trunk for policy and value (always shared for images)
    normalize_obs: bool = False  # running mean/std of vector observations (MuJoCo)
    init_log_std: float = 0.0  # Gaussian policies: initial log standard deviation
    core: str = "none"  # recurrent core after the encoder: none | lstm | gru (PPO, A2C, APPO)
    core_size: int = 128  # hidden units of the recurrent core
    core_prev_action: bool = False  # feed the core the previous action (one-hot if discrete)
    core_prev_reward: bool = False  # feed the core the previous reward
    core_head_sizes: list[int] = field(default_factory=list)  # MLP per head after the core

    def validate(self) -> None:
        from asyncrl.models.recurrent import CORES

        if self.core not in CORES:
            raise ValueError(f"model.core must be one of {', '.join(CORES)}, got {self.core!r}")
        if self.core_size < 1:
            raise ValueError(f"model.core_size must be >= 1, got {self.core_size}")
        if self.core == "none" and (self.core_prev_action or self.core_prev_reward):
            raise ValueError("model.core_prev_action/core_prev_reward need model.core lstm or gru")


def is_image_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == "uint8" and len(space.shape) == 3


def _flat_size(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Dict):
        return sum(_flat_size(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Tuple):
        return sum(_flat_size(s) for s in space.spaces)
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)  # one-hot
    return int(math.prod(space.shape)) if space.shape else 1


class FlattenObs(nn.Module):
    """Tree of observations [N, ...] -> float features [N, D]; Discrete leaves become one-hot."""

    def __init__(self, space: gym.Space):
        super().__init__()
        self.space = space
        self.output_size = _flat_size(space)

    def _leaf(self, space: gym.Space, x: torch.Tensor, lead: int) -> torch.Tensor:
        if isinstance(space, gym.spaces.Discrete):
            return nn.functional.one_hot(x.long().reshape(-1), int(space.n)).float()
        return x.reshape(lead, -1).float()

    def _walk(self, space, x, lead):
        if isinstance(space, gym.spaces.Dict):
            return [f for s, c in zip(space.spaces.values(), x) for f in self._walk(s, c, lead)]
        if isinstance(space, gym.spaces.Tuple):
            return [f for s, c in zip(space.spaces, x) for f in self._walk(s, c, lead)]
        return [self._leaf(space, x, lead)]

    def forward(self, obs) -> torch.Tensor:
        if isinstance(obs, torch.Tensor):
            return self._leaf(self.space, obs, obs.shape[0])
        lead = _first_leaf(obs).shape[0]
        return torch.cat(self._walk(self.space, obs, lead), -1)


def _first_leaf(tree):
    while isinstance(tree, tuple):
        tree = next(t for t in tree if t is not None)
    return tree


def build_encoder(obs_space: gym.Space, config: ModelConfig):
    """(image?, FlattenObs or None, RunningNorm or None, encoder) for ``obs_space``: the Nature
    CNN for images, else an MLP of ``config.hidden_sizes`` on the flattened (and, with
    ``normalize_obs``, normalised) observation; orthogonally initialised."""
    if is_image_space(obs_space):
        encoder = NatureCNN(obs_space.shape[0], tuple(obs_space.shape[1:]))
        return True, None, None, orthogonal_init(encoder)
    flatten = FlattenObs(obs_space)
    d = flatten.output_size
    normalizer = None
    if config.normalize_obs:
        if not isinstance(obs_space, gym.spaces.Box):
            raise ValueError("normalize_obs needs a Box observation space")
        normalizer = RunningNorm((d,))
    encoder = orthogonal_init(MLP(d, config.hidden_sizes, None, config.activation))
    return False, flatten, normalizer, encoder


class ActorCritic(nn.Module):
    """pi(a|s) and V(s). Inputs have one leading batch dim; callers fold [T, B] into it."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, config: ModelConfig):
        super().__init__()
        self.image, flatten, self.normalizer, self.trunk = build_encoder(obs_space, config)
        if self.image:
            self.value_trunk = None
            feat = self.trunk.output_size
            value_feat = feat
        else:
            self.flatten = flatten
            d = self.flatten.output_size
            self.value_trunk = (
                None
                if config.shared_trunk
                else orthogonal_init(MLP(d, config.hidden_sizes, None, config.activation))
            )
            feat = self.trunk.output_size
            value_feat = feat if self.value_trunk is None else self.value_trunk.output_size
        self.pi = PolicyHead(feat, action_space, config.init_log_std)
        self.v = nn.Linear(value_feat, 1)
        nn.init.orthogonal_(self.v.weight, 1.0)
        nn.init.zeros_(self.v.bias)

    def _features(self, obs):
        if self.image:
            f = self.trunk(obs)
            return f, f
        x = self.flatten(obs)
        if self.normalizer is not None:
            x = self.normalizer(x)
        f = self.trunk(x)
        return f, (f if self.value_trunk is None else self.value_trunk(x))

    def forward(self, obs):
        """Returns (action distribution, value [N])."""
        f, fv = self._features(obs)
        return self.pi(f), self.v(fv).squeeze(-1)

    def value(self, obs) -> torch.Tensor:
        if self.image:
            return self.v(self.trunk(obs)).squeeze(-1)
        _, fv = self._features(obs)
        return self.v(fv).squeeze(-1)
