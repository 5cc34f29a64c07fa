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
Each figure is the median of 3 runs of about ``--seconds`` seconds after a warm-up; a config's
3 runs are back to back (runtime samplers are started once per config). The machine is shared:
the 1/5/15-min load averages are recorded at start and end. Torch uses 1 thread in this process
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


def repeat(fn, reps: int) -> list[float]:
    return [fn() for _ in range(reps)]


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


def raw_single_env(task: str, seconds: float, reps: int) -> list[float]:
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

    try:
        timed_loop(step, min(0.5, seconds), 1)
        return repeat(lambda: timed_loop(step, seconds, 1), reps)
    finally:
        env.close()


def asyncrl_vec_env_alone(task: str, seconds: float, reps: int) -> tuple[list[float], str]:
    from asyncrl.envs import EnvSpec, make_vec_env

    n = TASKS[task]["envs"]
    env = make_vec_env(EnvSpec(id=TASKS[task]["id"]), n, seed=0)
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

    try:
        timed_loop(step, min(0.5, seconds), n)
        return repeat(lambda: timed_loop(step, seconds, n), reps), type(env).__name__
    finally:
        env.close()


def policy_alone(task: str, agent, seconds: float, reps: int) -> tuple[list[float], list[float]]:
    from asyncrl.envs import EnvSpec, make_vec_env

    n = TASKS[task]["envs"]
    env = make_vec_env(EnvSpec(id=TASKS[task]["id"]), n, seed=0)
    obs = np.array(env.reset())
    env.close()
    ids = np.arange(n)
    plain = lambda: agent.act(obs, deterministic=False)  # noqa: E731
    full = lambda: agent.step(obs, ids)  # noqa: E731
    timed_loop(plain, min(0.5, seconds), n)
    out_plain, out_full = [], []
    for _ in range(reps):  # interleaved
        out_plain.append(timed_loop(plain, seconds, n))
        out_full.append(timed_loop(full, seconds, n))
    return out_plain, out_full


# ----------------------------------------------------------------------------- peers


def _env_fns(task: str, n: int):
    from asyncrl.envs import EnvSpec, make_env

    spec = EnvSpec(id=TASKS[task]["id"])
    return [functools.partial(make_env, spec) for _ in range(n)]


def _drive_gym_vector(env, policy, seconds, reps, n):
    obs, _ = env.reset(seed=0)
    state = [obs]

    def step():
        state[0], *_ = env.step(policy(state[0]))

    timed_loop(step, min(1.0, seconds), n)
    return repeat(lambda: timed_loop(step, seconds, n), reps)


def peer_sync(task, agent, seconds, reps):
    import gymnasium as gym

    n = TASKS[task]["envs"]
    env = gym.vector.SyncVectorEnv(_env_fns(task, n))
    try:
        return _drive_gym_vector(env, peer_policy(agent, env.single_action_space), seconds, reps, n)
    finally:
        env.close()


def peer_async(task, agent, seconds, reps):
    import gymnasium as gym

    n = TASKS[task]["envs"]
    env = gym.vector.AsyncVectorEnv(_env_fns(task, n), shared_memory=True)
    try:
        return _drive_gym_vector(env, peer_policy(agent, env.single_action_space), seconds, reps, n)
    finally:
        env.close()


def peer_gym_entry_point(task, agent, seconds, reps):
    import gymnasium as gym

    if task != "cartpole":
        return None
    n = TASKS[task]["envs"]
    env = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    try:
        return _drive_gym_vector(env, peer_policy(agent, env.single_action_space), seconds, reps, n)
    finally:
        env.close()


def peer_sb3(task, agent, seconds, reps):
    try:
        from stable_baselines3.common.vec_env import SubprocVecEnv
    except ImportError:
        return None
    n = TASKS[task]["envs"]
    env = SubprocVecEnv(_env_fns(task, n))
    policy = peer_policy(agent, env.action_space)
    try:
        state = [env.reset()]

        def step():
            state[0], *_ = env.step(policy(state[0]))

        timed_loop(step, min(1.0, seconds), n)
        return repeat(lambda: timed_loop(step, seconds, n), reps)
    finally:
        env.close()


def peer_envpool(task, agent, seconds, reps):
    try:
        import envpool
    except ImportError:
        return None
    n = TASKS[task]["envs"]
    kw = {"use_fire_reset": False} if task == "pong" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = envpool.make(ENVPOOL_IDS[task], env_type="gymnasium", num_envs=n, seed=0, **kw)
    try:
        return _drive_gym_vector(env, peer_policy(agent, env.action_space), seconds, reps, n)
    finally:
        env.close()


def peer_ale_vector(task, agent, seconds, reps):
    if task != "pong":
        return None
    from ale_py import AtariVectorEnv

    n = TASKS[task]["envs"]
    env = AtariVectorEnv("pong", n, use_fire_reset=False, repeat_action_probability=0.0)
    try:
        return _drive_gym_vector(env, peer_policy(agent, env.single_action_space), seconds, reps, n)
    finally:
        env.close()


