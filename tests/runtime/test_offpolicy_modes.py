"""Off-policy algorithms on the runtime: the acting state (epsilon, the random-action phase)
travels with the parameters to the workers' agent copies, and replay gets every env's steps."""

from __future__ import annotations

import csv

import pytest

import asyncrl
from tests.runtime._runtime_helpers import no_leftovers  # noqa: F401 - autouse: no processes/shm left


@pytest.mark.parametrize(
    "algo,env_id,extra",
    [
        ("dqn", "CartPole-v1", ["steps=3072", "dqn.learning_starts=1024", "sampler.horizon=64"]),
        (
            "sac",
            "Pendulum-v1",
            [
                "steps=1280",
                "sac.learning_starts=1024",
                "sampler.horizon=16",
                "sac.hidden_sizes=[32,32]",
                "sac.batch_size=64",
            ],
        ),
    ],
)
def test_offpolicy_trains_in_parallel_mode(tmp_path, algo, env_id, extra):
    cfg = asyncrl.resolve_config(
        algo,
        env_id,
        sets=[
            f"run_dir='{tmp_path / algo}'",
            "log.progress=false",
            "log.tensorboard=false",
            "log.eval_every=-1",
            "log.log_every_s=0",
            "sampler.mode='parallel'",
            "sampler.workers=2",
            "sampler.num_envs=2",
            *extra,
        ],
    )
    result = asyncrl.train(cfg)
    assert result.env_steps >= cfg.steps
    rows = list(csv.DictReader(open(result.run_dir / "progress.csv")))
    # Updates start once learning_starts env steps (from both workers) are in the replay.
    assert int(rows[-1]["updates"]) > 0
    if algo == "dqn":
        # epsilon decays in the learner and reaches the workers: it is logged decreasing.
        eps = [float(r["epsilon"]) for r in rows]
        assert eps[-1] < eps[0]
    else:
        assert result.agent.random_actions is False


def test_epsilon_reaches_the_workers():
    """Greedy (epsilon 0) workers take the learner's argmax action; epsilon 1 acts at random."""
    import numpy as np
    import torch

    from asyncrl.algos import ALGOS
    from asyncrl.runners.train import _seed_everything, make_sampler

    cfg = asyncrl.resolve_config(
        "dqn",
        "CartPole-v1",
        sets=[
            "sampler.mode='parallel'",
            "sampler.workers=2",
            "sampler.num_envs=4",
            "sampler.horizon=32",
        ],
    )
    _seed_everything(cfg.seed)
    sampler = make_sampler(cfg)
    agent = ALGOS["dqn"].make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    with torch.no_grad():  # Q(s, 1) >> Q(s, 0) for every state
        last = agent.model.advantage
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 100.0]))
    try:
        sampler.initialize(agent)
        agent.epsilon = 0.0
        greedy = np.array(sampler.obtain().samples.agent.action)
        agent.epsilon = 1.0
        random = np.array(sampler.obtain().samples.agent.action)
    finally:
        sampler.close()
    assert (greedy == 1).all()
    assert 0.3 < (random == 1).mean() < 0.7
