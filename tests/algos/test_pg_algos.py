"""A2C and PPO updates on a hand-made batch: the loss is the documented one, and the knobs
(learning-rate annealing, early stopping on KL) do what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from asyncrl.agents.pg import PgAgent
from asyncrl.algos import A2C, PPO, A2CConfig, PPOConfig
from asyncrl.algos.returns import gae
from asyncrl.data import buffer_from_example
from asyncrl.models import ModelConfig
from asyncrl.samplers import EnvInfo, SampleBatch, samples_example

T, B = 6, 3


def _agent(seed=0):
    torch.manual_seed(seed)
    return PgAgent(
        spaces.Box(-1, 1, (4,), np.float32), spaces.Discrete(2), ModelConfig(hidden_sizes=[16])
    )


def _batch(agent, seed=0):
    rng = np.random.default_rng(seed)
    example = samples_example(np.zeros(4, np.float32), np.zeros((), np.int64), agent.info_example())
    buf = buffer_from_example(example, (T, B))
    obs = rng.uniform(-1, 1, (T, B, 4)).astype(np.float32)
    buf.env.observation[:] = obs
    for t in range(T):
        action, info = agent.step(obs[t])
        buf.agent.action[t] = action
        buf.agent.agent_info[t] = info
    buf.env.reward[:] = rng.normal(size=(T, B))
    buf.env.terminated[2, 0] = True
    buf.env.truncated[4, 1] = True
    buf.env.env_info[:] = EnvInfo(np.zeros((T, B), np.float32))
    buf.env.env_info.timeout_value[4, 1] = 0.7
    bootstrap = agent.value(rng.uniform(-1, 1, (B, 4)).astype(np.float32))
    return SampleBatch(
        samples=buf, bootstrap_value=bootstrap, next_observation=None, env_steps=T * B
    )


def test_a2c_loss_is_the_policy_gradient_with_gae_advantages():
    agent = _agent()
    batch = _batch(agent)
    cfg = A2CConfig(gae_lambda=0.9, entropy_coef=0.01, max_grad_norm=0.0)
    algo = A2C(agent, cfg)
    s = batch.samples
    adv, ret = gae(
        s.env.reward,
        s.agent.agent_info.value,
        s.env.terminated,
        s.env.truncated,
        s.env.env_info.timeout_value,
        batch.bootstrap_value,
        cfg.gamma,
        cfg.gae_lambda,
    )
    with torch.no_grad():
        dist, value = agent.model(torch.from_numpy(s.env.observation.reshape(T * B, 4)))
        logp = dist.log_prob(torch.from_numpy(s.agent.action.reshape(-1)))
        expected_pg = -(torch.from_numpy(adv.reshape(-1)) * logp).mean().item()
        expected_v = 0.5 * (value - torch.from_numpy(ret.reshape(-1))).pow(2).mean().item()
        expected_entropy = dist.entropy().mean().item()
    before = [p.detach().clone() for p in agent.model.parameters()]
    info = algo.optimize(batch, progress=0.0)
    assert info["policy_loss"] == pytest.approx(expected_pg, rel=1e-5, abs=1e-6)
    assert info["value_loss"] == pytest.approx(expected_v, rel=1e-5, abs=1e-6)
    assert info["entropy"] == pytest.approx(expected_entropy, rel=1e-5)
    assert algo.updates == 1 and agent.policy_version == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, agent.model.parameters()))


def test_a2c_lr_annealing_and_optimizer_choice():
    agent = _agent()
    algo = A2C(agent, A2CConfig(learning_rate=1e-3, anneal_lr=True, optimizer="adam"))
    assert isinstance(algo.optimizer, torch.optim.Adam)
    info = algo.optimize(_batch(agent), progress=0.75)
    assert info["learning_rate"] == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="a2c.optimizer must be"):
        A2C(agent, A2CConfig(optimizer="sgd"))


def test_a2c_state_dict_round_trip():
    agent = _agent()
    algo = A2C(agent, A2CConfig())
    algo.optimize(_batch(agent), 0.0)
    other = A2C(_agent(1), A2CConfig())
    other.load_state_dict(algo.state_dict())
    assert other.updates == 1


def test_ppo_first_minibatch_is_on_policy_and_target_kl_stops_early():
    agent = _agent()
    batch = _batch(agent)
    cfg = PPOConfig(epochs=4, minibatches=2, target_kl=1e-9, learning_rate=1e-2)
    algo = PPO(agent, cfg, seed=0)
    algo.optimize(batch, progress=0.0)
    # the first minibatch sees ratio 1 (KL 0); after one step the tiny KL target stops the update
    assert algo.updates == 2


def test_ppo_runs_all_epochs_without_target_kl():
    agent = _agent()
    algo = PPO(agent, PPOConfig(epochs=3, minibatches=2), seed=0)
    info = algo.optimize(_batch(agent), progress=0.5)
    assert algo.updates == 6
    assert info["learning_rate"] == pytest.approx(1.5e-4)
    assert np.isfinite(
        [info[k] for k in ("policy_loss", "value_loss", "entropy", "approx_kl")]
    ).all()
