"""Algorithms and their registry: name -> (hyperparameter dataclass, agent factory, algorithm).

Each algorithm's update lives in its own file; this registry is how the CLI and the runner find
them. Register a new one with ``register_algo``; it also tells configs (``configs/registry.py``:
name, hyperparameter dataclass, kind), which never imports this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncrl.algos.a2c import A2C, A2CConfig
from asyncrl.algos.appo import APPO, APPOConfig
from asyncrl.algos.c51 import C51, C51Config, RainbowConfig
from asyncrl.algos.ddpg import DDPG, DDPGConfig
from asyncrl.algos.dqn import DQN, DQNConfig, make_dqn_agent
from asyncrl.algos.ppo import PPO, PPOConfig
from asyncrl.algos.r2d1 import R2D1, R2D1Config, make_r2d1_agent
from asyncrl.algos.sac import SAC, SACConfig, make_sac_agent
from asyncrl.algos.td3 import TD3, TD3Config, make_td3_agent
from asyncrl.configs.registry import register_algo_config


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
    # configs sits below the algorithms and never imports them: it learns the name, the
    # hyperparameter dataclass and the kind from its own registry, filled here.
    register_algo_config(entry.name, entry.config_cls, entry.kind)
    ALGOS[entry.name] = entry


def _pg_agent(obs_space, action_space, model_config, device, algo_config):
    import torch

    from asyncrl.agents.pg import PgAgent

    # The per-env sampling streams derive from the run's seed, identical in every process.
    if getattr(model_config, "core", "none") != "none":
        from asyncrl.agents.recurrent import RecurrentPgAgent

        return RecurrentPgAgent(
            obs_space, action_space, model_config, device, seed=torch.initial_seed()
        )
    return PgAgent(obs_space, action_space, model_config, device, seed=torch.initial_seed())


register_algo(
    AlgoEntry("ppo", PPOConfig, "onpolicy", _pg_agent, PPO, "Proximal Policy Optimization")
)
register_algo(
    AlgoEntry(
        "ppo_lstm", PPOConfig, "onpolicy", _pg_agent, PPO, "PPO with an LSTM core (model.core)"
    )
)
register_algo(
    AlgoEntry("appo", APPOConfig, "onpolicy", _pg_agent, APPO, "Asynchronous PPO (V-trace targets)")
)
register_algo(
    AlgoEntry(
        "dqn",
        DQNConfig,
        "offpolicy",
        make_dqn_agent,
        DQN,
        "Deep Q-Network (double, dueling, PER, n-step)",
    )
)
register_algo(
    AlgoEntry("c51", C51Config, "offpolicy", make_dqn_agent, C51, "Categorical DQN (C51)")
)
register_algo(
    AlgoEntry(
        "rainbow",
        RainbowConfig,
        "offpolicy",
        make_dqn_agent,
        C51,
        "Rainbow (C51+double+dueling+PER+n-step+noisy)",
    )
)
register_algo(
    AlgoEntry(
        "r2d1",
        R2D1Config,
        "offpolicy",
        make_r2d1_agent,
        R2D1,
        "Recurrent DQN from sequence replay (R2D2 without distributed actors)",
    )
)
register_algo(AlgoEntry("sac", SACConfig, "offpolicy", make_sac_agent, SAC, "Soft Actor-Critic"))
register_algo(AlgoEntry("td3", TD3Config, "offpolicy", make_td3_agent, TD3, "Twin Delayed DDPG"))
register_algo(
    AlgoEntry(
        "ddpg", DDPGConfig, "offpolicy", make_td3_agent, DDPG, "Deep Deterministic Policy Gradient"
    )
)
register_algo(AlgoEntry("a2c", A2CConfig, "onpolicy", _pg_agent, A2C, "Advantage Actor-Critic"))

__all__ = [
    "A2C",
    "ALGOS",
    "APPO",
    "APPOConfig",
    "C51",
    "DQN",
    "PPO",
    "A2CConfig",
    "AlgoEntry",
    "C51Config",
    "DQNConfig",
    "PPOConfig",
    "R2D1",
    "R2D1Config",
    "RainbowConfig",
    "register_algo",
    "DDPG",
    "DDPGConfig",
    "SAC",
    "SACConfig",
    "TD3",
    "TD3Config",
]
