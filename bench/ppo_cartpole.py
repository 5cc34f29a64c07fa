"""PPO on CartPole-v1: asyncrl against Stable-Baselines3, same hyperparameters, same run.

Both libraries train PPO with the RL-Zoo CartPole-v1 hyperparameters (asyncrl's preset
``ppo_classic``): 8 envs x 32 steps, one minibatch of 256, 20 epochs, gamma 0.98, GAE lambda 0.8,
Adam lr 1e-3 and clip range 0.2 both annealed linearly to 0, no entropy bonus, value-loss weight
0.5 on the MSE (SB3 ``vf_coef=0.5``; asyncrl ``value_coef=1.0`` on its 0.5*MSE), Adam eps 1e-5,
per-minibatch advantage normalisation, no value clipping, gradient-norm clip 0.5, 64x64 tanh MLPs
(separate policy and value networks), orthogonal init. Each run trains for 100k env steps (so the annealing schedules are identical; both stop at
100,096 = 391 x 256). Runs are interleaved across seeds (asyncrl first on even seeds, SB3 first
on odd ones) so machine noise hits both, and each run is a fresh Python process that imports only
its own library (asyncrl switches off torch.distributions argument validation globally; SB3 runs
as shipped). Both use ``torch.set_num_threads(1)`` and the CPU.

Evaluation, identical cadence and size for both: after the update that brings the env-step count
to a multiple of 2,048 (every 8th update) and once at the end, 10 deterministic (greedy) episodes
on 8 separate evaluation envs, each env contributing a fixed quota of episodes (asyncrl: its
built-in periodic evaluation, ``log.eval_every=2048``, ``log.eval_episodes=10``; SB3:
``evaluate_policy``, the core of its ``EvalCallback``, on its own Monitor-wrapped vector env,
called from a callback at the start of the next rollout, i.e. after the update).

What is timed (identically): training time *excluding evaluation*, on two clocks, wall-clock
and the process's CPU time (the latter is what other jobs on a shared machine disturb least),
from just before the first env reset to the evaluation point, minus all earlier evaluations.
asyncrl: the clocks start when ``train()`` calls ``sampler.initialize`` (where its own ``time_s``
starts) and each call of ``asyncrl.runners.train.evaluate`` is taken off them (both wrapped from
this script; the library is not changed). SB3: the clocks start just before ``model.learn()``
(which resets the envs first) and the callback takes its evaluations off them. Included for both:
env stepping, acting, GAE, the updates and each library's own per-iteration bookkeeping (asyncrl:
progress.csv rows and its ten checkpoints, with TensorBoard off as SB3's is by default and the
live display off; SB3: its in-memory logger, verbose=0). Excluded for both: imports, model and
env construction, evaluation.

Reported per run: env steps and seconds (wall, CPU) until the evaluation mean first reaches 475;
env steps from which every later evaluation stays >= 475; the final evaluation mean (at 100,096
steps); the training seconds for the whole run. ``--asyncrl-set KEY=VALUE`` passes extra
overrides to asyncrl (for experiments; the hyperparameter check is then skipped).

    python bench/ppo_cartpole.py [--seeds 0 1 2] [--steps 100000] [--eval-every 2048]
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
TARGET = 475.0
EVAL_EPISODES = 10
ISSUE_SB3_REFERENCE = (
    "SB3 PPO, issue 3, same machine type: median 24.8k env steps and 13.9 s to 475 (3 seeds)"
)

# RL-Zoo CartPole-v1 PPO (rl-baselines3-zoo hyperparams/ppo.yml); asyncrl's ppo_classic preset.
N_ENVS, N_STEPS, BATCH_SIZE, N_EPOCHS = 8, 32, 256, 20
GAMMA, GAE_LAMBDA, LR, CLIP, ENT_COEF = 0.98, 0.8, 1e-3, 0.2, 0.0


def first_reaching(evals: list[dict]) -> dict | None:
    """The first evaluation whose mean return is at least TARGET."""
    return next((e for e in evals if e["eval_return_mean"] >= TARGET), None)


def first_staying(evals: list[dict]) -> dict | None:
    """The first evaluation from which every later one (to the end of the run) is >= TARGET."""
    stable = None
    for e in reversed(evals):
        if e["eval_return_mean"] < TARGET:
            break
        stable = e
    return stable


# -- workers (one fresh process per run) ---------------------------------------------------------
def run_asyncrl(seed: int, steps: int, eval_every: int, extra_sets: list[str]) -> dict:
    import torch

    torch.set_num_threads(1)
    import asyncrl

    clock = TrainClock()
    at_eval = instrument_asyncrl_train(clock)
    with tempfile.TemporaryDirectory(prefix="bench_ppo_asyncrl_") as tmp:
        cfg = asyncrl.resolve_config(
            "ppo",
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
        p, m = cfg.algo_params, cfg.model
        # SB3's loss is pg + vf_coef * MSE; ours is pg + value_coef * 0.5 * MSE, so RL-Zoo's
        # vf_coef 0.5 is value_coef 1.0 here.
        expected = {
            "sampler.num_envs": N_ENVS, "sampler.horizon": N_STEPS, "ppo.minibatches": 1,
            "ppo.epochs": N_EPOCHS, "ppo.gamma": GAMMA, "ppo.gae_lambda": GAE_LAMBDA,
            "ppo.learning_rate": LR, "ppo.anneal_lr": True, "ppo.clip_range": CLIP,
            "ppo.anneal_clip_range": True, "ppo.entropy_coef": ENT_COEF, "ppo.value_coef": 1.0,
            "ppo.max_grad_norm": 0.5, "ppo.adam_eps": 1e-5, "ppo.normalize_advantage": True,
            "ppo.clip_value": False, "ppo.target_kl": 0.0, "model.hidden_sizes": [64, 64],
            "model.activation": "tanh", "model.shared_trunk": False, "model.normalize_obs": False,
        }  # fmt: skip
        sources = {"sampler": cfg.sampler, "ppo": p, "model": m}
        got = {k: getattr(sources[k.split(".")[0]], k.split(".")[1]) for k in expected}
        differ = {k: got[k] for k in expected if got[k] != expected[k]}
        if differ and not extra_sets:
            raise SystemExit(f"asyncrl ppo_classic differs from RL-Zoo/SB3 settings: {differ}")
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
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    clock = TrainClock()

    env = make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed)
    # Like asyncrl's evaluate: min(episodes, 8) envs, the 10 episodes split 2,2,1,...,1 between
    # them (evaluate_policy's per-env episode targets), so short episodes are not over-counted.
    eval_env = make_vec_env(ENV_ID, n_envs=min(EVAL_EPISODES, 8), seed=seed + 10_000)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=BATCH_SIZE,
        n_epochs=N_EPOCHS,
        gamma=GAMMA,
        gae_lambda=GAE_LAMBDA,
        learning_rate=lambda progress_remaining: progress_remaining * LR,
        clip_range=lambda progress_remaining: progress_remaining * CLIP,
        ent_coef=ENT_COEF,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    callback = sb3_timed_eval(clock, eval_env, eval_every, EVAL_EPISODES)
    wall_start = time.perf_counter()
    clock.start()  # model.learn() resets the envs first, as asyncrl's sampler.initialize does
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
    hit, stay = first_reaching(out["evals"]), first_staying(out["evals"])
    final = out["evals"][-1]
    return {
        "lib": lib,
        "seed": seed,
        "steps_to_target": hit["env_steps"] if hit else None,
        "steps_to_stay": stay["env_steps"] if stay else None,
        "s_to_target": hit["train_s"] if hit else None,
        "cpu_s_to_target": hit["train_cpu_s"] if hit else None,
        "final_eval": final["eval_return_mean"],
        "train_s": final["train_s"],
        "train_cpu_s": final["train_cpu_s"],
        "eval_s": out["eval_s"],
        "wall_s": out["wall_s"],
        "final_env_steps": out["final_env_steps"],
        "evals": out["evals"],
    }


def curve_text(evals: list[dict]) -> str:
    """'2.0k:97 4.1k:154 ... 30.7k:500, then 500 to the end' (the constant tail folded)."""
    final = evals[-1]["eval_return_mean"]
    tail = len(evals) - 1
    while tail > 0 and evals[tail - 1]["eval_return_mean"] == final:
        tail -= 1
    shown = evals if tail >= len(evals) - 2 else evals[: tail + 1]
    text = " ".join(f"{e['env_steps'] / 1000:.1f}k:{e['eval_return_mean']:.0f}" for e in shown)
    return text if shown is evals else f"{text}, then {final:.0f} to the end"


def fmt(x: float | None, kind: str) -> str:
    if x is None:
        return "not reached"
    if kind == "steps":
        return f"{x / 1000:.1f}k"
    if kind == "s":
        return f"{x:.1f}"
    if kind == "ret":
        return f"{x:.1f}"
    return f"{x:.2f}"


COLUMNS = [
    ("steps_to_target", "env steps to 475", "steps"),
    ("steps_to_stay", "env steps to stay >= 475", "steps"),
    ("s_to_target", "wall s to 475", "s"),
    ("cpu_s_to_target", "CPU s to 475", "s"),
    ("final_eval", "final eval", "ret"),
    ("train_s", "wall s, 100k", "s"),
    ("train_cpu_s", "CPU s, 100k", "s"),
]


def make_table(results: list[dict], seeds: list[int]) -> str:
    return comparison_table({(r["lib"], r["seed"]): r for r in results}, seeds, COLUMNS, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=2048)
    parser.add_argument(
        "--asyncrl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra asyncrl --set override (e.g. ppo.value_coef=1.0); repeatable",
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        out = WORKERS[args.worker](args.seed, args.steps, args.eval_every, args.asyncrl_set)
        print(json.dumps(out))
        return

    command = "python bench/ppo_cartpole.py " + " ".join(
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
            print(
                f"{lib:8s} seed {seed}: "
                + (
                    f"475 at {fmt(r['steps_to_target'], 'steps')} env steps, "
                    f"{fmt(r['s_to_target'], 's')} s ({fmt(r['cpu_s_to_target'], 's')} CPU s); "
                    if r["steps_to_target"] is not None
                    else "475 not reached; "
                )
                + f"final eval {r['final_eval']:.1f}; "
                f"train {r['train_s']:.1f} s ({r['train_cpu_s']:.1f} CPU s) + eval "
                f"{r['eval_s']:.1f} s for "
                f"{r['final_env_steps']} steps",
                flush=True,
            )
    load_after = os.getloadavg()
    table = make_table(results, args.seeds)
    print()
    print(table)
    print(f"\nreference: {ISSUE_SB3_REFERENCE}")

    if args.no_append:
        return
    curves = "\n".join(f"- {r['lib']} seed {r['seed']}: {curve_text(r['evals'])}" for r in results)
    variant = ""
    if args.asyncrl_set:
        variant = " — asyncrl with " + ", ".join(f"`{item}`" for item in args.asyncrl_set)
    section = f"""
