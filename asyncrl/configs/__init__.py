"""Run configuration (typed dataclasses <-> TOML) and the preset TOML files per algo and family."""

from asyncrl.configs.config import (
    ConfigError,
    LogConfig,
    SamplerConfig,
    TrainConfig,
    list_presets,
    load_config,
    resolve_config,
)

__all__ = [
    "ConfigError",
    "LogConfig",
    "SamplerConfig",
    "TrainConfig",
    "list_presets",
    "load_config",
    "resolve_config",
]
