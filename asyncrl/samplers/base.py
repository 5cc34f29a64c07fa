"""The sampler interface every mode implements (serial, parallel, central, alternating), and the
Samples schema they all yield.

Samples have leading dims [T, B] (time, env):
``Samples(agent=AgentSamples(action, prev_action, agent_info),
          env=EnvSamples(observation, reward, terminated, truncated, env_info=EnvInfo(timeout_value)))``
``observation[t]`` is what the agent saw when choosing ``action[t]``; ``reward[t]``,
``terminated[t]``, ``truncated[t]`` are the outcome of that step. ``timeout_value[t, b]`` is the
agent's value of the env's final observation when env b was truncated at step t (zero
elsewhere), so learners bootstrap through time limits; ``SampleBatch.final_observations`` keeps
those observations themselves for learners that need them (replay).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asyncrl.data import namedarraytuple
from asyncrl.envs import EpisodeStats

Samples = namedarraytuple("Samples", ["agent", "env"])
AgentSamples = namedarraytuple("AgentSamples", ["action", "prev_action", "agent_info"])
EnvSamples = namedarraytuple(
    "EnvSamples", ["observation", "reward", "terminated", "truncated", "env_info"]
)
EnvInfo = namedarraytuple("EnvInfo", ["timeout_value"])


def samples_example(obs_example, action_example, info_example) -> Any:
    """One step of Samples, from which a [T, B] buffer is allocated."""
    return Samples(
        agent=AgentSamples(action_example, action_example, info_example),
        env=EnvSamples(
            obs_example,
            np.zeros((), np.float32),
            np.zeros((), bool),
            np.zeros((), bool),
            EnvInfo(np.zeros((), np.float32)),
        ),
    )


@dataclass
class SampleBatch:
    """One batch from a sampler: Samples [T, B] plus what does not fit the [T, B] grid."""

    samples: Any  # Samples [T, B] (numpy; valid until the next obtain())
    bootstrap_value: np.ndarray | None  # [B] value of the observation after the last step
    next_observation: Any  # [B, ...] observation after the last step
    final_observations: list[tuple[int, int, Any]] = field(default_factory=list)  # (t, b, obs)
    episodes: EpisodeStats = field(default_factory=lambda: EpisodeStats([], []))
    env_steps: int = 0  # T * B
    # Per column [B] (int64): the learner's policy version minus the version that acted for
    # that column's steps, set by the asynchronous runtime; None in synchronous modes (lag 0).
    policy_lag: np.ndarray | None = None
    # Who collected it: "" for the run's own envs (every synchronous batch); in asynchronous
    # runs a remote worker's registration, whose steps an off-policy replay keeps in their own
    # ring (asyncrl.replay.sources).
    source: str = ""


class Sampler(ABC):
    """Collects batches of T steps from B envs with the current policy.

    Life cycle: ``initialize(agent)`` once, ``obtain()`` per iteration, ``sync(agent)`` after
    the learner changes the parameters (a no-op where the sampler shares the agent object),
    ``close()`` at the end (also as a context manager).
    """

    horizon: int  # T
    num_envs: int  # B
    obs_space: Any
    action_space: Any

    @abstractmethod
    def initialize(self, agent) -> None: ...

    @abstractmethod
    def obtain(self) -> SampleBatch: ...

    def sync(self, agent) -> None:  # noqa: B027 - default: shares the learner's agent
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027
        pass

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
