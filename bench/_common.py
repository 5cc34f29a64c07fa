"""Scaffolding shared by the asyncrl-vs-Stable-Baselines3 benchmark scripts.

bench/ is not a package: the scripts put their own directory on ``sys.path`` and
``import _common``. Nothing here decides what is measured; each script keeps its own
hyperparameters, targets, columns and report text.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_PATH = Path(__file__).with_name("RESULTS.md")


# -- clocks ---------------------------------------------------------------------------------------
class TrainClock:
    """Wall-clock and process-CPU seconds since ``start()``, less the time spent in ``excluded()``
    blocks (the evaluations). CPU time is the figure that other jobs on the machine disturb least."""

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.excluded_wall = self.excluded_cpu = 0.0

    def now(self) -> tuple[float, float]:
        return (
            time.perf_counter() - self.t0 - self.excluded_wall,
            time.process_time() - self.c0 - self.excluded_cpu,
        )

    @contextlib.contextmanager
    def excluded(self):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.excluded_wall += time.perf_counter() - wall
            self.excluded_cpu += time.process_time() - cpu


# -- asyncrl worker side --------------------------------------------------------------------------
def instrument_asyncrl_train(clock: TrainClock) -> list[tuple[float, float, float]]:
    """Instrument asyncrl's training loop from outside (the library is not changed): ``clock``
    starts where ``train()`` starts its own (just before ``sampler.initialize``, the first env
    reset) and each call of ``asyncrl.runners.train.evaluate`` is taken off it. Returns the list
    that receives (train wall s, train CPU s, eval mean) at each evaluation."""
    train_module = importlib.import_module("asyncrl.runners.train")
    original_make_sampler, original_evaluate = train_module.make_sampler, train_module.evaluate
    at_eval: list[tuple[float, float, float]] = []

    def make_sampler(*args, **kwargs):
        sampler = original_make_sampler(*args, **kwargs)
        initialize = sampler.initialize

        def timed_initialize(agent):
            clock.start()
            return initialize(agent)

        sampler.initialize = timed_initialize
        return sampler

    def timed_evaluate(*args, **kwargs):
        wall, cpu = clock.now()
        with clock.excluded():
            returns = original_evaluate(*args, **kwargs)
        at_eval.append((wall, cpu, float(returns.mean())))
        return returns

    train_module.make_sampler, train_module.evaluate = make_sampler, timed_evaluate
    return at_eval


def read_eval_rows(run_dir: str | Path) -> list[dict]:
    """The progress.csv rows of a finished asyncrl run that carry an evaluation."""
    with open(Path(run_dir) / "progress.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["eval_return_mean"] not in ("", None)]


def match_evals(rows: list[dict], at_eval: list[tuple[float, float, float]]) -> list[dict]:
    """Pair progress.csv's evaluation rows with the timed evaluations, checking they agree."""
    if len(rows) != len(at_eval):
        raise SystemExit(f"{len(rows)} eval rows in progress.csv but {len(at_eval)} evaluations")
    evals = []
    for row, (train_s, train_cpu_s, eval_mean) in zip(rows, at_eval):
        if abs(float(row["eval_return_mean"]) - eval_mean) > 0.01:
            raise SystemExit(f"progress.csv eval {row['eval_return_mean']} != measured {eval_mean}")
        evals.append(
            {
                "env_steps": int(row["env_steps"]),
                "train_s": train_s,
                "train_cpu_s": train_cpu_s,
                "eval_return_mean": eval_mean,
            }
        )
    return evals


