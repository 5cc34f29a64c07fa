"""Training's public entry point: ``train(cfg)``, or ``train(resume=RUN_DIR)`` to continue a run.

Owns choosing the loop that runs a config and building its sampler (``make_sampler``). The run's
life cycle (run directory, resume, seeding, signals, progress rows, schedules, final cleanup) is
runners/run.py's; the synchronous loop is runners/sync_loop.py. Must not know a loss
(algorithms) or a socket (runtime).

Resume restores the agent (parameters and normaliser statistics), the optimizer, the counters
(env steps, updates, episodes, elapsed time), the recent-episode window and the RNG states
(python, numpy, torch, and the agent's own acting streams where it has ``rng_state``).
Environments themselves cannot be snapshotted in general: a resumed run starts fresh episodes
with env seeds offset by the env steps already done. Rows of progress.csv (and TensorBoard
events) past the checkpoint being resumed are dropped, so the curve stays monotonic in env steps.

Stopping: the first SIGTERM or SIGINT (Ctrl-C) stops the run after the current batch, with a
last progress row and a final checkpoint; a second one stops it at once; signals during the final
cleanup are only acknowledged; an error is logged, a final checkpoint written, and the error
raised. The details are in runners/run.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from asyncrl.configs.config import ConfigError, TrainConfig

# save_checkpoint and evaluate are looked up on this module at each train() call and handed to
# the run: bench/ and the runtime tests wrap them here (as they wrap make_sampler).
from asyncrl.logging.checkpoint import save_checkpoint
from asyncrl.runners.async_loop import async_loop
from asyncrl.runners.evaluation import evaluate
from asyncrl.runners.run import Run, StopTraining, TrainResult, default_run_dir
from asyncrl.runners.run import seed_everything as _seed_everything  # noqa: F401 (tests/runtime)
from asyncrl.runners.sync_loop import SamplerFactory, sync_loop

if TYPE_CHECKING:
    from asyncrl.samplers.base import Sampler

__all__ = [
    "LOOPS",
    "StopTraining",
    "TrainResult",
    "default_run_dir",
    "make_sampler",
    "train",
]


def make_sampler(cfg: TrainConfig, seed_offset: int = 0):
    mode = cfg.sampler.mode
    seed = cfg.seed + seed_offset
    if mode == "serial":
        from asyncrl.samplers.serial import SerialSampler

        return SerialSampler(cfg.env, cfg.sampler.num_envs, cfg.sampler.horizon, seed=seed)
    try:
        from asyncrl.samplers import make_runtime_sampler  # provided by the runtime
    except ImportError:
        raise ConfigError(f"sampler mode {mode!r} is not available in this build") from None
    return make_runtime_sampler(cfg, seed=seed)


# The loops a run can be trained with: each takes (run, sampler or sampler factory) and returns
# the TrainResult. The asynchronous loop (the learner in its own process, reporting back after
# each update) is added here, and chosen in train() when the config asks for it.
LOOPS: dict[str, Callable[[Run, Sampler | SamplerFactory], TrainResult]] = {
    "sync": sync_loop,
    "async": async_loop,
}


def train(
    cfg: TrainConfig | None = None,
    resume: str | Path | None = None,
    steps: int | None = None,
    progress: bool | None = None,
    *,
    sampler: Sampler | SamplerFactory | None = None,
) -> TrainResult:
    """Train per ``cfg`` (or resume the run in directory ``resume``, optionally with a new total
    ``steps``). Returns the trained agent and summary figures.

    ``sampler``: the sampler to train with (the run initializes and closes it), or a factory
    called as ``sampler(cfg, seed_offset=env_steps)``; default ``make_sampler``."""
    run = Run.open(cfg, resume, steps, progress, evaluate=evaluate, save_checkpoint=save_checkpoint)
    loop = LOOPS["async" if run.cfg.sampler.asynchronous else "sync"]
    return loop(run, sampler if sampler is not None else make_sampler)
