"""A sampler batch turned into the flat torch tensors a policy-gradient update needs
(A2C, PPO): GAE advantages and returns, [T*B] views of observations and actions, the behaviour
policy's log-probabilities and values. Owns no loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asyncrl.algos.returns import gae
from asyncrl.data import to_torch, tree_map


def flatten_time_env(tree):
    """[T, B, ...] -> [T*B, ...] on every leaf (views)."""
    return tree_map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


@dataclass
class PgBatch:
    observation: Any  # tree [N, ...]
    action: torch.Tensor  # [N, ...]
    old_log_prob: torch.Tensor  # [N]
    old_value: torch.Tensor  # [N]
    advantage: torch.Tensor  # [N]
    returns: torch.Tensor  # [N]
    explained_variance: float  # of the returns by the behaviour values

    def __len__(self) -> int:
        return int(self.advantage.shape[0])


def pg_batch(batch, gamma: float, lam: float, device: torch.device) -> PgBatch:
    s = batch.samples
    info = s.agent.agent_info
    adv, ret = gae(
        s.env.reward,
        info.value,
        s.env.terminated,
        s.env.truncated,
        s.env.env_info.timeout_value,
        batch.bootstrap_value,
        gamma,
        lam,
    )
    var_y = float(np.var(ret))
    explained = float("nan") if var_y == 0 else 1.0 - float(np.var(ret - info.value)) / var_y

    def flat(x):
        return torch.from_numpy(np.ascontiguousarray(x).reshape(-1)).to(device)

    return PgBatch(
        observation=to_torch(flatten_time_env(s.env.observation), device),
        action=to_torch(flatten_time_env(s.agent.action), device),
        old_log_prob=flat(info.log_prob),
        old_value=flat(info.value),
        advantage=flat(adv),
        returns=flat(ret),
        explained_variance=explained,
    )


def annealed(value: float, progress: float, anneal: bool) -> float:
    """``value`` decayed linearly to 0 over the run when ``anneal`` (progress in [0, 1])."""
    return max(value * (1.0 - progress), 0.0) if anneal else value


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
