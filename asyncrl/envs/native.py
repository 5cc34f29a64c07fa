"""Native vectorized env backends behind the same env spec and the same interface as VecEnv.

Owns: choosing a backend for a spec (``make_vec_env``), a numpy-vectorized CartPole, and an
adapter over ale-py's C++ ``AtariVectorEnv``. Must not know about agents or samplers.

Why: ``VecEnv`` steps B gymnasium envs in a Python loop (tens of microseconds of Python per env
step); for cheap envs that overhead *is* the cost. A native backend steps all B envs in one call.

Semantics are VecEnv's, exactly (see asyncrl/envs/vector.py): same-step autoreset (``obs[b]`` is
already the next episode's first observation when env b ends), ``terminated``/``truncated`` with
terminated winning when both hold, ``final_obs`` = ``(b, last_obs)`` for truncations only,
episode statistics on the raw reward, and for Atari the training-only life-loss terminal and
reward clipping applied after the statistics. Env b is seeded with ``seed + b`` on the first
``reset()``; later resets continue that env's random stream.

Backends (``EnvSpec.backend``):

- ``gymnasium``: always ``VecEnv``.
- ``native``: the native backend, or an ``EnvError`` saying why the spec has none.
- ``auto`` (default): native where one exists for the spec, otherwise ``VecEnv``, silently.
  Native is used only for a plain spec it reproduces exactly: no render mode and no env kwargs
  beyond the ones listed per backend; anything else falls back to gymnasium.

CartPole (``CartPole-v0``/``CartPole-v1``, no kwargs): our own numpy implementation of the
classic cart-pole (Barto, Sutton & Anderson 1983) with gymnasium's constants, Euler integrator,
thresholds, reward (1 per step, the failing step included) and time limit (the registered one, or
``spec.max_episode_steps``). Initial states are drawn exactly as gymnasium's ``CartPoleEnv`` does
(uniform in [-0.05, 0.05]^4 from ``gymnasium.utils.seeding.np_random(seed + b)``), and the dynamics
are evaluated in float64 in gymnasium's operation order, so with the same seeds and actions the
trajectories equal VecEnv's. (gymnasium's own ``CartPoleVectorEnv`` resets on the *next* step,
which breaks same-step semantics; hence our own.)

Atari (ids registered by ale-py, e.g. ``ALE/Pong-v5`` -> ROM ``pong``): ale-py's
``AtariVectorEnv`` in ``SameStep`` autoreset mode with the spec's DQN preprocessing
(``frame_skip`` with max-pooling of the last two frames, ``noop_max`` no-op starts, grayscale
``screen_size`` x ``screen_size`` frames, ``frame_stack`` frames, FIRE at each game's start
when ``spec.fire_reset`` (as VecEnv's ``FireReset``), no reward clipping and no episodic life
inside ALE). Life loss (from the ``lives`` counter) and reward
clipping are applied here, after the statistics, as VecEnv does. ALE pads the frame stack of a
fresh episode with zeros while gymnasium's ``FrameStackObservation`` repeats the first frame;
we repeat the first frame too, so observations are pixel-identical to VecEnv's for the same game
state. Env kwargs accepted: ``repeat_action_probability``, ``full_action_space``,
``max_num_frames_per_episode``; ``spec.max_episode_steps`` counts emulator frames there, as it
does for VecEnv (whose TimeLimit wraps the frameskip-1 ALE env). The no-op starts draw from
ALE's own generator, so trajectories are reproducible per seed but not equal to VecEnv's.
Worker threads: ``min(num_envs, cores available)`` (env var ``ASYNCRL_ALE_THREADS`` overrides).

EnvPool is not a backend: its autoreset happens on the step *after* an episode ends (one extra
step per episode, with the action ignored), which is not VecEnv's contract.
"""

from __future__ import annotations

import math
import os
from typing import Any

import gymnasium as gym
import numpy as np

from asyncrl.envs.spaces import space_example
from asyncrl.envs.spec import EnvError, EnvSpec, validate_env_id
from asyncrl.envs.vector import EpisodeStats, VecEnv

BACKENDS = ("auto", "gymnasium", "native")


