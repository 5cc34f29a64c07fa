"""Deep Q-learning (Mnih et al. 2015) with the usual options: double Q-learning (van Hasselt et
al. 2016), dueling heads (Wang et al. 2016), prioritized replay (Schaul et al. 2016), n-step
returns. The replay buffer is fed the sampler's batches and computes n-step targets; this file
owns the loss, the target network and the replay ratio. C51 and Rainbow extend it in c51.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from asyncrl.agents.dqn import DqnAgent, linear_schedule
from asyncrl.data import to_torch
from asyncrl.models.policies import is_image_space
from asyncrl.models.q import QModelConfig


@dataclass
class DQNConfig:
    learning_rate: float = 1e-4  # Adam step size
    adam_eps: float = 1.5e-4  # Adam epsilon
    gamma: float = 0.99  # discount
    batch_size: int = 32  # transitions per gradient update
    buffer_size: int = 1_000_000  # replay capacity in transitions
    learning_starts: int = 80_000  # env steps before the first update
    replay_ratio: float = 0.25  # gradient updates per env step (0.25 = one update every 4 steps)
    target_update_interval: int = 32_000  # env steps between target-network updates
    tau: float = 1.0  # target update: 1.0 copies, < 1 is Polyak averaging
    max_grad_norm: float = 10.0  # global gradient-norm clip (0: off)
    huber_delta: float = 1.0  # Huber loss threshold
    double: bool = True  # double Q-learning targets
    n_step: int = 1  # n-step returns
    prioritized: bool = False  # proportional prioritized replay
    per_alpha: float = 0.5  # priority exponent
    per_beta: float = 0.4  # initial importance-sampling exponent, annealed to 1
    frame_replay: bool = True  # image observations: store each frame once
    save_replay: bool = True  # include the replay contents in checkpoints (large on Atari)
    eps_start: float = 1.0  # epsilon-greedy: initial epsilon
    eps_final: float = 0.01  # epsilon after the decay
    eps_fraction: float = 0.1  # fraction of the run over which epsilon decays
    eval_epsilon: float = 0.001  # epsilon in evaluation
    # Q-network (TrainConfig.model applies to policy-gradient agents only)
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    dueling: bool = False  # dueling value/advantage heads
    head_hidden: int = 0  # hidden units per head stream (0: linear heads)
    noisy: bool = False  # noisy-net exploration (epsilon is then 0)

    def q_model_config(self) -> QModelConfig:
        return QModelConfig(
            hidden_sizes=list(self.hidden_sizes),
            activation=self.activation,
            head_hidden=self.head_hidden,
            dueling=self.dueling,
            noisy=self.noisy,
            n_atoms=getattr(self, "n_atoms", 1),
        )


def make_dqn_agent(obs_space, action_space, model_config, device, cfg: DQNConfig) -> DqnAgent:
    v_min, v_max = getattr(cfg, "v_min", -10.0), getattr(cfg, "v_max", 10.0)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return DqnAgent(
        obs_space, action_space, cfg.q_model_config(), device, v_min, v_max, cfg.eval_epsilon, seed
    )


class DQN:
    def __init__(self, agent: DqnAgent, config: DQNConfig, seed: int = 0):
        self.agent, self.config = agent, config
        self.target = _copy_module(agent.model)
        self.optimizer = torch.optim.Adam(
            agent.model.parameters(), lr=config.learning_rate, eps=config.adam_eps
        )
        self.replay = None
        self._pending_replay_state = None
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.updates = 0
        self._update_credit = 0.0
        self._last_target_step = 0
        agent.epsilon = 0.0 if config.noisy else config.eps_start

    # -- replay --------------------------------------------------------------------------
    def _make_replay(self, batch):
        from asyncrl.replay import (
            FrameReplay,
            PrioritizedFrameReplay,
            PrioritizedReplay,
            UniformReplay,
        )

        cfg = self.config
        n_envs = batch.samples.env.reward.shape[1]
        example = batch.samples[0, 0]
        frames = cfg.frame_replay and is_image_space(self.agent.obs_space)
        if cfg.prioritized:
            cls = PrioritizedFrameReplay if frames else PrioritizedReplay
            replay = cls(
                example,
                cfg.buffer_size,
                n_envs,
                cfg.gamma,
                cfg.n_step,
                alpha=cfg.per_alpha,
                beta=cfg.per_beta,
                seed=self.seed,
            )
        else:
            cls = FrameReplay if frames else UniformReplay
            replay = cls(example, cfg.buffer_size, n_envs, cfg.gamma, cfg.n_step, seed=self.seed)
        if self._pending_replay_state is not None:
            replay.load_state_dict(self._pending_replay_state)
            self._pending_replay_state = None
        return replay

    # -- the update --------------------------------------------------------------------------
    def loss(self, sample) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Per-sample Huber TD loss and |TD error| (new priorities)."""
        cfg, agent = self.config, self.agent
        q = agent.model(sample.observation)
        q_taken = q.gather(1, sample.action.long().unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_target = self.target(sample.next_observation)
            if cfg.double:
                next_action = agent.model(sample.next_observation).argmax(1, keepdim=True)
            else:
                next_action = next_target.argmax(1, keepdim=True)
            next_q = next_target.gather(1, next_action).squeeze(1)
            # discount is gamma^m, already 0 where the window ended in `terminated`
            target = sample.reward + sample.discount * next_q
        td = q_taken - target
        loss = nn.functional.huber_loss(q_taken, target, reduction="none", delta=cfg.huber_delta)
        return loss, td.detach().abs(), {"q_mean": q_taken.mean().item()}

    def _update_target(self) -> None:
        tau = self.config.tau
        with torch.no_grad():
            if tau >= 1.0:
                self.target.load_state_dict(self.agent.model.state_dict())
            else:
                for t, s in zip(self.target.parameters(), self.agent.model.parameters()):
                    t.lerp_(s, tau)

    def optimize(self, batch, progress: float) -> dict[str, float]:
        cfg, agent = self.config, self.agent
        if self.replay is None:
            self.replay = self._make_replay(batch)
        self.replay.append(batch.samples, batch.final_observations)
        self.env_steps += batch.env_steps
        if not cfg.noisy:
            agent.epsilon = linear_schedule(
                cfg.eps_start, cfg.eps_final, 1, progress / max(cfg.eps_fraction, 1e-8)
            )
        stats: dict[str, float] = {"epsilon": agent.epsilon}
        if self.env_steps < cfg.learning_starts:
            return stats
        if cfg.prioritized:
            stats["per_beta"] = self.replay.anneal_beta(progress)
        self._update_credit += cfg.replay_ratio * batch.env_steps
        n_updates = int(self._update_credit)
        self._update_credit -= n_updates
        if (
            self.env_steps - self._last_target_step >= cfg.target_update_interval
            or self.updates == 0
        ):
            self._update_target()
            self._last_target_step = self.env_steps
        losses, extra = [], {}
        agent.train_mode()
        for _ in range(n_updates):
            sample = to_torch(self.replay.sample(cfg.batch_size, self.rng), agent.device)
            if cfg.noisy:
                from asyncrl.models.noisy import reset_noise

                reset_noise(agent.model)
                reset_noise(self.target)
            per_sample, priorities, extra = self.loss(sample)
            loss = (per_sample * sample.weights).mean() if cfg.prioritized else per_sample.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(agent.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            if cfg.prioritized:
                self.replay.update_priorities(
                    sample.indices.cpu().numpy(), priorities.cpu().numpy()
                )
            losses.append(loss.item())
            self.updates += 1
        agent.eval_mode()
        agent.policy_version += 1
        if losses:
            stats["loss"] = float(np.mean(losses))
            stats.update(extra)
        return stats

    def state_dict(self) -> dict:
        s = {
            "optimizer": self.optimizer.state_dict(),
            "target": self.target.state_dict(),
            "updates": self.updates,
            "env_steps": self.env_steps,
            "update_credit": self._update_credit,
            "last_target_step": self._last_target_step,
            "rng": self.rng.bit_generator.state,
            "agent_rng": self.agent.rng.bit_generator.state,
            "epsilon": self.agent.epsilon,
        }
        if self.config.save_replay and self.replay is not None:
            s["replay"] = self.replay.state_dict()
        return s

    def load_state_dict(self, s: dict) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.target.load_state_dict(s["target"])
        self.updates, self.env_steps = s["updates"], s["env_steps"]
        self._update_credit, self._last_target_step = s["update_credit"], s["last_target_step"]
        self.rng.bit_generator.state = s["rng"]
        self.agent.rng.bit_generator.state = s["agent_rng"]
        self.agent.epsilon = s["epsilon"]
        self._pending_replay_state = s.get("replay")


def _copy_module(module: nn.Module) -> nn.Module:
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def huber(x: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x.pow(2), delta * (a - 0.5 * delta))
