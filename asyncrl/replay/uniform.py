"""Uniform replay: a time-major [T, B] ring of env steps, with n-step targets built at sample time.

Owns the ring buffer, the n-step return computation and the sample schema that every replay
buffer here returns. Knows nothing of losses, sockets or devices: batches are numpy, convert them
at the edge with ``asyncrl.data.to_torch(batch, device)``.

Storage (rlpyt's layout). Steps arrive as batches of ``t`` steps of ``B`` envs and are written
into a ring of ``T = size // n_envs`` rows of ``B`` envs. Each step's observation is stored once:
``observation[t]`` is what the agent saw when choosing ``action[t]``; ``reward[t]``,
``terminated[t]``, ``truncated[t]`` are the outcome of that step, and the next observation is
``observation[t + 1]``, *unless* the episode ended at ``t``. The envs autoreset on the same step
(see ``asyncrl.envs.vector``), so after an episode end ``observation[t + 1]`` is the first
observation of the next episode, never the env's last one. For a ``terminated`` step none is
needed (nothing to bootstrap from). For a ``truncated`` step (time limit) the env's last
observation is needed to bootstrap and is passed to ``append`` as ``final_observation``; it is kept
in a sparse side store (a slot per truncation, grown on demand, freed when the ring overwrites its
step), so a buffer pays for final observations only as often as episodes are cut by time limits.

Sampling. A transition ``(t, b)`` is sampled only when its whole n-step window is written:
steps ``t .. t+n-1`` and the observation of step ``t+n`` (so never across the write cursor), and
only steps still in the ring. The n-step target is computed at sample time (Sutton & Barto eq.
7.1; Hessel et al. 2018 for DQN) and stops at the first episode end in the window:

    reward      = sum_{j<m} gamma^j r[t+j]      m = steps up to and including the first end, or n
    done_n      = the window ended by ``terminated``           (no bootstrap)
    discount    = 0 if done_n else gamma^m                     (target = reward + discount * Q(s'))
    next_observation = obs[t+m] if no end in the window, the final observation of step t+m-1 if
                       it was truncated, undefined (the next episode's first obs) when done_n.

A step that is both terminated and truncated counts as terminated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from asyncrl.data import buffer_from_example, namedarraytuple, to_numpy, tree_leaves, tree_map
from asyncrl.replay.state import (
    from_json_array,
    json_array,
    load_npz,
    load_tree,
    save_npz,
    tree_state,
)

Transition = namedarraytuple(
    "Transition", ["observation", "action", "reward", "terminated", "truncated"]
)
"""What a replay buffer stores per step; ``append`` also takes the sampler's ``Samples``."""

ReplaySample = namedarraytuple(
    "ReplaySample",
    [
        "observation",  # [N, *obs]     s_t
        "action",  # [N, *act]          a_t
        "reward",  # [N] float32        n-step discounted return (stops at the first episode end)
        "done_n",  # [N] bool           terminated within the window: do not bootstrap
        "discount",  # [N] float32      gamma^m to bootstrap with, 0 where done_n
        "next_observation",  # [N, *obs] obs to bootstrap from (meaningless where done_n)
        "weights",  # [N] float32       importance weights (ones for uniform replay)
        "indices",  # [N] int64         flat index row * B + env, for update_priorities
    ],
)

_FIELDS = Transition._fields
_Steps = namedarraytuple("ReplaySteps", ["action", "reward", "terminated", "truncated"])


def as_transition(samples: Any) -> Any:
    """The :data:`Transition` fields of ``samples``: a Transition-like tree with those fields,
    or the sampler's ``Samples(agent=..., env=...)`` (duck-typed; other fields are not stored)."""
    if hasattr(samples, "agent") and hasattr(samples, "env"):
        env = samples.env
        return Transition(
            env.observation, samples.agent.action, env.reward, env.terminated, env.truncated
        )
    missing = [f for f in _FIELDS if not hasattr(samples, f)]
    if missing:
        raise ValueError(
            f"replay needs a tree with fields {list(_FIELDS)} (or the sampler's Samples); "
            f"{type(samples).__name__} lacks {missing}"
        )
    return Transition(*(getattr(samples, f) for f in _FIELDS))


