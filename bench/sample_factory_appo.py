"""Asynchronous APPO on CartPole-v1: asyncrl against Sample Factory 2, same hyperparameters, same run.

Both libraries train APPO (PPO's clipped surrogate on V-trace targets) with 2 rollout worker
processes x 8 envs, fully asynchronously (the learner in its own process; at most 2 batches
collected ahead of it), from the settings of asyncrl's ``appo_classic`` preset (RL-Zoo's
CartPole-v1 PPO, with V-trace): rollouts of 32 steps, batches of 512 (32 x 16 envs), one minibatch
of 512, 20 epochs, gamma 0.98, V-trace rho_bar 1 and c_bar 0.8, Adam lr 1e-3 decayed linearly to 0
over the run, Adam eps 1e-5, clip 0.2 (constant: Sample Factory cannot anneal it, so asyncrl's
``anneal_clip_range`` is switched off), value loss 0.5 * MSE, no value clipping, no entropy bonus,
gradient-norm clip 0.5, advantages normalised over the batch, no observation or return
normalisation, bootstrapping at time limits, separate 64x64 tanh MLPs for policy and value,
torch on 1 thread per process, CPU. ``HYPERPARAMETERS`` below maps each setting to both
libraries' names; ``NOT_MAPPED`` lists what differs and cannot be set equal.

asyncrl runs as users run it: ``asyncrl train appo CartPole-v1 --mode parallel --workers 2
--envs-per-worker 8 --async``. Sample Factory 2.1 needs gymnasium<1 and numpy<2, which asyncrl's
pins exclude, so it runs in a venv of its own, ``bench/.venv-sf`` (created on first use: torch
2.13.0 CPU first, then sample-factory 2.1.1 with torch held at 2.13.0), through the driver
``bench/_sf_appo.py``. Runs are interleaved (asyncrl seed 1, Sample Factory seed 1, asyncrl seed 2,
...), each a fresh process tree.

What is measured, the same way for both:
- **Threshold: the training-episode return**, mean of the last 100 finished training episodes
  (asyncrl's ``return_mean`` column, Sample Factory's own ``reward`` statistic with
  ``--stats_avg=100``), read after every learned batch; the first batch at or above 475 counts.
  Sample Factory evaluates nothing during training, so a periodic evaluation would be asyncrl's
  alone; it is off here (``log.eval_every`` = the run's steps: only a final one) and **no
  evaluation time is in any clock**. The final evaluation (10 deterministic episodes of the final
  policy; Sample Factory: the driver's, after its run) is reported as a sanity check, untimed.
- **Clocks** start where each library starts its processes: asyncrl's ``time_s`` (from just
  before it spawns the learner and workers), Sample Factory's from just before ``runner.init()``
  (which spawns its learner, inference worker and rollout workers). Interpreter start, imports and
  config parsing in the main process are outside; each library's start-up of its processes,
  first env resets and learning are inside. "start-up s" is the time to the first learned batch.
- **Env steps/s**: env steps the learner consumed between its first and last batch, over that
  time (steady state, start-up excluded). "wall s, N" is the clock at the last batch.
- **CPU s**: user + system time of the whole process tree of the run (getrusage of the reaped
  children), the figure other jobs on a shared machine disturb least.

    python bench/sample_factory_appo.py [--seeds 1 2 3] [--steps 200000] [--epochs 20] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (bench/ is not a package)
    append_results,
    git_line,
    machine_line,
    median_or_none,
    ratio,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SF_VENV = BENCH / ".venv-sf"
SF_DRIVER = BENCH / "_sf_appo.py"
WORK = BENCH / "_work" / "sample_factory_appo"

ENV_ID = "CartPole-v1"
TARGET = 475.0
SF_VERSION = "2.1.1"
TORCH_VERSION = "2.13.0"  # the local CPU build; any other spec pulls a multi-GB CUDA build
WORKERS, ENVS_PER_WORKER, ROLLOUT = 2, 8, 32
EVAL_EPISODES = 10
EPOCHS = 20  # appo_classic's; --epochs changes it on both sides

# (setting, value, asyncrl, Sample Factory). asyncrl: preset appo_classic plus the --set below;
# Sample Factory: the flags below (its defaults where the cell says "default").
HYPERPARAMETERS = [
    ("rollout workers x envs", "2 x 8", "--workers 2 --envs-per-worker 8", "--num_workers=2 --num_envs_per_worker=8"),
    ("asynchronous learner", "yes, 2 batches ahead at most", "--async (sampler.async_batches=2)", "--async_rl=True --num_batches_to_accumulate=2 (defaults)"),
    ("rollout length", "32", "sampler.horizon=32 (preset)", "--rollout=32 --recurrence=32 (V-trace needs recurrence = rollout)"),
    ("batch", "512 = 32 x 16", "horizon x num_envs", "--batch_size=512 --num_batches_per_epoch=1"),
    ("epochs x minibatches", "20 x 1", "appo.epochs=20 appo.minibatches=1 (preset)", "--num_epochs=20 (1 minibatch of 512)"),
    ("network", "separate 64x64 tanh MLPs", "model.hidden_sizes=[64, 64] tanh, shared_trunk=false", "--use_rnn=False --encoder_mlp_layers 64 64 --nonlinearity=tanh --actor_critic_share_weights=False"),
    ("learning rate", "1e-3, linear to 0 over the run", "appo.learning_rate=1e-3 anneal_lr=true (preset)", "--learning_rate=1e-3 + lr_schedule linear_decay (the driver's --lr-linear-decay)"),
    ("Adam eps", "1e-5", "appo.adam_eps=1e-5 (default)", "--adam_eps=1e-5"),
    ("gamma", "0.98", "appo.gamma=0.98 (preset)", "--gamma=0.98"),
    ("V-trace rho_bar, c_bar, pg rho", "1, 0.8, 1", "appo.rho_bar=1 c_bar=0.8 pg_rho_bar=1 (preset)", "--with_vtrace=True --vtrace_rho=1 --vtrace_c=0.8 (rho also clips the pg advantage)"),
    ("clip range", "0.2, constant", "appo.clip_range=0.2, --set appo.anneal_clip_range=false", "--ppo_clip_ratio=0.2"),
    ("value loss", "0.5 * MSE, unclipped", "appo.value_coef=1.0 on 0.5*MSE, clip_value=false", "--value_loss_coeff=0.5 on MSE, --ppo_clip_value=1e9"),
    ("entropy bonus", "0", "appo.entropy_coef=0", "--exploration_loss_coeff=0"),
    ("gradient-norm clip", "0.5", "appo.max_grad_norm=0.5 (default)", "--max_grad_norm=0.5"),
    ("advantage normalisation", "over the (mini)batch", "appo.normalize_advantage=true", "always on"),
    ("observation / return normalisation", "off / off", "model.normalize_obs=false (default); none", "--normalize_input=False --normalize_returns=False"),
    ("bootstrap at time limits", "yes", "timeout_value (always)", "--value_bootstrap=True"),
    ("max policy lag", "400 SGD steps", "appo.max_policy_lag=20 versions x 20 SGD steps", "--max_policy_lag=400 (counts SGD steps)"),
    ("torch threads", "1 per process", "torch_threads=1 (default)", "1 in learner and inference worker (SF's own)"),
]  # fmt: skip

NOT_MAPPED = [
    "PPO clip interval: asyncrl clips the ratio to [1 - 0.2, 1 + 0.2] = [0.8, 1.2]; Sample Factory to "
    "[1/1.2, 1.2] = [0.83, 1.2] (its 'unbiased' clip) and also clamps the ratio itself to [0.05, 20].",
    "Clip-range annealing: asyncrl's preset anneals the clip range to 0; Sample Factory cannot, so it "
    "is constant for both (asyncrl --set appo.anneal_clip_range=false).",
    "Bootstrap at the end of a rollout: asyncrl uses V(s_T) from the acting policy; Sample Factory's "
    "V-trace uses (V(s_{T-1}) - r_{T-1}) / gamma from the current model (its code), so its last step "
    "of each rollout has a near-zero advantage. Time-limit bootstrap: asyncrl adds gamma V(s_T') of "
    "the final observation (acting policy); Sample Factory adds gamma V(s_t) of the last observation "
    "before it (learner, at batch preparation).",
    "Initialisation: asyncrl orthogonal, gain sqrt(2) in the MLPs, 0.01 on the policy head, 1 on the "
    "value head; Sample Factory orthogonal with gain 1 on every layer (--policy_init_gain=1, default).",
    "Inference: asyncrl's parallel mode acts in each worker with its own policy copy; Sample Factory "
    "acts in a separate inference process for both workers, each worker double-buffering its 8 envs "
    "as 2 groups of 4 (--worker_num_splits=2, default), workers pinned to cores "
    "(--set_workers_cpu_affinity=True, default). So Sample Factory runs 5 processes (runner, learner, "
    "inference, 2 rollout), asyncrl 4 (main, learner, 2 workers).",
    "Start of episodes: Sample Factory steps each env 32 x (its index on the worker) random actions "
    "before the first rollout (--decorrelate_envs_on_one_worker=True, default; not counted as env "
    "steps); asyncrl starts all envs from reset.",
    "Sample Factory 2.1.1 crashes with V-trace (its learner reads GAE-only advantages for TensorBoard "
    "summaries, fixed upstream but not released); the driver patches that summary function only.",
    "Start-up (in the clocks): Sample Factory's runner.init() first spawns a process that builds "
    "one env to read its spaces (--use_env_info_cache=False, default) and saves a git diff of the "
    "working directory's repository into the run; asyncrl reads the spaces before its clock starts. "
    "The column 'wall s from 1st batch to 475' leaves start-up out.",
    "Sample Factory's inference worker takes new weights after every SGD step (its policy version "
    "is the SGD-step count); asyncrl's workers take them after each batch's update.",
    "Logging: Sample Factory writes TensorBoard summaries (cannot be switched off); asyncrl's "
    "TensorBoard is off, its progress.csv gets a row per batch (log.log_every_s=0). Checkpoints: the "
    "final one only, for both (asyncrl log.checkpoint_every = steps; Sample Factory "
    "--save_every_sec=100000, --save_best_after=1e9).",
]


# -- the two sides ---------------------------------------------------------------------------------
def asyncrl_command(seed: int, steps: int, run_dir: Path, epochs: int) -> list[str]:
    exe = shutil.which("asyncrl", path=str(Path(sys.executable).parent)) or "asyncrl"
    sets = [
        "appo.anneal_clip_range=false",  # Sample Factory has no clip annealing (NOT_MAPPED)
        *([f"appo.epochs={epochs}"] if epochs != EPOCHS else []),
        f"log.eval_every={steps}",  # only the final evaluation (untimed sanity check)
        f"log.eval_episodes={EVAL_EPISODES}",
        f"log.checkpoint_every={steps}",
        "log.log_every_s=0",  # a progress row per learned batch
        "log.tensorboard=false",
    ]
    return [
        exe, "train", "appo", ENV_ID, "--mode", "parallel", "--workers", str(WORKERS),
        "--envs-per-worker", str(ENVS_PER_WORKER), "--async", "--steps", str(steps),
        "--seed", str(seed), "--run-dir", str(run_dir), "--no-progress",
        *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip


def sf_command(seed: int, steps: int, run_dir: Path, epochs: int) -> list[str]:
    flags = {
        "env": ENV_ID, "algo": "APPO", "device": "cpu", "seed": seed,
        "train_dir": run_dir, "experiment": "run", "restart_behavior": "overwrite",
        "num_workers": WORKERS, "num_envs_per_worker": ENVS_PER_WORKER,
        "rollout": ROLLOUT, "recurrence": ROLLOUT, "batch_size": ROLLOUT * WORKERS * ENVS_PER_WORKER,
        "num_batches_per_epoch": 1, "num_epochs": epochs,
        "use_rnn": False, "nonlinearity": "tanh", "actor_critic_share_weights": False,
        "learning_rate": 1e-3, "adam_eps": 1e-5, "max_grad_norm": 0.5, "gamma": 0.98,
        "with_vtrace": True, "vtrace_rho": 1.0, "vtrace_c": 0.8,
        "ppo_clip_ratio": 0.2, "ppo_clip_value": 1e9, "value_loss_coeff": 0.5,
        "exploration_loss_coeff": 0.0, "normalize_input": False, "normalize_returns": False,
        # asyncrl drops batches 20 policy versions old; a version is one batch of `epochs` SGD steps.
        "value_bootstrap": True, "max_policy_lag": 20 * epochs, "stats_avg": 100,
        "train_for_env_steps": steps, "save_every_sec": 100_000, "save_best_after": 10**9,
    }  # fmt: skip
    sf_argv = [f"--{k}={v}" for k, v in flags.items()] + ["--encoder_mlp_layers", "64", "64"]
    return [
        str(SF_VENV / "bin" / "python"), str(SF_DRIVER), "--log", str(run_dir / "progress.jsonl"),
        "--lr-linear-decay", "--eval-episodes", str(EVAL_EPISODES), "--", *sf_argv,
    ]  # fmt: skip


def launch(cmd: list[str], cwd: Path, log_path: Path, timeout_s: float) -> tuple[float, float]:
    """Run ``cmd`` to its end in a session of its own; (process wall s, CPU s of its reaped
    process tree). Whatever of that session is still alive afterwards (a crashed run can leave
    spawned children waiting) is ended through its process group."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group's leader is proc: only its tree
            proc.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if returncode != 0:
        why = f"timed out after {timeout_s:.0f} s" if returncode is None else f"exit {returncode}"
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({why}); log {log_path}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def asyncrl_rows(run_dir: Path) -> tuple[list[dict], float | None]:
    with open(run_dir / "progress.csv", newline="") as f:
        raw = list(csv.DictReader(f))
    rows = [
        {
            "t": float(r["time_s"]),
            "env_steps": int(r["env_steps"]),
            "return_mean": float(r["return_mean"]) if r["return_mean"] not in ("", "nan") else None,
        }
        for r in raw
    ]
    evals = [float(r["eval_return_mean"]) for r in raw if r["eval_return_mean"] not in ("", None)]
    return rows, (evals[-1] if evals else None)


