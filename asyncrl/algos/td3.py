"""Twin Delayed DDPG (Fujimoto et al. 2018, arXiv:1802.09477): clipped double-Q targets, target
policy smoothing (clipped Gaussian noise on the target action), delayed policy and target
updates. DDPG (Lillicrap et al. 2016) is the same file's special case in ddpg.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asyncrl.agents.qpg import QpgAgent
from asyncrl.algos import ddp
from asyncrl.algos.offpolicy import ReplayLearner
from asyncrl.algos.optim import frozen_copy, make_adam
from asyncrl.models.qpg import EnsembleQ, polyak_update


@dataclass
class TD3Config:
    actor_lr: float = 3e-4  # Adam step size of the actor
    critic_lr: float = 3e-4  # Adam step size of the critics
    gamma: float = 0.99  # discount
    tau: float = 0.005  # Polyak factor of the target networks
    batch_size: int = 256  # transitions per update
    buffer_size: int = 1_000_000  # replay capacity
    learning_starts: int = 25_000  # env steps of uniform random actions before updates
    replay_ratio: float = 1.0  # gradient updates per env step
    n_step: int = 1  # n-step returns
    policy_delay: int = 2  # critic updates per actor/target update
    exploration_noise: float = 0.1  # std of the Gaussian exploration noise (in [-1, 1] units)
    target_noise: float = 0.2  # std of the target policy smoothing noise
    target_noise_clip: float = 0.5  # clip of the smoothing noise
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    save_replay: bool = True  # include the replay contents in checkpoints
    onednn_matmul: bool = True  # CPU: updates use oneDNN's fp32 matmuls where exact (models/qpg)


def make_td3_agent(obs_space, action_space, model_config, device, cfg) -> QpgAgent:
    # The per-env exploration streams derive from the run's seed, the same in every process
    # (workers seed torch with it too): env b explores alike in serial and parallel runs.
    seed = torch.initial_seed()
    noise = getattr(cfg, "noise", "gaussian")
    return QpgAgent(
        obs_space,
        action_space,
        cfg.hidden_sizes,
        "deterministic",
        cfg.activation,
        noise=noise,
        noise_sigma=cfg.exploration_noise,
        ou_theta=getattr(cfg, "ou_theta", 0.15),
        device=device,
        seed=seed,
    )


class TD3(ReplayLearner):
    critics = 2
    smoothing = True
    stat_names = ("critic_loss", "q_mean", "actor_loss")

    def __init__(self, agent: QpgAgent, config: TD3Config, seed: int = 0):
        super().__init__(agent, config, seed)
        obs_dim = agent.flatten.output_size
        self.critic = EnsembleQ(
            obs_dim, agent.action_dim, config.hidden_sizes, self.critics, config.activation
        ).to(agent.device)
        self.critic_target = frozen_copy(self.critic)
        self.actor_target = frozen_copy(agent.model)
        self.actor_params = list(agent.model.parameters())
        self.critic_params = list(self.critic.parameters())
        # One list of (target, online) tensors: both Polyak updates in one fused call.
        self.target_params = list(self.critic_target.parameters()) + list(
            self.actor_target.parameters()
        )
        self.online_params = self.critic_params + self.actor_params
        self.actor_opt = make_adam(self.actor_params, config.actor_lr)
        self.critic_opt = make_adam(
            self.critic_params,
            config.critic_lr,
            weight_decay=getattr(config, "critic_weight_decay", 0.0),
        )
        self.critic_updates = 0
        self.actor_updates = 0

    def update(self, s) -> dict:
        cfg, agent = self.config, self.agent
        obs = agent.features(s.observation)
        next_obs = agent.features(s.next_observation)
        action = agent.from_env(s.action)
        with torch.no_grad():
            next_a = self.actor_target(next_obs)
            if self.smoothing and cfg.target_noise > 0:
                draw = ddp.normal_share(next_a.shape, next_a.device)  # data-parallel: a share
                draw = torch.randn_like(next_a) if draw is None else draw
                noise = (draw * cfg.target_noise).clamp(
                    -cfg.target_noise_clip, cfg.target_noise_clip
                )
                next_a = (next_a + noise).clamp(-1.0, 1.0)
            next_q = self.critic_target(next_obs, next_a).min(0).values
            target = s.reward + s.discount * next_q
        q = self.critic(obs, action)  # [critics, N] in one batched pass
        critic_loss = 0.5 * (q - target.unsqueeze(0)).pow(2).mean(1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        ddp.reduce_gradients(self.critic_params)
        self.critic_opt.step()
        self.critic_updates += 1
        out = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}
        if self.critic_updates % cfg.policy_delay == 0:
            # Deterministic policy gradient through Q_1 only (Fujimoto et al. 2018, alg. 1);
            # backward for the actor's parameters only skips the critic's weight gradients.
            actor_loss = -self.critic.member(obs, agent.model(obs), 0).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward(inputs=self.actor_params)
            ddp.reduce_gradients(self.actor_params)
            self.actor_opt.step()
            self.actor_updates += 1
            polyak_update(self.target_params, self.online_params, cfg.tau)
            out["actor_loss"] = actor_loss.detach()
        return out

    def learner_state(self) -> dict:
        return {
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "critic_updates": self.critic_updates,
            "actor_updates": self.actor_updates,
        }

    def load_learner_state(self, s: dict) -> None:
        self.critic.load_state_dict(s["critic"])
        self.critic_target.load_state_dict(s["critic_target"])
        self.actor_target.load_state_dict(s["actor_target"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        self.critic_updates, self.actor_updates = s["critic_updates"], s["actor_updates"]
