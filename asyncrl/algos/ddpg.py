"""Deep Deterministic Policy Gradient (Lillicrap et al. 2016, arXiv:1509.02971): one critic,
a deterministic actor updated every step, Polyak targets, Ornstein-Uhlenbeck exploration noise
by default. Implemented as TD3 without its three changes (one critic, no target smoothing,
no delay)."""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncrl.algos.td3 import TD3, TD3Config


@dataclass
class DDPGConfig(TD3Config):
    actor_lr: float = 1e-4  # paper: 1e-4
    critic_lr: float = 1e-3  # paper: 1e-3
    critic_weight_decay: float = 0.0  # paper: 1e-2 L2 on the critic
    tau: float = 0.001  # paper: 0.001
    batch_size: int = 64  # paper: 64
    learning_starts: int = 1_000
    policy_delay: int = 1
    noise: str = "ou"  # ou (paper, theta 0.15, sigma 0.2) | gaussian | none
    exploration_noise: float = 0.2
    ou_theta: float = 0.15
    target_noise: float = 0.0
    hidden_sizes: list[int] = field(default_factory=lambda: [400, 300])


class DDPG(TD3):
    critics = 1
    smoothing = False
