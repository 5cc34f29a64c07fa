"""Prioritized replay (Schaul et al. 2016, proportional variant) over the uniform [T, B] ring.

Owns priorities, importance weights and the beta schedule's current value; storage, n-step
targets and saving come from :class:`~asyncrl.replay.uniform.UniformReplay`. Knows no losses:
the learner passes back TD errors with ``update_priorities``.

- P(i) = p_i / sum_k p_k with p_i = (|delta_i| + eps)^alpha; sampling is stratified (one draw per
  slice of the total mass), batched in the sum tree.
- Importance weights w_i = (N * P(i))^-beta, normalised by the batch's largest weight so they only
  scale updates down (as rlpyt and Dopamine do; OpenAI baselines divides by the buffer-wide max
  instead, which needs a min-tree). N = transitions sampleable now.
- New transitions enter at the largest priority seen so far (1.0 at first), at the moment their
  n-step window is complete; transitions that cannot be sampled (window not written yet, or the
  ring overwrote their history) hold priority 0, so the tree never returns them.
- beta is annealed by the caller: ``replay.anneal_beta(progress)`` with progress in [0, 1] (e.g.
  env_steps / total_steps), or set ``replay.beta`` directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncrl.data import to_numpy
from asyncrl.replay.frame import FrameObservations
from asyncrl.replay.state import from_json_array, json_array
from asyncrl.replay.sum_tree import SumTree
from asyncrl.replay.uniform import UniformReplay


class Priorities:
    """The priority state every prioritized buffer here shares (transitions, sequences): the sum
    tree over its leaves, alpha, the beta schedule, the largest priority, and their place in
    ``_init_args``, ``_config`` and the state dict. Mixed in before the buffer class, which
    calls :meth:`_init_priorities` once its own layout is known."""

    tree: SumTree

    def _init_priorities(
        self, leaves: int, alpha: float, beta: float, beta_final: float, priority_eps: float
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if priority_eps <= 0:
            raise ValueError(f"priority_eps must be > 0, got {priority_eps}")
        self.alpha = float(alpha)
        self.beta_initial = float(beta)
        self.beta_final = float(beta_final)
        self.beta = float(beta)
        self.priority_eps = float(priority_eps)
        self.max_priority = 1.0  # of p^alpha
        self.tree = SumTree(leaves)
        self._envs = np.arange(self.n_envs)

    def anneal_beta(self, progress: float) -> float:
        """Set beta linearly between ``beta`` and ``beta_final``; ``progress`` is clipped to [0, 1]."""
        progress = min(max(float(progress), 0.0), 1.0)
        self.beta = self.beta_initial + progress * (self.beta_final - self.beta_initial)
        return self.beta

    def _draw(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(leaf indices, importance weights float32) of ``batch_size`` draws in proportion to
        priority; weights (N P(i))^-beta normalised by the batch's largest, N = ``len(self)``."""
        indices, priorities = self.tree.sample(batch_size, rng)
        probabilities = priorities / self.tree.total
        weights = (len(self) * probabilities) ** -self.beta
        weights /= weights.max()
        return indices, weights.astype(np.float32)

    def update_priorities(self, indices: Any, td_errors: Any) -> None:
        """Set p = (|td_error| + eps)^alpha for sampled ``indices`` (numpy or torch).

        Indices that stopped being sampleable since they were drawn (the ring moved on, as can
        happen when the learner runs asynchronously) are skipped rather than revived.
        """
        indices = np.asarray(to_numpy(indices), np.int64).ravel()
        td_errors = np.asarray(to_numpy(td_errors), np.float64).ravel()
        if indices.shape != td_errors.shape:
            raise ValueError(
                f"update_priorities: {len(indices)} indices but {len(td_errors)} td_errors"
            )
        priorities = (np.abs(td_errors) + self.priority_eps) ** self.alpha
        live = self.tree.get(indices) > 0
        if live.any():
            self.tree.update(indices[live], priorities[live])
            self.max_priority = max(self.max_priority, float(priorities[live].max()))

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.tree.nbytes

    def _init_args(self) -> dict:
        return {
            **super()._init_args(),
            "alpha": self.alpha,
            "beta": self.beta_initial,
            "beta_final": self.beta_final,
            "priority_eps": self.priority_eps,
        }

    def _config(self) -> dict:
        return {**super()._config(), "alpha": self.alpha, "priority_eps": self.priority_eps}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = super().state_dict()
        state.update(self.tree.state_dict("tree"))
        state["priority_meta"] = json_array(
            {
                "max_priority": self.max_priority,
                "beta": self.beta,
                "beta_initial": self.beta_initial,
                "beta_final": self.beta_final,
            }
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tree.load_state_dict(state, "tree")
        meta = from_json_array(state["priority_meta"])
        self.max_priority = float(meta["max_priority"])
        self.beta = float(meta["beta"])
        self.beta_initial = float(meta["beta_initial"])
        self.beta_final = float(meta["beta_final"])


class PrioritizedReplay(Priorities, UniformReplay):
    """Proportional prioritized replay with n-step returns.

    Args (besides :class:`UniformReplay`'s ``example_transition, size, n_envs, discount,
    n_step, seed``):
        alpha: priority exponent (0 = uniform); 0.6 in Schaul et al., 0.5 in Rainbow.
        beta: initial importance-sampling exponent; 0.4 in both papers.
        beta_final: beta at ``anneal_beta(1.0)``; 1.0 (full correction) at the end of training.
        priority_eps: added to |TD error| so no transition gets priority zero.
    """

    def __init__(
        self,
        example_transition: Any,
        size: int,
        n_envs: int,
        discount: float = 0.99,
        n_step: int = 1,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_final: float = 1.0,
        priority_eps: float = 1e-6,
        seed: int | None = None,
    ):
        super().__init__(example_transition, size, n_envs, discount, n_step, seed)
        self._init_priorities(self.rows * self.n_envs, alpha, beta, beta_final, priority_eps)

    def append(self, samples: Any, final_observation: Any = None) -> None:
        old_lo, old_hi = self.valid_range()
        super().append(samples, final_observation)
        new_lo, new_hi = self.valid_range()
        # Steps whose n-step window just completed enter at the largest priority; steps that left
        # the sampleable window (overwritten, or lost their frame history) go to zero, except
        # where their row now holds an entering step (times >= new_hi - rows share no row).
        entered = np.arange(max(old_hi, new_lo), new_hi)
        left = np.arange(max(old_lo, new_hi - self.rows), min(new_lo, old_hi))
        if len(left) or len(entered):
            rows = np.concatenate([left, entered]) % self.rows
            leaves = (rows[:, None] * self.n_envs + self._envs).ravel()
            priority = np.repeat([0.0, self.max_priority], [len(left), len(entered)])
            self.tree.assign(leaves, np.repeat(priority, self.n_envs))

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Any = None
    ) -> Any:
        """A :data:`ReplaySample` drawn with probability proportional to priority, with weights
        (``rng`` and ``out`` as in :meth:`UniformReplay.sample`)."""
        rng = self.rng if rng is None else rng
        self._require(batch_size)
        indices, weights = self._draw(batch_size, rng)
        time, env = self._time_env(indices)
        return self._batch(time, env, weights, out)


class PrioritizedFrameReplay(PrioritizedReplay):
    """:class:`PrioritizedReplay` storing Atari frame stacks frame by frame (see ``frame.py``)."""

    observations_cls = FrameObservations
