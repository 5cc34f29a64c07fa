"""Runners: the training loop (sample -> optimize -> log -> evaluate -> checkpoint), evaluation."""

from asyncrl.runners.evaluation import evaluate
from asyncrl.runners.train import TrainResult, train

__all__ = ["TrainResult", "evaluate", "train"]
