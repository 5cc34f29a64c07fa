"""C51 (asyncrl/algos/c51.py): the categorical projection against hand-computed cases, mass and
mean conservation, and the distributional loss with plain and double action selection."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from asyncrl.algos.c51 import C51, C51Config, RainbowConfig, categorical_projection
from asyncrl.algos.dqn import make_dqn_agent
from asyncrl.replay import ReplaySample

# 5 atoms on [0, 4]: support z = 0, 1, 2, 3, 4 and delta_z = 1, so an atom moved to Tz splits its
# mass between floor(Tz) and ceil(Tz) in proportion to closeness.
P = [0.1, 0.2, 0.3, 0.25, 0.15]
UNIFORM = [0.2] * 5


@pytest.mark.parametrize(
    "probs, reward, discount, expected",
    [
        # Tz = 1 + 0.5 z = [1, 1.5, 2, 2.5, 3]: 0.1 -> 1; 0.2 -> half to 1, half to 2; 0.3 -> 2;
        # 0.25 -> half to 2, half to 3; 0.15 -> 3
        (P, 1.0, 0.5, [0.0, 0.2, 0.525, 0.275, 0.0]),
        # terminal (discount 0): every atom lands on Tz = r = 2.3: 0.7 to atom 2, 0.3 to atom 3
        (P, 2.3, 0.0, [0.0, 0.0, 0.7, 0.3, 0.0]),
        # Tz = 3 + z = [3, 4, 5, 6, 7] clamps to [3, 4, 4, 4, 4] at v_max
        (P, 3.0, 1.0, [0.0, 0.0, 0.0, 0.1, 0.9]),
        # Tz = -1.5 + 0.5 z = [-1.5, -1, -0.5, 0, 0.5] clamps to [0, 0, 0, 0, 0.5] at v_min:
        # 4 x 0.2 to atom 0, the last 0.2 halved between atoms 0 and 1
        (UNIFORM, -1.5, 0.5, [0.9, 0.1, 0.0, 0.0, 0.0]),
        # Tz = 0.25 + 0.5 z = [0.25, 0.75, 1.25, 1.75, 2.25]:
        # atom 0 gets 0.75 * 0.1 + 0.25 * 0.2 = 0.125; atom 1 0.25 * 0.1 + 0.75 * 0.2 + 0.75 *
        # 0.3 + 0.25 * 0.25 = 0.4625; atom 2 0.25 * 0.3 + 0.75 * 0.25 + 0.75 * 0.15 = 0.375;
        # atom 3 0.25 * 0.15 = 0.0375
        (P, 0.25, 0.5, [0.125, 0.4625, 0.375, 0.0375, 0.0]),
    ],
)
def test_projection_hand_computed(probs, reward, discount, expected):
    out = categorical_projection(
        torch.tensor([probs], dtype=torch.float64),
        torch.tensor([reward], dtype=torch.float64),
        torch.tensor([discount], dtype=torch.float64),
        0.0,
        4.0,
    )
    torch.testing.assert_close(out, torch.tensor([expected], dtype=torch.float64))


def test_projection_batched_equals_rowwise():
    probs = torch.tensor([P, UNIFORM, P], dtype=torch.float64)
    reward = torch.tensor([1.0, -1.5, 2.3], dtype=torch.float64)
    discount = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    batched = categorical_projection(probs, reward, discount, 0.0, 4.0)
    for i in range(3):
        row = categorical_projection(probs[i : i + 1], reward[i : i + 1], discount[i : i + 1], 0, 4)
        torch.testing.assert_close(batched[i : i + 1], row)


def test_projection_conserves_mass_and_mean():
    gen = torch.Generator().manual_seed(0)
    n, k, v_min, v_max = 512, 51, -10.0, 10.0
    probs = torch.rand(n, k, generator=gen, dtype=torch.float64).softmax(-1)
    reward = torch.empty(n, dtype=torch.float64).uniform_(-15, 15, generator=gen)
    discount = torch.rand(n, generator=gen, dtype=torch.float64)
    discount[::7] = 0.0  # terminal rows
    discount[1::7] = 1.0
    out = categorical_projection(probs, reward, discount, v_min, v_max)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(n, dtype=torch.float64))
    # linear interpolation between neighbours keeps the mean of the clipped atoms Tz
    support = torch.linspace(v_min, v_max, k, dtype=torch.float64)
    tz = (reward[:, None] + discount[:, None] * support).clamp(v_min, v_max)
    torch.testing.assert_close((out * support).sum(-1), (probs * tz).sum(-1))


def test_projection_of_a_fixed_point():
    # reward 0, discount 1 maps every atom onto itself
    probs = torch.tensor([P])
    out = categorical_projection(probs, torch.zeros(1), torch.ones(1), 0.0, 4.0)
    torch.testing.assert_close(out, probs)


# -- the loss ---------------------------------------------------------------------------------


class TableLogits(nn.Module):
    """logits(s) = log of a fixed table of distributions [S, A, K], s in the first feature."""

    def __init__(self, probs):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(probs, dtype=torch.float32).log())

    def forward(self, obs):
        return self.logits[obs[:, 0].long()]


ONLINE = [
    # state 0: the taken action 0 has distribution Q0; action 1 uniform
    [[0.05, 0.4, 0.3, 0.2, 0.05], UNIFORM],
    # state 1: action 0 has mean 1.0, action 1 mean 3.0 -> the online net prefers action 1
    [[0.6, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.6]],
]
TARGET = [
    [UNIFORM, UNIFORM],
    # state 1: action 0 has mean 3.0, action 1 mean 1.5 -> the target net prefers action 0
    [[0.1, 0.1, 0.1, 0.1, 0.6], [0.1, 0.6, 0.1, 0.1, 0.1]],
]


@pytest.mark.parametrize(
    "double, projected",
    [
        # double: a* = 1 (online), target distribution [0.1, 0.6, 0.1, 0.1, 0.1] moved to
        # Tz = [1, 1.5, 2, 2.5, 3]: atom 1 gets 0.1 + 0.3, atom 2 0.3 + 0.1 + 0.05, atom 3 0.05 + 0.1
        (True, [0.0, 0.4, 0.45, 0.15, 0.0]),
        # plain C51: a* = 0 (target), [0.1, 0.1, 0.1, 0.1, 0.6]: atom 1 gets 0.1 + 0.05,
        # atom 2 0.05 + 0.1 + 0.05, atom 3 0.05 + 0.6
        (False, [0.0, 0.15, 0.2, 0.65, 0.0]),
    ],
)
def test_c51_loss_is_cross_entropy_to_the_projected_target(double, projected):
    cfg = C51Config(n_atoms=5, v_min=0.0, v_max=4.0, double=double, hidden_sizes=[8])
    obs_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    agent = make_dqn_agent(obs_space, gym.spaces.Discrete(2), None, "cpu", cfg)
    algo = C51(agent, cfg)
    agent.model = TableLogits(ONLINE)
    algo.target = TableLogits(TARGET)
    sample = ReplaySample(
        observation=torch.tensor([[0.0, 0.0]]),
        action=torch.tensor([0]),
        reward=torch.tensor([1.0]),
        done_n=torch.tensor([False]),
        discount=torch.tensor([0.5]),
        next_observation=torch.tensor([[1.0, 0.0]]),
        weights=torch.ones(1),
        indices=torch.zeros(1, dtype=torch.long),
    )
    per_sample, priorities, stats = algo.loss(sample)
    q0 = ONLINE[0][0]
    expected = -sum(m * math.log(q) for m, q in zip(projected, q0) if m > 0)
    assert per_sample.item() == pytest.approx(expected, rel=1e-5)
    assert priorities.item() == pytest.approx(expected, rel=1e-5)  # Rainbow: priority = loss
    # q_mean is the expected value of the taken action's distribution: 0.4 + 0.6 + 0.6 + 0.2
    assert stats["q_mean"].item() == pytest.approx(1.8, rel=1e-5)
    per_sample.sum().backward()
    assert agent.model.logits.grad[0, 0].abs().sum() > 0  # only the taken action is pushed
    assert agent.model.logits.grad[0, 1].abs().sum() == 0


def test_rainbow_config_combines_the_components():
    cfg = RainbowConfig()
    assert cfg.double and cfg.dueling and cfg.noisy and cfg.prioritized
    assert cfg.n_step == 3 and cfg.n_atoms == 51
    assert cfg.eps_start == cfg.eps_final == cfg.eval_epsilon == 0.0
    model_cfg = cfg.q_model_config()
    assert model_cfg.n_atoms == 51 and model_cfg.noisy and model_cfg.dueling


@pytest.mark.parametrize("double", [False, True])
def test_block_targets_equal_per_minibatch_targets(double):
    # DQN's training loop runs the target network once per block of minibatches; for C51 the
    # projected distributions must be those of each minibatch alone.
    from asyncrl.data import buffer_from_example
    from asyncrl.samplers.base import SampleBatch, samples_example

    cfg = C51Config(
        n_atoms=11,
        v_min=-5.0,
        v_max=5.0,
        double=double,
        hidden_sizes=[16],
        batch_size=8,
        buffer_size=500,
        learning_starts=10**9,
    )
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    torch.manual_seed(0)
    algo = C51(make_dqn_agent(obs_space, gym.spaces.Discrete(2), None, "cpu", cfg), cfg)
    rng = np.random.default_rng(0)
    buf = buffer_from_example(samples_example(np.zeros(3, np.float32), np.int64(0), None), (100, 1))
    for _ in range(3):
        buf.env.observation[...] = rng.standard_normal((100, 1, 3))
        buf.agent.action[...] = rng.integers(0, 2, (100, 1))
        buf.env.reward[...] = rng.standard_normal((100, 1))
        buf.env.terminated[...] = rng.random((100, 1)) < 0.1
        algo.optimize(SampleBatch(buf, None, None, env_steps=100), progress=0.0)
    with torch.no_grad():
        for batch, target in algo._minibatches(10):
            alone = algo.td_target(batch, algo.target(batch.next_observation))
            torch.testing.assert_close(target, alone)
            torch.testing.assert_close(target.sum(-1), torch.ones(8))