def make_vec_env(
    spec: EnvSpec,
    num_envs: int,
    seed: int = 0,
    training: bool = True,
    render_mode: str | None = None,
):
    """A vector of ``num_envs`` envs for ``spec`` on the backend ``spec.backend`` selects.

    Returns a ``VecEnv`` or a native backend with the same interface and semantics."""
    backend = getattr(spec, "backend", "auto")
    if backend not in BACKENDS:
        raise EnvError(f"unknown env backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "gymnasium":
        return VecEnv(spec, num_envs, seed=seed, training=training, render_mode=render_mode)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    cls, reason = native_backend(spec, render_mode)
    if cls is None:
        if backend == "native":
            raise EnvError(f"env {spec.id!r} has no native backend: {reason}")
        return VecEnv(spec, num_envs, seed=seed, training=training, render_mode=render_mode)
    return cls(spec, num_envs, seed=seed, training=training)


def native_backend(spec: EnvSpec, render_mode: str | None = None):
    """(backend class, "") for a spec a native backend reproduces exactly, else (None, why)."""
    family = validate_env_id(spec)
    if render_mode is not None:
        return None, "rendering needs the gymnasium backend"
    if ":" in spec.id:
        return None, "user env classes run on the gymnasium backend"
    if spec.id in CARTPOLE_IDS and family == "classic":
        if spec.kwargs:
            return None, f"env kwargs {sorted(spec.kwargs)} are not supported natively"
        return NativeCartPole, ""
    if family == "atari":
        why = _atari_unsupported(spec)
        return (None, why) if why else (NativeAtari, "")
    return None, "only CartPole and Atari (ale-py) have native backends"


class _NativeBase:
    """Buffers, episode statistics and context management shared by the native backends."""

    def _init_buffers(self, num_envs: int) -> None:
        self.obs_example = space_example(self.observation_space)
        self.action_example = space_example(self.action_space)
        self.obs = np.zeros((num_envs, *self.obs_example.shape), self.obs_example.dtype)
        self.reward = np.zeros(num_envs, np.float32)
        self.terminated = np.zeros(num_envs, bool)
        self.truncated = np.zeros(num_envs, bool)
        self._ep_return = np.zeros(num_envs, np.float64)
        self._ep_length = np.zeros(num_envs, np.int64)
        self._done_returns: list[float] = []
        self._done_lengths: list[int] = []
        self._needs_reset = True

    def _record_episodes(self, idx: np.ndarray) -> None:
        self._done_returns.extend(self._ep_return[idx].tolist())
        self._done_lengths.extend(self._ep_length[idx].tolist())
        self._ep_return[idx] = 0.0
        self._ep_length[idx] = 0

    def pop_episode_stats(self) -> EpisodeStats:
        stats = EpisodeStats(self._done_returns, self._done_lengths)
        self._done_returns, self._done_lengths = [], []
        return stats

    def _discrete_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.dtype != np.int64 and a.dtype != np.int32:
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"discrete actions must be integers, got dtype {a.dtype}")
            a = a.astype(np.int64)
        if a.shape != (self.num_envs,):
            a = a.reshape(self.num_envs)
        if a.min() < 0 or a.max() >= self._n_actions:
            raise ValueError(f"actions {a.tolist()} outside {self.action_space}")
        return a

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------- CartPole

CARTPOLE_IDS = ("CartPole-v0", "CartPole-v1")
# gymnasium.envs.classic_control.cartpole.CartPoleEnv's constants
_GRAVITY = 9.8
_MASSCART = 1.0
_MASSPOLE = 0.1
_TOTAL_MASS = _MASSPOLE + _MASSCART
_LENGTH = 0.5  # half the pole's length
_POLEMASS_LENGTH = _MASSPOLE * _LENGTH
_FORCE_MAG = 10.0
_TAU = 0.02  # seconds between state updates
_THETA_THRESHOLD = 12 * 2 * math.pi / 360
_X_THRESHOLD = 2.4
_INIT_BOUND = 0.05


