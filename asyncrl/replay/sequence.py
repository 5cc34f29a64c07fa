"""Sequence replay for recurrent Q-learning (R2D1; Kapturowski et al. 2019): the [T, B] ring of
``UniformReplay`` read as overlapping sequences, with the recurrent state stored at each start.

Storage. Steps are written into the ring exactly as for transition replay (observations once,
frame by frame for Atari stacks). Sequences start at the absolute times that are multiples of
``stride = sequence_length - overlap``: adjacent ones overlap by ``overlap`` steps (R2D2: 80
steps overlapping by 40). At those times the buffer also keeps, per env, what the acting agent
used before the step: its recurrent state and its previous action and reward (the samplers'
``agent_info.rnn_state``, ``agent_info.prev_reward`` and ``agent.prev_action``). Nothing else
of the agent's outputs is stored.

Sampling. A sequence starting at ``s`` covers ``window = burn_in + sequence_length + n_step``
steps ``s .. s + window - 1``: ``burn_in`` steps that only warm the recurrent state up from the
stored one (no loss), ``sequence_length`` trained steps, and ``n_step`` more whose observations
the n-step targets of the last trained steps bootstrap from. It is sampleable once its whole
window is written and while the ring still holds its first step (and, for frame stacks, the
frames before it). Episodes may begin and end inside a sequence: the learner resets the state
where one begins (the step after a ``terminated`` or ``truncated``) and computes the n-step
targets within the episode. Windows are returned batch-major, [N, window, ...], so that a
minibatch can be sliced and concatenated like a transition minibatch.

Prioritized variant: one priority per sequence start (slot, env), entering at the largest
priority seen when its window completes and leaving (zero) when the ring overwrites its first
step; the learner's priority is R2D2's mix ``eta * max_t |delta_t| + (1 - eta) * mean_t
|delta_t|`` over the trained steps. P(i), the importance weights and beta are as in
``PrioritizedReplay``.

Owns the sequence windows, the stored start states and the per-sequence priorities; the losses
and n-step targets are the learner's (algos/r2d1.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncrl.data import buffer_from_example, namedarraytuple, tree_map
from asyncrl.replay.frame import FrameObservations
from asyncrl.replay.prioritized import Priorities
from asyncrl.replay.state import load_tree, tree_state
from asyncrl.replay.uniform import UniformReplay

SequenceSample = namedarraytuple(
    "SequenceSample",
    [
        "observation",  # [N, W, *obs]   W = burn_in + sequence_length + n_step
        "action",  # [N, W, *act]
        "reward",  # [N, W] float32
        "terminated",  # [N, W] bool
        "truncated",  # [N, W] bool
        "state",  # [N, S] float32      the recurrent state before the first step
        "prev_action",  # [N, *act]       the previous action before the first step
        "prev_reward",  # [N] float32     the previous reward before the first step
        "weights",  # [N] float32         importance weights (ones for uniform replay)
        "indices",  # [N] int64           sequence slot * B + env, for update_priorities
    ],
)

_Starts = namedarraytuple("SequenceStarts", ["state", "prev_action", "prev_reward"])


def _start_example(example: Any) -> Any:
    """What a sequence start keeps, from one step of the sampler's ``Samples``."""
    info = getattr(getattr(example, "agent", None), "agent_info", None)
    if info is None or not hasattr(info, "rnn_state") or not hasattr(info, "prev_reward"):
        raise ValueError(
            "sequence replay needs the samples of a recurrent agent (agent_info with rnn_state "
            "and prev_reward)"
        )
    return _Starts(info.rnn_state, example.agent.prev_action, info.prev_reward)