def sf_rows(run_dir: Path) -> tuple[list[dict], float | None]:
    rows, final = [], {}
    for line in (run_dir / "progress.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "final" in d:
            final = d["final"]
        else:
            rows.append(d)
    return rows, final.get("eval_return_mean")


def summarize(lib: str, seed: int, rows: list[dict], final_eval, wall: float, cpu: float) -> dict:
    learned = [r for r in rows if r["env_steps"] > 0]  # SF also reports 0 once at start-up
    if len(learned) < 2:
        raise SystemExit(f"{lib} seed {seed}: fewer than 2 learned batches logged")
    first, last = learned[0], learned[-1]
    hit = next(
        (r for r in learned if r["return_mean"] is not None and r["return_mean"] >= TARGET), None
    )
    return {
        "lib": lib,
        "seed": seed,
        "steps_to_target": hit["env_steps"] if hit else None,
        "s_to_target": hit["t"] if hit else None,
        "learn_s_to_target": hit["t"] - first["t"] if hit else None,
        "startup_s": first["t"],
        "steps_per_s": (last["env_steps"] - first["env_steps"]) / (last["t"] - first["t"]),
        "wall_s": last["t"],
        "env_steps": last["env_steps"],
        "process_s": wall,
        "cpu_s": cpu,
        "final_return": last["return_mean"],
        "final_eval": final_eval,
        "curve": [(r["env_steps"], r["return_mean"]) for r in learned],
    }


def run_one(lib: str, seed: int, steps: int, work: Path, epochs: int) -> dict:
    run_dir = work / f"{lib}_seed{seed}"
    timeout_s = 300 + steps / 50  # a run far slower than 50 env steps/s is stuck
    shutil.rmtree(run_dir, ignore_errors=True)
    if lib == "asyncrl":
        wall, cpu = launch(
            asyncrl_command(seed, steps, run_dir, epochs),
            ROOT,
            work / f"{lib}_seed{seed}.log",
            timeout_s,
        )
        rows, final_eval = asyncrl_rows(run_dir)
    else:
        run_dir.mkdir(parents=True)
        wall, cpu = launch(
            sf_command(seed, steps, run_dir, epochs),
            run_dir,
            work / f"{lib}_seed{seed}.log",
            timeout_s,
        )
        rows, final_eval = sf_rows(run_dir)
    return summarize(lib, seed, rows, final_eval, wall, cpu)


# -- the Sample Factory venv -----------------------------------------------------------------------
def sf_python() -> Path:
    """bench/.venv-sf's interpreter, creating the venv first if it lacks sample-factory."""
    py = SF_VENV / "bin" / "python"
    check = [str(py), "-c", "import sample_factory, torch, gymnasium"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    print(
        f"creating {SF_VENV} (torch {TORCH_VERSION} CPU, sample-factory {SF_VERSION}) ...",
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(SF_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    # torch first and alone: its CPU build; then hold it there (and numpy below 2, as SF needs).
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    constraints = SF_VENV / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\nnumpy<2\ngymnasium<1\n")
    subprocess.run([*pip, "-c", str(constraints), f"sample-factory=={SF_VERSION}"], check=True)
    got = sf_versions(py)
    if not got["torch"].startswith(TORCH_VERSION):
        raise SystemExit(
            f"{SF_VENV}: torch is {got['torch']}, wanted {TORCH_VERSION}; delete it and rerun"
        )
    return py


def sf_versions(py: Path) -> dict[str, str]:
    code = (
        "import json, platform; from importlib import metadata as m; "
        "print(json.dumps({'python': platform.python_version(), "
        "**{d: m.version(d) for d in ('sample-factory', 'torch', 'numpy', 'gymnasium')}}))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def asyncrl_versions() -> str:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "missing"

    return (
        f"Python {platform.python_version()}, torch {v('torch')}, gymnasium {v('gymnasium')}, "
        f"numpy {v('numpy')}, pyzmq {v('pyzmq')}; {git_line()}"
    )


def load_text() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def uptime_text() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average: {load_text()}"


# -- report ----------------------------------------------------------------------------------------
COLUMNS = [
    ("steps_to_target", "env steps to 475", "steps"),
    ("s_to_target", "wall s to 475", "s"),
    ("learn_s_to_target", "wall s from 1st batch to 475", "s"),
    ("startup_s", "start-up s", "s"),
    ("steps_per_s", "env steps/s", "rate"),
    ("wall_s", "wall s, whole run", "s"),
    ("cpu_s", "CPU s, whole run", "s"),
    ("final_return", "final train return", "ret"),
    ("final_eval", "final eval", "ret"),
]


def fmt(x, kind: str) -> str:
    if x is None:
        return "not reached" if kind in ("steps", "s") else "-"
    if kind == "steps":
        return f"{x / 1000:.1f}k"
    if kind == "rate":
        return f"{x:,.0f}"
    return f"{x:.1f}"


def make_table(by: dict, seeds: list[int]) -> str:
    header = "| seed | " + " | ".join(f"{name}: asyncrl | SF" for _, name, _ in COLUMNS) + " |"
    lines = [header, "|---" + "|---:" * (2 * len(COLUMNS)) + "|"]
    for seed in seeds:
        cells = []
        for key, _, kind in COLUMNS:
            cells += [fmt(by[("asyncrl", seed)][key], kind), fmt(by[("sf", seed)][key], kind)]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    med, cells = {}, []
    for key, _, kind in COLUMNS:
        for lib in ("asyncrl", "sf"):
            med[(lib, key)] = median_or_none([by[(lib, s)][key] for s in seeds])
            cells.append(fmt(med[(lib, key)], kind))
    lines.append("| **median** | " + " | ".join(cells) + " |")
    cells = []
    for key, _, _ in COLUMNS:
        cells += [ratio(med[("asyncrl", key)], med[("sf", key)]), ""]
    lines.append("| **asyncrl / SF** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_text(curve: list[tuple[int, float | None]], every: int = 10_000) -> str:
    """Training return (last 100 episodes) at the first batch past each multiple of ``every``."""
    out, mark = [], every
    for steps, ret in curve:
        if steps >= mark and ret is not None:
            out.append(f"{steps / 1000:.0f}k:{ret:.0f}")
            while mark <= steps:
                mark += every
    return " ".join(out)


def mapping_table() -> str:
    lines = ["| setting | value | asyncrl | Sample Factory |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | `{c}` | `{d}` |" for a, b, c, d in HYPERPARAMETERS]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--steps",
        type=int,
        default=200_000,
        help="env steps per run (at 100k the 100-episode mean is still short of 475)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=EPOCHS,
        help=f"epochs per batch on both sides ({EPOCHS}: the preset's; 1 shows the sampling "
        "throughput when the learner is not the bottleneck)",
    )
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    command = "python bench/sample_factory_appo.py " + " ".join(
        a for a in sys.argv[1:] if a != "--no-append"
    )

    py = sf_python()
    sf_v = sf_versions(py)
    started = datetime.datetime.now(datetime.timezone.utc)
    work = WORK / started.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    uptime_before, load_before = uptime_text(), load_text()
    print(f"runs in {work}; {uptime_before}", flush=True)
    by: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:  # interleaved: asyncrl seed 1, SF seed 1, asyncrl seed 2, ...
        for lib in ("asyncrl", "sf"):
            r = run_one(lib, seed, args.steps, work, args.epochs)
            by[(lib, seed)] = r
            reached = (
                f"475 at {fmt(r['steps_to_target'], 'steps')} env steps, {r['s_to_target']:.1f} s"
                if r["steps_to_target"] is not None
                else "475 not reached"
            )
            print(
                f"{lib:7s} seed {seed}: {reached}; {r['steps_per_s']:,.0f} env steps/s; start-up "
                f"{r['startup_s']:.1f} s; {r['env_steps']} steps in {r['wall_s']:.1f} s "
                f"({r['process_s']:.1f} s process, {r['cpu_s']:.1f} CPU s); final train return "
                f"{fmt(r['final_return'], 'ret')}, eval {fmt(r['final_eval'], 'ret')}; "
                f"{uptime_text()}",
                flush=True,
            )
    uptime_after, load_after = uptime_text(), load_text()
    table = make_table(by, args.seeds)
    print()
    print(table)
    print(f"\nload: before `{uptime_before}`, after `{uptime_after}`")
    if args.no_append:
        return

    curves = "\n".join(
        f"- {'asyncrl' if lib == 'asyncrl' else 'SF'} seed {seed}: {curve_text(by[(lib, seed)]['curve'])}"
        for seed in args.seeds
        for lib in ("asyncrl", "sf")
    )
    loaded = max(os.getloadavg()[0], float(load_before.split(",")[0])) > 1.5
    not_mapped = "\n".join(f"- {item}" for item in NOT_MAPPED)
    median_process = {
        lib: statistics.median(by[(lib, s)]["process_s"] for s in args.seeds)
        for lib in ("asyncrl", "sf")
    }
    variant = ""
    if args.epochs != EPOCHS:
        variant = f" — {args.epochs} epoch{'s' if args.epochs > 1 else ''} per batch"
    mapping = mapping_table()
    if args.epochs != EPOCHS:
        mapping += (
            f"\n\nThis run: {args.epochs} epoch(s) per batch instead of {EPOCHS} (asyncrl "
            f"`--set appo.epochs={args.epochs}`, SF `--num_epochs={args.epochs}`), so max policy "
            f"lag {20 * args.epochs} SGD steps (SF `--max_policy_lag={20 * args.epochs}`); the "
            "learning-rate decay spans the run's updates on both sides as before."
        )
    section = f"""
## Asynchronous APPO vs Sample Factory 2{variant} ({started:%Y-%m-%d %H:%M} UTC)

Command: `{command.strip()}`

Machine: {machine_line()}; 1/5/15-min load average {load_before} before and {load_after} after
(`uptime` before: `{uptime_before}`; after: `{uptime_after}`){"; **a loaded, shared machine: other jobs ran alongside, trust CPU s over wall s**" if loaded else ""}.

Versions: asyncrl side {asyncrl_versions()}. Sample Factory side (bench/.venv-sf): Python
{sf_v["python"]}, sample-factory {sf_v["sample-factory"]}, torch {sf_v["torch"]}, numpy
{sf_v["numpy"]}, gymnasium {sf_v["gymnasium"]}.

APPO on {ENV_ID}, {WORKERS} rollout worker processes x {ENVS_PER_WORKER} envs, learner in its own
process, {args.steps:,} env steps per run, seeds {", ".join(map(str, args.seeds))}, interleaved
(asyncrl seed 1, SF seed 1, asyncrl seed 2, ...), one fresh process tree per run. Threshold: the
**training-episode return, mean of the last 100 finished episodes** (asyncrl `return_mean`, SF
`reward` with `--stats_avg=100`), read after every learned batch; SF evaluates nothing during
training, so asyncrl's periodic evaluation is off too and **no evaluation time is in any clock**
("final eval": 10 deterministic episodes of the final policy, untimed). Clocks start where each
library starts its processes (asyncrl `time_s`; SF just before `runner.init()`), so start-up of
the learner/worker processes is included (column "start-up s": to the first learned batch),
interpreter start and imports are not (whole process, median: asyncrl {median_process["asyncrl"]:.0f} s,
SF {median_process["sf"]:.0f} s). Env steps/s: steps the learner consumed from its first to its last
batch over that time. CPU s: all processes of the run (getrusage of reaped children). Median over
seeds; a run that never reaches 475 counts as infinitely slow. Earlier figure on this machine
type (someone else's): SF APPO 2 workers x 8 envs on CartPole-v1 at 6.3-6.9k env steps/s, with
settings not recorded (SF's defaults learn 1 epoch per batch; here {args.epochs}).

{table}

Hyperparameters (asyncrl: preset `appo_classic` + `--set appo.anneal_clip_range=false`):

{mapping}

Not mapped / different:
{not_mapped}

Training return (last 100 episodes) at each 10k env steps:
{curves}
"""
    path = append_results(section)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
