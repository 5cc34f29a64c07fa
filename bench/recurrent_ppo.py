"""Recurrent PPO on the masked-velocity CartPole: asyncrl against sb3-contrib's RecurrentPPO,
same hyperparameters, same run.

Env: ``asyncrl/CartPoleNoVel-v1`` (CartPole-v1 observing cart position and pole angle only;
registered by ``import asyncrl.envs.memory``, which the SB3 worker imports for the env alone).
Hyperparameters: RL-Zoo's ppo_lstm.yml CartPoleNoVel-v1 entry, asyncrl's ``ppo_lstm_classic``
preset: 8 envs x 32 steps, one minibatch of 256, 20 epochs, gamma 0.98, GAE lambda 0.8, lr 1e-3
and clip 0.2 annealed linearly to 0, no entropy bonus, LSTM of 64 units fed the normalised
observation, a 64-unit ReLU layer per head after it, observation normalisation (SB3:
``VecNormalize(norm_reward=False)``, asyncrl: ``model.normalize_obs``). Differences left:
RL-Zoo's critic has an LSTM of its own (``enable_critic_lstm``; asyncrl's heads share one),
RL-Zoo turns orthogonal init off (asyncrl keeps it), and RL-Zoo also normalises rewards (off for
both here, so the two learn from the same signal). asyncrl's minibatch is whole env columns of
32 steps (its ``sequence_length`` 0); RecurrentPPO's is its own sequence split of the same 256
steps.

Evaluation and timing are bench/ppo_cartpole.py's (10 deterministic episodes after the update
that passes each multiple of ``--eval-every`` env steps; training clocks exclude evaluation),
with the SB3 evaluation env sharing the training VecNormalize statistics. Reported per run:
env steps and wall/CPU seconds until the evaluation mean first reaches 450; the final
evaluation; the training seconds for the whole run.

    python bench/recurrent_ppo.py [--seeds 0 1 2] [--steps 60000] [--eval-every 2048]
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
import ppo_cartpole as base  # noqa: E402  (bench/ is not a package)
from _common import (  # noqa: E402
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

ENV_ID = "asyncrl/CartPoleNoVel-v1"
TARGET = 450.0
base.TARGET = TARGET  # first_reaching / first_staying
EVAL_EPISODES = 10
N_ENVS, N_STEPS, BATCH_SIZE, N_EPOCHS = 8, 32, 256, 20
GAMMA, GAE_LAMBDA, LR, CLIP = 0.98, 0.8, 1e-3, 0.2


def run_asyncrl(seed: int, steps: int, eval_every: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import asyncrl

    clock = TrainClock()
    at_eval = instrument_asyncrl_train(clock)
    with tempfile.TemporaryDirectory(prefix="bench_rppo_asyncrl_") as tmp:
        cfg = asyncrl.resolve_config(
            "ppo_lstm",
            ENV_ID,
            sets=[
                f"seed={seed}", f"steps={steps}", "torch_threads=1", "device='cpu'",
                f"log.eval_every={eval_every}", f"log.eval_episodes={EVAL_EPISODES}",
                "log.eval_deterministic=true", "log.tensorboard=false", "log.progress=false",
            ],
        )  # fmt: skip
        cfg.run_dir = str(Path(tmp) / "run")
        p, m, s = cfg.algo_params, cfg.model, cfg.sampler
        got = (s.num_envs, s.horizon, p.minibatches, p.epochs, p.gamma, p.gae_lambda,
               p.learning_rate, p.clip_range, m.core, m.core_size, m.core_head_sizes,
               m.normalize_obs)  # fmt: skip
        want = (N_ENVS, N_STEPS, 1, N_EPOCHS, GAMMA, GAE_LAMBDA, LR, CLIP, "lstm", 64, [64], True)
        if got != want:
            raise SystemExit(f"ppo_lstm_classic differs from the RL-Zoo settings: {got} != {want}")
        wall_start = time.perf_counter()
        result = asyncrl.train(cfg)
        wall = time.perf_counter() - wall_start
        rows = read_eval_rows(cfg.run_dir)
    evals = match_evals(rows, at_eval)
    return {"evals": evals, "eval_s": clock.excluded_wall, "wall_s": wall,
            "final_env_steps": result.env_steps}  # fmt: skip


def run_sb3(seed: int, steps: int, eval_every: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize
    from torch import nn

    import asyncrl.envs.memory  # noqa: F401 - registers the env

    clock = TrainClock()
    env = VecNormalize(make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed), norm_reward=False)
    eval_env = VecNormalize(
        make_vec_env(ENV_ID, n_envs=min(EVAL_EPISODES, 8), seed=seed + 10_000),
        training=False, norm_reward=False,
    )  # fmt: skip
    eval_env.obs_rms = env.obs_rms  # the same object: evaluation sees the live statistics
    model = RecurrentPPO(
        "MlpLstmPolicy", env, n_steps=N_STEPS, batch_size=BATCH_SIZE, n_epochs=N_EPOCHS,
        gamma=GAMMA, gae_lambda=GAE_LAMBDA, ent_coef=0.0,
        learning_rate=lambda progress_remaining: progress_remaining * LR,
        clip_range=lambda progress_remaining: progress_remaining * CLIP,
        policy_kwargs=dict(
            ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64,
            enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64]),
        ),
        seed=seed, device="cpu", verbose=0,
    )  # fmt: skip
    callback = sb3_timed_eval(clock, eval_env, eval_every, EVAL_EPISODES)
    wall_start = time.perf_counter()
    clock.start()
    model.learn(total_timesteps=steps, callback=callback)
    wall = time.perf_counter() - wall_start
    return {"evals": callback.evals, "eval_s": clock.excluded_wall, "wall_s": wall,
            "final_env_steps": int(model.num_timesteps)}  # fmt: skip


WORKERS = {"asyncrl": run_asyncrl, "sb3": run_sb3}


def launch(lib: str, seed: int, steps: int, eval_every: int) -> dict:
    cmd = [__file__, "--worker", lib, "--seed", str(seed), "--steps", str(steps),
           "--eval-every", str(eval_every)]  # fmt: skip
    out = run_worker(cmd, f"{lib} seed {seed}")
    hit = base.first_reaching(out["evals"])
    final = out["evals"][-1]
    return {
        "lib": lib, "seed": seed,
        "steps_to_target": hit["env_steps"] if hit else None,
        "s_to_target": hit["train_s"] if hit else None,
        "cpu_s_to_target": hit["train_cpu_s"] if hit else None,
        "final_eval": final["eval_return_mean"], "train_s": final["train_s"],
        "train_cpu_s": final["train_cpu_s"], "eval_s": out["eval_s"],
        "final_env_steps": out["final_env_steps"], "evals": out["evals"],
    }  # fmt: skip


COLUMNS = [
    ("steps_to_target", "env steps to 450", "steps"),
    ("s_to_target", "wall s to 450", "s"),
    ("cpu_s_to_target", "CPU s to 450", "s"),
    ("final_eval", "final eval", "ret"),
    ("train_s", "wall s, whole run", "s"),
    ("train_cpu_s", "CPU s, whole run", "s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--eval-every", type=int, default=2048)
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.seed, args.steps, args.eval_every)))
        return
    command = "python bench/recurrent_ppo.py " + " ".join(
        a for a in sys.argv[1:] if a != "--no-append"
    )
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    results = []
    for i, seed in enumerate(args.seeds):
        for lib in ("asyncrl", "sb3") if i % 2 == 0 else ("sb3", "asyncrl"):
            r = launch(lib, seed, args.steps, args.eval_every)
            results.append(r)
            print(
                f"{lib:8s} seed {seed}: 450 at {base.fmt(r['steps_to_target'], 'steps')} steps, "
                f"{base.fmt(r['s_to_target'], 's')} s; final {r['final_eval']:.1f}; train "
                f"{r['train_s']:.1f} s for {r['final_env_steps']} steps",
                flush=True,
            )
    load_after = os.getloadavg()
    table = comparison_table(
        {(r["lib"], r["seed"]): r for r in results}, args.seeds, COLUMNS, base.fmt
    )
    print(table)
    if args.no_append:
        return
    curves = "\n".join(
        f"- {r['lib']} seed {r['seed']}: {base.curve_text(r['evals'])}" for r in results
    )
    append_results(
        f"""
## Recurrent PPO, masked-velocity CartPole: asyncrl vs sb3-contrib RecurrentPPO ({started:%Y-%m-%d %H:%M %Z})

Command: `{command.strip()}`

Machine: {machine_line()}; 1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after

Versions: {versions_line()}, sb3-contrib {_version("sb3_contrib")}, {git_line()}

Settings, evaluation and timing: see the docstring of bench/recurrent_ppo.py (RL-Zoo ppo_lstm
CartPoleNoVel-v1; 10 deterministic episodes every {args.eval_every} steps; {args.steps} steps per
run, so the lr and clip schedules anneal over that; runs interleaved, one process each).

{table}

Evaluation curves (env steps: mean return):
{curves}
"""
    )


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "missing"


if __name__ == "__main__":
    main()
