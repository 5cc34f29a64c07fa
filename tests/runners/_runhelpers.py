"""Helpers for the training-loop tests (imported by name: this directory is on sys.path under
pytest's default import mode)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch

from asyncrl.cli import main
from asyncrl.logging.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

# 8 envs x 32 steps = 256 env steps per batch (the ppo_classic preset); short evaluations.
QUICK = ["--no-progress", "--set", "log.eval_episodes=2"]


def train_cli(*argv) -> int:
    return main(["train", *map(str, argv), *QUICK])


def resume_cli(run_dir, steps) -> int:
    return main(["train", "--resume", str(run_dir), "--steps", str(steps), "--no-progress"])


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "progress.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def latest(run_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir))


def copy_run(src: Path, dst: Path, keep_latest_only: bool = True) -> Path:
    shutil.copytree(src, dst)
    if keep_latest_only:
        for p in list_checkpoints(dst)[:-1]:
            p.unlink()
    return dst


def tensors_equal(a, b) -> bool:
    """Deep equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(tensors_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b
