"""Run configuration: TOML round trip, resolution order, presets by env family, validation.

Nothing here builds an environment: resolving a config only looks ids up in the registry."""

from __future__ import annotations

import dataclasses
import importlib

import gymnasium as gym
import pytest

from asyncrl.configs.config import (
    ENV_PRESET_DIR,
    ConfigError,
    TrainConfig,
    budget_warnings,
    config_from_dict,
    env_presets,
    list_env_presets,
    list_presets,
    load_config,
    parse_set,
    preset_changes,
    resolve_config,
    tomllib,
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
        (  # a classic-control id without a per-env preset (Acrobot-v1 has one now)
            "CartPole-v0",
            {"horizon": 32, "num_envs": 8, "epochs": 20, "lr": 1e-3, "normalize_obs": False},
        ),
        (
            "ALE/Pong-v5",
            {"horizon": 128, "num_envs": 8, "epochs": 4, "lr": 2.5e-4, "normalize_obs": False},
        ),
        (  # a MuJoCo id without a per-env preset (HalfCheetah-v5 has one now)
            "Pusher-v5",
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
    # No a2c_mujoco preset: the dataclass defaults (Hopper-v5 has a per-env a2c preset now).
    cfg = resolve_config("a2c", "Pusher-v5")
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


# -- per-env presets ------------------------------------------------------------------------------


def test_per_env_preset_is_picked_for_a_mujoco_v5_task():
    assert env_presets("td3")["Hopper-v5"] == ENV_PRESET_DIR / "td3" / "Hopper-v5.toml"
    cfg = resolve_config("td3", "Hopper-v5")
    assert cfg.preset == "td3_mujoco + td3/Hopper-v5"
    p = cfg.algo_params
    assert p.learning_starts == 10_000  # per-env (RL-Zoo), not td3_mujoco's 25k
    assert (p.actor_lr, p.critic_lr, p.hidden_sizes) == (1e-3, 1e-3, [400, 300])
    assert cfg.log.eval_every == 5000 and cfg.sampler.horizon == 1  # the family preset's
    cfg = resolve_config("td3", "InvertedPendulum-v5")  # an easy task: the authors' 1k start
    assert cfg.algo_params.learning_starts == 1000 and cfg.algo_params.actor_lr == 3e-4
    # a MuJoCo env without a per-env preset: the family preset alone
    cfg = resolve_config("td3", "Pusher-v5")
    assert cfg.preset == "td3_mujoco" and cfg.algo_params.learning_starts == 25_000
    # no preset at all (no a2c_mujoco, no per-env file): the dataclass defaults, preset ""
    assert resolve_config("a2c", "Pusher-v5").preset == ""
    # c51 and rainbow still read dqn's family file, and dqn's per-env files are dqn's only
    assert resolve_config("c51", "CartPole-v1").preset == "dqn_classic"
    cfg = resolve_config("c51", "MountainCar-v0")
    assert cfg.preset == "dqn_classic" and cfg.algo_params.v_max == 200.0
    assert resolve_config("dqn", "MountainCar-v0").preset == "dqn_classic + dqn/MountainCar-v0"


def test_per_env_preset_precedence(tmp_path):
    # family < per-env < config file < flags < --set
    family = resolve_config("td3", "Pusher-v5").algo_params
    per_env = resolve_config("td3", "Hopper-v5").algo_params
    assert family.learning_starts == 25_000 and per_env.learning_starts == 10_000
    f = tmp_path / "mine.toml"
    f.write_text("[td3]\nlearning_starts = 7000\nbatch_size = 100\n")
    cfg = resolve_config("td3", "Hopper-v5", config_file=str(f))
    assert (cfg.algo_params.learning_starts, cfg.algo_params.batch_size) == (7000, 100)
    cfg = resolve_config(
        "td3",
        "Hopper-v5",
        config_file=str(f),
        overrides={"steps": 3000},
        sets=["td3.learning_starts=500", "steps=4000"],
    )
    assert cfg.algo_params.learning_starts == 500 and cfg.steps == 4000
    assert cfg.algo_params.batch_size == 100 and cfg.algo_params.hidden_sizes == [400, 300]
    assert cfg.preset == "td3_mujoco + td3/Hopper-v5"  # the config file does not rename it
    # --set env.id picks that env's per-env preset; a forced other family skips it
    assert resolve_config("td3", "Pusher-v5", sets=["env.id=Hopper-v5"]).preset.endswith(
        "td3/Hopper-v5"
    )
    assert resolve_config("ppo", "Hopper-v5", sets=["env.family=classic"]).preset == "ppo_classic"
    with pytest.raises(ConfigError, match="preset"):
        resolve_config("td3", "Hopper-v5", sets=["preset=td3_classic"])


def test_an_env_id_with_a_slash_finds_its_per_env_file(tmp_path, monkeypatch):
    """ALE/Pong-v5 -> envs/ALGO/ALE/Pong-v5.toml (a temporary preset tree, not the package's)."""
    from asyncrl.configs import config

    (tmp_path / "dqn" / "ALE").mkdir(parents=True)
    (tmp_path / "dqn" / "ALE" / "Pong-v5.toml").write_text("[dqn]\nlearning_starts = 12345\n")
    monkeypatch.setattr(config, "ENV_PRESET_DIR", tmp_path)
    assert config.list_env_presets() == {"dqn": ["ALE/Pong-v5"]}
    cfg = resolve_config("dqn", "ALE/Pong-v5")
    assert cfg.preset == "dqn_atari + dqn/ALE/Pong-v5"
    assert cfg.algo_params.learning_starts == 12345 and cfg.algo_params.buffer_size == 1_000_000


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_every_per_env_preset_loads_validates_and_takes_effect():
    """Each file names a registered algorithm and env id, holds only that algorithm's table
    (another algorithm's would be skipped silently), and every value it sets is in the resolved
    config (types fit, no key is unknown, nothing after it overrides it). No env is built."""
    from asyncrl.algos import ALGOS

    presets = list_env_presets()
    assert {"ppo", "a2c", "dqn", "sac", "td3", "ddpg"} <= set(presets)
    mujoco = {"HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid", "Swimmer"}
    for algo in ("sac", "td3", "ddpg", "ppo"):
        assert {f"{e}-v5" for e in mujoco} <= set(presets[algo]), algo
    count = 0
    for algo, env_ids in presets.items():
        assert algo in ALGOS, f"envs/{algo}: no such algorithm"
        for env_id in env_ids:
            assert env_id in gym.registry, f"envs/{algo}/{env_id}.toml: no such env id"
            d = tomllib.loads(env_presets(algo)[env_id].read_text())
            tables = {k for k, v in d.items() if isinstance(v, dict)}
            assert tables <= {algo, "sampler", "model", "log", "env"}, (algo, env_id, tables)
            cfg = resolve_config(algo, env_id)
            assert cfg.preset.endswith(f"{algo}/{env_id}"), cfg.preset
            resolved = _flat(cfg.to_dict())
            for key, value in _flat(d).items():
                assert resolved[key] == value, (algo, env_id, key)
            assert budget_warnings(cfg) == [], (algo, env_id)
            count += 1
    assert count >= 40


# -- budget warnings ------------------------------------------------------------------------------


def test_budget_warning_for_learning_starts_beyond_the_run():
    cfg = resolve_config("td3", "Hopper-v5", overrides={"steps": 5000})
    (w,) = budget_warnings(cfg)
    assert "td3.learning_starts = 10000 >= steps = 5000" in w
    assert "--set td3.learning_starts=N" in w and "\n" not in w
    cfg = resolve_config("sac", "Pusher-v5", sets=["steps=10000"])  # equal: still nothing learnt
    assert any("sac.learning_starts = 10000 >= steps = 10000" in w for w in budget_warnings(cfg))
    assert budget_warnings(resolve_config("td3", "Hopper-v5", sets=["steps=20000"])) == []
    assert budget_warnings(resolve_config("ppo", "CartPole-v1")) == []  # no learning_starts


def test_budget_warnings_for_eval_checkpoint_and_batch():
    cfg = resolve_config("td3", "Hopper-v5", sets=["steps=3000", "td3.learning_starts=100"])
    (w,) = budget_warnings(cfg)  # td3_mujoco evaluates every 5000 steps
    assert "log.eval_every = 5000 > steps = 3000" in w and "--set log.eval_every=" in w
    cfg = resolve_config("ppo", "CartPole-v1", sets=["log.checkpoint_every=20000", "steps=10000"])
    (w,) = budget_warnings(cfg)
    assert "log.checkpoint_every = 20000 > steps = 10000" in w
    cfg = resolve_config("ppo", "CartPole-v1", sets=["log.eval_every=-1", "steps=5000"])
    assert budget_warnings(cfg) == []  # -1: never evaluates, nothing to warn about
    cfg = resolve_config("ppo", "Pusher-v5", sets=["steps=2000"])  # ppo_mujoco: 1 x 2048 steps
    (w,) = budget_warnings(cfg)
    assert "1 x 2048 = 2048 env steps" in w and "steps = 2000" in w


# -- the preset field in config.toml --------------------------------------------------------------


def test_preset_field_round_trips_and_old_files_load(tmp_path):
    cfg = resolve_config("td3", "Hopper-v5")
    path = tmp_path / "config.toml"
    cfg.save(path)
    assert 'preset = "td3_mujoco + td3/Hopper-v5"' in path.read_text()
    loaded = load_config(path)
    assert loaded == cfg and loaded.preset == "td3_mujoco + td3/Hopper-v5"
    assert config_from_dict(cfg.to_dict()).preset == cfg.preset
    # a config.toml written before the field existed
    d = cfg.to_dict()
    del d["preset"]
    import tomli_w

    path.write_text(tomli_w.dumps(d))
    old = load_config(path)
    assert old.preset == "" and old.algo_params == cfg.algo_params
    assert config_from_dict(d).preset == ""
    # reusing a run's config.toml with --config: the preset names this resolution's files
    cfg.save(path)
    again = resolve_config("td3", "Pusher-v5", config_file=str(path))
    assert again.preset == "td3_mujoco" and again.algo_params.learning_starts == 10_000


def test_preset_changes_names_the_files_and_the_settings():
    presets, changes = preset_changes("td3", "Hopper-v5")
    assert [n for n, _ in presets] == ["td3_mujoco", "td3/Hopper-v5"]
    by_key = {k: (default, value, src) for k, default, value, src in changes}
    assert by_key["td3.learning_starts"] == (25_000, 10_000, "td3/Hopper-v5")
    assert by_key["log.eval_every"] == (0, 5000, "td3_mujoco")
    assert "td3.tau" not in by_key  # set by the file, to the default: no change
    with pytest.raises(ConfigError, match="pppo"):
        preset_changes("pppo", "Hopper-v5")
