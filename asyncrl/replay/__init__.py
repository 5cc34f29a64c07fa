"""Replay buffers: uniform and prioritized (sum tree) over a [T, B] ring, n-step returns computed
at sample time, and frame-based storage of stacked Atari frames. Numpy inside; ``to_torch`` the
sampled batch at the edge."""

from asyncrl.replay.frame import FrameObservations, FrameReplay
from asyncrl.replay.prioritized import PrioritizedFrameReplay, PrioritizedReplay
from asyncrl.replay.sum_tree import SumTree
from asyncrl.replay.uniform import (
    ReplaySample,
    SlotStore,
    StepObservations,
    Transition,
    UniformReplay,
    as_transition,
)

__all__ = [
    "FrameObservations",
    "FrameReplay",
    "PrioritizedFrameReplay",
    "PrioritizedReplay",
    "ReplaySample",
    "SlotStore",
    "StepObservations",
    "SumTree",
    "Transition",
    "UniformReplay",
    "as_transition",
]
