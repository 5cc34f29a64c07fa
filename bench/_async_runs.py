"""The measuring processes of bench/async_overlap.py, one fresh process per measurement.

``python bench/_async_runs.py split SPEC_JSON``: sampling-only and learner-only rates of one
config (the synchronous runtime sampler, then ``algo.optimize`` on the batches it collected).
``python bench/_async_runs.py threshold SPEC_JSON``: one training run (``asyncrl.train``) until
its evaluation reaches a return threshold, with the sampler's start-up and each evaluation timed
from outside. Each prints one JSON line last. Owns no report text; the library is not changed
(``make_sampler`` and ``evaluate`` are wrapped on ``asyncrl.runners.train``, as bench/_common.py
does).
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cpu_s(proc) -> float:
    """User + system CPU seconds of ``proc`` and all its live descendants (psutil.Process)."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def split(spec: dict) -> dict:
    """Sampling-only, then learner-only, for ``spec`` (algo, env, sets, seconds, warmup_s).

    Sampling-only: ``make_sampler(cfg)`` with ``sampler.asynchronous=false`` (same workers, envs
    and agent as the asynchronous run), ``obtain()`` timed over ``seconds`` after ``warmup_s``.
    An off-policy agent acts with its policy (``random_actions`` off), as it does after
    ``learning_starts``. Learner-only: ``make_algo`` on that agent in this process (torch threads
    as the learner process sets them), ``optimize()`` timed on the collected batches. Replay
    learners first get ``learning_starts`` env steps, untimed, from a ``SerialSampler`` of the
    same envs and agent (at T=1 the runtime sampler's round per env step would take minutes to
    gather them here); ``optimize()`` is then timed on the runtime sampler's own batches.
    """
    import numpy as np
    import psutil
    import torch

    import asyncrl
    from asyncrl.algos import ALGOS
    from asyncrl.runners.train import make_sampler
    from asyncrl.samplers.serial import SerialSampler

    cfg = asyncrl.resolve_config(
        spec["algo"], spec["env"], sets=[*spec["sets"], "sampler.asynchronous=false"]
    )
    torch.set_num_threads(max(1, cfg.torch_threads))  # as workers/optimizer.py's learner
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    entry = ALGOS[cfg.algo]
    params = cfg.algo_params
    learning_starts = int(getattr(params, "learning_starts", 0))
    offpolicy = hasattr(params, "replay_ratio")
    me = psutil.Process()

    sampler = make_sampler(cfg)
    batches = []
    try:
        agent = entry.make_agent(
            sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
        )
        agent.eval_mode()
        if hasattr(agent, "random_actions"):
            agent.random_actions = False  # time the policy acting, as after learning_starts
        t0 = time.perf_counter()
        sampler.initialize(agent)
        startup_s = time.perf_counter() - t0
        # Warm-up (not timed): at least 2 batches and warmup_s seconds.
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < spec["warmup_s"]:
            batches.append(copy.deepcopy(sampler.obtain()))
            n += 1
        if offpolicy:
            batches = []  # replay learners are timed on the timed batches only
        # Timed: obtain() only, at least 3 batches and `seconds` (replay learners: and
        # learner_steps env steps, the batches their learner-only half is timed on).
        need_steps = int(spec.get("learner_steps", 0)) if offpolicy else 0
        steps = busy = 0.0
        calls = 0
        cpu0 = _cpu_s(me)
        wall0 = time.perf_counter()
        while calls < 3 or busy < spec["seconds"] or steps < need_steps:
            t = time.perf_counter()
            batch = sampler.obtain()
            busy += time.perf_counter() - t
            steps += batch.env_steps
            calls += 1
            if offpolicy or len(batches) < 6:
                batches.append(copy.deepcopy(batch))
        sample_wall = time.perf_counter() - wall0
        sample_cpu = _cpu_s(me) - cpu0
    finally:
        sampler.close()
    sampling = {
        "steps_per_s": steps / busy,
        "env_steps": int(steps),
        "batches": calls,
        "cpu_s_per_step": sample_cpu / steps,
        "busy_share": busy / sample_wall,
        "startup_s": startup_s,
    }

    algo = entry.make_algo(agent, cfg.algo_params, cfg.seed)
    progress = 0.1
    fill_steps = 0
    if offpolicy:
        filler = SerialSampler(
            cfg.env, cfg.sampler.num_envs, cfg.sampler.horizon, seed=cfg.seed + 1
        )
        try:
            filler.initialize(agent)
            while algo.env_steps < learning_starts:
                algo.optimize(filler.obtain(), progress)
        finally:
            filler.close()
        fill_steps = algo.env_steps
        rest = batches
    else:
        algo.optimize(batches[0], progress)  # warm-up (allocations, first Adam step)
        rest = batches[1:]
    steps = calls = 0
    updates0 = int(getattr(algo, "updates", 0))
    reused = False
    c0, t0 = time.process_time(), time.perf_counter()
    # On-policy calls are whole batches (a Pong one is ~20 s here): one is enough past
    # `seconds`; replay learners' calls are 1-2 updates.
    min_calls = 20 if offpolicy else 1
    while calls < min_calls or time.perf_counter() - t0 < spec["seconds"]:
        b = rest[calls % len(rest)]
        reused = reused or calls >= len(rest)
        algo.optimize(b, progress)
        steps += b.env_steps
        calls += 1
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    updates = int(getattr(algo, "updates", 0)) - updates0
    learner = {
        "steps_per_s": steps / wall,
        "env_steps": int(steps),
        "optimize_calls": calls,
        "updates_per_s": updates / wall,
        "updates_per_step": updates / steps,
        "cpu_s_per_step": cpu / steps,
        "batches_reused": reused,
        "torch_threads": torch.get_num_threads(),
        "replay_fill_steps": fill_steps,
    }
    return {
        "sampling": sampling,
        "learner": learner,
        "T": cfg.sampler.horizon,
        "B": cfg.sampler.num_envs,
        "workers": cfg.sampler.workers,
        "preset": cfg.preset,
    }