## PPO CartPole-v1: asyncrl vs Stable-Baselines3{variant} ({started:%Y-%m-%d %H:%M %Z})

Command: `{command.strip()}`

Machine: {machine_line()}; 1-minute load average {load_before[0]:.1f} before and
{load_after[0]:.1f} after the run (above ~1 other jobs were sharing the cores: trust CPU s over
wall s then).

Versions: {versions_line()}; {git_line()}. `torch.set_num_threads(1)` in both.

Same hyperparameters (RL-Zoo CartPole-v1 = asyncrl preset `ppo_classic`: 8 envs x 32 steps, batch
256, 20 epochs, gamma 0.98, lambda 0.8, lr lin 1e-3, clip lin 0.2, ent 0), {args.steps} env steps
per run, seeds {", ".join(map(str, args.seeds))}, runs interleaved, one fresh process per run.
Evaluation every {args.eval_every} env steps (after the update) and at the end: {EVAL_EPISODES}
deterministic episodes on 8 separate envs. **Seconds exclude evaluation**: training wall-clock
(and the process's CPU time) from just before the first env reset to the evaluation, minus earlier
evaluations; env stepping, acting, updates and each library's own bookkeeping are included.
"100k" columns: the same clocks at the end of the run (100,096 steps). Median over seeds (a run
that never reaches 475 counts as infinitely slow). Reference: {ISSUE_SB3_REFERENCE}.

{table}

Evaluation curves (k env steps: mean return):
{curves}
"""
    results_path = append_results(section)
    print(f"\nappended to {results_path}")


if __name__ == "__main__":
    main()
