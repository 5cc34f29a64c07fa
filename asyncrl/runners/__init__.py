"""Runners: a run's life cycle (run.py), the training loops using it (sync_loop.py), the public
entry point ``train`` (train.py), evaluation."""

from asyncrl.runners.evaluation import evaluate
from asyncrl.runners.train import TrainResult, train

__all__ = ["TrainResult", "evaluate", "train"]