class SlotStore:
    """Sparse side storage: ``data[slot]`` for slots handed out from a free list.

    Used for what only some steps need (final observations at truncations, the frames before an
    episode start). Starts at ``capacity`` slots and doubles when it runs out, so it is sized by
    how often those steps happen, not by the ring.
    """

    def __init__(self, example: Any, capacity: int):
        self.example = example
        self.capacity = max(1, int(capacity))
        self.data = buffer_from_example(example, self.capacity)
        self.free = np.arange(self.capacity - 1, -1, -1, dtype=np.int64)  # a stack; top at end
        self.n_free = self.capacity

    def alloc(self, count: int) -> np.ndarray:
        if count > self.n_free:
            self._grow(count)
        slots = self.free[self.n_free - count : self.n_free][::-1].copy()
        self.n_free -= count
        return slots

    def release(self, slots: np.ndarray) -> None:
        self.free[self.n_free : self.n_free + len(slots)] = slots
        self.n_free += len(slots)

    def _grow(self, count: int) -> None:
        old = self.capacity
        new = max(2 * old, old + count - self.n_free)
        data = buffer_from_example(self.example, new)
        data[:old] = self.data
        free = np.empty(new, np.int64)
        free[: self.n_free] = self.free[: self.n_free]
        added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        free[self.n_free : self.n_free + len(added)] = added
        self.data, self.free, self.capacity = data, free, new
        self.n_free += len(added)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in tree_leaves(self.data)) + self.free.nbytes

    def state_dict(self, prefix: str) -> dict[str, np.ndarray]:
        state = tree_state(f"{prefix}/data", self.data)
        state[f"{prefix}/free"] = self.free[: self.n_free]
        return state

    def load_state_dict(self, prefix: str, state: dict[str, Any]) -> None:
        free = np.asarray(state[f"{prefix}/free"], np.int64)
        capacity = int(_first_leaf(state, f"{prefix}/data").shape[0])
        self.capacity = capacity
        self.data = buffer_from_example(self.example, capacity)
        load_tree(f"{prefix}/data", self.data, state)
        self.free = np.empty(capacity, np.int64)
        self.free[: len(free)] = free
        self.n_free = len(free)


