"""Off-policy algorithms on the runtime: the acting state (epsilon, the random-action phase)
travels with the parameters to the workers' agent copies, and replay gets every env's steps."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import asyncrl
from asyncrl.algos import ALGOS
from asyncrl.runners.train import _seed_everything, make_sampler
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


# -- every env explores with its own stream: serial = parallel, workers never share draws ------

# (algo, env, settings, the acting state of each batch). The first batch of each acts in the
# random-action phase (DQN: epsilon 1; SAC/DDPG: uniform random actions), the later ones with
# new parameters: DQN epsilon-greedy at 0.5, SAC sampling its policy, DDPG with OU noise (whose
# per-env processes restart at each episode end: episodes here last 12 steps of a 16-step batch).
OFFPOLICY_CASES = {
    "dqn": (
        "CartPole-v1",
        ["dqn.hidden_sizes=[16]"],
        [{"epsilon": 1.0}, {"epsilon": 0.5}, {"epsilon": 0.5}],
    ),
    "sac": (
        "Pendulum-v1",
        ["sac.hidden_sizes=[16,16]"],
        [{"random_actions": True}, {"random_actions": False}, {"random_actions": False}],
    ),
    "ddpg": (
        "Pendulum-v1",
        ["ddpg.hidden_sizes=[16,16]", "ddpg.noise='ou'", "ddpg.exploration_noise=0.5"],
        [{"random_actions": True}, {"random_actions": False}, {"random_actions": False}],
    ),
}


def _collect_offpolicy(algo: str, mode: str):
    """Samples of each batch of ``OFFPOLICY_CASES[algo]`` in ``mode`` (2 workers x 2 envs),
    changing the parameters and the acting state between batches as the learner would."""
    env_id, extra, acting = OFFPOLICY_CASES[algo]
    cfg = asyncrl.resolve_config(
        algo,
        env_id,
        sets=[
            "log.progress=false",
            "log.tensorboard=false",
            f"sampler.mode='{mode}'",
            "sampler.workers=2",
            "sampler.num_envs=4",
            "sampler.horizon=16",
            "seed=7",
            "env.max_episode_steps=12",
            *extra,
        ],
    )
    _seed_everything(cfg.seed)
    sampler = make_sampler(cfg)
    agent = ALGOS[algo].make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    agent.eval_mode()
    gen = torch.Generator().manual_seed(123)  # the same parameter changes in every mode
    out = []
    try:
        sampler.initialize(agent)
        for i, state in enumerate(acting):
            for k, v in state.items():
                setattr(agent, k, v)
            batch = sampler.obtain()
            s = batch.samples
            out.append(
                {
                    "observation": s.env.observation.copy(),
                    "action": s.agent.action.copy(),
                    "reward": s.env.reward.copy(),
                    "terminated": s.env.terminated.copy(),
                    "truncated": s.env.truncated.copy(),
                }
            )
            with torch.no_grad():
                for p in agent.model.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
            agent.policy_version = i + 1
            sampler.sync(agent)
    finally:
        sampler.close()
    return out


@pytest.mark.parametrize("algo", list(OFFPOLICY_CASES))
def test_offpolicy_same_seed_same_trajectories_serial_and_parallel(algo):
    serial = _collect_offpolicy(algo, "serial")
    parallel = _collect_offpolicy(algo, "parallel")
    assert len(serial) == len(parallel) == len(OFFPOLICY_CASES[algo][2])
    for i, (a, b) in enumerate(zip(serial, parallel)):
        for key in ("terminated", "truncated"):
            np.testing.assert_array_equal(b[key], a[key], err_msg=f"batch {i} {key} ({algo})")
        assert a["truncated"].any()  # episodes ended within the batch (OU resets, new episodes)
        exact = algo == "dqn" or i == 0
        for key in ("observation", "action", "reward"):
            if exact:  # discrete actions, or uniform random ones: bit for bit
                np.testing.assert_array_equal(b[key], a[key], err_msg=f"batch {i} {key} ({algo})")
            else:
                # The exploration draws are the same, but the actor sees batches of 4 envs
                # serially and 2 per worker: BLAS sums in another order and continuous actions
                # (then observations) differ in the last bits (~1e-8), as values do for PPO.
                np.testing.assert_allclose(
                    b[key], a[key], rtol=1e-5, atol=1e-5, err_msg=f"batch {i} {key} ({algo})"
                )
    # Workers draw their own exploration: in the random-action phase (batch 0), worker 0's
    # columns (envs 0, 1) and worker 1's (envs 2, 3) differ, and so do two envs of one worker.
    act = parallel[0]["action"]
    assert not np.array_equal(act[:, :2], act[:, 2:])
    assert not np.array_equal(act[:, 0], act[:, 1])
    if algo == "dqn":  # epsilon 0.5: some greedy steps, so the comparison covers the network
        assert not np.array_equal(parallel[1]["action"], serial[0]["action"])


@pytest.mark.parametrize("mode", ["central", "alternating"])
def test_ou_noise_restarts_at_episode_ends_where_inference_is_central(mode):
    """DDPG with OU noise, acting in the coordinator: workers tell it which envs' episodes
    ended (with the next request), so the noise processes restart as in serial mode."""
    serial = _collect_offpolicy("ddpg", "serial")
    central = _collect_offpolicy("ddpg", mode)
    for i, (a, b) in enumerate(zip(serial, central)):
        np.testing.assert_array_equal(b["truncated"], a["truncated"], err_msg=f"batch {i}")
        for key in ("observation", "action", "reward"):
            np.testing.assert_allclose(
                b[key], a[key], rtol=1e-5, atol=1e-5, err_msg=f"batch {i} {key} ({mode})"
            )
