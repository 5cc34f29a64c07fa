"""Learning tests: seeded runs through ``asyncrl.train`` that must really learn (CartPole with
PPO and A2C, a Dict-observation toy task), and end-to-end smoke runs on MuJoCo and Atari.

Marked ``learning``; they run by default (deselect with ``-m "not learning"``). Each reads the
run's ``progress.csv`` the way a user would.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import asyncrl
from asyncrl.configs.config import load_config
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.learning

QUIET = ["log.progress=false", "log.tensorboard=false"]


def _train(algo: str, env_id: str, run_dir: Path, sets: list[str], imports=None):
    cfg = asyncrl.resolve_config(
        algo, env_id, sets=[f'run_dir="{run_dir}"', *QUIET, *sets], imports=imports
    )
    result = asyncrl.train(cfg)
    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return result, rows


def _evals(rows) -> list[tuple[int, float]]:
    return [
        (int(r["env_steps"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]
    ]


def _check_run_dir(run_dir: Path, rows, steps: int) -> None:
    columns = ("env_steps", "time_s", "updates", "episodes", "return_mean", "return_std")
    assert set(columns) | {"steps_per_s"} <= set(rows[0])
    assert int(rows[-1]["env_steps"]) >= steps
    assert load_config(run_dir / "config.toml").env.id  # the resolved config reloads
    assert list_checkpoints(run_dir), "no checkpoint written"


def test_ppo_cartpole_reaches_475_within_100k(tmp_path):
    result, rows = _train("ppo", "CartPole-v1", tmp_path, ["seed=1", "log.eval_every=10000"])
    evals = _evals(rows)
    assert result.env_steps <= 100_352  # 100k rounded up to whole batches of 8 x 32
    assert len(evals) >= 10
    best = max(e for _, e in evals)
    assert best >= 475, evals
    assert evals[-1][1] >= 475, evals  # and it stays there at the end of the run
    _check_run_dir(tmp_path, rows, 100_000)


def test_appo_cartpole_reaches_475_within_40k(tmp_path):
    # synchronous APPO (appo_classic preset): V-trace targets, recomputed before every epoch
    sets = ["seed=1", "steps=40000", "log.eval_every=10000", 'sampler.mode="serial"']
    result, rows = _train("appo", "CartPole-v1", tmp_path, sets)
    evals = _evals(rows)
    assert result.env_steps <= 40_192  # 40k rounded up to whole batches of 8 x 32
    assert len(evals) >= 4
    assert max(e for _, e in evals) >= 475, evals
    assert evals[-1][1] >= 475, evals  # and it stays there at the end of the run
    # serial sampling: no policy lag, nothing dropped
    assert all(float(r["policy_lag_max"]) == float(r["lag_dropped_samples"]) == 0 for r in rows)
    _check_run_dir(tmp_path, rows, 40_000)


def test_a2c_cartpole_reaches_400_within_300k(tmp_path):
    result, rows = _train("a2c", "CartPole-v1", tmp_path, ["seed=0", "log.eval_every=50000"])
    evals = _evals(rows)
    assert result.env_steps <= 300_000
    assert evals[-1][1] >= 400, evals
    # the 100-episode training average (stochastic policy) gets there too
    assert max(float(r["return_mean"]) for r in rows if r["return_mean"]) >= 400
    _check_run_dir(tmp_path, rows, 300_000)


def test_ppo_learns_a_dict_observation_env(tmp_path):
    # AsyncrlToyDict-v0: name the goal shown in the observation, 10 steps; random ~3.3, best 10
    result, rows = _train(
        "ppo",
        "AsyncrlToyDict-v0",
        tmp_path,
        ["steps=4096", "log.eval_every=2048", "log.eval_episodes=8", "seed=0"],
        imports=["tests.envs.toy_envs"],
    )
    _check_run_dir(tmp_path, rows, 4096)
    evals = _evals(rows)
    assert evals[-1][1] >= 9.0, evals
    assert load_config(tmp_path / "config.toml").env.imports == ["tests.envs.toy_envs"]


def test_ppo_mujoco_smoke(tmp_path):
    pytest.importorskip("mujoco")
    sets = [
        "steps=5000",
        "sampler.num_envs=2",
        "sampler.horizon=250",
        "ppo.minibatches=4",
        "ppo.epochs=2",
        "log.eval_every=5000",
        "log.eval_episodes=1",
        "log.checkpoint_every=2000",
    ]
    result, rows = _train("ppo", "HalfCheetah-v5", tmp_path, sets)
    _check_run_dir(tmp_path, rows, 5000)
    assert math.isfinite(result.eval_return_mean)
    assert len(list_checkpoints(tmp_path)) >= 2
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert ckpt["env_steps"] == 5000
    # observation normalisation (MuJoCo preset) has seen the data
    assert ckpt["agent"]["normalizer.count"].item() >= 5000
    assert torch.isfinite(ckpt["agent"]["normalizer.var"]).all()


def test_ppo_atari_smoke(tmp_path):
    pytest.importorskip("ale_py")
    sets = [
        "steps=2048",
        "sampler.num_envs=4",
        "sampler.horizon=32",
        "ppo.epochs=1",
        "ppo.minibatches=2",
        "log.eval_every=-1",  # a greedy Pong game is long; the smoke run checks training only
        "log.checkpoint_every=1024",
    ]
    result, rows = _train("ppo", "ALE/Pong-v5", tmp_path, sets)
    _check_run_dir(tmp_path, rows, 2048)
    assert result.env_steps == 2048
    assert len(list_checkpoints(tmp_path)) >= 2
    from asyncrl.runners.policy import load_agent

    agent, cfg = load_agent(tmp_path)
    assert cfg.env.id == "ALE/Pong-v5" and agent.model.image
    import numpy as np

    action = agent.act(np.zeros((3, 4, 84, 84), np.uint8))
    assert action.shape == (3,) and (action < 6).all()