def gather_rows(source: np.ndarray, index: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = source[t, b]`` for flat ``index[i] = t * B + b``, with ``source`` [T, B, ...].

    One ``np.take`` into ``out``: no temporary the size of the batch ("clip" mode is the
    unbuffered one; indices are always in range here).
    """
    flat = source.reshape(source.shape[0] * source.shape[1], -1)
    if out.flags.c_contiguous:
        np.take(flat, index, axis=0, out=out.reshape(len(index), -1), mode="clip")
    else:
        out[...] = flat[index].reshape(out.shape)


def _check_shape(name: str, value: np.ndarray, store: np.ndarray, steps: int) -> None:
    """``value`` must be [steps, B, *store's per-step shape] to be written into ``store``."""
    expected = (steps, *store.shape[1:])
    if value.shape != expected:
        raise ValueError(f"append: {name} has shape {list(value.shape)}, expected {list(expected)}")


def _first_leaf(state: dict[str, Any], prefix: str) -> np.ndarray:
    for key in sorted(state):
        if key == prefix or key.startswith(prefix + "/"):
            return np.asarray(state[key])
    raise KeyError(f"state dict has no {prefix!r}")


def _final_list(
    final_observation: Any, needs_final: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Any]:
    """(t_idx, b_idx, stacked final observations) for the steps in ``needs_final`` [t, B].

    ``final_observation`` is dense [t, B, *obs] (read only where needed) or the sampler's sparse
    list of ``(t, b, obs)``.
    """
    t_idx, b_idx = np.nonzero(needs_final)
    if len(t_idx) == 0:
        return t_idx, b_idx, None
    if final_observation is None:
        raise ValueError(
            f"{len(t_idx)} step(s) were truncated (e.g. t={t_idx[0]}, env={b_idx[0]}) but no "
            "final_observation was given: pass the env's last observation of those episodes"
        )
    if isinstance(final_observation, Sequence) and not hasattr(final_observation, "_fields"):
        given = {(int(t), int(b)): obs for t, b, obs in final_observation}
        try:
            obs = [given[(int(t), int(b))] for t, b in zip(t_idx, b_idx)]
        except KeyError as e:
            raise ValueError(
                f"no final observation for truncated step (t, env)={e.args[0]}"
            ) from None
        return t_idx, b_idx, tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *obs)
    return t_idx, b_idx, to_numpy(final_observation)[t_idx, b_idx]


class StepObservations:
    """Observations stored whole, one per step, plus final observations at truncations."""

    history = 1  # steps of the past an observation needs (a frame stack needs more)

    def __init__(self, example_observation: Any, rows: int, n_envs: int):
        self.rows, self.n_envs = rows, n_envs
        self.observation = buffer_from_example(example_observation, (rows, n_envs))
        self.final = SlotStore(example_observation, max(16, rows * n_envs // 1000))
        self.final_slot = np.full((rows, n_envs), -1, np.int32)

    def _release(self, rows: np.ndarray) -> None:
        slots = self.final_slot[rows]
        self.final.release(slots[slots >= 0])
        self.final_slot[rows] = -1

    def write(self, rows: np.ndarray, observation: Any, finals: tuple) -> None:
        self._release(rows)
        self.observation[rows] = observation
        t_idx, b_idx, final_obs = finals
        if len(t_idx):
            slots = self.final.alloc(len(t_idx))
            self.final.data[slots] = final_obs
            self.final_slot[rows[t_idx], b_idx] = slots

    def check(self, observation: Any, steps: int) -> None:
        tree_map(
            lambda value, store: _check_shape("observation", value, store, steps),
            observation,
            self.observation,
        )

    def empty(self, batch_size: int) -> Any:
        """An uninitialised observation batch [N, *obs] to gather into."""
        return tree_map(lambda x: np.empty((batch_size, *x.shape[2:]), x.dtype), self.observation)

    def gather(self, time: np.ndarray, env: np.ndarray, out: Any) -> None:
        index = (time % self.rows) * self.n_envs + env
        tree_map(lambda source, dest: gather_rows(source, index, dest), self.observation, out)

    def gather_next(
        self, time: np.ndarray, env: np.ndarray, from_final: np.ndarray, out: Any
    ) -> None:
        """Observation at ``time``, or where ``from_final`` the final obs of step ``time - 1``."""
        self.gather(time, env, out)
        if from_final.any():
            slots = self.final_slot[(time[from_final] - 1) % self.rows, env[from_final]]
            if (slots < 0).any():
                raise RuntimeError("replay: a truncated step lost its final observation")
            out[from_final] = self.final.data[slots]

    @property
    def nbytes(self) -> int:
        return (
            sum(x.nbytes for x in tree_leaves(self.observation))
            + self.final.nbytes
            + self.final_slot.nbytes
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        state = tree_state("obs/observation", self.observation)
        state.update(self.final.state_dict("obs/final"))
        state["obs/final_slot"] = self.final_slot
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_tree("obs/observation", self.observation, state)
        self.final.load_state_dict("obs/final", state)
        self.final_slot[...] = state["obs/final_slot"]


class UniformReplay:
    """Uniform experience replay over a [T, B] ring, with n-step returns.

    Args:
        example_transition: one step (no leading dims) with fields ``observation, action,
            reward, terminated, truncated`` (a :data:`Transition`, or the sampler's ``Samples``);
            only dtypes and shapes are used. Observations may be arrays or trees of arrays.
        size: transitions the buffer holds; rounded down to a multiple of ``n_envs``.
        n_envs: B, the number of envs each appended batch carries.
        discount: gamma of the n-step return.
        n_step: n, steps summed before bootstrapping (1 = one-step TD).
        seed: seeds the generator used when ``sample`` is called without one.
    """

    observations_cls: type = StepObservations

    def __init__(
        self,
        example_transition: Any,
        size: int,
        n_envs: int,
        discount: float = 0.99,
        n_step: int = 1,
        seed: int | None = None,
    ):
        example = as_transition(example_transition)
        self._example = example  # one step: what a sibling buffer is built from
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {discount}")
        self.n_envs = int(n_envs)
        self.rows = int(size) // self.n_envs  # T
        self.size = self.rows * self.n_envs
        self.discount = float(discount)
        self.n_step = int(n_step)
        self.observations = self.observations_cls(example.observation, self.rows, self.n_envs)
        min_rows = self.n_step + self.observations.history + 1
        if self.rows < min_rows:
            raise ValueError(
                f"size={size} with n_envs={n_envs} gives {self.rows} rows per env; need at least "
                f"{min_rows} (n_step + history + 1): raise size"
            )
        lead = (self.rows, self.n_envs)
        self.steps = _Steps(
            action=buffer_from_example(example.action, lead),
            reward=buffer_from_example(example.reward, lead),
            terminated=np.zeros(lead, bool),
            truncated=np.zeros(lead, bool),
        )
        self.steps_written = 0  # rows ever written (absolute time of the next row)
        self.rng = np.random.default_rng(seed)
        self._discount_powers = self.discount ** np.arange(self.n_step + 1, dtype=np.float64)

    # ----------------------------------------------------------------------------- writing

    def append(self, samples: Any, final_observation: Any = None) -> None:
        """Write ``t`` steps of ``B`` envs (leading dims [t, B]) at the cursor.

        ``final_observation``: the env's last observation for steps that were truncated (and not
        terminated), either dense [t, B, *obs] (only those entries are read) or a list of
        ``(t, b, obs)`` as in ``SampleBatch.final_observations``. Required when any step is
        truncated.
        """
        samples = as_transition(samples)
        observation = samples.observation
        if not isinstance(observation, np.ndarray):  # a tree, or torch
            observation = to_numpy(observation)
        terminated = np.asarray(samples.terminated, bool)
        if terminated.ndim != 2 or terminated.shape[1] != self.n_envs:
            raise ValueError(
                f"append takes [t, B={self.n_envs}] samples; got terminated of shape "
                f"{list(terminated.shape)} (add a leading time dim for a single step)"
            )
        t = terminated.shape[0]
        if t > self.rows:
            raise ValueError(f"append of {t} steps exceeds the ring of {self.rows} rows")
        truncated = np.asarray(samples.truncated, bool)
        action, reward = np.asarray(samples.action), np.asarray(samples.reward)
        # Every shape is checked before anything is written, so a bad batch changes nothing.
        for name, value in (("action", action), ("reward", reward), ("truncated", truncated)):
            _check_shape(name, value, getattr(self.steps, name), t)
        self.observations.check(observation, t)
        finals = _final_list(final_observation, truncated & ~terminated)
        rows = (self.steps_written + np.arange(t)) % self.rows
        self.observations.write(rows, observation, finals)
        self.steps.action[rows] = action
        self.steps.reward[rows] = reward
        self.steps.terminated[rows] = terminated
        self.steps.truncated[rows] = truncated
        self.steps_written += t

    # ----------------------------------------------------------------------------- reading

    def valid_range(self) -> tuple[int, int]:
        """Absolute times ``[lo, hi)`` of steps whose full n-step window can be read."""
        end = self.steps_written
        start = max(0, end - self.rows)
        lo = start + self.observations.history - 1
        hi = end - self.n_step
        return lo, max(lo, hi)

    def __len__(self) -> int:
        """Transitions that can be sampled now."""
        lo, hi = self.valid_range()
        return (hi - lo) * self.n_envs

    def valid_indices(self) -> np.ndarray:
        """Flat indices (row * B + env) of every transition that can be sampled now."""
        lo, hi = self.valid_range()
        time = np.arange(lo, hi)
        return ((time % self.rows)[:, None] * self.n_envs + np.arange(self.n_envs)).ravel()

    def sample(
        self, batch_size: int, rng: np.random.Generator | None = None, out: Any = None
    ) -> Any:
        """A :data:`ReplaySample` of ``batch_size`` transitions drawn uniformly (with replacement).

        ``rng`` defaults to the buffer's own generator; ``out`` (from :meth:`batch_buffer`) is
        filled in place and returned instead of allocating a new batch.
        """
        rng = self.rng if rng is None else rng
        lo, hi = self._require(batch_size)
        flat = rng.integers(0, (hi - lo) * self.n_envs, size=batch_size)
        time = lo + flat // self.n_envs
        env = flat % self.n_envs
        return self._batch(time, env, np.ones(batch_size, np.float32), out)

    def batch_at(self, indices: np.ndarray) -> Any:
        """The :data:`ReplaySample` for given flat indices (weights one); they must be valid."""
        indices = np.asarray(indices, np.int64)
        time, env = self._time_env(indices)
        lo, hi = self.valid_range()
        bad = (time < lo) | (time >= hi)
        if bad.any():
            raise IndexError(f"replay indices {indices[bad][:5].tolist()} are not sampleable now")
        return self._batch(time, env, np.ones(len(indices), np.float32), None)

    def _require(self, batch_size: int) -> tuple[int, int]:
        lo, hi = self.valid_range()
        if hi <= lo:
            raise ValueError(
                f"replay has no complete {self.n_step}-step window yet ({self.steps_written} "
                f"steps written); sample after at least {self.n_step + self.observations.history} "
                "steps (use a learning-starts setting)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return lo, hi

    def _time_env(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute time and env of flat indices into the ring (rows map to the live window)."""
        row, env = np.divmod(indices, self.n_envs)
        lo, _ = self.valid_range()
        return lo + (row - lo) % self.rows, env

    def n_step_targets(
        self, time: np.ndarray, env: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(return, done_n, discount, steps m, ended_by_truncation) for transitions (time, env).

        Vectorized over the batch: one gather of the [N, n] window, then masked sums.
        """
        n = self.n_step
        window = (time[:, None] + np.arange(n)) % self.rows  # [N, n]
        env_col = env[:, None]
        reward = self.steps.reward[window, env_col].astype(np.float64)
        terminated = self.steps.terminated[window, env_col]
        ended = terminated | self.steps.truncated[window, env_col]
        # A reward counts while no episode ended strictly before it.
        counts = np.ones((len(time), n), bool)
        counts[:, 1:] = np.logical_and.accumulate(~ended[:, :-1], axis=1)
        steps = counts.sum(axis=1)  # m in 1..n
        returns = (reward * self._discount_powers[:n] * counts).sum(axis=1)
        last = steps - 1
        rows_n = np.arange(len(time))
        window_ended = ended[rows_n, last]
        done_n = terminated[rows_n, last]
        by_truncation = window_ended & ~done_n
        discount = np.where(done_n, 0.0, self._discount_powers[steps])
        return (
            returns.astype(np.float32),
            done_n,
            discount.astype(np.float32),
            steps,
            by_truncation,
        )

    def batch_buffer(self, batch_size: int) -> Any:
        """A preallocated :data:`ReplaySample` to pass as ``sample(..., out=)``.

        Reusing one batch avoids allocating (and, on many systems, page-faulting) megabytes per
        call; its arrays may also be numpy views of pinned torch tensors for fast GPU copies.
        """
        out = self._empty_batch(batch_size)
        tree_map(lambda x: x.fill(0), out)  # touch the pages once, now
        return out

    def _empty_batch(self, batch_size: int) -> Any:
        action = self.steps.action
        return ReplaySample(
            observation=self.observations.empty(batch_size),
            action=np.empty((batch_size, *action.shape[2:]), action.dtype),
            reward=np.empty(batch_size, np.float32),
            done_n=np.empty(batch_size, bool),
            discount=np.empty(batch_size, np.float32),
            next_observation=self.observations.empty(batch_size),
            weights=np.empty(batch_size, np.float32),
            indices=np.empty(batch_size, np.int64),
        )

    def _batch(self, time: np.ndarray, env: np.ndarray, weights: np.ndarray, out: Any) -> Any:
        batch_size = len(time)
        if out is None:
            out = self._empty_batch(batch_size)
        elif len(out.indices) != batch_size:
            raise ValueError(f"out holds {len(out.indices)} transitions, asked for {batch_size}")
        returns, done_n, discount, steps, by_truncation = self.n_step_targets(time, env)
        row = time % self.rows
        self.observations.gather(time, env, out.observation)
        self.observations.gather_next(time + steps, env, by_truncation, out.next_observation)
        out.action[...] = self.steps.action[row, env]
        out.reward[...] = returns
        out.done_n[...] = done_n
        out.discount[...] = discount
        out.weights[...] = weights
        out.indices[...] = row * self.n_envs + env
        return out

    # ----------------------------------------------------------------------------- memory, state

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays (what a full buffer keeps resident)."""
        return self.observations.nbytes + sum(x.nbytes for x in tree_leaves(self.steps))

    def _init_args(self) -> dict:
        """The constructor's settings besides the example, size, n_envs and seed."""
        return {"discount": self.discount, "n_step": self.n_step}

    def sibling(self, n_envs: int, seed: int | None = None):
        """A new empty buffer of this kind and settings with ``n_envs`` envs and as many rows
        per env as this one (another source's ring: see ``asyncrl.replay.sources``)."""
        return type(self)(self._example, self.rows * n_envs, n_envs, seed=seed, **self._init_args())

    def _config(self) -> dict:
        return {
            "kind": type(self).__name__,
            "rows": self.rows,
            "n_envs": self.n_envs,
            "discount": self.discount,
            "n_step": self.n_step,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume: arrays (views, not copies) and a JSON config/cursor."""
        state = tree_state("steps", self.steps)
        state.update(self.observations.state_dict())
        meta = {"config": self._config(), "steps_written": self.steps_written}
        meta["rng"] = self.rng.bit_generator.state
        state["meta"] = json_array(meta)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved from a buffer built with the same arguments."""
        meta = from_json_array(state["meta"])
        if meta["config"] != self._config():
            raise ValueError(
                f"saved replay config {meta['config']} differs from this buffer's "
                f"{self._config()}: build the buffer with the saved arguments"
            )
        load_tree("steps", self.steps, state)
        self.observations.load_state_dict(state)
        self.steps_written = int(meta["steps_written"])
        self.rng.bit_generator.state = meta["rng"]

    def save(self, path: str | os.PathLike, compress: bool = False) -> None:
        """Write the buffer to ``path`` (.npz; ``compress`` is slow but shrinks Atari frames)."""
        save_npz(path, self.state_dict(), compress=compress)

    def load(self, path: str | os.PathLike) -> None:
        """Load a buffer saved with :meth:`save` into this (identically built) buffer."""
        self.load_state_dict(load_npz(path))
