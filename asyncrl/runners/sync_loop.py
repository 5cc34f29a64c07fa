"""The synchronous training loop: sample -> optimize -> sync -> evaluate -> row -> checkpoint, one
batch at a time, with the sampler, agent and algorithm in this process (rlpyt's MinibatchRl).

Owns building those three for a run, restoring them on resume, and the order of one iteration.
Everything else about the run (directory, counters, schedules, signals, cleanup) is
runners/run.py's. Must not know a loss (algorithms) or a socket (runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from asyncrl.algos import ALGOS
from asyncrl.configs.config import TrainConfig
from asyncrl.runners.learners import start_learners
from asyncrl.runners.run import Run, TrainResult

if TYPE_CHECKING:  # (the samplers are imported where a run builds one, not with asyncrl)
    from asyncrl.samplers.base import Sampler

SamplerFactory = Callable[[TrainConfig, int], "Sampler"]  # (cfg, seed_offset), as make_sampler


def sync_loop(run: Run, sampler: Sampler | SamplerFactory) -> TrainResult:
    """Train ``run`` to its steps. ``sampler``: the sampler (this loop initializes and closes
    it) or a factory called as ``sampler(cfg, seed_offset=env_steps)``: a resumed run starts
    fresh episodes with env seeds offset by the env steps already done."""
    cfg = run.cfg
    if not hasattr(sampler, "obtain"):
        sampler = sampler(cfg, seed_offset=run.env_steps)
    entry = ALGOS[cfg.algo]
    agent = entry.make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, cfg.device, cfg.algo_params
    )
    algo = entry.make_algo(agent, cfg.algo_params, cfg.seed)
    if run.resumed:  # parameters and normaliser statistics, optimizer, acting streams
        ckpt = run.resumed
        agent.load_state_tensors(ckpt["agent"], ckpt.get("policy_version", 0))
        algo.load_state_dict(ckpt["algo"])
        if hasattr(agent, "load_rng_state"):
            agent.load_rng_state(ckpt.get("agent_rng", {}))
        sampler.load_state_dict(ckpt.get("sampler", {}))
    agent.eval_mode()
    # learners > 1: this process is learner 0 of a data-parallel group (runners/learners.py)
    try:
        algo = start_learners(cfg, agent, algo, sampler.obs_space, sampler.action_space)
    except BaseException:
        sampler.close()
        raise

    def checkpoint_state() -> dict:
        return {
            "agent": agent.state_tensors(),
            "policy_version": agent.policy_version,
            "algo": algo.state_dict(),
            "agent_rng": agent.rng_state() if hasattr(agent, "rng_state") else {},
            "sampler": sampler.state_dict(),
        }

    def columns() -> dict:
        counters = sampler.counters() if hasattr(sampler, "counters") else {}  # runtime faults
        return {"updates": getattr(algo, "updates", 0), **counters}

    status = sampler.status if hasattr(sampler, "status") else None
    # algo.close: e.g. a replay store process
    close = [sampler.close] + ([algo.close] if hasattr(algo, "close") else [])
    with run.running(checkpoint_state, columns=columns, status=status, close=close):
        sampler.initialize(agent)
        while not run.should_stop:
            batch = sampler.obtain()
            run.add_steps(batch.env_steps, batch.episodes)
            info = algo.optimize(batch, progress=run.fraction_done)
            sampler.sync(agent)
            run.record(info, agent)
            run.maybe_checkpoint()
    return run.result(agent)
