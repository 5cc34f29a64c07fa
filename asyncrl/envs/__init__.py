"""Environments: plain-data env specs, gymnasium/Atari/MuJoCo construction, vector of envs
(gymnasium, or a native vectorized backend via ``make_vec_env``)."""

from asyncrl.envs import memory  # noqa: F401 - registers the memory tasks (asyncrl/...)
from asyncrl.envs.native import make_vec_env
from asyncrl.envs.spaces import space_example, space_to_tree, tree_to_space
from asyncrl.envs.spec import EnvError, EnvSpec, env_family, make_env, validate_env_id
from asyncrl.envs.vector import EpisodeStats, VecEnv

__all__ = [
    "EnvError",
    "EnvSpec",
    "EpisodeStats",
    "VecEnv",
    "env_family",
    "make_env",
    "make_vec_env",
    "space_example",
    "space_to_tree",
    "tree_to_space",
    "validate_env_id",
]
