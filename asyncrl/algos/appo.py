"""Asynchronous PPO: PPO's clipped surrogate with V-trace targets (Espeholt et al. 2018, IMPALA,
arXiv:1802.01561; the combination as in Sample Factory's APPO, Petrenko et al. 2020).

Owns the loss; acting, the policy versions and the batches' lag belong to the agent and runtime.

The batch may have been acted by older policy versions (``SampleBatch.policy_lag``, per column):
the behaviour log-probabilities mu come from the batch (``agent_info.log_prob``, recorded by the
acting policy), the target log-probabilities pi and values V from the current model.

- **When the targets are recomputed.** Once per epoch, over the whole batch, with the current
  model and no gradient: V-trace needs each column's steps in order, while the minibatches are
  shuffled steps (as in PPO), so the targets are computed before the epoch's minibatches and held
  fixed through it. In the first epoch of a synchronous batch pi = mu: the targets are the n-step
  returns (c_bar < 1 shortens them like GAE's lambda). Later epochs see pi != mu and correct for
  it. The bootstrap and timeout values are the acting policy's (``bootstrap_value``,
  ``env_info.timeout_value``): not every sampler returns the observations to recompute them.
- **The loss.** ratio = pi / mu in the clipped surrogate (eq. 7 of Schulman et al. 2017) on the
  V-trace policy-gradient advantages min(pg_rho_bar, pi/mu) (r + gamma v_{s+1} - V) (IMPALA
  sec. 4.2), normalised per minibatch; 0.5 (V - v_s)^2, optionally clipped around the values the
  model gave at the start of this update; an entropy bonus. As in Sample Factory, the advantage
  keeps its clipped importance weight inside the surrogate.
- **Policy lag.** Columns lagging more than ``max_policy_lag`` versions are left out of the batch
  before anything is computed, so they reach no loss term, no advantage normalisation, no
  normaliser update; ``lag_dropped_samples`` counts their steps. A batch with no column left
  changes nothing (no optimizer step, no new policy version).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asyncrl.algos import ddp
from asyncrl.algos.clipped import clipped_step, mean_stats, new_stats, share_advantage
from asyncrl.algos.optim import make_adam
from asyncrl.algos.pg_batch import (
    annealed,
    flatten_time_env,
    lag_mask,
    lag_stats,
    set_learning_rate,
)
from asyncrl.algos.returns import vtrace
from asyncrl.algos.sequences import RecurrentInputs, make_chunks
from asyncrl.data import to_torch, tree_map


@dataclass
class APPOConfig:
    learning_rate: float = 3e-4  # Adam step size (initial, when annealed)
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over the run
    adam_eps: float = 1e-5  # Adam epsilon
    gamma: float = 0.99  # discount
    epochs: int = 4  # passes over each batch (V-trace targets recomputed before each)
    minibatches: int = 4  # minibatches per epoch (batch = horizon * num_envs)
    clip_range: float = 0.2  # surrogate clipping epsilon
    anneal_clip_range: bool = False  # decay the clipping epsilon linearly to 0 over the run
    clip_value: bool = False  # clip the value update around the value at the update's start
    value_clip_range: float = 0.2  # epsilon of the value clipping
    value_coef: float = 0.5  # value-loss weight
    entropy_coef: float = 0.0  # entropy bonus weight
    max_grad_norm: float = 0.5  # global gradient-norm clip (0: off)
    normalize_advantage: bool = True  # per-minibatch advantage standardisation
    target_kl: float = 0.0  # stop the epochs early above this KL to the behaviour policy (0: off)
    rho_bar: float = 1.0  # V-trace clip of the importance weight in delta_t V (IMPALA: 1)
    c_bar: float = 1.0  # V-trace clip of the trace coefficients c_i (IMPALA: 1; < 1 ~ GAE lambda)
    pg_rho_bar: float = 1.0  # clip of the importance weight of the pg advantages (IMPALA: 1)
    # Columns acted more than this many policy versions (optimize calls, each epochs x minibatches
    # SGD steps) ago are dropped. A healthy pipeline lags 1-2 versions; beyond ~20 the clipped
    # V-trace weights leave stale data little signal, so only stalled workers' data is cut.
    # Sample Factory's 1000 counts single SGD steps (~60 of our versions at 4 x 4 steps each).
    max_policy_lag: int = 20
    # Recurrent cores: steps per sequence chunk of a minibatch (0: the whole horizon)
    sequence_length: int = 0

    def validate(self) -> None:
        for name in ("rho_bar", "c_bar", "pg_rho_bar", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_policy_lag < 0:
            raise ValueError(f"max_policy_lag must be >= 0, got {self.max_policy_lag}")


class APPO:
    def __init__(self, agent, config: APPOConfig, seed: int = 0):
        config.validate()
        self.agent, self.config = agent, config
        self.params = list(agent.model.parameters())
        self.optimizer = make_adam(self.params, config.learning_rate, config.adam_eps)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    def optimize(self, batch, progress: float) -> dict[str, float]:
        """One APPO update on a SampleBatch; ``progress`` in [0, 1] drives the annealing."""
        cfg, agent, dev = self.config, self.agent, self.agent.device
        s = batch.samples
        T, B = s.env.reward.shape
        keep = lag_mask(batch.policy_lag, B, cfg.max_policy_lag)  # [B]
        lr = annealed(cfg.learning_rate, progress, cfg.anneal_lr)
        clip = max(annealed(cfg.clip_range, progress, cfg.anneal_clip_range), 1e-8)
        out = lag_stats(batch.policy_lag, keep, T)
        out.update(learning_rate=lr, clip_range=clip)
        bootstrap = np.asarray(batch.bootstrap_value)
        if not keep.all():
            s, bootstrap, B = tree_map(lambda x: x[:, keep], s), bootstrap[keep], int(keep.sum())
            if B == 0:
                return out
        set_learning_rate(self.optimizer, lr)

        def seq(x, dtype=torch.float32):  # numpy [T, B] -> torch [T, B]
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=dev)

        obs = to_torch(flatten_time_env(s.env.observation), dev)  # tree [N, ...], N = T * B
        action = to_torch(flatten_time_env(s.agent.action), dev)  # [N, ...]
        behaviour_logp = seq(s.agent.agent_info.log_prob).reshape(-1)  # [N]
        reward = seq(s.env.reward)
        discount = cfg.gamma * (1.0 - seq(s.env.terminated))  # gamma_t
        truncated = seq(s.env.truncated, torch.bool)
        timeout_value = seq(s.env.env_info.timeout_value)
        bootstrap_value = seq(bootstrap)  # [B]
        n = T * B
        mb_size = max(n // cfg.minibatches, 1)
        recurrent = getattr(agent, "recurrent", False)
        if recurrent:  # whole-env unrolls for the targets, chunks for the minibatches
            inputs = RecurrentInputs.of(s, dev)
            done = s.env.terminated | s.env.truncated
            whole = make_chunks(done, 0, dev)  # [T * B] in the order of the flat tensors
            chunks = make_chunks(done, cfg.sequence_length, dev)
            per_mb = max(chunks.count // cfg.minibatches, 1)
            action_tb = to_torch(s.agent.action, dev)
        stats = new_stats()
        agent.train_mode()
        stop = False
        start_value = explained = None
        for _ in range(cfg.epochs):
            with torch.no_grad():  # the epoch's targets, from the current model (module docstring)
                if recurrent:
                    dist, value = inputs.unroll(agent.model, whole)
                else:
                    dist, value = agent.model(obs)
                log_rho = (dist.log_prob(action) - behaviour_logp).view(T, B)
                targets = vtrace(
                    log_rho,
                    discount,
                    reward,
                    value.view(T, B),
                    bootstrap_value,
                    truncated,
                    timeout_value,
                    rho_bar=cfg.rho_bar,
                    c_bar=cfg.c_bar,
                    pg_rho_bar=cfg.pg_rho_bar,
                )
                vs, adv = targets.vs.reshape(-1), targets.pg_advantage.reshape(-1)
                if start_value is None:
                    start_value, explained = value, _explained_variance(vs, value)
            if recurrent:
                stop = self._sequence_epoch(
                    inputs, chunks, per_mb, clip, action_tb,
                    [x.view(T, B) for x in (behaviour_logp, adv, vs, start_value)], stats,
                )  # fmt: skip
            else:
                perm = torch.randperm(n, generator=self.generator).to(dev)
                for start in range(0, n - mb_size + 1, mb_size):
                    whole = perm[start : start + mb_size]
                    idx = ddp.shard(whole)  # data-parallel learners: each its share
                    adv_mb, normalized = share_advantage(cfg, adv, whole, idx)
                    dist, value = agent.model(tree_map(lambda x, i=idx: x[i], obs))
                    stop = clipped_step(
                        self, cfg, clip, dist, value, action[idx], behaviour_logp[idx], adv_mb,
                        vs[idx], start_value[idx], stats, normalized=normalized,
                    )  # fmt: skip
                    if stop:
                        break
            if stop:
                break
        agent.eval_mode()
        agent.update_normalizer(obs)
        agent.policy_version += 1
        out.update(mean_stats(stats))
        out["explained_variance"] = explained
        return out

    def _sequence_epoch(self, inputs, chunks, per_mb, clip, action, tb, stats) -> bool:
        """One epoch over minibatches of whole chunks (recurrent agents); ``tb``: behaviour
        log-probs, advantages, V-trace targets and the anchor values as [T, B]."""
        perm = torch.randperm(chunks.count, generator=self.generator).to(action.device)
        for start in range(0, chunks.count - per_mb + 1, per_mb):
            mb = chunks.select(ddp.shard_chunks(perm[start : start + per_mb]))
            dist, value = inputs.unroll(self.agent.model, mb)
            logp, adv, vs, anchor = (mb.flat(x) for x in tb)
            if clipped_step(
                self, self.config, clip, dist, value, mb.flat(action), logp, adv, vs, anchor,
                stats, mask=mb.mask(),
            ):  # fmt: skip
                return True
        return False

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
        self.generator.set_state(state["generator"])


def _explained_variance(target: torch.Tensor, prediction: torch.Tensor) -> float:
    """1 - Var(target - prediction) / Var(target) (nan when the targets are constant)."""
    var = target.var(unbiased=False).item()
    if var == 0:
        return float("nan")
    return 1.0 - (target - prediction).var(unbiased=False).item() / var
