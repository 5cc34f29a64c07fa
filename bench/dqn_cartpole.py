"""DQN on CartPole-v1: asyncrl against Stable-Baselines3, same hyperparameters, same run.

Both libraries train DQN with the RL-Zoo CartPole-v1 hyperparameters (asyncrl's preset
``dqn_classic``): Adam lr 2.3e-3, batch 64, replay 100k, learning starts 1000, 128 gradient
steps every 256 env steps (asyncrl: replay ratio 0.5, sampler horizon 256), target network
copied every 10 env steps (so before every training phase), epsilon 1 -> 0.04 over the first
16% of the run, gamma 0.99, Huber loss, gradient-norm clip 10, plain (not double) targets, a
256x256 ReLU MLP, one env. Each run trains for 60k env steps (so the epsilon schedules are
identical; both stop at 60,160 = 235 x 256, the end of the last 256-step rollout). Runs are
interleaved across seeds (asyncrl first on even seeds, SB3 first on odd ones) so machine noise
hits both, and each run is a fresh Python process importing only its own library. Both use
``torch.set_num_threads(1)`` and the CPU (two threads are several times slower on this shared
2-core machine, for both).

Evaluation, identical cadence and size for both: after the training phase that brings the
env-step count to a multiple of ``--eval-every`` (5,120 = 20 rollouts) and once at the end, 10
deterministic (greedy) episodes on separate evaluation envs (asyncrl: its built-in periodic
evaluation; SB3: ``evaluate_policy`` on its own Monitor-wrapped env, from a callback at the start
of the next rollout, i.e. after the training phase).

What is timed (identically): training time *excluding evaluation*, on two clocks, wall-clock
and the process's CPU time (the latter is what other jobs on a shared machine disturb least),
from just before the first env reset to the evaluation point, minus all earlier evaluations.
asyncrl: the clocks start when ``train()`` calls ``sampler.initialize`` and each call of
``asyncrl.runners.train.evaluate`` is taken off them (both wrapped from this script; the library
is not changed). SB3: the clocks start just before ``model.learn()``. Included for both: env
stepping, acting, replay, the updates and each library's own bookkeeping (asyncrl: progress.csv
rows and its ten checkpoints, which hold the replay buffer, with TensorBoard and the live display
off; SB3: its in-memory logger, verbose=0). Excluded for both: imports, model and env
construction, evaluation.

Reported per run: env steps and seconds (wall, CPU) until the evaluation mean first reaches 450;
the best and the final evaluation; the training seconds and env steps/s for the whole run.

    python bench/dqn_cartpole.py [--seeds 0 1 2] [--steps 60000] [--eval-every 5120]
                                 [--asyncrl-set KEY=VALUE ...] [--no-append]
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

ENV_ID = "CartPole-v1"
TARGET = 450.0
EVAL_EPISODES = 10
ISSUE_SB3_REFERENCE = (
    "SB3 DQN, issue 5, this machine type: 60k steps in ~180 s (~340 steps/s), final eval 500"
)

# RL-Zoo CartPole-v1 DQN (rl-baselines3-zoo hyperparams/dqn.yml); asyncrl's dqn_classic preset.
LR, BATCH, BUFFER, LEARNING_STARTS, GAMMA = 2.3e-3, 64, 100_000, 1000, 0.99
TRAIN_FREQ, GRADIENT_STEPS, TARGET_UPDATE = 256, 128, 10
EXPLORATION_FRACTION, FINAL_EPS, NET = 0.16, 0.04, [256, 256]


# -- workers (one fresh process per run) ----------------------------------------------------------
def run_asyncrl(seed: int, steps: int, eval_every: int, extra_sets: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    import asyncrl

    clock = TrainClock()
    at_eval = instrument_asyncrl_train(clock)
    with tempfile.TemporaryDirectory(prefix="bench_dqn_asyncrl_") as tmp:
        cfg = asyncrl.resolve_config(
            "dqn",
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
                *extra_sets,
            ],
        )
        cfg.run_dir = str(Path(tmp) / "run")
        p = cfg.algo_params
        expected = (
            1,
            TRAIN_FREQ,
            LR,
            BATCH,
            BUFFER,
            LEARNING_STARTS,
            GAMMA,
            0.5,
            TARGET_UPDATE,
            False,
            10.0,
            1,
            1.0,
            FINAL_EPS,
            EXPLORATION_FRACTION,
            0.0,
            NET,
            False,
            False,
        )
        got = (
            cfg.sampler.num_envs,
            cfg.sampler.horizon,
            p.learning_rate,
            p.batch_size,
            p.buffer_size,
            p.learning_starts,
            p.gamma,
            p.replay_ratio,
            p.target_update_interval,
            p.double,
            p.max_grad_norm,
            p.n_step,
            p.eps_start,
            p.eps_final,
            p.eps_fraction,
            p.eval_epsilon,
            p.hidden_sizes,
            p.dueling,
            p.prioritized,
        )
        if got != expected and not extra_sets:
            raise SystemExit(f"asyncrl dqn_classic preset changed: {got} != {expected}")
        wall_start = time.perf_counter()
        result = asyncrl.train(cfg)
        wall = time.perf_counter() - wall_start
        rows = read_eval_rows(cfg.run_dir)
    evals = match_evals(rows, at_eval)
    return {
        "evals": evals,
        "eval_s": clock.excluded_wall,
        "wall_s": wall,
        "final_env_steps": result.env_steps,
    }


def run_sb3(seed: int, steps: int, eval_every: int, extra_sets: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env

    clock = TrainClock()

    env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=seed + 10_000)
    model = DQN(
        "MlpPolicy",
        env,
        learning_rate=LR,
        batch_size=BATCH,
        buffer_size=BUFFER,
        learning_starts=LEARNING_STARTS,
        gamma=GAMMA,
        target_update_interval=TARGET_UPDATE,
        train_freq=TRAIN_FREQ,
        gradient_steps=GRADIENT_STEPS,
        exploration_fraction=EXPLORATION_FRACTION,
        exploration_final_eps=FINAL_EPS,
        policy_kwargs={"net_arch": NET},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    callback = sb3_timed_eval(clock, eval_env, eval_every, EVAL_EPISODES)
    wall_start = time.perf_counter()
    clock.start()  # model.learn() resets the env first, as asyncrl's sampler.initialize does
    model.learn(total_timesteps=steps, callback=callback)
    wall = time.perf_counter() - wall_start
    return {
        "evals": callback.evals,
        "eval_s": clock.excluded_wall,
        "wall_s": wall,
        "final_env_steps": int(model.num_timesteps),
    }


WORKERS = {"asyncrl": run_asyncrl, "sb3": run_sb3}


# -- parent: schedule, summarise, record ----------------------------------------------------------
def launch(lib: str, seed: int, steps: int, eval_every: int, asyncrl_sets: list[str]) -> dict:
    cmd = [
        __file__,
        "--worker",
        lib,
        "--seed",
        str(seed),
        "--steps",
        str(steps),
        "--eval-every",
        str(eval_every),
        *(f"--asyncrl-set={item}" for item in asyncrl_sets),
    ]
    out = run_worker(cmd, f"{lib} seed {seed}")
    evals = out["evals"]
    hit = next((e for e in evals if e["eval_return_mean"] >= TARGET), None)
    final = evals[-1]
    return {
        "lib": lib,
        "seed": seed,
        "steps_to_target": hit["env_steps"] if hit else None,
        "s_to_target": hit["train_s"] if hit else None,
        "cpu_s_to_target": hit["train_cpu_s"] if hit else None,
        "best_eval": max(e["eval_return_mean"] for e in evals),
        "final_eval": final["eval_return_mean"],
        "train_s": final["train_s"],
        "train_cpu_s": final["train_cpu_s"],
        "steps_per_s": out["final_env_steps"] / final["train_s"],
        "eval_s": out["eval_s"],
        "wall_s": out["wall_s"],
        "final_env_steps": out["final_env_steps"],
        "evals": evals,
    }


def fmt(x: float | None, kind: str) -> str:
    if x is None:
        return "not reached"
    if kind == "steps":
        return f"{x / 1000:.1f}k"
    if kind in ("s", "ret"):
        return f"{x:.1f}"
    return f"{x:.0f}"


COLUMNS = [
    ("steps_to_target", "env steps to 450", "steps"),
    ("s_to_target", "wall s to 450", "s"),
    ("cpu_s_to_target", "CPU s to 450", "s"),
    ("best_eval", "best eval", "ret"),
    ("final_eval", "final eval", "ret"),
    ("train_s", "wall s, run", "s"),
    ("train_cpu_s", "CPU s, run", "s"),
    ("steps_per_s", "steps/s", "rate"),
]


def make_table(results: list[dict], seeds: list[int]) -> str:
    return comparison_table({(r["lib"], r["seed"]): r for r in results}, seeds, COLUMNS, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--eval-every", type=int, default=5120)
    parser.add_argument(
        "--asyncrl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra asyncrl --set override (e.g. dqn.double=true); repeatable",
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(
            json.dumps(
                WORKERS[args.worker](args.seed, args.steps, args.eval_every, args.asyncrl_set)
            )
        )
        return

    command = "python bench/dqn_cartpole.py " + " ".join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    results = []
    for i, seed in enumerate(args.seeds):
        order = ("asyncrl", "sb3") if i % 2 == 0 else ("sb3", "asyncrl")
        for lib in order:
            r = launch(lib, seed, args.steps, args.eval_every, args.asyncrl_set)
            results.append(r)
            reached = (
                f"450 at {fmt(r['steps_to_target'], 'steps')} env steps, "
                f"{fmt(r['s_to_target'], 's')} s ({fmt(r['cpu_s_to_target'], 's')} CPU s); "
                if r["steps_to_target"] is not None
                else "450 not reached; "
            )
            print(
                f"{lib:8s} seed {seed}: {reached}best {r['best_eval']:.1f}, final eval "
                f"{r['final_eval']:.1f}; train {r['train_s']:.1f} s ({r['train_cpu_s']:.1f} "
                f"CPU s) + eval {r['eval_s']:.1f} s for {r['final_env_steps']} steps",
                flush=True,
            )
    load_after = os.getloadavg()
    table = make_table(results, args.seeds)
    print()
    print(table)
    print(f"\nreference: {ISSUE_SB3_REFERENCE}")
    if args.no_append:
        return
    curves = "\n".join(
        f"- {r['lib']} seed {r['seed']}: "
        + " ".join(f"{e['env_steps'] / 1000:.1f}k:{e['eval_return_mean']:.0f}" for e in r["evals"])
        for r in results
    )
    section = f"""
