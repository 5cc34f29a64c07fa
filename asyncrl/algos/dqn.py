"""Deep Q-learning (Mnih et al. 2015) with the usual options: double Q-learning (van Hasselt et
al. 2016), dueling heads (Wang et al. 2016), prioritized replay (Schaul et al. 2016), n-step
returns. The replay (its ratio, priorities, minibatches, checkpoints) is the shared base's
(offpolicy.py); this file owns the TD target, the loss, the target network and the epsilon
schedule. C51 and Rainbow extend it in c51.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from asyncrl.agents.dqn import DqnAgent, linear_schedule
from asyncrl.algos import ddp
from asyncrl.algos.offpolicy import ReplayLearner
from asyncrl.algos.optim import clip_grad_norm, frozen_copy, make_adam
from asyncrl.models.noisy import reset_noise
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
    replay_service: bool = False  # keep the replay store in its own process (workers/replay.py)
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
    # The per-env exploration streams derive from the run's seed, the same in every process
    # (workers seed torch with it too): env b explores alike in serial and parallel runs.
    seed = torch.initial_seed()
    return DqnAgent(
        obs_space, action_space, cfg.q_model_config(), device, v_min, v_max, cfg.eval_epsilon, seed
    )


class DQN(ReplayLearner):
    stat_names = ("loss", "q_mean")  # what optimize() reports besides epsilon (and per_beta)

    def __init__(self, agent: DqnAgent, config: DQNConfig, seed: int = 0):
        super().__init__(agent, config, seed)
        self.target = frozen_copy(agent.model)
        self.params = list(agent.model.parameters())
        # Fused Adam: the same update, a third of the time on CPU at CartPole sizes.
        self.optimizer = make_adam(self.params, config.learning_rate, config.adam_eps)
        self._last_target_step = 0
        agent.epsilon = 0.0 if config.noisy else config.eps_start

    # -- exploration and the target network ----------------------------------------------
    def schedule(self, progress: float) -> dict[str, float]:
        cfg = self.config
        if not cfg.noisy:
            self.agent.epsilon = linear_schedule(
                cfg.eps_start, cfg.eps_final, 1, progress / max(cfg.eps_fraction, 1e-8)
            )
        return {"epsilon": self.agent.epsilon}

    def before_updates(self) -> None:
        # Every target_update_interval env steps, checked before each phase of updates, and
        # when learning starts.
        interval = self.config.target_update_interval
        if self.env_steps - self._last_target_step >= interval or self.updates == 0:
            self._update_target()
            self._last_target_step = self.env_steps

    def _update_target(self) -> None:
        tau = self.config.tau
        with torch.no_grad():
            if tau >= 1.0:
                self.target.load_state_dict(self.agent.model.state_dict())
            else:
                for t, s in zip(self.target.parameters(), self.agent.model.parameters()):
                    t.lerp_(s, tau)

    # -- the update --------------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, sample, next_target: torch.Tensor) -> torch.Tensor:
        """The regression target y = r + discount * Q_target(s', a*) [N], no gradient.

        ``next_target`` is Q_target(s', .) [N, A] for ``sample.next_observation``. a* is
        argmax_a Q_online(s', a) when ``double`` (van Hasselt et al. 2016, eq. 4), else
        argmax_a Q_target(s', a) (Mnih et al. 2015). ``discount`` is gamma^m from the replay,
        already 0 where the n-step window ended in ``terminated``.
        """
        if self.config.double:
            next_action = self.agent.model(sample.next_observation).argmax(1, keepdim=True)
            next_q = next_target.gather(1, next_action).squeeze(1)
        else:
            next_q = next_target.max(1).values
        return sample.reward + sample.discount * next_q

    def loss(
        self, sample, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """(per-sample Huber TD loss [N], |TD error| [N] as new priorities (None without
        prioritized replay), stats as tensors to average over the phase).

        ``target``: :meth:`td_target` of this sample when already computed (the training loop
        computes it for many minibatches at once where it can); else it is computed here.
        """
        cfg = self.config
        if target is None:
            with torch.no_grad():
                target = self.td_target(sample, self.target(sample.next_observation))
        q = self.agent.model(sample.observation)
        q_taken = q.gather(1, sample.action.long().unsqueeze(1)).squeeze(1)
        loss = nn.functional.huber_loss(q_taken, target, reduction="none", delta=cfg.huber_delta)
        q_taken = q_taken.detach()
        priorities = (q_taken - target).abs() if cfg.prioritized else None
        return loss, priorities, {"q_mean": q_taken}

    def update(self, sample, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One gradient step on a replay minibatch; ``target`` as in :meth:`loss`."""
        cfg = self.config
        if cfg.noisy:  # fresh noise per update (minibatches come one at a time: no target yet)
            reset_noise(self.agent.model)
            reset_noise(self.target)
        per_sample, priorities, stats = self.loss(sample, target)
        loss = self.weighted_mean(per_sample, sample)
        for p in self.params:  # zero_grad(set_to_none=True), without its per-call overhead
            p.grad = None
        loss.backward()
        ddp.reduce_gradients(self.params)
        if cfg.max_grad_norm > 0:
            self._clip_gradients()
        self.optimizer.step()
        self.update_priorities(sample, priorities)
        return {"loss": loss.detach(), **stats}  # q_mean per sample: the phase's mean over all

    def _clip_gradients(self) -> None:
        clip_grad_norm(self.params, self.config.max_grad_norm)

    # -- one target-network pass per block of minibatches ----------------------------------
    @property
    def prefetch(self) -> bool:
        # Noisy nets draw new target-network noise per update: no shared pass over a block.
        return not self.config.noisy

    def precompute(self, block, minibatches: list) -> Iterator[torch.Tensor]:
        """Each minibatch's TD target, with the target network run once over the block. With
        ``double`` the target needs the online network, which changes every update: it is
        computed per minibatch, just before its update (this generator is read lazily)."""
        with torch.no_grad():
            next_target = self.target(block.next_observation)
            targets = None if self.config.double else self.td_target(block, next_target)
        size = self.config.batch_size
        for i, minibatch in enumerate(minibatches):
            part = slice(i * size, (i + 1) * size)
            if targets is not None:
                yield targets[part]
            else:
                yield self.td_target(minibatch, next_target[part])

    # -- checkpoints ---------------------------------------------------------------------
    def learner_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "target": self.target.state_dict(),
            "last_target_step": self._last_target_step,
        }

    def load_learner_state(self, s: dict) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.target.load_state_dict(s["target"])
        self._last_target_step = s["last_target_step"]
