"""Recurrent cores and the recurrent actor-critic: an unroll over a sequence with resets equals
stepping one step at a time with the same resets; sequence chunks; padded steps contribute
nothing to any loss term."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from asyncrl.algos.clipped import clipped_step, new_stats
from asyncrl.algos.sequences import make_chunks
from asyncrl.models.policies import ModelConfig
from asyncrl.models.recurrent import RecurrentActorCritic, RecurrentCore


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_an_unroll_with_resets_equals_stepping_with_the_same_resets(kind):
    torch.manual_seed(0)
    core = RecurrentCore(kind, 5, 7)
    L, N = 9, 4
    x = torch.randn(L, N, 5)
    state0 = torch.randn(N, core.state_size)
    reset = torch.zeros(L, N, dtype=torch.bool)
    reset[3, 0] = reset[3, 2] = reset[6, 1] = reset[1, 3] = reset[7, 3] = True
    out, final = core.unroll(x, state0, reset)
    state, outs = state0, []
    for t in range(L):
        state = torch.where(reset[t].unsqueeze(-1), torch.zeros_like(state), state)
        o, state = core.step(x[t], state)
        outs.append(o)
    # the fused unroll sums in another order than single steps: float tolerance
    torch.testing.assert_close(out, torch.stack(outs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, state, rtol=1e-5, atol=1e-6)
    # a reset really cuts the history: after it, env 0 matches a fresh start at step 3
    fresh, _ = core.unroll(x[3:, :1], torch.zeros(1, core.state_size))
    torch.testing.assert_close(out[3:, :1], fresh, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(
        out[4:, 1:2], core.unroll(x[4:, 1:2], torch.zeros(1, core.state_size))[0]
    )


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,))])
def test_the_actor_critic_unroll_equals_its_steps_with_previous_action_and_reward(space):
    torch.manual_seed(1)
    obs_space = gym.spaces.Box(-1, 1, (4,))
    cfg = ModelConfig(core="lstm", core_size=8, core_prev_action=True, core_prev_reward=True)
    model = RecurrentActorCritic(obs_space, space, cfg)
    L, N = 6, 3
    obs = torch.randn(L, N, 4)
    if isinstance(space, gym.spaces.Discrete):
        prev_action = torch.randint(0, 3, (L, N))
    else:
        prev_action = torch.randn(L, N, 2)
    prev_reward = torch.randn(L, N)
    reset = torch.zeros(L, N, dtype=torch.bool)
    reset[2, 1] = True
    state0 = torch.randn(N, model.state_size)
    dist, value, final = model.unroll(obs, prev_action, prev_reward, state0, reset)
    state, values, logits = state0, [], []
    for t in range(L):
        state = state * (~reset[t]).float().unsqueeze(-1)
        d, v, state = model.step(obs[t], prev_action[t], prev_reward[t], state)
        values.append(v)
        logits.append(d.mode())
    torch.testing.assert_close(value, torch.cat(values), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dist.mode(), torch.cat(logits), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final, state, rtol=1e-6, atol=1e-6)
    # the extra inputs matter: another previous reward gives other values
    _, other, _ = model.unroll(obs, prev_action, prev_reward + 1, state0, reset)
    assert not torch.allclose(other, value)


def test_chunks_cut_each_column_pad_the_last_and_reset_after_episode_ends():
    T, B = 5, 2
    done = np.zeros((T, B), bool)
    done[1, 0] = True  # env 0's episode ends at t=1: the next starts at t=2
    done[2, 1] = True  # env 1's ends at t=2: t=3 starts the next (the first step of chunk 2)
    c = make_chunks(done, 3, "cpu")
    assert c.count == 4 and c.length == 3  # 2 chunks per env: t 0..2 and t 3..4 (+1 pad)
    assert c.env.tolist() == [0, 0, 1, 1]
    assert c.time.T.tolist() == [[0, 1, 2], [3, 4, 4], [0, 1, 2], [3, 4, 4]]
    assert c.valid.T.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]]
    # resets inside a chunk only: a chunk's first step starts from its stored state
    assert c.reset.T.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    whole = make_chunks(done, 0, "cpu")
    assert whole.count == 2 and whole.length == 5 and bool(whole.valid.all())
    assert whole.reset.T.tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]


def test_padded_steps_contribute_nothing_to_any_loss_term():
    """clipped_step with a mask: whatever the padded steps hold, the update (and every
    statistic) is the one on the real steps alone."""
    torch.manual_seed(2)
    obs_space, action_space = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    model = RecurrentActorCritic(obs_space, action_space, ModelConfig(core="gru", core_size=6))
    N, real = 10, 7
    obs = torch.randn(1, N, 3)
    action = torch.randint(0, 2, (N,))
    mask = torch.zeros(N)
    mask[:real] = 1.0
    cfg = SimpleNamespace(
        normalize_advantage=True, clip_value=True, value_clip_range=0.2, value_coef=0.5,
        entropy_coef=0.01, max_grad_norm=0.0, target_kl=0.0,
    )  # fmt: skip

    def update(m, garbage: float, masked: bool):
        m = copy.deepcopy(m)
        algo = SimpleNamespace(
            optimizer=torch.optim.SGD(m.parameters(), lr=0.1), params=list(m.parameters()),
            updates=0,
        )  # fmt: skip
        g = torch.Generator().manual_seed(3)
        vals = [torch.randn(N, generator=g) for _ in range(4)]  # logp, adv, ret, anchor
        for v in vals:
            v[real:] = garbage
        n = N if masked else real
        dist, value, _ = m.unroll(
            obs[:, :n], torch.zeros(1, n), torch.zeros(1, n), torch.zeros(n, m.state_size)
        )
        stats = new_stats()
        clipped_step(
            algo, cfg, 0.2, dist, value, action[:n], *(v[:n] for v in vals), stats,
            mask=mask[:n] if masked else None,
        )  # fmt: skip
        return m, {k: float(v[0]) for k, v in stats.items()}

    a, sa = update(model, 1e3, True)
    b, sb = update(model, -7.0, True)
    c, sc = update(model, 0.0, False)  # the real steps only, no mask
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        torch.testing.assert_close(pa, pc, rtol=1e-5, atol=1e-6)
    for k in sa:
        assert sa[k] == pytest.approx(sb[k]) and sa[k] == pytest.approx(sc[k], rel=1e-5, abs=1e-6)
