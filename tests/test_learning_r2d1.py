"""R2D1 end to end: it learns the masked-velocity CartPole (asyncrl/CartPoleNoVel-v1, a memory
task: positions only) with the ``r2d1_classic`` preset, and runs on an Atari game in every
sampling mode, synchronous and asynchronous (short smoke runs with the ``r2d1_atari`` preset
scaled down).

Marked ``learning``; they run by default. Each reads the run's ``progress.csv``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import asyncrl
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.learning

QUIET = ["log.progress=false", "log.tensorboard=false"]


def _train(env_id: str, run_dir: Path, sets: list[str]):
    cfg = asyncrl.resolve_config("r2d1", env_id, sets=[f'run_dir="{run_dir}"', *QUIET, *sets])
    result = asyncrl.train(cfg)
    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return cfg, result, rows


def test_r2d1_learns_the_masked_cartpole(tmp_path):
    """Best greedy evaluation (10 episodes every 5k steps) of at least 300 within 50k steps,
    from positions alone (tests/test_learning_recurrent.py measures feed-forward PPO, which
    stays below 100 here, beside its recurrent variant). Like DQN on CartPole, R2D1's greedy
    policy swings between evaluations: the best one counts."""
    cfg, result, rows = _train(
        "asyncrl/CartPoleNoVel-v1", tmp_path, ["seed=2", "steps=50000", "log.eval_every=5000"]
    )
    assert cfg.preset == "r2d1_classic"
    evals = [
        (int(r["env_steps"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]
    ]
    assert len(evals) >= 9, evals
    assert max(e for _, e in evals) >= 300, evals
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert losses and all(math.isfinite(x) for x in losses)


SMOKE = [
    "steps=1280",
    "sampler.num_envs=4",
    "sampler.horizon=16",
    "r2d1.sequence_length=16",
    "r2d1.burn_in=8",
    "r2d1.overlap=8",
    "r2d1.batch_size=4",
    "r2d1.buffer_size=4096",
    "r2d1.learning_starts=640",
    "r2d1.core_size=32",
    "r2d1.head_hidden=32",
    "log.eval_every=-1",  # a greedy Pong game is long; the smoke run checks training only
    "log.checkpoint_every=640",
]


@pytest.mark.parametrize(
    "mode,asynchronous",
    [("serial", False), ("parallel", False), ("central", False), ("alternating", False),
     ("parallel", True)],
)  # fmt: skip
def test_r2d1_atari_smoke(mode, asynchronous, tmp_path):
    pytest.importorskip("ale_py")
    sets = [*SMOKE, f'sampler.mode="{mode}"', f"sampler.asynchronous={str(asynchronous).lower()}"]
    if mode != "serial":
        sets.append("sampler.workers=2")
    cfg, result, rows = _train("ALE/Pong-v5", tmp_path, sets)
    assert cfg.preset == "r2d1_atari" and not cfg.env.clip_reward
    assert result.env_steps >= 1280
    updates = int(rows[-1]["updates"])
    # replay ratio 1: a trained step per env step once learning starts; 64 steps per update
    expected = (result.env_steps - 640) / 64
    if asynchronous:  # the learner may not have caught up with the last batches yet
        assert 0 < updates <= expected + 2, (updates, expected)
    else:
        assert abs(updates - expected) <= 2, (updates, expected)
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert losses and all(math.isfinite(x) and x >= 0 for x in losses)
    ckpts = list_checkpoints(tmp_path)
    assert ckpts
    ckpt = load_checkpoint(ckpts[-1])
    assert ckpt["env_steps"] >= 1280
    from asyncrl.runners.policy import load_agent

    agent, _ = load_agent(tmp_path)
    obs = np.zeros((3, 4, 84, 84), np.uint8)
    agent.reset_eval()
    action = agent.act(obs)
    assert action.shape == (3,) and (action < 6).all()


def test_r2d1_resume_continues_its_sequence_replay(tmp_path):
    sets = ["steps=2000", "r2d1.learning_starts=500", "log.eval_every=-1",
            "log.checkpoint_every=1000", "seed=1"]  # fmt: skip
    cfg, result, rows = _train("asyncrl/CartPoleNoVel-v1", tmp_path, sets)
    per_step = cfg.algo_params.updates_per_env_step  # 16 trained steps / (32 x 20) = 0.025
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])
    updates = ckpt["algo"]["updates"]
    assert abs(updates - (result.env_steps - 500) * per_step) <= 1
    replay = ckpt["algo"]["replay"]
    assert any(k.startswith("starts") for k in replay)  # the stored start states
    assert any(k.startswith("tree") for k in replay)  # the sequence priorities
    resumed = asyncrl.train(resume=tmp_path, steps=3000)
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])
    # no refill wait after the resume: the replay came back with the checkpoint
    assert abs(ckpt["algo"]["updates"] - (resumed.env_steps - 500) * per_step) <= 1
    with open(tmp_path / "progress.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert math.isfinite(float(last["loss"]))
