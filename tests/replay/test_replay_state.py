"""Save/load: a saved-and-loaded buffer samples exactly the same with the same rng, and keeps
going (cursor, side stores, priorities) exactly as the original does."""

import numpy as np
import pytest

from asyncrl.data import tree_equal
from asyncrl.replay import (
    FrameReplay,
    PrioritizedFrameReplay,
    PrioritizedReplay,
    Transition,
    UniformReplay,
)


def stacked_stream(rng, t, n_envs, last):
    """Frame stacks that continue ``last`` [B, 4, 3, 3], with random resets and truncations."""
    stacks = np.zeros((t, n_envs, 4, 3, 3), np.uint8)
    terminated = rng.random((t, n_envs)) < 0.1
    truncated = rng.random((t, n_envs)) < 0.1
    finals = np.zeros_like(stacks)
    for i in range(t):
        stacks[i] = last
        nxt = np.concatenate([last[:, 1:], rng.integers(0, 255, (n_envs, 1, 3, 3), np.uint8)], 1)
        finals[i] = nxt
        reset = terminated[i] | truncated[i]
        nxt[reset] = rng.integers(0, 255, (reset.sum(), 1, 3, 3), np.uint8)  # repeat-first padding
        last = nxt
    reward = rng.normal(size=(t, n_envs)).astype(np.float32)
    action = rng.integers(0, 6, (t, n_envs))
    return Transition(stacks, action, reward, terminated, truncated), finals, last


BUILDERS = {
    "uniform": lambda ex: UniformReplay(ex, 60, 3, discount=0.9, n_step=3, seed=5),
    "prioritized": lambda ex: PrioritizedReplay(ex, 60, 3, discount=0.9, n_step=3, seed=5),
    "frame": lambda ex: FrameReplay(ex, 60, 3, discount=0.9, n_step=3, seed=5),
    "prioritized_frame": lambda ex: PrioritizedFrameReplay(
        ex, 60, 3, discount=0.9, n_step=3, seed=5
    ),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_saved_and_loaded_buffer_samples_the_same(kind, tmp_path):
    rng = np.random.default_rng(0)
    example = Transition(np.zeros((4, 3, 3), np.uint8), np.int64(0), np.float32(0), False, False)
    original = BUILDERS[kind](example)
    last = rng.integers(0, 255, (3, 4, 3, 3), np.uint8)
    for _ in range(9):  # 27 steps into 20 rows: wrapped
        samples, finals, last = stacked_stream(rng, 3, 3, last)
        original.append(samples, finals)
        if isinstance(original, PrioritizedReplay) and len(original):
            batch = original.sample(8, rng)
            original.update_priorities(batch.indices, rng.normal(size=8))
    if isinstance(original, PrioritizedReplay):
        original.anneal_beta(0.3)
    original.save(tmp_path / "replay.npz")
    loaded = BUILDERS[kind](example)
    loaded.load(tmp_path / "replay.npz")

    assert tree_equal(
        original.sample(64, np.random.default_rng(1)), loaded.sample(64, np.random.default_rng(1))
    )
    assert tree_equal(original.sample(16), loaded.sample(16))  # the buffers' own generators too
    # Both keep going identically: cursor, side stores, priorities, last stack.
    for _ in range(4):
        samples, finals, last = stacked_stream(rng, 2, 3, last)
        original.append(samples, finals)
        loaded.append(samples, finals)
        assert tree_equal(
            original.sample(32, np.random.default_rng(2)),
            loaded.sample(32, np.random.default_rng(2)),
        )


def test_loading_into_a_differently_built_buffer_is_refused(tmp_path):
    example = Transition(np.zeros(2, np.float32), np.int64(0), np.float32(0), False, False)
    UniformReplay(example, 20, 2, n_step=1).save(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="n_step"):
        UniformReplay(example, 20, 2, n_step=3).load(tmp_path / "a.npz")


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_sampling_into_a_preallocated_batch_equals_a_fresh_one(kind):
    rng = np.random.default_rng(3)
    example = Transition(np.zeros((4, 3, 3), np.uint8), np.int64(0), np.float32(0), False, False)
    replay = BUILDERS[kind](example)
    last = rng.integers(0, 255, (3, 4, 3, 3), np.uint8)
    for _ in range(8):
        samples, finals, last = stacked_stream(rng, 3, 3, last)
        replay.append(samples, finals)
    out = replay.batch_buffer(16)
    for seed in range(3):
        filled = replay.sample(16, np.random.default_rng(seed), out=out)
        assert filled is out
        assert tree_equal(out, replay.sample(16, np.random.default_rng(seed)))
    with pytest.raises(ValueError, match="out holds 16"):
        replay.sample(8, rng, out=out)
