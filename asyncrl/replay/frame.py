"""Frame-based replay for stacked-frame observations (Atari): each frame is stored once.

Owns the frame store and the rebuilding of k-frame stacks at sample time; the ring, n-step
targets and priorities are the uniform/prioritized buffers'. Knows nothing of the env wrappers.

An observation is a stack ``[k, *frame]`` (e.g. ``[4, 84, 84]`` uint8, newest frame last, as
gymnasium's ``FrameStackObservation`` gives). Stored per step: the newest frame only, so a step
costs one frame instead of k (about a quarter of the memory for k = 4). Rebuilding the stack of
step t takes the newest frames of steps t-k+1 .. t, which is exactly the env's stack except where
the env's stack did not continue the previous one: at an episode start the env pads (zeros or
the first frame repeated, by ``padding_type``), and the first step a buffer sees has no past.

Exactness, whatever the padding: on ``append`` each stack's older k-1 frames are compared with
the previous step's newest k-1 frames of the same env; where they differ (in practice: at every
reset, and at the first step) the step is an *anchor* and its k-1 older frames are kept in a
sparse side store. Rebuilding takes frames from the latest anchor within the window and newest
frames after it, which reproduces the env's stack bit for bit (by induction over steps), without
relying on done flags or knowing the padding rule. Anchors cost (k-1) frames per episode.

Final observations at truncations need only their newest frame: the older k-1 are the truncated
step's newest frames (checked on append), so a truncation costs one frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncrl.replay.uniform import SlotStore, UniformReplay, gather_rows


class FrameObservations:
    """Per-step newest frames [T, B, *frame] plus anchors and final frames in slot stores."""

    def __init__(self, example_observation: Any, rows: int, n_envs: int):
        example = np.asarray(example_observation)
        if example.ndim < 2 or example.shape[0] < 2:
            raise ValueError(
                f"frame replay needs stacked observations [k>=2, *frame]; got shape "
                f"{list(example.shape)} (use UniformReplay for unstacked observations)"
            )
        self.rows, self.n_envs = rows, n_envs
        self.history = example.shape[0]  # k
        self.frame_shape = example.shape[1:]
        self.dtype = example.dtype
        k = self.history
        self.frames = np.zeros((rows, n_envs, *self.frame_shape), self.dtype)
        initial = max(16, rows * n_envs // 1000)
        self.anchor = SlotStore(np.zeros((k - 1, *self.frame_shape), self.dtype), initial)
        self.anchor_slot = np.full((rows, n_envs), -1, np.int32)
        self.final = SlotStore(np.zeros(self.frame_shape, self.dtype), initial)
        self.final_slot = np.full((rows, n_envs), -1, np.int32)
        self.last_stack = np.zeros((n_envs, k, *self.frame_shape), self.dtype)
        self.has_last = False

    def _words(self, stacks: np.ndarray) -> np.ndarray:
        """Stacks [..., k, *frame] as raw words [..., k, w] for a bitwise comparison, 8 bytes at
        a time where the frame size allows (8x less temporary memory than comparing bytes)."""
        lead = stacks.shape[: stacks.ndim - len(self.frame_shape)]
        raw = np.ascontiguousarray(stacks).reshape(*lead, -1).view(np.uint8)
        return raw.view(np.uint64) if raw.shape[-1] % 8 == 0 else raw

    def _release(self, rows: np.ndarray) -> None:
        for store, slot_map in ((self.anchor, self.anchor_slot), (self.final, self.final_slot)):
            slots = slot_map[rows]
            store.release(slots[slots >= 0])
            slot_map[rows] = -1

    def check(self, observation: Any, steps: int) -> None:
        expected = (steps, self.n_envs, self.history, *self.frame_shape)
        shape = np.shape(observation)
        if shape != expected:
            raise ValueError(
                f"append: frame replay takes observation stacks {list(expected)}, got {list(shape)}"
            )

    def write(self, rows: np.ndarray, observation: Any, finals: tuple) -> None:
        obs = np.asarray(observation)
        n_steps = len(rows)
        final_t, final_b, final_obs = finals
        if len(final_t):  # checked before anything is written
            final_obs = np.asarray(final_obs)
            truncated_words = self._words(obs[final_t, final_b])
            if (self._words(final_obs)[:, :-1] != truncated_words[:, 1:]).any():
                raise ValueError(
                    "frame replay: a final observation's older frames are not the truncated "
                    "step's newest frames; pass the stack the env returned at truncation"
                )
        self._release(rows)
        self.frames[rows] = obs[:, :, -1]
        # Anchor where the older k-1 frames are not the previous step's newest k-1 frames.
        flat = self._words(obs)
        anchor = np.empty((n_steps, self.n_envs), bool)
        if self.has_last:
            last = self._words(self.last_stack)
            anchor[0] = (flat[0, :, :-1] != last[:, 1:]).any(axis=(1, 2))
        else:
            anchor[0] = True
        if n_steps > 1:
            anchor[1:] = (flat[1:, :, :-1] != flat[:-1, :, 1:]).any(axis=(2, 3))
        t_idx, b_idx = np.nonzero(anchor)
        if len(t_idx):
            slots = self.anchor.alloc(len(t_idx))
            self.anchor.data[slots] = obs[t_idx, b_idx, :-1]
            self.anchor_slot[rows[t_idx], b_idx] = slots
        if len(final_t):
            slots = self.final.alloc(len(final_t))
            self.final.data[slots] = final_obs[:, -1]
            self.final_slot[rows[final_t], final_b] = slots
        self.last_stack[...] = obs[-1]
        self.has_last = True

    def empty(self, batch_size: int) -> np.ndarray:
        return np.empty((batch_size, self.history, *self.frame_shape), self.dtype)

    def _stacks(
        self, time: np.ndarray, env: np.ndarray, from_final: np.ndarray | None, out: np.ndarray
    ) -> None:
        """Stacks [N, k, *frame] at absolute ``time`` into ``out``; where ``from_final``, the stack
        whose newest frame is the final frame of step ``time - 1`` (the env's last observation)."""
        k = self.history
        columns = np.arange(k)
        rows = (time[:, None] - (k - 1) + columns) % self.rows  # [N, k], oldest first
        env_col = env[:, None]
        gather_rows(
            self.frames, (rows * self.n_envs + env_col).ravel(), out.reshape(-1, *self.frame_shape)
        )
        anchor_slot = self.anchor_slot[rows, env_col]  # [N, k]
        if from_final is not None and from_final.any():
            # The newest column is not a real step: the next episode's anchor there must not count.
            anchor_slot[from_final, k - 1] = -1
            slots = self.final_slot[rows[from_final, k - 2], env[from_final]]
            if (slots < 0).any():
                raise RuntimeError("frame replay: a truncated step lost its final frame")
            out[from_final, k - 1] = self.final.data[slots]
        is_anchor = anchor_slot >= 0
        has_anchor = is_anchor.any(axis=1)
        if has_anchor.any():
            latest = k - 1 - np.argmax(is_anchor[:, ::-1], axis=1)  # column of the latest anchor
            before = has_anchor[:, None] & (columns < latest[:, None])
            i, j = np.nonzero(before)
            a = latest[i]
            # Column j < a is the anchor's stored frame (k-1) - (a - j) of its k-1 older frames.
            out[i, j] = self.anchor.data[anchor_slot[i, a], k - 1 - (a - j)]

    def gather(self, time: np.ndarray, env: np.ndarray, out: np.ndarray) -> None:
        self._stacks(time, env, None, out)

    def gather_next(
        self, time: np.ndarray, env: np.ndarray, from_final: np.ndarray, out: np.ndarray
    ) -> None:
        self._stacks(time, env, from_final, out)

    @property
    def nbytes(self) -> int:
        return (
            self.frames.nbytes
            + self.anchor.nbytes
            + self.anchor_slot.nbytes
            + self.final.nbytes
            + self.final_slot.nbytes
            + self.last_stack.nbytes
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {
            "obs/frames": self.frames,
            "obs/anchor_slot": self.anchor_slot,
            "obs/final_slot": self.final_slot,
            "obs/last_stack": self.last_stack,
            "obs/has_last": np.array(self.has_last),
        }
        state.update(self.anchor.state_dict("obs/anchor"))
        state.update(self.final.state_dict("obs/final"))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("frames", "anchor_slot", "final_slot", "last_stack"):
            target = getattr(self, name)
            value = np.asarray(state[f"obs/{name}"])
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(
                    f"saved obs/{name} is {value.dtype}{list(value.shape)}, this buffer holds "
                    f"{target.dtype}{list(target.shape)}: build the buffer with the saved config"
                )
            target[...] = value
        self.has_last = bool(state["obs/has_last"])
        self.anchor.load_state_dict("obs/anchor", state)
        self.final.load_state_dict("obs/final", state)


class FrameReplay(UniformReplay):
    """:class:`UniformReplay` storing frame stacks frame by frame; same arguments and samples.

    ``example_transition.observation`` must be a stack ``[k, *frame]`` (newest frame last).
    The first k-1 steps after the ring's oldest step are not sampled (their stacks reach into
    overwritten steps).
    """

    observations_cls = FrameObservations
