"""Asynchronous sampling and optimization (``--async``): how much of sampling and learning it
overlaps, and whether it reaches a return threshold sooner than the synchronous loop.

1. **Overlap efficiency** = async env steps/s / min(sampling-only env steps/s, learner-only env
   steps/s), for PPO and APPO on HalfCheetah-v5 and ALE/Pong-v5 and SAC on HalfCheetah-v5, each
   with its presets, parallel mode, 1 and 2 workers (the envs are set explicitly: MuJoCo 1 env
   per worker, as the presets' single env; Pong the preset's 8 envs split between the workers).
   - sampling-only: ``make_sampler(cfg)`` with ``sampler.asynchronous=false`` (the same workers,
     envs and agent, ``ALGOS[algo].make_agent`` as the runners build it), ``obtain()`` timed after
     a warm-up. SAC's agent acts with its policy (as after ``learning_starts``).
   - learner-only: ``algo.optimize()`` on batches that sampler collected, in the measuring
     process with the learner's torch threads (``max(1, cfg.torch_threads)``), T*B env steps per
     call; SAC: env steps per second of updates at the preset's replay ratio, after the replay
     holds ``learning_starts`` (those batches are fed first, untimed).
   - async: ``asyncrl train ALGO ENV --mode parallel --workers W --async`` (no evaluations,
     no checkpoints but the final one, a progress row per report); env steps / time between the
     first progress row after the warm-up (3 batches; SAC: learning_starts + 3 batches) and the
     last one (progress.csv), start-up not counted.
   Both halves run in fresh processes (bench/_async_runs.py); configs are interleaved, in a
   rotated order per round, and each figure is the median of the rounds (the efficiency: the
   median of the per-round ratios). The "CPU bound" divides the machine's cores by the CPU
   seconds per env step of sampling (workers + training process) plus learning, and caps it at
   what W workers and one learner can do alone: what full overlap on an otherwise idle machine
   would give.

2. **Wall-clock to a return threshold**, same hyperparameters, parallel mode with 1 worker (on 2
   cores: the worker and the learner each get one), synchronous vs ``--async``: APPO (async) vs
   PPO (sync) on CartPole-v1 (eval 475) and HalfCheetah-v5 (eval 1000: see ``THRESHOLD_TASKS``),
   SAC vs SAC on Pendulum-v1 (eval -250). APPO takes PPO's resolved settings field by field
   (GAE lambda -> V-trace c_bar). A run stops at the first evaluation at or above the threshold
   (SIGINT to itself: the run's documented "stop after this batch"), or at its steps. Seeds are
   interleaved (sync first on even seeds). Reported: env steps and the run clock (progress.csv
   ``time_s``: from the run's start, so including the workers' and learner's start-up and the
   earlier evaluations) at that evaluation, and the same counted from the first progress row
   (start-up done, the first batch sampled and optimized; a synchronous RuntimeSampler's
   ``initialize`` returns before its workers register, so it cannot mark the start-up),
   medians and async / sync ratios.

    python bench/async_overlap.py [--quick] [--reps 3] [--seeds 0 1 2] [--cheetah-seeds 0 1 2]
                                  [--only overlap|wallclock] [--no-append] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, git_line, machine_line  # noqa: E402  (bench/ is no package)

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(__file__).with_name("_async_runs.py")
ASYNCRL = str(Path(sys.executable).with_name("asyncrl"))
QUIET = ["log.progress=false", "log.tensorboard=false"]
WORKERS = (1, 2)

# (algo, env id, measured async batches after the warm-up)
OVERLAP = [
    ("ppo", "HalfCheetah-v5", 10),
    ("appo", "HalfCheetah-v5", 8),
    ("ppo", "ALE/Pong-v5", 4),  # ~20 s per batch here: the learner, ~50 env steps/s
    ("appo", "ALE/Pong-v5", 4),
    ("sac", "HalfCheetah-v5", 0),  # SAC: measured by env steps, see SAC_MEASURED_STEPS
]
WARMUP_BATCHES = 3  # async reports skipped: both learner slots cycled, the lag steady
SAC_MEASURED_STEPS = 600  # per worker, after learning_starts + the warm-up batches


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def num_envs(env: str, workers: int) -> int:
    return 8 if env.startswith("ALE/") else workers  # MuJoCo: the presets' 1 env, per worker


def overlap_sets(env: str, workers: int) -> list[str]:
    return [
        *QUIET,
        'sampler.mode="parallel"',
        f"sampler.workers={workers}",
        f"sampler.num_envs={num_envs(env, workers)}",
    ]


def resolved(algo: str, env: str, sets: list[str]):
    import asyncrl

    return asyncrl.resolve_config(algo, env, sets=sets)


def child(kind: str, spec: dict, what: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(RUNS), kind, json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 1. overlap


def measure_split(algo: str, env: str, workers: int, seconds: float, warmup_s: float) -> dict:
    spec = {
        "algo": algo,
        "env": env,
        "sets": overlap_sets(env, workers),
        "seconds": seconds,
        "warmup_s": warmup_s,
        "learner_steps": 300 * workers,  # SAC: the batches its learner-only half is timed on
    }
    return child("split", spec, f"split {algo} {env} {workers}w")


def async_command(algo, env, workers, steps, run_dir, log_every_s) -> list[str]:
    return [
        ASYNCRL, "train", algo, env, "--mode", "parallel", "--workers", str(workers), "--async",
        "--steps", str(steps), "--run-dir", str(run_dir), "--no-progress",
        "--set", f"sampler.num_envs={num_envs(env, workers)}",
        "--set", "log.eval_every=-1", "--set", "log.checkpoint_every=1000000000",
        "--set", "log.tensorboard=false", "--set", f"log.log_every_s={log_every_s}",
    ]  # fmt: skip


def measure_async(algo: str, env: str, workers: int, measured_batches: int, quick: bool) -> dict:
    cfg = resolved(algo, env, overlap_sets(env, workers))
    batch = cfg.sampler.horizon * cfg.sampler.num_envs
    learning_starts = int(getattr(cfg.algo_params, "learning_starts", 0))
    warm = learning_starts + WARMUP_BATCHES * batch
    if measured_batches:
        steps = warm + (max(2, measured_batches // 3) if quick else measured_batches) * batch
    else:
        steps = warm + (SAC_MEASURED_STEPS // (5 if quick else 1)) * workers
    with tempfile.TemporaryDirectory(prefix="async_overlap_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = async_command(algo, env, workers, steps, run_dir, 0.25 if learning_starts else 0)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} failed:\n{proc.stderr[-3000:]}")
        with open(run_dir / "progress.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    after = [r for r in rows if int(r["env_steps"]) >= warm]
    if len(after) < 2:
        raise RuntimeError(f"async {algo} {env}: only {len(after)} rows after the warm-up")
    first, last = after[0], after[-1]
    d_steps = int(last["env_steps"]) - int(first["env_steps"])
    d_t = float(last["time_s"]) - float(first["time_s"])

    def num(row, key):
        v = row.get(key, "")
        return float(v) if v not in ("", None) else None

    # learner_busy and sampler_waits are cumulative from the first report (learner_busy: the
    # learner's seconds in optimize() / the training process's seconds since then), so SAC's
    # would include the learning_starts phase: take them over the measured window instead.
    t1 = float(rows[0]["time_s"])
    busy_f, busy_l = num(first, "learner_busy"), num(last, "learner_busy")
    window_busy = None
    if busy_l is not None:
        learn_l = busy_l * (float(last["time_s"]) - t1)
        learn_f = (busy_f or 0.0) * (float(first["time_s"]) - t1)
        window_busy = (learn_l - learn_f) / d_t
    window_waits = (num(last, "sampler_waits") or 0) - (num(first, "sampler_waits") or 0)
    lags = [num(r, "policy_lag_mean") for r in after if num(r, "policy_lag_mean") is not None]
    lag_max = [num(r, "policy_lag_max") for r in after if num(r, "policy_lag_max") is not None]
    return {
        "steps_per_s": d_steps / d_t,
        "measured_env_steps": d_steps,
        "measured_s": d_t,
        "first_row_s": float(rows[0]["time_s"]),
        "learner_busy": num(last, "learner_busy"),
        "learner_busy_window": window_busy,
        "sampler_waits": num(last, "sampler_waits"),
        "waits_per_batch_window": window_waits / max(d_steps / batch, 1),
        "batches": int(last["env_steps"]) // batch,
        "policy_lag_mean": statistics.median(lags) if lags else None,
        "policy_lag_max": max(lag_max) if lag_max else None,
        "replay_ratio": num(last, "replay_ratio"),
        "process_wall_s": wall,
        "command": " ".join(["asyncrl", *cmd[1:]]).replace(str(run_dir), "RUN_DIR"),
    }


def run_overlap(args, log) -> dict:
    configs = [(a, e, n, w) for a, e, n in OVERLAP for w in args.workers]
    if args.only_algo:
        configs = [c for c in configs if c[0] in args.only_algo]
    if args.only_env:
        configs = [c for c in configs if c[1] in args.only_env]
    results: dict = {}
    seconds, warmup_s = (1.5, 1.0) if args.quick else (args.seconds, 2.0)
    for rnd in range(args.reps):
        k = rnd * len(configs) // max(args.reps, 1)
        log(f"overlap round {rnd + 1}: load {load()}")
        for algo, env, n, w in configs[k:] + configs[:k]:
            key = f"{algo} {env} {w}w"
            entry = results.setdefault(key, {"rounds": [], "errors": []})
            try:
                s = measure_split(algo, env, w, seconds, warmup_s)
                a = measure_async(algo, env, w, n, args.quick)
            except RuntimeError as e:
                entry["errors"].append(str(e))
                log(f"{key}: FAILED {str(e)[:400]}")
                continue
            entry.update(T=s["T"], B=s["B"], workers=w, preset=s["preset"], command=a["command"])
            entry["rounds"].append({"split": s, "async": a, "load": load()})
            lo = min(s["sampling"]["steps_per_s"], s["learner"]["steps_per_s"])
            log(
                f"{key} (T={s['T']} B={s['B']}): sampling {s['sampling']['steps_per_s']:,.0f}, "
                f"learner {s['learner']['steps_per_s']:,.0f}, async {a['steps_per_s']:,.0f} "
                f"steps/s -> {a['steps_per_s'] / lo:.2f}; learner busy {a['learner_busy_window']} "
                f"(whole run {a['learner_busy']}), lag {a['policy_lag_mean']}, "
                f"replay_ratio {a['replay_ratio']}"
            )
    return results


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=0) -> str:
    if x is None:
        return "-"
    if digits:
        return f"{x:.{digits}f}"
    return f"{x / 1000:.1f}k" if abs(x) >= 10_000 else f"{x:,.0f}"


def overlap_table(results: dict) -> str:
    n_cores = cores()
    lines = [
        "| algo, env (T x B, workers) | sampling-only steps/s | learner-only steps/s | async "
        "steps/s | overlap efficiency = async / min (aim >= 0.85) | CPU bound, "
        f"{n_cores} cores | async / CPU bound | learner busy share | sampler waits / batch | "
        "policy lag mean (max) | CPU ms/step sampling + learning |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, e in results.items():
        rounds = e["rounds"]
        if not rounds:
            lines.append(f"| {key} | failed: see notes | | | | | | | | | |")
            continue
        s_rate = med([r["split"]["sampling"]["steps_per_s"] for r in rounds])
        l_rate = med([r["split"]["learner"]["steps_per_s"] for r in rounds])
        a_rate = med([r["async"]["steps_per_s"] for r in rounds])
        eff = med(
            [
                r["async"]["steps_per_s"]
                / min(r["split"]["sampling"]["steps_per_s"], r["split"]["learner"]["steps_per_s"])
                for r in rounds
            ]
        )
        c_s = med([r["split"]["sampling"]["cpu_s_per_step"] for r in rounds])
        c_l = med([r["split"]["learner"]["cpu_s_per_step"] for r in rounds])
        w = e["workers"]
        bound = min(n_cores / (c_s + c_l), 1 / c_l, min(w, n_cores) / c_s)
        waits = med([r["async"]["waits_per_batch_window"] for r in rounds])
        lag = med([r["async"]["policy_lag_mean"] for r in rounds])
        lag_max = max((r["async"]["policy_lag_max"] or 0) for r in rounds)
        rr = med([r["async"]["replay_ratio"] for r in rounds])
        name = key.rsplit(" ", 1)[0]
        extra = f", replay ratio {rr:.3f}" if rr is not None else ""
        lines.append(
            f"| {name} ({e['T']} x {e['B']}, {w} worker{'s' * (w > 1)}{extra}) | {fmt(s_rate)} | "
            f"{fmt(l_rate)} | {fmt(a_rate)} | **{eff:.2f}** | {fmt(bound)} | "
            f"{a_rate / bound:.2f} | "
            f"{fmt(med([r['async']['learner_busy_window'] for r in rounds]), 2)} | {fmt(waits, 2)} | "
            f"{fmt(lag, 2)} ({lag_max:.0f}) | {1000 * c_s:.2f} + {1000 * c_l:.2f} |"
        )
    return "\n".join(lines)


def overlap_notes(results: dict) -> str:
    n_cores = cores()
    configs = sorted(
        {(e["preset"], k.rsplit(" ", 2)[0]) for k, e in results.items() if e.get("preset")}
    )
    return (
        "Parallel mode; T x B = horizon x envs per batch, as the presets set them but for the "
        "envs, set here: MuJoCo 1 env per worker (the presets' single env), Pong the preset's "
        "8 envs split between the workers. Presets: "
        + "; ".join(f"{name}: {preset}" for preset, name in configs)
        + f". Sampling-only and learner-only are measured in one fresh process, async in "
        "another (`asyncrl train ... --async`), right after it; rounds are interleaved over "
        "all configs in a rotated order. Rates are medians of the rounds; the efficiency "
        "column is the median of each round's async / min(sampling, learner). Async: env steps "
        f"/ run-clock seconds between the first progress row after {WARMUP_BATCHES} batches "
        "(SAC: after learning_starts + 3 batches) and the last row; learner busy share and "
        "sampler waits over that window (the progress.csv columns are cumulative from the "
        "first report). Learner-only: `optimize()` in the measuring process, torch threads 1 "
        "(cfg.torch_threads, as the learner process), T x B env steps per call; SAC: env steps "
        "per second of updates at replay_ratio 1 (one update per env step) with the replay "
        "filled to learning_starts (10,000) first. CPU bound = min(cores / (CPU s per step "
        "sampling + learning), 1 / learning CPU s per step, min(W, cores) / sampling CPU s per "
        "step), the CPU seconds measured on all processes of each half (workers and the "
        f"training process for sampling): what full overlap would reach on {n_cores} idle "
        f"cores. Full overlap of W workers and one learner needs W + 1 cores; this machine has "
        f"{n_cores}, shared with other jobs: with 1 worker, sampling and learning can each "
        "have a core; with 2 workers they cannot."
    )


# ----------------------------------------------------------------------------- 2. wall-clock

# (label, env id, sync algo, async algo, threshold, steps cap, eval every, eval episodes)
THRESHOLD_TASKS = [
    ("CartPole-v1", "CartPole-v1", "ppo", "appo", 475.0, 100_000, 2048, 10),
    # 1000 within 150k steps: the sync PPO preset's first plateau. A pilot (seed 0, sync, 1
    # worker) evaluated 996 at 30k, 1010 at 40k, 400-1200 to 110k, 1684 at 120k, 2594 at 210k:
    # 1500 would cost ~4x the steps (and ~10 min per run at this machine's load, x6 runs).
    ("HalfCheetah-v5", "HalfCheetah-v5", "ppo", "appo", 1000.0, 150_000, 5000, 5),
    # Pendulum: evaluations every 1000 steps (the preset's 2000 put both variants at 4000 in a
    # trial: the threshold is crossed within 2-5k steps).
    ("Pendulum-v1", "Pendulum-v1", "sac", "sac", -250.0, 20_000, 1000, 10),
]


def toml_value(v) -> str:
    return json.dumps(list(v) if isinstance(v, tuple) else v)


def matched_sets(sync_algo: str, async_algo: str, env: str, base: list[str]) -> list[str]:
    """--set items that give ``async_algo`` the resolved settings of ``sync_algo`` on ``env``
    (PPO -> APPO: every shared field, GAE lambda as V-trace c_bar; the model and sampler)."""
    if sync_algo == async_algo:
        return []
    import dataclasses

    src = resolved(sync_algo, env, base)
    dst = resolved(async_algo, env, base)
    out = []
    dst_fields = {f.name for f in dataclasses.fields(dst.algo_params)}
    for f in dataclasses.fields(src.algo_params):
        if f.name in dst_fields:
            out.append(f"{async_algo}.{f.name}={toml_value(getattr(src.algo_params, f.name))}")
    if hasattr(src.algo_params, "gae_lambda"):
        out.append(f"{async_algo}.c_bar={src.algo_params.gae_lambda}")
    for f in dataclasses.fields(src.model):
        out.append(f"model.{f.name}={toml_value(getattr(src.model, f.name))}")
    out += [f"sampler.horizon={src.sampler.horizon}", f"sampler.num_envs={src.sampler.num_envs}"]
    return out


def threshold_spec(task, variant: str, seed: int, run_dir: Path, quick: bool) -> dict:
    label, env, sync_algo, async_algo, target, cap, every, episodes = task
    base = [
        *QUIET,
        'sampler.mode="parallel"',
        "sampler.workers=1",
        f"seed={seed}",
        f"steps={cap}",
        f"log.eval_every={every}",
        f"log.eval_episodes={episodes}",
    ]
    algo = sync_algo if variant == "sync" else async_algo
    sets = list(base)
    if variant == "async":
        sets += matched_sets(sync_algo, async_algo, env, base) + ["sampler.asynchronous=true"]
    sets.append(f'run_dir="{run_dir}"')
    return {"algo": algo, "env": env, "sets": sets, "threshold": target}


def run_wallclock(args, log) -> dict:
    results: dict = {}
    tasks = THRESHOLD_TASKS
    if args.only_task:
        tasks = [t for t in tasks if t[0] in args.only_task]
    seeds = sorted(set(args.seeds) | set(args.cheetah_seeds))
    for seed in seeds:
        for task in tasks:
            label = task[0]
            task_seeds = args.cheetah_seeds if label.startswith("HalfCheetah") else args.seeds
            if seed not in task_seeds:
                continue
            variants = ("sync", "async") if seed % 2 == 0 else ("async", "sync")
            for variant in variants:
                with tempfile.TemporaryDirectory(prefix="async_wall_") as tmp:
                    spec = threshold_spec(task, variant, seed, Path(tmp) / "run", args.quick)
                    if args.quick:
                        spec["sets"].append(f"steps={min(task[5], 20_000)}")
                    key = (label, variant, seed)
                    try:
                        out = child("threshold", spec, f"{label} {variant} seed {seed}")
                    except RuntimeError as e:
                        results[key] = {"error": str(e)}
                        log(f"{label} {variant} seed {seed}: FAILED {str(e)[:400]}")
                        continue
                hit = next((ev for ev in out["evals"] if ev["mean"] >= task[4]), None)
                out["hit"] = hit
                out["algo"], out["load"] = spec["algo"], load()
                results[key] = out
                log(
                    f"{label} {variant} ({spec['algo']}) seed {seed}: "
                    + (
                        f"{hit['env_steps']} steps, {hit['time_s']:.1f} s "
                        f"(first row at {out['first_row']['time_s']:.1f} s)"
                        if hit
                        else f"not reached in {out['env_steps_done']} steps"
                    )
                    + f"; evals {[round(ev['mean']) for ev in out['evals']]}"
                )
    return results


def wallclock_table(results: dict, args) -> str:
    lines = [
        "| task (threshold) | seed | env steps: sync | async | wall s (run clock): sync | "
        "async | wall s after the first row: sync | async | first row at s (start-up + 1 "
        "batch): sync | async | "
        "earlier evaluations s: sync | async |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for task in THRESHOLD_TASKS:
        label, _, sync_algo, async_algo, target = task[:5]
        seeds = sorted({k[2] for k in results if k[0] == label})
        if not seeds:
            continue
        name = f"{label} ({sync_algo.upper()} sync vs {async_algo.upper()} async, {target:g})"

        def val(variant, seed, what, label=label):
            r = results.get((label, variant, seed), {})
            hit = r.get("hit")
            startup = r["first_row"]["time_s"] if "first_row" in r else None
            if what == "startup":
                return startup
            if not hit:
                return None  # not reached (or failed): counts as infinitely slow
            return {
                "steps": hit["env_steps"],
                "wall": hit["time_s"],
                "less": hit["time_s"] - startup,
                "evals": hit["eval_s_before"],
            }[what]

        def cell(x, what):
            if x is None:
                return "-" if what in ("startup", "evals") else "not reached"
            return f"{x / 1000:.1f}k" if what == "steps" else f"{x:.1f}"

        cols = ("steps", "wall", "less", "startup", "evals")
        for seed in seeds:
            cells = []
            for what in cols:
                cells += [cell(val(v, seed, what), what) for v in ("sync", "async")]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        medians = {}
        cells = []
        for what in cols:
            for v in ("sync", "async"):
                xs = [val(v, s, what) for s in seeds]
                m = statistics.median(sorted(float("inf") if x is None else x for x in xs))
                medians[(v, what)] = None if m == float("inf") else m
                cells.append(cell(medians[(v, what)], what))
        lines.append(f"| {name} | **median** | " + " | ".join(cells) + " |")
        cells = []
        for what in cols:
            a, s = medians[("async", what)], medians[("sync", what)]
            r = f"**{a / s:.2f}**" if a is not None and s else "n/a"
            if what in ("startup", "evals"):
                r = ""  # context, not an aim
            cells += [r, ""]
            if what == "wall":
                ratios.append((label, r))
        lines.append(f"| {name} | **async / sync** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wallclock_notes(results: dict) -> str:
    tasks = []
    for label, _env, _sync, _async, target, cap, every, episodes in THRESHOLD_TASKS:
        r = next((v for k, v in results.items() if k[0] == label and "preset" in v), None)
        if r is None:
            continue
        tasks.append(
            f"{label}: threshold {target:g}, at most {cap:,} env steps, evaluation every "
            f"{every:,} env steps ({episodes} deterministic episodes)"
        )
    return (
        "Both variants: `--mode parallel --workers 1` (the envs: the presets'), the sync "
        "algorithm's presets; APPO gets PPO's resolved settings field by field (GAE lambda as "
        "V-trace c_bar; model, horizon, envs), so on HalfCheetah it runs the RL-Zoo PPO "
        "preset's settings rather than appo_mujoco's. " + "; ".join(tasks) + ". A run stops "
        "(SIGINT to itself, the first-signal path: after the current batch) at its first "
        "evaluation at or above the threshold. Run clock = progress.csv time_s at that "
        "evaluation's row: it counts from the run's start (workers' and, async, the learner's "
        "start-up included) and includes the earlier evaluations (sync: training waits for "
        "them; async: the learner and workers go on meanwhile, sharing the cores). 'After the "
        "first row' takes off the run clock of the first progress row (start-up plus one "
        "batch). A run that does not reach the threshold counts as infinitely slow in the "
        "median. Seeds interleaved, sync first on even seeds."
    )


def curves_text(results: dict) -> str:
    out = []
    for (label, variant, seed), r in sorted(results.items()):
        if "evals" not in r:
            out.append(f"- {label} {variant} seed {seed}: failed")
            continue
        pts = " ".join(f"{ev['env_steps'] / 1000:.1f}k:{ev['mean']:.0f}" for ev in r["evals"])
        out.append(f"- {label} {variant} ({r['algo']}) seed {seed}: {pts}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- report


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average: {load()}"


def versions(git_start: str) -> str:
    out = [f"python {platform.python_version()}"]
    for pkg in ("torch", "gymnasium", "mujoco", "ale-py", "numpy", "pyzmq"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    git_end = git_line()
    git = git_end if git_end == git_start else f"{git_start} at the start, {git_end} at the end"
    return ", ".join(out) + f"; {git}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs, 1 round (development)")
    p.add_argument("--reps", type=int, default=None, help="overlap rounds (3)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per split half")
    p.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cheetah-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", choices=["overlap", "wallclock"], default=None)
    p.add_argument("--only-algo", nargs="+", default=None, help="overlap: these algos only")
    p.add_argument("--only-env", nargs="+", default=None, help="overlap: these envs only")
    p.add_argument("--only-task", nargs="+", default=None, help="wall-clock: these tasks only")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--results", default="", help="append to this file, not bench/RESULTS.md")
    p.add_argument("--json", default="", help="also write the raw figures here")
    args = p.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    if args.quick:
        args.seeds, args.cheetah_seeds = args.seeds[:1], args.cheetah_seeds[:1]

    started = datetime.datetime.now(datetime.timezone.utc)
    uptime_start = uptime()
    git_start = git_line()  # others may commit while it runs: both ends go in the report
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    log(f"start: {uptime_start}")
    overlap = run_overlap(args, log) if args.only != "wallclock" else {}
    wall = run_wallclock(args, log) if args.only != "overlap" else {}
    uptime_end = uptime()
    elapsed = time.perf_counter() - t_start
    log(f"end: {uptime_end}")

    text = []
    if overlap:
        text.append(overlap_table(overlap))
    if wall:
        text.append(wallclock_table(wall, args))
    print("\n\n".join(text))
    if args.json:
        raw = {
            "overlap": overlap,
            "wallclock": {" / ".join(map(str, k)): v for k, v in wall.items()},
        }
        Path(args.json).write_text(json.dumps(raw, indent=1))
    if args.no_append:
        return 0
    argv_s = " ".join(a for a in sys.argv[1:] if a != "--no-append")
    sec = [
        f"\n## Asynchronous sampling and optimization: overlap and wall-clock "
        f"({started:%Y-%m-%d %H:%M} UTC)\n",
        f"Command: `python bench/async_overlap.py{(' ' + argv_s) if argv_s else ''}` "
        f"({elapsed / 60:.0f} min)  ",
        f"Machine: {machine_line()}; `uptime` before: `{uptime_start}`; after: `{uptime_end}` "
        "(a shared machine: other engineers' test runs shared the cores)  ",
        f"Versions: {versions(git_start)}\n",
    ]
    if overlap:
        first = next((e for e in overlap.values() if e.get("command")), None)
        sec += [
            f"### Overlap efficiency (median of {args.reps} interleaved rounds)\n",
            overlap_table(overlap),
            "",
            overlap_notes(overlap),
            "",
            "Async command, e.g.: `" + (first["command"] if first else "-") + "`",
        ]
        errors = [f"{k}: {err[:600]}" for k, e in overlap.items() for err in e["errors"]]
        if errors:
            sec.append("\nFailures:\n" + "\n".join(f"- {x}" for x in errors))
    if wall:
        sec += [
            "\n### Wall-clock to a return threshold (parallel mode, 1 worker)\n",
            wallclock_table(wall, args),
            "",
            wallclock_notes(wall),
            "\nEvaluation curves (k env steps: mean return):\n" + curves_text(wall),
        ]
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n".join(sec) + "\n")
    else:
        append_results("\n".join(sec) + "\n")
    print(f"appended to {args.results or ROOT / 'bench' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
