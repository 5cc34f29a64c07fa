"""Categorical DQN, C51 (Bellemare et al. 2017, "A Distributional Perspective on RL", alg. 1),
and the Rainbow combination (Hessel et al. 2018): C51 + double + dueling + prioritized replay
(priority = cross-entropy loss) + 3-step returns + noisy nets. Shares DQN's update and target
network (and through it the replay base); owns the distributional loss and the projection."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asyncrl.algos.dqn import DQN, DQNConfig


def categorical_projection(
    next_probs: torch.Tensor,  # [N, K] target distribution at the next state
    reward: torch.Tensor,  # [N] n-step discounted reward
    discount: torch.Tensor,  # [N] gamma^n, 0 where terminated
    v_min: float,
    v_max: float,
) -> torch.Tensor:
    """Project the distribution of r + discount * Z onto the fixed support z_0..z_{K-1}.

    Each atom's mass moves to Tz_j = clip(r + discount * z_j, v_min, v_max) and is split between
    the two neighbouring support points in proportion to distance (alg. 1 of the paper).
    """
    n, k = next_probs.shape
    support = torch.linspace(v_min, v_max, k, device=next_probs.device, dtype=next_probs.dtype)
    delta_z = (v_max - v_min) / (k - 1)
    tz = (reward.unsqueeze(1) + discount.unsqueeze(1) * support.unsqueeze(0)).clamp(v_min, v_max)
    b = (tz - v_min) / delta_z  # fractional index in [0, K-1]
    lower = b.floor().long()
    upper = b.ceil().long()
    # When b is an integer, lower == upper: give the whole mass to that atom.
    w_lower = (upper.to(b.dtype) - b) + (lower == upper).to(b.dtype)
    w_upper = b - lower.to(b.dtype)
    out = torch.zeros_like(next_probs)
    out.scatter_add_(1, lower, next_probs * w_lower)
    out.scatter_add_(1, upper, next_probs * w_upper)
    return out


@dataclass
class C51Config(DQNConfig):
    n_atoms: int = 51  # atoms of the return distribution
    v_min: float = -10.0  # support lower bound
    v_max: float = 10.0  # support upper bound
    double: bool = False  # C51 paper: greedy action from the target network


@dataclass
class RainbowConfig(C51Config):
    learning_rate: float = 6.25e-5
    adam_eps: float = 1.5e-4
    double: bool = True
    dueling: bool = True
    noisy: bool = True
    prioritized: bool = True
    per_alpha: float = 0.5
    per_beta: float = 0.4
    n_step: int = 3
    target_update_interval: int = 32_000
    learning_starts: int = 80_000
    eps_start: float = 0.0  # noisy nets explore
    eps_final: float = 0.0
    eval_epsilon: float = 0.0


class C51(DQN):
    @torch.no_grad()
    def td_target(self, sample, next_target: torch.Tensor) -> torch.Tensor:
        """The projected target distribution Phi(r + discount * Z_target(s', a*)) [N, K].

        ``next_target``: target-network logits [N, A, K] for ``sample.next_observation``. a*
        maximises the expected return of the online network (``double``, as in Rainbow) or of
        the target network (the C51 paper).
        """
        cfg, agent = self.config, self.agent
        next_target_probs = next_target.softmax(-1)  # [N, A, K]
        if cfg.double:
            next_q = agent.q_values(sample.next_observation)
        else:
            next_q = (next_target_probs * agent.support).sum(-1)
        next_action = next_q.argmax(1)
        idx = torch.arange(next_q.shape[0], device=next_q.device)
        return categorical_projection(
            next_target_probs[idx, next_action],
            sample.reward,
            sample.discount,
            cfg.v_min,
            cfg.v_max,
        )

    def loss(self, sample, target: torch.Tensor | None = None):
        """(per-sample cross-entropy to the projected target [N], the same as priorities,
        stats); ``target`` as in :meth:`DQN.loss`."""
        agent = self.agent
        if target is None:
            with torch.no_grad():
                target = self.td_target(sample, self.target(sample.next_observation))
        logits = agent.model(sample.observation)  # [N, A, K]
        idx = torch.arange(logits.shape[0], device=logits.device)
        log_p = logits[idx, sample.action.long()].log_softmax(-1)
        per_sample = -(target * log_p).sum(-1)  # cross-entropy, the KL up to a constant
        q_taken = (log_p.detach().exp() * agent.support).sum(-1)
        return per_sample, per_sample.detach(), {"q_mean": q_taken}
