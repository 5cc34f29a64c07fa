"""Evaluation: run the agent's evaluation policy for N episodes on separate, non-training envs
(raw rewards, no life-loss terminals) and report raw returns. Owns episode counting and the
evaluation's limits only.

An evaluation cannot run away: each episode is cut at ``max_episode_steps`` agent steps and the
whole evaluation at ``max_steps`` env steps (counted over the envs still owed an episode). An
episode cut by either limit counts with the return it had, as a time limit would; a log line
says when either limit bit. ``eval_limits`` gives the defaults the runner uses.
"""

from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np

from asyncrl.envs import EnvSpec, VecEnv

log = logging.getLogger("asyncrl.eval")

# Atari evaluation episodes last at most 5 minutes of play (18,000 frames), as in the DQN
# paper's evaluation (Mnih et al. 2015, Methods) and Machado et al. 2018's recommendations.
ATARI_EVAL_FRAMES = 18_000
# Episodes of an env without a registered time limit count this many steps toward the budget.
UNLIMITED_EPISODE_GUESS = 500
NO_LIMIT_CAP = 100_000


def eval_limits(
    env_spec: EnvSpec, episodes: int, eval_every: int = 0, family: str | None = None
) -> tuple[int, int]:
    """(per-episode step cap, env-step budget) for an evaluation of ``episodes`` episodes.

    Cap: Atari, 18,000 frames (``ATARI_EVAL_FRAMES // frame_skip`` agent steps); otherwise the
    env's own time limit (``env.max_episode_steps`` or the registered one), or
    ``NO_LIMIT_CAP`` for an env without any. Budget: ``episodes`` times the env's time limit
    (``UNLIMITED_EPISODE_GUESS`` steps for an env without one, Atari included), and never less
    than ``eval_every``: evaluation costs at most about as much as the training between two
    evaluations, or what full episodes of a time-limited env need."""
    if family is None:
        from asyncrl.envs.spec import validate_env_id

        family = validate_env_id(env_spec)
    limit = env_spec.max_episode_steps
    if not limit and ":" not in env_spec.id and env_spec.id in gym.registry:
        limit = gym.registry[env_spec.id].max_episode_steps or 0
    if family == "atari":
        cap = ATARI_EVAL_FRAMES // max(env_spec.frame_skip, 1)
        if env_spec.max_episode_steps:  # counted in emulator frames for Atari (see native.py)
            cap = min(cap, env_spec.max_episode_steps // max(env_spec.frame_skip, 1) or 1)
        limit = 0
    else:
        cap = limit or NO_LIMIT_CAP
    budget = max(int(eval_every), episodes * (limit or UNLIMITED_EPISODE_GUESS))
    return int(cap), int(budget)


def evaluate(
    agent,
    env_spec: EnvSpec,
    episodes: int = 10,
    seed: int = 10_000,
    deterministic: bool = True,
    num_envs: int | None = None,
    max_steps: int = 0,
    frames: list | None = None,
    max_episode_steps: int = 0,
) -> np.ndarray:
    """Raw returns of ``episodes`` episodes. Envs are given an equal quota of episodes so short
    episodes are not over-represented. ``max_episode_steps`` / ``max_steps`` (0: the defaults
    of ``eval_limits``) bound each episode and the whole evaluation. If ``frames`` is a list,
    env 0's rgb frames are appended."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_episode_steps <= 0 or max_steps <= 0:
        cap, budget = eval_limits(env_spec, episodes)
        max_episode_steps = max_episode_steps if max_episode_steps > 0 else cap
        max_steps = max_steps if max_steps > 0 else budget
    n = min(num_envs or 8, episodes)
    quota = np.full(n, episodes // n)
    quota[: episodes % n] += 1
    render = "rgb_array" if frames is not None else None
    returns: list[list[float]] = [[] for _ in range(n)]
    running = np.zeros(n, np.float64)  # raw return of each env's episode in progress
    length = np.zeros(n, np.int64)
    capped = 0
    steps = 0
    with VecEnv(env_spec, n, seed=seed, training=False, render_mode=render) as env:
        obs = env.reset()
        recurrent = hasattr(agent, "observe_eval")  # its own state per evaluation env
        if recurrent:
            agent.reset_eval()
        while True:
            owed = np.array([len(returns[b]) < quota[b] for b in range(n)])
            if not owed.any():
                break
            if steps >= max_steps:
                unfinished = [b for b in range(n) if owed[b]]
                finished = sum(len(r) for r in returns)
                for b in unfinished:  # cut at the budget: counted as a time limit would
                    returns[b].append(float(running[b]))
                log.warning(
                    "evaluation budget of %d env steps reached with %d of %d episodes "
                    "finished; %d more cut short count with their returns so far "
                    "(set log.eval_max_steps to change the budget)",
                    max_steps,
                    finished,
                    episodes,
                    len(unfinished),
                )
                break
            action = agent.act(obs, deterministic=deterministic)
            if frames is not None and len(returns[0]) < quota[0]:
                frames.append(env.render(0))
            obs, reward, terminated, truncated, _ = env.step(action)
            steps += int(owed.sum())
            env.pop_episode_stats()  # raw returns are tracked here (cut episodes too)
            running += reward  # raw: evaluation envs neither clip nor end on a life loss
            length += 1
            done = terminated | truncated
            cut = ~done & (length >= max_episode_steps)
            for b in np.flatnonzero(done | cut).tolist():
                if len(returns[b]) < quota[b]:
                    returns[b].append(float(running[b]))
                    capped += int(cut[b])
                running[b] = 0.0
                length[b] = 0
            if recurrent:
                agent.observe_eval(reward, done | cut)
            if cut.any():
                env.reset_envs(np.flatnonzero(cut))
                obs = env.obs
    if capped:
        log.warning(
            "evaluation: %d of %d episodes reached the cap of %d steps and were cut there "
            "(set log.eval_max_episode_steps to change it)",
            capped,
            episodes,
            max_episode_steps,
        )
    return np.array([r for rs in returns for r in rs], dtype=np.float64)
