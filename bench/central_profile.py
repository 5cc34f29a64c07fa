"""Where one central-mode step's microseconds go: CartPole-v1, 16 envs on 2 workers, the
64x64 PPO policy (``bench/throughput.py``'s first workload), timed inside the training
process around the inference server's pieces.

Columns (us per vector step of all 16 envs, wall-clock, medians of ``--rounds`` rounds):
- step: 1 / (vector steps per second), from ``sampler.obtain()`` calls only;
- forward: the agent's ``step`` on the batch (forward pass, per-env noise, log-prob), inside
  the inference server (``InferenceServer._answer`` minus its concatenation and splitting);
- server bookkeeping: the rest of serving a batch: building it from the requests, writing the
  answers, replying (shared-memory channel: ``_serve_split`` minus ``_answer``; message path:
  ``_serve`` minus ``_answer``);
- rest: step - forward - bookkeeping: what the workers and the transport take while the
  server waits (waking up, reading the request and writing the reply on each side, the event
  loop's decoding and sending on the message path, the workers' env step).

Run it against another checkout with ``--root DIR`` (e.g. a ``git worktree`` of an older
commit) to get the "before" of a change; ``--path message`` forces the message path (the
ACT_REQUEST frames of workers on other hosts) on this checkout.

    python bench/central_profile.py [--root DIR] [--path shm|message] [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--path", choices=["shm", "message"], default="shm")
    p.add_argument("--mode", choices=["central", "alternating"], default="central")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    root = str(Path(args.root).resolve())
    sys.path.insert(0, root)
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    import torch

    torch.set_num_threads(1)
    import asyncrl
    from asyncrl.algos import ALGOS
    from asyncrl.runners.train import make_sampler
    from asyncrl.runtime import inference as inf

    clock = {"answer": 0.0, "serve": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[name] += time.perf_counter() - t0

        return wrapper

    server = inf.InferenceServer
    server._answer = timed("answer", server._answer)
    server._serve = timed("serve", server._serve)  # the message path
    if hasattr(server, "_serve_split"):  # the shared-memory channel
        server._serve_split = timed("serve", server._serve_split)
    if args.path == "message" and hasattr(server, "open_channel"):
        server.open_channel = lambda self, *a, **k: (
            ""
        )  # no channel: every worker on the message path
    cfg = asyncrl.resolve_config(
        "ppo",
        "CartPole-v1",
        sets=[
            "log.progress=false",
            "log.tensorboard=false",
            "model.hidden_sizes=[64, 64]",
            f'sampler.mode="{args.mode}"',
            "sampler.workers=2",
            "sampler.num_envs=16",
            "sampler.horizon=128",
        ],
    )
    sampler = make_sampler(cfg)
    agent = ALGOS["ppo"].make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    agent.eval_mode()
    step = agent.step
    fwd = {"t": 0.0}

    def timed_step(*a, **k):
        t0 = time.perf_counter()
        try:
            return step(*a, **k)
        finally:
            fwd["t"] += time.perf_counter() - t0

    agent.step = timed_step
    rows = []
    try:
        sampler.initialize(agent)
        for _ in range(3):
            sampler.obtain()
        for _ in range(args.rounds):
            for k in clock:
                clock[k] = 0.0
            fwd["t"] = 0.0
            steps, busy = 0, 0.0
            while busy < args.seconds:
                t0 = time.perf_counter()
                batch = sampler.obtain()
                busy += time.perf_counter() - t0
                steps += batch.env_steps
            vector_steps = steps / 16
            per = lambda x, n=vector_steps: x / n * 1e6  # noqa: E731
            rows.append(
                {
                    "step": per(busy),
                    "forward": per(fwd["t"]),
                    "bookkeeping": per(clock["serve"] - fwd["t"]),
                    "rest": per(busy - clock["serve"]),
                    "steps_per_s": steps / busy,
                }
            )
    finally:
        sampler.close()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    commit = subprocess.run(
        ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    path = args.path if hasattr(server, "open_channel") else "message"  # older checkouts
    label = f"{commit} {args.mode} ({path} path)"
    print(json.dumps({"label": label, **{k: round(v, 1) for k, v in med.items()}}))
    print(
        f"| {label} | {med['step']:.0f} | {med['forward']:.0f} | {med['bookkeeping']:.0f} | "
        f"{med['rest']:.0f} | {med['steps_per_s']:,.0f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
