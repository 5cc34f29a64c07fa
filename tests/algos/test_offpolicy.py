"""The replay base (asyncrl/algos/offpolicy.py), once for every off-policy algorithm: DQN, C51,
SAC, TD3 and DDPG all build on ReplayLearner; the replay ratio and learning_starts give the same
number of updates; a resume without the replay refills first; statistics keep their keys; the
checkpoint state round-trips, also from the layouts written before DQN shared the base."""

from __future__ import annotations

import io
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from asyncrl.algos.c51 import C51, C51Config
from asyncrl.algos.ddpg import DDPG, DDPGConfig
from asyncrl.algos.dqn import DQN, DQNConfig, make_dqn_agent
from asyncrl.algos.offpolicy import ReplayLearner
from asyncrl.algos.sac import SAC, SACConfig, make_sac_agent
from asyncrl.algos.td3 import TD3, TD3Config, make_td3_agent
from asyncrl.data import buffer_from_example
from asyncrl.samplers.base import SampleBatch, samples_example
from tests.algos._qpg_helpers import make_learner

DISCRETE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
BOX_ACTIONS = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
ALGOS = ["dqn", "c51", "sac", "td3", "ddpg"]


def make(name: str, **kw) -> ReplayLearner:
    base = dict(batch_size=8, buffer_size=1000, learning_starts=20)
    base.update(kw)
    if name in ("dqn", "c51"):
        config_cls, algo_cls = (DQNConfig, DQN) if name == "dqn" else (C51Config, C51)
        extra = {"n_atoms": 11} if name == "c51" else {}
        cfg = config_cls(hidden_sizes=[16], **extra, **base)
        torch.manual_seed(0)
        agent = make_dqn_agent(DISCRETE_OBS, gym.spaces.Discrete(2), None, "cpu", cfg)
        return algo_cls(agent, cfg, seed=0)
    algo_cls, config_cls, make_agent = {
        "sac": (SAC, SACConfig, make_sac_agent),
        "td3": (TD3, TD3Config, make_td3_agent),
        "ddpg": (DDPG, DDPGConfig, make_td3_agent),
    }[name]
    return make_learner(algo_cls, config_cls, make_agent, BOX_ACTIONS, hidden_sizes=[16], **base)


def fake_batch(algo: ReplayLearner, steps: int, rng: np.random.Generator) -> SampleBatch:
    """``steps`` env steps of one env, with actions the algorithm's agent could take."""
    obs_dim = algo.agent.obs_space.shape[0]
    if isinstance(algo.agent.action_space, gym.spaces.Discrete):
        action_example = np.zeros((), np.int64)
    else:
        action_example = np.zeros(2, np.float32)
    buf = buffer_from_example(
        samples_example(np.zeros(obs_dim, np.float32), action_example, None), (steps, 1)
    )
    buf.env.observation[...] = rng.standard_normal((steps, 1, obs_dim))
    if action_example.ndim == 0:
        buf.agent.action[...] = rng.integers(0, 2, (steps, 1))
    else:
        buf.agent.action[...] = rng.uniform(-2.0, 2.0, (steps, 1, 2))
    buf.env.reward[...] = rng.standard_normal((steps, 1))
    buf.env.terminated[...] = rng.random((steps, 1)) < 0.05
    return SampleBatch(samples=buf, bootstrap_value=None, next_observation=None, env_steps=steps)


