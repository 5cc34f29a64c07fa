"""SAC and TD3 on Pendulum-v1: asyncrl against Stable-Baselines3, same hyperparameters, same run.

Hyperparameters are SB3's defaults with 1,000 random steps first, which asyncrl's classic-control
presets (``sac_classic``, ``td3_classic``) copy: 256x256 ReLU networks, batch 256, buffer 1M, gamma
0.99, tau 0.005, one gradient step per env step, one env. SAC: Adam 3e-4 for actor, critics and
the entropy temperature (tuned automatically towards entropy -dim(A), starting at alpha 1). TD3: Adam 1e-3, policy delay 2, target smoothing noise 0.2 clipped at 0.5, Gaussian
exploration noise 0.1 (in [-1, 1] action units; SB3 gets ``NormalActionNoise(0, 0.1)``, which it
adds in the same units, since its default is no noise at all). Both libraries run on the CPU with
``torch.set_num_threads(1)`` (SB3 as shipped would use torch's default, every core: on this
shared 2-core machine that made each SB3 update 20x slower, so one thread is the fair setting).

Runs are interleaved (for each seed and algorithm, asyncrl first on even seeds, SB3 first on odd
ones), each in a fresh Python process. Evaluation, identical for both: every 1,000 env steps
(after that step's update) and at the end, 10 deterministic episodes on 8 separate evaluation
envs (asyncrl: its built-in ``log.eval_every``; SB3: ``evaluate_policy`` from a callback at the
start of the next step's rollout, i.e. after the update). What is timed, identically: training
time excluding evaluation, on two clocks, wall-clock and the process's CPU time (the one other
jobs on a shared machine disturb least), from just before the first env reset, minus all earlier
evaluations. Included for both: env stepping, acting, replay, updates, each library's own
bookkeeping (asyncrl: progress.csv rows and its ten checkpoints, which hold the replay buffer;
SB3: its in-memory logger). Excluded for both: imports, model and env construction, evaluation.

``--updates-only`` measures instead the cost of one gradient step (CPU ms) of each library on the
same filled replay, in interleaved rounds of 200 updates: the part of a step that the libraries'
code decides.

    python bench/qpg_pendulum.py [--algos sac td3] [--seeds 0 1] [--steps 20000] [--no-append]
    python bench/qpg_pendulum.py --updates-only [--rounds 5]
    python bench/qpg_pendulum.py --plot-only     # the curves of the last section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (bench/ is not a package)
    TrainClock,
    append_results,
    comparison_table,
    git_line,
    instrument_asyncrl_train,
    machine_line,
    match_evals,
    read_eval_rows,
    run_worker,
    sb3_timed_eval,
    versions_line,
)

ENV_ID = "Pendulum-v1"
TARGET = -200.0
EVAL_EPISODES = 10
EVAL_ENVS = 8
LEARNING_STARTS = 1000
ISSUE_SB3_REFERENCE = (
    "issue 6, SB3 on this machine type: about 40 env steps/s (about 500 s for 20k steps); SAC "
    "reaches -200 after about 5.7k steps and 124 s, TD3 after about 7k steps and 152 s"
)


# -- workers (one fresh process per run) ---------------------------------------------------------
def asyncrl_config(algo: str, seed: int, steps: int, eval_every: int, run_dir: str):
    import asyncrl

    cfg = asyncrl.resolve_config(
        algo,
        ENV_ID,
        sets=[
            f"seed={seed}",
            f"steps={steps}",
            "torch_threads=1",
            "device='cpu'",
            f"log.eval_every={eval_every}",
            f"log.eval_episodes={EVAL_EPISODES}",
            "log.eval_deterministic=true",
            "log.tensorboard=false",
            "log.progress=false",
        ],
    )
    cfg.run_dir = run_dir
    p = cfg.algo_params
    common = (p.hidden_sizes, p.batch_size, p.buffer_size, p.gamma, p.tau, p.learning_starts)
    expected_common = ([256, 256], 256, 1_000_000, 0.99, 0.005, LEARNING_STARTS)
    if algo == "sac":
        got = (*common, p.learning_rate, p.replay_ratio, p.auto_alpha, p.alpha)
        expected = (*expected_common, 3e-4, 1.0, True, 1.0)
    else:
        got = (*common, p.actor_lr, p.critic_lr, p.policy_delay, p.exploration_noise)
        expected = (*expected_common, 1e-3, 1e-3, 2, 0.1)
    if got != expected or cfg.sampler.num_envs != 1 or cfg.sampler.horizon != 1:
        raise SystemExit(f"asyncrl {algo}_classic preset changed: {got} != {expected}")
    return cfg


def run_asyncrl(algo: str, seed: int, steps: int, eval_every: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import asyncrl

    clock = TrainClock()
    at_eval = instrument_asyncrl_train(clock)
    with tempfile.TemporaryDirectory(prefix="bench_qpg_asyncrl_") as tmp:
        cfg = asyncrl_config(algo, seed, steps, eval_every, str(Path(tmp) / "run"))
        result = asyncrl.train(cfg)
        rows = read_eval_rows(cfg.run_dir)
    evals = match_evals(rows, at_eval)
    return {"evals": evals, "eval_s": clock.excluded_wall, "final_env_steps": result.env_steps}


def sb3_model(algo: str, seed: int, env):
    import numpy as np
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    if algo == "sac":
        return SAC("MlpPolicy", env, learning_starts=LEARNING_STARTS, seed=seed, device="cpu")
    noise = NormalActionNoise(np.zeros(1), 0.1 * np.ones(1))
    return TD3(
        "MlpPolicy",
        env,
        learning_starts=LEARNING_STARTS,
        action_noise=noise,
        seed=seed,
        device="cpu",
    )


def run_sb3(algo: str, seed: int, steps: int, eval_every: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env

    clock = TrainClock()

    env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
    eval_env = make_vec_env(ENV_ID, n_envs=EVAL_ENVS, seed=seed + 10_000)
    model = sb3_model(algo, seed, env)
    callback = sb3_timed_eval(clock, eval_env, eval_every, EVAL_EPISODES)
    clock.start()  # learn() resets the env first, as asyncrl's sampler.initialize does
    model.learn(total_timesteps=steps, callback=callback)
    return {
        "evals": callback.evals,
        "eval_s": clock.excluded_wall,
        "final_env_steps": int(model.num_timesteps),
    }


def run_updates(algo: str, rounds: int, updates: int) -> dict:
    """CPU ms per gradient step, both libraries in this process, alternating rounds."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env

    from asyncrl.algos import ALGOS
    from asyncrl.runners.train import make_sampler

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = asyncrl_config(algo, 0, 20_000, 1000, tmp)
    entry = ALGOS[algo]
    sampler = make_sampler(cfg)
    agent = entry.make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, cfg.device, cfg.algo_params
    )
    ours = entry.make_algo(agent, cfg.algo_params, 0)
    sampler.initialize(agent)
    for _ in range(LEARNING_STARTS + 200):  # fill the replay, start updating
        ours.optimize(sampler.obtain(), 0.0)
    sb3 = sb3_model(algo, 0, make_vec_env(ENV_ID, n_envs=1, seed=0))
    sb3.learn(LEARNING_STARTS + 200)

    def ours_round() -> float:
        c = time.process_time()
        for _ in range(updates):
            ours.optimize(sampler.obtain(), 0.0)  # one env step + one update, as in training
        return (time.process_time() - c) / updates * 1e3

    def sb3_round() -> float:
        c = time.process_time()
        sb3.learn(updates, reset_num_timesteps=False)
        return (time.process_time() - c) / updates * 1e3

    times: dict[str, list[float]] = {"asyncrl": [], "sb3": []}
    for r in range(rounds):
        order = (("asyncrl", ours_round), ("sb3", sb3_round))
        for lib, fn in order if r % 2 == 0 else order[::-1]:
            times[lib].append(fn())
    return {lib: float(np.median(v)) for lib, v in times.items()} | {"rounds": times}


