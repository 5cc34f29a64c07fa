"""The life cycle of one training run, shared by every training loop (synchronous or not).

Owns: the config against a run to resume (the checks, one-line ConfigErrors), the run directory
(config.toml, train.log, progress.csv, tb/, checkpoints/), seeding and this process's RNG state,
the counters (env steps, elapsed time, finished episodes, last evaluation), progress rows and the
live display, the evaluation and checkpoint schedules, signals and the final cleanup. Must not
touch the sampler, agent or algorithm: a loop hands in values and callables, so its learner may
live in another process. No loss, no socket.

A loop uses it like this (runners/sync_loop.py is the whole synchronous one)::

    run = Run.open(cfg, resume=resume_dir)     # checks, run dir, config.toml, seed, train.log
    # ... build the loop's pieces; on resume restore them from run.resumed (the checkpoint) ...

    def checkpoint_state() -> dict:            # the loop's keys of a checkpoint
        return {"agent": agent.state_tensors(), "algo": algo.state_dict()}

    with run.running(checkpoint_state, columns=lambda: {"updates": algo.updates},
                     close=[sampler.close]):
        while not run.should_stop:
            batch = sampler.obtain()
            run.add_steps(batch.env_steps, batch.episodes)  # counted before the update
            info = algo.optimize(batch, progress=run.fraction_done)
            sampler.sync(agent)
            run.record(info, agent)            # an evaluation when due, a progress row, display
            run.maybe_checkpoint()
    return run.result(agent)

Resume: Run restores the counters (env steps, elapsed time, the recent-episode window, the last
evaluation) and this process's RNG states (python, numpy, torch; on entering ``running``, after
the loop has built its pieces); the loop restores its own keys from ``run.resumed``. Rows of
progress.csv (and TensorBoard events) past the checkpoint being resumed are dropped, so the curve
stays monotonic in env steps.

Stopping (``running``): the first SIGTERM or SIGINT asks the loop to stop after the current batch
(``should_stop``), write a last progress row and a final checkpoint; a second one stops at once by
raising StopTraining (the final checkpoint is still written, but may sit in the middle of an
update). Once the final cleanup (checkpoint, then the loop's ``close`` callables: workers,
services) has begun, further signals are only acknowledged: cutting it short would leave sockets
and processes behind. The previous handlers are restored at the end. An error is logged, a final
checkpoint written, and the error raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asyncrl.algos import ALGOS
from asyncrl.configs.config import (
    ConfigError,
    TrainConfig,
    budget_warnings,
    load_config,
    validate,
)
from asyncrl.logging.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from asyncrl.logging.progress import EpisodeTracker, LiveDisplay, ProgressWriter, setup_file_logger
from asyncrl.runners.evaluation import eval_limits, evaluate

log = logging.getLogger("asyncrl")


@dataclass
class TrainResult:
    agent: Any
    run_dir: Path
    env_steps: int
    return_mean: float
    eval_return_mean: float
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that stopped the run (SIGTERM, SIGINT), if any


class StopTraining(KeyboardInterrupt):
    """Raised by a second SIGTERM/SIGINT so the loop stops at once (after a final checkpoint).
    A KeyboardInterrupt, so that code catching ``Exception`` on the way does not swallow it."""


def default_run_dir(cfg: TrainConfig) -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.env.id)
    return Path("runs") / f"{cfg.algo}_{env}_{time.strftime('%Y%m%d-%H%M%S')}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def resolve(
    cfg: TrainConfig | None,
    resume: str | Path | None = None,
    steps: int | None = None,
    progress: bool | None = None,
) -> tuple[TrainConfig, Path, dict | None]:
    """The config, the run directory and the checkpoint to resume (None: a new run), after every
    check a bad config or run directory fails; nothing is written yet."""
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
        if not (run_dir / "config.toml").exists():
            raise ConfigError(f"{str(run_dir)!r} has no config.toml: not a run directory")
        cfg = load_config(run_dir / "config.toml")
        ckpt = load_checkpoint(latest_checkpoint(run_dir), map_location="cpu")
    elif cfg is None:
        raise ValueError("train() needs a config or a run directory to resume")
    if steps is not None:
        cfg.steps = int(steps)
    if progress is not None:
        cfg.log.progress = progress
    if cfg.algo not in ALGOS:
        raise ConfigError(f"unknown algorithm {cfg.algo!r}; valid: {', '.join(sorted(ALGOS))}")
    validate(cfg)  # a config built in Python gets the same checks as one from the CLI
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available")
    if cfg.sampler.mode != "serial":  # checked here, before the run directory is made
        import asyncrl.samplers as samplers_pkg

        if not hasattr(samplers_pkg, "make_runtime_sampler"):
            raise ConfigError(f"sampler mode {cfg.sampler.mode!r} is not available in this build")

    run_dir = Path(resume) if resume is not None else Path(cfg.run_dir or default_run_dir(cfg))
    if (
        resume is None
        and run_dir.is_dir()
        and ((run_dir / "progress.csv").exists() or list_checkpoints(run_dir))
    ):
        raise ConfigError(
            f"run directory {str(run_dir)!r} already holds a run; resume it with --resume "
            "or choose another --run-dir"
        )
    return cfg, run_dir, ckpt


class Run:
    """One run's directory, counters, schedules, progress rows, signals and final cleanup.

    ``evaluate`` and ``save_checkpoint`` are the functions it calls for an evaluation and a
    checkpoint (same signatures as ``runners.evaluation.evaluate`` and
    ``logging.checkpoint.save_checkpoint``): a seam for tests and benchmarks.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        resumed: dict | None = None,
        *,
        evaluate: Callable[..., np.ndarray] = evaluate,
        save_checkpoint: Callable[..., Path] = save_checkpoint,
    ):
        self.cfg = cfg
        self.run_dir = run_dir
        self.resumed = resumed  # the checkpoint this run continues (the loop restores its keys)
        self._evaluate = evaluate
        self._save_checkpoint = save_checkpoint
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.run_dir = str(run_dir)
        cfg.save(run_dir / "config.toml")
        setup_file_logger(run_dir)

        self.env_steps = int(resumed["env_steps"]) if resumed else 0
        self.episodes = EpisodeTracker(100)
        self.time_offset = 0.0  # elapsed seconds of the runs before this one (resume)
        self.last_eval = float("nan")
        if resumed:
            self.episodes.load_state_dict(resumed["episodes"])
            self.time_offset = float(resumed["time_s"])
            self.last_eval = float(resumed.get("eval_return_mean", float("nan")))

        total, every = cfg.steps, cfg.log
        self._eval_every = every.eval_every if every.eval_every != 0 else max(total // 10, 1)
        self._ckpt_every = (
            every.checkpoint_every if every.checkpoint_every > 0 else max(total // 10, 1)
        )
        # The next env steps at which an evaluation (None: never) and a checkpoint are due.
        self.next_eval: int | None = None
        if self._eval_every > 0:
            self.next_eval = (self.env_steps // self._eval_every + 1) * self._eval_every
        self.next_checkpoint = (self.env_steps // self._ckpt_every + 1) * self._ckpt_every
        cap, budget = eval_limits(cfg.env, every.eval_episodes, max(self._eval_every, 0))
        self._eval_cap = every.eval_max_episode_steps or cap
        self._eval_budget = every.eval_max_steps or budget

        self.interrupted = False
        self._signal: int | None = None  # the signal asking the loop to stop, once one came
        # _cleanup: the final checkpoint and the shutdown of workers have begun, and no signal
        # may cut them short (that left sockets and processes behind); _raised: StopTraining
        # was raised once already (a third signal must not interrupt the handling of the second).
        self._cleanup = False
        self._raised = False

    @classmethod
    def open(
        cls,
        cfg: TrainConfig | None = None,
        resume: str | Path | None = None,
        steps: int | None = None,
        progress: bool | None = None,
        *,
        evaluate: Callable[..., np.ndarray] = evaluate,
        save_checkpoint: Callable[..., Path] = save_checkpoint,
    ) -> Run:
        """A new run per ``cfg``, or the run in directory ``resume`` continued (optionally with a
        new total ``steps``); ``evaluate``, ``save_checkpoint``: see the class."""
        cfg, run_dir, resumed = resolve(cfg, resume, steps, progress)
        return cls(cfg, run_dir, resumed, evaluate=evaluate, save_checkpoint=save_checkpoint)

    # -- what a loop reads ---------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """The run has its steps, or a signal asked it to stop."""
        return self.env_steps >= self.cfg.steps or self._signal is not None

    @property
    def fraction_done(self) -> float:
        return min(self.env_steps / self.cfg.steps, 1.0)

    @property
    def eval_due(self) -> bool:
        """The next ``record`` evaluates (a loop whose agent is remote may refresh it first)."""
        return self.next_eval is not None and (
            self.env_steps >= self.next_eval or self.env_steps >= self.cfg.steps
        )

    @property
    def stop_signal(self) -> int | None:
        return self._signal or (signal.SIGINT if self.interrupted else None)

    def result(self, agent: Any) -> TrainResult:
        return TrainResult(
            agent,
            self.run_dir,
            self.env_steps,
            self.episodes.mean(),
            self.last_eval,
            self.interrupted,
            self.stop_signal,
        )

    # -- the loop's life cycle -------------------------------------------------------------------

    @contextlib.contextmanager
    def running(
        self,
        checkpoint_state: Callable[[], dict],
        *,
        columns: Callable[[], Mapping[str, Any]] | None = None,
        status: Callable[[], str] | None = None,
        close: Sequence[Callable[[], Any]] = (),
    ) -> Iterator[Run]:
        """The loop's body runs inside; on entry the RNG state is restored (resume), the start
        logged, progress.csv/TensorBoard/the display opened, the signal handlers installed and
        the clock started; on exit the final row and checkpoint are written, ``close`` called
        in order, and the handlers restored (see the module docstring on stopping).

        ``checkpoint_state()``: the loop's keys of a checkpoint (Run adds env_steps, time_s,
        episodes, rng, eval_return_mean, algo_name; its keys win). ``columns()``: the loop's
        columns of each progress row besides the losses (``updates``, fault or lag counters),
        read when a row is written. ``status()``: extra text for the live display.
        """
        self._checkpoint_state = checkpoint_state
        self._columns = columns or dict
        self._status = status or (lambda: "")
        self._start()
        previous = self._install_signal_handlers()
        self._t0 = time.perf_counter()
        self._last_row_t = -1e9
        self._last_row_steps = self._start_steps = self.env_steps
        self._rate_t, self._rate_steps = self._t0, self.env_steps
        self._steps_per_s = 0.0
        self._info: Mapping[str, Any] = {}
        try:
            yield self
            if self._signal is not None:
                self.interrupted = True
                log.warning(
                    "stopped by %s at %d env steps; writing a final checkpoint",
                    signal.Signals(self._signal).name,
                    self.env_steps,
                )
        except KeyboardInterrupt:  # also StopTraining
            self.interrupted = True
            how = (
                f"a second {signal.Signals(self._signal).name}"
                if self._signal is not None
                else "KeyboardInterrupt"
            )
            log.warning(
                "stopped at once by %s at %d env steps; writing a final checkpoint",
                how,
                self.env_steps,
            )
        except Exception as e:
            log.error(
                "run failed at %d env steps: %s: %s; writing a final checkpoint",
                self.env_steps,
                type(e).__name__,
                e,
            )
            raise
        finally:
            self._cleanup = True  # signals from now on are noted, not raised (see _on_signal)
            self._display.close()
            try:
                if self.env_steps > self._last_row_steps:  # the curve reaches the checkpoint
                    self._writer.write(self._row(time.perf_counter(), None))
                self._save()
            finally:
                self._writer.close()
                for fn in close:
                    fn()
                for sig, handler in previous.items():
                    if handler is not None:  # None: a handler not installed from Python
                        signal.signal(sig, handler)
        log.info(
            "finished at %d env steps, return_mean %.2f, eval %.2f",
            self.env_steps,
            self.episodes.mean(),
            self.last_eval,
        )

    def add_steps(self, env_steps: int, episodes: Any = None) -> None:
        """Count a batch's env steps and its finished episodes (an ``EpisodeStats``: returns,
        lengths) as soon as they are collected, before the update: a run stopped in the middle
        of that update checkpoints them."""
        self.env_steps += int(env_steps)
        if episodes is not None:
            self.episodes.add(episodes.returns, episodes.lengths)

    def record(self, info: Mapping[str, Any], agent: Any) -> None:
        """After each update: its losses ``info``; evaluates ``agent`` if an evaluation is due,
        writes a progress row when one is due (an evaluation, ``log.log_every_s`` since the
        last, the run's last step) and updates the display."""
        now = time.perf_counter()  # (before the evaluation: a row's time and rate exclude it)
        self._info = info
        eval_row = None
        if self.eval_due:
            log_cfg = self.cfg.log
            returns = self._evaluate(
                agent,
                self.cfg.env,
                log_cfg.eval_episodes,
                seed=self.cfg.seed + 10_000,
                deterministic=log_cfg.eval_deterministic,
                max_episode_steps=self._eval_cap,
                max_steps=self._eval_budget,
            )
            self.last_eval = float(returns.mean())
            eval_row = (self.last_eval, float(returns.std()))
            while self.next_eval <= self.env_steps:
                self.next_eval += self._eval_every
        if now - self._rate_t > 0.5:  # a rate over the last half second or more
            self._steps_per_s = (self.env_steps - self._rate_steps) / (now - self._rate_t)
            self._rate_t, self._rate_steps = now, self.env_steps
        elif self._rate_steps == self._start_steps and now > self._t0:  # the first half second
            self._steps_per_s = (self.env_steps - self._start_steps) / (now - self._t0)
        if (
            eval_row is not None
            or now - self._last_row_t >= self.cfg.log.log_every_s
            or self.env_steps >= self.cfg.steps
        ):
            self._last_row_t, self._last_row_steps = now, self.env_steps
            self._writer.write(self._row(now, eval_row))
        extra = (
            f"eval {self.last_eval:.1f}" if self.last_eval == self.last_eval else "",
            self._status(),
        )
        self._display.update(
            self.env_steps, self._steps_per_s, self.episodes.mean(), " ".join(x for x in extra if x)
        )

    def maybe_checkpoint(self) -> None:
        """A checkpoint, if one is due (every ``log.checkpoint_every`` env steps)."""
        if self.env_steps >= self.next_checkpoint:
            self._save()
            while self.next_checkpoint <= self.env_steps:
                self.next_checkpoint += self._ckpt_every

    # -- inside ----------------------------------------------------------------------------------

    def _start(self) -> None:
        cfg = self.cfg
        if self.resumed:
            set_rng_state(self.resumed["rng"])
            log.info("resumed %s at %d env steps", self.run_dir, self.env_steps)
        else:
            log.info("run %s: %s on %s, %d steps", self.run_dir, cfg.algo, cfg.env.id, cfg.steps)
        log.info("presets: %s", cfg.preset or "none (dataclass defaults)")
        for warning in budget_warnings(cfg):  # (the CLI prints them on the terminal too)
            log.warning("%s", warning)
        self._writer = ProgressWriter(
            self.run_dir,
            tensorboard=cfg.log.tensorboard,
            resume_steps=self.env_steps if self.resumed else None,
        )
        self._display = LiveDisplay(
            cfg.steps, f"{cfg.algo} {cfg.env.id}", enabled=cfg.log.progress, start=self.env_steps
        )

    def _row(self, now: float, eval_row: tuple[float, float] | None) -> dict:
        row = {
            "env_steps": self.env_steps,
            "time_s": round(self.time_offset + now - self._t0, 3),
            "updates": 0,  # the loop's count, from columns()
            "episodes": self.episodes.total,
            "return_mean": self.episodes.mean(),
            "return_std": self.episodes.std(),
            "steps_per_s": round(self._steps_per_s, 1),
            "eval_return_mean": eval_row[0] if eval_row else None,
            "eval_return_std": eval_row[1] if eval_row else None,
        }
        row.update(self._info)
        row.update(self._columns())
        return row

    def _save(self) -> None:
        time_s = self.time_offset + (time.perf_counter() - self._t0)
        loop_state = self._checkpoint_state()
        if loop_state is None:  # the loop cannot give its state (a dead learner process)
            log.warning(
                "no checkpoint written at %d env steps (the learner's state is lost); "
                "--resume continues from the last checkpoint written",
                self.env_steps,
            )
            return
        state = {
            **loop_state,
            "env_steps": self.env_steps,
            "time_s": time_s,
            "episodes": self.episodes.state_dict(),
            "rng": rng_state(),
            "eval_return_mean": self.last_eval,
            "algo_name": self.cfg.algo,
        }
        self._save_checkpoint(self.run_dir, self.env_steps, state, self.cfg.log.keep_checkpoints)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM and SIGINT to ``_on_signal``; returns the handlers they replaced. (Python
        runs handlers in the main thread only, so a run in another thread installs none.)"""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # os.write, not print/logging: a handler may run in the middle of buffered I/O.
        if self._cleanup or self._raised:
            os.write(2, b"asyncrl: already stopping: writing the checkpoint, stopping workers\n")
            return
        if self._signal is not None:  # the second signal: stop now
            self._raised = True
            raise StopTraining()
        self._signal = signum
        msg = f"asyncrl: {signal.Signals(signum).name}: stopping after this batch"
        os.write(2, f"{msg} (send it again to stop at once)\n".encode())
