"""DQN (asyncrl/algos/dqn.py): the TD target (plain and double), the target network's schedule,
the replay ratio, prioritized-replay priority updates, the fast update path, and resume with the
replay buffer kept in the checkpoint."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import asyncrl
from asyncrl.algos import ALGOS
from asyncrl.algos.dqn import DQN, DQNConfig, make_dqn_agent
from asyncrl.configs.config import load_config
from asyncrl.data import buffer_from_example
from asyncrl.logging.checkpoint import latest_checkpoint, load_checkpoint
from asyncrl.replay import ReplaySample
from asyncrl.replay.state import from_json_array
from asyncrl.samplers.base import SampleBatch, samples_example

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(2)


def small_config(**kw) -> DQNConfig:
    base = dict(
        hidden_sizes=[16],
        learning_rate=1e-3,
        batch_size=8,
        buffer_size=1000,
        learning_starts=20,
        replay_ratio=0.1,
        target_update_interval=30,
    )
    base.update(kw)
    return DQNConfig(**base)


def make_algo(cfg: DQNConfig, seed: int = 0) -> DQN:
    torch.manual_seed(seed)
    agent = make_dqn_agent(OBS_SPACE, ACTION_SPACE, None, "cpu", cfg)
    return DQN(agent, cfg, seed)


def fake_batch(steps: int, rng: np.random.Generator) -> SampleBatch:
    """``steps`` env steps of one env with random observations, actions and rewards."""
    example = samples_example(np.zeros(4, np.float32), np.zeros((), np.int64), None)
    buf = buffer_from_example(example, (steps, 1))
    buf.env.observation[...] = rng.standard_normal((steps, 1, 4))
    buf.agent.action[...] = rng.integers(0, 2, (steps, 1))
    buf.env.reward[...] = rng.standard_normal((steps, 1))
    buf.env.terminated[...] = rng.random((steps, 1)) < 0.1
    return SampleBatch(samples=buf, bootstrap_value=None, next_observation=None, env_steps=steps)


class TableQ(nn.Module):
    """Q(s, .) = table[s] for observations holding a state number in their first feature."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, obs):
        return self.table[obs[:, 0].long()]


def one_transition(state, action, reward, discount, next_state) -> ReplaySample:
    obs = torch.zeros(1, 4)
    obs[0, 0] = state
    next_obs = torch.zeros(1, 4)
    next_obs[0, 0] = next_state
    return ReplaySample(
        observation=obs,
        action=torch.tensor([action]),
        reward=torch.tensor([reward]),
        done_n=torch.tensor([discount == 0]),
        discount=torch.tensor([discount]),
        next_observation=next_obs,
        weights=torch.ones(1),
        indices=torch.zeros(1, dtype=torch.long),
    )


@pytest.mark.parametrize(
    "double, discount, expected_target",
    [
        # online Q(s'=1) = [1, 5] picks action 1; the target net values it at 2: 1 + 0.5 * 2
        (True, 0.5, 2.0),
        # plain DQN: max_a Q_target(s'=1, a) = 3: 1 + 0.5 * 3
        (False, 0.5, 2.5),
        # terminated: discount 0, target is the reward whatever the next state
        (True, 0.0, 1.0),
        (False, 0.0, 1.0),
    ],
)
def test_td_target_plain_and_double(double, discount, expected_target):
    cfg = small_config(double=double, prioritized=True)
    algo = make_algo(cfg)
    # states 0 and 1; online Q(0) = [0.5, 0], Q(1) = [1, 5]; target Q(1) = [3, 2]
    algo.agent.model = TableQ([[0.5, 0.0], [1.0, 5.0]])
    algo.target = TableQ([[9.0, 9.0], [3.0, 2.0]])
    per_sample, priorities, stats = algo.loss(one_transition(0, 0, 1.0, discount, 1))
    td = 0.5 - expected_target  # Q(s=0, a=0) - target
    huber = 0.5 * td**2 if abs(td) <= 1 else abs(td) - 0.5
    assert per_sample.item() == pytest.approx(huber)
    assert priorities.item() == pytest.approx(abs(td))
    assert stats["q_mean"].item() == pytest.approx(0.5)


def test_no_priorities_without_prioritized_replay():
    algo = make_algo(small_config(prioritized=False))
    algo.agent.model = TableQ([[0.5, 0.0], [1.0, 5.0]])
    algo.target = TableQ([[9.0, 9.0], [3.0, 2.0]])
    _, priorities, _ = algo.loss(one_transition(0, 0, 1.0, 0.5, 1))
    assert priorities is None