WORKERS = {"asyncrl": run_asyncrl, "sb3": run_sb3}


# -- parent: schedule, summarise, record ----------------------------------------------------------
def launch(lib: str, algo: str, seed: int, steps: int, eval_every: int) -> dict:
    cmd = [__file__, "--worker", lib, "--algos", algo, "--seeds", str(seed)]
    cmd += ["--steps", str(steps), "--eval-every", str(eval_every)]
    out = run_worker(cmd, f"{lib} {algo} seed {seed}")
    hit = next((e for e in out["evals"] if e["eval_return_mean"] >= TARGET), None)
    final = out["evals"][-1]
    return {
        "lib": lib,
        "algo": algo,
        "seed": seed,
        "steps_to_target": hit["env_steps"] if hit else None,
        "s_to_target": hit["train_s"] if hit else None,
        "cpu_s_to_target": hit["train_cpu_s"] if hit else None,
        "final_eval": final["eval_return_mean"],
        "train_s": final["train_s"],
        "train_cpu_s": final["train_cpu_s"],
        "steps_per_s": out["final_env_steps"] / final["train_s"],
        "eval_s": out["eval_s"],
        "final_env_steps": out["final_env_steps"],
        "evals": out["evals"],
    }


def fmt(x: float | None, kind: str) -> str:
    if x is None:
        return "not reached"
    if kind == "steps":
        return f"{x / 1000:.1f}k"
    return f"{x:.1f}"


