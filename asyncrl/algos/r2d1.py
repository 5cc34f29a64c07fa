"""R2D1: recurrent deep Q-learning from sequence replay (R2D2, Kapturowski et al. 2019, without
the distributed actors; rlpyt's name). The replay, its ratio, the epsilon schedule and the
optimizer step are DQN's (dqn.py, offpolicy.py); this file owns the sequence loss.

Per minibatch of sequences (asyncrl/replay/sequence.py), with W = burn_in, L =
sequence_length and n = n_step:

- Both networks are unrolled from the state stored at each sequence's start, resetting it
  where an episode begins inside the window. The first W steps only warm the state up (no
  gradient through them: R2D2's burn-in); the loss is on the L trained steps after them.
- n-step double-Q targets with value rescaling (R2D2 eq. 1, from Pohlen et al. 2018):
  y_t = h(sum_{j<m} gamma^j r_{t+j} + [alive] gamma^n h^-1(Q_target(s_{t+n}, argmax_a Q(s_{t+n}, a)))),
  where the sum stops at the first episode end in the window (m <= n) and there is no bootstrap
  term when the episode terminated in it. A step whose window ends at a time limit would need
  the value of the env's last observation, which sequences do not hold (the next step is the
  next episode's); such steps are masked out of the loss and the priorities (at most n steps
  per time-limited episode).
- Loss: per sequence, the mean over its valid trained steps of the squared TD error (or the
  Huber loss, ``huber_delta`` > 0), weighted by the importance weights of prioritized replay.
- Priority of a sequence: eta * max_t |delta_t| + (1 - eta) * mean_t |delta_t| (eta 0.9).
- ``replay_ratio`` counts trained steps (L per sequence) per env step, rlpyt's replay ratio:
  1.0 replays every step once on average.
- The target network is copied every ``target_update_interval`` updates (R2D2: 2500).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from asyncrl.agents.r2d1 import R2d1Agent
from asyncrl.algos.dqn import DQN
from asyncrl.models.policies import is_image_space
from asyncrl.models.recurrent import CORES, RecurrentQConfig
from asyncrl.replay.sources import SourcedReplay, holds_sources


def value_rescale(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x."""
    return x.sign() * ((x.abs() + 1).sqrt() - 1) + eps * x