class NativeCartPole(_NativeBase):
    """B cart-poles stepped together in numpy; VecEnv's interface and semantics."""

    backend = "native"

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int = 0, training: bool = True):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.spec = spec
        self.family = "classic"
        self.num_envs = num_envs
        self.seed = seed
        limit = spec.max_episode_steps or gym.registry[spec.id].max_episode_steps or 0
        self.max_episode_steps = int(limit)  # 0: no time limit
        high = np.array(
            [_X_THRESHOLD * 2, np.inf, _THETA_THRESHOLD * 2, np.inf], dtype=np.float32
        )  # gymnasium's observation bounds
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._n_actions = 2
        self._init_buffers(num_envs)
        self.reward.fill(1.0)
        self._state = np.zeros((num_envs, 4), np.float64)
        self._rngs: list[np.random.Generator] = []

    def _reset_one(self, b: int) -> None:
        self._state[b] = self._rngs[b].uniform(low=-_INIT_BOUND, high=_INIT_BOUND, size=(4,))

    def reset(self) -> np.ndarray:
        """Reset every env (seeded ``seed + b`` on the first call); returns the obs buffer."""
        if self._needs_reset:
            from gymnasium.utils import seeding

            self._rngs = [seeding.np_random(self.seed + b)[0] for b in range(self.num_envs)]
            self._needs_reset = False
        for b in range(self.num_envs):
            self._reset_one(b)
        np.copyto(self.obs, self._state, casting="same_kind")
        self._ep_return[:] = 0
        self._ep_length[:] = 0
        return self.obs

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
        """Step all envs; see VecEnv.step for the contract."""
        a = self._discrete_actions(actions)
        s = self._state
        x, x_dot, theta, theta_dot = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
        # gymnasium's CartPoleEnv.step, vectorized, in its operation order (float64)
        force = np.where(a == 1, _FORCE_MAG, -_FORCE_MAG)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + _POLEMASS_LENGTH * np.square(theta_dot) * sintheta) / _TOTAL_MASS
        thetaacc = (_GRAVITY * sintheta - costheta * temp) / (
            _LENGTH * (4.0 / 3.0 - _MASSPOLE * np.square(costheta) / _TOTAL_MASS)
        )
        xacc = temp - _POLEMASS_LENGTH * thetaacc * costheta / _TOTAL_MASS
        x += _TAU * x_dot  # Euler: each update reads only the old values of the others
        x_dot += _TAU * xacc
        theta += _TAU * theta_dot
        theta_dot += _TAU * thetaacc
        term = self.terminated
        np.greater(np.abs(x), _X_THRESHOLD, out=term)
        term |= np.abs(theta) > _THETA_THRESHOLD
        self._ep_length += 1
        self._ep_return += 1.0
        trunc = self.truncated
        if self.max_episode_steps:
            np.greater_equal(self._ep_length, self.max_episode_steps, out=trunc)
            trunc &= ~term
        np.copyto(self.obs, s, casting="same_kind")
        self.reward.fill(1.0)
        final_obs: list[tuple[int, Any]] = []
        done = term | trunc
        if done.any():
            idx = np.flatnonzero(done)
            self._record_episodes(idx)
            for b in idx.tolist():
                if trunc[b]:
                    final_obs.append((b, self.obs[b].copy()))
                self._reset_one(b)
                self.obs[b] = s[b]
        return self.obs, self.reward, self.terminated, self.truncated, final_obs

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------------------- Atari

# Registry kwargs of an ale-py id that make_env overrides or that mean nothing to the preset.
_ALE_REGISTRY_KEYS = {
    "game",
    "obs_type",
    "repeat_action_probability",
    "full_action_space",
    "frameskip",
    "max_num_frames_per_episode",
}
_ALE_USER_KEYS = {"repeat_action_probability", "full_action_space", "max_num_frames_per_episode"}


def atari_game(env_id: str) -> str:
    """The ROM name of an ale-py id: ``ALE/Pong-v5`` -> ``pong``."""
    entry = gym.registry.get(env_id)
    if entry is not None and "game" in entry.kwargs:
        return str(entry.kwargs["game"])
    name = (
        env_id.split("/")[-1]
        .split("-")[0]
        .removesuffix("NoFrameskip")
        .removesuffix("Deterministic")
    )
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _atari_unsupported(spec: EnvSpec) -> str:
    try:
        import ale_py
    except ImportError:  # pragma: no cover - ale-py is a dependency
        return "ale-py is not installed"
    if not hasattr(ale_py, "AtariVectorEnv"):
        return f"ale-py {ale_py.__version__} has no AtariVectorEnv (needs >= 0.11)"
    entry = gym.registry.get(spec.id)
    if entry is None or "ale_py" not in str(entry.entry_point):
        return "not an ale-py registered id"
    extra = set(entry.kwargs) - _ALE_REGISTRY_KEYS
    if extra:
        return f"registered kwargs {sorted(extra)} are not supported natively"
    if entry.kwargs.get("obs_type", "rgb") not in ("rgb", "grayscale"):
        return f"obs_type {entry.kwargs['obs_type']!r} is not supported natively"
    extra = set(spec.kwargs) - _ALE_USER_KEYS
    if extra:
        return f"env kwargs {sorted(extra)} are not supported natively"
    if spec.frame_skip < 1 or spec.frame_stack < 1 or spec.screen_size < 1 or spec.noop_max < 0:
        return "frame_skip, frame_stack and screen_size must be >= 1 and noop_max >= 0"
    from ale_py import roms

    try:
        if roms.get_rom_path(atari_game(spec.id)) is None:
            return f"no ROM for {atari_game(spec.id)!r}"
    except Exception as e:  # noqa: BLE001 - ale-py raises various errors for unknown ROMs
        return f"no ROM for {atari_game(spec.id)!r}: {e}"
    return ""