def threshold(spec: dict) -> dict:
    """Train per ``spec`` (algo, env, sets, threshold) until an evaluation mean reaches the
    threshold (then SIGINT to this process: the run stops after the current batch, its
    documented first-signal path) or the run's steps are done. Returns the evaluations with the
    run clock (progress.csv ``time_s``), the sampler's start-up and the evaluations' seconds."""
    import asyncrl

    train_module = importlib.import_module("asyncrl.runners.train")
    original_make_sampler, original_evaluate = train_module.make_sampler, train_module.evaluate
    timing: dict = {"startup_s": None, "evals": []}
    target = float(spec["threshold"])

    def make_sampler(*args, **kwargs):
        sampler = original_make_sampler(*args, **kwargs)
        initialize = sampler.initialize

        def timed_initialize(agent):
            t0 = time.perf_counter()
            try:
                return initialize(agent)
            finally:
                timing["startup_s"] = time.perf_counter() - t0

        sampler.initialize = timed_initialize
        return sampler

    def timed_evaluate(*args, **kwargs):
        t0 = time.perf_counter()
        returns = original_evaluate(*args, **kwargs)
        mean = float(returns.mean())
        timing["evals"].append({"eval_s": time.perf_counter() - t0, "mean": mean})
        if mean >= target and not timing.get("stopping"):
            timing["stopping"] = True
            os.kill(os.getpid(), signal.SIGINT)  # stop after this batch
        return returns

    train_module.make_sampler, train_module.evaluate = make_sampler, timed_evaluate
    cfg = asyncrl.resolve_config(spec["algo"], spec["env"], sets=spec["sets"])
    t0 = time.perf_counter()
    result = asyncrl.train(cfg)
    total_s = time.perf_counter() - t0

    from _common import read_eval_rows

    with open(Path(cfg.run_dir) / "progress.csv", newline="") as f:
        first = next(csv.DictReader(f))
    rows = read_eval_rows(cfg.run_dir)
    if len(rows) != len(timing["evals"]):
        raise SystemExit(f"{len(rows)} eval rows but {len(timing['evals'])} evaluations")
    evals, before = [], 0.0
    for row, ev in zip(rows, timing["evals"]):
        if abs(float(row["eval_return_mean"]) - ev["mean"]) > 0.01:
            raise SystemExit(f"progress.csv eval {row['eval_return_mean']} != {ev['mean']}")
        evals.append(
            {
                "env_steps": int(row["env_steps"]),
                "time_s": float(row["time_s"]),
                "mean": ev["mean"],
                "eval_s_before": before,
            }
        )
        before += ev["eval_s"]
    return {
        "evals": evals,
        "initialize_s": timing["startup_s"],
        # The run clock at the first progress row: workers (and learner) started, the first
        # batch sampled and optimized. (A synchronous RuntimeSampler.initialize returns before
        # its workers have registered, so initialize() alone is no start-up figure.)
        "first_row": {"env_steps": int(first["env_steps"]), "time_s": float(first["time_s"])},
        "env_steps_done": int(result.env_steps),
        "total_s": total_s,
        "interrupted": bool(result.interrupted),
        "preset": cfg.preset,
        "run_dir": str(cfg.run_dir),
    }


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    kind, spec = sys.argv[1], json.loads(sys.argv[2])
    out = {"split": split, "threshold": threshold}[kind](spec)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
