"""Return and advantage estimators as pure functions ([T, B] time-major): GAE and n-step returns
in numpy, V-trace in torch (its inputs come from the learner's model, on its device).

Owns the math only; callers decide what the values and flags mean.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


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


class VTrace(NamedTuple):
    vs: torch.Tensor  # [T, B] V-trace value targets v_s
    pg_advantage: torch.Tensor  # [T, B] rho_pg_s * (r_s + gamma_s * v_{s+1} - V(x_s))


@torch.no_grad()
def vtrace(
    log_rho: torch.Tensor,
    discount: torch.Tensor,
    reward: torch.Tensor,
    value: torch.Tensor,
    bootstrap_value: torch.Tensor,
    truncated: torch.Tensor | None = None,
    timeout_value: torch.Tensor | None = None,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    pg_rho_bar: float = 1.0,
) -> VTrace:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018, IMPALA, sec. 4).

    Inputs are [T, B] (``bootstrap_value`` [B]): ``log_rho = log pi(a_t|x_t) - log mu(a_t|x_t)``
    (target minus behaviour log-probability), ``discount = gamma * (1 - terminated)`` (gamma_t),
    rewards, the target values V(x_t), and V(x_T) after the last step. With
    ``rho_t = min(rho_bar, pi/mu)`` and ``c_i = min(c_bar, pi/mu)``, eq. 1::

        v_s = V(x_s) + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) delta_t V
        delta_t V = rho_t (r_t + gamma_t V(x_{t+1}) - V(x_t))

    (the paper's gamma^{t-s} with a per-step discount, so a termination, gamma_t = 0, ends the
    sum), computed backwards as ``v_s - V(x_s) = delta_s V + gamma_s c_s (v_{s+1} - V(x_{s+1}))``.
    The policy-gradient advantages (sec. 4.2) use their own clip::

        A_s = min(pg_rho_bar, pi/mu) (r_s + gamma_s v_{s+1} - V(x_s)),   v_T = V(x_T)

    Time limits as in ``gae``: where ``truncated[t]`` the next value V(x_{t+1}) and v_{t+1} are
    ``timeout_value[t]`` (V of the env's final observation; x_{t+1} is the next episode's first)
    and the trace is cut there (no correction from the next episode flows back). A step both
    terminated and truncated counts as terminated. The thresholds may be ``math.inf`` (no
    clipping). Targets are constants for the learner: the result carries no gradient.
    Returns ``VTrace(vs, pg_advantage)``, [T, B] in the dtype of ``value``.
    """
    if value.dim() != 2:
        raise ValueError(f"vtrace: value must be [T, B], got shape {tuple(value.shape)}")
    T, B = value.shape
    for name, x in (("log_rho", log_rho), ("discount", discount), ("reward", reward)):
        if x.shape != value.shape:
            raise ValueError(f"vtrace: {name} has shape {tuple(x.shape)}, expected {(T, B)}")
    if bootstrap_value.shape != (B,):
        raise ValueError(
            f"vtrace: bootstrap_value has shape {tuple(bootstrap_value.shape)}, expected {(B,)}"
        )
    if (truncated is None) != (timeout_value is None):
        raise ValueError("vtrace: pass truncated and timeout_value together (or neither)")
    dtype = value.dtype
    ratio = log_rho.to(dtype).exp()
    rho = ratio.clamp(max=rho_bar)
    c = ratio.clamp(max=c_bar)
    discount, reward = discount.to(dtype), reward.to(dtype)
    next_value = torch.cat([value[1:], bootstrap_value.to(dtype).unsqueeze(0)])  # V(x_{t+1})
    carry = discount * c  # gamma_t c_t: how much of v_{t+1} - V(x_{t+1}) flows back to t
    if truncated is not None:
        cut = truncated.to(torch.bool)
        next_value = torch.where(cut, timeout_value.to(dtype), next_value)
        carry = torch.where(cut, torch.zeros_like(carry), carry)
    delta = rho * (reward + discount * next_value - value)
    vs_minus_value = torch.empty_like(value)
    acc = torch.zeros_like(bootstrap_value, dtype=dtype)
    for t in range(T - 1, -1, -1):
        acc = delta[t] + carry[t] * acc
        vs_minus_value[t] = acc
    vs = value + vs_minus_value
    # v_{t+1}: the next target inside the batch; V(x_T) at the end; the timeout value where cut
    next_vs = torch.cat([vs[1:], bootstrap_value.to(dtype).unsqueeze(0)])
    if truncated is not None:
        next_vs = torch.where(cut, timeout_value.to(dtype), next_vs)
    pg_advantage = ratio.clamp(max=pg_rho_bar) * (reward + discount * next_vs - value)
    return VTrace(vs, pg_advantage)
