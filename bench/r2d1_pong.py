"""R2D1 throughput on ALE/Pong-v5 with the r2d1_atari preset (R2D2's sizes: 64 sequences of
40 burn-in + 80 trained + 5 bootstrap steps, LSTM 512, dueling 512): where the time goes.

1. Sampling only (no updates): env steps/s in serial mode and in parallel mode with 2 workers.
2. One learner update, median of ``--updates`` after a warm-up one, split into drawing the
   sequences from replay, the no-gradient passes (target network over the window, online burn-in)
   and the online unroll + backward + Adam step.
3. End to end with learning, parallel mode with 2 workers, synchronous and asynchronous: env
   steps/s and updates/s over the part of the run after learning starts.

Usage: python bench/r2d1_pong.py [--steps 30720] [--learning-starts 10240]
Appends a section to bench/RESULTS.md (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import git_line, machine_line, versions_line  # noqa: E402


def machine_header() -> str:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"Machine: {machine_line()}; load average {load} at the start  \n"
        f"Versions: {versions_line()}, {git_line()}"
    )


def train(sets: list[str], run_dir: Path) -> list[dict]:
    cmd = [
        str(Path(sys.executable).parent / "asyncrl"), "train", "r2d1", "ALE/Pong-v5", "--no-progress",
        "--run-dir", str(run_dir), "--set", "log.eval_every=-1", "--set", "log.tensorboard=false",
        "--set", "log.log_every_s=0.5",
    ]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def rate_after(rows: list[dict], start_steps: int) -> tuple[float, float]:
    """(env steps/s, updates/s) between the first row at or past ``start_steps`` and the last."""
    after = [r for r in rows if int(r["env_steps"]) >= start_steps]
    a, b = after[0], after[-1]
    dt = float(b["time_s"]) - float(a["time_s"])
    steps = int(b["env_steps"]) - int(a["env_steps"])
    ups = int(b["updates"] or 0) - int(a["updates"] or 0)
    return steps / dt, ups / dt


def learner_breakdown(n_updates: int) -> dict[str, float]:
    import torch

    import asyncrl
    from asyncrl.algos import ALGOS
    from asyncrl.algos.r2d1 import sequence_inputs
    from asyncrl.data import buffer_from_example
    from asyncrl.envs import make_vec_env
    from asyncrl.samplers.base import SampleBatch, samples_example
    from asyncrl.samplers.collector import Collector

    torch.set_num_threads(1)
    cfg = asyncrl.resolve_config("r2d1", "ALE/Pong-v5", sets=["r2d1.learning_starts=0"])
    env = make_vec_env(cfg.env, 4, seed=0, training=True)
    entry = ALGOS["r2d1"]
    agent = entry.make_agent(
        env.observation_space, env.action_space, cfg.model, "cpu", cfg.algo_params
    )
    algo = entry.make_algo(agent, cfg.algo_params, 0)
    example = samples_example(env.obs_example, env.action_example, agent.info_example())
    buf = buffer_from_example(example, (256, 4))
    collector = Collector(env, agent)
    collector.reset(env.action_example)
    final, _, _ = collector.collect(buf)
    env.close()
    batch = SampleBatch(buf, None, None, final, env_steps=buf.env.reward.size)
    algo.replay = algo._make_replay(batch)
    algo.replay.append(buf, final)
    algo.before_updates()
    times: dict[str, list[float]] = {"replay draw": [], "no-grad passes": [], "whole update": []}
    model, W = agent.model, cfg.algo_params.burn_in
    for i in range(n_updates + 1):
        t0 = time.perf_counter()
        sample = algo._sample()
        t1 = time.perf_counter()
        with torch.no_grad():  # what the update runs without gradient, timed on its own
            obs, pa, pr, reset = sequence_inputs(sample)
            algo.target.unroll(obs, pa, pr, sample.state, reset)
            part = (obs[:W], pa[:W], pr[:W])
            model.unroll(*part, sample.state, reset[:W])
        t2 = time.perf_counter()
        algo.update(sample)
        t3 = time.perf_counter()
        if i > 0:
            times["replay draw"].append(t1 - t0)
            times["no-grad passes"].append(t2 - t1)
            times["whole update"].append(t3 - t2)
    return {k: statistics.median(v) for k, v in times.items()} | {
        "transitions per update": float(
            cfg.algo_params.batch_size * cfg.algo_params.sequence_length
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30720)
    ap.add_argument("--learning-starts", type=int, default=10240)
    ap.add_argument("--sampling-steps", type=int, default=10240)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    header = machine_header()
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        never = f"r2d1.learning_starts={10 * args.sampling_steps}"
        for name, sets in (
            ("serial, sampling only", ['sampler.mode="serial"', never]),
            ("parallel 2 workers, sampling only", ['sampler.mode="parallel"', "sampler.workers=2", never]),
        ):  # fmt: skip
            rows = train([*sets, f"steps={args.sampling_steps}"], tmp / name.replace(" ", "_"))
            results[name] = rate_after(rows, 2048)
            print(name, results[name], flush=True)
        learn = [f"steps={args.steps}", f"r2d1.learning_starts={args.learning_starts}",
                 'sampler.mode="parallel"', "sampler.workers=2"]  # fmt: skip
        for name, extra in (
            ("parallel 2 workers, sync, learning", []),
            ("parallel 2 workers, async, learning", ["sampler.asynchronous=true"]),
        ):
            rows = train([*learn, *extra], tmp / name.replace(" ", "_").replace(",", ""))
            results[name] = rate_after(rows, args.learning_starts)
            print(name, results[name], flush=True)
    breakdown = learner_breakdown(args.updates)
    print(breakdown, flush=True)
    whole = breakdown["whole update"]
    per_update = breakdown["transitions per update"]
    lines = [
        f"## R2D1 throughput on Pong ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Command: `python bench/r2d1_pong.py --steps {args.steps} --learning-starts "
        f"{args.learning_starts}`  ",
        header,
        "",
        "r2d1_atari preset (R2D2 sizes: 64 sequences x (40 burn-in + 80 trained + 5) steps, "
        "Nature CNN, LSTM 512, dueling 512, replay ratio 1 = one update per 5,120 env steps), "
        "CPU, torch 1 thread per process, 16 envs.",
        "",
        "| configuration | env steps/s | updates/s |",
        "|---|---:|---:|",
    ]
    for name, (sps, ups) in results.items():
        lines.append(f"| {name} | {sps:,.0f} | {ups:.3f} |")
    lines += [
        "",
        "One update, median of "
        f"{args.updates}: {whole:.2f} s in all ({per_update / whole:,.0f} trained steps/s), of "
        f"which the no-gradient passes (target network over the 125-step window, online "
        f"burn-in) take about {breakdown['no-grad passes']:.2f} s when run alone; drawing the "
        f"64 sequences from replay {breakdown['replay draw'] * 1e3:.0f} ms.",
        "",
        "Where the time goes: at replay ratio 1 a 5,120-step update costs "
        f"{whole:.1f} s of learner time against {5120 / results['serial, sampling only'][0]:.1f} "
        "s of serial sampling for the same steps, so on CPU the learner bounds R2D1 at about "
        f"{5120 / whole:,.0f} env steps/s however the sampling is arranged; asynchronous "
        "sampling can at best hide the sampling time behind it.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
