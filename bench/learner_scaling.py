"""Learner scaling: gradient updates/s of one learner against two data-parallel gloo learners
(``learners = 2``, each on half of every minibatch, gradients averaged), per algorithm family,
on the same sampler batches, in interleaved rounds (median).

Three variants per workload, each on this machine's CPU cores:

- ``1 learner``: the algorithm in this process, 1 torch thread (the default of every run);
- ``1 learner, 2 threads``: the same with 2 intra-op threads (what a user would try first);
- ``2 learners``: this process as learner 0 of a gloo group with one ``workers.peer`` process,
  1 thread each (runners/learners.py), the batch handed over as in a run.

The batch is sampled once (a real env, the preset's settings) and then learned again and again:
each ``optimize`` call is one batch's update (PPO: epochs x minibatches steps; off-policy:
``replay_ratio x steps`` replay minibatches). ``--device cuda`` runs NCCL learners on the GPUs
instead (one each), when there are two.

    python bench/learner_scaling.py [--rounds 3] [--calls 2] [--only ppo_pong,dqn_pong,...]
        [--device cpu] [--no-append]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from asyncrl import resolve_config  # noqa: E402
from asyncrl.algos import ALGOS, ddp  # noqa: E402
from asyncrl.runners.learners import Learners  # noqa: E402
from asyncrl.samplers.serial import SerialSampler  # noqa: E402

# name -> (algo, env, settings); off-policy: one optimize = replay_ratio * steps updates
WORKLOADS = {
    "ppo_pong": ("ppo", "ALE/Pong-v5", ["sampler.num_envs=8", "sampler.horizon=128"]),
    "ppo_halfcheetah": ("ppo", "HalfCheetah-v5", ["sampler.num_envs=1", "sampler.horizon=2048"]),
    "dqn_pong": (
        "dqn",
        "ALE/Pong-v5",
        [
            "sampler.num_envs=8",
            "sampler.horizon=32",
            "dqn.learning_starts=0",
            "dqn.replay_ratio=0.125",  # 32 updates of 32 per call
            "dqn.buffer_size=4096",
        ],
    ),
    "sac_halfcheetah": (
        "sac",
        "HalfCheetah-v5",
        [
            "sampler.num_envs=1",
            "sampler.horizon=256",
            "sac.learning_starts=0",
            "sac.replay_ratio=0.125",  # 32 updates of 256 per call
            "sac.buffer_size=4096",
        ],
    ),
}
VARIANTS = ("1 learner", "1 learner, 2 threads", "2 learners")


def build(name: str, device: str, learners: int):
    algo, env, sets = WORKLOADS[name]
    cfg = resolve_config(
        algo,
        env,
        sets=[*sets, "seed=1", f'device="{device}"', f"learners={learners}", "log.progress=false"],
    )
    entry = ALGOS[cfg.algo]
    torch.manual_seed(1)
    sampler = SerialSampler(cfg.env, cfg.sampler.num_envs, cfg.sampler.horizon, seed=1)
    agent = entry.make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, device, cfg.algo_params
    )
    return cfg, sampler, agent, entry.make_algo(agent, cfg.algo_params, cfg.seed)


def sample_batch(name: str, device: str):
    cfg, sampler, agent, _ = build(name, device, 1)
    sampler.initialize(agent)
    try:
        return copy.deepcopy(sampler.obtain())
    finally:
        sampler.close()


def measure(name: str, variant: str, batch, calls: int, device: str) -> float:
    """Updates/s over ``calls`` optimize calls after one warm-up call."""
    learners = 2 if variant == "2 learners" else 1
    torch.set_num_threads(2 if variant.endswith("2 threads") else 1)
    cfg, sampler, agent, algo = build(name, device, learners)
    if learners > 1:
        algo = Learners(cfg, agent, algo, sampler.obs_space, sampler.action_space)
    try:
        algo.optimize(copy.deepcopy(batch), 0.0)  # warm-up (and the off-policy replay's first fill)
        u0, t0 = algo.updates, time.perf_counter()
        for i in range(calls):
            algo.optimize(copy.deepcopy(batch), 0.1 + 0.1 * i)
        return (algo.updates - u0) / (time.perf_counter() - t0)
    finally:
        if learners > 1:
            algo.close()
        torch.set_num_threads(1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--only", default=",".join(WORKLOADS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    batches = {n: sample_batch(n, args.device) for n in names}
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for n in names:
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # interleaved, alternating order
            for v in order:
                ups = measure(n, v, batches[n], args.calls, args.device)
                results.setdefault((n, v), []).append(ups)
                print(f"round {r} {n:16s} {v:22s} {ups:8.2f} updates/s", flush=True)
    assert ddp.active() is None
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    backend = "NCCL" if args.device.startswith("cuda") else "gloo"
    lines = [
        f"## Learner scaling: 1 vs 2 data-parallel learners ({backend}, {args.device})",
        "",
        f"`python bench/learner_scaling.py --rounds {args.rounds} --calls {args.calls}"
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + "`",
        "",
        f"{_common.machine_line()}  ",
        f"{_common.versions_line()}  ",
        f"load average before {' '.join(load_before)}, after {' '.join(load_after)}",
        "",
        "Gradient updates/s, median of interleaved rounds; the same sampled batch learned again"
        " each call. PPO: one update = one minibatch step; off-policy: one replay minibatch.",
        "",
        "| workload | minibatch | "
        + " | ".join(VARIANTS)
        + " | 2 learners / 1 | 2 learners / 2 threads |",
        "|---|---:|" + "---:|" * (len(VARIANTS) + 2),
    ]
    for n in names:
        med = {v: statistics.median(results[(n, v)]) for v in VARIANTS}
        algo, _, sets = WORKLOADS[n]
        cfg = resolve_config(algo, WORKLOADS[n][1], sets=sets)
        a = cfg.algo_params
        if algo == "ppo":
            mb = cfg.sampler.num_envs * cfg.sampler.horizon // a.minibatches
        else:
            mb = a.batch_size
        lines.append(
            f"| {n} | {mb} | "
            + " | ".join(f"{med[v]:.1f}" for v in VARIANTS)
            + f" | {med['2 learners'] / med['1 learner']:.2f} "
            f"| {med['2 learners'] / med['1 learner, 2 threads']:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_append:
        _common.append_results(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
