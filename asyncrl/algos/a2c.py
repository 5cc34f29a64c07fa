"""Advantage Actor-Critic, the synchronous variant of A3C (Mnih et al. 2016, arXiv:1602.01783).

One gradient step per batch on the whole [T, B] batch: policy gradient with (GAE) advantages,
value regression to the returns, entropy bonus, RMSprop as in the paper. A recurrent agent is
unrolled over each env's whole batch from its stored state (algos/sequences.py). Owns the loss
only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asyncrl.algos import ddp
from asyncrl.algos.optim import clip_grad_norm
from asyncrl.algos.pg_batch import annealed, pg_batch, set_learning_rate
from asyncrl.algos.sequences import RecurrentInputs, make_chunks


@dataclass
class A2CConfig:
    learning_rate: float = 7e-4  # step size (initial, when annealed)
    anneal_lr: bool = False  # decay the learning rate linearly to 0 over the run
    optimizer: str = "rmsprop"  # rmsprop (paper) | adam
    rmsprop_alpha: float = 0.99  # RMSprop smoothing
    eps: float = 1e-5  # optimizer epsilon
    gamma: float = 0.99  # discount
    gae_lambda: float = 1.0  # 1.0: plain n-step advantages as in the paper
    value_coef: float = 0.5  # weight of the value loss 0.5 * (V - R)^2 (SB3's vf_coef c is 2c here)
    entropy_coef: float = 0.0  # entropy bonus weight
    max_grad_norm: float = 0.5  # global gradient-norm clip (0: off)
    normalize_advantage: bool = False  # standardise advantages per batch


class A2C:
    def __init__(self, agent, config: A2CConfig, seed: int = 0):
        self.agent, self.config = agent, config
        params = agent.model.parameters()
        if config.optimizer == "rmsprop":
            self.optimizer = torch.optim.RMSprop(
                params, lr=config.learning_rate, alpha=config.rmsprop_alpha, eps=config.eps
            )
        elif config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=config.eps)
        else:
            raise ValueError(f"a2c.optimizer must be 'rmsprop' or 'adam', got {config.optimizer!r}")
        self.updates = 0

    def optimize(self, batch, progress: float) -> dict[str, float]:
        cfg, agent = self.config, self.agent
        data = pg_batch(batch, cfg.gamma, cfg.gae_lambda, agent.device)
        lr = annealed(cfg.learning_rate, progress, cfg.anneal_lr)
        set_learning_rate(self.optimizer, lr)
        obs, action = data.observation, data.action
        adv_t, ret_t = data.advantage, data.returns
        if cfg.normalize_advantage and adv_t.numel() > 1:
            adv_t = (adv_t - adv_t.mean()) / (adv_t.std() + 1e-8)
        agent.train_mode()
        if getattr(agent, "recurrent", False):  # one unroll per env over the whole batch
            samples = batch.samples
            done = samples.env.terminated | samples.env.truncated
            chunks = make_chunks(done, 0, agent.device)  # [T * B] in the order of `data`
            dist, value = RecurrentInputs.of(samples, agent.device).unroll(agent.model, chunks)
        else:  # data-parallel learners: each its share (normalised over the whole batch above)
            obs_mb, action, adv_t, ret_t = (ddp.shard(x) for x in (obs, action, adv_t, ret_t))
            dist, value = agent.model(obs_mb)
        policy_loss = -(adv_t * dist.log_prob(action)).mean()
        value_loss = 0.5 * (value - ret_t).pow(2).mean()
        entropy = dist.entropy().mean()
        loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ddp.reduce_gradients(list(agent.model.parameters()))
        if cfg.max_grad_norm > 0:
            clip_grad_norm(list(agent.model.parameters()), cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        agent.eval_mode()
        agent.update_normalizer(obs)
        agent.policy_version += 1
        explained = data.explained_variance
        return {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "entropy": entropy.item(),
            "learning_rate": lr,
            "explained_variance": explained,
        }

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
