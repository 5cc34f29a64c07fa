"""The synchronous training loop: sample -> optimize -> log -> evaluate -> checkpoint.

Owns the run directory's life cycle (config.toml, progress.csv, TensorBoard, checkpoints, log)
and resume. Must not know a loss (algorithms) or a socket (runtime).

Resume restores the agent (parameters and normaliser statistics), the optimizer, the counters
(env steps, updates, episodes, elapsed time), the recent-episode window and the RNG states
(python, numpy, torch, and the agent's own acting streams where it has ``rng_state``).
Environments themselves cannot be snapshotted in general: a resumed run starts fresh episodes
with env seeds offset by the env steps already done. Rows of progress.csv (and TensorBoard
events) past the checkpoint being resumed are dropped, so the curve stays monotonic in env steps.

Stopping: the first SIGTERM or SIGINT (Ctrl-C) asks the loop to stop after the current batch,
write a last progress row and a final checkpoint; a second one stops at once (the final
checkpoint is still written, but may sit in the middle of an update). Once that final cleanup
(checkpoint, stopping workers and services) has begun, further signals are only acknowledged:
cutting it short would leave sockets and processes behind. An error (e.g. the sampler's
workers keep failing) is logged, a final checkpoint written, and the error raised.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import threading
import time
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


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    cfg: TrainConfig | None = None,
    resume: str | Path | None = None,
    steps: int | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train per ``cfg`` (or resume the run in directory ``resume``, optionally with a new total
    ``steps``). Returns the trained agent and summary figures."""
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
    entry = ALGOS[cfg.algo]
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available")
    if cfg.sampler.mode != "serial":
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
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    _seed_everything(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    cfg.save(run_dir / "config.toml")
    setup_file_logger(run_dir)

    env_steps = int(ckpt["env_steps"]) if ckpt else 0
    sampler = make_sampler(cfg, seed_offset=env_steps)
    agent = entry.make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, cfg.device, cfg.algo_params
    )
    algo = entry.make_algo(agent, cfg.algo_params, cfg.seed)
    episodes = EpisodeTracker(100)
    time_offset = 0.0
    last_eval = float("nan")
    if ckpt:
        agent.load_state_tensors(ckpt["agent"], ckpt.get("policy_version", 0))
        algo.load_state_dict(ckpt["algo"])
        episodes.load_state_dict(ckpt["episodes"])
        time_offset = float(ckpt["time_s"])
        last_eval = float(ckpt.get("eval_return_mean", float("nan")))
        _set_rng_state(ckpt["rng"])
        if hasattr(agent, "load_rng_state"):  # the agent's own acting streams, where it has them
            agent.load_rng_state(ckpt.get("agent_rng", {}))
        sampler.load_state_dict(ckpt.get("sampler", {}))
        log.info("resumed %s at %d env steps", run_dir, env_steps)
    else:
        log.info("run %s: %s on %s, %d steps", run_dir, cfg.algo, cfg.env.id, cfg.steps)
    log.info("presets: %s", cfg.preset or "none (dataclass defaults)")
    for warning in budget_warnings(cfg):  # (the CLI prints them on the terminal too)
        log.warning("%s", warning)
    agent.eval_mode()

    total = cfg.steps
    eval_every = cfg.log.eval_every if cfg.log.eval_every != 0 else max(total // 10, 1)
    ckpt_every = cfg.log.checkpoint_every if cfg.log.checkpoint_every > 0 else max(total // 10, 1)
    next_eval = (env_steps // eval_every + 1) * eval_every if eval_every > 0 else None
    eval_cap, eval_budget = eval_limits(cfg.env, cfg.log.eval_episodes, max(eval_every, 0))
    eval_cap = cfg.log.eval_max_episode_steps or eval_cap
    eval_budget = cfg.log.eval_max_steps or eval_budget
    next_ckpt = (env_steps // ckpt_every + 1) * ckpt_every
    writer = ProgressWriter(
        run_dir, tensorboard=cfg.log.tensorboard, resume_steps=env_steps if ckpt else None
    )
    display = LiveDisplay(
        total, f"{cfg.algo} {cfg.env.id}", enabled=cfg.log.progress, start=env_steps
    )

    def checkpoint_state() -> dict:
        return {
            "env_steps": env_steps,
            "time_s": time_offset + (time.perf_counter() - t0),
            "agent": agent.state_tensors(),
            "policy_version": agent.policy_version,
            "algo": algo.state_dict(),
            "episodes": episodes.state_dict(),
            "rng": _rng_state(),
            "agent_rng": agent.rng_state() if hasattr(agent, "rng_state") else {},
            "sampler": sampler.state_dict(),
            "eval_return_mean": last_eval,
            "algo_name": cfg.algo,
        }

    stop: dict[str, int] = {}  # the signal asking the loop to stop, once one came
    # "cleanup": the final checkpoint and the shutdown of workers have begun, and no signal
    # may cut them short (that left sockets and processes behind); "raised": StopTraining was
    # raised once already (a third signal must not interrupt the handling of the second).
    phase = {"cleanup": False, "raised": False}
    prev_handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum, frame):
            if phase["cleanup"] or phase["raised"]:
                os.write(
                    2, b"asyncrl: already stopping: writing the checkpoint, stopping workers\n"
                )
                return
            if stop:  # the second signal: stop now
                phase["raised"] = True
                raise StopTraining()
            stop["signal"] = signum
            # os.write, not print/logging: a handler may run in the middle of buffered I/O.
            msg = f"asyncrl: {signal.Signals(signum).name}: stopping after this batch"
            os.write(2, f"{msg} (send it again to stop at once)\n".encode())

        for sig in (signal.SIGTERM, signal.SIGINT):
            prev_handlers[sig] = signal.signal(sig, _on_signal)

    interrupted = False
    t0 = time.perf_counter()
    last_row_t = -1e9
    last_row_steps = env_steps
    start_steps = env_steps
    rate_t, rate_steps = t0, env_steps
    steps_per_s = 0.0
    info: dict[str, float] = {}

    def progress_row(now: float, eval_row: tuple[float, float] | None) -> dict:
        row = {
            "env_steps": env_steps,
            "time_s": round(time_offset + now - t0, 3),
            "updates": getattr(algo, "updates", 0),
            "episodes": episodes.total,
            "return_mean": episodes.mean(),
            "return_std": episodes.std(),
            "steps_per_s": round(steps_per_s, 1),
            "eval_return_mean": eval_row[0] if eval_row else None,
            "eval_return_std": eval_row[1] if eval_row else None,
        }
        row.update(info)
        if hasattr(sampler, "counters"):  # the runtime's fault counters (dropped messages...)
            row.update(sampler.counters())
        return row

    try:
        sampler.initialize(agent)
        while env_steps < total and not stop:
            batch = sampler.obtain()
            env_steps += batch.env_steps
            episodes.add(batch.episodes.returns, batch.episodes.lengths)
            info = algo.optimize(batch, progress=min(env_steps / total, 1.0))
            sampler.sync(agent)
            now = time.perf_counter()
            eval_row = None
            if next_eval is not None and (env_steps >= next_eval or env_steps >= total):
                rets = evaluate(
                    agent,
                    cfg.env,
                    cfg.log.eval_episodes,
                    seed=cfg.seed + 10_000,
                    deterministic=cfg.log.eval_deterministic,
                    max_episode_steps=eval_cap,
                    max_steps=eval_budget,
                )
                last_eval = float(rets.mean())
                eval_row = (last_eval, float(rets.std()))
                while next_eval <= env_steps:
                    next_eval += eval_every
            if now - rate_t > 0.5:  # a rate over the last half second or more
                steps_per_s = (env_steps - rate_steps) / (now - rate_t)
                rate_t, rate_steps = now, env_steps
            elif rate_steps == start_steps and now > t0:  # until the first half second is over
                steps_per_s = (env_steps - start_steps) / (now - t0)
            if (
                eval_row is not None
                or now - last_row_t >= cfg.log.log_every_s
                or env_steps >= total
            ):
                last_row_t, last_row_steps = now, env_steps
                writer.write(progress_row(now, eval_row))
            display.update(
                env_steps,
                steps_per_s,
                episodes.mean(),
                " ".join(
                    x
                    for x in (
                        f"eval {last_eval:.1f}" if last_eval == last_eval else "",
                        sampler.status() if hasattr(sampler, "status") else "",
                    )
                    if x
                ),
            )
            if env_steps >= next_ckpt:
                save_checkpoint(run_dir, env_steps, checkpoint_state(), cfg.log.keep_checkpoints)
                while next_ckpt <= env_steps:
                    next_ckpt += ckpt_every
        if stop:
            interrupted = True
            log.warning(
                "stopped by %s at %d env steps; writing a final checkpoint",
                signal.Signals(stop["signal"]).name,
                env_steps,
            )
    except KeyboardInterrupt:  # also StopTraining
        interrupted = True
        how = f"a second {signal.Signals(stop['signal']).name}" if stop else "KeyboardInterrupt"
        log.warning(
            "stopped at once by %s at %d env steps; writing a final checkpoint", how, env_steps
        )
    except Exception as e:
        log.error(
            "run failed at %d env steps: %s: %s; writing a final checkpoint",
            env_steps,
            type(e).__name__,
            e,
        )
        raise
    finally:
        phase["cleanup"] = True  # signals from now on are noted, not raised (see _on_signal)
        display.close()
        try:
            if env_steps > last_row_steps:  # the curve reaches the final checkpoint
                writer.write(progress_row(time.perf_counter(), None))
            save_checkpoint(run_dir, env_steps, checkpoint_state(), cfg.log.keep_checkpoints)
        finally:
            writer.close()
            sampler.close()
            if hasattr(algo, "close"):
                algo.close()  # e.g. a replay store process
            for sig, handler in prev_handlers.items():
                if handler is not None:  # None: a handler not installed from Python
                    signal.signal(sig, handler)
    log.info(
        "finished at %d env steps, return_mean %.2f, eval %.2f",
        env_steps,
        episodes.mean(),
        last_eval,
    )
    return TrainResult(
        agent,
        run_dir,
        env_steps,
        episodes.mean(),
        last_eval,
        interrupted,
        stop.get("signal") or (signal.SIGINT if interrupted else None),
    )
