"""Embed the asyncrl runtime in a Python program: build a config object, train PPO with worker
processes (parallel mode: envs and a copy of the agent in each worker, the learner here), get
the trained agent back and let it act.

    python examples/embed_runtime.py                 # 30k steps, about a minute on 2 cores
    python examples/embed_runtime.py --steps 2048 --run-dir /tmp/embed

The same runtime runs the other modes: set ``cfg.sampler.mode`` to "central" (one batched agent
here, envs in the workers) or "alternating" (two env groups per worker).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

import asyncrl
from asyncrl.envs import make_env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--mode", default="parallel", choices=["parallel", "central", "alternating"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--run-dir", default="", help="default: a new temporary directory")
    args = p.parse_args(argv)

    # A config object: the preset for PPO on CartPole, then changed in Python.
    cfg = asyncrl.resolve_config("ppo", "CartPole-v1")
    cfg.steps = args.steps
    cfg.sampler.mode = args.mode
    cfg.sampler.workers = args.workers
    cfg.sampler.num_envs = 4 * args.workers  # 4 envs per worker process
    cfg.log.progress = False  # no live display; progress.csv and train.log are still written
    cfg.log.tensorboard = False
    cfg.log.eval_every = -1  # evaluated below instead
    cfg.run_dir = args.run_dir or tempfile.mkdtemp(prefix="asyncrl-embed-")

    result = asyncrl.train(cfg)  # starts the coordinator and the workers, stops them at the end
    agent = result.agent
    print(f"trained {result.env_steps} env steps in {args.mode} mode; run dir {result.run_dir}")

    # Use the trained agent: one greedy episode in a fresh env.
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=123)
    episode_return, done = 0.0, False
    while not done:
        action = agent.act(np.asarray(obs, np.float32)[None], deterministic=True)[0]
        obs, reward, terminated, truncated, _ = env.step(int(action))
        episode_return += float(reward)
        done = terminated or truncated
    env.close()
    print(f"greedy episode return {episode_return:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
