"""Run configuration as typed dataclasses, serialised to TOML; presets; --set overrides.

Owns: the config schema, resolution order (defaults < family preset < per-env preset < --config
file < CLI flags < --set), validation with one-line errors, TOML round trip, budget warnings.
Must not start anything heavy, nor import the algorithms: their settings' dataclasses come from
configs/registry.py, which ``asyncrl.algos.register_algo`` fills.
"""

from __future__ import annotations

import dataclasses
import re

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from asyncrl.configs.registry import ALGO_CONFIGS, valid_algos
from asyncrl.envs.spec import EnvError, EnvSpec, env_family, validate_env_id
from asyncrl.models.policies import ModelConfig

PRESET_DIR = Path(__file__).parent
# Per-env presets: ENV_PRESET_DIR/{algo}/{ENV_ID}.toml (ALE/Pong-v5 -> ALE/Pong-v5.toml).
ENV_PRESET_DIR = PRESET_DIR / "envs"
MODES = ("serial", "parallel", "central", "alternating")
LAUNCHERS = ("local", "ray", "slurm")
RAY_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class ConfigError(ValueError):
    """A bad config value, key, file or name; the message is one line meant for the user."""


@dataclass
class SamplerConfig:
    mode: str = "serial"  # serial | parallel | central | alternating
    # Fully asynchronous sampling and optimization (`asyncrl train --async`): the learner runs
    # in its own process and workers never wait for it, except when async_batches batches are
    # in flight (back-pressure). Runtime modes only; serial stays synchronous.
    asynchronous: bool = False
    async_batches: int = 2  # learner slots: batches collected ahead of the learner, at most
    num_envs: int = 8  # envs in total (B)
    horizon: int = 128  # steps per env per batch (T)
    workers: int = 1  # local worker processes (parallel, central, alternating)
    bind: str = ""  # also accept remote workers on this endpoint, e.g. tcp://0.0.0.0:5555
    keys: str = ""  # CURVE key directory (from `asyncrl keygen`) for remote workers
    insecure: bool = False  # allow a non-loopback bind without keys (anyone may join)
    heartbeat_s: float = 1.0  # heartbeat period between coordinator and workers
    worker_timeout_s: float = 5.0  # a worker silent this long is declared dead
    min_workers: int = 1  # batches wait until this many workers are registered
    # Central/alternating inference: asynchronous runs serve a split (group g of every worker)
    # once all its requests are in or after this wait; synchronous runs wait for the whole
    # split, so that every forward pass sees the same rows (the same numbers every run).
    inference_wait_ms: float = 1.0
    # Pin local worker k to CPU k mod cores (Linux; "": no pinning, "auto": one core each, or
    # a CPU list such as "1" or "2,3": worker k on list[k mod len]).
    worker_affinity: str = ""
    inference_affinity: str = ""  # central/alternating: pin the inference thread ("0", "0,1")
    # Central/alternating: the inference thread and the workers poll this long for the next
    # message before sleeping (a wake-up costs ~20-50 us; spinning costs CPU the envs may need).
    inference_spin_us: float = 0.0
    # Remote workers (sampler.bind): what one peer may make the coordinator hold.
    max_remote_workers: int = 32  # registered at once; more are refused
    max_remote_envs: int = 1024  # envs of all remote workers together; more are refused
    max_envs_per_worker: int = 256  # envs one remote worker may ask for
    remote_grace_s: float = 5.0  # a remote worker later than this (or 2x the round so far)
    remote_misses: int = 3  # ... has its columns left out; after this many misses it is dropped
    register_timeout_s: float = 120.0  # sampling waits this long for min_workers, then ends
    restart_limit: int = 5  # a local worker failing more often without a batch ends the run
    restart_window_s: float = 60.0  # ... more than restart_limit times within this window
    restart_backoff_s: float = 0.5  # first delay before restarting it; doubles, at most 8 s
    # How the worker slots are started: local processes, Ray actors on a Ray cluster, or Slurm
    # jobs (submitit). Ray and Slurm workers join over TCP with per-run CURVE keys.
    launcher: str = "local"  # local | ray | slurm
    ray_address: str = ""  # Ray cluster to join ("": this process's Ray, or a new local one)
    ray_strategy: str = "PACK"  # placement of the slots' bundles: PACK | SPREAD | STRICT_*
    slurm_cluster: str = "slurm"  # slurm (sbatch) | local (submitit's local executor)
    slurm_partition: str = ""  # "": the cluster's default partition
    slurm_time_min: int = 60  # a job's time limit; a job that reaches it is replaced
    slurm_cpus: int = 1  # CPUs per job (one slot)
    slurm_gpus: int = 0  # GPUs per job


