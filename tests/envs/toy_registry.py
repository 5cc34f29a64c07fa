"""Imported by the ``EnvSpec(imports=[...])`` test: importing it registers an env id."""

import gymnasium as gym

REGISTERED_ID = "AsyncrlToyRegistered-v0"

if REGISTERED_ID not in gym.registry:
    gym.register(REGISTERED_ID, entry_point="tests.envs.toy_envs:ToyEnv", max_episode_steps=3)
