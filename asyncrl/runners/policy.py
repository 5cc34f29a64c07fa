"""Load a trained agent from a run directory and evaluate it (``asyncrl eval``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asyncrl.algos import ALGOS
from asyncrl.configs.config import ConfigError, load_config
from asyncrl.envs import make_env
from asyncrl.logging.checkpoint import latest_checkpoint, load_checkpoint
from asyncrl.runners.evaluation import evaluate


def load_agent(run_dir: str | Path, device: str = "cpu"):
    """(agent, config) with the parameters of the run's latest checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    if not (run_dir / "config.toml").exists():
        raise ConfigError(f"{str(run_dir)!r} has no config.toml: not a run directory")
    cfg = load_config(run_dir / "config.toml")
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    env = make_env(cfg.env)
    try:
        agent = ALGOS[cfg.algo].make_agent(
            env.observation_space, env.action_space, cfg.model, device, cfg.algo_params
        )
    finally:
        env.close()
    agent.load_state_tensors(ckpt["agent"], ckpt.get("policy_version", 0))
    agent.eval_mode()
    return agent, cfg


def evaluate_run(
    run_dir,
    episodes: int = 10,
    seed: int | None = None,
    deterministic: bool = True,
    video: str | None = None,
) -> tuple[np.ndarray, str | None]:
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    agent, cfg = load_agent(run_dir)
    frames: list | None = [] if video else None
    if video:
        # rgb_array rendering needs no display; keep pygame/SDL from looking for one.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    rets = evaluate(
        agent,
        cfg.env,
        episodes,
        seed=cfg.seed + 20_000 if seed is None else seed,
        deterministic=deterministic,
        frames=frames,
    )
    written = None
    if video and frames:
        import imageio.v2 as imageio

        try:
            imageio.mimsave(video, frames, fps=30) if video.endswith(".mp4") else imageio.mimsave(
                video, frames, duration=1000 / 30, loop=0
            )
        except Exception as e:  # noqa: BLE001 - codec missing etc.
            reason = " ".join(str(e).split())  # one line
            raise ConfigError(f"cannot write video {video!r}: {reason}") from None
        written = video
    return rets, written
