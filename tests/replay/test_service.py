"""The replay store in its own process behaves like the in-process buffer it wraps."""

from __future__ import annotations

import os

import numpy as np
import pytest

from asyncrl.data import tree_equal
from asyncrl.replay import PrioritizedReplay, UniformReplay
from asyncrl.replay.service import ReplayService, ReplayServiceError
from asyncrl.replay.uniform import Transition


def _batch(rng, t=16, b=2, obs_dim=3, trunc_at=None, term_at=None):
    obs = rng.standard_normal((t, b, obs_dim)).astype(np.float32)
    term = np.zeros((t, b), bool)
    trunc = np.zeros((t, b), bool)
    if term_at is not None:
        term[term_at] = True
    finals = []
    if trunc_at is not None:
        trunc[trunc_at] = True
        finals.append((trunc_at[0], trunc_at[1], rng.standard_normal(obs_dim).astype(np.float32)))
    return Transition(
        obs, rng.integers(0, 4, (t, b)), rng.standard_normal((t, b)).astype(np.float32), term, trunc
    ), finals


def _example():
    return Transition(
        np.zeros(3, np.float32),
        np.zeros((), np.int64),
        np.zeros((), np.float32),
        np.zeros((), bool),
        np.zeros((), bool),
    )


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_service_samples_like_the_in_process_buffer(kind):
    rng = np.random.default_rng(0)
    kwargs = dict(discount=0.9, n_step=3)
    local = (UniformReplay if kind == "uniform" else PrioritizedReplay)(
        _example(), 64, 2, seed=5, **kwargs
    )
    remote = ReplayService(kind, _example(), 64, 2, seed=5, **kwargs)
    try:
        for _ in range(3):
            batch, finals = _batch(rng, trunc_at=(4, 1), term_at=(9, 0))
            local.append(batch, finals)
            remote.append(batch, finals)
        for _ in range(3):
            a = local.sample(8, local.rng)
            b = remote.sample(8)
            assert tree_equal(a, b)
            if kind == "prioritized":
                td = np.abs(rng.standard_normal(8))
                local.update_priorities(a.indices, td)
                remote.update_priorities(b.indices, td)
        state = remote.state_dict()
        assert set(state) == set(local.state_dict())
        for k, v in local.state_dict().items():
            assert np.array_equal(np.asarray(v), np.asarray(state[k])), k
    finally:
        remote.close()
    assert remote.process.poll() is not None


def test_service_load_state_and_errors():
    rng = np.random.default_rng(1)
    remote = ReplayService("uniform", _example(), 64, 2, seed=3)
    other = ReplayService("uniform", _example(), 64, 2, seed=3)
    try:
        with pytest.raises(ReplayServiceError):
            remote.sample(8)  # empty buffer: the store answers ERROR, the client raises
        for _ in range(2):
            batch, finals = _batch(rng)
            remote.append(batch, finals)
        other.load_state_dict(remote.state_dict())
        assert tree_equal(remote.sample(8), other.sample(8))
    finally:
        remote.close()
        other.close()


def test_prefetch_returns_valid_batches_and_store_exits_with_parent_gone():
    rng = np.random.default_rng(2)
    remote = ReplayService("uniform", _example(), 64, 2, seed=3, prefetch=True)
    try:
        batch, finals = _batch(rng)
        remote.append(batch, finals)
        for _ in range(4):
            s = remote.sample(4)
            assert s.observation.shape == (4, 3)
        pid = remote.process.pid
    finally:
        remote.close()
    assert (
        not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/status").read().find("zombie") >= 0
    )


def test_dqn_with_the_replay_service_matches_in_process(tmp_path):
    """The same seeded DQN run, replay in-process or in its own process: the same curve."""
    import csv

    import asyncrl

    returns = []
    for service in (False, True):
        cfg = asyncrl.resolve_config(
            "dqn",
            "CartPole-v1",
            sets=[
                f"run_dir='{tmp_path / str(service)}'",
                "log.progress=false",
                "log.tensorboard=false",
                "log.eval_every=-1",
                "log.log_every_s=0",
                "steps=2048",
                "dqn.learning_starts=512",
                f"dqn.replay_service={str(service).lower()}",
            ],
        )
        result = asyncrl.train(cfg)
        rows = list(csv.DictReader(open(result.run_dir / "progress.csv")))
        returns.append([(r["env_steps"], r["return_mean"], r.get("loss")) for r in rows])
    assert returns[0] == returns[1]


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_the_store_keeps_a_ring_per_source_like_the_in_process_one(kind):
    """Appends naming a remote source go to that source's ring in the store (a SourcedReplay
    there); draws, priority updates and the saved state match the in-process SourcedReplay."""
    from asyncrl.replay.sources import SOURCE_SHIFT, SourcedReplay, holds_sources

    rng = np.random.default_rng(0)
    cls = UniformReplay if kind == "uniform" else PrioritizedReplay
    local = SourcedReplay(cls(_example(), 64, 2, seed=5, n_step=2))
    remote = ReplayService(kind, _example(), 64, 2, seed=5, n_step=2)
    try:
        for _ in range(2):
            batch, finals = _batch(rng)
            visitor, _ = _batch(rng, b=3)
            for r in (local, remote):
                r.append(batch, finals)
                r.append(visitor, source="visitor")
        assert remote.sources == {"", "visitor"}
        for _ in range(3):
            a, b = local.sample(16, local.rng), remote.sample(16)
            assert tree_equal(a, b)
            assert set((a.indices >> SOURCE_SHIFT).tolist()) <= {0, 1}
            if kind == "prioritized":
                td = np.abs(rng.standard_normal(16))
                local.update_priorities(a.indices, td)
                remote.update_priorities(b.indices, td)
        state = remote.state_dict()
        assert holds_sources(state)
        again = ReplayService(kind, _example(), 64, 2, seed=1, n_step=2)
        try:
            again.load_state_dict(state)
            assert tree_equal(local.sample(16, local.rng), again.sample(16))
        finally:
            again.close()
    finally:
        remote.close()
