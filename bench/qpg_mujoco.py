"""SAC and TD3 on MuJoCo HalfCheetah-v5 and Hopper-v5 for 100k env steps: evaluation-return
curves, a PNG plot and a table next to the published figures at the same step count.

Each run is ``asyncrl train ALGO ENV --steps 100000`` with the MuJoCo presets (``sac_mujoco``,
``td3_mujoco``: the papers' hyperparameters, 256x256, batch 256, one update per env step, 10k
(SAC) or 25k (TD3) uniform random steps first), one seed, serial sampler, CPU, one torch thread,
and 10 deterministic evaluation episodes every 5k env steps. Runs live in ``--runs-dir`` (one run
directory each); a run that was stopped (Ctrl-C, SIGTERM, a reboot) is resumed from its last
checkpoint when the script is started again, and a finished one is not rerun, so the script can be
started in the background and restarted until every run is done:

    nohup python bench/qpg_mujoco.py > bench_qpg_mujoco.log 2>&1 &
    python bench/qpg_mujoco.py --report-only      # table, plot and RESULTS.md from what exists

Published figures (``PUBLISHED`` below) are approximate ranges of the mean evaluation return at
100k steps on the papers' learning curves, not tables: TD3 from Fujimoto et al. 2018
(arXiv:1802.09477, fig. 5, MuJoCo -v1 envs, 10 seeds), SAC from Haarnoja et al. 2018
(arXiv:1812.05905, fig. 1, -v2 envs, 5 seeds). They were recalled from those figures, not
re-measured on them (the papers could not be opened where this was written): check them against
the figures before quoting them. The env versions differ from -v5 (same tasks and rewards, not
bit-identical simulators), and one seed here is not a mean over seeds: read the comparison as "in
the published range or not".
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ENVS = ["HalfCheetah-v5", "Hopper-v5"]
ALGOS = ["sac", "td3"]
# (low, high): approximate published mean evaluation return at 100k env steps (see above).
PUBLISHED = {
    ("td3", "HalfCheetah-v5"): (3000, 5000, "Fujimoto et al. 2018, fig. 5 (HalfCheetah-v1)"),
    ("td3", "Hopper-v5"): (1000, 3000, "Fujimoto et al. 2018, fig. 5 (Hopper-v1)"),
    ("sac", "HalfCheetah-v5"): (3000, 5000, "Haarnoja et al. 2018b, fig. 1 (HalfCheetah-v2)"),
    ("sac", "Hopper-v5"): (1000, 3000, "Haarnoja et al. 2018b, fig. 1 (Hopper-v2)"),
}


def run_dir_of(runs_dir: Path, algo: str, env_id: str, seed: int) -> Path:
    return runs_dir / f"{algo}_{env_id}_seed{seed}"


def read_progress(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_one(algo: str, env_id: str, seed: int, steps: int, eval_every: int, run_dir: Path) -> None:
    """Train (or resume) one run in a child process, so each run gets a fresh interpreter."""
    rows = read_progress(run_dir)
    if rows and int(rows[-1]["env_steps"]) >= steps:
        print(f"{run_dir.name}: already at {rows[-1]['env_steps']} steps", flush=True)
        return
    cmd = [sys.executable, "-m", "asyncrl.cli"]
    has_checkpoint = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    if has_checkpoint:
        cmd += ["train", "--resume", str(run_dir), "--steps", str(steps), "--no-progress"]
    else:
        if run_dir.exists():  # started but never checkpointed: start over
            for p in sorted(run_dir.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        cmd += [
            "train", algo, env_id, "--steps", str(steps), "--seed", str(seed),
            "--run-dir", str(run_dir), "--no-progress",
            "--set", f"log.eval_every={eval_every}", "--set", "log.eval_episodes=10",
            "--set", "log.checkpoint_every=10000", "--set", "torch_threads=1",
        ]  # fmt: skip
    print(f"{run_dir.name}: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd)
    print(
        f"{run_dir.name}: exit {proc.returncode} after {time.perf_counter() - started:.0f} s",
        flush=True,
    )


def evals_of(rows: list[dict]) -> list[tuple[int, float]]:
    return [
        (int(r["env_steps"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]
    ]


def plot(results: dict, steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ENVS), figsize=(6 * len(ENVS), 4))
    for ax, env_id in zip(axes, ENVS):
        for i, (algo, color) in enumerate(zip(ALGOS, ("tab:blue", "tab:orange"))):
            evals = results.get((algo, env_id), {}).get("evals", [])
            if evals:
                xs, ys = zip(*evals)
                ax.plot(
                    [x / 1000 for x in xs],
                    ys,
                    "-o",
                    ms=3,
                    color=color,
                    label=f"asyncrl {algo.upper()}",
                )
            low, high, _ = PUBLISHED[(algo, env_id)]
            ax.errorbar(
                [steps / 1000 + 2 * i - 1], [(low + high) / 2], yerr=[[(high - low) / 2]], fmt="s",
                color=color, capsize=4, alpha=0.6, label=f"published {algo.upper()} at {steps // 1000}k (approx.)",
            )  # fmt: skip
        ax.set_title(env_id)
        ax.set_xlabel("env steps (k)")
        ax.set_ylabel("mean eval return (10 episodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def collect(runs_dir: Path, seed: int) -> dict:
    results = {}
    for algo in ALGOS:
        for env_id in ENVS:
            rows = read_progress(run_dir_of(runs_dir, algo, env_id, seed))
            if not rows:
                continue
            last = rows[-1]
            results[(algo, env_id)] = {
                "evals": evals_of(rows),
                "env_steps": int(last["env_steps"]),
                "time_s": float(last["time_s"]),
                "updates": int(last["updates"]),
            }
    return results


def make_table(results: dict, steps: int) -> str:
    lines = [
        f"| algo | env | env steps done | eval at {steps // 1000}k | best eval | published at "
        f"{steps // 1000}k (approx. range) | source | wall s (incl. eval) | env steps/s |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for algo in ALGOS:
        for env_id in ENVS:
            low, high, source = PUBLISHED[(algo, env_id)]
            r = results.get((algo, env_id))
            if r is None:
                lines.append(
                    f"| {algo.upper()} | {env_id} | not run | | | {low}-{high} | {source} | | |"
                )
                continue
            evals = r["evals"]
            at_end = evals[-1][1] if evals and evals[-1][0] >= steps else None
            best = max(e for _, e in evals) if evals else None
            lines.append(
                f"| {algo.upper()} | {env_id} | {r['env_steps']} | "
                f"{'' if at_end is None else f'{at_end:.0f}'} | "
                f"{'' if best is None else f'{best:.0f}'} | {low}-{high} | {source} | "
                f"{r['time_s']:.0f} | {r['env_steps'] / max(r['time_s'], 1e-9):.1f} |"
            )
    return "\n".join(lines)


def versions_line() -> str:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "missing"

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"Python {platform.python_version()}, torch {v('torch')}, gymnasium {v('gymnasium')}, "
        f"mujoco {v('mujoco')}, asyncrl at {head or 'unknown commit'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench_qpg_mujoco"))
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("qpg_mujoco.png"))
    parser.add_argument(
        "--report-only", action="store_true", help="no training: report what exists"
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    if not args.report_only:
        args.runs_dir.mkdir(parents=True, exist_ok=True)
        for env_id in ENVS:
            for algo in ALGOS:
                run_dir = run_dir_of(args.runs_dir, algo, env_id, args.seed)
                run_one(algo, env_id, args.seed, args.steps, args.eval_every, run_dir)
    results = collect(args.runs_dir, args.seed)
    if not results:
        raise SystemExit(f"no runs under {args.runs_dir}")
    plot(results, args.steps, args.plot)
    table = make_table(results, args.steps)
    print(table)
    print(f"plot: {args.plot}")
    if args.no_append:
        return
    curves = "\n".join(
        f"- {algo.upper()} {env_id}: " + " ".join(f"{s // 1000}k:{e:.0f}" for s, e in r["evals"])
        for (algo, env_id), r in results.items()
    )
    complete = all(r["env_steps"] >= args.steps for r in results.values()) and len(results) == 4
    command = "python bench/qpg_mujoco.py " + " ".join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    section = f"""
