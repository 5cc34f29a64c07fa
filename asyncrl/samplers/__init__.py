"""Samplers: one interface (base.Sampler) for serial, parallel, central and alternating modes."""

from asyncrl.samplers.base import (
    AgentSamples,
    EnvInfo,
    EnvSamples,
    SampleBatch,
    Sampler,
    Samples,
    samples_example,
)
from asyncrl.samplers.serial import SerialSampler

__all__ = [
    "AgentSamples",
    "EnvInfo",
    "EnvSamples",
    "SampleBatch",
    "Sampler",
    "Samples",
    "SerialSampler",
    "samples_example",
]
