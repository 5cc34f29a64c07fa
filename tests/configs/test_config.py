"""Run configuration: TOML round trip, resolution order, presets by env family, validation.

Nothing here builds an environment: resolving a config only looks ids up in the registry."""

from __future__ import annotations

import dataclasses
import importlib

import gymnasium as gym
import pytest

from asyncrl.configs.config import (
    ConfigError,
    TrainConfig,
    list_presets,
    load_config,
    parse_set,
    resolve_config,
)


@pytest.fixture(autouse=True)
def no_env_building(monkeypatch):
    """Resolving configs must never build an env (Atari and MuJoCo are slow to build)."""

    def refuse(*args, **kwargs):
        raise AssertionError("an env was built while resolving a config")

    monkeypatch.setattr(gym, "make", refuse)


# -- TOML round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algo,env_id",
    [
        ("ppo", "CartPole-v1"),
        ("ppo", "ALE/Pong-v5"),
        ("ppo", "HalfCheetah-v5"),
        ("a2c", "CartPole-v1"),
    ],
)
def test_toml_round_trip(algo, env_id, tmp_path):
    cfg = resolve_config(
        algo,
        env_id,
        sets=[
            "seed=7",
            "model.hidden_sizes=[32, 16]",
            "env.kwargs={max_episode_steps = 200}"
            if env_id == "CartPole-v1"
            else "log.eval_every=-1",
            f"{algo}.gamma=0.95",
        ],
    )
    path = tmp_path / "config.toml"
    cfg.save(path)
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.to_toml() == cfg.to_toml()
    assert isinstance(loaded.algo_params, type(cfg.algo_params))


def test_round_trip_of_every_field_changed(tmp_path):
    """Every plain field gets a non-default value and survives save + load."""
    cfg = resolve_config("ppo", "CartPole-v1")
    d = cfg.to_dict()
    changed = {
        "steps": 12345,
        "seed": 3,
        "device": "cuda:1",
        "torch_threads": 2,
        "run_dir": "somewhere",
        "sampler": {"num_envs": 3, "horizon": 7, "workers": 2},
        "log": {
            "eval_every": 500,
            "eval_episodes": 4,
            "eval_deterministic": False,
            "checkpoint_every": 700,
            "keep_checkpoints": 1,
            "tensorboard": False,
            "progress": False,
            "log_every_s": 0.5,
        },
        "model": {
            "hidden_sizes": [8],
            "activation": "relu",
            "shared_trunk": True,
            "normalize_obs": True,
            "init_log_std": -0.5,
        },
        "ppo": {
            "learning_rate": 1e-4,
            "anneal_lr": False,
            "epochs": 3,
            "minibatches": 2,
            "clip_range": 0.3,
            "target_kl": 0.02,
        },
    }
    for key, value in changed.items():
        if isinstance(value, dict):
            d[key].update(value)
        else:
            d[key] = value
    import tomli_w

    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(d))
    loaded = load_config(path)
    assert loaded.to_dict() == d
    loaded.save(tmp_path / "again.toml")
    assert load_config(tmp_path / "again.toml") == loaded


