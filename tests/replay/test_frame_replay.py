"""FrameReplay: rebuilt stacks equal, bit for bit, the stacks a real Atari env produced (resets,
short episodes, both padding types, ring wraparound), at about a quarter of the memory."""

from collections import deque

import ale_py
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit

from asyncrl.replay import FrameReplay, PrioritizedFrameReplay, Transition, UniformReplay

gym.register_envs(ale_py)


def atari_env(padding_type, max_episode_steps):
    env = gym.make("ALE/Pong-v5", frameskip=1)
    env = FrameStackObservation(AtariPreprocessing(env), stack_size=4, padding_type=padding_type)
    return TimeLimit(env, max_episode_steps=max_episode_steps)  # agent steps, forces resets


def rollout(envs, n_steps, seed):
    """Run B single envs with same-step autoreset; returns [T, B] arrays and {(t, b): final}."""
    n_envs = len(envs)
    obs = np.stack([env.reset(seed=seed + b)[0] for b, env in enumerate(envs)])
    rng = np.random.default_rng(seed)
    stacks = np.zeros((n_steps, n_envs, *obs.shape[1:]), np.uint8)
    reward = np.zeros((n_steps, n_envs), np.float32)
    terminated = np.zeros((n_steps, n_envs), bool)
    truncated = np.zeros((n_steps, n_envs), bool)
    finals = {}
    for t in range(n_steps):
        stacks[t] = obs
        for b, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            reward[t, b], terminated[t, b], truncated[t, b] = r, term, trunc
            if term or trunc:
                if trunc and not term:
                    finals[(t, b)] = o
                o, _ = env.reset()
            obs[b] = o
    return stacks, reward, terminated, truncated, finals


def check_every_sampleable_transition(replay, stacks, terminated, truncated, finals, written):
    """Observation and next observation of every valid transition against the env's stacks."""
    lo, hi = replay.valid_range()
    batch = replay.batch_at(replay.valid_indices())
    times = np.repeat(np.arange(lo, hi), replay.n_envs)
    envs = np.tile(np.arange(replay.n_envs), hi - lo)
    np.testing.assert_array_equal(batch.observation, stacks[times, envs])
    for i, (time, env) in enumerate(zip(times, envs)):
        expected = stacks[time + replay.n_step, env]
        for k in range(replay.n_step):
            if terminated[time + k, env]:
                expected = None
                break
            if truncated[time + k, env]:
                expected = finals[(time + k, env)]
                break
        if expected is not None:
            np.testing.assert_array_equal(batch.next_observation[i], expected)
    assert hi <= written - replay.n_step


@pytest.fixture(scope="module")
def atari_rollout():
    # Env 0 pads with the first frame, env 1 with zeros; 3-step episodes are shorter than the stack.
    envs = [atari_env("reset", 3), atari_env("zero", 5)]
    try:
        return rollout(envs, 36, seed=0)
    finally:
        for env in envs:
            env.close()


@pytest.mark.parametrize("cls", [FrameReplay, PrioritizedFrameReplay])
def test_stacks_equal_what_a_real_atari_env_produced(cls, atari_rollout):
    stacks, reward, terminated, truncated, finals = atari_rollout
    n_steps = len(stacks)
    assert truncated[:, 0].sum() == n_steps // 3 and len(finals) == truncated.sum()
    # Both kinds of reset padding really occur: repeated first frames and zero frames.
    assert (stacks[:, 0, 0] == stacks[:, 0, 3]).all(axis=(1, 2)).any()
    assert (stacks[:, 1, 0] == 0).all(axis=(1, 2)).any()
    example = Transition(stacks[0, 0], np.int64(0), np.float32(0), False, False)
    replay = cls(example, size=2 * 16, n_envs=2, discount=0.99, n_step=3)
    actions = np.zeros((n_steps, 2), np.int64)
    for chunk in np.array_split(np.arange(n_steps), 6):  # uneven chunks; the ring wraps
        sl = slice(chunk[0], chunk[-1] + 1)
        local = [(t - sl.start, b, o) for (t, b), o in finals.items() if sl.start <= t < sl.stop]
        replay.append(
            Transition(stacks[sl], actions[sl], reward[sl], terminated[sl], truncated[sl]), local
        )
        if len(replay):
            check_every_sampleable_transition(
                replay, stacks, terminated, truncated, finals, sl.stop
            )
    # Anchors (3 stored frames each) only where the stack did not continue: episode starts.
    live = np.arange(n_steps - replay.rows, n_steps)
    starts = (terminated | truncated)[live - 1].sum()
    assert 0 < (replay.observations.anchor_slot >= 0).sum() <= starts
    sample = replay.sample(32, np.random.default_rng(1))
    assert sample.observation.shape == (32, 4, 84, 84) and sample.observation.dtype == np.uint8


