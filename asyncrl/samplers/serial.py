"""Serial sampler: envs and agent in this process, one vector of envs (debugging, tiny envs).

Owns the step loop; preallocates the [T, B] Samples buffer once and writes it in place.
"""

from __future__ import annotations

import numpy as np

from asyncrl.data import buffer_from_example
from asyncrl.envs import EnvSpec, VecEnv
from asyncrl.samplers.base import SampleBatch, Sampler, samples_example


class SerialSampler(Sampler):
    def __init__(self, env_spec: EnvSpec, num_envs: int, horizon: int, seed: int = 0):
        self.env = VecEnv(env_spec, num_envs, seed=seed, training=True)
        self.num_envs, self.horizon = num_envs, horizon
        self.obs_space = self.env.observation_space
        self.action_space = self.env.action_space
        self.agent = None

    def initialize(self, agent) -> None:
        self.agent = agent
        info_example = agent.info_example()
        example = samples_example(self.env.obs_example, self.env.action_example, info_example)
        self.buf = buffer_from_example(example, (self.horizon, self.num_envs))
        self.obs = self.env.reset()
        self.prev_action = np.zeros_like(self.buf.agent.action[0])

    def obtain(self) -> SampleBatch:
        agent, env, buf = self.agent, self.env, self.buf
        final_obs = []
        timeout_value = buf.env.env_info.timeout_value
        timeout_value[:] = 0
        for t in range(self.horizon):
            buf.env.observation[t] = self.obs
            action, info = agent.step(self.obs)
            buf.agent.action[t] = action
            buf.agent.prev_action[t] = self.prev_action
            if info is not None:
                buf.agent.agent_info[t] = info
            self.obs, reward, terminated, truncated, fo = env.step(action)
            buf.env.reward[t] = reward
            buf.env.terminated[t] = terminated
            buf.env.truncated[t] = truncated
            self.prev_action = action
            if terminated.any() or truncated.any():
                self.prev_action = self.prev_action.copy()
                self.prev_action[terminated | truncated] = 0
            for b, o in fo:
                final_obs.append((t, b, o))
        if final_obs and hasattr(agent, "value"):
            from asyncrl.data import tree_map

            stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in final_obs])
            values = agent.value(stacked)
            for (t, b, _), v in zip(final_obs, values):
                timeout_value[t, b] = v
        bootstrap = agent.value(self.obs) if hasattr(agent, "value") else None
        return SampleBatch(
            samples=buf,
            bootstrap_value=bootstrap,
            next_observation=self.obs,
            final_observations=final_obs,
            episodes=env.pop_episode_stats(),
            env_steps=self.horizon * self.num_envs,
        )

    def close(self) -> None:
        self.env.close()
