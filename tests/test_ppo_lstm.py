"""``ppo_lstm``: PPO with an LSTM core by name. Its presets resolve (``ppo_lstm_atari`` =
CleanRL's ppo_atari_lstm.py, ``ppo_lstm_classic`` = RL-Zoo's ppo_lstm CartPoleNoVel-v1, the
same settings as ``ppo`` with that env's per-env preset), its core is an LSTM without a preset
and cannot be switched off, and recurrent PPO runs on an Atari game in every sampling mode,
synchronous and asynchronous (short smoke runs of the ``ppo_lstm_atari`` preset scaled down).
"""

from __future__ import annotations

import csv
import math

import pytest

import asyncrl
from asyncrl.cli import main
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint

QUIET = ["log.progress=false", "log.tensorboard=false"]
NOVEL = "asyncrl/CartPoleNoVel-v1"


def test_the_atari_preset_is_cleanrls_ppo_atari_lstm():
    cfg = asyncrl.resolve_config("ppo_lstm", "ALE/Pong-v5")
    assert cfg.preset == "ppo_lstm_atari"
    assert (cfg.steps, cfg.sampler.num_envs, cfg.sampler.horizon) == (10_000_000, 8, 128)
    assert cfg.env.frame_stack == 1  # the LSTM is the memory: CleanRL stacks one frame
    m = cfg.model
    assert (m.core, m.core_size, m.core_prev_action, m.core_prev_reward, m.core_head_sizes) == (
        "lstm", 128, False, False, [],
    )  # fmt: skip
    p = cfg.algo_params
    got = {k: getattr(p, k) for k in (
        "learning_rate", "anneal_lr", "adam_eps", "gamma", "gae_lambda", "epochs", "minibatches",
        "sequence_length", "clip_range", "anneal_clip_range", "clip_value", "value_clip_range",
        "entropy_coef", "value_coef", "max_grad_norm", "normalize_advantage", "target_kl",
    )}  # fmt: skip
    assert got == {
        "learning_rate": 2.5e-4, "anneal_lr": True, "adam_eps": 1e-5, "gamma": 0.99,
        "gae_lambda": 0.95, "epochs": 4, "minibatches": 4,
        "sequence_length": 0,  # whole 128-step env columns: 4 minibatches of 2 envs each
        "clip_range": 0.1, "anneal_clip_range": False, "clip_value": True,
        "value_clip_range": 0.1, "entropy_coef": 0.01, "value_coef": 0.5, "max_grad_norm": 0.5,
        "normalize_advantage": True, "target_kl": 0.0,
    }  # fmt: skip


def test_the_classic_preset_is_ppo_on_the_masked_cartpole():
    cfg = asyncrl.resolve_config("ppo_lstm", NOVEL)
    assert cfg.preset == "ppo_lstm_classic"
    ref = asyncrl.resolve_config("ppo", NOVEL)  # ppo_classic + envs/ppo/asyncrl/CartPoleNoVel-v1
    assert ref.preset == "ppo_classic + ppo/asyncrl/CartPoleNoVel-v1"
    mine, theirs = cfg.to_dict(), ref.to_dict()
    for key in ("steps", "sampler", "model", "env"):
        assert mine[key] == theirs[key], key
    assert mine["ppo_lstm"] == theirs["ppo"]
    other = asyncrl.resolve_config("ppo_lstm", "CartPole-v1")
    assert other.preset == "ppo_lstm_classic" and other.model.core == "lstm"


def test_the_core_is_an_lstm_without_a_preset_and_cannot_be_switched_off():
    cfg = asyncrl.resolve_config("ppo_lstm", "HalfCheetah-v5")  # no ppo_lstm_mujoco
    assert cfg.preset == "" and cfg.model.core == "lstm"
    gru = asyncrl.resolve_config("ppo_lstm", NOVEL, sets=['model.core="gru"'])
    assert gru.model.core == "gru"
    with pytest.raises(asyncrl.ConfigError, match="ppo_lstm needs a recurrent core"):
        asyncrl.resolve_config("ppo_lstm", NOVEL, sets=['model.core="none"'])
    # ppo itself stays feed-forward by default
    assert asyncrl.resolve_config("ppo", "CartPole-v1").model.core == "none"


def test_presets_lists_ppo_lstm(capsys):
    assert main(["presets"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["ppo_lstm"])
    assert "ppo_lstm_atari" in line and "ppo_lstm_classic" in line


SMOKE = [
    *QUIET, "steps=512", "sampler.num_envs=4", "sampler.horizon=32", "ppo_lstm.epochs=1",
    "ppo_lstm.minibatches=2", "model.core_size=32",
    "log.eval_every=-1",  # a greedy Pong game is long; the smoke run checks training only
    "log.checkpoint_every=256",
]  # fmt: skip


@pytest.mark.parametrize(
    "mode,asynchronous",
    [("serial", False), ("parallel", False), ("central", False), ("alternating", False),
     ("central", True)],
)  # fmt: skip
def test_recurrent_ppo_atari_smoke(mode, asynchronous, tmp_path):
    pytest.importorskip("ale_py")
    sets = [
        f'run_dir="{tmp_path}"', *SMOKE, f'sampler.mode="{mode}"',
        f"sampler.asynchronous={str(asynchronous).lower()}",
    ]  # fmt: skip
    if mode != "serial":
        sets.append("sampler.workers=2")
    cfg = asyncrl.resolve_config("ppo_lstm", "ALE/Pong-v5", sets=sets)
    assert cfg.preset == "ppo_lstm_atari" and cfg.model.core == "lstm"
    result = asyncrl.train(cfg)
    assert result.env_steps >= 512
    assert type(result.agent).__name__ == "RecurrentPgAgent"
    assert result.agent.model.core.kind == "lstm" and result.agent.model.image
    with open(tmp_path / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["env_steps"]) >= 512
    updates = int(rows[-1]["updates"])
    expected = result.env_steps // 128 * 2  # a gradient step per minibatch: 2 per 4 x 32 batch
    if asynchronous:  # the learner may not have caught up with the last batches yet
        assert 0 < updates <= expected, (updates, expected)
    else:
        assert updates == expected, (updates, expected)
    losses = [float(r["policy_loss"]) for r in rows if r.get("policy_loss")]
    values = [float(r["value_loss"]) for r in rows if r.get("value_loss")]
    assert losses and values and all(math.isfinite(x) for x in losses + values)
    ckpts = list_checkpoints(tmp_path)
    assert ckpts and load_checkpoint(ckpts[-1])["env_steps"] >= 512