class FakeStackEnv:
    """Emulates FrameStackObservation over random tiny frames with few values (so a reset's
    padding sometimes equals the previous frames) and random terminations/truncations."""

    def __init__(self, rng, padding):
        self.rng, self.padding = rng, padding

    def frame(self):
        return self.rng.integers(0, 2, size=(2, 3), dtype=np.uint8)

    def reset(self):
        first = self.frame()
        pad = first if self.padding == "reset" else np.zeros_like(first)
        self.stack = deque([pad] * 3 + [first], maxlen=4)
        return np.stack(self.stack)

    def step(self):
        self.stack.append(self.frame())
        u = self.rng.random()
        return np.stack(self.stack), u < 0.1, 0.1 <= u < 0.25


def test_random_streams_terminations_and_coincident_padding():
    rng = np.random.default_rng(7)
    n_envs, n_steps = 3, 300
    envs = [FakeStackEnv(rng, p) for p in ("reset", "zero", "reset")]
    obs = np.stack([env.reset() for env in envs])
    stacks = np.zeros((n_steps, n_envs, 4, 2, 3), np.uint8)
    terminated = np.zeros((n_steps, n_envs), bool)
    truncated = np.zeros((n_steps, n_envs), bool)
    finals = {}
    for t in range(n_steps):
        stacks[t] = obs
        for b, env in enumerate(envs):
            o, terminated[t, b], truncated[t, b] = env.step()
            if terminated[t, b] or truncated[t, b]:
                if truncated[t, b] and not terminated[t, b]:
                    finals[(t, b)] = o
                o = env.reset()
            obs[b] = o
    example = Transition(stacks[0, 0], np.int64(0), np.float32(0), False, False)
    replay = FrameReplay(example, size=n_envs * 40, n_envs=n_envs, n_step=2)
    reward = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    actions = np.zeros((n_steps, n_envs), np.int64)
    t = written = 0
    while t < n_steps:
        size = int(rng.integers(1, 12))
        sl = slice(t, min(t + size, n_steps))
        local = [(tt - t, b, o) for (tt, b), o in finals.items() if sl.start <= tt < sl.stop]
        replay.append(
            Transition(stacks[sl], actions[sl], reward[sl], terminated[sl], truncated[sl]), local
        )
        written = sl.stop
        t = sl.stop
        if len(replay):
            check_every_sampleable_transition(
                replay, stacks, terminated, truncated, finals, written
            )


def test_inconsistent_final_observation_is_refused():
    example = Transition(np.zeros((4, 2, 2), np.uint8), np.int64(0), np.float32(0), False, False)
    replay = FrameReplay(example, size=20, n_envs=1)
    stacks = np.arange(2 * 16, dtype=np.uint8).reshape(2, 1, 4, 2, 2)
    truncated = np.array([[True], [False]])
    zeros = np.zeros((2, 1))
    with pytest.raises(ValueError, match="final observation"):
        replay.append(
            Transition(stacks, zeros, zeros, zeros.astype(bool), truncated), [(0, 0, stacks[1, 0])]
        )


def test_memory_is_about_a_quarter_of_stacked_storage():
    example = Transition(np.zeros((4, 84, 84), np.uint8), np.int64(0), np.float32(0), False, False)
    frames = FrameReplay(example, size=20_000, n_envs=8)  # np.zeros: untouched pages cost nothing
    stacked = UniformReplay(example, size=20_000, n_envs=8)
    ratio = frames.nbytes / stacked.nbytes
    assert 0.25 <= ratio < 0.26, ratio
    assert frames.nbytes / 20_000 < 7_200  # bytes per transition: one 84x84 frame + scalars
