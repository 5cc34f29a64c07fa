"""Recurrent learning: on CartPole-v1 with the velocities masked from the observation
(``asyncrl/CartPoleNoVel-v1``), recurrent PPO (an LSTM, the env's RL-Zoo ppo_lstm preset)
reaches a return that feed-forward PPO with the same settings does not, both measured here in
the same short seeded budget; recurrent A2C and APPO take the same path through a short run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
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


def test_ppo_lstm_presets():
    atari = asyncrl.resolve_config("ppo_lstm", "ALE/Pong-v5")
    assert atari.preset == "ppo_lstm_atari"
    assert (atari.model.core, atari.model.core_size, atari.env.frame_stack) == ("lstm", 128, 1)
    p = atari.algo_params  # CleanRL's ppo_atari_lstm.py
    assert (p.learning_rate, p.clip_range, p.epochs, p.minibatches, p.sequence_length) == (
        2.5e-4, 0.1, 4, 4, 0,
    )  # fmt: skip
    assert (atari.sampler.num_envs, atari.sampler.horizon) == (8, 128)
    classic = asyncrl.resolve_config("ppo_lstm", ENV)
    assert classic.preset == "ppo_lstm_classic" and classic.model.core == "lstm"
    with pytest.raises(asyncrl.ConfigError, match="ppo_lstm needs a recurrent core"):
        asyncrl.resolve_config("ppo_lstm", ENV, sets=['model.core="none"'])


@pytest.mark.parametrize(
    "mode,asynchronous",
    [("serial", False), ("parallel", False), ("central", False), ("alternating", False),
     ("central", True)],
)  # fmt: skip
def test_recurrent_ppo_atari_smoke(mode, asynchronous, tmp_path):
    pytest.importorskip("ale_py")
    sets = [
        f'run_dir="{tmp_path}"', *QUIET, "steps=512", "sampler.num_envs=4", "sampler.horizon=32",
        "ppo_lstm.epochs=1", "ppo_lstm.minibatches=2", "model.core_size=32", "log.eval_every=-1",
        f'sampler.mode="{mode}"', f"sampler.asynchronous={str(asynchronous).lower()}",
    ]  # fmt: skip
    if mode != "serial":
        sets.append("sampler.workers=2")
    cfg = asyncrl.resolve_config("ppo_lstm", "ALE/Pong-v5", sets=sets)
    assert cfg.preset == "ppo_lstm_atari"
    result = asyncrl.train(cfg)
    assert result.env_steps >= 512
    with open(tmp_path / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["env_steps"]) >= 512
    losses = [float(r["policy_loss"]) for r in rows if r.get("policy_loss")]
    assert losses and all(np.isfinite(losses))
