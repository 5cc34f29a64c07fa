"""Replay over a changing set of sources (asyncrl/replay/sources.py): a ring per source, draws
mixed by size or priority mass, indices that find their ring, eviction, state round trips."""

from __future__ import annotations

import numpy as np
import pytest

from asyncrl.replay import PrioritizedReplay, Transition, UniformReplay
from asyncrl.replay.sources import SOURCE_SHIFT, SourcedReplay, holds_sources


def _example():
    return Transition(np.zeros(2, np.float32), np.int64(0), np.float32(0), False, False)


def _steps(t: int, b: int, value: float, start: int = 0):
    """t steps of b envs whose observation is (value, time) and reward ``value``."""
    obs = np.zeros((t, b, 2), np.float32)
    obs[..., 0] = value
    obs[..., 1] = np.arange(start, start + t)[:, None]
    return Transition(
        obs,
        np.zeros((t, b), np.int64),
        np.full((t, b), value, np.float32),
        np.zeros((t, b), bool),
        np.zeros((t, b), bool),
    )


def test_a_source_gets_its_own_ring_with_the_primarys_rows_per_env():
    primary = UniformReplay(_example(), 400, 4, n_step=3, seed=0)
    replay = SourcedReplay(primary)
    replay.append(_steps(10, 4, 0.0))
    replay.append(_steps(10, 2, 1.0), source="visitor")
    ring = replay.sources["visitor"]
    assert ring.n_envs == 2 and ring.rows == primary.rows == 100 and ring.n_step == 3
    assert len(replay) == len(primary) + len(ring) == (10 - 3) * 4 + (10 - 3) * 2
    with pytest.raises(ValueError, match="B=2"):  # a source's width is fixed
        replay.append(_steps(5, 3, 1.0), source="visitor")


def test_uniform_draws_are_shared_by_size_and_never_mix_sources_in_a_window():
    replay = SourcedReplay(UniformReplay(_example(), 4000, 4, discount=0.5, n_step=2, seed=0))
    replay.append(_steps(100, 4, 0.0))
    replay.append(_steps(100, 2, 1.0), source="a")
    replay.append(_steps(50, 2, 2.0), source="b")
    sizes = {0.0: 98 * 4, 1.0: 98 * 2, 2.0: 48 * 2}
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(40):
        batch = replay.sample(256, rng)
        value = batch.observation[:, 0]
        # n-step sums stay in a source: reward = v + 0.5 v; the next obs is the same source's
        np.testing.assert_allclose(batch.reward, 1.5 * value)
        np.testing.assert_array_equal(batch.next_observation[:, 0], value)
        np.testing.assert_array_equal(batch.next_observation[:, 1], batch.observation[:, 1] + 2)
        seen.append(value)
    seen = np.concatenate(seen)
    total = sum(sizes.values())
    for v, n in sizes.items():  # 10240 draws: share within 2 points of the size share
        assert abs(np.mean(seen == v) - n / total) < 0.02, (v, np.mean(seen == v), n / total)


def test_with_one_filled_ring_the_draw_is_that_buffers_own():
    a = UniformReplay(_example(), 400, 4, seed=0)
    b = UniformReplay(_example(), 400, 4, seed=0)
    replay = SourcedReplay(a)
    for buf in (replay, b):
        buf.append(_steps(20, 4, 0.0))
    replay.append(_steps(1, 2, 1.0), source="empty-yet")  # nothing sampleable in it yet
    x, y = replay.sample(32, np.random.default_rng(3)), b.sample(32, np.random.default_rng(3))
    np.testing.assert_array_equal(x.observation, y.observation)
    np.testing.assert_array_equal(x.indices, y.indices)