COLUMNS = [
    ("steps_to_target", "env steps to -200", "steps"),
    ("s_to_target", "wall s to -200", "s"),
    ("cpu_s_to_target", "CPU s to -200", "s"),
    ("final_eval", "final eval", "ret"),
    ("train_s", "wall s, all steps", "s"),
    ("train_cpu_s", "CPU s, all steps", "s"),
    ("steps_per_s", "env steps/s", "s"),
]


def make_table(results: list[dict], algo: str, seeds: list[int]) -> str:
    by = {(r["lib"], r["seed"]): r for r in results if r["algo"] == algo}
    return comparison_table(by, seeds, COLUMNS, fmt)


def plot_curves(runs: list[dict], path: Path) -> None:
    """Evaluation return against env steps, one panel per algorithm; ``runs``: dicts with
    algo, lib, seed and evals [(env_steps, mean return)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = sorted({r["algo"] for r in runs})
    fig, axes = plt.subplots(1, len(algos), figsize=(6 * len(algos), 4), squeeze=False)
    for ax, algo in zip(axes[0], algos):
        for r in (r for r in runs if r["algo"] == algo):
            xs, ys = zip(*r["evals"])
            ax.plot(
                [x / 1000 for x in xs],
                ys,
                "-" if r["lib"] == "asyncrl" else "--",
                color="tab:blue" if r["lib"] == "asyncrl" else "tab:gray",
                alpha=0.9 if r["seed"] == 0 else 0.6,
                label=f"{r['lib']} seed {r['seed']}",
            )
        ax.axhline(TARGET, color="tab:red", lw=0.8, ls=":", label=f"{TARGET:.0f}")
        ax.set_title(f"{algo.upper()} {ENV_ID}")
        ax.set_xlabel("env steps (k)")
        ax.set_ylabel(f"mean eval return ({EVAL_EPISODES} deterministic episodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_from_results(path: Path) -> list[dict]:
    """The evaluation curves of the last Pendulum comparison section in RESULTS.md."""
    text = path.read_text()
    start = text.rfind("## SAC and TD3 on Pendulum-v1: asyncrl vs Stable-Baselines3")
    if start < 0:
        raise SystemExit(f"no Pendulum comparison section in {path}")
    runs = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        parts = line.split()
        if len(parts) > 5 and parts[0] == "-" and parts[3] == "seed":
            evals = [
                (int(float(p.split(":")[0][:-1]) * 1000), float(p.split(":")[1])) for p in parts[5:]
            ]
            runs.append(
                {
                    "algo": parts[1].lower(),
                    "lib": parts[2],
                    "seed": int(parts[4][:-1]),
                    "evals": evals,
                }
            )
    return runs


def main_updates(args, command: str) -> None:
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    rows = []
    for algo in args.algos:
        cmd = [__file__, "--worker", "updates", "--algos", algo]
        cmd += ["--rounds", str(args.rounds)]
        out = run_worker(cmd, f"updates {algo}")
        rows.append(
            f"| {algo.upper()} | {out['asyncrl']:.2f} | {out['sb3']:.2f} | "
            f"{out['asyncrl'] / out['sb3']:.2f} | "
            + ", ".join(
                f"{a:.1f}/{b:.1f}" for a, b in zip(out["rounds"]["asyncrl"], out["rounds"]["sb3"])
            )
            + " |"
        )
        print(rows[-1], flush=True)
    load_after = os.getloadavg()
    table = "\n".join(
        [
            "| algo | asyncrl CPU ms/step | SB3 CPU ms/step | asyncrl / SB3 | rounds (asyncrl/SB3) |",
            "|---|---:|---:|---:|---|",
            *rows,
        ]
    )
    print(table)
    if args.no_append:
        return
    append_results(
        f"""
## SAC and TD3 on Pendulum-v1, cost of a training step: asyncrl vs Stable-Baselines3 ({started:%Y-%m-%d %H:%M %Z})

Command: `{command}`

Machine: {machine_line()}; 1-minute load average {load_before[0]:.1f} before and {load_after[0]:.1f}
after (other jobs shared the cores). Versions: {versions_line()}; {git_line()}.
`torch.set_num_threads(1)` in both.

