"""PPO's clipped objective for one minibatch (Schulman et al. 2017, eq. 7 and 9), shared by PPO
(GAE targets) and APPO (V-trace targets): the surrogate, the optionally clipped value loss, the
entropy bonus, one optimizer step, and the statistics. Owns no targets and no batching.
"""

from __future__ import annotations

from typing import Any

import torch

from asyncrl.algos import ddp
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
    mask: torch.Tensor | None = None,
    normalized: bool = False,
) -> bool:
    """One gradient step of ``algo`` (its ``optimizer``, ``params``, ``updates``) on a minibatch:
    ``dist``/``value`` are the current model's on it, ``behaviour_log_prob`` the log-probs the
    ratio is taken against, ``value_anchor`` what a clipped value may not move away from by more
    than ``cfg.value_clip_range``. Appends the minibatch's statistics to ``stats``; returns True
    when the approximate KL passed 1.5 x ``cfg.target_kl`` (stop the epochs).

    ``mask`` (float [N], 1 for real steps, 0 for padding; recurrent sequences) makes every
    mean, the advantage normalisation included, one over the real steps only. ``normalized``:
    the advantages are standardised already (``share_advantage``)."""
    if mask is None:
        mean = _mean
    else:  # data-parallel learners: over the real steps of all shares together
        count = ddp.global_count(mask)
        mean = lambda x: (x * mask).sum() / count  # noqa: E731
    log_prob = dist.log_prob(action)
    entropy = mean(dist.entropy())
    if cfg.normalize_advantage and not normalized:
        if ddp.active() is not None:  # the whole minibatch's statistics, all shares together
            advantage = ddp.standardize(advantage, mask)
        elif advantage.numel() > 1:
            if mask is None:
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
            else:
                advantage = masked_normalize(advantage, mask)
    log_ratio = log_prob - behaviour_log_prob
    ratio = log_ratio.exp()
    policy_loss = mean(torch.max(-advantage * ratio, -advantage * ratio.clamp(1 - clip, 1 + clip)))
    value_error = (value - returns).pow(2)
    if cfg.clip_value:
        clipped = value_anchor + (value - value_anchor).clamp(
            -cfg.value_clip_range, cfg.value_clip_range
        )
        value_error = torch.max(value_error, (clipped - returns).pow(2))
    value_loss = 0.5 * mean(value_error)
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    algo.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ddp.reduce_gradients(algo.params)
    if cfg.max_grad_norm > 0:
        clip_grad_norm(algo.params, cfg.max_grad_norm)
    algo.optimizer.step()
    algo.updates += 1
    with torch.no_grad():
        approx_kl = mean((ratio - 1) - log_ratio)  # Schulman's k3 estimator
        stats["approx_kl"].append(approx_kl)
        stats["clip_frac"].append(mean(((ratio - 1).abs() > clip).float()))
        stats["policy_loss"].append(policy_loss.detach())
        stats["value_loss"].append(value_loss.detach())
        stats["entropy"].append(entropy.detach())
    # data-parallel learners: every one stops at the same minibatch
    return cfg.target_kl > 0 and ddp.all_mean(approx_kl).item() > 1.5 * cfg.target_kl


def share_advantage(
    cfg: Any, advantage: torch.Tensor, whole: torch.Tensor, share: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """The advantages of this learner's minibatch (indices ``share`` of ``whole``), and
    whether they are standardised already: with data-parallel learners and
    ``normalize_advantage``, over the whole minibatch, which every learner holds, so that
    ``clipped_step`` needs no exchange for the statistics (a gloo round trip costs ~1 ms)."""
    if ddp.active() is None or not cfg.normalize_advantage or whole.numel() < 2:
        return advantage[share], False
    a = advantage[whole]
    return ddp.shard((a - a.mean()) / (a.std() + 1e-8)), True


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` (float, same shape) is 1."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_normalize(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) over the masked entries (unbiased std, as ``Tensor.std``);
    padded entries come out 0."""
    n = mask.sum()
    mu = (x * mask).sum() / n.clamp_min(1.0)
    var = ((x - mu).pow(2) * mask).sum() / (n - 1).clamp_min(1.0)
    return (x - mu) / (var.sqrt() + 1e-8) * mask
