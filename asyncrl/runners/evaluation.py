"""Evaluation: run the agent's evaluation policy for N full episodes on separate, non-training
envs (raw rewards, no life-loss terminals) and report raw returns. Owns episode counting only."""

from __future__ import annotations

import numpy as np

from asyncrl.envs import EnvSpec, VecEnv


def evaluate(
    agent,
    env_spec: EnvSpec,
    episodes: int = 10,
    seed: int = 10_000,
    deterministic: bool = True,
    num_envs: int | None = None,
    max_steps: int = 1_000_000,
    frames: list | None = None,
) -> np.ndarray:
    """Raw returns of ``episodes`` episodes. Envs are given an equal quota of episodes so short
    episodes are not over-represented. If ``frames`` is a list, env 0's rgb frames are appended."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n = min(num_envs or 8, episodes)
    quota = np.full(n, episodes // n)
    quota[: episodes % n] += 1
    render = "rgb_array" if frames is not None else None
    returns: list[list[float]] = [[] for _ in range(n)]
    with VecEnv(env_spec, n, seed=seed, training=False, render_mode=render) as env:
        obs = env.reset()
        for _ in range(max_steps):
            action = agent.act(obs, deterministic=deterministic)
            if frames is not None and len(returns[0]) < quota[0]:
                frames.append(env.render(0))
            obs, reward, terminated, truncated, _ = env.step(action)
            stats = env.pop_episode_stats()
            if stats.returns:
                # Episode stats come in env order within a step; map them back to envs.
                done_envs = np.flatnonzero(terminated | truncated)
                for b, r in zip(done_envs, stats.returns):
                    if len(returns[b]) < quota[b]:
                        returns[b].append(r)
            if all(len(returns[b]) >= quota[b] for b in range(n)):
                break
    return np.array([r for rs in returns for r in rs], dtype=np.float64)