def test_prioritized_weights_and_priority_updates_across_sources():
    replay = SourcedReplay(PrioritizedReplay(_example(), 400, 2, alpha=1.0, beta=1.0, seed=0))
    replay.append(_steps(3, 2, 0.0))
    replay.append(_steps(3, 1, 1.0), source="r")
    assert len(replay) == 2 * 2 + 2 * 1  # n_step 1: 2 sampleable steps per env
    batch = replay.sample(64, np.random.default_rng(0))
    # every new transition enters at priority 1: uniform, all weights 1
    np.testing.assert_allclose(batch.weights, 1.0)
    sids = batch.indices >> SOURCE_SHIFT
    assert set(sids.tolist()) == {0, 1}
    np.testing.assert_array_equal(batch.observation[:, 0], sids.astype(np.float32))
    # Give the remote ring's two transitions |td| 7 (priority 7 with alpha 1, eps ~ 0) and the
    # primary's four 1: P(remote) = 14 / 18.
    idx = {int(i) for i in batch.indices}
    remote = np.array(sorted(i for i in idx if i >> SOURCE_SHIFT == 1))
    local = np.array(sorted(i for i in idx if i >> SOURCE_SHIFT == 0))
    assert len(remote) == 2 and len(local) == 4
    replay.update_priorities(remote, np.full(2, 7.0))
    replay.update_priorities(local, np.full(4, 1.0))
    assert replay.sources[""].max_priority == pytest.approx(7.0)  # shared largest priority
    draws = np.concatenate(
        [replay.sample(60, np.random.default_rng(s)).indices >> SOURCE_SHIFT for s in range(50)]
    )
    assert abs(np.mean(draws == 1) - 14 / 18) < 0.03
    b = replay.sample(60, np.random.default_rng(9))
    # w_i = (N P(i))^-beta / max_j w_j with N = 6: P = 7/18 (remote), 1/18 (local)
    expect = np.where(b.indices >> SOURCE_SHIFT == 1, (6 * 7 / 18) ** -1, (6 / 18) ** -1)
    np.testing.assert_allclose(b.weights, expect / expect.max(), rtol=1e-5)
    # an update for an evicted source is skipped
    replay._drop("r")
    replay.update_priorities(remote, np.full(2, 100.0))
    assert replay.max_priority == pytest.approx(7.0)


def test_the_least_recently_appended_source_is_evicted_past_max_envs():
    replay = SourcedReplay(UniformReplay(_example(), 400, 4, seed=0), max_envs=5)
    replay.append(_steps(5, 4, 0.0))
    replay.append(_steps(5, 2, 1.0), source="old")
    replay.append(_steps(5, 2, 2.0), source="newer")
    replay.append(_steps(5, 2, 1.0), source="old")  # "newer" is now the least recent
    replay.append(_steps(5, 3, 3.0), source="third")
    assert set(replay.sources) == {"", "old", "third"} and replay.evicted == 1
    with pytest.raises(ValueError, match="at most 5"):
        replay.append(_steps(5, 6, 3.0), source="huge")


@pytest.mark.parametrize("cls", [UniformReplay, PrioritizedReplay])
def test_state_round_trip_with_sources_and_plain_state_without(cls):
    replay = SourcedReplay(cls(_example(), 400, 4, seed=0))
    replay.append(_steps(10, 4, 0.0))
    # with only its primary, the state is the plain buffer's (old checkpoints, plain loads)
    plain = cls(_example(), 400, 4, seed=0)
    plain.load_state_dict(replay.state_dict())
    replay.append(_steps(10, 2, 1.0), source="a")
    state = replay.state_dict()
    assert holds_sources(state)
    other = SourcedReplay(cls(_example(), 400, 4, seed=5))
    other.load_state_dict(state)
    assert set(other.sources) == {"", "a"} and len(other) == len(replay)
    x, y = replay.sample(50, np.random.default_rng(2)), other.sample(50, np.random.default_rng(2))
    np.testing.assert_array_equal(x.observation, y.observation)
    np.testing.assert_array_equal(x.indices, y.indices)
    other.append(_steps(3, 2, 1.0, start=10), source="a")  # the ring goes on where it stopped
    assert other.sources["a"].steps_written == 13
