"""Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347).

The whole update: GAE advantages, per-minibatch advantage normalisation, the clipped surrogate
(eq. 7), optional clipped value loss, entropy bonus, gradient-norm clipping, linear learning-rate
annealing. Owns the loss; the agent owns acting and the sampler owns data collection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asyncrl.algos import ddp
from asyncrl.algos.clipped import clipped_step, mean_stats, new_stats, share_advantage
from asyncrl.algos.optim import make_adam
from asyncrl.algos.pg_batch import annealed, flatten_time_env, pg_batch, set_learning_rate
from asyncrl.algos.returns import gae
from asyncrl.algos.sequences import RecurrentInputs, make_chunks
from asyncrl.data import to_torch, tree_map


@dataclass
class PPOConfig:
    learning_rate: float = 3e-4  # Adam step size (initial, when annealed)
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over the run
    adam_eps: float = 1e-5  # Adam epsilon
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    epochs: int = 4  # passes over each batch
    minibatches: int = 4  # minibatches per epoch (batch = horizon * num_envs)
    clip_range: float = 0.2  # surrogate clipping epsilon
    anneal_clip_range: bool = False  # decay the clipping epsilon linearly to 0 over the run
    clip_value: bool = False  # clip the value update around the old value
    value_clip_range: float = 0.2  # epsilon of the value clipping
    value_coef: float = 0.5  # value-loss weight
    entropy_coef: float = 0.0  # entropy bonus weight
    max_grad_norm: float = 0.5  # global gradient-norm clip (0: off)
    normalize_advantage: bool = True  # per-minibatch advantage standardisation
    target_kl: float = 0.0  # stop the epochs early above this approximate KL (0: off)
    # Recurrent cores (model.core): steps per sequence chunk; minibatches are whole chunks
    # (0: the whole horizon, one chunk per env, as CleanRL's ppo_atari_lstm).
    sequence_length: int = 0

    def validate(self) -> None:
        if self.sequence_length < 0:
            raise ValueError(f"sequence_length must be >= 0, got {self.sequence_length}")


class PPO:
    def __init__(self, agent, config: PPOConfig, seed: int = 0):
        self.agent, self.config = agent, config
        self.params = list(agent.model.parameters())
        self.optimizer = make_adam(self.params, config.learning_rate, config.adam_eps)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    def optimize(self, batch, progress: float) -> dict[str, float]:
        """One PPO update on a SampleBatch; ``progress`` in [0, 1] drives lr annealing."""
        cfg, agent = self.config, self.agent
        if getattr(agent, "recurrent", False):
            return self._optimize_sequences(batch, progress)
        data = pg_batch(batch, cfg.gamma, cfg.gae_lambda, agent.device)
        lr = annealed(cfg.learning_rate, progress, cfg.anneal_lr)
        set_learning_rate(self.optimizer, lr)
        clip = max(annealed(cfg.clip_range, progress, cfg.anneal_clip_range), 1e-8)
        dev = agent.device
        obs, action, old_logp, old_value = (
            data.observation,
            data.action,
            data.old_log_prob,
            data.old_value,
        )
        adv_t, ret_t = data.advantage, data.returns
        n = adv_t.shape[0]
        mb_size = max(n // cfg.minibatches, 1)
        stats = new_stats()
        agent.train_mode()
        stop = False
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=self.generator).to(dev)
            for start in range(0, n - mb_size + 1, mb_size):
                whole = perm[start : start + mb_size]
                idx = ddp.shard(whole)  # data-parallel learners: each its share
                adv, normalized = share_advantage(cfg, adv_t, whole, idx)
                dist, value = agent.model(tree_map(lambda x, i=idx: x[i], obs))
                stop = clipped_step(
                    self, cfg, clip, dist, value, action[idx], old_logp[idx], adv,
                    ret_t[idx], old_value[idx], stats, normalized=normalized,
                )  # fmt: skip
                if stop:
                    break
            if stop:
                break
        agent.eval_mode()
        agent.update_normalizer(obs)
        agent.policy_version += 1
        explained = data.explained_variance
        out = mean_stats(stats)
        out.update(learning_rate=lr, clip_range=clip, explained_variance=explained)
        return out

    def _optimize_sequences(self, batch, progress: float) -> dict[str, float]:
        """Recurrent PPO: the same objective on minibatches of whole sequence chunks, each
        unrolled from its stored state (algos/sequences.py)."""
        cfg, agent, dev = self.config, self.agent, self.agent.device
        s = batch.samples
        info = s.agent.agent_info
        adv, ret = gae(
            s.env.reward, info.value, s.env.terminated, s.env.truncated,
            s.env.env_info.timeout_value, batch.bootstrap_value, cfg.gamma, cfg.gae_lambda,
        )  # fmt: skip
        lr = annealed(cfg.learning_rate, progress, cfg.anneal_lr)
        set_learning_rate(self.optimizer, lr)
        clip = max(annealed(cfg.clip_range, progress, cfg.anneal_clip_range), 1e-8)
        inputs = RecurrentInputs.of(s, dev)
        chunks = make_chunks(s.env.terminated | s.env.truncated, cfg.sequence_length, dev)
        action = to_torch(s.agent.action, dev)
        old_logp, old_value = to_torch(info.log_prob, dev), to_torch(info.value, dev)
        adv_t, ret_t = to_torch(adv, dev), to_torch(ret, dev)
        per_mb = max(chunks.count // cfg.minibatches, 1)
        stats = new_stats()
        agent.train_mode()
        stop = False
        for _ in range(cfg.epochs):
            perm = torch.randperm(chunks.count, generator=self.generator).to(dev)
            for start in range(0, chunks.count - per_mb + 1, per_mb):
                mb = chunks.select(ddp.shard_chunks(perm[start : start + per_mb]))
                dist, value = inputs.unroll(agent.model, mb)
                stop = clipped_step(
                    self, cfg, clip, dist, value, mb.flat(action), mb.flat(old_logp),
                    mb.flat(adv_t), mb.flat(ret_t), mb.flat(old_value), stats,
                    mask=mb.mask(),
                )  # fmt: skip
                if stop:
                    break
            if stop:
                break
        agent.eval_mode()
        agent.update_normalizer(to_torch(flatten_time_env(s.env.observation), dev))
        agent.policy_version += 1
        var_y = float(np.var(ret))
        out = mean_stats(stats)
        out.update(
            learning_rate=lr,
            clip_range=clip,
            explained_variance=float("nan")
            if var_y == 0
            else 1.0 - float(np.var(ret - info.value)) / var_y,
        )
        return out

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
