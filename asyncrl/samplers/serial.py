"""Serial sampler: envs and agent in this process, one vector of envs (debugging, tiny envs).

Owns the [T, B] Samples buffer (allocated once, written in place); the loop is the Collector's.
"""

from __future__ import annotations

from asyncrl.data import buffer_from_example
from asyncrl.envs import EnvSpec, make_vec_env
from asyncrl.samplers.base import SampleBatch, Sampler, samples_example
from asyncrl.samplers.collector import Collector


class SerialSampler(Sampler):
    def __init__(self, env_spec: EnvSpec, num_envs: int, horizon: int, seed: int = 0):
        self.env = make_vec_env(env_spec, num_envs, seed=seed, training=True)
        self.num_envs, self.horizon = num_envs, horizon
        self.obs_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.agent = None

    def initialize(self, agent) -> None:
        self.agent = agent
        example = samples_example(
            self.env.obs_example, self.env.action_example, agent.info_example()
        )
        self.buf = buffer_from_example(example, (self.horizon, self.num_envs))
        self.collector = Collector(self.env, agent)
        self.collector.reset(self.env.action_example)

    @property
    def obs(self):
        return self.collector.obs

    def obtain(self) -> SampleBatch:
        final_obs, bootstrap, episodes = self.collector.collect(self.buf)
        return SampleBatch(
            samples=self.buf,
            bootstrap_value=bootstrap,
            next_observation=self.collector.obs,
            final_observations=final_obs,
            episodes=episodes,
            env_steps=self.horizon * self.num_envs,
        )

    def close(self) -> None:
        self.env.close()
