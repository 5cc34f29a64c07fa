"""EnvSpec as plain data, env id resolution (registered ids, ``module:Class``, ``imports``)."""

from __future__ import annotations

import sys

import gymnasium as gym
import pytest
import tomli_w

from asyncrl.envs import EnvError, EnvSpec, env_family, make_env, validate_env_id

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def test_spec_round_trips_through_dict_and_toml():
    spec = EnvSpec(
        id="tests.envs.toy_envs:ToyEnv",
        kwargs={"length": 7},
        family="classic",
        imports=["tests.envs.toy_registry"],
        max_episode_steps=4,
        frame_skip=2,
        clip_reward=False,
    )
    d = spec.to_dict()
    assert d["id"] == "tests.envs.toy_envs:ToyEnv" and d["kwargs"] == {"length": 7}
    assert EnvSpec.from_dict(d) == spec
    # plain data: survives TOML (the run directory's config.toml) unchanged
    assert EnvSpec.from_dict(tomllib.loads(tomli_w.dumps(d))) == spec


def test_unknown_id_suggests_close_match():
    with pytest.raises(EnvError, match=r"unknown env id 'CartPol-v1'.*did you mean.*CartPole-v1"):
        validate_env_id(EnvSpec(id="CartPol-v1"))


def test_unknown_id_without_close_match_is_one_line():
    with pytest.raises(EnvError) as e:
        validate_env_id(EnvSpec(id="Zzqx-v9"))
    assert "\n" not in str(e.value) and "did you mean" not in str(e.value)


def test_bad_module_and_class_are_clear_errors():
    with pytest.raises(EnvError, match="cannot import module 'tests.envs.nope'"):
        validate_env_id(EnvSpec(id="tests.envs.nope:Env"))
    with pytest.raises(EnvError, match="has no 'Nope'"):
        validate_env_id(EnvSpec(id="tests.envs.toy_envs:Nope"))
    with pytest.raises(EnvError, match="cannot import env module"):
        validate_env_id(EnvSpec(id="CartPole-v1", imports=["tests.envs.nope"]))


def test_bad_env_kwargs_are_one_line_error():
    with pytest.raises(EnvError, match="cannot build env"):
        make_env(EnvSpec(id="tests.envs.toy_envs:ToyEnv", kwargs={"no_such_arg": 1}))


def test_module_class_user_env():
    spec = EnvSpec(id="tests.envs.toy_envs:ToyEnv", kwargs={"length": 3})
    assert validate_env_id(spec) == "classic"
    env = make_env(spec)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,) and env.unwrapped.length == 3


def test_module_class_with_time_limit():
    env = make_env(
        EnvSpec(id="tests.envs.toy_envs:ToyEnv", kwargs={"length": 10}, max_episode_steps=2)
    )
    env.reset(seed=0)
    assert env.step(0)[3] is False
    _, _, terminated, truncated, _ = env.step(0)
    assert truncated and not terminated


def test_imports_register_an_id():
    from tests.envs.toy_registry import REGISTERED_ID

    # start from a clean slate so the test shows that ``imports`` does the registering
    gym.registry.pop(REGISTERED_ID, None)
    sys.modules.pop("tests.envs.toy_registry", None)
    with pytest.raises(EnvError, match="unknown env id"):
        validate_env_id(EnvSpec(id=REGISTERED_ID))
    spec = EnvSpec(id=REGISTERED_ID, imports=["tests.envs.toy_registry"])
    assert validate_env_id(spec) == "classic"
    env = make_env(spec)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(3)] == [False, False, True]  # registered time limit 3


@pytest.mark.parametrize(
    ("env_id", "family"),
    [("CartPole-v1", "classic"), ("ALE/Pong-v5", "atari"), ("HalfCheetah-v5", "mujoco")],
)
def test_family_detection(env_id, family):
    assert env_family(env_id) == family
    assert validate_env_id(EnvSpec(id=env_id)) == family


def test_explicit_family_is_validated():
    with pytest.raises(EnvError, match="unknown env family 'arcade'"):
        validate_env_id(EnvSpec(id="CartPole-v1", family="arcade"))
    with pytest.raises(EnvError, match="unknown env family 'arcade'"):
        validate_env_id(EnvSpec(id="tests.envs.toy_envs:ToyEnv", family="arcade"))


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(EnvError, match="unknown env spec key.*frameskip"):
        EnvSpec.from_dict({"id": "CartPole-v1", "frameskip": 4})
