"""Fixtures for the training-loop tests: tiny PPO runs on CartPole through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from _runhelpers import train_cli


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """PPO on CartPole for 1024 env steps (4 batches of 256, 20 updates each)."""
    run_dir = tmp_path_factory.mktemp("runners") / "base"
    assert train_cli("ppo", "CartPole-v1", "--steps", 1024, "--run-dir", run_dir) == 0
    return run_dir
