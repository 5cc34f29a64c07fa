"""Return and advantage estimators as pure functions (numpy, [T, B] time-major).

Owns the math only; callers decide what the values and flags mean.
"""

from __future__ import annotations

import numpy as np


def gae(
    reward: np.ndarray,
    value: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    timeout_value: np.ndarray,
    bootstrap_value: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), time-limit aware.

    For step t with next state value ``v'``::

        v' = 0                       if terminated[t]
           = timeout_value[t]        if truncated[t]   (V of the env's final observation)
           = value[t+1]              otherwise (bootstrap_value at t = T-1)
        delta_t = reward[t] + gamma * v' - value[t]
        A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1},  done_t = terminated | truncated

    Returns (advantage, return = advantage + value), both float32 [T, B].
    """
    T = reward.shape[0]
    adv = np.zeros_like(reward, dtype=np.float32)
    last = np.zeros(reward.shape[1:], np.float32)
    next_value = bootstrap_value.astype(np.float32)
    for t in range(T - 1, -1, -1):
        term = terminated[t].astype(np.float32)
        trunc = truncated[t].astype(np.float32)
        nv = (1.0 - term) * ((1.0 - trunc) * next_value + trunc * timeout_value[t])
        delta = reward[t] + gamma * nv - value[t]
        last = delta + gamma * lam * (1.0 - np.maximum(term, trunc)) * last
        adv[t] = last
        next_value = value[t]
    return adv, adv + value.astype(np.float32)


def discounted_return(reward, terminated, truncated, timeout_value, bootstrap_value, gamma):
    """n-step discounted returns to the end of the batch (GAE with lam=1 and zero values)."""
    zeros = np.zeros_like(reward, dtype=np.float32)
    adv, _ = gae(reward, zeros, terminated, truncated, timeout_value, bootstrap_value, gamma, 1.0)
    return adv