CPU milliseconds per env step with one gradient step (256x256 networks, batch 256, the replay
holding 1,200 steps): asyncrl's `optimize(sampler.obtain())`, SB3's `learn(200)` continued, in
{args.rounds} alternating rounds of 200 steps each in one process; median of the rounds.

{table}
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["sac", "td3"], choices=["sac", "td3"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--updates-only", action="store_true", help="time gradient steps only")
    parser.add_argument("--rounds", type=int, default=5, help="--updates-only rounds")
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("qpg_pendulum.png"))
    parser.add_argument(
        "--plot-only", action="store_true", help="plot the curves of the last RESULTS.md section"
    )
    parser.add_argument("--worker", choices=[*sorted(WORKERS), "updates"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.plot_only:
        plot_curves(curves_from_results(Path(__file__).with_name("RESULTS.md")), args.plot)
        print(f"plot: {args.plot}")
        return

    if args.worker == "updates":
        print(json.dumps(run_updates(args.algos[0], args.rounds, 200)))
        return
    if args.worker:
        out = WORKERS[args.worker](args.algos[0], args.seeds[0], args.steps, args.eval_every)
        print(json.dumps(out))
        return

    command = "python bench/qpg_pendulum.py " + " ".join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    if args.updates_only:
        main_updates(args, command.strip())
        return
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    results = []
    for i, seed in enumerate(args.seeds):
        for algo in args.algos:
            order = ("asyncrl", "sb3") if i % 2 == 0 else ("sb3", "asyncrl")
            for lib in order:
                r = launch(lib, algo, seed, args.steps, args.eval_every)
                results.append(r)
                print(
                    f"{algo} {lib:8s} seed {seed}: "
                    + (
                        f"-200 at {fmt(r['steps_to_target'], 'steps')} env steps, "
                        f"{fmt(r['s_to_target'], 's')} s ({fmt(r['cpu_s_to_target'], 's')} CPU s); "
                        if r["steps_to_target"] is not None
                        else "-200 not reached; "
                    )
                    + f"final eval {r['final_eval']:.1f}; train {r['train_s']:.1f} s "
                    f"({r['train_cpu_s']:.1f} CPU s) + eval {r['eval_s']:.1f} s for "
                    f"{r['final_env_steps']} steps; load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    load_after = os.getloadavg()
    tables = {algo: make_table(results, algo, args.seeds) for algo in args.algos}
    for algo, table in tables.items():
        print(f"\n{algo.upper()}\n{table}")
    print(f"\nreference: {ISSUE_SB3_REFERENCE}")
    plot_curves(
        [
            {**r, "evals": [(e["env_steps"], e["eval_return_mean"]) for e in r["evals"]]}
            for r in results
        ],
        args.plot,
    )
    print(f"plot: {args.plot}")
    if args.no_append:
        return
    curves = "\n".join(
        f"- {r['algo'].upper()} {r['lib']} seed {r['seed']}: "
        + " ".join(f"{e['env_steps'] / 1000:.0f}k:{e['eval_return_mean']:.0f}" for e in r["evals"])
        for r in results
    )
    body = "\n\n".join(f"**{algo.upper()}**\n\n{table}" for algo, table in tables.items())
    append_results(
        f"""
## SAC and TD3 on Pendulum-v1: asyncrl vs Stable-Baselines3 ({started:%Y-%m-%d %H:%M %Z})

Command: `{command.strip()}`

Machine: {machine_line()}; 1-minute load average {load_before[0]:.1f} before and
{load_after[0]:.1f} after the runs (other jobs shared the 2 cores throughout: trust CPU s over
wall s, and ratios measured in the same run over absolute figures).

Versions: {versions_line()}; {git_line()}. `torch.set_num_threads(1)` in both.

Same hyperparameters (SB3 defaults, 256x256, batch 256, learning starts 1,000 = asyncrl presets
`sac_classic` / `td3_classic`; TD3 with Gaussian exploration noise 0.1 in both), {args.steps} env
steps per run, seeds {", ".join(map(str, args.seeds))}, runs interleaved, one fresh process per
run. Evaluation every {args.eval_every} env steps and at the end: {EVAL_EPISODES} deterministic
episodes on {EVAL_ENVS} separate envs. **Seconds exclude evaluation** (and imports and
construction): training wall-clock and process CPU time from just before the first env reset.
"to -200": at the first evaluation with mean return >= -200. Median over seeds (a run that never
reaches -200 counts as infinitely slow). Reference: {ISSUE_SB3_REFERENCE}. Curves:
`{args.plot.name}`.

{body}

Evaluation curves (k env steps: mean return):
{curves}
"""
    )


if __name__ == "__main__":
    main()