@dataclass
class LogConfig:
    eval_every: int = 0  # env steps between evaluations (0: ten per run; -1: never)
    eval_episodes: int = 10  # episodes per evaluation
    eval_deterministic: bool = True  # greedy / mean action in evaluation
    eval_max_episode_steps: int = 0  # cap per eval episode (0: Atari 18k frames, else env limit)
    eval_max_steps: int = 0  # env-step budget per evaluation (0: auto, see runners/evaluation)
    checkpoint_every: int = 0  # env steps between checkpoints (0: ten per run)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    tensorboard: bool = True  # write TensorBoard events
    progress: bool = True  # live progress display on a terminal
    log_every_s: float = 2.0  # minimum seconds between progress.csv rows


@dataclass
class TrainConfig:
    algo: str = "ppo"
    env: EnvSpec = field(default_factory=EnvSpec)
    steps: int = 100_000  # env steps to train for
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N
    torch_threads: int = 1  # torch.set_num_threads in the training process (0: torch default)
    # Learner processes training one model (data-parallel: each its share of every minibatch,
    # gradients averaged; NCCL with one GPU each for cuda, gloo on the CPU).
    learners: int = 1
    run_dir: str = ""  # empty: runs/<algo>_<env>_<time>
    # Informational, set by resolve_config: the preset files applied, in order, e.g.
    # "td3_mujoco + td3/Hopper-v5" ("" when none). Changing it changes no setting.
    preset: str = ""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    algo_params: Any = None  # the algorithm's dataclass; written under the algorithm's name

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d[self.algo] = d.pop("algo_params")
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())


def _to_plain(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _to_plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, tuple):
        return list(x)
    return x


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


# Top-level fields that are not settings: the algorithm is chosen by name (its settings live
# under a table of that name), never through --set or a config file's ``algo_params``.
_RESERVED = {"algo", "algo_params"}


def apply_dict(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Recursively write ``updates`` into dataclass ``obj``; unknown keys are errors."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {updates!r}")
    types_ = {k: v for k, v in _field_types(type(obj)).items() if prefix or k not in _RESERVED}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in types_:
            valid = ", ".join(sorted(types_))
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, types_[key], full))


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None


