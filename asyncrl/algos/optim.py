"""Optimizer helpers shared by the algorithms: Adam with the fused kernel where torch has one,
gradient-norm clipping in a few foreach ops, frozen target-network copies. Owns no algorithm
state."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch


def make_adam(
    params: Iterable[torch.nn.Parameter], lr: float, eps: float = 1e-8, weight_decay: float = 0.0
) -> torch.optim.Adam:
    """Adam; fused (one kernel for all parameters, torch >= 2.4 on CPU) when available."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """grad *= min(1, max_norm / (||grad||_2 + 1e-6)): ``torch.nn.utils.clip_grad_norm_``'s
    formula without its per-call grouping overhead. Returns the total norm (a tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))
    return total


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy without gradients (a target network)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