## SAC and TD3 on MuJoCo HalfCheetah-v5 and Hopper-v5, {args.steps // 1000}k steps ({started:%Y-%m-%d %H:%M %Z})

Command: `{command.strip()}`{"" if complete else " — **incomplete: some runs have not reached the full step count yet**"}

Machine: {os.cpu_count()} cores, CPU only ({platform.machine()}); 1-minute load average
{load_before[0]:.1f} at the start of this report (other jobs shared the cores). Versions:
{versions_line()}.

asyncrl MuJoCo presets (papers' hyperparameters), seed {args.seed}, one run each, evaluation
every {args.eval_every} env steps with 10 deterministic episodes. The published column is
an approximate range at {args.steps // 1000}k steps on the papers' learning curves (TD3: Fujimoto et
al. 2018, arXiv:1802.09477, fig. 5, -v1 envs; SAC: Haarnoja et al. 2018b, arXiv:1812.05905,
fig. 1, -v2 envs), recalled from the figures rather than re-read from them here: indicative only,
check the figures before quoting. Wall seconds include evaluation.
Plot: `{args.plot.name}`.

{table}

Evaluation curves (k env steps: mean return):
{curves}
"""
    results_path = Path(__file__).with_name("RESULTS.md")
    if not results_path.exists():
        results_path.write_text("# Benchmark results\n")
    with results_path.open("a") as f:
        f.write(section)


if __name__ == "__main__":
    main()