def apply_toml_dict(cfg: TrainConfig, d: dict[str, Any], source: str) -> None:
    d = dict(d)
    if "algo" in d and d["algo"] != cfg.algo:
        raise ConfigError(f"{source}: algo {d['algo']!r} differs from the requested {cfg.algo!r}")
    d.pop("algo", None)
    try:
        for name in ALGO_CONFIGS:
            if name in d:
                if name != cfg.algo:
                    d.pop(name)  # a preset file may carry settings for other algorithms
                    continue
                apply_dict(cfg.algo_params, d.pop(name), f"{name}.")
        apply_dict(cfg, d)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_set(item: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', value) with the value parsed as a TOML value, else a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_set(cfg: TrainConfig, item: str) -> None:
    key, value = parse_set(item)
    parts = key.split(".")
    if key == "algo":
        raise ConfigError(
            f"--set {item!r}: the algorithm is chosen by the ALGO argument, not --set"
        )
    if key == "preset":
        raise ConfigError(
            f"--set {item!r}: preset only records the preset files applied; they are chosen by "
            "ALGO and ENV_ID (see asyncrl presets), settings by --config and --set"
        )
    if parts[0] == cfg.algo:
        target, parts, prefix = cfg.algo_params, parts[1:], cfg.algo + "."
    else:
        target, prefix = cfg, ""
    if not parts or any(not p for p in parts):
        raise ConfigError(f"--set {item!r}: bad key {key!r}")
    nested: Any = value
    for p in reversed(parts):
        nested = {p: nested}
    try:
        apply_dict(target, nested, prefix)
    except ConfigError as e:
        raise ConfigError(f"--set {item!r}: {e}") from None


# Algorithms whose settings live in a sibling's preset file (as its [c51] / [rainbow] tables).
PRESET_FILE_OF = {"c51": "dqn", "rainbow": "dqn"}


def preset_path(algo: str, family: str) -> Path:
    return PRESET_DIR / f"{PRESET_FILE_OF.get(algo, algo)}_{family}.toml"


def list_presets() -> list[str]:
    """The family presets: the ``{algo}_{family}`` stems of ``PRESET_DIR/*.toml``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def env_presets(algo: str) -> dict[str, Path]:
    """The per-env presets of ``algo``: env id -> ``ENV_PRESET_DIR/{algo}/{ENV_ID}.toml``."""
    root = ENV_PRESET_DIR / algo
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix()[: -len(".toml")]: p for p in sorted(root.rglob("*.toml"))
    }


def list_env_presets() -> dict[str, list[str]]:
    """{algo: [env ids with a per-env preset]} for every algorithm folder under ENV_PRESET_DIR."""
    if not ENV_PRESET_DIR.is_dir():
        return {}
    algos = sorted(d.name for d in ENV_PRESET_DIR.iterdir() if d.is_dir())
    return {a: sorted(env_presets(a)) for a in algos if env_presets(a)}


def applicable_presets(algo: str, env: EnvSpec) -> list[tuple[str, Path]]:
    """The preset files applied for ``algo`` on ``env`` (its final settings), as (name, path) in
    the order they are applied: the family preset ``{algo}_{family}`` (c51 and rainbow read dqn's
    file), then the per-env preset ``{algo}/{ENV_ID}``. A per-env preset is written for the env's
    own family, so it is skipped when ``env.family`` forces another one. No env is built."""
    family = _env_family(env)
    out = []
    fam = preset_path(algo, family)
    if fam.exists():
        out.append((fam.stem, fam))
    per_env = env_presets(algo).get(env.id)
    if per_env is not None and env.family in ("auto", env_family(env.id)):
        out.append((f"{algo}/{env.id}", per_env))
    return out


def _build(
    algo: str,
    env_id: str,
    presets: list[tuple[str, Path]],
    file_dict: dict[str, Any],
    config_file: str | None,
    sets: list[str] | None,
    overrides: dict[str, Any] | None,
    imports: list[str] | None,
) -> TrainConfig:
    cfg = TrainConfig(
        algo=algo,
        env=EnvSpec(id=env_id, imports=list(imports or [])),
        algo_params=ALGO_CONFIGS[algo].config_cls(),
    )
    cfg.model.core = DEFAULT_CORE_OF.get(algo, cfg.model.core)
    for name, path in presets:
        apply_toml_dict(cfg, _load_toml(path), f"preset {name}")
    if file_dict:
        apply_toml_dict(cfg, file_dict, f"config file {config_file}")
    cfg.env.id = env_id
    cfg.env.imports = list(dict.fromkeys([*cfg.env.imports, *(imports or [])]))
    for key, value in (overrides or {}).items():
        if value is not None:
            apply_set(cfg, f"{key}={_toml_literal(value)}")
    for item in sets or []:
        apply_set(cfg, item)
    cfg.preset = " + ".join(name for name, _ in presets)
    return cfg


def _check_algo(algo: str) -> None:
    if algo not in ALGO_CONFIGS:
        raise ConfigError(f"unknown algorithm {algo!r}; valid: {valid_algos()}")


def resolve_config(
    algo: str,
    env_id: str,
    config_file: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
) -> TrainConfig:
    """Build the run's config: defaults < family preset < per-env preset < config file <
    overrides < --set; ``cfg.preset`` names the preset files applied.

    The presets are picked by the *final* env settings (so ``env.family`` or ``env.id`` given in
    the config file or with --set choose them too): a first pass without presets finds them, the
    second pass builds the config on top of them (see ``applicable_presets``).
    Nothing heavy happens here: env ids are looked up in the registry, no env is built.
    """
    _check_algo(algo)
    file_dict = _load_toml(Path(config_file)) if config_file else {}
    args = (file_dict, config_file, sets, overrides, imports)
    presets = applicable_presets(algo, _build(algo, env_id, [], *args).env)
    cfg = _build(algo, env_id, presets, *args)
    validate(cfg)
    return cfg


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig.to_dict() -> {dotted key: value}; tables are one level deep (env.kwargs stays
    one value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def preset_changes(
    algo: str, env_id: str, imports: list[str] | None = None
) -> tuple[list[tuple[str, Path]], list[tuple[str, Any, Any, str]]]:
    """What the presets do for ``algo`` on ``env_id``: the files applied, as (name, path), and the
    settings they change from the dataclass defaults, as (dotted key, default, value, name of the
    last preset that changed it), in config.toml order. No env is built."""
    _check_algo(algo)
    args = ({}, None, None, None, imports)
    base = _build(algo, env_id, [], *args)
    presets = applicable_presets(algo, base.env)
    layers = [_flatten(base.to_dict())]
    for k in range(1, len(presets) + 1):
        layers.append(_flatten(_build(algo, env_id, presets[:k], *args).to_dict()))
    changes = []
    for key, default in layers[0].items():
        final = layers[-1].get(key)
        if key == "preset" or final == default:
            continue
        source = next(
            presets[k - 1][0]
            for k in range(len(layers) - 1, 0, -1)
            if layers[k].get(key) != layers[k - 1].get(key)
        )
        changes.append((key, default, final, source))
    return presets, changes


def _env_family(spec: EnvSpec) -> str:
    try:
        return validate_env_id(spec)
    except EnvError as e:
        raise ConfigError(str(e)) from None


def _toml_literal(value: Any) -> str:
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def budget_warnings(cfg: TrainConfig) -> list[str]:
    """One-line warnings about settings this run's ``steps`` leaves no room for ([]: none).

    ``learning_starts >= steps`` (no gradient update before the run ends), an evaluation or
    checkpoint interval longer than the run, one sampler batch as long as the run. Cheap, no
    side effects: ``asyncrl train`` prints them on stderr before training starts."""
    out = []
    steps, algo = cfg.steps, cfg.algo
    starts = getattr(cfg.algo_params, "learning_starts", None)
    if isinstance(starts, int) and not isinstance(starts, bool) and starts >= steps:
        out.append(
            f"{algo}.learning_starts = {starts} >= steps = {steps}: no gradient update happens "
            f"before the run ends, so it learns nothing; lower it with "
            f"--set {algo}.learning_starts=N (e.g. N={steps // 10}) or train longer with --steps"
        )
    if cfg.log.eval_every > steps:
        out.append(
            f"log.eval_every = {cfg.log.eval_every} > steps = {steps}: only the final evaluation "
            "runs; set --set log.eval_every=N (0: ten per run)"
        )
    if cfg.log.checkpoint_every > steps:
        out.append(
            f"log.checkpoint_every = {cfg.log.checkpoint_every} > steps = {steps}: only the final "
            "checkpoint is written; set --set log.checkpoint_every=N (0: ten per run)"
        )
    batch = cfg.sampler.num_envs * cfg.sampler.horizon
    if batch >= steps:
        out.append(
            f"one sampler batch (sampler.num_envs x sampler.horizon = {cfg.sampler.num_envs} x "
            f"{cfg.sampler.horizon} = {batch} env steps) covers all steps = {steps}: the run "
            "optimizes once, after its only batch; train longer with --steps or shorten "
            "sampler.horizon"
        )
    return out


# The algorithms whose agent takes ``model.core`` (a recurrent actor-critic).
RECURRENT_ALGOS = ("ppo", "ppo_lstm", "a2c", "appo")
# Recurrent by name: their ``model.core`` default (below every preset, so any env family gets it).
DEFAULT_CORE_OF = {"ppo_lstm": "lstm"}


def is_recurrent(cfg: TrainConfig) -> bool:
    """Does the run's agent keep a recurrent state (``model.core``, or R2D1's own core)?"""
    return cfg.model.core != "none" or getattr(cfg.algo_params, "core", "none") != "none"


def validate(cfg: TrainConfig) -> None:
    """Check values that types alone do not catch; one-line ConfigError. Cheap: no env is built."""
    from asyncrl.models.mlp import ACTIVATIONS

    s = cfg.sampler
    if s.mode not in MODES:
        raise ConfigError(f"sampler.mode {s.mode!r} is not one of {', '.join(MODES)}")
    if s.asynchronous and s.mode == "serial":
        raise ConfigError(
            "sampler.asynchronous needs a runtime mode (parallel, central or alternating); "
            "serial sampling is synchronous"
        )
    if s.launcher not in LAUNCHERS:
        raise ConfigError(f"sampler.launcher {s.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if s.launcher != "local" and s.mode == "serial":
        raise ConfigError(
            f"sampler.launcher = {s.launcher!r} starts sampler workers: it needs a runtime mode "
            "(--mode parallel, central or alternating)"
        )
    if s.ray_strategy not in RAY_STRATEGIES:
        raise ConfigError(
            f"sampler.ray_strategy {s.ray_strategy!r} is not one of {', '.join(RAY_STRATEGIES)}"
        )
    if s.slurm_cluster not in ("slurm", "local"):
        raise ConfigError(f"sampler.slurm_cluster {s.slurm_cluster!r}: expected slurm or local")
    if s.slurm_time_min < 1 or s.slurm_cpus < 1 or s.slurm_gpus < 0:
        raise ConfigError(
            "sampler.slurm_time_min and sampler.slurm_cpus must be >= 1 and sampler.slurm_gpus "
            f">= 0, got {s.slurm_time_min}, {s.slurm_cpus}, {s.slurm_gpus}"
        )
    if s.worker_affinity not in ("", "auto") and not re.fullmatch(r"\d+(,\d+)*", s.worker_affinity):
        raise ConfigError(
            f"sampler.worker_affinity {s.worker_affinity!r}: expected '', 'auto' or a CPU list "
            "such as '0,1'"
        )
    if s.inference_affinity and not re.fullmatch(r"\d+(,\d+)*", s.inference_affinity):
        raise ConfigError(
            f"sampler.inference_affinity {s.inference_affinity!r}: expected '' or a CPU list "
            "such as '0'"
        )
    if not 0 <= s.inference_spin_us <= 10_000:
        raise ConfigError(
            f"sampler.inference_spin_us must be in 0..10000, got {s.inference_spin_us}"
        )
    if s.inference_wait_ms < 0:
        raise ConfigError(f"sampler.inference_wait_ms must be >= 0, got {s.inference_wait_ms}")
    if not 1 <= s.async_batches <= 64:
        raise ConfigError(f"sampler.async_batches must be in 1..64, got {s.async_batches}")
    for key, v in (
        ("steps", cfg.steps),
        ("sampler.num_envs", s.num_envs),
        ("sampler.horizon", s.horizon),
        ("log.eval_episodes", cfg.log.eval_episodes),
        ("learners", cfg.learners),
    ):
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if s.workers < (0 if s.bind else 1):
        raise ConfigError(
            f"sampler.workers must be >= {0 if s.bind else 1}, got {s.workers}"
            + ("" if s.bind else " (0 local workers needs sampler.bind for remote ones)")
        )
    for key, v in (
        ("torch_threads", cfg.torch_threads),
        ("log.keep_checkpoints", cfg.log.keep_checkpoints),
        ("log.log_every_s", cfg.log.log_every_s),
    ):
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    for key, v in (
        ("log.eval_max_episode_steps", cfg.log.eval_max_episode_steps),
        ("log.eval_max_steps", cfg.log.eval_max_steps),
    ):
        if v < 0:
            raise ConfigError(f"{key} must be >= 0 (0: automatic), got {v}")
    if cfg.log.eval_every < -1:
        raise ConfigError(
            f"log.eval_every must be >= -1 (-1: never, 0: ten per run), got {cfg.log.eval_every}"
        )
    if cfg.log.checkpoint_every < 0:
        raise ConfigError(
            f"log.checkpoint_every must be >= 0 (0: ten per run), got {cfg.log.checkpoint_every}"
        )
    if not (cfg.device == "cpu" or cfg.device.startswith("cuda") or cfg.device == "mps"):
        raise ConfigError(f"device {cfg.device!r}: expected cpu, cuda or cuda:N")
    if cfg.learners > 1:
        if cfg.device == "mps":
            raise ConfigError("learners > 1 runs on cpu (gloo) or cuda (NCCL), not mps")
        if getattr(cfg.algo_params, "replay_service", False):
            raise ConfigError(
                f"learners={cfg.learners} needs the replay in the learners' processes: "
                f"set {cfg.algo}.replay_service = false"
            )
    m = cfg.model
    if m.activation not in ACTIVATIONS:
        raise ConfigError(
            f"model.activation {m.activation!r} is not one of {', '.join(ACTIVATIONS)}"
        )
    if any(h < 1 for h in m.hidden_sizes):
        raise ConfigError(f"model.hidden_sizes must all be >= 1, got {m.hidden_sizes}")
    try:
        m.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if m.core != "none" and cfg.algo not in RECURRENT_ALGOS:
        raise ConfigError(
            f"model.core={m.core!r}: {cfg.algo} has no recurrent variant (recurrent: "
            f"{', '.join(RECURRENT_ALGOS)})"
        )
    if cfg.algo == "ppo_lstm" and m.core == "none":
        raise ConfigError(
            'ppo_lstm needs a recurrent core: model.core = "lstm" or "gru" (or train ppo for a '
            "feed-forward PPO)"
        )
    _env_family(cfg.env)  # the id exists (a --set env.id or a hand-edited config.toml)
    check = getattr(cfg.algo_params, "validate", None)
    if callable(check):  # an algorithm's own checks, raising ValueError with one line
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{cfg.algo}: {e}") from None


def load_config(path: str | Path) -> TrainConfig:
    """Load a resolved config.toml (as written to a run directory)."""
    d = _load_toml(Path(path))
    algo = d.get("algo")
    if algo not in ALGO_CONFIGS:
        raise ConfigError(f"{path}: unknown or missing algo {algo!r}; valid: {valid_algos()}")
    cfg = TrainConfig(algo=algo, env=EnvSpec(), algo_params=ALGO_CONFIGS[algo].config_cls())
    apply_toml_dict(cfg, d, str(path))
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from ``TrainConfig.to_dict()`` output (e.g. sent to a remote worker)."""
    algo = d.get("algo") if isinstance(d, dict) else None
    if algo not in ALGO_CONFIGS:
        raise ConfigError(f"{source}: unknown or missing algo {algo!r}; valid: {valid_algos()}")
    cfg = TrainConfig(algo=algo, env=EnvSpec(), algo_params=ALGO_CONFIGS[algo].config_cls())
    apply_toml_dict(cfg, d, source)
    validate(cfg)
    return cfg
