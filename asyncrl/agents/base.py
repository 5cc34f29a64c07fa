"""What every agent offers the samplers and the runtime: act on a batch of observations, and
expose its parameters as plain tensors (what goes over the wire), with a policy version.

Owns parameter export/import; must not know about losses or sockets."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from asyncrl.data import tree_map


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