def params_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_target_network_updates_at_the_interval():
    # batches of 10 steps, learning from 20, target every 30 env steps, one update per batch
    algo = make_algo(small_config(learning_starts=20, target_update_interval=30, replay_ratio=0.1))
    rng = np.random.default_rng(0)
    synced_at = []
    for _ in range(12):
        online_before = params_of(algo.agent.model)
        target_before = params_of(algo.target)
        algo.optimize(fake_batch(10, rng), progress=0.0)
        if not algo.updates:
            continue
        # a sync copies the online network as it was before this call's update; otherwise the
        # target stays as it was
        if same(params_of(algo.target), online_before):
            synced_at.append(algo.env_steps)
        else:
            assert same(params_of(algo.target), target_before)
        assert not same(params_of(algo.target), params_of(algo.agent.model))
    # the first sync when learning starts (20), then every 30 env steps
    assert synced_at == [20, 50, 80, 110]


def test_polyak_target_update():
    algo = make_algo(small_config(tau=0.25))
    target = params_of(algo.target)
    with torch.no_grad():
        for p in algo.agent.model.parameters():
            p.add_(1.0)
    online = params_of(algo.agent.model)
    algo._update_target()
    for t_new, t_old, o in zip(params_of(algo.target), target, online):
        torch.testing.assert_close(t_new, t_old + 0.25 * (o - t_old))


@pytest.mark.parametrize(
    "replay_ratio, steps_per_batch, expected",
    [
        (0.5, 256, [0, 0, 128, 256, 384]),  # the RL-Zoo CartPole setting
        (0.25, 10, [0, 0, 2, 5, 7, 10]),  # the fraction carries over: 2.5 updates per batch
        (1 / 3, 4, [0, 0, 1, 2, 4, 5, 6]),  # 4/3 per batch; 3 batches give 4, not 3 (rounding)
    ],
)
def test_replay_ratio_sets_the_number_of_updates(replay_ratio, steps_per_batch, expected):
    # learning starts with the second batch, whose steps count towards its updates
    cfg = small_config(
        replay_ratio=replay_ratio, learning_starts=2 * steps_per_batch, buffer_size=4000
    )
    algo = make_algo(cfg)
    rng = np.random.default_rng(1)
    counts = [0]
    for _ in range(len(expected) - 1):
        algo.optimize(fake_batch(steps_per_batch, rng), progress=0.0)
        counts.append(algo.updates)
    assert counts == expected
    assert algo.updates == math.floor(replay_ratio * (algo.env_steps - steps_per_batch) + 1e-9)


def test_prioritized_replay_priorities_are_updated():
    cfg = small_config(prioritized=True, per_alpha=0.5, replay_ratio=0.5, learning_starts=50)
    algo = make_algo(cfg)
    rng = np.random.default_rng(2)
    for _ in range(4):
        algo.optimize(fake_batch(10, rng), progress=0.0)  # fills, no update yet
    replay = algo.replay
    valid = replay.valid_indices()
    assert np.all(replay.tree.get(valid) == 1.0)  # new transitions enter at the max priority
    calls = []
    original = replay.update_priorities

    def record(indices, td_errors):
        calls.append((np.array(indices), np.array(td_errors)))
        original(indices, td_errors)

    replay.update_priorities = record
    stats = algo.optimize(fake_batch(10, rng), progress=0.5)
    assert len(calls) == algo.updates == 5  # one priority update per gradient update
    assert stats["per_beta"] == pytest.approx(0.4 + 0.5 * 0.6)
    indices, td = calls[-1]
    assert indices.shape == td.shape == (cfg.batch_size,)
    expected = (np.abs(td) + replay.priority_eps) ** 0.5
    np.testing.assert_allclose(replay.tree.get(indices), expected, rtol=1e-6)
    touched = np.unique(np.concatenate([i for i, _ in calls]))
    assert not np.allclose(replay.tree.get(touched), 1.0)


