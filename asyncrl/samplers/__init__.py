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


def make_runtime_sampler(cfg, seed: int = 0):
    """The parallel / central / alternating sampler (worker processes + coordinator); the
    asynchronous one (a learner process too) when ``sampler.asynchronous`` is set."""
    if cfg.sampler.asynchronous:
        from asyncrl.samplers.async_runtime import AsyncRuntimeSampler

        return AsyncRuntimeSampler(cfg, seed=seed)
    from asyncrl.samplers.runtime import RuntimeSampler

    return RuntimeSampler(cfg, seed=seed)


__all__ = [
    "AgentSamples",
    "EnvInfo",
    "EnvSamples",
    "SampleBatch",
    "Sampler",
    "Samples",
    "SerialSampler",
    "make_runtime_sampler",
    "samples_example",
]