def test_load_config_errors(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('algo = "dqn9"\n')
    with pytest.raises(ConfigError, match="dqn9"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    p.write_text("algo = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


# -- resolution order ----------------------------------------------------------------------------


def test_precedence_defaults_preset_file_flags_set(tmp_path):
    defaults = TrainConfig()
    preset = resolve_config("ppo", "CartPole-v1")
    # the preset overrides defaults
    assert defaults.sampler.horizon == 128 and preset.sampler.horizon == 32
    assert preset.algo_params.learning_rate == 1e-3 and preset.algo_params.epochs == 20
    # untouched by the preset: the dataclass default
    assert preset.algo_params.max_grad_norm == type(preset.algo_params)().max_grad_norm

    f = tmp_path / "mine.toml"
    f.write_text(
        "steps = 1111\nseed = 5\n"
        "[sampler]\nnum_envs = 4\n"
        "[ppo]\nlearning_rate = 5e-4\nepochs = 10\n"
        "[a2c]\nlearning_rate = 1.0\n"  # another algorithm's table is ignored
    )
    cfg = resolve_config(
        "ppo",
        "CartPole-v1",
        config_file=str(f),
        overrides={"seed": 9, "steps": 2222, "device": None},
        sets=["steps=3333", "ppo.epochs=2"],
    )
    assert cfg.sampler.horizon == 32  # preset (file silent)
    assert cfg.sampler.num_envs == 4  # file over preset
    assert cfg.algo_params.learning_rate == 5e-4  # file over preset
    assert cfg.seed == 9  # flag over file
    assert cfg.steps == 3333  # --set over flag over file
    assert cfg.algo_params.epochs == 2  # --set over file over preset
    assert cfg.device == "cpu"  # a flag left out (None) changes nothing


def test_precedence_through_the_cli(tmp_path, monkeypatch):
    """The CLI feeds flags and --set into the same order (training itself is stubbed out)."""
    from asyncrl import cli

    seen = {}

    def fake_train(cfg=None, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module("asyncrl.runners.train"), "train", fake_train)
    f = tmp_path / "mine.toml"
    f.write_text("steps = 1111\nseed = 5\n[ppo]\nlearning_rate = 5e-4\n")
    with pytest.raises(SystemExit):
        cli.main(
            [
                "train",
                "ppo",
                "CartPole-v1",
                "--config",
                str(f),
                "--seed",
                "9",
                "--steps",
                "2e3",
                "--set",
                "seed=11",
                "--envs-per-worker",
                "3",
                "--no-progress",
            ]
        )
    cfg = seen["cfg"]
    assert (cfg.steps, cfg.seed, cfg.algo_params.learning_rate) == (2000, 11, 5e-4)
    assert cfg.sampler.num_envs == 3 and cfg.log.progress is False


def test_config_file_env_family_picks_the_preset(tmp_path):
    f = tmp_path / "fam.toml"
    f.write_text('[env]\nfamily = "mujoco"\n')
    cfg = resolve_config("ppo", "CartPole-v1", config_file=str(f))
    assert cfg.sampler.horizon == 2048 and cfg.model.normalize_obs  # ppo_mujoco
    cfg = resolve_config("ppo", "CartPole-v1", sets=["env.family=atari"])
    assert cfg.sampler.horizon == 128 and cfg.algo_params.clip_range == 0.1  # ppo_atari


# -- presets by env family -----------------------------------------------------------------------


def test_presets_are_listed():
    assert {"ppo_classic", "ppo_atari", "ppo_mujoco", "a2c_classic", "a2c_atari"} <= set(
        list_presets()
    )


@pytest.mark.parametrize(
    "env_id,expect",
    [
        (
            "CartPole-v1",
            {"horizon": 32, "num_envs": 8, "epochs": 20, "lr": 1e-3, "normalize_obs": False},
        ),
        (
            "Acrobot-v1",
            {"horizon": 32, "num_envs": 8, "epochs": 20, "lr": 1e-3, "normalize_obs": False},
        ),
        (
            "ALE/Pong-v5",
            {"horizon": 128, "num_envs": 8, "epochs": 4, "lr": 2.5e-4, "normalize_obs": False},
        ),
        (
            "HalfCheetah-v5",
            {"horizon": 2048, "num_envs": 1, "epochs": 10, "lr": 3e-4, "normalize_obs": True},
        ),
    ],
)
def test_ppo_preset_by_env_family(env_id, expect):
    cfg = resolve_config("ppo", env_id)
    got = {
        "horizon": cfg.sampler.horizon,
        "num_envs": cfg.sampler.num_envs,
        "epochs": cfg.algo_params.epochs,
        "lr": cfg.algo_params.learning_rate,
        "normalize_obs": cfg.model.normalize_obs,
    }
    assert got == expect
    assert cfg.env.id == env_id


def test_a2c_presets_and_missing_preset():
    cfg = resolve_config("a2c", "CartPole-v1")
    assert (cfg.sampler.num_envs, cfg.sampler.horizon, cfg.algo_params.optimizer) == (
        8,
        5,
        "rmsprop",
    )
    cfg = resolve_config("a2c", "ALE/Breakout-v5")
    assert (cfg.sampler.num_envs, cfg.algo_params.value_coef) == (16, 0.5)  # zoo 0.25 x MSE
    # No a2c_mujoco preset: the dataclass defaults.
    cfg = resolve_config("a2c", "Hopper-v5")
    assert cfg.sampler == TrainConfig().sampler


# -- --set parsing and validation ------------------------------------------------------------------


def test_parse_set_values():
    assert parse_set("ppo.learning_rate=1e-4") == ("ppo.learning_rate", 1e-4)
    assert parse_set("model.hidden_sizes=[32, 32]") == ("model.hidden_sizes", [32, 32])
    assert parse_set("device=cuda:0") == ("device", "cuda:0")  # bare strings need no quotes
    assert parse_set('device="cpu"') == ("device", "cpu")
    assert parse_set("log.tensorboard=false") == ("log.tensorboard", False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("seed")


@pytest.mark.parametrize(
    "item,match",
    [
        ("seed=1.5", "seed"),
        ("steps=true", "steps"),
        ("log.tensorboard=yes", "log.tensorboard"),
        ("ppo.nope=1", "ppo.nope"),
        ("nope.x=1", "nope"),
        ("sampler.num_envs.x=1", "sampler.num_envs"),
        ("algo=a2c", "ALGO"),
        ("algo_params=1", "algo_params"),
        ("sampler.workers=0", "sampler.workers"),
        ("log.eval_every=-5", "log.eval_every"),
        ("model.hidden_sizes=[0]", "model.hidden_sizes"),
    ],
)
def test_bad_set_items(item, match):
    with pytest.raises(ConfigError, match=match) as e:
        resolve_config("ppo", "CartPole-v1", sets=[item])
    assert "\n" not in str(e.value)


def test_ints_accept_integral_floats_and_bools_are_strict():
    cfg = resolve_config("ppo", "CartPole-v1", sets=["steps=2e4", "ppo.gamma=1"])
    assert cfg.steps == 20000 and isinstance(cfg.steps, int)
    assert cfg.algo_params.gamma == 1.0 and isinstance(cfg.algo_params.gamma, float)


def test_configs_are_independent():
    a = resolve_config("ppo", "CartPole-v1", sets=["model.hidden_sizes=[8]"])
    b = resolve_config("ppo", "CartPole-v1")
    assert a.model.hidden_sizes == [8] and b.model.hidden_sizes == [64, 64]
    assert dataclasses.replace(b) == b
