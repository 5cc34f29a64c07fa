"""Learning tests for the Q-value policy gradients: SAC and TD3 must solve Pendulum-v1 (mean
evaluation return >= -250, 10 deterministic episodes) within 10k env steps, seeded, on CPU; DDPG
runs end to end on MuJoCo HalfCheetah-v5 (train, evaluate, checkpoint, resume).

Marked ``learning``; they run by default (deselect with ``-m "not learning"``). Pendulum uses the
classic-control preset (SB3's defaults, 1,000 random steps first) with 64x64 networks instead of
256x256 to keep each test near a minute on a shared 2-core machine.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import asyncrl
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.learning

QUIET = ["log.progress=false", "log.tensorboard=false"]


def _train(algo: str, env_id: str, run_dir: Path, sets: list[str]):
    cfg = asyncrl.resolve_config(algo, env_id, sets=[f'run_dir="{run_dir}"', *QUIET, *sets])
    result = asyncrl.train(cfg)
    return result, _rows(run_dir)


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def _evals(rows) -> list[tuple[int, float]]:
    return [
        (int(r["env_steps"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]
    ]


PENDULUM = [
    "steps=10000",
    "log.eval_every=1000",
    "log.eval_episodes=10",
    "log.checkpoint_every=5000",
]


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_pendulum_reaches_minus_250_within_10k_steps(algo, tmp_path):
    result, rows = _train(
        algo, "Pendulum-v1", tmp_path, [*PENDULUM, "seed=0", f"{algo}.hidden_sizes=[64, 64]"]
    )
    evals = _evals(rows)
    assert result.env_steps == 10_000 and len(evals) == 10
    assert max(e for _, e in evals) >= -250, evals
    # not a lucky evaluation: it is there at least twice (TD3 can dip late in a short run: seed 2
    # went -155, -208, -200, -511 over its last evaluations)
    assert sum(e >= -250 for _, e in evals) >= 2, evals
    last = rows[-1]
    assert int(last["updates"]) == 10_000 - 1000 + 1  # one update per step from learning starts
    assert math.isfinite(float(last["critic_loss"])) and math.isfinite(float(last["actor_loss"]))


def test_ddpg_mujoco_smoke_with_resume(tmp_path):
    pytest.importorskip("mujoco")
    sets = [
        "steps=2000",
        "ddpg.learning_starts=500",
        "ddpg.hidden_sizes=[64, 64]",
        "ddpg.batch_size=64",
        "log.eval_every=1000",
        "log.eval_episodes=1",
        "log.checkpoint_every=1000",
    ]
    result, rows = _train("ddpg", "HalfCheetah-v5", tmp_path, sets)
    assert result.env_steps == 2000 and math.isfinite(result.eval_return_mean)
    assert len(_evals(rows)) == 2
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert ckpt["env_steps"] == 2000 and ckpt["algo"]["updates"] == 1501
    assert "replay" in ckpt["algo"]  # the buffer (with the 1000-step time-limit truncation) is kept
    # resume: the learner continues its counters and its replay buffer
    resumed = asyncrl.train(resume=tmp_path, steps=2500)
    assert resumed.env_steps == 2500
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert ckpt["algo"]["updates"] == 2001 and ckpt["algo"]["env_steps"] == 2500
    rows = _rows(tmp_path)
    assert int(rows[-1]["env_steps"]) == 2500 and math.isfinite(float(rows[-1]["critic_loss"]))
    for v in ckpt["agent"].values():
        assert torch.isfinite(v).all()