# -- SB3 worker side ------------------------------------------------------------------------------
def sb3_timed_eval(clock: TrainClock, eval_env, eval_every: int, n_episodes: int):
    """An SB3 callback that evaluates (``evaluate_policy``, deterministic, ``n_episodes``) once
    the step count reaches a multiple of ``eval_every``, at the start of the next rollout (i.e.
    after the update / training phase), and at the end, off ``clock``. Its ``evals`` list holds
    dicts like asyncrl's (env_steps, train_s, train_cpu_s, eval_return_mean)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    class TimedEval(BaseCallback):
        def __init__(self):
            super().__init__()
            self.eval_env = eval_env
            self.next_eval = eval_every
            self.evals: list[dict] = []

        def _evaluate(self) -> None:
            train_s, train_cpu_s = clock.now()
            with clock.excluded():
                returns, _ = evaluate_policy(
                    self.model,
                    self.eval_env,
                    n_eval_episodes=n_episodes,
                    deterministic=True,
                    return_episode_rewards=True,
                )
            self.evals.append(
                {
                    "env_steps": int(self.num_timesteps),
                    "train_s": train_s,
                    "train_cpu_s": train_cpu_s,
                    "eval_return_mean": float(sum(returns) / len(returns)),
                }
            )

        def _on_rollout_start(self) -> None:
            if self.num_timesteps >= self.next_eval:
                self._evaluate()
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += eval_every

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            if not self.evals or self.evals[-1]["env_steps"] != self.num_timesteps:
                self._evaluate()

    return TimedEval()


# -- parent side ----------------------------------------------------------------------------------
def run_worker(cmd: list[str], what: str) -> dict:
    """Run one worker process (``cmd`` after the interpreter) and parse its last stdout line."""
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_or_none(xs: list) -> float | None:
    """Median counting a run that never reached the target as +infinity (None if that wins)."""
    m = statistics.median(sorted(math.inf if x is None else x for x in xs))
    return None if math.isinf(m) else m


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def comparison_table(by: dict, seeds: list[int], columns: list[tuple[str, str, str]], fmt) -> str:
    """Markdown table, asyncrl and SB3 side by side per column: one row per seed, the medians
    and the asyncrl / SB3 ratio of the medians. ``by[(lib, seed)]`` is a run's result dict;
    ``columns`` are (key, name, kind) and ``fmt(value, kind)`` formats a cell."""
    header = "| seed | " + " | ".join(f"{name}: asyncrl | SB3" for _, name, _ in columns) + " |"
    lines = [header, "|---" + "|---:" * (2 * len(columns)) + "|"]
    for seed in seeds:
        cells = []
        for key, _, kind in columns:
            cells += [fmt(by[("asyncrl", seed)][key], kind), fmt(by[("sb3", seed)][key], kind)]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    medians: dict[tuple[str, str], float | None] = {}
    cells = []
    for key, _, kind in columns:
        for lib in ("asyncrl", "sb3"):
            medians[(lib, key)] = median_or_none([by[(lib, s)][key] for s in seeds])
            cells.append(fmt(medians[(lib, key)], kind))
    lines.append("| **median** | " + " | ".join(cells) + " |")
    cells = []
    for key, _, _ in columns:
        cells += [ratio(medians[("asyncrl", key)], medians[("sb3", key)]), ""]
    lines.append("| **asyncrl / SB3** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")
        )
    return f"{os.cpu_count()} cores, CPU only, `{model}`"


def versions_line() -> str:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "missing"

    return (
        f"Python {platform.python_version()}, torch {v('torch')}, stable-baselines3 "
        f"{v('stable_baselines3')}, gymnasium {v('gymnasium')}, numpy {v('numpy')}"
    )


def git_line() -> str:
    root = BENCH_DIR.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "asyncrl"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "asyncrl: unknown commit"
    return f"asyncrl at {head}" + (" + uncommitted changes in asyncrl/" if dirty else "")


def append_results(section: str) -> Path:
    """Append ``section`` to bench/RESULTS.md (created with a title if missing)."""
    if not RESULTS_PATH.exists():
        RESULTS_PATH.write_text("# Benchmark results\n")
    with RESULTS_PATH.open("a") as f:
        f.write(section)
    return RESULTS_PATH
