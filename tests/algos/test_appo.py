"""APPO updates on hand-made batches: on-policy the loss is PPO's with n-step (TD(lambda))
targets, off-policy the targets are V-trace's from the current model and the batch's behaviour
log-probabilities, and columns lagging too far behind reach nothing and are counted."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces

from asyncrl.agents.pg import PgAgent
from asyncrl.algos import ALGOS, APPO, APPOConfig
from asyncrl.algos.pg_batch import lag_mask
from asyncrl.algos.returns import gae, vtrace
from asyncrl.configs.config import ConfigError, resolve_config
from asyncrl.data import buffer_from_example, tree_map
from asyncrl.models import ModelConfig
from asyncrl.samplers import EnvInfo, SampleBatch, samples_example

T, B = 6, 4


def _agent(seed=0, normalize_obs=False):
    torch.manual_seed(seed)
    return PgAgent(
        spaces.Box(-1, 1, (4,), np.float32),
        spaces.Discrete(3),
        ModelConfig(hidden_sizes=[16], normalize_obs=normalize_obs),
    )


def _batch(behaviour, seed=0, num_envs=B, policy_lag=None):
    """A [T, num_envs] batch acted by ``behaviour``: one termination, one truncation."""
    rng = np.random.default_rng(seed)
    example = samples_example(
        np.zeros(4, np.float32), np.zeros((), np.int64), behaviour.info_example()
    )
    buf = buffer_from_example(example, (T, num_envs))
    obs = rng.uniform(-1, 1, (T, num_envs, 4)).astype(np.float32)
    buf.env.observation[:] = obs
    for t in range(T):
        action, info = behaviour.step(obs[t])
        buf.agent.action[t] = action
        buf.agent.agent_info[t] = info
    buf.env.reward[:] = rng.normal(size=(T, num_envs))
    buf.env.terminated[2, 0] = True
    buf.env.truncated[4, 1 % num_envs] = True
    buf.env.env_info[:] = EnvInfo(np.zeros((T, num_envs), np.float32))
    buf.env.env_info.timeout_value[4, 1 % num_envs] = 0.7
    bootstrap = behaviour.value(rng.uniform(-1, 1, (num_envs, 4)).astype(np.float32))
    return SampleBatch(
        samples=buf,
        bootstrap_value=bootstrap,
        next_observation=None,
        env_steps=T * num_envs,
        policy_lag=policy_lag,
    )


def _columns(batch, cols, policy_lag=None):
    """The batch with only columns ``cols`` (a copy)."""
    return SampleBatch(
        samples=tree_map(lambda x: np.ascontiguousarray(x[:, cols]), batch.samples),
        bootstrap_value=batch.bootstrap_value[cols].copy(),
        next_observation=None,
        env_steps=T * len(cols),
        policy_lag=policy_lag,
    )


def _inputs(batch, gamma):
    s = batch.samples
    tv = torch.from_numpy
    return dict(
        discount=tv((gamma * ~s.env.terminated).astype(np.float32)),
        reward=tv(s.env.reward),
        bootstrap_value=tv(batch.bootstrap_value),
        truncated=tv(s.env.truncated),
        timeout_value=tv(s.env.env_info.timeout_value),
    )


def _model_outputs(agent, batch):
    s = batch.samples
    with torch.no_grad():
        dist, value = agent.model(torch.from_numpy(s.env.observation.reshape(-1, 4)))
        logp = dist.log_prob(torch.from_numpy(s.agent.action.reshape(-1)))
    return dist, value, logp


def test_on_policy_update_is_ppo_with_td_lambda_targets():
    # pi = mu on a synchronous batch: ratio 1, V-trace with c_bar = lambda is GAE(lambda), so the
    # first (only) minibatch's losses are those of A2C/PPO with GAE targets
    agent = _agent()
    batch = _batch(agent)
    cfg = APPOConfig(
        epochs=1, minibatches=1, c_bar=0.9, normalize_advantage=False, entropy_coef=0.01
    )
    algo = APPO(agent, cfg)
    s = batch.samples
    info_arrays = s.agent.agent_info
    _, ret = gae(
        s.env.reward,
        info_arrays.value,
        s.env.terminated,
        s.env.truncated,
        s.env.env_info.timeout_value,
        batch.bootstrap_value,
        cfg.gamma,
        0.9,
    )
    dist, value, _ = _model_outputs(agent, batch)
    np.testing.assert_allclose(value.numpy(), info_arrays.value.reshape(-1), atol=1e-6)
    # pg advantages: r + gamma v_{s+1} - V with the V-trace targets v (timeout value at a cut)
    vs = ret
    next_vs = np.concatenate([vs[1:], batch.bootstrap_value[None]])
    next_vs = np.where(s.env.truncated, s.env.env_info.timeout_value, next_vs)
    adv = s.env.reward + cfg.gamma * ~s.env.terminated * next_vs - info_arrays.value
    expected_pg = -adv.mean()
    expected_v = 0.5 * np.mean((value.numpy() - vs.reshape(-1)) ** 2)
    info = algo.optimize(batch, progress=0.0)
    assert info["policy_loss"] == pytest.approx(expected_pg, rel=1e-5, abs=1e-6)
    assert info["value_loss"] == pytest.approx(expected_v, rel=1e-5, abs=1e-6)
    assert info["entropy"] == pytest.approx(dist.entropy().mean().item(), rel=1e-5)
    assert info["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert info["policy_lag_max"] == 0 and info["lag_dropped_samples"] == 0
    assert algo.updates == 1 and agent.policy_version == 1


def test_stale_batch_targets_use_the_current_model_and_the_behaviour_log_probs():
    behaviour, agent = _agent(seed=1), _agent(seed=2)  # an older, different policy acted
    with torch.no_grad():  # far from the (near uniform) initial policy
        for p in behaviour.model.parameters():
            p.add_(torch.randn_like(p))
    batch = _batch(behaviour, policy_lag=np.full(B, 3, np.int64))
    cfg = APPOConfig(epochs=1, minibatches=1, rho_bar=1.0, c_bar=0.7, pg_rho_bar=0.9)
    _, value, target_logp = _model_outputs(agent, batch)
    behaviour_logp = torch.from_numpy(batch.samples.agent.agent_info.log_prob.reshape(-1))
    log_rho = (target_logp - behaviour_logp).view(T, B)
    assert (log_rho.exp() > 1).any() and (log_rho.exp() < 0.7).any()  # the clips bind
    vs, _ = vtrace(
        log_rho,
        value=value.view(T, B),
        rho_bar=1.0,
        c_bar=0.7,
        pg_rho_bar=0.9,
        **_inputs(batch, cfg.gamma),
    )
    # the behaviour's own value is not the target's V
    assert not np.allclose(value.numpy(), batch.samples.agent.agent_info.value.reshape(-1))
    info = APPO(agent, cfg).optimize(batch, progress=0.0)
    expected_v = 0.5 * (value - vs.reshape(-1)).pow(2).mean().item()
    assert info["value_loss"] == pytest.approx(expected_v, rel=1e-5, abs=1e-6)
    k3 = ((log_rho.exp() - 1) - log_rho).mean().item()  # KL to the behaviour, not to itself
    assert info["approx_kl"] == pytest.approx(k3, rel=1e-4, abs=1e-7) and k3 > 1e-3
    assert info["policy_lag_mean"] == 3 and info["lag_dropped_samples"] == 0


def test_lagging_columns_reach_nothing_and_are_counted():
    cfg = APPOConfig(epochs=2, minibatches=2, max_policy_lag=20, normalize_advantage=True)
    lag = np.array([0, 25, 3, 21], np.int64)  # columns 1 and 3 are too stale
    keep = [0, 2]

    def run(batch):
        agent = _agent(seed=3, normalize_obs=True)
        algo = APPO(agent, cfg, seed=5)
        info = algo.optimize(batch, progress=0.0)
        return agent, algo, info

    base = _batch(_agent(seed=3), seed=7, policy_lag=lag)
    garbage = copy.deepcopy(base)
    rng = np.random.default_rng(11)
    for b in (1, 3):  # other observations, actions, rewards, log-probs, values, flags
        s = garbage.samples
        s.env.observation[:, b] = rng.uniform(-50, 50, (T, 4))
        s.agent.action[:, b] = rng.integers(0, 3, T)
        s.env.reward[:, b] = rng.normal(0, 1e4, T)
        s.agent.agent_info.log_prob[:, b] = rng.normal(0, 30, T)
        s.agent.agent_info.value[:, b] = rng.normal(0, 1e3, T)
        s.env.terminated[:, b] = rng.random(T) < 0.5
        s.env.env_info.timeout_value[:, b] = 1e6
        garbage.bootstrap_value[b] = -1e6
    without = _columns(base, keep)  # the same batch without those columns, synchronous
    runs = [run(b) for b in (base, garbage, without)]
    params = [[p.detach() for p in agent.model.parameters()] for agent, _, _ in runs]
    for other in params[1:]:
        for a, p in zip(params[0], other):
            torch.testing.assert_close(a, p, rtol=1e-6, atol=1e-7)
    losses = [{k: info[k] for k in ("policy_loss", "value_loss", "entropy")} for *_, info in runs]
    assert losses[0] == losses[1]  # bit for bit: the garbage went nowhere
    assert losses[0] == pytest.approx(losses[2], rel=1e-6)
    # the observation normaliser saw the kept steps only
    counts = [agent.model.normalizer.count.item() for agent, _, _ in runs]
    assert counts[0] == pytest.approx(counts[2]) and counts[0] == pytest.approx(T * 2, abs=1e-3)
    info = runs[0][2]
    assert info["lag_dropped_samples"] == 2 * T
    assert (info["policy_lag_min"], info["policy_lag_max"]) == (0, 25)
    assert info["policy_lag_mean"] == pytest.approx(49 / 4)
    assert runs[2][2]["lag_dropped_samples"] == 0 and runs[2][2]["policy_lag_max"] == 0
    assert runs[0][1].updates == runs[2][1].updates == 4


def test_a_batch_with_every_column_too_stale_changes_nothing():
    agent = _agent()
    algo = APPO(agent, APPOConfig(max_policy_lag=2))
    before = [p.detach().clone() for p in agent.model.parameters()]
    info = algo.optimize(_batch(agent, policy_lag=np.full(B, 3, np.int64)), progress=0.0)
    assert info["lag_dropped_samples"] == T * B and info["policy_lag_min"] == 3
    assert algo.updates == 0 and agent.policy_version == 0
    assert all(torch.equal(a, p) for a, p in zip(before, agent.model.parameters()))


def test_lag_mask_checks_its_input():
    assert lag_mask(None, 3, 0).tolist() == [True, True, True]
    assert lag_mask(np.array([0, 5, 6]), 3, 5).tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        lag_mask(np.zeros(2, np.int64), 3, 5)
    with pytest.raises(ValueError, match="integer"):
        lag_mask(np.zeros(3), 3, 5)
    with pytest.raises(ValueError, match=">= 0"):
        lag_mask(np.array([0, -1, 0]), 3, 5)


def test_all_epochs_run_and_the_state_round_trips():
    agent = _agent()
    algo = APPO(agent, APPOConfig(epochs=3, minibatches=2), seed=0)
    info = algo.optimize(_batch(agent), progress=0.5)
    assert algo.updates == 6
    assert info["learning_rate"] == pytest.approx(1.5e-4)
    assert np.isfinite([info[k] for k in ("policy_loss", "value_loss", "entropy")]).all()
    other = APPO(_agent(1), APPOConfig(epochs=3, minibatches=2), seed=1)
    other.load_state_dict(algo.state_dict())
    assert other.updates == 6
    assert torch.equal(other.generator.get_state(), algo.generator.get_state())


def test_registered_and_bad_values_are_named():
    entry = ALGOS["appo"]
    assert entry.kind == "onpolicy" and entry.config_cls is APPOConfig and entry.make_algo is APPO
    with pytest.raises(ValueError, match="c_bar must be > 0"):
        APPO(_agent(), APPOConfig(c_bar=0.0))
    with pytest.raises(ConfigError, match="appo: max_policy_lag must be >= 0"):
        resolve_config("appo", "CartPole-v1", sets=["appo.max_policy_lag=-1"])
    cfg = resolve_config("appo", "CartPole-v1")
    assert cfg.preset == "appo_classic" and cfg.algo_params.c_bar == 0.8
