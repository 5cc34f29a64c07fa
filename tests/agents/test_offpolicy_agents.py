"""DQN and Q-value policy-gradient agents: every env explores with its own random stream.

Env b's draws (epsilon coin flips and random actions, noisy-net noise, the uniform random actions
before learning starts, SAC's policy sample, TD3's Gaussian and DDPG's OU noise) depend only on
the seed, b and how many draws env b made before: never on the process (two agent copies with
the same seed, as two workers have, draw differently for different envs) nor on which envs share
the batch (the serial sampler steps all envs at once, a worker only its own). The streams
survive a checkpoint (``rng_state``), and ``act`` (evaluation) leaves them alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from asyncrl.agents.dqn import DqnAgent
from asyncrl.agents.qpg import QpgAgent
from asyncrl.models.noisy import NoisyLinear
from asyncrl.models.q import QModelConfig

OBS = spaces.Box(-np.inf, np.inf, (3,), np.float32)
DISCRETE = spaces.Discrete(4)
BOX = spaces.Box(-2.0, 2.0, (2,), np.float32)
N_ENVS, STEPS = 4, 12


def dqn(noisy: bool = False, epsilon: float = 1.0, seed: int = 5) -> DqnAgent:
    torch.manual_seed(0)  # the same weights for every copy
    cfg = QModelConfig(hidden_sizes=[16], noisy=noisy, dueling=noisy, head_hidden=8 * noisy)
    agent = DqnAgent(OBS, DISCRETE, cfg, seed=seed)
    agent.epsilon = epsilon
    return agent


def qpg(variant: str, seed: int = 5) -> QpgAgent:
    torch.manual_seed(0)
    if variant in ("random", "sac"):
        agent = QpgAgent(OBS, BOX, [16], "gaussian", seed=seed)
    else:  # td3 (Gaussian noise) or ddpg (OU noise)
        noise = "gaussian" if variant == "td3" else "ou"
        agent = QpgAgent(OBS, BOX, [16], "deterministic", noise=noise, noise_sigma=0.3, seed=seed)
    agent.random_actions = variant == "random"
    return agent


AGENTS = {
    "dqn-epsilon-1": lambda: dqn(epsilon=1.0),
    "dqn-epsilon-0.5": lambda: dqn(epsilon=0.5),
    "rainbow-noisy": lambda: dqn(noisy=True, epsilon=0.0),
    "qpg-random-phase": lambda: qpg("random"),
    "sac": lambda: qpg("sac"),
    "td3": lambda: qpg("td3"),
    "ddpg-ou": lambda: qpg("ddpg"),
}


def _obs(t: int) -> np.ndarray:
    return np.random.default_rng(t).standard_normal((N_ENVS, 3)).astype(np.float32)


def _run(agent, groups, steps: int = STEPS) -> np.ndarray:
    """[steps, N_ENVS, ...] actions, stepping the env ids of each group as one batch."""
    out = []
    for t in range(steps):
        obs = _obs(t)
        out.append(np.concatenate([agent.step(obs[g], np.array(g))[0] for g in groups]))
    return np.stack(out)


def _assert_same(a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype.kind == "f":
        # the networks see batches of another size: BLAS may round the last bits differently
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(AGENTS))
def test_an_envs_draws_do_not_depend_on_its_batch_or_process(name):
    together = _run(AGENTS[name](), [[0, 1, 2, 3]])
    # two copies with the same seed, as two workers have, each with two of the envs
    worker0, worker1 = AGENTS[name](), AGENTS[name]()
    split = np.concatenate([_run(worker0, [[0, 1]]), _run(worker1, [[2, 3]])], axis=1)
    _assert_same(split, together)
    # one at a time, in another order
    _assert_same(_run(AGENTS[name](), [[3], [1], [2], [0]])[:, [3, 1, 2, 0]], together)


@pytest.mark.parametrize("name", list(AGENTS))
def test_envs_and_workers_never_share_draws(name):
    """Same observations for all envs: only the exploration draws tell the envs apart."""
    obs = np.zeros((2, 3), np.float32)
    worker0, worker1 = AGENTS[name](), AGENTS[name]()
    a0 = np.stack([worker0.step(obs, np.array([0, 1]))[0] for _ in range(STEPS)])
    a1 = np.stack([worker1.step(obs, np.array([2, 3]))[0] for _ in range(STEPS)])
    assert not np.array_equal(a0, a1)  # worker 0's envs vs worker 1's
    assert not np.array_equal(a0[:, 0], a0[:, 1])  # env 0 vs env 1
    assert not np.array_equal(a1[:, 0], a1[:, 1])
    # another seed, other draws
    other = AGENTS[name]()
    other.noise.seed = 6
    other.noise.streams.clear()
    b0 = np.stack([other.step(obs, np.array([0, 1]))[0] for _ in range(STEPS)])
    assert not np.array_equal(a0, b0)


@pytest.mark.parametrize("name", list(AGENTS))
def test_rng_state_round_trip_continues_the_per_env_streams(name):
    agent = AGENTS[name]()
    _run(agent, [[0, 1, 2, 3]], steps=5)
    # through torch.save, as a checkpoint does
    import io

    buf = io.BytesIO()
    torch.save(agent.rng_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    assert sorted(int(k) for k in state) == [0, 1, 2, 3]
    expected = _run(agent, [[0, 1, 2, 3]])
    resumed = AGENTS[name]()
    resumed.load_rng_state(state)
    if getattr(agent, "_ou", None) is not None:
        # OU processes are not snapshotted: a resumed run restarts its episodes, and its
        # processes with them. Start both from zero to compare the streams.
        resumed._ou = None
        agent._ou.x[:] = 0
        agent.load_rng_state(state)
        expected = _run(agent, [[0, 1, 2, 3]])
    _assert_same(_run(resumed, [[0, 1, 2, 3]]), expected)
    # without the state, a fresh agent starts the streams over: different actions
    assert not np.array_equal(_run(AGENTS[name](), [[0, 1, 2, 3]]), expected)


@pytest.mark.parametrize("name", list(AGENTS))
def test_act_leaves_the_env_streams_alone(name):
    """Evaluation (``act``) between sampling steps does not change what the envs draw, so a
    serial run that evaluates in its own process explores as a parallel run does."""
    plain = _run(AGENTS[name](), [[0, 1, 2, 3]])
    agent = AGENTS[name]()
    out = []
    for t in range(STEPS):
        agent.act(_obs(t), deterministic=True)
        agent.act(_obs(t), deterministic=False)
        out.append(agent.step(_obs(t), np.arange(N_ENVS))[0])
    _assert_same(np.stack(out), plain)


def test_epsilon_greedy_explores_at_the_set_rate_with_uniform_random_actions():
    agent = dqn(epsilon=0.5)
    with torch.no_grad():  # greedy action 2 in every state
        agent.model.advantage.weight.zero_()
        agent.model.advantage.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    obs = np.zeros((1000, 3), np.float32)
    actions = np.concatenate([agent.step(obs, np.arange(1000))[0] for _ in range(10)])
    freq = np.bincount(actions, minlength=4) / len(actions)
    # 1/2 greedy (action 2) + 1/2 uniform over 4 actions
    np.testing.assert_allclose(freq, [0.125, 0.125, 0.625, 0.125], atol=0.015)
    agent.epsilon = 0.0
    assert (agent.step(obs, np.arange(1000))[0] == 2).all()


def test_noisy_layers_act_with_each_envs_own_noise():
    """Row b of the per-env noisy forward is the layer's forward with env b's noise."""
    agent = dqn(noisy=True, epsilon=0.0)
    layers = agent._noisy_layers
    assert len(layers) == 4 and agent._noise_size == sum(
        m.in_features + m.out_features for m in layers
    )
    obs = _obs(0)
    obs_t = torch.from_numpy(obs)
    ids = np.array([3, 5, 7, 9])
    with torch.no_grad(), agent._per_env_noise(ids):
        q_per_env = agent.q_values(obs_t)
    # the same draws from a copy: env b's noise, put into the layers' buffers one env at a time
    z = dqn(noisy=True, epsilon=0.0).noise.draw(ids, (agent._noise_size,), "normal")
    f = np.sign(z) * np.sqrt(np.abs(z))
    for b in range(len(ids)):
        start = 0
        for m in layers:
            assert isinstance(m, NoisyLinear)
            m.eps_in.copy_(torch.from_numpy(f[b, start : start + m.in_features]))
            start += m.in_features
            m.eps_out.copy_(torch.from_numpy(f[b, start : start + m.out_features]))
            start += m.out_features
        with torch.no_grad():
            q_b = agent.q_values(obs_t[b : b + 1])
        torch.testing.assert_close(q_per_env[b : b + 1], q_b, rtol=1e-5, atol=1e-6)
    # the layers' own forward is back in place after acting
    assert all("forward" not in m.__dict__ for m in layers)
    # and the noise matters: the envs' Q-values differ for the same observation
    with torch.no_grad(), agent._per_env_noise(ids):
        q_same_obs = agent.q_values(obs_t[:1].expand(4, 3))
    assert not torch.allclose(q_same_obs[0], q_same_obs[1])


def test_sac_samples_follow_the_policy_distribution():
    agent = qpg("sac")
    with torch.no_grad():  # mean 0.3 / -0.5, std exp(-1) / exp(-2), whatever the observation
        for head, bias in ((agent.model.mean, [0.3, -0.5]), (agent.model.log_std, [-1.0, -2.0])):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(bias))
    obs = np.zeros((500, 3), np.float32)
    a = np.concatenate([agent.step(obs, np.arange(500))[0] for _ in range(20)])
    u = np.arctanh(np.clip(agent.from_env(a), -1 + 1e-6, 1 - 1e-6))
    np.testing.assert_allclose(u.mean(0), [0.3, -0.5], atol=0.01)
    np.testing.assert_allclose(u.std(0), np.exp([-1.0, -2.0]), rtol=0.03)


def test_ou_process_is_per_env_and_resets_by_global_env_id():
    agent = qpg("ddpg")
    obs = np.zeros((2, 3), np.float32)
    for _ in range(10):
        agent.step(obs, np.array([4, 5]))  # a worker's envs 4 and 5
        agent.step(obs[:1], np.array([2]))  # another group's env 2
    x = agent._ou.x.copy()
    assert x.shape == (6, 2) and x[[2, 4, 5]].all() and not x[[0, 1, 3]].any()
    agent.on_episode_end(np.array([False, True]), np.array([4, 5]))  # env 5's episode ended
    np.testing.assert_array_equal(agent._ou.x[5], 0)
    np.testing.assert_array_equal(agent._ou.x[[2, 4]], x[[2, 4]])
    # the learner's form (a mask over all envs, in env order) still works
    agent.on_episode_end(np.array([False, False, True, False, False, False]))
    np.testing.assert_array_equal(agent._ou.x[2], 0)
    assert agent._ou.x[4].all()


def test_sampling_restarts_an_envs_ou_process_when_its_episode_ends():
    """The step loop (serial sampler, parallel workers) tells the agent which envs' episodes
    ended at every step, so env b's OU process restarts from 0 with each episode, mid-batch too.
    Replayed by hand from env b's stream: episodes of 5 steps, batches of 8."""
    from asyncrl.agents.base import ENV_STREAMS_KEY
    from asyncrl.envs import EnvSpec
    from asyncrl.samplers import SerialSampler

    sampler = SerialSampler(EnvSpec(id="Pendulum-v1", max_episode_steps=5), 2, 8, seed=0)
    torch.manual_seed(0)
    agent = QpgAgent(
        sampler.obs_space, sampler.action_space, [8], "deterministic", noise="ou", noise_sigma=0.5
    )
    agent.random_actions = False
    with sampler:
        sampler.initialize(agent)
        done = np.concatenate([_done(sampler.obtain()) for _ in range(2)])  # [16, 2]
    assert done[[4, 9, 14]].all() and done.sum() == 6  # two mid-batch ends among them
    ou = agent._ou
    for b in range(2):
        stream = np.random.default_rng([agent.noise.seed, b, *ENV_STREAMS_KEY])
        x = np.zeros(1, np.float32)
        for t in range(16):
            x += ou.theta * -x * ou.dt + ou.sigma * np.sqrt(ou.dt) * stream.standard_normal(
                1, np.float32
            )
            if done[t, b]:
                x[:] = 0
        np.testing.assert_allclose(ou.x[b], x, rtol=1e-6)  # 1 step since the last episode end
        assert x.any()


def _done(batch) -> np.ndarray:
    return batch.samples.env.terminated | batch.samples.env.truncated
