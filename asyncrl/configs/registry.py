"""The algorithms as configs see them: name -> hyperparameter dataclass and kind.

Owns the table that config.py reads to build, validate and load an algorithm's settings, and that
the samplers read an algorithm's kind from. Must not import ``asyncrl.algos`` (configs sit below
the algorithms): ``asyncrl.algos.register_algo`` fills it, and ``import asyncrl`` imports the
algorithms, so every entry point that can build a config finds them registered.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("onpolicy", "offpolicy")


@dataclass(frozen=True)
class AlgoConfigEntry:
    name: str
    config_cls: type  # the hyperparameter dataclass, written under [name] in config.toml
    kind: str  # "onpolicy" | "offpolicy"


ALGO_CONFIGS: dict[str, AlgoConfigEntry] = {}


def register_algo_config(name: str, config_cls: type, kind: str) -> None:
    """Make ``name`` known to configs (called by ``asyncrl.algos.register_algo``)."""
    if kind not in KINDS:
        raise ValueError(f"algorithm {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    ALGO_CONFIGS[name] = AlgoConfigEntry(name, config_cls, kind)


def valid_algos() -> str:
    """The registered names, for one-line errors: 'a2c, c51, ...'."""
    return ", ".join(sorted(ALGO_CONFIGS)) or "none registered (import asyncrl.algos first)"
