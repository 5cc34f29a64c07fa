"""Run configuration (typed dataclasses <-> TOML) and the preset TOML files (per algo and env family,
and per algo and env id under envs/)."""

from asyncrl.configs.config import (
    ConfigError,
    LogConfig,
    SamplerConfig,
    TrainConfig,
    budget_warnings,
    list_env_presets,
    list_presets,
    load_config,
    resolve_config,
)

__all__ = [
    "ConfigError",
    "LogConfig",
    "SamplerConfig",
    "TrainConfig",
    "budget_warnings",
    "list_env_presets",
    "list_presets",
    "load_config",
    "resolve_config",
]
