"""The replay base of the off-policy algorithms (DQN, C51/Rainbow, DDPG, TD3, SAC): make the replay
from the first batch and feed it every batch, hold the replay ratio after ``learning_starts``,
draw the minibatches, keep the priorities, save and restore the buffer with checkpoints.
Subclasses own the update (targets, loss, optimizer steps, target networks) and their exploration
schedule; this module must not know a loss."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from asyncrl.algos import ddp
from asyncrl.data import to_torch, tree_leaves
from asyncrl.models.policies import is_image_space
from asyncrl.models.qpg import cpu_matmul_context
from asyncrl.replay.sources import SourcedReplay, holds_sources

# Layers whose forward depends on train()/eval(). The MLPs and Q-networks here have none, so the
# learners skip the train()/eval() switch (walking the modules costs ~0.1 ms per phase).
_MODE_DEPENDENT = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)

# Largest block of replay minibatches drawn in one call (see ReplayLearner._minibatches).
_BLOCK_BYTES = 8 << 20


def updates_per_env_step(config) -> float:
    """Gradient updates per env step: ``replay_ratio``, unless the config counts its ratio in
    other units and says how many updates that is (R2D1: trained sequence steps per env step)."""
    return float(getattr(config, "updates_per_env_step", config.replay_ratio))


def agent_recurrent(agent) -> bool:
    return bool(getattr(agent, "recurrent", False))


class ReplayLearner:
    """What every off-policy learner shares; ``optimize(batch, progress)`` is the runner's entry.

    Per sampler batch: append it to the replay (made from the first batch), run the subclass's
    :meth:`schedule`, and once ``learning_starts`` env steps are in (or, after a resume without
    the replay, as many new ones), run ``floor(credit)`` updates, where the credit grows by
    ``replay_ratio * batch.env_steps`` per batch and keeps its fraction: ``replay_ratio`` counts
    gradient updates per env step (0.25: one update of ``batch_size`` transitions every 4 steps).
    The batch that reaches ``learning_starts`` counts whole.

    A subclass passes its config to ``__init__`` and implements

    - ``update(sample) -> dict``: one gradient step on a replay minibatch; the statistics are
      tensors (0-d, or per sample: a phase reports the mean over all their elements), so there
      is no host sync per update. Names in ``stat_names`` are reported on every call (NaN until
      the first update, then their latest value).
    - ``learner_state() -> dict`` / ``load_learner_state(s)``: its networks, optimizers, counters.

    and may override ``schedule(progress)`` (per batch, e.g. DQN's epsilon), ``before_updates()``
    (per batch once learning has started, e.g. DQN's target-network sync), and set ``prefetch``
    with ``precompute`` (draw a phase's minibatches in blocks; see :meth:`_minibatches`). With
    prioritized replay its loss uses :meth:`weighted_mean` and it hands the new priorities to
    :meth:`update_priorities`.

    Config fields read: ``buffer_size, gamma, batch_size, learning_starts, replay_ratio,
    save_replay``; optional, off when absent: ``n_step`` (1), ``prioritized`` (with ``per_alpha,
    per_beta``), ``frame_replay`` (store image frames once), ``replay_service`` (the replay in its
    own process), ``onednn_matmul`` (CPU updates through oneDNN, see models/qpg.py).
    """

    stat_names: tuple[str, ...] = ()
    prefetch: bool = False  # may a phase's minibatches be drawn ahead, in blocks?
    # Envs of all remote sources' rings together (asynchronous runs with remote workers: see
    # asyncrl.replay.sources); the learner process sets it from sampler.max_remote_envs.
    source_envs_limit: int = 1024

    def __init__(self, agent, config, seed: int = 0):
        self.agent, self.config, self.seed = agent, config, seed
        self.replay = None
        self._pending_replay_state = None  # from a checkpoint, loaded when the replay is made
        self.rng = np.random.default_rng(seed)  # replay sampling
        self.env_steps = 0
        self.updates = 0
        self._update_credit = 0.0
        self._learning_resumes_at = 0  # after a resume without the replay: refill it first
        self._block_numpy = None  # preallocated replay minibatches, filled in place
        self._block_torch = None  # on CPU, torch views of it, made once
        self._transition_bytes = 0
        self._batch_stats: dict[str, float] = {}  # this batch's schedule values (epsilon)
        self._last_stats: dict[str, float] = {}  # latest value of each update statistic
        self._replay_stats: dict[str, float] = {}  # prioritized replay: its beta
        self._mode_dependent: bool | None = None  # does the model behave differently in train()?

    # -- what subclasses implement --------------------------------------------------------
    def update(self, sample) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def schedule(self, progress: float) -> dict[str, float]:
        """Per-batch schedules (before the learning gate); returns values to report."""
        return {}

    def before_updates(self) -> None:
        """Once per batch after learning has started, before its updates (even if none)."""

    def precompute(self, block, minibatches: list) -> Iterable:
        """One item per minibatch of a prefetched block, passed to ``update`` as its second
        argument unless None; read lazily, just before that minibatch's update."""
        return itertools.repeat(None)

    def learner_state(self) -> dict:
        return {}

    def load_learner_state(self, s: dict) -> None:
        pass

    # -- the replay ----------------------------------------------------------------------
    @property
    def prioritized(self) -> bool:
        return getattr(self.config, "prioritized", False)

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
        n_step = getattr(cfg, "n_step", 1)
        frames = getattr(cfg, "frame_replay", False) and is_image_space(self.agent.obs_space)
        prioritized = {"alpha": cfg.per_alpha, "beta": cfg.per_beta} if self.prioritized else {}
        if getattr(cfg, "replay_service", False):
            from asyncrl.replay.service import ReplayService

            kind = "_".join(["prioritized"] * bool(prioritized) + ["frame"] * frames) or "uniform"
            replay = ReplayService(
                kind,
                example,
                cfg.buffer_size,
                n_envs,
                seed=self.seed,
                discount=cfg.gamma,
                n_step=n_step,
                **prioritized,
            )
            replay.source_envs_limit = self.source_envs_limit
        elif prioritized:
            cls = PrioritizedFrameReplay if frames else PrioritizedReplay
            replay = cls(
                example, cfg.buffer_size, n_envs, cfg.gamma, n_step, **prioritized, seed=self.seed
            )
        else:
            cls = FrameReplay if frames else UniformReplay
            replay = cls(example, cfg.buffer_size, n_envs, cfg.gamma, n_step, seed=self.seed)
        if self._pending_replay_state is not None:
            if holds_sources(self._pending_replay_state) and not hasattr(replay, "takes_sources"):
                replay = SourcedReplay(replay, self.source_envs_limit)
            replay.load_state_dict(self._pending_replay_state)
            self._pending_replay_state = None
        return replay

    def weighted_mean(self, per_sample: torch.Tensor, sample) -> torch.Tensor:
        """The minibatch loss from per-sample losses [N]: their mean, weighted under prioritized
        replay by the importance-sampling weights (N P(i))^-beta / max_j w_j that correct for
        the non-uniform draw (Schaul et al. 2016, alg. 1 line 10)."""
        if self.prioritized:
            return (per_sample * sample.weights).mean()
        return per_sample.mean()

    def update_priorities(self, sample, priorities: torch.Tensor | None) -> None:
        """New priorities [N] (e.g. |TD error|) of a minibatch's transitions; prioritized
        replay only (a no-op otherwise)."""
        if self.prioritized:
            # data-parallel learners: every share's, so that the replicas stay equal
            indices, priorities = ddp.gather(sample.indices), ddp.gather(priorities)
            self.replay.update_priorities(indices.cpu().numpy(), priorities.cpu().numpy())

    # -- one sampler batch ---------------------------------------------------------------
    def optimize(self, batch, progress: float) -> dict[str, float]:
        cfg, agent = self.config, self.agent
        if batch.source:  # a remote worker's steps: a ring of their own
            if self.replay is None:
                raise ValueError("a remote source's batch before the first local one")
            if not hasattr(self.replay, "takes_sources"):
                self.replay = SourcedReplay(self.replay, self.source_envs_limit)
            self.replay.append(batch.samples, batch.final_observations, source=batch.source)
        else:
            if self.replay is None:
                self.replay = self._make_replay(batch)
            self.replay.append(batch.samples, batch.final_observations)
            done = batch.samples.env.terminated[-1] | batch.samples.env.truncated[-1]
            # (a recurrent agent's acting copy already zeroed those envs' states)
            if hasattr(agent, "on_episode_end") and done.any() and not agent_recurrent(agent):
                agent.on_episode_end(done)  # e.g. restart the OU noise of those envs
        self.env_steps += batch.env_steps
        self._batch_stats = self.schedule(progress)
        if self.prioritized:
            # beta is annealed only once learning has started; before, it is the initial one
            self._replay_stats["per_beta"] = cfg.per_beta
        if self.env_steps < max(cfg.learning_starts, self._learning_resumes_at):
            return self._stats()
        if getattr(agent, "random_actions", False):
            agent.random_actions = False  # the uniform warm-up (DDPG, TD3, SAC) ends
        if self.prioritized:
            self._replay_stats["per_beta"] = self.replay.anneal_beta(progress)
        self._update_credit += updates_per_env_step(cfg) * batch.env_steps
        n_updates = int(self._update_credit + 1e-9)  # 3 * (4 / 3) is 3.9999...: still 4
        self._update_credit -= n_updates
        self.before_updates()
        if n_updates > 0:
            self._run_updates(n_updates)
        return self._stats()

    def _run_updates(self, n_updates: int) -> None:
        cfg, agent = self.config, self.agent
        stats: dict[str, list[torch.Tensor]] = {}
        if self._mode_dependent is None:
            self._mode_dependent = any(
                isinstance(m, _MODE_DEPENDENT) for m in agent.model.modules()
            )
        if self._mode_dependent:
            agent.train_mode()
        with cpu_matmul_context(getattr(cfg, "onednn_matmul", False), agent.device):
            for sample, precomputed in self._minibatches(n_updates):
                # data-parallel learners: each its share (identity with one learner)
                sample, precomputed = ddp.shard(sample), ddp.shard(precomputed)
                if precomputed is None:
                    out = self.update(sample)
                else:
                    out = self.update(sample, precomputed)
                for k, v in out.items():
                    stats.setdefault(k, []).append(v)
                self.updates += 1
        if self._mode_dependent:
            agent.eval_mode()
        agent.policy_version += 1
        if stats:
            # Statistics stay tensors during the updates; one host sync here for all of them.
            means = [
                torch.cat([torch.as_tensor(x).reshape(-1) for x in v]).float().mean()
                for v in stats.values()
            ]
            self._last_stats.update(zip(stats, torch.stack(means).tolist()))

    def _stats(self) -> dict[str, float]:
        # Every call returns the same keys, so progress.csv (whose columns its first row fixes)
        # has a column per statistic from the start: NaN before the first update, and for a
        # statistic this call's updates did not produce (TD3's delayed actor loss, or no update
        # in this call) its latest.
        return {
            **self._batch_stats,
            **dict.fromkeys(self.stat_names, math.nan),
            **self._last_stats,
            **self._replay_stats,
        }

    # -- minibatches ---------------------------------------------------------------------
    def _minibatches(self, n_updates: int) -> Iterator[tuple]:
        """Yield ``n_updates`` (replay minibatch, what :meth:`precompute` gave for it or None).

        Uniform in-process replay does not change during a phase (the sampler's steps are
        appended before it), so a learner that sets ``prefetch`` gets the phase's minibatches
        from one ``sample`` call per block of up to ``_BLOCK_BYTES``: the same i.i.d. uniform
        draws without a replay call and a batch conversion per update, and ``precompute`` may
        run a network once over the whole block (DQN's target network; the target network is
        updated between phases). Prioritized replay changes after every update (new
        priorities) and a replay service samples remotely, so those draw one minibatch per
        update, as do learners without ``prefetch``. On CPU the numpy block is allocated once
        and its torch views made once (zero copy); a block is overwritten only after all its
        minibatches were used.
        """
        size = self.config.batch_size
        if not self.prefetch or self.prioritized or getattr(self.config, "replay_service", False):
            per_block = 1
        else:
            if self._transition_bytes == 0:
                one = self.replay.batch_buffer(1)
                self._transition_bytes = sum(x.nbytes for x in tree_leaves(one))
            per_block = max(1, min(n_updates, _BLOCK_BYTES // (size * self._transition_bytes)))
        done = 0
        while done < n_updates:
            k = min(per_block, n_updates - done)
            block = self._sample_block(k * size)
            if k == 1:
                yield block, None
            else:
                minibatches = [block[i * size : (i + 1) * size] for i in range(k)]
                yield from zip(minibatches, self.precompute(block, minibatches))
            done += k

    def _sample_block(self, n: int):
        """``n`` transitions from the replay as one torch batch on the agent's device."""
        if self._block_numpy is None or len(self._block_numpy.indices) < n:
            self._block_numpy = self.replay.batch_buffer(n)
            if self.agent.device.type == "cpu":
                self._block_torch = to_torch(self._block_numpy)
        whole = len(self._block_numpy.indices) == n
        out = self._block_numpy if whole else self._block_numpy[:n]
        self.replay.sample(n, self.rng, out=out)
        if self._block_torch is None:
            return to_torch(out, self.agent.device)
        return self._block_torch if whole else self._block_torch[:n]

    def _sample(self):
        """One replay minibatch of ``batch_size`` (reused buffers: see :meth:`_sample_block`)."""
        return self._sample_block(self.config.batch_size)

    # -- life cycle and checkpoints ------------------------------------------------------
    def close(self) -> None:
        """Stop a replay store process, if the replay runs as a service."""
        if self.replay is not None and hasattr(self.replay, "close"):
            self.replay.close()

    def state_dict(self) -> dict:
        s = {
            "learner": self.learner_state(),
            "updates": self.updates,
            "env_steps": self.env_steps,
            "update_credit": self._update_credit,
            "rng": self.rng.bit_generator.state,
            "agent_rng": self.agent.rng.bit_generator.state,
            "acting": self.agent.acting_state(),  # epsilon, random_actions
        }
        if self.config.save_replay:
            # Resumed but not fed a batch yet: the replay is still the checkpoint's.
            replay = self._pending_replay_state if self.replay is None else self.replay.state_dict()
            if replay is not None:
                s["replay"] = replay
        return s

    def load_state_dict(self, s: dict) -> None:
        # Checkpoints from before DQN shared this base hold DQN's state (optimizer, target,
        # last_target_step) and the acting fields (epsilon or random_actions) at the top level.
        self.load_learner_state(s["learner"] if "learner" in s else s)
        self.updates, self.env_steps = s["updates"], s["env_steps"]
        self._update_credit = s["update_credit"]
        self.rng.bit_generator.state = s["rng"]
        self.agent.rng.bit_generator.state = s["agent_rng"]
        self.agent.load_acting_state(s.get("acting", s))
        self._pending_replay_state = s.get("replay")
        if self._pending_replay_state is None:
            # Saved without its replay (save_replay = false): the buffer restarts empty, so wait
            # for learning_starts new steps before updating, as at the start of a run.
            self._learning_resumes_at = self.env_steps + self.config.learning_starts
