"""Env-step throughput: asyncrl's sampler modes against the vector envs users would pick instead,
side by side in one run, plus the ceilings (one raw env, the policy alone) and the "ideal".

Tasks (issue 4): CartPole-v1 with 16 envs and a 64x64 MLP policy; ALE/Pong-v5 with 8 envs and
the Nature CNN (DQN preprocessing: 4 frames skipped per step, 84x84 gray, 4 stacked); HalfCheetah-v5
with 8 envs and a 256x256 MLP. The policy is asyncrl's PPO actor-critic for the task
(``ALGOS['ppo'].make_agent``); every contender runs one torch forward per vector step.

Rows:
- asyncrl modes through ``asyncrl.runners.train.make_sampler``: serial (env backend ``auto``, i.e.
  native vectorized CartPole/Atari where available, and ``gymnasium`` for comparison), parallel,
  central and alternating with 1, 2 and 4 worker processes (B envs split between them). Only the
  ``obtain()`` calls are timed (T steps x B envs each); start-up is not.
- peers, each stepping B envs built the same way (asyncrl's ``make_env``: same preprocessing) and
  driving the same network (``agent.act(obs, deterministic=False)``: forward + sample):
  gymnasium SyncVectorEnv, AsyncVectorEnv(shared_memory=True), Stable-Baselines3 SubprocVecEnv,
  and the native ones: gymnasium's CartPoleVectorEnv (its vector entry point), EnvPool, ale-py's
  AtariVectorEnv (threads: their defaults).
- ceilings: one raw gymnasium env stepped in a loop with pre-drawn random actions (no policy);
  asyncrl's vector env (the backend ``auto`` picks) with random actions, no policy; the policy
  alone on a batch of B observations, as the peers call it (forward + sample) and as asyncrl's
  samplers call it (``agent.step``: forward, per-env noise streams, value and log-prob).
- ideal = cores / (t_env + t_policy), where t_env is the raw single env's time per step and
  t_policy the policy-alone (forward + sample) time per batch divided by B: what perfect
  parallelism over the machine's cores would give with gymnasium envs.

Steps are env steps (agent steps); for Pong each is 4 emulator frames (frames/s = 4 x steps/s).
Each figure is the median of 3 runs of about ``--seconds`` seconds after a warm-up. The runs are
interleaved: per task every contender is built and warmed up once (runtime samplers with their
worker processes included; they idle between turns), then 3 rounds time each contender once, in a
rotated order, so that the machine's load drifts over all of them alike. Peers that own process
pools (AsyncVectorEnv, SubprocVecEnv) are rebuilt for each turn instead of idling. The machine is
shared: the 1/5/15-min load averages are recorded at start and end. Torch uses 1 thread in this process
(asyncrl's default for the training process; its workers use 1 too).

    python bench/throughput.py [--quick] [--tasks cartpole pong halfcheetah] [--seconds 3]
                               [--reps 3] [--workers 1 2 4] [--no-append] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS = {
    "cartpole": dict(
        id="CartPole-v1", envs=16, horizon=128, sets=["model.hidden_sizes=[64, 64]"], label="CartPole-v1 (16 envs, 64x64 MLP)"
    ),
    "pong": dict(
        id="ALE/Pong-v5", envs=8, horizon=64, sets=[], label="ALE/Pong-v5 (8 envs, Nature CNN)"
    ),
    "halfcheetah": dict(
        id="HalfCheetah-v5", envs=8, horizon=128, sets=["model.hidden_sizes=[256, 256]"], label="HalfCheetah-v5 (8 envs, 256x256 MLP)"
    ),
}  # fmt: skip
ENVPOOL_IDS = {"cartpole": "CartPole-v1", "pong": "Pong-v5", "halfcheetah": "HalfCheetah-v5"}
# The issue's peer figures on this machine type (steps/s): CartPole, Pong, HalfCheetah.
ISSUE_PEERS = {
    "gymnasium SyncVectorEnv": (20_400, 645, 4_300),
    "gymnasium AsyncVectorEnv (shared memory)": (3_300, 528, 1_900),
    "SB3 SubprocVecEnv": (2_900, 523, 1_700),
    "EnvPool": (25_000, 689, 7_500),
}
QUIET = ["log.progress=false", "log.tensorboard=false"]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- measuring


def timed_loop(step, seconds: float, steps_per_call: int) -> float:
    """Call ``step()`` for about ``seconds``; returns steps/s."""
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2:
            return n * steps_per_call / dt


class Contender:
    """One row of the table for one task: ``open()`` builds it (untimed) and returns
    ``(run, close)``; ``run(seconds)`` returns steps/s. Persistent contenders are built once per
    task and timed once per round; the others (subprocess peers) are rebuilt every round, so that
    idle process pools do not sit on the machine between their turns."""

    def __init__(self, row: str, open_fn, persistent: bool = True):
        self.row, self.open_fn, self.persistent = row, open_fn, persistent
        self.run = self.close = None

    def open(self, warm_s: float) -> None:
        self.run, self.close = self.open_fn()
        self.run(warm_s)


def make_agent(task: str):
    import asyncrl
    from asyncrl.algos import ALGOS
    from asyncrl.envs import make_env

    t = TASKS[task]
    cfg = asyncrl.resolve_config("ppo", t["id"], sets=[*QUIET, *t["sets"]])
    env = make_env(cfg.env)
    try:
        agent = ALGOS["ppo"].make_agent(
            env.observation_space, env.action_space, cfg.model, "cpu", cfg.algo_params
        )
    finally:
        env.close()
    agent.eval_mode()
    return agent, cfg


def peer_policy(agent, action_space):
    """What a user of a vector env would run: forward + sample, actions clipped to the box."""
    import gymnasium as gym

    box = isinstance(action_space, gym.spaces.Box)
    low, high = (action_space.low, action_space.high) if box else (None, None)

    def policy(obs):
        a = agent.act(np.asarray(obs), deterministic=False)
        return np.clip(a, low, high) if box else a

    return policy


# ----------------------------------------------------------------------------- ceilings


def raw_single_env(task: str):
    from asyncrl.envs import EnvSpec, make_env

    env = make_env(EnvSpec(id=TASKS[task]["id"]))
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(4096)]
    i = [0]

    def step():
        _, _, te, tr, _ = env.step(actions[i[0] & 4095])
        i[0] += 1
        if te or tr:
            env.reset()

    return (lambda secs: timed_loop(step, secs, 1)), env.close


def asyncrl_vec_env_alone(task: str, backends: dict):
    from asyncrl.envs import EnvSpec, make_vec_env

    n = TASKS[task]["envs"]
    env = make_vec_env(EnvSpec(id=TASKS[task]["id"]), n, seed=0)
    backends[task] = type(env).__name__
    env.reset()
    env.action_space.seed(0)
    actions = [
        np.stack([env.action_space.sample() for _ in range(n)]).astype(env.action_example.dtype)
        for _ in range(256)
    ]
    i = [0]

    def step():
        env.step(actions[i[0] & 255])
        i[0] += 1

    return (lambda secs: timed_loop(step, secs, n)), env.close


def policy_alone(task: str, agent, full: bool):
    from asyncrl.envs import EnvSpec, make_vec_env

    n = TASKS[task]["envs"]
    env = make_vec_env(EnvSpec(id=TASKS[task]["id"]), n, seed=0)
    obs = np.array(env.reset())
    env.close()
    ids = np.arange(n)
    if full:
        step = lambda: agent.step(obs, ids)  # noqa: E731
    else:
        step = lambda: agent.act(obs, deterministic=False)  # noqa: E731
    return (lambda secs: timed_loop(step, secs, n)), (lambda: None)


# ----------------------------------------------------------------------------- peers


def _env_fns(task: str, n: int):
    from asyncrl.envs import EnvSpec, make_env

    spec = EnvSpec(id=TASKS[task]["id"])
    return [functools.partial(make_env, spec) for _ in range(n)]


def _gym_vector_runner(env, policy, n):
    state = [env.reset(seed=0)[0]]

    def step():
        state[0], *_ = env.step(policy(state[0]))

    return (lambda secs: timed_loop(step, secs, n)), env.close


def peer_sync(task, agent):
    import gymnasium as gym

    n = TASKS[task]["envs"]
    env = gym.vector.SyncVectorEnv(_env_fns(task, n))
    return _gym_vector_runner(env, peer_policy(agent, env.single_action_space), n)


def peer_async(task, agent):
    import gymnasium as gym

    n = TASKS[task]["envs"]
    env = gym.vector.AsyncVectorEnv(_env_fns(task, n), shared_memory=True)
    return _gym_vector_runner(env, peer_policy(agent, env.single_action_space), n)


def peer_gym_entry_point(task, agent):
    import gymnasium as gym

    n = TASKS[task]["envs"]
    env = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    return _gym_vector_runner(env, peer_policy(agent, env.single_action_space), n)


def peer_sb3(task, agent):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    n = TASKS[task]["envs"]
    env = SubprocVecEnv(_env_fns(task, n))
    policy = peer_policy(agent, env.action_space)
    state = [env.reset()]

    def step():
        state[0], *_ = env.step(policy(state[0]))

    return (lambda secs: timed_loop(step, secs, n)), env.close


def peer_envpool(task, agent):
    import envpool

    n = TASKS[task]["envs"]
    kw = {"use_fire_reset": False} if task == "pong" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = envpool.make(ENVPOOL_IDS[task], env_type="gymnasium", num_envs=n, seed=0, **kw)
    return _gym_vector_runner(env, peer_policy(agent, env.action_space), n)


def peer_ale_vector(task, agent):
    from ale_py import AtariVectorEnv

    n = TASKS[task]["envs"]
    env = AtariVectorEnv("pong", n, use_fire_reset=False, repeat_action_probability=0.0)
    return _gym_vector_runner(env, peer_policy(agent, env.single_action_space), n)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# (row, factory, persistent, tasks it applies to, needed module)
PEERS = [
    ("gymnasium SyncVectorEnv", peer_sync, True, None, None),
    ("gymnasium AsyncVectorEnv (shared memory)", peer_async, False, None, None),
    ("SB3 SubprocVecEnv", peer_sb3, False, None, "stable_baselines3"),
    ("gymnasium CartPoleVectorEnv (vector entry point)", peer_gym_entry_point, True, {"cartpole"}, None),
    ("EnvPool", peer_envpool, True, None, "envpool"),
    ("ale-py AtariVectorEnv", peer_ale_vector, True, {"pong"}, "ale_py"),
]  # fmt: skip


# ----------------------------------------------------------------------------- asyncrl


def asyncrl_mode(task, mode, workers, backend="auto", pinned=False):
    import asyncrl
    from asyncrl.algos import ALGOS
    from asyncrl.runners.train import make_sampler

    t = TASKS[task]
    sets = [
        *QUIET,
        *t["sets"],
        f'sampler.mode="{mode}"',
        f"sampler.workers={workers}",
        f"sampler.num_envs={t['envs']}",
        f"sampler.horizon={t['horizon']}",
        f'env.backend="{backend}"',
        *(_pinning(pinned) if pinned else []),
    ]
    cfg = asyncrl.resolve_config("ppo", t["id"], sets=sets)
    sampler = make_sampler(cfg)
    try:
        agent = ALGOS["ppo"].make_agent(
            sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
        )
        agent.eval_mode()
        sampler.initialize(agent)
    except BaseException:
        sampler.close()
        raise

    def run(secs):
        """Only obtain() is timed: T x B env steps with the agent, into the batch buffer."""
        steps, busy = 0, 0.0
        while busy < secs or steps == 0:
            t0 = time.perf_counter()
            batch = sampler.obtain()
            busy += time.perf_counter() - t0
            steps += batch.env_steps
        return steps / busy

    return run, sampler.close


def _pinning(pinned: str) -> list[str]:
    """auto: worker k on CPU k; split: the inference thread on the first CPU, the workers on
    the others (on 2 cores: all workers on CPU 1)."""
    if pinned == "auto":
        return ['sampler.worker_affinity="auto"']
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0, 1]
    rest = ",".join(map(str, cpus[1:] or cpus))
    return [f'sampler.worker_affinity="{rest}"', f'sampler.inference_affinity="{cpus[0]}"']


def asyncrl_configs(workers: list[int]):
    out = [("serial", 1, "auto"), ("serial", 1, "gymnasium")]
    for mode in ("parallel", "central", "alternating"):
        for w in workers:
            out.append((mode, w, "auto"))
    if max(workers) > 1:  # pinned (Linux): see _pinning
        out.append(("parallel", max(workers), "auto", "auto"))
        out.append(("central", max(workers), "auto", "split"))
        out.append(("alternating", max(workers), "auto", "split"))
    return out


def config_label(mode, w, backend, pinned=False) -> str:
    if mode == "serial":
        return f"asyncrl serial ({'native/auto' if backend == 'auto' else backend} envs)"
    pin = {
        "auto": ", pinned (worker k on CPU k)",
        "split": ", pinned (inference CPU 0, workers the rest)",
    }
    return f"asyncrl {mode}, {w} worker{'s' if w > 1 else ''}" + pin.get(pinned or "", "")


def contenders(task: str, agent, workers: list[int], backends: dict) -> list[Contender]:
    f = functools.partial
    out = [
        Contender(ROW_RAW, f(raw_single_env, task)),
        Contender(ROW_VEC, f(asyncrl_vec_env_alone, task, backends)),
        Contender(ROW_POLICY, f(policy_alone, task, agent, False)),
        Contender(ROW_AGENT_STEP, f(policy_alone, task, agent, True)),
    ]
    for row, fn, persistent, tasks, module in PEERS:
        if (tasks is None or task in tasks) and (module is None or _installed(module)):
            out.append(Contender(row, f(fn, task, agent), persistent))
    for c in asyncrl_configs(workers):
        out.append(Contender(config_label(*c), f(asyncrl_mode, task, *c)))
    return out


ROW_RAW = "raw single env, random actions, no policy"
ROW_VEC = "asyncrl vector env (backend auto), random actions, no policy"
ROW_POLICY = "policy alone: forward + sample (as the peers call it)"
ROW_AGENT_STEP = "policy alone: agent.step (as asyncrl samplers call it)"


# ----------------------------------------------------------------------------- report


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x / 1000:.1f}k" if x >= 10_000 else f"{x:,.0f}"


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for pkg in (
        "numpy",
        "torch",
        "gymnasium",
        "ale-py",
        "mujoco",
        "envpool",
        "stable_baselines3",
        "pyzmq",
    ):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        out.append(f"asyncrl {rev}{' + uncommitted changes' if dirty else ''}")
    except OSError:
        pass
    return ", ".join(out)


def machine() -> str:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(open("/proc/meminfo").read().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return f"{model}, {cores()} cores{mem}, {platform.system()} {platform.release()}"


def load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 workers only, 1 s runs (development)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seconds", type=float, default=None, help="seconds per timed run (3)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (1 2 4)")
    p.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    p.add_argument("--json", default="", help="also write the raw figures here")
    args = p.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    workers = args.workers or ([2] if args.quick else [1, 2, 4])

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = load()
    t_start = time.perf_counter()
    results: dict[str, dict[str, list[float] | str | None]] = {}
    backends: dict[str, str] = {}
    notes: list[str] = []

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    def fail(c: Contender, task: str, e: BaseException) -> None:
        traceback.print_exc()
        results.setdefault(c.row, {})[task] = f"failed: {type(e).__name__}"
        notes.append(f"{c.row} on {task}: {type(e).__name__}: {str(e)[:200]}")

    for task in args.tasks:
        agent, _ = make_agent(task)
        field = contenders(task, agent, workers, backends)
        live: list[Contender] = []
        for c in field:  # persistent ones: built and warmed up once
            if not c.persistent:
                live.append(c)
                continue
            log(f"{task}: start {c.row}")
            try:
                c.open(min(1.0, seconds))
                live.append(c)
            except Exception as e:  # noqa: BLE001 - one failing contender must not end the run
                fail(c, task, e)
        try:
            for r in range(args.reps):  # interleaved rounds, rotated so no row is always first
                k = r * len(live) // max(args.reps, 1)
                for c in live[k:] + live[:k]:
                    if c.row in results and isinstance(results[c.row].get(task), str):
                        continue  # failed earlier
                    try:
                        if not c.persistent:
                            c.open(min(1.0, seconds))
                        rate = c.run(seconds)
                        results.setdefault(c.row, {}).setdefault(task, []).append(rate)
                        log(f"{task} round {r + 1}: {c.row}: {rate:,.0f} steps/s")
                    except Exception as e:  # noqa: BLE001
                        fail(c, task, e)
                    finally:
                        if not c.persistent and c.close is not None:
                            with contextlib.suppress(Exception):
                                c.close()
                            c.close = None
        finally:
            for c in live:
                if c.persistent and c.close is not None:
                    with contextlib.suppress(Exception):
                        c.close()
        results["_backend"] = dict(backends)

    load_end = load()
    elapsed = time.perf_counter() - t_start
    table = render(results, args.tasks, workers)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.no_append:
        argv_s = " ".join(sys.argv[1:])
        text = (
            f"\n## Env-step throughput: asyncrl modes vs vector-env peers "
            f"({started:%Y-%m-%d %H:%M} UTC)\n\n"
            f"Command: `python bench/throughput.py{(' ' + argv_s) if argv_s else ''}` "
            f"({elapsed / 60:.0f} min)  \n"
            f"Machine: {machine()}; 1/5/15-min load average {load_start} at start, "
            f"{load_end} at end (a shared machine: other jobs ran alongside)  \n"
            f"Versions: {versions()}\n\n{table}\n"
        )
        if notes:
            text += "\nFailures: " + "; ".join(notes) + "\n"
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(text)
        print(f"appended to {ROOT / 'bench' / 'RESULTS.md'}")
    return 0


def _median(x):
    return statistics.median(x) if isinstance(x, list) and x else None


def render(results, tasks, workers) -> str:
    cols = [TASKS[t]["label"] for t in tasks]
    lines = [
        "| steps/s (median of 3) | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]

    def cell(row, task):
        v = results.get(row, {}).get(task)
        return v if isinstance(v, str) else _median(v)

    asyncrl_rows = [config_label(*c) for c in asyncrl_configs(workers)]
    peer_rows = [p[0] for p in PEERS]
    ceiling_rows = [ROW_RAW, ROW_VEC, ROW_POLICY, ROW_AGENT_STEP]
    for group in (ceiling_rows, peer_rows, asyncrl_rows):
        for row in group:
            if row not in results:
                continue
            lines.append(f"| {row} | " + " | ".join(fmt(cell(row, t)) for t in tasks) + " |")
    derived = {"ideal": [], "best peer": [], "best asyncrl": [], "a/p": [], "a/i": []}
    for t in tasks:
        env, pol = cell(ROW_RAW, t), cell(ROW_POLICY, t)
        ideal = None
        if isinstance(env, float) and isinstance(pol, float):
            ideal = cores() / (1 / env + 1 / pol)
        peers = [(cell(r, t), r) for r in peer_rows]
        peers = [(v, r) for v, r in peers if isinstance(v, float)]
        ours = [(cell(r, t), r) for r in asyncrl_rows]
        ours = [(v, r) for v, r in ours if isinstance(v, float)]
        bp, ba = max(peers, default=(None, "")), max(ours, default=(None, ""))
        derived["ideal"].append(fmt(ideal))
        derived["best peer"].append(f"{fmt(bp[0])} ({bp[1]})" if bp[0] else "-")
        derived["best asyncrl"].append(f"{fmt(ba[0])} ({ba[1].removeprefix('asyncrl ')})" if ba[0] else "-")  # fmt: skip
        derived["a/p"].append(f"{ba[0] / bp[0]:.2f}x" if ba[0] and bp[0] else "-")
        derived["a/i"].append(f"{ba[0] / ideal:.2f}" if ba[0] and ideal else "-")
    lines.append(f"| ideal = {cores()} cores / (t_env + t_policy) | " + " | ".join(derived["ideal"]) + " |")  # fmt: skip
    lines.append("| best peer | " + " | ".join(derived["best peer"]) + " |")
    lines.append("| best asyncrl | " + " | ".join(derived["best asyncrl"]) + " |")
    lines.append("| best asyncrl / best peer (aim >= 1.4) | " + " | ".join(derived["a/p"]) + " |")
    lines.append("| best asyncrl / ideal (aim >= 0.85 on Pong, HalfCheetah) | " + " | ".join(derived["a/i"]) + " |")  # fmt: skip
    issue = " | ".join(
        "; ".join(f"{k.split(' (')[0]} {fmt(v[list(TASKS).index(t)])}" for k, v in ISSUE_PEERS.items())
        for t in tasks
    )  # fmt: skip
    # the issue's ratios between modes (aims: central, alternating >= 0.8x parallel on CartPole
    # and HalfCheetah, >= 1.0x on Pong; alternating >= 1.2x central on Pong; parallel with 2
    # workers >= 1.6x 1 worker on HalfCheetah and Pong)
    w = max(workers)

    def ratio(a, b, t):
        x, y = cell(config_label(*a), t), cell(config_label(*b), t)
        return f"{x / y:.2f}x" if isinstance(x, float) and isinstance(y, float) else "-"

    par, cen, alt = ("parallel", w, "auto"), ("central", w, "auto"), ("alternating", w, "auto")
    for label, a, b in (
        (f"central / parallel ({w} workers)", cen, par),
        (f"alternating / parallel ({w} workers)", alt, par),
        (f"alternating / central ({w} workers)", alt, cen),
        (f"parallel {w} workers / 1 worker", par, ("parallel", 1, "auto")),
        (f"parallel {w} workers pinned / not pinned", ("parallel", w, "auto", "auto"), par),
        (f"alternating pinned / parallel ({w} workers)", ("alternating", w, "auto", "split"), par),
        (f"alternating pinned / central ({w} workers)", ("alternating", w, "auto", "split"), cen),
    ):
        if w > 1 or "worker" not in label.split("/")[0]:
            lines.append(f"| {label} | " + " | ".join(ratio(a, b, t) for t in tasks) + " |")
    lines.append(f"| issue's peer figures (same machine type, earlier) | {issue} |")
    backends = results.get("_backend", {})
    note = (
        "\nSteps are env (agent) steps; Pong's are 4 emulator frames each. asyncrl env backend "
        "`auto`: "
        + ", ".join(f"{TASKS[t]['id']} -> {backends.get(t, '?')}" for t in tasks)
        + ". Horizon T per obtain(): "
        + ", ".join(f"{TASKS[t]['id']} {TASKS[t]['horizon']}" for t in tasks)
        + f". Worker counts: {', '.join(map(str, workers))} (B envs split between them). "
        "Peers and the policy-alone rows drive the same network with `agent.act` "
        "(forward + sample); asyncrl samplers call `agent.step` (forward + per-env noise "
        "streams + value/log-prob), whose cost is the 'agent.step' row. Torch: 1 thread per "
        "process. ideal uses one raw gymnasium env's step time, so a native vector env can beat it."
    )
    return "\n".join(lines) + "\n" + note


if __name__ == "__main__":
    sys.exit(main())
