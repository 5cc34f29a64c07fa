"""Deep Q-learning (Mnih et al. 2015) with the usual options: double Q-learning (van Hasselt et
al. 2016), dueling heads (Wang et al. 2016), prioritized replay (Schaul et al. 2016), n-step
returns. The replay buffer is fed the sampler's batches and computes n-step targets; this file
owns the loss, the target network and the replay ratio. C51 and Rainbow extend it in c51.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from asyncrl.agents.dqn import DqnAgent, linear_schedule
from asyncrl.algos.optim import clip_grad_norm, frozen_copy, make_adam
from asyncrl.data import to_torch, tree_leaves
from asyncrl.models.noisy import reset_noise
from asyncrl.models.policies import is_image_space
from asyncrl.models.q import QModelConfig

# Largest block of replay minibatches drawn in one call (see DQN._minibatches).
_BLOCK_BYTES = 8 << 20


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


class DQN:
    stat_names = ("loss", "q_mean")  # what optimize() reports besides epsilon (and per_beta)

    def __init__(self, agent: DqnAgent, config: DQNConfig, seed: int = 0):
        self.agent, self.config = agent, config
        self.target = frozen_copy(agent.model)
        self.params = list(agent.model.parameters())
        # Fused Adam: the same update, a third of the time on CPU at CartPole sizes.
        self.optimizer = make_adam(self.params, config.learning_rate, config.adam_eps)
        self.replay = None
        self._pending_replay_state = None
        self._block_numpy = None  # preallocated replay minibatches, filled in place
        self._block_torch = None  # torch views of it, made once
        self._transition_bytes = 0
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.updates = 0
        self._update_credit = 0.0
        self._last_target_step = 0
        self._learning_resumes_at = 0  # after a resume without the replay: refill it first
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
        if cfg.replay_service:
            from asyncrl.replay.service import ReplayService

            kind = ("prioritized_" if cfg.prioritized else "") + ("frame" if frames else "")
            kind = {"prioritized_": "prioritized", "": "uniform"}.get(kind, kind)
            kwargs = {"discount": cfg.gamma, "n_step": cfg.n_step}
            if cfg.prioritized:
                kwargs.update(alpha=cfg.per_alpha, beta=cfg.per_beta)
            replay = ReplayService(kind, example, cfg.buffer_size, n_envs, seed=self.seed, **kwargs)
        elif cfg.prioritized:
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

    def _update_target(self) -> None:
        tau = self.config.tau
        with torch.no_grad():
            if tau >= 1.0:
                self.target.load_state_dict(self.agent.model.state_dict())
            else:
                for t, s in zip(self.target.parameters(), self.agent.model.parameters()):
                    t.lerp_(s, tau)

    def _minibatches(self, n_updates: int) -> Iterator[tuple]:
        """Yield ``n_updates`` (replay minibatch, its TD target or None), one per update.

        Uniform replay does not change during a training phase (the sampler's steps are appended
        before it), and neither does the target network (it is updated between phases). So the
        phase's minibatches are drawn in one ``sample`` call per block of up to
        ``_BLOCK_BYTES``, the target network runs once over the whole block, and each update
        gets its slice: the same i.i.d. uniform draws and the same targets, without a replay
        call, a batch conversion and a target-network pass per update. The TD target is
        precomputed too unless it needs the online network (``double``: it changes every
        update; then None is yielded and :meth:`loss` computes it). Prioritized replay changes
        after every update (new priorities) and noisy nets draw new target noise per update, so
        those are sampled and evaluated once per update (as is a replay service, which samples
        remotely). On CPU the numpy block is allocated once and its torch views made once (zero
        copy); a block is overwritten only after all its minibatches were used.
        """
        cfg = self.config
        size = cfg.batch_size
        if cfg.prioritized or cfg.noisy or cfg.replay_service:
            per_block = 1
        else:
            if self._transition_bytes == 0:
                batch = self.replay.batch_buffer(1)
                self._transition_bytes = sum(x.nbytes for x in tree_leaves(batch))
            per_block = max(1, min(n_updates, _BLOCK_BYTES // (size * self._transition_bytes)))
        done = 0
        while done < n_updates:
            k = min(per_block, n_updates - done)
            block = self._sample_block(k * size)
            if k == 1:
                yield block, None
            else:
                with torch.no_grad():
                    next_target = self.target(block.next_observation)
                    targets = None if cfg.double else self.td_target(block, next_target)
                for i in range(k):
                    part = slice(i * size, (i + 1) * size)
                    minibatch = block[part]
                    if targets is not None:
                        yield minibatch, targets[part]
                    else:
                        yield minibatch, self.td_target(minibatch, next_target[part])
            done += k

    def _sample_block(self, n: int):
        """``n`` transitions from the replay as one torch batch on the agent's device."""
        if self._block_numpy is None or len(self._block_numpy.indices) < n:
            self._block_numpy = self.replay.batch_buffer(n)
            self._block_torch = to_torch(self._block_numpy)
        whole = len(self._block_numpy.indices) == n
        out = self._block_numpy if whole else self._block_numpy[:n]
        self.replay.sample(n, self.rng, out=out)
        if self.agent.device.type != "cpu":
            return to_torch(out, self.agent.device)
        return self._block_torch if whole else self._block_torch[:n]

    def _clip_gradients(self) -> None:
        clip_grad_norm(self.params, self.config.max_grad_norm)

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
        # The same keys in every call (NaN until there are updates): progress.csv takes its
        # columns from the first row, which comes before learning starts.
        stats: dict[str, float] = {"epsilon": agent.epsilon}
        stats.update(dict.fromkeys(self.stat_names, math.nan))
        if cfg.prioritized:
            stats["per_beta"] = self.replay.beta
        if self.env_steps < max(cfg.learning_starts, self._learning_resumes_at):
            return stats
        if cfg.prioritized:
            stats["per_beta"] = self.replay.anneal_beta(progress)
        self._update_credit += cfg.replay_ratio * batch.env_steps
        n_updates = int(self._update_credit + 1e-9)  # 3 * (4 / 3) is 3.9999...: still 4
        self._update_credit -= n_updates
        if (
            self.env_steps - self._last_target_step >= cfg.target_update_interval
            or self.updates == 0
        ):
            self._update_target()
            self._last_target_step = self.env_steps
        # Losses and stats stay tensors until the phase ends: one conversion per phase, not a
        # host sync per update (which would stall a GPU every step).
        losses: list[torch.Tensor] = []
        extras: dict[str, list[torch.Tensor]] = {}
        agent.train_mode()
        for sample, target in self._minibatches(n_updates):
            if cfg.noisy:  # one minibatch per block: the target is computed after this
                reset_noise(agent.model)
                reset_noise(self.target)
            per_sample, priorities, extra = self.loss(sample, target)
            loss = (per_sample * sample.weights).mean() if cfg.prioritized else per_sample.mean()
            for p in self.params:  # zero_grad(set_to_none=True), without its per-call overhead
                p.grad = None
            loss.backward()
            if cfg.max_grad_norm > 0:
                self._clip_gradients()
            self.optimizer.step()
            if cfg.prioritized:
                self.replay.update_priorities(
                    sample.indices.cpu().numpy(), priorities.cpu().numpy()
                )
            losses.append(loss.detach())
            for k, v in extra.items():
                extras.setdefault(k, []).append(v)
            self.updates += 1
        agent.eval_mode()
        agent.policy_version += 1
        if losses:
            stats["loss"] = torch.stack(losses).mean().item()
            for k, v in extras.items():
                stats[k] = torch.cat(v).mean().item()  # over every sample of the phase
        return stats

    def close(self) -> None:
        """Stop a replay store process, if the replay runs as a service."""
        if self.replay is not None and hasattr(self.replay, "close"):
            self.replay.close()

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
        if self._pending_replay_state is None:
            # Saved without its replay (save_replay = false): the buffer restarts empty, so wait
            # for learning_starts new steps before updating, as at the start of a run.
            self._learning_resumes_at = self.env_steps + self.config.learning_starts
