"""The asynchronous training loop: the learner process optimizes while workers sample; this
loop records what the learner reports after each batch (rlpyt's AsyncRl, Sample Factory's
runner), evaluates a mirror of the agent and writes checkpoints with the learner's state.

Owns building the mirror agent, asking the learner for its state at checkpoints, and the order
of one report. The run's life cycle is runners/run.py's; the learner is workers/optimizer.py,
reached through the asynchronous sampler (samplers/async_runtime.py). Must not know a loss or a
socket.

A run's env steps are those the learner consumed (batches collected but not yet learned when
the run stops, at most ``sampler.async_batches``, are dropped). A learner process that dies
ends the run with one error line; one that fails (an exception, or another data-parallel
learner exiting) first writes its state, and the final checkpoint is made from it; one that is
killed loses its state since the last checkpoint, and ``--resume`` continues from that one. A checkpoint's learner state is the learner's when it answers,
which may include the batches already queued to it (at most ``sampler.async_batches``) beyond
the env steps the run had recorded: the algorithm's own counters stay consistent with it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from asyncrl.algos import ALGOS
from asyncrl.envs import EpisodeStats
from asyncrl.logging.checkpoint import checkpoint_dir, latest_checkpoint
from asyncrl.runners.run import Run, TrainResult

REPORT_WAIT_S = 1.0  # how often the loop looks up from waiting (signals, failures)


def async_loop(run: Run, sampler) -> TrainResult:
    """Train ``run`` to its steps with the learner in its own process. ``sampler``: an
    ``AsyncRuntimeSampler`` or a factory called as ``sampler(cfg, seed_offset=env_steps)``."""
    cfg = run.cfg
    if not hasattr(sampler, "next_report"):
        sampler = sampler(cfg, seed_offset=run.env_steps)
    entry = ALGOS[cfg.algo]
    # The mirror: evaluation and checkpoints in this process, on the CPU.
    agent = entry.make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    if cfg.sampler.mode != "parallel":  # central inference runs on the run's device
        sampler.inference_agent = entry.make_agent(
            sampler.obs_space, sampler.action_space, cfg.model, cfg.device, cfg.algo_params
        )
        sampler.inference_agent.eval_mode()
    # a learner that fails writes its state here first: the final checkpoint is made from it
    rescue = Path(checkpoint_dir(run.run_dir)) / f".learner-rescue-{os.getpid()}.pt"
    rescue.parent.mkdir(parents=True, exist_ok=True)
    sampler.rescue_path = str(rescue)
    if run.resumed:
        sampler.resume_path = str(latest_checkpoint(run.run_dir))
        sampler.start_steps = run.env_steps  # the learner's schedules go on from there
    agent.eval_mode()
    state: dict = {
        "updates": run.resumed["algo"].get("updates", 0) if run.resumed else 0,
        "learn_s": 0.0,
        "waits": 0,
    }
    cache: dict = {}

    def checkpoint_state() -> dict | None:
        path = Path(checkpoint_dir(run.run_dir)) / f".learner-{os.getpid()}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if sampler.learner_state(str(path)):
                learner = torch.load(path, map_location="cpu", weights_only=False)
            elif rescue.exists():  # the learner failed, and wrote its state first
                learner = torch.load(rescue, map_location="cpu", weights_only=False)
            else:
                return None
        finally:
            path.unlink(missing_ok=True)
        cache["agent"] = learner["agent"]
        return {
            "agent": learner["agent"],
            "policy_version": learner["policy_version"],
            "algo": learner["algo"],
            "agent_rng": learner.get("agent_rng", {}),
            "sampler": {},
        }

    params = cfg.algo_params
    holds_ratio = hasattr(params, "replay_ratio") and hasattr(params, "learning_starts")

    def replay_ratio() -> float | None:
        """Measured gradient updates per env step, from the first batch that brought updates
        (in this process) on: the setting's unit; times batch_size for rlpyt's replay ratio
        of samples per env step."""
        if "ratio_from" not in state:
            return None
        steps_from, updates_from = state["ratio_from"]
        learned = run.env_steps - steps_from
        if learned <= 0:
            return None
        # in the setting's unit (R2D1 counts trained sequence steps, not updates)
        unit = params.replay_ratio / getattr(params, "updates_per_env_step", params.replay_ratio)
        return round((state["updates"] - updates_from) * unit / learned, 4)

    def columns() -> dict:
        counters = sampler.counters() if hasattr(sampler, "counters") else {}
        ratio = {"replay_ratio": replay_ratio()} if holds_ratio else {}
        return {
            "updates": state["updates"],
            **ratio,
            "learner_busy": round(state["busy"], 3) if "busy" in state else None,
            "sampler_waits": state["waits"],
            **counters,
        }

    close = [sampler.close, lambda: rescue.unlink(missing_ok=True)]
    with run.running(checkpoint_state, columns=columns, status=sampler.status, close=close):
        t_start = None
        sampler.initialize(agent)
        while not run.should_stop:
            report = sampler.next_report(REPORT_WAIT_S)
            if report is None:
                continue
            now = time.perf_counter()
            if t_start is None:
                t_start, learn_start = now, report.learn_s
            elif now > t_start:  # the share of wall-clock the learner spent in updates
                state["busy"] = (report.learn_s - learn_start) / (now - t_start)
            if report.updates > state["updates"] and "ratio_from" not in state:
                state["ratio_from"] = (run.env_steps, state["updates"])
            state["updates"] = report.updates
            state["waits"] = report.extra.get("waits", 0)
            run.add_steps(report.env_steps, EpisodeStats(report.returns, report.lengths))
            if run.eval_due:
                sampler.sync_agent(agent)
            run.record(report.info, agent)
            run.maybe_checkpoint()
        sampler.sync_agent(agent)
    return run.result(agent)
