"""A sampler batch turned into the flat torch tensors a policy-gradient update needs
(A2C, PPO): GAE advantages and returns, [T*B] views of observations and actions, the behaviour
policy's log-probabilities and values; which columns are too stale for the loss (policy lag).
Owns no loss."""

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


def lag_mask(policy_lag: np.ndarray | None, num_envs: int, max_policy_lag: int) -> np.ndarray:
    """[B] bool, True for the columns fit for the loss: policy lag (learner version minus acting
    version, ``SampleBatch.policy_lag``) at most ``max_policy_lag``. None (synchronous): all."""
    if policy_lag is None:
        return np.ones(num_envs, bool)
    lag = np.asarray(policy_lag)
    if lag.shape != (num_envs,) or not np.issubdtype(lag.dtype, np.integer):
        raise ValueError(
            f"policy_lag must be an integer array of shape ({num_envs},), got {lag.dtype} "
            f"of shape {lag.shape}"
        )
    if (lag < 0).any():
        raise ValueError(f"policy_lag must be >= 0 (learner minus acting version), got {lag.min()}")
    return lag <= max_policy_lag


def lag_stats(policy_lag: np.ndarray | None, keep: np.ndarray, horizon: int) -> dict[str, float]:
    """The batch's policy lag over all its columns (0 when None) and ``lag_dropped_samples``, the
    env steps of the columns ``keep`` leaves out."""
    lag = np.zeros(1, np.int64) if policy_lag is None else np.asarray(policy_lag)
    return {
        "policy_lag_min": float(lag.min()),
        "policy_lag_mean": float(lag.mean()),
        "policy_lag_max": float(lag.max()),
        "lag_dropped_samples": float(horizon * int((~keep).sum())),
    }


def annealed(value: float, progress: float, anneal: bool) -> float:
    """``value`` decayed linearly to 0 over the run when ``anneal`` (progress in [0, 1])."""
    return max(value * (1.0 - progress), 0.0) if anneal else value


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