def inverse_value_rescale(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """h^-1(x) = sign(x) (((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1), the exact
    inverse of :func:`value_rescale` (Pohlen et al. 2018, prop. A.2); h(x) = x for eps = 0 is
    not offered (use ``value_rescaling = false``)."""
    root = ((1 + 4 * eps * (x.abs() + 1 + eps)).sqrt() - 1) / (2 * eps)
    return x.sign() * (root.square() - 1)


def mixed_priority(abs_delta: torch.Tensor, valid: torch.Tensor, eta: float) -> torch.Tensor:
    """eta * max + (1 - eta) * mean of |delta| [L, N] over each column's valid steps -> [N]
    (0 for a column without valid steps)."""
    masked = abs_delta * valid
    count = valid.sum(0)
    mean = masked.sum(0) / count.clamp(min=1)
    return eta * masked.max(0).values + (1 - eta) * mean


@dataclass
class R2D1Config:
    learning_rate: float = 1e-4  # Adam step size
    adam_eps: float = 1e-3  # Adam epsilon (R2D2)
    gamma: float = 0.997  # discount
    batch_size: int = 64  # sequences per gradient update
    sequence_length: int = 80  # trained steps per sequence
    burn_in: int = 40  # steps before them that only warm the state up (no loss)
    overlap: int = 40  # steps adjacent stored sequences share
    n_step: int = 5  # n-step targets
    buffer_size: int = 1_000_000  # replay capacity in env steps
    learning_starts: int = 50_000  # env steps before the first update
    replay_ratio: float = 1.0  # trained steps per env step (rlpyt's replay ratio)
    target_update_interval: int = 2500  # gradient updates between target-network copies
    max_grad_norm: float = 80.0  # global gradient-norm clip (0: off)
    huber_delta: float = 0.0  # 0: squared TD error (R2D2); > 0: Huber loss
    double: bool = True  # double Q-learning targets
    value_rescaling: bool = True  # h / h^-1 around the targets (R2D2)
    rescale_eps: float = 1e-3  # eps of h
    prioritized: bool = True  # sequence priorities
    priority_eta: float = 0.9  # max/mean mix of |TD error| in a sequence's priority
    per_alpha: float = 0.9  # priority exponent (R2D2)
    per_beta: float = 0.6  # initial importance-sampling exponent, annealed to 1
    frame_replay: bool = True  # image observations: store each frame once
    save_replay: bool = True  # include the replay contents in checkpoints (large on Atari)
    eps_start: float = 1.0  # epsilon-greedy: initial epsilon
    eps_final: float = 0.01  # epsilon after the decay
    eps_fraction: float = 0.1  # fraction of the run over which epsilon decays
    eval_epsilon: float = 0.001  # epsilon in evaluation
    # the recurrent Q-network (TrainConfig.model applies to policy-gradient agents only)
    hidden_sizes: list[int] = field(default_factory=lambda: [256])  # MLP encoder (vector obs)
    activation: str = "relu"
    core: str = "lstm"  # lstm | gru
    core_size: int = 512  # units of the recurrent core
    core_prev_action: bool = True  # the previous action (one-hot) as a core input
    core_prev_reward: bool = True  # the previous reward as a core input
    dueling: bool = True  # dueling value/advantage streams
    head_hidden: int = 512  # hidden units per head stream (0: linear heads)
    noisy: bool = False  # not offered for R2D1 (epsilon-greedy, as R2D2)
    tau: float = 1.0  # target copies (DQN's Polyak option is not used by R2D1)
    replay_service: bool = False  # not offered for R2D1 (sequence replay lives in the learner)

    def validate(self) -> None:
        if self.core not in CORES or self.core == "none":
            raise ValueError(f"core must be lstm or gru, got {self.core!r}")
        for key in ("batch_size", "sequence_length", "n_step", "target_update_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")
        if not 0 <= self.overlap < self.sequence_length:
            raise ValueError(
                f"overlap must be in [0, sequence_length={self.sequence_length}), got "
                f"{self.overlap}"
            )
        if not 0.0 <= self.priority_eta <= 1.0:
            raise ValueError(f"priority_eta must be in [0, 1], got {self.priority_eta}")
        if self.replay_ratio <= 0:
            raise ValueError(f"replay_ratio must be > 0, got {self.replay_ratio}")
        if self.rescale_eps <= 0:
            raise ValueError(f"rescale_eps must be > 0, got {self.rescale_eps}")
        if self.noisy:
            raise ValueError("noisy nets are not offered for R2D1 (it explores epsilon-greedily)")
        if self.replay_service:
            raise ValueError(
                "replay_service is not offered for R2D1: its sequence replay lives in the learner"
            )

    @property
    def updates_per_env_step(self) -> float:
        """Gradient updates per env step: ``replay_ratio`` over the trained steps per update."""
        return self.replay_ratio / (self.batch_size * self.sequence_length)

    def q_model_config(self) -> RecurrentQConfig:
        return RecurrentQConfig(
            hidden_sizes=list(self.hidden_sizes),
            activation=self.activation,
            core=self.core,
            core_size=self.core_size,
            core_prev_action=self.core_prev_action,
            core_prev_reward=self.core_prev_reward,
            dueling=self.dueling,
            head_hidden=self.head_hidden,
        )


def make_r2d1_agent(obs_space, action_space, model_config, device, cfg: R2D1Config) -> R2d1Agent:
    # The per-env exploration streams derive from the run's seed, as DQN's.
    return R2d1Agent(
        obs_space, action_space, cfg.q_model_config(), device, cfg.eval_epsilon,
        torch.initial_seed(),
    )  # fmt: skip


class R2D1(DQN):
    stat_names = ("loss", "q_mean", "masked_steps")

    # -- the replay ------------------------------------------------------------------------
    def _make_replay(self, batch):
        from asyncrl.replay.sequence import (
            FrameSequenceReplay,
            PrioritizedFrameSequenceReplay,
            PrioritizedSequenceReplay,
            SequenceReplay,
        )

        cfg = self.config
        n_envs = batch.samples.env.reward.shape[1]
        frames = cfg.frame_replay and is_image_space(self.agent.obs_space)
        kwargs = dict(
            discount=cfg.gamma, n_step=cfg.n_step, sequence_length=cfg.sequence_length,
            burn_in=cfg.burn_in, overlap=cfg.overlap, seed=self.seed,
        )  # fmt: skip
        if self.prioritized:
            cls = PrioritizedFrameSequenceReplay if frames else PrioritizedSequenceReplay
            kwargs.update(alpha=cfg.per_alpha, beta=cfg.per_beta)
        else:
            cls = FrameSequenceReplay if frames else SequenceReplay
        replay = cls(batch.samples[0, 0], cfg.buffer_size, n_envs, **kwargs)
        if self._pending_replay_state is not None:
            if holds_sources(self._pending_replay_state):  # saved with remote sources' rings
                replay = SourcedReplay(replay, self.source_envs_limit)
            replay.load_state_dict(self._pending_replay_state)
            self._pending_replay_state = None
        return replay

    # -- the target network: every target_update_interval updates --------------------------
    def before_updates(self) -> None:
        if self.updates == 0 and self._last_target_step == 0:
            self._update_target()
            self._last_target_step = -1  # synced once at the start

    def update(self, sample, target=None) -> dict[str, torch.Tensor]:
        out = super().update(sample)
        if (self.updates + 1) % self.config.target_update_interval == 0:
            self._update_target()
        return out

    @property
    def prefetch(self) -> bool:
        return False

    # -- the sequence loss -----------------------------------------------------------------
    def loss(self, sample, target=None):
        """(per-sequence loss [N], priorities [N] or None, stats) of a SequenceSample."""
        cfg, model = self.config, self.agent.model
        W, L = cfg.burn_in, cfg.sequence_length

        obs, prev_action, prev_reward, reset = sequence_inputs(sample)
        action, reward = sample.action.transpose(0, 1), sample.reward.transpose(0, 1)
        terminated = sample.terminated.transpose(0, 1)
        ended = terminated | sample.truncated.transpose(0, 1)

        def part(sl):  # the core's inputs over the steps sl
            return _map(lambda x: x[sl], obs), prev_action[sl], prev_reward[sl]

        with torch.no_grad():
            target_q, _ = self.target.unroll(obs, prev_action, prev_reward, sample.state, reset)
            target_q = target_q[W:]  # [L + n, N, A]
            state = sample.state
            if W > 0:  # burn-in: the online state from the stored one, no gradient
                _, state = model.unroll(*part(slice(0, W)), state, reset[:W])
        q, _ = model.unroll(*part(slice(W, None)), state, reset[W:])  # [L + n, N, A]
        y, valid = self._targets(q.detach(), target_q, reward[W:], terminated[W:], ended[W:])
        q_taken = q[:L].gather(-1, action[W : W + L].long().unsqueeze(-1)).squeeze(-1)
        delta = q_taken - y
        if cfg.huber_delta > 0:
            per_step = nn.functional.huber_loss(q_taken, y, reduction="none", delta=cfg.huber_delta)
        else:
            per_step = 0.5 * delta.square()
        validf = valid.to(per_step.dtype)
        per_sequence = (per_step * validf).sum(0) / validf.sum(0).clamp(min=1)
        priorities = None
        if cfg.prioritized:
            priorities = mixed_priority(delta.detach().abs(), validf, cfg.priority_eta)
        q_valid = q_taken.detach()[valid]
        stats = {"q_mean": q_valid, "masked_steps": (~valid).float().mean()}
        return per_sequence, priorities, stats

    def _targets(self, q, target_q, reward, terminated, ended):
        """(rescaled n-step double-Q targets [L, N], valid [L, N]) from the [L + n, N] tail of
        the window (q: the online network's, detached)."""
        cfg = self.config
        L, n = cfg.sequence_length, cfg.n_step
        if cfg.double:
            next_q = target_q.gather(-1, q.argmax(-1, keepdim=True)).squeeze(-1)
        else:
            next_q = target_q.max(-1).values
        if cfg.value_rescaling:
            next_q = inverse_value_rescale(next_q, cfg.rescale_eps)
        alive = torch.ones_like(reward[:L], dtype=torch.bool)  # no episode end yet in the window
        by_truncation = torch.zeros_like(alive)
        ret = torch.zeros_like(reward[:L])
        for j in range(n):
            ret = ret + alive * (cfg.gamma**j) * reward[j : j + L]
            end_j = ended[j : j + L]
            by_truncation |= alive & end_j & ~terminated[j : j + L]
            alive = alive & ~end_j
        y = ret + alive * (cfg.gamma**n) * next_q[n : n + L]
        if cfg.value_rescaling:
            y = value_rescale(y, cfg.rescale_eps)
        return y, ~by_truncation


def sequence_inputs(sample):
    """The core's inputs over a batch-major SequenceSample's windows, time-major [W, N, ...]:
    (observations, previous actions, previous rewards, resets). Step t > 0 of a window takes the
    action and reward of step t - 1, zero where an episode begins at t (the step after a
    terminated or truncated one, where the state is reset too); step 0 takes what the replay
    stored with the sequence's start state."""

    def tm(x):  # [N, W, ...] -> [W, N, ...]
        return x.transpose(0, 1)

    obs = _map(tm, sample.observation)
    action, reward = tm(sample.action), tm(sample.reward)
    ended = tm(sample.terminated) | tm(sample.truncated)
    reset = torch.zeros_like(ended)
    reset[1:] = ended[:-1]
    keep = ~reset
    prev_action = torch.cat([sample.prev_action.unsqueeze(0), action[:-1]])
    prev_action = prev_action * keep.reshape(*keep.shape, *([1] * (prev_action.dim() - 2)))
    prev_reward = torch.cat([sample.prev_reward.unsqueeze(0), reward[:-1]]) * keep
    return obs, prev_action, prev_reward, reset


def _map(fn, tree):
    if isinstance(tree, tuple):
        return type(tree)(*(None if t is None else _map(fn, t) for t in tree))
    return fn(tree)


__all__ = [
    "R2D1",
    "R2D1Config",
    "inverse_value_rescale",
    "make_r2d1_agent",
    "mixed_priority",
    "sequence_inputs",
    "value_rescale",
]
