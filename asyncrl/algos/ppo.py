"""Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347).

The whole update: GAE advantages, per-minibatch advantage normalisation, the clipped surrogate
(eq. 7), optional clipped value loss, entropy bonus, gradient-norm clipping, linear learning-rate
annealing. Owns the loss; the agent owns acting and the sampler owns data collection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asyncrl.algos.clipped import clipped_step, mean_stats, new_stats
from asyncrl.algos.optim import make_adam
from asyncrl.algos.pg_batch import annealed, pg_batch, set_learning_rate
from asyncrl.data import tree_map


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
                idx = perm[start : start + mb_size]
                dist, value = agent.model(tree_map(lambda x, i=idx: x[i], obs))
                stop = clipped_step(
                    self, cfg, clip, dist, value, action[idx], old_logp[idx], adv_t[idx],
                    ret_t[idx], old_value[idx], stats,
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