class SequenceReplay(UniformReplay):
    """Uniform replay of overlapping sequences with stored start states (module docstring).

    Args (besides ``example_transition`` (one step of the sampler's ``Samples`` of a recurrent
    agent), ``size``, ``n_envs``, ``discount``, ``seed`` as for :class:`UniformReplay`):
        sequence_length: trained steps per sequence (80 in R2D2).
        burn_in: steps before them that only warm up the state (40).
        overlap: steps adjacent sequences share (40); ``stride = sequence_length - overlap``.
        n_step: steps after the trained ones that n-step targets read (5).
    ``size`` is rounded down to whole strides per env.
    """

    def __init__(
        self,
        example_transition: Any,
        size: int,
        n_envs: int,
        discount: float = 0.997,
        n_step: int = 5,
        sequence_length: int = 80,
        burn_in: int = 40,
        overlap: int = 40,
        seed: int | None = None,
    ):
        starts_example = _start_example(example_transition)
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}")
        if not 0 <= overlap < sequence_length:
            raise ValueError(
                f"overlap must be in [0, sequence_length={sequence_length}), got {overlap}"
            )
        self.sequence_length, self.burn_in, self.overlap = (
            int(sequence_length), int(burn_in), int(overlap),
        )  # fmt: skip
        self.stride = self.sequence_length - self.overlap
        self.window = self.burn_in + self.sequence_length + int(n_step)
        rows = (int(size) // max(int(n_envs), 1)) // self.stride * self.stride
        if rows < self.window + self.stride:
            raise ValueError(
                f"size={size} with n_envs={n_envs} holds {rows} steps per env in whole strides "
                f"of {self.stride}; a sequence window needs {self.window} (burn_in + "
                f"sequence_length + n_step) plus a stride: raise size"
            )
        super().__init__(example_transition, rows * n_envs, n_envs, discount, n_step, seed)
        self._example = example_transition  # siblings need the agent info too
        self.slots = self.rows // self.stride
        self.starts = buffer_from_example(starts_example, (self.slots, self.n_envs))

    # ------------------------------------------------------------------ writing
    def append(self, samples: Any, final_observation: Any = None) -> None:
        """Write ``t`` steps of ``B`` envs (the sampler's ``Samples`` of a recurrent agent)."""
        starts = _start_example(samples)
        t0 = self.steps_written
        super().append(samples, final_observation)  # checks shapes, writes the steps
        times = t0 + np.arange(self.steps_written - t0)
        at = np.nonzero(times % self.stride == 0)[0]
        if len(at):
            slots = (times[at] % self.rows) // self.stride
            self.starts[slots] = tree_map(lambda x: np.asarray(x)[at], starts)

    # ------------------------------------------------------------------ reading
    def start_range(self) -> tuple[int, int]:
        """Absolute start times ``[first, end)`` (multiples of ``stride``) sampleable now."""
        written = self.steps_written
        lo = max(0, written - self.rows) + self.observations.history - 1
        first = -(-lo // self.stride) * self.stride
        if written < self.window:
            return first, first
        last = (written - self.window) // self.stride * self.stride  # the latest complete one
        return first, max(first, last + self.stride)

    def __len__(self) -> int:
        """Sequences (start, env) that can be sampled now."""
        first, end = self.start_range()
        return (end - first) // self.stride * self.n_envs

    def valid_indices(self) -> np.ndarray:
        first, end = self.start_range()
        slots = (np.arange(first, end, self.stride) % self.rows) // self.stride
        return (slots[:, None] * self.n_envs + np.arange(self.n_envs)).ravel()

    def _require(self, batch_size: int) -> tuple[int, int]:
        first, end = self.start_range()
        if end <= first:
            raise ValueError(
                f"replay has no complete sequence window of {self.window} steps yet "
                f"({self.steps_written} steps written); sample after at least {self.window} "
                "steps (use a learning-starts setting)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return first, end

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Any = None
    ) -> Any:
        """A :data:`SequenceSample` of ``batch_size`` sequences drawn uniformly (with
        replacement); ``rng`` and ``out`` as in :meth:`UniformReplay.sample`."""
        rng = self.rng if rng is None else rng
        first, end = self._require(batch_size)
        flat = rng.integers(0, (end - first) // self.stride * self.n_envs, size=batch_size)
        start = first + (flat // self.n_envs) * self.stride
        return self._batch(start, flat % self.n_envs, np.ones(batch_size, np.float32), out)

    def _time_env(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute start time and env of flat sequence indices (slot * B + env)."""
        slot, env = np.divmod(indices, self.n_envs)
        first, _ = self.start_range()
        return first + ((slot * self.stride - first) % self.rows), env

    def batch_at(self, indices: np.ndarray) -> Any:
        indices = np.asarray(indices, np.int64)
        start, env = self._time_env(indices)
        first, end = self.start_range()
        bad = (start < first) | (start >= end)
        if bad.any():
            raise IndexError(f"sequence indices {indices[bad][:5].tolist()} are not sampleable")
        return self._batch(start, env, np.ones(len(indices), np.float32), None)

    def _empty_batch(self, batch_size: int) -> Any:
        w = self.window
        action, starts = self.steps.action, self.starts
        return SequenceSample(
            observation=tree_map(
                lambda x: x.reshape(batch_size, w, *x.shape[1:]),
                self.observations.empty(batch_size * w),
            ),
            action=np.empty((batch_size, w, *action.shape[2:]), action.dtype),
            reward=np.empty((batch_size, w), np.float32),
            terminated=np.empty((batch_size, w), bool),
            truncated=np.empty((batch_size, w), bool),
            state=np.empty((batch_size, *starts.state.shape[2:]), starts.state.dtype),
            prev_action=np.empty(
                (batch_size, *starts.prev_action.shape[2:]), starts.prev_action.dtype
            ),
            prev_reward=np.empty(batch_size, np.float32),
            weights=np.empty(batch_size, np.float32),
            indices=np.empty(batch_size, np.int64),
        )

    def _batch(self, start: np.ndarray, env: np.ndarray, weights: np.ndarray, out: Any) -> Any:
        n, w = len(start), self.window
        if out is None:
            out = self._empty_batch(n)
        elif len(out.indices) != n:
            raise ValueError(f"out holds {len(out.indices)} sequences, asked for {n}")
        time = (start[:, None] + np.arange(w)).ravel()  # [N * W], sequence-major
        env_w = np.repeat(env, w)
        flat_obs = tree_map(lambda x: x.reshape(n * w, *x.shape[2:]), out.observation)
        self.observations.gather(time, env_w, flat_obs)
        row = (time % self.rows).reshape(n, w)
        col = env[:, None]
        out.action[...] = self.steps.action[row, col]
        out.reward[...] = self.steps.reward[row, col]
        out.terminated[...] = self.steps.terminated[row, col]
        out.truncated[...] = self.steps.truncated[row, col]
        slot = (start % self.rows) // self.stride
        out.state[...] = self.starts.state[slot, env]
        out.prev_action[...] = self.starts.prev_action[slot, env]
        out.prev_reward[...] = self.starts.prev_reward[slot, env]
        out.weights[...] = weights
        out.indices[...] = slot * self.n_envs + env
        return out

    # ------------------------------------------------------------------ memory, state
    @property
    def nbytes(self) -> int:
        return super().nbytes + sum(x.nbytes for x in self.starts)

    def _init_args(self) -> dict:
        return {
            **super()._init_args(),
            "sequence_length": self.sequence_length,
            "burn_in": self.burn_in,
            "overlap": self.overlap,
        }

    def _config(self) -> dict:
        return {
            **super()._config(),
            "sequence_length": self.sequence_length,
            "burn_in": self.burn_in,
            "overlap": self.overlap,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        state = super().state_dict()
        state.update(tree_state("starts", self.starts))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_tree("starts", self.starts, state)


class PrioritizedSequenceReplay(Priorities, SequenceReplay):
    """:class:`SequenceReplay` drawing sequences in proportion to their priority (module
    docstring); ``alpha``, ``beta``, ``beta_final``, ``priority_eps`` as for
    :class:`PrioritizedReplay` (R2D2: alpha 0.9, beta 0.6)."""

    def __init__(
        self,
        example_transition: Any,
        size: int,
        n_envs: int,
        discount: float = 0.997,
        n_step: int = 5,
        sequence_length: int = 80,
        burn_in: int = 40,
        overlap: int = 40,
        alpha: float = 0.9,
        beta: float = 0.6,
        beta_final: float = 1.0,
        priority_eps: float = 1e-6,
        seed: int | None = None,
    ):
        super().__init__(
            example_transition, size, n_envs, discount, n_step, sequence_length, burn_in,
            overlap, seed,
        )  # fmt: skip
        self._init_priorities(self.slots * self.n_envs, alpha, beta, beta_final, priority_eps)

    def append(self, samples: Any, final_observation: Any = None) -> None:
        old_first, old_end = self.start_range()
        super().append(samples, final_observation)
        new_first, new_end = self.start_range()
        entered = np.arange(max(old_end, new_first), new_end, self.stride)
        left = np.arange(old_first, min(new_first, old_end), self.stride)
        entered_slots = (entered % self.rows) // self.stride
        left_slots = np.setdiff1d((left % self.rows) // self.stride, entered_slots)
        if len(left_slots) or len(entered_slots):
            slots = np.concatenate([left_slots, entered_slots])
            leaves = (slots[:, None] * self.n_envs + self._envs).ravel()
            priority = np.repeat([0.0, self.max_priority], [len(left_slots), len(entered_slots)])
            self.tree.assign(leaves, np.repeat(priority, self.n_envs))

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Any = None
    ) -> Any:
        rng = self.rng if rng is None else rng
        self._require(batch_size)
        indices, weights = self._draw(batch_size, rng)
        start, env = self._time_env(indices)
        return self._batch(start, env, weights, out)


class FrameSequenceReplay(SequenceReplay):
    """:class:`SequenceReplay` storing Atari frame stacks frame by frame (see ``frame.py``)."""

    observations_cls = FrameObservations


class PrioritizedFrameSequenceReplay(PrioritizedSequenceReplay):
    """:class:`PrioritizedSequenceReplay` storing frame stacks frame by frame."""

    observations_cls = FrameObservations
