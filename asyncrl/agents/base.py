"""What every agent offers the samplers and the runtime: act on a batch of observations, and
expose its parameters as plain tensors (what goes over the wire), with a policy version.

Owns parameter export/import and the per-env random streams of acting (``PerEnvNoise``); must
not know about losses or sockets."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from asyncrl.data import tree_map


class PerEnvNoise:
    """One numpy random stream per global env index, seeded from (seed, env index, *key).

    An env's draws depend only on the seed, its index and how many draws it made before, never
    on which process steps it or which other envs share its batch: serial and parallel sampling
    see the same noise. ``key`` tells apart streams of the same seed and env that must not be
    equal (the off-policy agents pass one: ``default_rng([seed, 0])`` is ``default_rng(seed)``,
    since SeedSequence pads with zeros, which is also the learners' replay-sampling stream)."""

    def __init__(self, seed: int = 0, key: tuple[int, ...] = ()):
        self.seed, self.key = seed, tuple(key)
        self.streams: dict[int, np.random.Generator] = {}

    def _stream(self, env_id: int) -> np.random.Generator:
        g = self.streams.get(env_id)
        if g is None:
            g = self.streams[env_id] = np.random.default_rng([self.seed, env_id, *self.key])
        return g

    def draw(self, env_ids, shape: tuple[int, ...], kind: str) -> np.ndarray:
        """[len(env_ids), *shape] float32: uniform on [0, 1) or standard normal; row i is one
        call of env ``env_ids[i]``'s stream (written in place: ~1 us per env)."""
        ids = env_ids.tolist() if isinstance(env_ids, np.ndarray) else [int(e) for e in env_ids]
        out = np.empty((len(ids), *shape), np.float32)
        if out.size == 0:
            return out
        streams, stream = self.streams, self._stream
        uniform = kind == "uniform"
        for row, e in zip(out.reshape(len(ids), -1), ids):
            g = streams.get(e) or stream(e)
            if uniform:
                g.random(dtype=np.float32, out=row)
            else:
                g.standard_normal(dtype=np.float32, out=row)
        return out

    def state_dict(self) -> dict:
        return {k: g.bit_generator.state for k, g in self.streams.items()}

    def load_state_dict(self, s: dict) -> None:
        for k, st in s.items():
            self._stream(int(k)).bit_generator.state = st


# Keys that set the off-policy agents' streams apart from other streams of the run's seed.
ENV_STREAMS_KEY = (0x0FF,)  # per-env exploration streams (DQN, DDPG/TD3/SAC): [seed, env, 0x0FF]
ACT_STREAM_KEY = 0xAC7  # their act() (evaluation): SeedSequence(seed, spawn_key=(0xAC7,))


def act_stream(seed: int) -> np.random.Generator:
    """The stream of an off-policy agent's ``act`` (evaluation), apart from every env's."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ACT_STREAM_KEY,)))


class Agent:
    """Base class: ``self.model`` is the torch module that acting needs."""

    model: nn.Module
    device: torch.device

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.policy_version = 0

    def obs_to_torch(self, obs):
        """numpy tree [N, ...] -> torch tree on the agent's device (zero copy on CPU)."""
        if self.device.type == "cpu":
            return tree_map(torch.from_numpy, obs)
        return tree_map(
            lambda x: torch.from_numpy(np.asarray(x)).to(self.device, non_blocking=True), obs
        )

    # -- parameters as plain tensors --------------------------------------------------------
    def state_tensors(self) -> OrderedDict[str, torch.Tensor]:
        """Parameters and buffers (e.g. normaliser statistics), detached, on CPU."""
        return OrderedDict((k, v.detach().cpu()) for k, v in self.model.state_dict().items())

    def load_state_tensors(
        self, tensors: dict[str, torch.Tensor], policy_version: int | None = None
    ) -> None:
        self.model.load_state_dict(tensors)
        if policy_version is not None:
            self.policy_version = policy_version

    # Plain-data acting settings that change during training (epsilon, "act at random yet")
    # travel with the parameters to agent copies in worker processes.
    acting_fields: tuple[str, ...] = ()

    def acting_state(self) -> dict:
        return {k: getattr(self, k) for k in self.acting_fields}

    def load_acting_state(self, state: dict) -> None:
        for k in self.acting_fields:
            if k in state:
                setattr(self, k, type(getattr(self, k))(state[k]))

    def rng_state(self) -> dict:
        """Random-stream state of acting (checkpointed so a resumed run continues it)."""
        noise = getattr(self, "noise", None)
        return noise.state_dict() if noise is not None else {}

    def load_rng_state(self, state: dict) -> None:
        noise = getattr(self, "noise", None)
        if noise is not None and state:
            noise.load_state_dict(state)

    def train_mode(self) -> None:
        self.model.train()

    def eval_mode(self) -> None:
        self.model.eval()