def expected_updates(env_steps: int, learning_starts: int, horizon: int, ratio: float) -> int:
    """floor(replay_ratio * steps counted): counting starts with the whole batch that reaches
    learning_starts (the replay ratio counts gradient updates per env step)."""
    if env_steps < learning_starts:
        return 0
    first = -(-learning_starts // horizon) * horizon  # end of the first batch reaching it
    return math.floor(ratio * (env_steps - first + horizon) + 1e-9)


@pytest.mark.parametrize("cls", [DQN, C51, SAC, TD3, DDPG])
def test_every_off_policy_algorithm_builds_on_the_one_replay_base(cls):
    assert issubclass(cls, ReplayLearner)
    # the replay ratio, learning_starts, minibatches and checkpoints are the base's alone
    for name in ("optimize", "_minibatches", "_make_replay", "state_dict", "load_state_dict"):
        assert getattr(cls, name) is getattr(ReplayLearner, name), name


@pytest.mark.parametrize("name", ALGOS)
@pytest.mark.parametrize("ratio, horizon", [(0.25, 3), (1 / 3, 4), (1.5, 2)])
def test_updates_after_n_env_steps_follow_the_replay_ratio(name, ratio, horizon):
    algo = make(name, replay_ratio=ratio, learning_starts=20)
    rng = np.random.default_rng(0)
    while algo.env_steps < 44:
        stats = algo.optimize(fake_batch(algo, horizon, rng), progress=0.5)
        expected = expected_updates(algo.env_steps, 20, horizon, ratio)
        assert algo.updates == expected, (algo.env_steps, algo.updates, expected)
        # the same keys from the first call on: NaN until the first update
        assert set(algo.stat_names) <= set(stats)
        if algo.updates == 0:
            assert all(math.isnan(stats[k]) for k in algo.stat_names)
        else:
            assert all(isinstance(stats[k], float) for k in algo.stat_names)
    assert algo.updates > 0
    if hasattr(algo.agent, "random_actions"):  # the uniform warm-up ended with learning
        assert not algo.agent.random_actions


@pytest.mark.parametrize("name", ALGOS)
def test_resume_without_the_replay_refills_before_learning(name):
    original = make(name, replay_ratio=0.5, learning_starts=10, save_replay=False)
    rng = np.random.default_rng(1)
    for _ in range(4):
        original.optimize(fake_batch(original, 5, rng), progress=0.5)
    state = original.state_dict()
    assert "replay" not in state
    restored = make(name, replay_ratio=0.5, learning_starts=10, save_replay=False)
    restored.load_state_dict(state)
    assert (restored.updates, restored.env_steps) == (original.updates, 20)
    updates = restored.updates
    restored.optimize(fake_batch(restored, 5, rng), progress=0.5)
    assert restored.updates == updates  # 5 new steps: the empty buffer waits for 10
    restored.optimize(fake_batch(restored, 5, rng), progress=0.5)
    # counted: the batches that ended at 10, 15, 20 and now 30, and the credit's fraction
    # carried over the checkpoint: 0.5 x 20 = 10 updates in all
    assert (updates, restored.updates) == (7, 10)
    assert restored.config.learning_starts == 10  # the config itself is left as it was


@pytest.mark.parametrize("name", ALGOS)
@pytest.mark.parametrize("layout", ["current", "before_the_shared_base"])
def test_checkpoint_state_round_trips_and_continues_identically(name, layout):
    original = make(name, replay_ratio=0.5, learning_starts=10)
    rng = np.random.default_rng(2)
    for _ in range(6):
        original.optimize(fake_batch(original, 5, rng), progress=0.3)
    buffer = io.BytesIO()  # through bytes, as a checkpoint file: the state holds live tensors
    torch.save({"algo": original.state_dict(), "agent": original.agent.state_tensors()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    state = saved["algo"]
    if layout == "before_the_shared_base":
        # DQN kept its own state at the top level; both kept the acting fields there
        acting = state.pop("acting")
        if name in ("dqn", "c51"):
            state.update(state.pop("learner"))
        state.update(acting)
    restored = make(name, replay_ratio=0.5, learning_starts=10)
    restored.agent.load_state_tensors(saved["agent"])
    restored.load_state_dict(state)
    assert restored.agent.acting_state() == original.agent.acting_state()
    batch = fake_batch(original, 5, np.random.default_rng(3))
    stats = []
    for learner in (original, restored):
        torch.manual_seed(7)
        stats.append(learner.optimize(batch, progress=0.4))
    assert restored.updates == original.updates
    assert stats[0] == stats[1]
    for a, b in zip(original.agent.model.parameters(), restored.agent.model.parameters()):
        assert torch.equal(a, b)
