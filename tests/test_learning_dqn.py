"""Learning tests for the deep Q-learning family: DQN learns CartPole-v1 (seeded, CPU) with the
``dqn_classic`` preset (the RL-Zoo hyperparameters), and C51 and Rainbow run end to end on an
Atari game (short smoke runs).

Marked ``learning``; they run by default (deselect with ``-m "not learning"``). Each reads the
run's ``progress.csv`` the way a user would.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

import asyncrl
from asyncrl.configs.config import load_config
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.learning

QUIET = ["log.progress=false", "log.tensorboard=false"]


def _train(algo: str, env_id: str, run_dir: Path, sets: list[str]):
    cfg = asyncrl.resolve_config(algo, env_id, sets=[f'run_dir="{run_dir}"', *QUIET, *sets])
    result = asyncrl.train(cfg)
    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return result, rows


def _evals(rows) -> list[tuple[int, float]]:
    return [
        (int(r["env_steps"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]
    ]


def test_dqn_cartpole_reaches_450_within_60k(tmp_path):
    # The RL-Zoo settings (preset dqn_classic). DQN with them is unstable on CartPole (SB3's too:
    # see bench/RESULTS.md): the greedy policy swings between ~100 and 500 from one evaluation to
    # the next. So this asserts the *best* of the evaluations every 5,120 steps (10 greedy
    # episodes each), as "reaches 450 within 60k steps" says.
    result, rows = _train(
        "dqn", "CartPole-v1", tmp_path, ["seed=0", "steps=60000", "log.eval_every=5120"]
    )
    evals = _evals(rows)
    assert result.env_steps == 60_160  # 235 rollouts of 256 steps
    assert len(evals) == 12  # at 5,120 x 1..11 and at the end
    best = max(e for _, e in evals)
    assert best >= 450, evals
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert int(rows[-1]["updates"]) == 128 * (235 - 3)  # 128 per rollout from 1,024 steps on


@pytest.mark.parametrize("algo", ["c51", "rainbow"])
def test_distributional_atari_smoke(algo, tmp_path):
    pytest.importorskip("ale_py")
    sets = [
        "steps=1024",
        "sampler.num_envs=2",
        "sampler.horizon=8",
        f"{algo}.learning_starts=512",
        f"{algo}.buffer_size=2048",
        f"{algo}.target_update_interval=256",
        "log.eval_every=-1",  # a greedy Pong game is long; the smoke run checks training only
        "log.checkpoint_every=512",
    ]
    result, rows = _train(algo, "ALE/Pong-v5", tmp_path, sets)
    assert result.env_steps == 1024
    assert int(rows[-1]["env_steps"]) == 1024
    for col in ("env_steps", "time_s", "updates", "episodes", "return_mean", "loss", "q_mean"):
        assert col in rows[0], col
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)
    # replay ratio 0.25 from the batch that reaches 512 steps on: 0.25 x (1024 - 512 + 16)
    assert int(rows[-1]["updates"]) == 132
    if algo == "rainbow":
        assert "per_beta" in rows[-1]
    ckpts = list_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["ckpt_000000000512.pt", "ckpt_000000001024.pt"]
    ckpt = load_checkpoint(ckpts[-1])
    assert ckpt["env_steps"] == 1024 and ckpt["algo"]["updates"] == 132
    cfg = load_config(tmp_path / "config.toml")
    assert cfg.algo_params.n_atoms == 51
    from asyncrl.runners.policy import load_agent

    agent, _ = load_agent(tmp_path)
    assert agent.distributional and agent.noisy == (algo == "rainbow")
    import numpy as np

    action = agent.act(np.zeros((3, 4, 84, 84), np.uint8))
    assert action.shape == (3,) and (action < 6).all()
