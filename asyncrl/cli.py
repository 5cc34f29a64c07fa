"""The ``asyncrl`` command: train, submit, eval, plot, presets (coordinator/worker/keygen:
cli_runtime.py).

Owns argument parsing and turning every user mistake into one error line with a non-zero exit
before heavy work starts. All behaviour lives in the library; this file only wires it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

EXIT_USAGE = 2


class CliError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage block): ``asyncrl train: error: ... (see --help)``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < low:
            kind = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1)


def _presets_epilog() -> str:
    from asyncrl.algos import ALGOS
    from asyncrl.configs.config import list_env_presets, list_presets

    lines = ["algorithms: " + ", ".join(f"{k} ({v.description})" for k, v in sorted(ALGOS.items()))]
    lines.append(
        "presets (chosen by env family: classic control, atari, mujoco): "
        + ", ".join(list_presets())
    )
    per_env = list_env_presets()
    lines.append(
        "per-env presets (RL-Zoo / papers' settings for one env id, applied on top of the family "
        "preset): " + ", ".join(f"{a} {len(ids)}" for a, ids in per_env.items())
    )
    lines.append(
        "settings: dataclass defaults < family preset < per-env preset < --config < flags < --set;"
        " the run prints the presets it uses."
    )
    lines.append(
        "asyncrl presets lists them all; asyncrl presets ALGO ENV_ID shows what applies and what it sets"
    )
    lines.append(
        "examples: asyncrl train ppo CartPole-v1 | asyncrl train ppo ALE/Pong-v5 --steps 1e6 |"
    )
    lines.append(
        "          asyncrl train ppo HalfCheetah-v5 --set ppo.learning_rate=1e-4 | asyncrl train --resume RUN_DIR"
    )
    return "\n".join(lines)


def _steps(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps, got {text!r}") from None
    if v < 1 or v != int(v):
        raise argparse.ArgumentTypeError(f"steps must be a positive integer, got {text!r}")
    return int(v)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="asyncrl", description="Deep RL on an asyncio + ZeroMQ runtime.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train an agent on this machine",
        epilog=_presets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("algo", nargs="?", help="algorithm name (see below)")
    t.add_argument("env_id", nargs="?", help="gymnasium id, or package.module:Class")
    t.add_argument("--steps", type=_steps, help="env steps to train for (e.g. 1e6)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu | cuda | cuda:N")
    t.add_argument("--config", help="TOML file with settings (same layout as a run's config.toml)")
    t.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set ppo.learning_rate=1e-4 (repeatable)",
    )
    t.add_argument("--run-dir", help="where to write the run (default runs/ALGO_ENV_TIME)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    t.add_argument("--mode", choices=["serial", "parallel", "central", "alternating"])
    t.add_argument(
        "--workers", type=_int_at_least(0), help="worker processes (parallel/central/alternating)"
    )
    t.add_argument("--envs-per-worker", type=_positive_int, help="envs in each worker")
    t.add_argument(
        "--learners",
        type=_positive_int,
        help="learner processes training one model, each on its share of every minibatch "
        "(data-parallel; gloo on cpu, NCCL with one GPU each on cuda)",
    )
    t.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        default=None,
        help="fully asynchronous: the learner in its own process, workers never wait for it "
        "(sampler.asynchronous; parallel/central/alternating)",
    )
    t.add_argument(
        "--launcher",
        choices=["local", "ray", "slurm"],
        help="how the worker processes are started: local subprocesses (default), Ray actors "
        "on a Ray cluster, Slurm jobs through submitit (sampler.launcher; sampler.slurm_* "
        "for the jobs' resources)",
    )
    t.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster to start the workers on (implies --launcher ray; default: a "
        "local Ray)",
    )
    t.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register env ids)",
    )
    t.add_argument("--no-progress", action="store_true", help="no live progress display")

    _add_submit_parser(sub, t)  # train's arguments, and the job's resources

    ps = sub.add_parser(
        "presets",
        help="list the presets, or show which apply to ALGO on ENV_ID and what they set",
        description="Without arguments: the family presets and the per-env presets of every "
        "algorithm. With ALGO: that algorithm's. With ALGO ENV_ID: the preset files that apply, "
        "in order, and the settings they change from the dataclass defaults.",
    )
    ps.add_argument("algo", nargs="?", help="algorithm name")
    ps.add_argument("env_id", nargs="?", help="gymnasium id (no env is built)")
    ps.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register env ids)",
    )

    e = sub.add_parser("eval", help="evaluate the latest checkpoint of a run")
    e.add_argument("run_dir")
    e.add_argument("--episodes", type=_positive_int, default=10)
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    e.add_argument(
        "--video",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write a video of the first episode (.mp4 or .gif; default RUN_DIR/eval.gif)",
    )

    pl = sub.add_parser("plot", help="plot learning curves of one or more runs to a PNG")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument(
        "--out", default=None, help="PNG path (default RUN_DIR/curve.png of the first run)"
    )
    pl.add_argument("--metric", default="return_mean")

    from asyncrl.cli_runtime import add_subcommands  # coordinator, worker, keygen

    add_subcommands(sub)
    return p


def cmd_train(args) -> int:
    from asyncrl.runners.train import train

    if args.resume:
        _check_resume(args)
        result = train(
            resume=args.resume, steps=args.steps, progress=False if args.no_progress else None
        )
    else:
        cfg = _train_config(args)
        _report_presets(cfg, args.command)
        result = train(cfg)
    return _report_result(result)


def _check_resume(args) -> None:
    """``--resume RUN_DIR`` (train, submit): no ALGO, ENV_ID, --config or --set beside it."""
    if args.algo or args.env_id:
        raise CliError("--resume RUN_DIR takes no ALGO or ENV_ID (they come from the run)")
    if args.config or args.sets:
        raise CliError("--resume continues a run as configured; --config/--set are not allowed")
    if not Path(args.resume).is_dir():
        raise CliError(f"run directory {args.resume!r} does not exist")


def _train_config(args):
    """The resolved config of ``train ALGO ENV_ID [options]`` (submit takes the same options)."""
    from asyncrl.configs.config import resolve_config, validate

    if not args.algo or not args.env_id:
        raise CliError(
            f"{args.command} needs ALGO and ENV_ID (or --resume RUN_DIR); "
            f"see asyncrl {args.command} --help"
        )
    overrides = {
        "steps": args.steps,
        "seed": args.seed,
        "device": args.device,
        "run_dir": args.run_dir,
        "sampler.mode": args.mode,
        "sampler.workers": args.workers,
        "sampler.asynchronous": args.asynchronous,
        "learners": args.learners,
        "sampler.launcher": args.launcher or ("ray" if args.ray_address else None),
        "sampler.ray_address": args.ray_address,
    }
    for mod in args.imports:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise CliError(f"--import {mod}: {e}") from None
    cfg = resolve_config(
        args.algo, args.env_id, args.config, args.sets, overrides, imports=args.imports
    )
    if args.envs_per_worker:
        cfg.sampler.num_envs = args.envs_per_worker * cfg.sampler.workers
        validate(cfg)
    if args.no_progress:
        cfg.log.progress = False
    return cfg


def _report_result(result) -> int:
    """After a run (train, submit --wait): one line, and the exit status."""
    import signal

    status = "interrupted" if result.interrupted else "done"
    print(
        f"{status}: {result.env_steps} env steps, return_mean {result.return_mean:.2f}, "
        f"eval_return_mean {result.eval_return_mean:.2f}, run dir {result.run_dir}"
    )
    if not result.interrupted:
        return 0
    return 128 + int(result.stop_signal or signal.SIGINT)  # 143 after SIGTERM, 130 after Ctrl-C


def _report_presets(cfg, command: str = "train") -> None:
    """Before training: the presets used (one line, stdout) and budget warnings (stderr)."""
    from asyncrl.configs.config import budget_warnings

    presets = cfg.preset or "none (dataclass defaults)"
    print(
        f"presets: {presets} (asyncrl presets {cfg.algo} {cfg.env.id} shows what they set)",
        flush=True,
    )
    for warning in budget_warnings(cfg):
        print(f"asyncrl {command}: warning: {warning}", file=sys.stderr, flush=True)


def _fmt(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def cmd_presets(args) -> int:
    from asyncrl.algos import ALGOS
    from asyncrl.configs.config import (
        ENV_PRESET_DIR,
        PRESET_DIR,
        PRESET_FILE_OF,
        ConfigError,
        env_presets,
        list_presets,
        preset_changes,
    )

    if args.algo is not None and args.algo not in ALGOS:
        raise ConfigError(f"unknown algorithm {args.algo!r}; valid: {', '.join(sorted(ALGOS))}")
    for mod in args.imports:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise CliError(f"--import {mod}: {e}") from None
    if args.env_id is None:
        algos = [args.algo] if args.algo else sorted(ALGOS)
        families = list_presets()
        print(f"family presets ({PRESET_DIR}/ALGO_FAMILY.toml), chosen by the env family:")
        for a in algos:
            base = PRESET_FILE_OF.get(a, a)
            names = [n for n in families if n.rsplit("_", 1)[0] == base]
            shared = f" (its [{a}] table)" if base != a and names else ""
            print(f"  {a:8} {', '.join(names) or '-- (dataclass defaults)'}{shared}")
        print(
            f"per-env presets ({ENV_PRESET_DIR}/ALGO/ENV_ID.toml), applied on top of the family "
            "preset for that env id:"
        )
        for a in algos:
            print(f"  {a:8} {', '.join(env_presets(a)) or '--'}")
        print(
            "order: dataclass defaults < family preset < per-env preset < --config < flags < --set;"
            " asyncrl presets ALGO ENV_ID shows what applies and what it sets"
        )
        return 0
    if args.algo is None:  # pragma: no cover - argparse fills algo first
        raise CliError("presets ENV_ID needs ALGO first")
    presets, changes = preset_changes(args.algo, args.env_id, imports=args.imports)
    print(f"{args.algo} on {args.env_id}: " + (" + ".join(n for n, _ in presets) or "no preset"))
    for name, path in presets:
        print(f"  {name:28} {path}")
        comments = [x for x in path.read_text().splitlines() if x.startswith("#")]
        # the file's first comment line (what it is) and its "Source:" line
        for line in comments[:1] + [x for x in comments[1:] if x.startswith("# Source:")][:1]:
            print(f"  {'':28} {line}")
    if not presets:
        print("  (no preset file for this algorithm and env family: the dataclass defaults)")
    if changes:
        width = max(len(k) for k, *_ in changes)
        print("settings the presets change (default -> value, set by):")
        for key, default, value, source in changes:
            print(f"  {key:{width}}  {_fmt(default)} -> {_fmt(value)}  ({source})")
    elif presets:
        print("the presets change no setting from the dataclass defaults")
    return 0


def _check_video_path(video: str) -> None:
    """Fail before any evaluation work when the video cannot be written."""
    path = Path(video)
    if path.suffix.lower() not in (".gif", ".mp4"):
        raise CliError(f"--video {video!r}: expected a .gif or .mp4 path")
    if not path.parent.is_dir():
        raise CliError(f"--video {video!r}: directory {str(path.parent)!r} does not exist")
    if path.suffix.lower() == ".mp4" and not any(
        importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av")
    ):
        raise CliError(
            f"--video {video!r}: writing mp4 needs imageio-ffmpeg or av installed; use a .gif path"
        )


def cmd_eval(args) -> int:
    from asyncrl.runners.policy import evaluate_run

    video = None
    if args.video is not None:
        video = args.video or str(Path(args.run_dir) / "eval.gif")
        if Path(args.run_dir).is_dir():  # a missing run dir is reported by evaluate_run
            _check_video_path(video)
    rets, written = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        seed=args.seed,
        deterministic=not args.stochastic,
        video=video,
    )
    print(
        f"eval {args.run_dir}: {len(rets)} episodes, return mean {rets.mean():.2f} std {rets.std():.2f}"
        f" (min {rets.min():.1f}, max {rets.max():.1f})"
    )
    if written:
        print(f"video: {written}")
    return 0


def cmd_plot(args) -> int:
    from asyncrl.logging.plot import plot_runs

    for rd in args.run_dirs:
        if not Path(rd).is_dir():
            raise CliError(f"run directory {rd!r} does not exist")
        if not (Path(rd) / "progress.csv").exists():
            raise CliError(f"{rd!r} is not a run directory (no progress.csv)")
    out = args.out or str(Path(args.run_dirs[0]) / "curve.png")
    if not Path(out).parent.is_dir():
        raise CliError(f"--out {out!r}: directory {str(Path(out).parent)!r} does not exist")
    try:
        written = plot_runs(args.run_dirs, out, args.metric)
    except ValueError as e:  # a torn progress.csv, an unknown metric
        raise CliError(str(e)) from None
    print(f"wrote {written}")
    return 0


def _slurm_arg(text: str) -> tuple[str, str | bool]:
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not key or (sep and not value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE or KEY, got {text!r}")
    return key, value if sep else True


def _add_submit_parser(sub, train_parser) -> None:
    """``asyncrl submit``: every argument of ``asyncrl train`` (copied from its parser, so the
    two cannot drift apart), then what the job asks of the cluster."""
    s = sub.add_parser(
        "submit",
        parents=[train_parser],
        add_help=False,  # train's -h is copied with the rest (and prints submit's help)
        help="submit a training run as one job through submitit (Slurm, or this machine)",
        description="Resolve the config here (bad input fails here, before anything is submitted),\n"
        "fix the run directory, and submit one job that runs asyncrl.train on the node;\n"
        "submitit's logs go to RUN_DIR/submitit/. A job that reaches its time limit or is\n"
        "preempted is requeued and resumes its run from the final checkpoint.\n"
        "Needs submitit: pip install asyncrl[slurm].",
        epilog="algorithms, presets and the order of settings: asyncrl train --help\n"
        "examples: asyncrl submit ppo ALE/Pong-v5 --partition gpu --time 240 --gpus 1 |\n"
        "          asyncrl submit sac HalfCheetah-v5 --slurm-arg account=rl --slurm-arg qos=high |\n"
        "          asyncrl submit --cluster local --wait ppo CartPole-v1 --steps 2e4 |\n"
        "          asyncrl submit --resume RUN_DIR --steps 2e6",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = s.add_argument_group("the job (submitit)")
    g.add_argument(
        "--cluster",
        choices=["slurm", "local", "debug"],
        help="slurm: sbatch; local: a process on this machine; debug: in this process "
        "(implies --wait). Default: slurm where srun exists, else local",
    )
    g.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    g.add_argument(
        "--time",
        dest="time_min",
        type=_positive_int,
        default=60,
        metavar="MIN",
        help="time limit in minutes (default 60); a timed-out job is requeued and resumes",
    )
    g.add_argument(
        "--cpus",
        type=_positive_int,
        help="CPUs for the job (default: one per process the run starts)",
    )
    g.add_argument(
        "--gpus",
        type=_int_at_least(0),
        help="GPUs for the job (default: one per learner on cuda, else 0); "
        "--gpus G > 0 without --device trains on cuda",
    )
    g.add_argument("--mem-gb", type=float, help="memory in GB (default: the cluster's)")
    g.add_argument("--job-name", help="job name (default asyncrl-ALGO-ENV)")
    g.add_argument(
        "--slurm-arg",
        dest="slurm_args",
        type=_slurm_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sbatch option submitit has no flag for: --slurm-arg account=rl is "
        "#SBATCH --account=rl; KEY alone is a flag (--slurm-arg exclusive); repeatable",
    )
    g.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job, print its result; non-zero exit (and its error log) if it failed",
    )


def cmd_submit(args) -> int:
    """``asyncrl submit``: the config resolved here, one job submitted, its id, run dir and logs."""
    from asyncrl.runners.submit import (
        JobFailed,
        Resources,
        SubmititMissing,
        import_submitit,
        resume_config,
        submit,
    )

    try:
        import_submitit()
    except SubmititMissing as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    if args.gpus and args.device is None:
        args.device = "cuda"  # a GPU asked for is a GPU trained on (--device/--set say otherwise)
    if args.resume:
        _check_resume(args)
        cfg = resume_config(args.resume, args.steps)
        if args.no_progress:
            cfg.log.progress = False
    else:
        cfg = _train_config(args)
        _report_presets(cfg, args.command)
    resources = Resources(
        cluster=args.cluster,
        partition=args.partition,
        time_min=args.time_min,
        cpus=args.cpus,
        gpus=args.gpus,
        mem_gb=args.mem_gb,
        name=args.job_name,
        slurm_args=dict(args.slurm_args),
    )
    job = submit(cfg, resources, resume=bool(args.resume))
    r = job.resources
    asked = [job.cluster, f"partition {r.partition}" if r.partition else "", f"{r.time_min} min"]
    asked += [f"{r.cpus} cpu" + "s" * (r.cpus != 1), f"{r.gpus} gpu" + "s" * (r.gpus != 1)]
    print(f"submitted job {job.job_id} ({', '.join(x for x in asked if x)})", flush=True)
    print(f"run dir: {job.run_dir}")
    print(f"logs: {job.logs[0]} (stderr: {job.logs[1]})", flush=True)
    if not (args.wait or job.cluster == "debug"):
        return 0
    print(f"waiting for job {job.job_id} (Ctrl-C stops waiting)", flush=True)
    try:
        result = job.wait()
    except KeyboardInterrupt:
        if job.cluster == "slurm":
            print(
                f"asyncrl submit: stopped waiting; job {job.job_id} goes on "
                f"(scancel {job.job_id} stops it)",
                file=sys.stderr,
            )
            return 130
        raise  # a local job got the Ctrl-C too (same terminal): it stops with a checkpoint
    except JobFailed as e:
        print(f"asyncrl submit: error: {e}", file=sys.stderr)
        if e.tail:
            print(f"--- the end of {e.logs[1]}:", file=sys.stderr)
            print(e.tail, file=sys.stderr)
        return 1
    return _report_result(result)


def main(argv: list[str] | None = None) -> int:
    from asyncrl.configs.config import ConfigError
    from asyncrl.envs.spec import EnvError
    from asyncrl.logging.checkpoint import CheckpointError
    from asyncrl.runners.learners import LearnerExited
    from asyncrl.runtime.coordinator import RuntimeError_

    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "train": cmd_train,
        "submit": cmd_submit,
        "eval": cmd_eval,
        "plot": cmd_plot,
        "presets": cmd_presets,
    }
    handler = handlers.get(args.command) or getattr(args, "handler", None)
    try:
        return handler(args)
    except (CliError, ConfigError, EnvError, CheckpointError) as e:
        print(f"asyncrl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError_, LearnerExited) as e:  # the run cannot go on (no workers, ...): one line
        print(f"asyncrl {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("asyncrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
