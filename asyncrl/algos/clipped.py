"""PPO's clipped objective for one minibatch (Schulman et al. 2017, eq. 7 and 9), shared by PPO
(GAE targets) and APPO (V-trace targets): the surrogate, the optionally clipped value loss, the
entropy bonus, one optimizer step, and the statistics. Owns no targets and no batching.
"""

from __future__ import annotations

from typing import Any

import torch

from asyncrl.algos.optim import clip_grad_norm

STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac")


def new_stats() -> dict[str, list[torch.Tensor]]:
    return {k: [] for k in STATS}


def mean_stats(stats: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """One ``.item()`` per statistic per batch (they are kept as tensors per minibatch)."""
    return {k: torch.stack(v).mean().item() for k, v in stats.items() if v}


def clipped_step(
    algo: Any,
    cfg: Any,
    clip: float,
    dist: Any,
    value: torch.Tensor,
    action: torch.Tensor,
    behaviour_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    returns: torch.Tensor,
    value_anchor: torch.Tensor,
    stats: dict[str, list[torch.Tensor]],
) -> bool:
    """One gradient step of ``algo`` (its ``optimizer``, ``params``, ``updates``) on a minibatch:
    ``dist``/``value`` are the current model's on it, ``behaviour_log_prob`` the log-probs the
    ratio is taken against, ``value_anchor`` what a clipped value may not move away from by more
    than ``cfg.value_clip_range``. Appends the minibatch's statistics to ``stats``; returns True
    when the approximate KL passed 1.5 x ``cfg.target_kl`` (stop the epochs)."""
    log_prob = dist.log_prob(action)
    entropy = dist.entropy().mean()
    if cfg.normalize_advantage and advantage.numel() > 1:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    log_ratio = log_prob - behaviour_log_prob
    ratio = log_ratio.exp()
    policy_loss = torch.max(-advantage * ratio, -advantage * ratio.clamp(1 - clip, 1 + clip)).mean()
    value_error = (value - returns).pow(2)
    if cfg.clip_value:
        clipped = value_anchor + (value - value_anchor).clamp(
            -cfg.value_clip_range, cfg.value_clip_range
        )
        value_error = torch.max(value_error, (clipped - returns).pow(2))
    value_loss = 0.5 * value_error.mean()
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    algo.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.max_grad_norm > 0:
        clip_grad_norm(algo.params, cfg.max_grad_norm)
    algo.optimizer.step()
    algo.updates += 1
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's k3 estimator
        stats["approx_kl"].append(approx_kl)
        stats["clip_frac"].append(((ratio - 1).abs() > clip).float().mean())
        stats["policy_loss"].append(policy_loss.detach())
        stats["value_loss"].append(value_loss.detach())
        stats["entropy"].append(entropy.detach())
    return cfg.target_kl > 0 and approx_kl.item() > 1.5 * cfg.target_kl
