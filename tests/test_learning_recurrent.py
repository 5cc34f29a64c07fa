"""Recurrent learning: on CartPole-v1 with the velocities masked from the observation
(``asyncrl/CartPoleNoVel-v1``), recurrent PPO (an LSTM, the env's RL-Zoo ppo_lstm preset)
reaches a return that feed-forward PPO with the same settings does not, both measured here in
the same short seeded budget; recurrent A2C and APPO take the same path through a short run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import asyncrl

pytestmark = pytest.mark.learning

ENV = "asyncrl/CartPoleNoVel-v1"
QUIET = ["log.progress=false", "log.tensorboard=false"]


def _best_eval(algo: str, run_dir: Path, sets: list[str]) -> tuple[float, list]:
    cfg = asyncrl.resolve_config(algo, ENV, sets=[f'run_dir="{run_dir}"', *QUIET, *sets])
    asyncrl.train(cfg)
    with open(run_dir / "progress.csv", newline="") as f:
        evals = [float(r["eval_return_mean"]) for r in csv.DictReader(f) if r["eval_return_mean"]]
    return max(evals), evals


def test_recurrent_ppo_solves_the_masked_cartpole_where_feed_forward_ppo_cannot(tmp_path):
    budget = ["steps=40000", "seed=3", "log.eval_every=10000"]
    recurrent, r_evals = _best_eval("ppo", tmp_path / "lstm", budget)
    flat, f_evals = _best_eval("ppo", tmp_path / "mlp", [*budget, 'model.core="none"'])
    assert recurrent >= 450, r_evals
    assert flat < 100, f_evals  # position and angle alone: it cannot tell where things move


@pytest.mark.parametrize("algo", ["a2c", "appo"])
def test_recurrent_a2c_and_appo_train_on_the_masked_cartpole(algo, tmp_path):
    cfg = asyncrl.resolve_config(
        algo,
        ENV,
        sets=[
            f'run_dir="{tmp_path}"', *QUIET, 'model.core="gru"', "model.core_size=32",
            "steps=4096", "log.eval_every=2048", "sampler.num_envs=4", "sampler.horizon=32",
            *(["appo.sequence_length=8"] if algo == "appo" else []),
        ],
    )  # fmt: skip
    result = asyncrl.train(cfg)
    assert result.env_steps >= 4096 and result.eval_return_mean > 0
    assert type(result.agent).__name__ == "RecurrentPgAgent"