PEERS = [
    ("gymnasium SyncVectorEnv", peer_sync),
    ("gymnasium AsyncVectorEnv (shared memory)", peer_async),
    ("SB3 SubprocVecEnv", peer_sb3),
    ("gymnasium CartPoleVectorEnv (vector entry point)", peer_gym_entry_point),
    ("EnvPool", peer_envpool),
    ("ale-py AtariVectorEnv", peer_ale_vector),
]


# ----------------------------------------------------------------------------- asyncrl


def asyncrl_mode(task, mode, workers, seconds, reps, backend="auto"):
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
    ]
    cfg = asyncrl.resolve_config("ppo", t["id"], sets=sets)
    sampler = make_sampler(cfg)
    try:
        agent = ALGOS["ppo"].make_agent(
            sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
        )
        agent.eval_mode()
        sampler.initialize(agent)

        def run(secs):
            steps, busy = 0, 0.0
            while busy < secs or steps == 0:
                t0 = time.perf_counter()
                batch = sampler.obtain()
                busy += time.perf_counter() - t0
                steps += batch.env_steps
            return steps / busy

        run(min(1.0, seconds))  # warm-up: first batches, worker start-up
        return repeat(lambda: run(seconds), reps)
    finally:
        sampler.close()


def asyncrl_configs(quick: bool, workers: list[int]):
    out = [("serial", 1, "auto"), ("serial", 1, "gymnasium")]
    for mode in ("parallel", "central", "alternating"):
        for w in workers:
            out.append((mode, w, "auto"))
    return out


def config_label(mode, w, backend) -> str:
    if mode == "serial":
        return f"asyncrl serial ({'native/auto' if backend == 'auto' else backend} envs)"
    return f"asyncrl {mode}, {w} worker{'s' if w > 1 else ''}"


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
    notes: list[str] = []

    def record(row, task, fn):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {task:11s} {row} ...", flush=True)
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - one failing contender must not end the run
            traceback.print_exc()
            out = f"failed: {type(e).__name__}"
            notes.append(f"{row} on {task}: {type(e).__name__}: {str(e)[:200]}")
        results.setdefault(row, {})[task] = out
        if isinstance(out, list):
            print(f"    {[round(x) for x in out]} -> median {statistics.median(out):,.0f} steps/s")

    for task in args.tasks:
        agent, _ = make_agent(task)
        record(
            "raw single env, random actions, no policy",
            task,
            functools.partial(raw_single_env, task, seconds, args.reps),
        )

        def vec_alone(task=task):
            rates, name = asyncrl_vec_env_alone(task, seconds, args.reps)
            results.setdefault("_backend", {})[task] = name
            return rates

        record("asyncrl vector env (backend auto), random actions, no policy", task, vec_alone)
        pol: dict[str, list[float]] = {}

        def pol_plain(task=task, agent=agent, pol=pol):
            pol["plain"], pol["full"] = policy_alone(task, agent, seconds, args.reps)
            return pol["plain"]

        record("policy alone: forward + sample (as the peers call it)", task, pol_plain)
        results.setdefault("policy alone: agent.step (as asyncrl samplers call it)", {})[task] = (
            pol.get("full")
        )
        for name, fn in PEERS:
            record(name, task, functools.partial(fn, task, agent, seconds, args.reps))
        for mode, w, backend in asyncrl_configs(args.quick, workers):
            record(
                config_label(mode, w, backend),
                task,
                functools.partial(asyncrl_mode, task, mode, w, seconds, args.reps, backend),
            )

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

    asyncrl_rows = [r for r in results if r.startswith("asyncrl ") and "vector env" not in r]
    peer_rows = [name for name, _ in PEERS]
    ceiling_rows = [r for r in results if r.startswith(("raw single", "policy alone"))]
    ceiling_rows.insert(1, "asyncrl vector env (backend auto), random actions, no policy")
    for group in (ceiling_rows, peer_rows, asyncrl_rows):
        for row in group:
            if row not in results:
                continue
            lines.append(f"| {row} | " + " | ".join(fmt(cell(row, t)) for t in tasks) + " |")
    derived = {"ideal": [], "best peer": [], "best asyncrl": [], "a/p": [], "a/i": []}
    for t in tasks:
        env = cell("raw single env, random actions, no policy", t)
        pol = cell("policy alone: forward + sample (as the peers call it)", t)
        n = TASKS[t]["envs"]
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
        del n
    lines.append(f"| ideal = {cores()} cores / (t_env + t_policy) | " + " | ".join(derived["ideal"]) + " |")  # fmt: skip
    lines.append("| best peer | " + " | ".join(derived["best peer"]) + " |")
    lines.append("| best asyncrl | " + " | ".join(derived["best asyncrl"]) + " |")
    lines.append("| best asyncrl / best peer (aim >= 1.4) | " + " | ".join(derived["a/p"]) + " |")
    lines.append("| best asyncrl / ideal (aim >= 0.85 on Pong, HalfCheetah) | " + " | ".join(derived["a/i"]) + " |")  # fmt: skip
    issue = " | ".join(
        "; ".join(f"{k.split(' (')[0]} {fmt(v[list(TASKS).index(t)])}" for k, v in ISSUE_PEERS.items())
        for t in tasks
    )  # fmt: skip
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
