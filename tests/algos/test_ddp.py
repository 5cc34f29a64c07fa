"""Data-parallel learners (algos/ddp.py, runners/learners.py): two gloo learners, each on half
of every minibatch, take the update one learner takes on all of it. Real processes: learner 0 is
this test process, learner 1 a ``python -m workers.peer`` started by ``Learners``."""

from __future__ import annotations

import copy

import pytest
import torch

from asyncrl import resolve_config
from asyncrl.algos import ALGOS, ddp
from asyncrl.runners.learners import LearnerExited, Learners
from asyncrl.samplers.serial import SerialSampler

# (algo, env, settings): small and quick, with more than one gradient step per batch, so that
# later steps depend on the earlier ones being equal; minibatches split evenly over 2 learners.
CASES = {
    "ppo": (
        "ppo",
        "CartPole-v1",
        [
            "sampler.num_envs=4",
            "sampler.horizon=32",
            "ppo.epochs=2",
            "ppo.minibatches=4",
            "ppo.target_kl=0.5",  # the early stop is decided on the whole minibatch's KL
            "ppo.clip_value=true",
        ],
    ),
    "ppo_lstm": (
        "ppo_lstm",
        "CartPole-v1",
        [
            "sampler.num_envs=6",
            "sampler.horizon=32",
            "ppo_lstm.epochs=2",
            "ppo_lstm.minibatches=2",
            "ppo_lstm.sequence_length=8",  # 24 chunks; episodes end inside: shares of unequal step counts
            'model.core="lstm"',
            "model.core_size=16",
        ],
    ),
    "dqn": (
        "dqn",
        "CartPole-v1",
        [
            "sampler.num_envs=4",
            "sampler.horizon=32",
            "dqn.learning_starts=64",
            "dqn.batch_size=32",
            "dqn.replay_ratio=0.1",  # 12 updates per batch of 128 steps
            "dqn.prioritized=true",  # priorities of both halves reach both replicas
            "dqn.double=true",
            "dqn.n_step=3",
        ],
    ),
    "r2d1": (
        "r2d1",
        "CartPole-v1",
        [
            "sampler.num_envs=4",
            "sampler.horizon=40",
            "r2d1.learning_starts=80",
            "r2d1.batch_size=8",
            "r2d1.sequence_length=8",
            "r2d1.burn_in=4",
            "r2d1.overlap=4",
            "r2d1.n_step=2",
            "r2d1.replay_ratio=0.5",
            "r2d1.buffer_size=2000",
        ],
    ),
    "sac": (
        "sac",
        "Pendulum-v1",
        [
            "sampler.num_envs=2",
            "sampler.horizon=64",
            "sac.learning_starts=64",
            "sac.batch_size=32",
            "sac.replay_ratio=0.05",
            "sac.hidden_sizes=[64, 64]",
        ],
    ),
}


def build(algo: str, env: str, sets: list[str], learners: int = 1):
    cfg = resolve_config(algo, env, sets=[*sets, f"learners={learners}", "seed=3"])
    sampler = SerialSampler(cfg.env, cfg.sampler.num_envs, cfg.sampler.horizon, seed=3)
    entry = ALGOS[cfg.algo]
    torch.manual_seed(3)
    agent = entry.make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    return cfg, sampler, agent, entry.make_algo(agent, cfg.algo_params, cfg.seed)


def batches(sampler, agent, n: int) -> list:
    sampler.initialize(agent)
    try:
        return [copy.deepcopy(sampler.obtain()) for _ in range(n)]
    finally:
        sampler.close()


def params(agent, algo) -> list[torch.Tensor]:
    out = [p.detach().clone() for p in agent.model.parameters()]
    for name in ("critic", "log_alpha"):  # SAC's other learned parts
        part = getattr(algo, name, None)
        if isinstance(part, torch.nn.Module):
            out += [p.detach().clone() for p in part.parameters()]
        elif torch.is_tensor(part):
            out.append(part.detach().clone())
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_learners_take_one_learners_step(case, monkeypatch):
    algo_name, env, sets = CASES[case]
    cfg, sampler, agent, algo = build(algo_name, env, sets)
    data = batches(sampler, agent, 2)
    _, _, agent1, algo1 = build(algo_name, env, sets)  # the same initial state
    start = params(agent, algo)
    for i, batch in enumerate(data):
        torch.manual_seed(100 + i)
        algo1.optimize(copy.deepcopy(batch), progress=0.1 * i)
    expected = params(agent1, algo1)
    assert algo1.updates > 1

    cfg2, _, agent2, algo2 = build(algo_name, env, sets, learners=2)
    group = Learners(cfg2, agent2, algo2, sampler.obs_space, sampler.action_space)
    shares: list[tuple[int, int]] = []  # (minibatch, this learner's share) sizes
    shard, shard_chunks = ddp.shard, ddp.shard_chunks

    def recording(split):
        def f(x):
            out = split(x)
            if x is not None:
                shares.append((ddp._leading(x), ddp._leading(out)))
            return out

        return f

    monkeypatch.setattr(ddp, "shard", recording(shard))
    monkeypatch.setattr(ddp, "shard_chunks", recording(shard_chunks))
    try:
        assert ddp.active() is not None and ddp.active().world == 2
        for i, batch in enumerate(data):
            torch.manual_seed(100 + i)
            group.optimize(copy.deepcopy(batch), progress=0.1 * i)
        got = params(agent2, group)
        # really shares: halves, or for whole sequences as even as they split
        assert shares and all(whole // 2 <= mine <= (whole + 1) // 2 for whole, mine in shares)
        assert group.updates == algo1.updates
        group.check(0.0)  # learner 1 still runs: it took every step too
    finally:
        group.close()
    assert ddp.active() is None
    moved = max((a - b).abs().max().item() for a, b in zip(expected, start))
    assert moved > 1e-4  # the updates did change the parameters
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_a_killed_learner_ends_the_update_with_its_name():
    algo_name, env, sets = CASES["ppo"]
    cfg, sampler, agent, algo = build(algo_name, env, sets, learners=2)
    data = batches(sampler, agent, 1)
    group = Learners(cfg, agent, algo, sampler.obs_space, sampler.action_space)
    try:
        group.optimize(copy.deepcopy(data[0]), progress=0.0)
        proc = group.processes[1]
        proc.kill()
        proc.wait(10)
        with pytest.raises(LearnerExited, match=r"learner 1 of 2 \(pid \d+\) exited with signal"):
            group.optimize(copy.deepcopy(data[0]), progress=0.1)
    finally:
        group.close()
    assert ddp.active() is None


def test_uneven_minibatches_are_refused_in_one_line():
    with pytest.raises(ValueError, match="does not split evenly over 2 learners"):
        ddp._group = ddp.LearnerGroup(0, 2, torch.device("cpu"), None)
        try:
            ddp.shard(torch.arange(7))
        finally:
            ddp._group = None


def test_a_learner_that_cannot_start_is_named_at_once(monkeypatch):
    """A learner process that fails before the rendezvous: learner 0 does not wait for the
    rendezvous' timeout (half an hour), it names the learner that exited."""
    algo_name, env, sets = CASES["ppo"]
    cfg, sampler, agent, algo = build(algo_name, env, sets, learners=2)
    cfg.device = "cpu"
    monkeypatch.setattr(
        "asyncrl.runners.learners.learner_device", lambda d, r: d if r == 0 else "nonsense:0"
    )
    with pytest.raises(LearnerExited, match=r"learner 1 of 2 \(pid \d+\) exited with code 1"):
        Learners(cfg, agent, algo, sampler.obs_space, sampler.action_space)
    assert ddp.active() is None
