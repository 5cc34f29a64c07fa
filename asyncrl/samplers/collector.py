"""The step loop shared by every sampler that runs envs and an agent in one process (serial
sampler, parallel workers): step a VecEnv T times with the agent, writing into a [T, b] view of
a Samples buffer in place. Owns the loop; knows nothing of processes or sockets."""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncrl.data import tree_map
from asyncrl.envs import EpisodeStats, VecEnv


class Collector:
    def __init__(self, env: VecEnv, agent, env_ids: np.ndarray | None = None):
        self.env, self.agent = env, agent
        self.env_ids = np.arange(env.num_envs) if env_ids is None else np.asarray(env_ids)
        self.obs = None
        self.prev_action = None

    def reset(self, action_example) -> None:
        self.obs = self.env.reset()
        self.prev_action = np.zeros(
            (self.env.num_envs, *np.shape(action_example)), np.asarray(action_example).dtype
        )

    def collect(self, buf) -> tuple[list[tuple[int, int, Any]], np.ndarray | None, EpisodeStats]:
        """Fill ``buf`` ([T, b] Samples) in place. Returns (final observations of truncated
        steps as (t, b, obs), value of the observation after the last step (or None), episodes).
        """
        agent, env = self.agent, self.env
        horizon = buf.env.reward.shape[0]
        final_obs: list[tuple[int, int, Any]] = []
        timeout_value = buf.env.env_info.timeout_value
        timeout_value[:] = 0
        has_value = hasattr(agent, "value")
        on_episode_end = getattr(agent, "on_episode_end", None)
        observe = getattr(agent, "observe", None)  # recurrent agents: the previous reward
        recurrent = getattr(agent, "recurrent", False)
        for t in range(horizon):
            buf.env.observation[t] = self.obs
            action, info = agent.step(self.obs, self.env_ids)
            buf.agent.action[t] = action
            buf.agent.prev_action[t] = self.prev_action
            if info is not None:
                buf.agent.agent_info[t] = info
            self.obs, reward, terminated, truncated, fo = env.step(action)
            buf.env.reward[t] = reward
            buf.env.terminated[t] = terminated
            buf.env.truncated[t] = truncated
            done = terminated | truncated
            if observe is not None:
                observe(reward, self.env_ids)
            if done.any():
                self.prev_action = np.array(action, copy=True)
                self.prev_action[done] = 0
                if on_episode_end is not None:  # per-env exploration / recurrent state
                    on_episode_end(done, self.env_ids)
            else:
                self.prev_action = action
            for b, o in fo:
                final_obs.append((t, b, o))
            if fo and recurrent and has_value:  # from the state the episode ended with
                ids = self.env_ids[[b for b, _ in fo]]
                stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, o in fo])
                for (b, _), v in zip(fo, agent.value(stacked, ids, final=True)):
                    timeout_value[t, b] = v
        if final_obs and has_value and not recurrent:
            stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in final_obs])
            values = agent.value(stacked)
            for (t, b, _), v in zip(final_obs, values):
                timeout_value[t, b] = v
        if not has_value:
            bootstrap = None
        elif recurrent:  # from the envs' current states
            bootstrap = agent.value(self.obs, self.env_ids)
        else:
            bootstrap = agent.value(self.obs)
        return final_obs, bootstrap, env.pop_episode_stats()
