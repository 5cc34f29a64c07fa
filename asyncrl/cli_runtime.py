"""The multi-machine subcommands of ``asyncrl``: coordinator, worker, keygen (cli layer).

``asyncrl coordinator ALGO ENV_ID --bind tcp://0.0.0.0:5555 [--keys DIR] [--workers N]`` runs a
training job that remote workers join; ``asyncrl worker --connect tcp://HOST:5555 [--envs M]
[--keys DIR]`` attaches one; ``asyncrl keygen DIR`` makes the CURVE keys. Owns argument wiring
only: the job is ``asyncrl.runners.train.train``, the worker program is ``python -m
workers.sampler``, the keys come from ``asyncrl.runtime.auth``. ``asyncrl/cli.py`` adds these
subcommands to its parser; like it, this module sits above every other layer.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

from asyncrl.configs.config import ConfigError


def add_subcommands(sub) -> None:
    c = sub.add_parser(
        "coordinator",
        help="run a training job that remote workers can join",
        description="Train with the coordinator bound to --bind; workers on other machines join "
        "with `asyncrl worker --connect tcp://THIS_HOST:PORT`. Local workers (--workers) "
        "run alongside; with --workers 0 the job waits for remote ones.",
    )
    c.add_argument("algo")
    c.add_argument("env_id")
    c.add_argument(
        "--bind", required=True, help="endpoint for remote workers, e.g. tcp://0.0.0.0:5555"
    )
    c.add_argument(
        "--keys", default="", help="CURVE key directory from `asyncrl keygen` (recommended)"
    )
    c.add_argument(
        "--insecure",
        action="store_true",
        help="accept workers without CURVE keys on a non-loopback --bind (anyone who can reach "
        "the port can join and feed batches into training)",
    )
    c.add_argument("--workers", type=int, default=0, help="local worker processes (default 0)")
    c.add_argument(
        "--envs-per-worker", type=int, default=0, help="envs per worker (default: preset)"
    )
    c.add_argument("--min-workers", type=int, default=1, help="batches wait for this many workers")
    c.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="asynchronous sampling and optimization (the learner in its own process; needs "
        "--workers >= 1; remote workers feed it too, off-policy ones into replay rings of "
        "their own)",
    )
    c.add_argument("--steps", type=float)
    c.add_argument("--seed", type=int)
    c.add_argument("--device")
    c.add_argument("--config")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--run-dir")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(handler=cmd_coordinator)

    w = sub.add_parser(
        "worker",
        help="attach a sampler worker to a running coordinator",
        description="Connect to a coordinator and sample for it until it stops (Ctrl-C leaves).",
    )
    w.add_argument("--connect", required=True, help="tcp://HOST:PORT of the coordinator")
    w.add_argument("--envs", type=int, default=0, help="envs in this worker (default: the run's)")
    w.add_argument("--keys", default="", help="key directory with server.key and worker.key_secret")
    w.add_argument("--server-key", default="", help="the coordinator's public key file")
    w.add_argument("--client-key", default="", help="this worker's secret key file")
    w.add_argument("--id", default="")
    w.add_argument("--log-level", default="WARNING")
    w.set_defaults(handler=cmd_worker)

    k = sub.add_parser("keygen", help="make ZeroMQ CURVE keys for a coordinator and its workers")
    k.add_argument("dir", help="directory to write the keys to")
    k.add_argument("--workers", type=int, default=1, help="worker keypairs to make")
    k.set_defaults(handler=cmd_keygen)


def cmd_coordinator(args) -> int:
    from asyncrl.configs.config import resolve_config
    from asyncrl.runners.train import train

    if not args.bind.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"--bind {args.bind!r}: expected tcp://ADDR:PORT")
    if args.keys and not (Path(args.keys) / "server.key_secret").exists():
        raise ConfigError(
            f"--keys {args.keys!r}: no server.key_secret there (run `asyncrl keygen DIR`)"
        )
    if args.workers < 0:
        raise ConfigError("--workers must be >= 0")
    from asyncrl.runtime.auth import check_bind_security

    refusal = check_bind_security(args.bind, args.keys, args.insecure)
    if refusal:
        raise ConfigError(refusal)
    overrides = {
        "steps": int(args.steps) if args.steps else None,
        "seed": args.seed,
        "device": args.device,
        "run_dir": args.run_dir,
        "sampler.mode": "parallel",
        "sampler.bind": args.bind,
        "sampler.keys": args.keys,
        "sampler.insecure": args.insecure or None,
        "sampler.min_workers": args.min_workers,
        "sampler.asynchronous": True if args.asynchronous else None,
    }
    cfg = resolve_config(args.algo, args.env_id, args.config, args.sets, overrides)
    per_worker = args.envs_per_worker or max(cfg.sampler.num_envs // max(cfg.sampler.workers, 1), 1)
    cfg.sampler.workers = args.workers
    cfg.sampler.num_envs = per_worker * max(args.workers, 1)
    if args.no_progress:
        cfg.log.progress = False
    print(
        f"coordinator: remote workers join with `asyncrl worker --connect {args.bind}"
        + (f" --keys {args.keys}`" if args.keys else "`"),
        file=sys.stderr,
    )
    result = train(cfg)
    print(
        f"done: {result.env_steps} env steps, return_mean {result.return_mean:.2f}, "
        f"eval_return_mean {result.eval_return_mean:.2f}, run dir {result.run_dir}"
    )
    return 130 if result.interrupted else 0


def cmd_worker(args) -> int:
    argv = ["--connect", args.connect, "--envs", str(args.envs), "--log-level", args.log_level]
    server_key, client_key = args.server_key, args.client_key
    if args.keys:
        server_key = server_key or str(Path(args.keys) / "server.key")
        client_key = client_key or str(Path(args.keys) / "worker.key_secret")
    for name, path in (("server key", server_key), ("client key", client_key)):
        if path and not Path(path).exists():
            raise ConfigError(f"{name} file {path!r} does not exist")
    if server_key:
        argv += ["--server-key", server_key, "--client-key", client_key]
    if args.id:
        argv += ["--id", args.id]
    # The worker program lives in the `workers` package (asyncrl never imports it): run it as
    # `python -m workers.sampler` would.
    sys.argv = ["asyncrl worker", *argv]
    try:
        runpy.run_module("workers.sampler", run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def cmd_keygen(args) -> int:
    from asyncrl.runtime.auth import generate_keypair

    root = Path(args.dir)
    if (root / "server.key_secret").exists():
        raise ConfigError(f"{str(root)!r} already holds keys; choose a new directory")
    generate_keypair(root, "server")
    authorized = root / "authorized"
    authorized.mkdir(parents=True, exist_ok=True)
    names = ["worker"] + [f"worker{i}" for i in range(2, args.workers + 1)]
    for name in names:
        public, _ = generate_keypair(root, name)
        shutil.copy(public, authorized / public.name)
    print(
        f"keys in {root}: server.key(_secret), {', '.join(n + '.key(_secret)' for n in names)}; "
        f"allowed worker keys in {authorized}"
    )
    print("coordinator: asyncrl coordinator ALGO ENV --bind tcp://0.0.0.0:5555 --keys " + str(root))
    print(
        "worker machine: copy server.key and worker.key_secret into a directory D, then "
        "asyncrl worker --connect tcp://HOST:5555 --keys D"
    )
    return 0