def _filled(cfg: DQNConfig, steps: int = 500) -> DQN:
    algo = make_algo(cfg)
    rng = np.random.default_rng(3)
    for _ in range(steps // 100):
        algo.optimize(fake_batch(100, rng), progress=0.0)
    return algo


def test_minibatches_are_uniform_slices_of_one_draw():
    # A phase of uniform replay is drawn in one block; each update sees its own slice.
    algo = _filled(small_config(batch_size=8, learning_starts=10**9, buffer_size=500))
    seen = [batch.indices.clone() for batch, _ in algo._minibatches(50)]
    assert len(seen) == 50 and all(len(i) == 8 for i in seen)
    counts = np.bincount(torch.cat(seen).numpy(), minlength=500)
    # spread over the buffer: 400 draws from 499 transitions hit about 275 distinct ones
    assert counts.sum() == 400 and (counts > 0).sum() > 200
    # the slices hold what the replay would return for those indices
    last, _ = next(iter(algo._minibatches(1)))
    ref = algo.replay.batch_at(last.indices.numpy())
    np.testing.assert_array_equal(last.observation.numpy(), ref.observation)
    np.testing.assert_array_equal(last.reward.numpy(), ref.reward)


@pytest.mark.parametrize("double", [False, True])
def test_block_targets_equal_per_minibatch_targets(double):
    # The target network runs once per block; the targets must be those of each minibatch alone.
    algo = _filled(small_config(batch_size=8, learning_starts=10**9, double=double))
    with torch.no_grad():
        for update, (batch, target) in enumerate(algo._minibatches(20)):
            alone = algo.td_target(batch, algo.target(batch.next_observation))
            torch.testing.assert_close(target, alone)
            if update % 5 == 0:  # the online network moves between updates (double uses it)
                for p in algo.agent.model.parameters():
                    p.add_(0.01 * torch.randn_like(p))


def test_fast_clipping_matches_clip_grad_norm():
    algo = make_algo(small_config(max_grad_norm=0.1))
    reference = copy.deepcopy(algo.agent.model)
    x = torch.randn(32, 4)
    for model in (algo.agent.model, reference):
        model(x).pow(2).sum().backward()
    algo._clip_gradients()
    nn.utils.clip_grad_norm_(reference.parameters(), 0.1)
    for p, q in zip(algo.agent.model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_losses_are_reported_once_per_phase():
    algo = make_algo(small_config(replay_ratio=1.0, learning_starts=20))
    rng = np.random.default_rng(4)
    algo.optimize(fake_batch(10, rng), progress=0.0)
    stats = algo.optimize(fake_batch(10, rng), progress=0.0)
    assert algo.updates == 10
    assert isinstance(stats["loss"], float) and math.isfinite(stats["loss"])
    assert isinstance(stats["q_mean"], float) and math.isfinite(stats["q_mean"])


# -- resume keeps the replay ------------------------------------------------------------------


def _short_run(run_dir, steps, extra=()):
    cfg = asyncrl.resolve_config(
        "dqn",
        "CartPole-v1",
        sets=[
            f'run_dir="{run_dir}"',
            "log.progress=false",
            "log.tensorboard=false",
            "log.eval_every=-1",
            f"steps={steps}",
            "dqn.learning_starts=256",
            "dqn.replay_ratio=0.05",
            "dqn.hidden_sizes=[16]",
            *extra,
        ],
    )
    return asyncrl.train(cfg)


def _algo_from_checkpoint(run_dir):
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    cfg = load_config(run_dir / "config.toml")
    entry = ALGOS["dqn"]
    agent = entry.make_agent(OBS_SPACE, ACTION_SPACE, cfg.model, "cpu", cfg.algo_params)
    algo = entry.make_algo(agent, cfg.algo_params, cfg.seed)
    algo.load_state_dict(ckpt["algo"])
    return ckpt, algo


def test_resume_keeps_the_replay(tmp_path):
    _short_run(tmp_path, 1024)
    ckpt, algo = _algo_from_checkpoint(tmp_path)
    assert ckpt["env_steps"] == 1024 and "replay" in ckpt["algo"]
    rng = np.random.default_rng(5)
    algo.optimize(fake_batch(256, rng), progress=0.5)  # the replay is rebuilt on the first batch
    # all 1024 saved steps are still there (1023 sampleable: the last waits for its next step),
    # plus the new batch
    assert algo.replay.steps_written == 1024 + 256
    assert len(algo.replay) == 1024 + 256 - 1
    assert algo.updates > ckpt["algo"]["updates"]  # and it learns at once
    # the run itself resumes from its directory and goes on filling the same replay
    result = asyncrl.train(resume=tmp_path, steps=1536, progress=False)
    assert result.env_steps == 1536
    replay_state = load_checkpoint(latest_checkpoint(tmp_path))["algo"]["replay"]
    assert from_json_array(replay_state["meta"])["steps_written"] == 1536


def test_resume_without_saved_replay_refills_before_learning(tmp_path):
    _short_run(tmp_path, 1024, ["dqn.save_replay=false"])
    ckpt, algo = _algo_from_checkpoint(tmp_path)
    assert "replay" not in ckpt["algo"]
    updates = algo.updates
    rng = np.random.default_rng(6)
    algo.optimize(fake_batch(128, rng), progress=0.5)
    assert algo.updates == updates  # an empty buffer: wait for learning_starts new steps
    algo.optimize(fake_batch(128, rng), progress=0.5)
    assert algo.updates > updates
