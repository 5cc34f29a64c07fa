"""Env specs as plain data, and building one gymnasium env from a spec.

Owns: resolving an env id (registered gymnasium id, ``module:Class``, ids registered by
``--import MODULE``), the env family (classic / atari / mujoco) and the per-family preprocessing.
Must not touch agents, samplers or sockets: a spec crosses machines as a dict and is rebuilt here.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import gymnasium as gym
import numpy as np

FAMILIES = ("classic", "atari", "mujoco")


class EnvError(ValueError):
    """A bad env id, module or env argument; the message is one line meant for the user."""


@dataclass
class EnvSpec:
    """Everything needed to rebuild the same env anywhere (plain data, TOML/msgpack friendly).

    ``id``: a registered gymnasium id (``CartPole-v1``, ``ALE/Pong-v5``, ``HalfCheetah-v5``) or
    ``package.module:ClassName`` for an unregistered user env.
    ``family``: ``auto`` (detected from the id), ``classic``, ``atari`` or ``mujoco``; selects the
    preprocessing below and the training preset.
    """

    id: str = "CartPole-v1"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gym.make / the class
    family: str = "auto"  # auto | classic | atari | mujoco
    imports: list[str] = field(default_factory=list)  # modules imported first (they register ids)
    max_episode_steps: int = 0  # 0: the registered default
    # Atari (DQN-paper preprocessing, Mnih et al. 2015): train-time only options are applied by
    # the vector env so episode statistics always report the raw game score.
    frame_skip: int = 4
    frame_stack: int = 4
    screen_size: int = 84
    noop_max: int = 30
    terminal_on_life_loss: bool = True  # training only
    clip_reward: bool = True  # training only (sign of the reward)
    repeat_action_probability: float = 0.0  # DQN-paper setting; ALE v5 default is 0.25
    # Press FIRE once at the start of every game whose action 1 is FIRE (Breakout, Pong, ...),
    # as the usual Atari wrappers do: without it an untrained or deterministic policy may never
    # launch the ball and the episode runs to ALE's frame limit. Training and evaluation alike.
    fire_reset: bool = True
    backend: str = "auto"  # auto | gymnasium | native: vector-env backend (asyncrl/envs/native.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvSpec:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            valid = ", ".join(f.name for f in fields(cls))
            raise EnvError(f"unknown env spec key(s) {', '.join(unknown)}; valid: {valid}")
        d = dict(d)
        d["kwargs"] = dict(d.get("kwargs", {}))
        d["imports"] = list(d.get("imports", []))
        return cls(**d)


_ALE_REGISTERED = False


def _ensure_registrations(imports: list[str]) -> None:
    global _ALE_REGISTERED
    if not _ALE_REGISTERED:
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError:  # pragma: no cover
            pass
        _ALE_REGISTERED = True
    for mod in imports:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise EnvError(f"cannot import env module {mod!r}: {e}") from None


def _load_class(target: str):
    mod_name, _, cls_name = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise EnvError(f"env {target!r}: cannot import module {mod_name!r}: {e}") from None
    try:
        return getattr(mod, cls_name)
    except AttributeError:
        raise EnvError(f"env {target!r}: module {mod_name!r} has no {cls_name!r}") from None


def validate_env_id(spec: EnvSpec) -> str:
    """Check the id exists and return its family; raises EnvError with suggestions."""
    if spec.family != "auto" and spec.family not in FAMILIES:
        raise EnvError(f"unknown env family {spec.family!r}; valid: auto, {', '.join(FAMILIES)}")
    _ensure_registrations(spec.imports)
    if ":" in spec.id:
        _load_class(spec.id)
        return "classic" if spec.family == "auto" else spec.family
    if spec.id not in gym.registry:
        close = difflib.get_close_matches(spec.id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise EnvError(f"unknown env id {spec.id!r}{hint}")
    if spec.family != "auto":
        return spec.family
    return env_family(spec.id)


def env_family(env_id: str) -> str:
    _ensure_registrations([])
    entry = gym.registry[env_id].entry_point if env_id in gym.registry else ""
    entry = entry if isinstance(entry, str) else getattr(entry, "__module__", "")
    if "ale_py" in entry or env_id.startswith("ALE/"):
        return "atari"
    if "mujoco" in entry:
        return "mujoco"
    return "classic"


def fires_on_reset(action_meanings: list[str]) -> bool:
    """Whether a game needs FIRE to start: its action 1 is FIRE (the usual wrappers' test)."""
    return len(action_meanings) >= 3 and action_meanings[1] == "FIRE"


class FireReset(gym.Wrapper):
    """Presses FIRE for one emulator frame after each reset of games that wait for it (see
    ``fires_on_reset``), and observes the screen after it: exactly what ale-py's native vector
    env does with ``use_fire_reset`` (so both backends stay pixel-identical; a test checks).
    Wraps gymnasium's ``AtariPreprocessing`` and uses its frame buffers to make the obs."""

    def __init__(self, env: gym.wrappers.AtariPreprocessing):
        super().__init__(env)
        self._pre = env

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        pre = self._pre
        pre.unwrapped.ale.act(1)  # one frame, reward 0 at a game's start
        if pre.unwrapped.ale.game_over():  # never at a game's start; be safe anyway
            return self.env.reset(**kwargs)
        if pre.grayscale_obs:
            pre.ale.getScreenGrayscale(pre.obs_buffer[0])
        else:
            pre.ale.getScreenRGB(pre.obs_buffer[0])
        pre.obs_buffer[1].fill(0)  # as AtariPreprocessing.reset leaves it
        return pre._get_obs(), info


class LifeLossInfo(gym.Wrapper):
    """Adds ``info['life_loss']`` when the ALE lives counter drops (the game goes on)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._lives = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        info["life_loss"] = lives < self._lives
        self._lives = lives
        return obs, reward, terminated, truncated, info


def make_env(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """Build one gymnasium env with the family's preprocessing."""
    family = validate_env_id(spec)
    kwargs = dict(spec.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if spec.max_episode_steps > 0:
        kwargs["max_episode_steps"] = spec.max_episode_steps
    try:
        if ":" in spec.id:
            max_steps = kwargs.pop("max_episode_steps", None)
            env = _load_class(spec.id)(**kwargs)
            if max_steps:
                env = gym.wrappers.TimeLimit(env, max_steps)
        elif family == "atari":
            kwargs.setdefault("frameskip", 1)  # AtariPreprocessing does the skipping
            kwargs.setdefault("repeat_action_probability", spec.repeat_action_probability)
            kwargs.setdefault("full_action_space", False)
            kwargs.setdefault("max_num_frames_per_episode", 108_000)
            env = gym.make(spec.id, disable_env_checker=True, **kwargs)
            env = gym.wrappers.AtariPreprocessing(
                env,
                noop_max=spec.noop_max,
                frame_skip=spec.frame_skip,
                screen_size=spec.screen_size,
                terminal_on_life_loss=False,  # life loss is signalled, see LifeLossInfo
                grayscale_obs=True,
                scale_obs=False,
            )
            if spec.fire_reset and fires_on_reset(env.unwrapped.get_action_meanings()):
                env = FireReset(env)
            env = LifeLossInfo(env)
            env = gym.wrappers.FrameStackObservation(env, spec.frame_stack)
        else:
            env = gym.make(spec.id, disable_env_checker=True, **kwargs)
    except EnvError:
        raise
    except Exception as e:  # noqa: BLE001 - env constructors raise anything; report one line
        raise EnvError(
            f"cannot build env {spec.id!r} with {kwargs}: {type(e).__name__}: {e}"
        ) from None
    return env


def space_summary(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)} {np.dtype(space.dtype).name}"
    return repr(space)
