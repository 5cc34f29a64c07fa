"""R2D1's parts: value rescaling and its inverse, the priority mix, the sequence replay (windows,
stored start states, priorities, state round trip), the core's inputs rebuilt from a replayed
sequence, and the n-step targets by hand."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import asyncrl.envs.memory  # noqa: F401 - registers asyncrl/CartPoleNoVel-v1
from asyncrl.agents.r2d1 import R2d1Agent
from asyncrl.algos.r2d1 import (
    R2D1,
    R2D1Config,
    inverse_value_rescale,
    mixed_priority,
    sequence_inputs,
    value_rescale,
)
from asyncrl.data import buffer_from_example, to_torch
from asyncrl.envs import make_vec_env
from asyncrl.envs.spec import EnvSpec
from asyncrl.models.recurrent import RecurrentQConfig
from asyncrl.replay.sequence import PrioritizedSequenceReplay, SequenceReplay
from asyncrl.samplers.base import samples_example
from asyncrl.samplers.collector import Collector


def test_the_inverse_value_rescaling_undoes_it_over_a_wide_range():
    x = torch.cat(
        [-torch.logspace(-6, 6, 500, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
         torch.logspace(-6, 6, 500, dtype=torch.float64)]
    )  # fmt: skip
    for eps in (1e-3, 1e-2):
        torch.testing.assert_close(inverse_value_rescale(value_rescale(x, eps), eps), x)
        torch.testing.assert_close(value_rescale(inverse_value_rescale(x, eps), eps), x)
    # float32, as the learner runs it: relative error of float precision
    x32 = x.float()
    back = inverse_value_rescale(value_rescale(x32))
    assert torch.all((back - x32).abs() <= 1e-4 * x32.abs().clamp(min=1))
    # h itself: sign(x)(sqrt(|x|+1)-1) + eps x at a few points by hand
    h = value_rescale(torch.tensor([0.0, 3.0, -8.0, 99.0]))
    expected = torch.tensor([0.0, 1.0 + 0.003, -(2.0 + 0.008), 9.0 + 0.099])
    torch.testing.assert_close(h, expected)


def test_the_priority_mixes_max_and_mean_over_valid_steps():
    abs_delta = torch.tensor([[1.0, 4.0], [3.0, 9.0], [2.0, 0.5]])  # [L=3, N=2]
    valid = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    p = mixed_priority(abs_delta, valid, 0.9)
    # column 0: max 3, mean 2 -> 0.9*3 + 0.1*2; column 1: the masked 9 does not count
    torch.testing.assert_close(p, torch.tensor([0.9 * 3 + 0.1 * 2, 0.9 * 4 + 0.1 * 2.25]))
    assert mixed_priority(abs_delta, torch.zeros_like(valid), 0.9).eq(0).all()


def _collect(agent, steps: int, n_envs: int = 3, seed: int = 0):
    """Real steps of the masked CartPole with ``agent``: a [steps, n_envs] Samples buffer."""
    env = make_vec_env(EnvSpec(id="asyncrl/CartPoleNoVel-v1"), n_envs, seed=seed)
    example = samples_example(env.obs_example, env.action_example, agent.info_example())
    buf = buffer_from_example(example, (steps, n_envs))
    collector = Collector(env, agent)
    collector.reset(env.action_example)
    final, _, _ = collector.collect(buf)
    env.close()
    return buf, final


def _agent(seed=0, epsilon=0.3):
    torch.manual_seed(seed)
    space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    cfg = RecurrentQConfig(hidden_sizes=[16], core_size=8, head_hidden=8)
    agent = R2d1Agent(space, gym.spaces.Discrete(2), cfg, seed=seed)
    agent.epsilon = epsilon
    return agent


def test_sequence_windows_hold_the_steps_and_the_state_stored_at_their_start():
    agent = _agent()
    T, B = 150, 3
    buf, final = _collect(agent, T, B)
    replay = SequenceReplay(
        buf[0, 0], 1000, B, n_step=3, sequence_length=12, burn_in=4, overlap=4, seed=0
    )
    assert replay.stride == 8 and replay.window == 19
    for t0 in range(0, T, 50):  # three appends
        part = buf[t0 : t0 + 50]
        replay.append(part, [(t - t0, b, o) for t, b, o in final if t0 <= t < t0 + 50])
    # starts: multiples of 8 whose 19-step window is written (s + 19 <= 150: s <= 131 -> 128)
    first, end = replay.start_range()
    assert (first, end) == (0, 136) and len(replay) == 17 * B
    sample = replay.sample(64, np.random.default_rng(1))
    slot, env = np.divmod(sample.indices, B)
    start = slot * replay.stride
    for i in range(64):
        s, b = start[i], env[i]
        window = slice(s, s + replay.window)
        np.testing.assert_array_equal(sample.observation[i], buf.env.observation[window, b])
        np.testing.assert_array_equal(sample.action[i], buf.agent.action[window, b])
        np.testing.assert_array_equal(sample.reward[i], buf.env.reward[window, b])
        np.testing.assert_array_equal(sample.terminated[i], buf.env.terminated[window, b])
        np.testing.assert_array_equal(sample.state[i], buf.agent.agent_info.rnn_state[s, b])
        np.testing.assert_array_equal(sample.prev_action[i], buf.agent.prev_action[s, b])
        np.testing.assert_array_equal(sample.prev_reward[i], buf.agent.agent_info.prev_reward[s, b])
    assert sample.weights.tolist() == [1.0] * 64
    # a state dict round trip gives the same draws
    other = SequenceReplay(
        buf[0, 0], 1000, B, n_step=3, sequence_length=12, burn_in=4, overlap=4, seed=5
    )
    other.load_state_dict(replay.state_dict())
    a, b = replay.sample(8, np.random.default_rng(2)), other.sample(8, np.random.default_rng(2))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_the_core_inputs_rebuilt_from_a_sequence_replay_the_acting_states():
    """Stepping the model over a replayed window with the rebuilt previous actions, rewards and
    resets, from the stored start state, gives the state the acting agent had before each step
    (episodes end inside these windows: CartPole's last ~20-40 steps at random)."""
    agent = _agent(epsilon=0.5)
    T, B = 200, 2
    buf, final = _collect(agent, T, B)
    assert (buf.env.terminated | buf.env.truncated).sum() >= 4  # windows cross episode ends
    replay = SequenceReplay(
        buf[0, 0], 400, B, n_step=2, sequence_length=30, burn_in=10, overlap=10, seed=0
    )
    replay.append(buf, final)
    sample = to_torch(replay.sample(16, np.random.default_rng(3)))
    obs, prev_action, prev_reward, reset = sequence_inputs(sample)
    assert reset.any()
    slot, env = np.divmod(sample.indices.numpy(), B)
    start = slot * replay.stride
    with torch.no_grad():
        state = sample.state
        for t in range(replay.window):
            state = torch.where(reset[t].unsqueeze(-1), torch.zeros_like(state), state)
            expected = buf.agent.agent_info.rnn_state[start + t, env]
            torch.testing.assert_close(state, torch.as_tensor(expected), rtol=1e-5, atol=1e-6)
            _, state = agent.model.step(obs[t], prev_action[t], prev_reward[t], state)
        # and the fused unroll of the learner agrees with those steps
        q, _ = agent.model.unroll(obs, prev_action, prev_reward, sample.state, reset)
        assert q.shape == (replay.window, 16, 2)


def test_prioritized_sequences_enter_at_the_max_and_leave_when_overwritten():
    agent = _agent()
    buf, final = _collect(agent, 120, 2)
    replay = PrioritizedSequenceReplay(
        buf[0, 0], 2 * 48, 2, n_step=2, sequence_length=8, burn_in=4, overlap=4, seed=0
    )
    assert replay.rows == 48 and replay.slots == 12
    replay.append(buf[:30], [(t, b, o) for t, b, o in final if t < 30])
    # window 14: starts 0, 4, 8, 12, 16 complete (16 + 14 = 30)
    assert len(replay) == 5 * 2
    live = replay.tree.priorities[: replay.slots * 2].reshape(12, 2)
    assert (live[:5] == 1.0).all() and (live[5:] == 0).all()
    s = replay.sample(32, np.random.default_rng(0))
    replay.update_priorities(s.indices[:1], np.array([3.0]))
    assert replay.max_priority == pytest.approx((3.0 + 1e-6) ** 0.9)
    # weights: (N P(i))^-beta normalised by the minibatch's largest
    s = replay.sample(64, np.random.default_rng(1))
    p = replay.tree.get(s.indices) / replay.tree.total
    w = (len(replay) * p) ** -replay.beta
    np.testing.assert_allclose(s.weights, w / w.max(), rtol=1e-6)
    # wrap the ring: 120 steps in 48 rows; old starts leave, the new ones enter at the max
    for t0 in (30, 60, 90):
        replay.append(buf[t0 : t0 + 30], [(t - t0, b, o) for t, b, o in final if t0 <= t < t0 + 30])
    first, end = replay.start_range()
    assert (first, end) == (72, 108)  # 120 - 48 rows; the latest complete start is 104
    live_slots = {(s % 48) // 4 for s in range(first, end, 4)}
    prio = replay.tree.priorities[:24].reshape(12, 2)
    for slot in range(12):
        assert (prio[slot] > 0).all() == (slot in live_slots), slot
    assert np.isin(replay.sample(64).indices // 2, list(live_slots)).all()


def test_n_step_targets_by_hand():
    """L=3 trained steps, n=2, gamma 0.5, no rescaling; env 0 terminates at step 1, env 1 is cut
    by a time limit at step 2 (its steps 1 and 2 end their window there: masked)."""
    cfg = R2D1Config(sequence_length=3, n_step=2, gamma=0.5, value_rescaling=False, double=False)
    learner = R2D1.__new__(R2D1)
    learner.config = cfg
    L, n, N = 3, 2, 2
    reward = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0]])
    terminated = torch.zeros(L + n, N, dtype=torch.bool)
    truncated = torch.zeros(L + n, N, dtype=torch.bool)
    terminated[1, 0] = True
    truncated[2, 1] = True
    target_q = torch.arange(5 * 2 * 2, dtype=torch.float32).reshape(5, 2, 2)  # [L+n, N, A]
    next_v = target_q.max(-1).values
    y, valid = learner._targets(target_q, target_q, reward, terminated, terminated | truncated)
    # env 0: t=0: 1 + 0.5*2 (ends at 1: no bootstrap); t=1: 2 (terminal step); t=2: new
    # episode: 3 + 0.5*4 + 0.25*V(t=4)
    assert y[:, 0].tolist() == pytest.approx([2.0, 2.0, 3 + 2 + 0.25 * next_v[4, 0].item()])
    # env 1: t=0: 10 + 0.5*20 + 0.25*V(2); t=1, t=2: their windows end at the time limit
    assert y[0, 1].item() == pytest.approx(20 + 0.25 * next_v[2, 1].item())
    assert valid.tolist() == [[True, True], [True, False], [True, False]]


def test_remote_sources_get_sequence_rings_of_their_own():
    """Asynchronous runs with remote workers: each source's steps go to a sibling ring of the
    same kind, a minibatch mixes the sources, and priority updates find their ring."""
    from asyncrl.replay.sources import SOURCE_SHIFT, SourcedReplay

    agent = _agent()
    buf, final = _collect(agent, 60, 2)
    remote, remote_final = _collect(agent, 60, 3, seed=5)
    primary = PrioritizedSequenceReplay(
        buf[0, 0], 400, 2, n_step=2, sequence_length=8, burn_in=4, overlap=4, seed=0
    )
    replay = SourcedReplay(primary)
    replay.append(buf, final)
    replay.append(remote, remote_final, source="remote-1")
    assert len(replay) == len(primary) * 5 // 2  # 3 envs beside 2, same history
    s = replay.sample(64, np.random.default_rng(0))
    assert s.observation.shape == (64, primary.window, 2)
    sources = s.indices >> SOURCE_SHIFT
    assert set(sources.tolist()) == {0, 1}
    replay.update_priorities(s.indices, np.full(64, 5.0))
    assert replay.sources["remote-1"].max_priority == pytest.approx((5.0 + 1e-6) ** 0.9)