## DQN CartPole-v1: asyncrl vs Stable-Baselines3 ({started:%Y-%m-%d %H:%M %Z})

Command: `{command.strip()}`

Machine: {machine_line()}; 1-minute load average {load_before[0]:.1f} before and
{load_after[0]:.1f} after the run (other jobs were sharing the 2 cores whenever it is above ~1:
trust CPU s over wall s then).

Versions: {versions_line()}; {git_line()}. `torch.set_num_threads(1)` in both.

Same hyperparameters (RL-Zoo CartPole-v1 = asyncrl preset `dqn_classic`: lr 2.3e-3, batch 64,
buffer 100k, learning starts 1000, 128 gradient steps per 256 env steps, target copy every 10 env
steps, epsilon 1 -> 0.04 over 16%, gamma 0.99, Huber, clip 10, 256x256 ReLU, 1 env),
{args.steps} env steps per run, seeds {", ".join(map(str, args.seeds))}, runs interleaved, one
fresh process per run. Evaluation every {args.eval_every} env steps (after the training phase)
and at the end: {EVAL_EPISODES} deterministic episodes on separate envs. **Seconds exclude
evaluation**: training wall-clock (and the process's CPU time) from just before the first env
reset to the evaluation, minus earlier evaluations; env stepping, acting, replay, updates and
each library's bookkeeping (asyncrl: progress.csv and ten checkpoints with the replay) are
included. "run" columns: the same clocks at the end of the run (60,160 steps for 60k). Median over seeds
(a run that never reaches 450 counts as infinitely slow). Reference: {ISSUE_SB3_REFERENCE}.

{table}

Evaluation curves (k env steps: mean return):
{curves}
"""
    results_path = append_results(section)
    print(f"\nappended to {results_path}")


if __name__ == "__main__":
    main()
