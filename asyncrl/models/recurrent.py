"""Recurrent cores (LSTM, GRU) and the recurrent actor-critic: encoder (MLP or Nature CNN), then
the core (fed the encoding and, where configured, the previous action and reward: rlpyt's
``AgentInputs``), then the policy and value heads on the core's output.

The recurrent state is one float tensor per env, [N, S]: S = 2H for an LSTM (h then c), H for a
GRU, so it can be stored in Samples and replay like any other array. ``reset`` masks say which
steps begin an episode: the state before such a step is zero.

Owns layers and the unroll; agents own the per-env state, algorithms the losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import nn

CORES = ("none", "lstm", "gru")


class RecurrentCore(nn.Module):
    """One LSTM or GRU layer stepped one time step at a time (``step``) or over a sequence with
    episode resets (``unroll``); both compute the same numbers. An unroll runs the fused
    ``nn.LSTM``/``nn.GRU`` over each stretch of steps between the times where some env resets
    (zeroing those envs' states there), so its cost grows with the resets, not the steps."""

    def __init__(self, kind: str, input_size: int, hidden_size: int):
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ValueError(f"recurrent core must be 'lstm' or 'gru', got {kind!r}")
        self.kind, self.hidden_size = kind, int(hidden_size)
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(input_size, self.hidden_size)
        for name, p in self.rnn.named_parameters():  # CleanRL's LSTM init
            if "bias" in name:
                nn.init.zeros_(p)
            else:
                nn.init.orthogonal_(p, 1.0)
        self.state_size = self.hidden_size * (2 if kind == "lstm" else 1)

    def initial_state(self, n: int, device=None) -> torch.Tensor:
        return torch.zeros(n, self.state_size, device=device)

    def _run(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [L, N, D] from ``state`` [N, S] without resets -> (outputs [L, N, H], state)."""
        if self.kind == "lstm":
            h, c = state.split(self.hidden_size, dim=-1)
            out, (h, c) = self.rnn(x, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
            return out, torch.cat([h[0], c[0]], -1)
        out, h = self.rnn(x, state.unsqueeze(0).contiguous())
        return out, h[0]

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, D], state [N, S] -> (output [N, H], new state [N, S])."""
        out, state = self._run(x.unsqueeze(0), state)
        return out[0], state

    def unroll(
        self, x: torch.Tensor, state: torch.Tensor, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [L, N, D], state [N, S] before step 0, ``reset`` [L, N] bool (step t begins an
        episode: zero state before it) -> (outputs [L, N, H], state after the last step)."""
        L = x.shape[0]
        cuts = [] if reset is None else torch.nonzero(reset.any(dim=1)).flatten().tolist()
        outs, start = [], 0
        for t in [*cuts, L]:
            if t > start:
                out, state = self._run(x[start:t], state)
                outs.append(out)
            if t < L:
                state = state * (~reset[t]).to(state.dtype).unsqueeze(-1)
            start = t
        return torch.cat(outs), state


def action_features(space: gym.Space) -> int:
    """Width of the previous-action input: one-hot for Discrete, the vector for a Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box):
        return int(torch.tensor(space.shape).prod()) if space.shape else 1
    raise ValueError(f"previous-action input: unsupported action space {space!r}")


def encode_action(space: gym.Space, action: torch.Tensor) -> torch.Tensor:
    """Actions [N, ...] -> float features [N, action_features(space)]."""
    if isinstance(space, gym.spaces.Discrete):
        return nn.functional.one_hot(action.long().reshape(-1), int(space.n)).float()
    return action.reshape(action.shape[0], -1).float()


class RecurrentActorCritic(nn.Module):
    """pi(a | history) and V(history): encoder -> [prev action, prev reward] -> core -> heads.

    ``step(obs, prev_action, prev_reward, state)`` on [N] inputs returns (dist, value [N], new
    state); ``unroll(obs, prev_action, prev_reward, state, reset)`` on [L, N] inputs returns
    (dist over the L*N steps in time-major order, value [L*N], final state).
    """

    recurrent = True

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, config):
        super().__init__()
        from asyncrl.models.heads import PolicyHead
        from asyncrl.models.mlp import MLP, orthogonal_init

        self.action_space = action_space
        build_core(self, obs_space, action_space, config)
        # optional MLPs between the core and each head (RL-Zoo's net_arch after the LSTM)
        sizes = list(getattr(config, "core_head_sizes", []) or [])
        self.pi_mlp = orthogonal_init(MLP(config.core_size, sizes, None, config.activation))
        self.v_mlp = orthogonal_init(MLP(config.core_size, sizes, None, config.activation))
        self.pi = PolicyHead(self.pi_mlp.output_size, action_space, config.init_log_std)
        self.v = nn.Linear(self.v_mlp.output_size, 1)
        nn.init.orthogonal_(self.v.weight, 1.0)
        nn.init.zeros_(self.v.bias)

    def _encode(self, obs) -> torch.Tensor:
        if self.image:
            return self.encoder(obs)
        x = self.flatten(obs)
        if self.normalizer is not None:
            x = self.normalizer(x)
        return self.encoder(x)

    def _inputs(self, obs, prev_action, prev_reward) -> torch.Tensor:
        parts = [self._encode(obs)]
        if self.prev_action:
            parts.append(encode_action(self.action_space, prev_action))
        if self.prev_reward:
            parts.append(prev_reward.reshape(-1, 1).float())
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def step(self, obs, prev_action, prev_reward, state):
        out, state = self.core.step(self._inputs(obs, prev_action, prev_reward), state)
        return self.pi(self.pi_mlp(out)), self.v(self.v_mlp(out)).squeeze(-1), state

    def unroll(self, obs, prev_action, prev_reward, state, reset=None):
        """Inputs [L, N, ...] (``obs`` a tree); returns (dist [L*N], value [L*N], state)."""
        out, state = unroll_core(self, obs, prev_action, prev_reward, state, reset)
        out = _fold(out)
        return self.pi(self.pi_mlp(out)), self.v(self.v_mlp(out)).squeeze(-1), state


def build_core(model: nn.Module, obs_space: gym.Space, action_space: gym.Space, config) -> None:
    """The encoder and the core of a recurrent model (actor-critic or Q-network), set on
    ``model`` in this order: ``image, flatten, normalizer, encoder``, ``prev_action``,
    ``prev_reward`` (the extra inputs' flags), ``core`` and ``state_size``."""
    from asyncrl.models.policies import build_encoder

    model.image, model.flatten, model.normalizer, model.encoder = build_encoder(obs_space, config)
    feat = model.encoder.output_size
    model.prev_action = bool(config.core_prev_action)
    model.prev_reward = bool(config.core_prev_reward)
    extra = (action_features(action_space) if model.prev_action else 0) + int(model.prev_reward)
    model.core = RecurrentCore(config.core, feat + extra, config.core_size)
    model.state_size = model.core.state_size


def _fold(x: torch.Tensor) -> torch.Tensor:
    """[L, N, ...] -> [L * N, ...] (time-major)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unroll_core(model, obs, prev_action, prev_reward, state, reset):
    """A recurrent model's core over [L, N] inputs: the encoder and extra inputs on all L * N
    steps at once, then the core's unroll -> (outputs [L, N, H], state after the last step)."""
    lead = prev_reward.shape
    x = model._inputs(_map_leaves(_fold, obs), _fold(prev_action), _fold(prev_reward))
    return model.core.unroll(x.reshape(*lead, -1), state, reset)


def _map_leaves(fn, tree):
    """``fn`` on every tensor of an observation tree (a namedarraytuple of tensors, or one)."""
    if isinstance(tree, tuple):
        return type(tree)(*(None if t is None else _map_leaves(fn, t) for t in tree))
    return fn(tree)


@dataclass
class RecurrentQConfig:
    """The recurrent Q-network's settings (R2D1's config fills them)."""

    hidden_sizes: list[int] = field(default_factory=list)  # MLP encoder (vector observations)
    activation: str = "relu"
    core: str = "lstm"
    core_size: int = 512
    core_prev_action: bool = True
    core_prev_reward: bool = True
    dueling: bool = True
    head_hidden: int = 512
    normalize_obs: bool = False  # not offered: a running normaliser would drift under replay


class RecurrentQNetwork(nn.Module):
    """Q(history, .) for R2D1: encoder -> [prev action, prev reward] -> core -> dueling head.

    ``config`` names ``hidden_sizes, activation, normalize_obs`` (the encoder, as for the
    actor-critic), ``core, core_size, core_prev_action, core_prev_reward``, ``dueling`` and
    ``head_hidden`` (units of each head stream's hidden layer, 0: linear). ``step`` on [N]
    inputs returns (Q [N, A], new state); ``unroll`` on [L, N] inputs (Q [L, N, A], state).
    """

    recurrent = True

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, config):
        super().__init__()
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"R2D1 needs a Discrete action space, got {action_space!r}")
        self.action_space = action_space
        self.n_actions = int(action_space.n)
        build_core(self, obs_space, action_space, config)
        hidden = int(config.head_hidden)

        def stream(out: int) -> nn.Module:
            if hidden > 0:
                return nn.Sequential(
                    nn.Linear(config.core_size, hidden), nn.ReLU(), nn.Linear(hidden, out)
                )
            return nn.Linear(config.core_size, out)

        self.advantage = stream(self.n_actions)
        self.value = stream(1) if config.dueling else None

    _encode = RecurrentActorCritic._encode
    _inputs = RecurrentActorCritic._inputs

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        a = self.advantage(out)
        if self.value is None:
            return a
        return self.value(out) + a - a.mean(-1, keepdim=True)  # Wang et al. 2016, eq. 9

    def step(self, obs, prev_action, prev_reward, state):
        out, state = self.core.step(self._inputs(obs, prev_action, prev_reward), state)
        return self._head(out), state

    def unroll(self, obs, prev_action, prev_reward, state, reset=None):
        """Inputs [L, N, ...] (``obs`` a tree) -> (Q [L, N, A], state after the last step)."""
        out, state = unroll_core(self, obs, prev_action, prev_reward, state, reset)
        return self._head(out), state