def _ale_threads(num_envs: int) -> int:
    env = os.environ.get("ASYNCRL_ALE_THREADS", "")
    if env:
        return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(num_envs, cores))


class NativeAtari(_NativeBase):
    """B Atari games in ale-py's C++ vector env (threads); VecEnv's interface and semantics."""

    backend = "native"

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int = 0, training: bool = True):
        from ale_py import AtariVectorEnv

        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.spec = spec
        self.family = "atari"
        self.num_envs = num_envs
        self.seed = seed
        self.game = atari_game(spec.id)
        kw = dict(spec.kwargs)
        max_frames = int(kw.get("max_num_frames_per_episode", 108_000))
        if spec.max_episode_steps > 0:  # VecEnv: a TimeLimit on the frameskip-1 env (frames)
            max_frames = (
                min(max_frames, spec.max_episode_steps) if max_frames else spec.max_episode_steps
            )
        self.stack = spec.frame_stack
        self._venv = AtariVectorEnv(
            self.game,
            num_envs,
            num_threads=_ale_threads(num_envs),
            max_num_frames_per_episode=max_frames,
            repeat_action_probability=float(
                kw.get("repeat_action_probability", spec.repeat_action_probability)
            ),
            full_action_space=bool(kw.get("full_action_space", False)),
            autoreset_mode="SameStep",
            img_height=spec.screen_size,
            img_width=spec.screen_size,
            grayscale=True,
            stack_num=spec.frame_stack,
            frameskip=spec.frame_skip,
            maxpool=spec.frame_skip > 1,  # AtariPreprocessing pools only when skipping
            noop_max=spec.noop_max,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=spec.fire_reset,  # ALE presses FIRE only where the game has it
        )
        self.observation_space = gym.spaces.Box(
            0, 255, (spec.frame_stack, spec.screen_size, spec.screen_size), np.uint8
        )
        self.action_space = gym.spaces.Discrete(self._venv.single_action_space.n)
        self._n_actions = int(self.action_space.n)
        self.life_loss_terminal = training and spec.terminal_on_life_loss
        self.clip_reward = training and spec.clip_reward
        self._init_buffers(num_envs)
        self._lives = np.zeros(num_envs, np.int64)
        self._since_reset = np.zeros(num_envs, np.int64)  # steps since the episode's first obs

    def _pad_fresh_stacks(self) -> None:
        """Repeat the first frame where ALE has zero padding (gymnasium's FrameStack padding)."""
        k = self.stack - 1 - self._since_reset
        for b in np.flatnonzero(k > 0).tolist():
            n = int(k[b])
            self.obs[b, :n] = self.obs[b, n]

    def reset(self) -> np.ndarray:
        """Reset every env (seeded ``seed + b`` on the first call); returns the obs buffer."""
        seed = self.seed if self._needs_reset else None
        obs, info = self._venv.reset(seed=seed)
        self._needs_reset = False
        np.copyto(self.obs, obs)
        self._lives[:] = info["lives"]
        self._since_reset[:] = 0
        self._pad_fresh_stacks()
        self._ep_return[:] = 0
        self._ep_length[:] = 0
        return self.obs

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
        """Step all envs; see VecEnv.step for the contract."""
        a = self._discrete_actions(actions)
        obs, reward, term, trunc, info = self._venv.step(a)
        self._ep_return += reward
        self._ep_length += 1
        self._since_reset += 1
        np.copyto(self.reward, reward, casting="unsafe")
        if self.clip_reward:
            np.sign(self.reward, out=self.reward)
        np.copyto(self.terminated, term)
        np.logical_and(trunc, ~self.terminated, out=self.truncated)
        np.copyto(self.obs, obs)
        done = self.terminated | self.truncated
        lives = info["lives"]
        if self.life_loss_terminal:  # the learner sees a terminal; the game goes on
            self.terminated |= (lives < self._lives) & ~done
        self._lives[:] = lives
        final_obs: list[tuple[int, Any]] = []
        if done.any():
            idx = np.flatnonzero(done)
            for b in idx.tolist():
                if self.truncated[b]:
                    last = np.array(info["final_obs"][b])
                    n = self.stack - 1 - int(self._since_reset[b])
                    if n > 0:
                        last[:n] = last[n]
                    final_obs.append((b, last))
            self._record_episodes(idx)
            self._since_reset[idx] = 0
        self._pad_fresh_stacks()
        return self.obs, self.reward, self.terminated, self.truncated, final_obs

    def close(self) -> None:
        if self._venv is not None:
            self._venv.close()
            self._venv = None  # joins ALE's worker threads
