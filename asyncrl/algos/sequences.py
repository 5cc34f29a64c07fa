"""Sequence minibatches for recurrent policy-gradient learners (recurrent PPO, A2C, APPO).

A [T, B] batch is cut, per env column, into chunks of L consecutive steps (the last one of a
column padded when L does not divide T); minibatches are sets of whole chunks, never shuffled
across time. Each chunk is unrolled from the recurrent state stored with its first step
(``RnnPgInfo.rnn_state``, the state the acting policy used there) and the core's state is
zeroed inside a chunk where an episode begins (the step after a ``terminated`` or
``truncated``). Padded steps repeat the column's last step and are masked out of every loss
term (``valid``).

Owns the chunking, the gathers and the unroll call; the losses are the algorithms'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asyncrl.data import to_torch, tree_map


@dataclass
class Chunks:
    """C chunks of L steps: step l of chunk c is time ``time[l, c]`` of env ``env[c]``."""

    time: torch.Tensor  # [L, C] long (padded steps point at the column's last step)
    env: torch.Tensor  # [C] long
    valid: torch.Tensor  # [L, C] bool: a real step, not padding
    reset: torch.Tensor  # [L, C] bool: an episode begins at this step (zero state before it)

    @property
    def count(self) -> int:
        return int(self.env.shape[0])

    @property
    def length(self) -> int:
        return int(self.time.shape[0])

    def select(self, idx: torch.Tensor) -> Chunks:
        return Chunks(self.time[:, idx], self.env[idx], self.valid[:, idx], self.reset[:, idx])

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, ...] -> [L, C, ...]."""
        return x[self.time, self.env.unsqueeze(0)]

    def mask(self) -> torch.Tensor:
        """[L * C] float: 1 for real steps, 0 for padding (time-major, as ``flat``)."""
        return self.valid.reshape(-1).float()

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, ...] -> [L * C, ...] in the unroll's (time-major) order."""
        g = self.gather(x)
        return g.reshape(g.shape[0] * g.shape[1], *g.shape[2:])


def make_chunks(done: np.ndarray, length: int, device, columns=None) -> Chunks:
    """Chunks of ``length`` steps (0: the whole horizon) over a [T, B] batch whose episode ends
    are ``done`` [T, B] (terminated | truncated); ``columns`` (default all) picks env columns."""
    T, B = done.shape
    L = T if length <= 0 else min(int(length), T)
    cols = np.arange(B) if columns is None else np.asarray(columns)
    starts = np.arange(0, T, L)
    env = np.repeat(cols, len(starts))  # [C]: column-major over (env, start)
    start = np.tile(starts, len(cols))
    t = start[None, :] + np.arange(L)[:, None]  # [L, C]
    valid = t < T
    t = np.minimum(t, T - 1)
    reset = np.zeros_like(valid)
    reset[1:] = done[t[:-1], env[None, :]] & valid[1:]  # an end at t-1 starts an episode at t

    def tt(x, dtype):
        return torch.as_tensor(x, dtype=dtype, device=device)

    return Chunks(
        tt(t, torch.long), tt(env, torch.long), tt(valid, torch.bool), tt(reset, torch.bool)
    )


@dataclass
class RecurrentInputs:
    """What the recurrent model is unrolled on, as [T, B] torch tensors on the learner's device."""

    observation: Any  # tree [T, B, ...]
    prev_action: torch.Tensor  # [T, B, ...]
    prev_reward: torch.Tensor  # [T, B]
    state: torch.Tensor  # [T, B, S]: the state before each step

    @classmethod
    def of(cls, samples, device) -> RecurrentInputs:
        info = samples.agent.agent_info
        return cls(
            to_torch(samples.env.observation, device),
            to_torch(samples.agent.prev_action, device),
            to_torch(info.prev_reward, device),
            to_torch(info.rnn_state, device),
        )

    def unroll(self, model, chunks: Chunks):
        """(dist over the chunks' L * C steps, value [L * C]) of ``model`` on ``chunks``."""
        obs = tree_map(chunks.gather, self.observation)
        first = self.state[chunks.time[0], chunks.env]  # [C, S]
        dist, value, _ = model.unroll(
            obs, chunks.gather(self.prev_action), chunks.gather(self.prev_reward), first,
            chunks.reset,
        )  # fmt: skip
        return dist, value
