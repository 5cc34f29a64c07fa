"""Soft Actor-Critic (Haarnoja et al. 2018, arXiv:1812.05905): twin Q-functions with clipped
double-Q targets, a tanh-squashed Gaussian policy, automatic entropy tuning towards a target
entropy (default -|A|) or a fixed alpha, Polyak-averaged target critics. Owns the losses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from asyncrl.agents.qpg import QpgAgent
from asyncrl.algos import ddp
from asyncrl.algos.offpolicy import ReplayLearner
from asyncrl.algos.optim import frozen_copy, make_adam
from asyncrl.models.qpg import EnsembleQ, polyak_update


@dataclass
class SACConfig:
    learning_rate: float = 3e-4  # Adam step size for actor, critics and alpha
    gamma: float = 0.99  # discount
    tau: float = 0.005  # Polyak factor of the target critics
    batch_size: int = 256  # transitions per update
    buffer_size: int = 1_000_000  # replay capacity
    learning_starts: int = 10_000  # env steps of uniform random actions before updates
    replay_ratio: float = 1.0  # gradient updates per env step
    n_step: int = 1  # n-step returns
    auto_alpha: bool = True  # tune alpha towards target_entropy
    alpha: float = 0.2  # initial (or fixed, when auto_alpha is false) entropy temperature
    target_entropy: float = 0.0  # 0: -dim(A)
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])  # actor and critics
    activation: str = "relu"
    save_replay: bool = True  # include the replay contents in checkpoints
    onednn_matmul: bool = True  # CPU: updates use oneDNN's fp32 matmuls where exact (models/qpg)


def make_sac_agent(obs_space, action_space, model_config, device, cfg: SACConfig) -> QpgAgent:
    # The per-env exploration streams derive from the run's seed, the same in every process
    # (workers seed torch with it too): env b explores alike in serial and parallel runs.
    seed = torch.initial_seed()
    return QpgAgent(
        obs_space,
        action_space,
        cfg.hidden_sizes,
        "gaussian",
        cfg.activation,
        device=device,
        seed=seed,
    )


class SAC(ReplayLearner):
    stat_names = ("critic_loss", "actor_loss", "alpha", "entropy")

    def __init__(self, agent: QpgAgent, config: SACConfig, seed: int = 0):
        super().__init__(agent, config, seed)
        obs_dim = agent.flatten.output_size
        self.critic = EnsembleQ(
            obs_dim, agent.action_dim, config.hidden_sizes, 2, config.activation
        ).to(agent.device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_params = list(agent.model.parameters())
        self.critic_params = list(self.critic.parameters())
        self.critic_target_params = list(self.critic_target.parameters())
        self.actor_opt = make_adam(self.actor_params, config.learning_rate)
        self.critic_opt = make_adam(self.critic_params, config.learning_rate)
        self.target_entropy = config.target_entropy or -float(agent.action_dim)
        self.log_alpha = torch.tensor(
            math.log(config.alpha), device=agent.device, requires_grad=True
        )
        self.alpha_opt = make_adam([self.log_alpha], config.learning_rate)

    def update(self, s) -> dict:
        cfg, agent = self.config, self.agent
        obs = agent.features(s.observation)
        next_obs = agent.features(s.next_observation)
        action = agent.from_env(s.action)
        alpha = self.log_alpha.detach().exp()
        shape = (next_obs.shape[0], agent.action_dim)  # data-parallel: shares of one draw
        with torch.no_grad():
            next_a, next_logp = agent.model(next_obs, noise=ddp.normal_share(shape, obs.device))
            next_q = self.critic_target(next_obs, next_a).min(0).values - alpha * next_logp
            target = s.reward + s.discount * next_q
        q = self.critic(obs, action)  # [2, N]: both critics in one batched pass
        critic_loss = 0.5 * (q - target.unsqueeze(0)).pow(2).mean(1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        ddp.reduce_gradients(self.critic_params)
        self.critic_opt.step()

        # The actor's gradient flows through the (just updated) critics to the action; asking
        # backward for the actor's parameters only skips the critics' weight gradients.
        a, logp = agent.model(obs, noise=ddp.normal_share(shape, obs.device))
        q_pi = self.critic(obs, a).min(0).values
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=self.actor_params)
        logp = logp.detach()
        if cfg.auto_alpha:
            # J(alpha) = E[-alpha (log pi + H_target)] (Haarnoja et al. 2018b, eq. 18), on log alpha.
            # Its gradient needs neither the actor's step nor the critics': it is taken here, so
            # that data-parallel learners average both gradients in one exchange.
            alpha_loss = -(self.log_alpha * (logp + self.target_entropy)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
        ddp.reduce_gradients(self.actor_params + [self.log_alpha] * cfg.auto_alpha)
        self.actor_opt.step()
        if cfg.auto_alpha:
            self.alpha_opt.step()
        polyak_update(self.critic_target_params, self.critic_params, cfg.tau)
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha": alpha,
            "entropy": -logp.mean(),
        }

    def learner_state(self) -> dict:
        return {
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "alpha_opt": self.alpha_opt.state_dict(),
        }

    def load_learner_state(self, s: dict) -> None:
        self.critic.load_state_dict(s["critic"])
        self.critic_target.load_state_dict(s["critic_target"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        with torch.no_grad():
            self.log_alpha.copy_(s["log_alpha"])
        self.alpha_opt.load_state_dict(s["alpha_opt"])
