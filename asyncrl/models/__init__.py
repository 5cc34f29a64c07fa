"""Models: MLP, Nature CNN, policy heads, actor-critic networks, observation normalisation."""

from asyncrl.models.cnn import NatureCNN
from asyncrl.models.heads import PolicyHead
from asyncrl.models.mlp import MLP, orthogonal_init
from asyncrl.models.normalize import RunningNorm
from asyncrl.models.policies import ActorCritic, ModelConfig

__all__ = [
    "MLP",
    "ActorCritic",
    "ModelConfig",
    "NatureCNN",
    "PolicyHead",
    "RunningNorm",
    "orthogonal_init",
]
