"""Algorithms and their registry: name -> (hyperparameter dataclass, agent factory, algorithm).

Each algorithm's update lives in its own file; this registry is how the CLI, configs and the
runner find them. Register a new one with ``register_algo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncrl.algos.a2c import A2C, A2CConfig
from asyncrl.algos.ppo import PPO, PPOConfig


@dataclass(frozen=True)
class AlgoEntry:
    name: str
    config_cls: type  # the hyperparameter dataclass
    kind: str  # "onpolicy" | "offpolicy"
    make_agent: Callable[..., Any]  # (obs_space, action_space, model_config, device, algo_config)
    make_algo: Callable[..., Any]  # (agent, algo_config, seed)
    description: str = ""


ALGOS: dict[str, AlgoEntry] = {}


def register_algo(entry: AlgoEntry) -> None:
    ALGOS[entry.name] = entry


def _pg_agent(obs_space, action_space, model_config, device, algo_config):
    from asyncrl.agents.pg import PgAgent

    return PgAgent(obs_space, action_space, model_config, device)


register_algo(AlgoEntry("ppo", PPOConfig, "onpolicy", _pg_agent, PPO, "Proximal Policy Optimization"))
register_algo(AlgoEntry("a2c", A2CConfig, "onpolicy", _pg_agent, A2C, "Advantage Actor-Critic"))

__all__ = ["A2C", "ALGOS", "PPO", "A2CConfig", "AlgoEntry", "PPOConfig", "register_algo"]
