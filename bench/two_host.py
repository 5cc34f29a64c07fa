"""Two hosts on one machine: remote workers across a veth link against local and loopback ones.

Two Linux network namespaces joined by a veth pair stand for two machines: the coordinator
(``asyncrl coordinator``, parallel mode, ``--bind tcp://10.77.0.1:PORT --keys DIR``) runs in
namespace A (10.77.0.1/24), the remote workers (``asyncrl worker --connect ... --keys D``) in
namespace B (10.77.0.2/24), with CURVE keys from ``asyncrl keygen`` (each worker its own key,
copied into its own directory as onto a second machine). A "remote host" must share no memory
with the coordinator, so each remote worker also gets its own UTS namespace and hostname and a
private ``/dev/shm``; ``choose_path`` then fails the locality probe and picks frames over TCP on
its own. Every run checks the coordinator's train.log for the path each worker was given. A
remote worker still running 5 s after the coordinator has exited missed its STOP: it is sent
SIGTERM, and counted in the report.

Setups, the same N workers and M envs each in all three:

1. ``veth``: remote workers in namespace B over the veth link (frames over TCP, CURVE);
2. ``local``: N local workers of the coordinator (``--workers N``: ipc + shared memory);
3. ``loopback``: the remote workers of (1) in namespace A, connecting to ``tcp://127.0.0.1``
   (frames over TCP, CURVE, no veth): what the link costs beyond TCP itself.

Workload: PPO with a near-free update (1 epoch of 1 minibatch per batch, no evaluation, no
checkpoints until the end), so the loop's env steps/s is sampling throughput. The figure is
progress.csv's ``env_steps`` over ``time_s`` between its first row (after the first batch, so
start-up and registration are left out) and its last. Per task, a warm-up run of setup 1 sizes
the runs to about ``--seconds``; then ``--rounds`` rounds run every setup once, in a rotated order
(interleaved), and the medians are reported. Beside the rate, the CPU seconds per env step of
all the run's processes (coordinator, local or remote workers; psutil samples paired with the
progress rows, same window), which the other jobs of a shared machine disturb less, and the
bytes that crossed the link per env step (veth or loopback counters of namespace A: batches,
parameters, heartbeats).

Needs root (namespaces, veth, mounts), ``ip`` (iproute2) and ``unshare`` (util-linux). The
namespaces ``asyncrl<pid>a``/``asyncrl<pid>b`` and the veth pair are always removed at the end,
also on Ctrl-C or SIGTERM (after a SIGKILL: ``ip netns list``, ``ip netns del NAME``).

    sudo .venv/bin/python bench/two_host.py [--tasks cartpole halfcheetah] [--workers 2]
        [--rounds 3] [--seconds 10] [--no-append]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ROOT = _common.BENCH_DIR.parent
ASYNCRL = str(Path(sys.executable).parent / "asyncrl")
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
REMOTE_HOSTNAME = "hostb"

TASKS = {
    "cartpole": dict(env="CartPole-v1", envs=8, horizon=128, sets=[], label="CartPole-v1"),
    "halfcheetah": dict(
        env="HalfCheetah-v5",
        envs=4,
        horizon=128,
        sets=["ppo.minibatches=1"],
        label="HalfCheetah-v5",
    ),
    "pong": dict(
        env="ALE/Pong-v5", envs=4, horizon=64, sets=["ppo.minibatches=1"], label="ALE/Pong-v5"
    ),
}
# A near-free update and nothing else in the loop: the run measures sampling.
SETS = [
    "ppo.epochs=1",
    "log.eval_every=-1",
    "log.checkpoint_every=1000000000",
    "log.tensorboard=false",
    "log.log_every_s=0.2",  # progress rows often: the CPU figure pairs them with CPU samples
    "sampler.register_timeout_s=60",
]
SETUPS = {
    "veth": "remote workers over the veth link (frames, CURVE)",
    "local": "local workers (ipc + shared memory)",
    "loopback": "remote workers over loopback (frames, CURVE, no veth)",
}
REGISTERED = re.compile(r"worker b'([^']*)' registered \((\w+), envs \d+\.\.\d+, (\w+)\)")


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


# ------------------------------------------------------------------------------ the two hosts
class TwoHosts:
    """Namespaces A and B joined by a veth pair; ``close()`` removes both (and so the pair)."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.ns_a, self.ns_b = f"asyncrl{pid}a", f"asyncrl{pid}b"
        self.veth_a, self.veth_b = f"arl{pid}a", f"arl{pid}b"  # interface names: <= 15 chars
        self.made: list[str] = []

    def open(self) -> TwoHosts:
        for ns in (self.ns_a, self.ns_b):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
        self.made.append(self.veth_a)  # until moved into a namespace it lives in ours
        for ns, dev, addr in ((self.ns_a, self.veth_a, ADDR_A), (self.ns_b, self.veth_b, ADDR_B)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.made.remove(self.veth_a)
        return self

    def link_bytes(self, dev: str) -> int:
        """Bytes that crossed ``dev`` of namespace A in either direction: rx + tx of the veth
        end, tx alone of ``lo`` (every loopback packet is counted once sent, once received)."""
        stats = json.loads(sh("ip", "-j", "-s", "-n", self.ns_a, "link", "show", "dev", dev))
        counters = stats[0]["stats64"]
        return counters["tx"]["bytes"] + (0 if dev == "lo" else counters["rx"]["bytes"])

    def close(self) -> None:
        for name in reversed(self.made):
            kind = ("netns", "del", name) if name.startswith("asyncrl") else ("link", "del", name)
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("ip", *kind)
        self.made = []


def in_namespace(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def as_other_host(ns: str, cmd: list[str]) -> list[str]:
    """``cmd`` in ``ns`` with its own hostname and an empty private /dev/shm: another machine,
    as far as the locality probe can tell."""
    script = f'hostname {REMOTE_HOSTNAME} && mount -t tmpfs tmpfs /dev/shm && exec "$@"'
    return in_namespace(ns, ["unshare", "--uts", "--mount", "sh", "-c", script, "sh", *cmd])


# ------------------------------------------------------------------------------ processes
class Processes:
    """Every process this script started, each in its own session; ``kill_all`` ends them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """The exit code, or None when it had to be killed after ``timeout`` s."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return None

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def kill_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        self.procs = []


# ------------------------------------------------------------------------------ one run
def make_keys(work: Path, workers: int) -> tuple[Path, list[Path]]:
    """``asyncrl keygen``, then per worker a directory with server.key and its own secret key
    as worker.key_secret: what `asyncrl worker --keys D` finds on a second machine."""
    keys = work / "keys"
    sh(ASYNCRL, "keygen", str(keys), "--workers", str(workers))
    dirs = []
    for k in range(workers):
        d = work / f"worker{k + 1}-keys"
        d.mkdir()
        shutil.copy(keys / "server.key", d / "server.key")
        shutil.copy(keys / f"worker{k + 1 if k else ''}.key_secret", d / "worker.key_secret")
        dirs.append(d)
    return keys, dirs


def read_rate(run_dir: Path) -> tuple[float, int]:
    """(env steps/s between progress.csv's first and last row, env steps of the run)."""
    with open(run_dir / "progress.csv", newline="") as f:
        rows = [(int(r["env_steps"]), float(r["time_s"])) for r in csv.DictReader(f)]
    (s0, t0), (s1, t1) = rows[0], rows[-1]
    if s1 <= s0 or t1 <= t0:
        raise RuntimeError(f"{run_dir}: too few progress rows to time ({len(rows)})")
    return (s1 - s0) / (t1 - t0), s1


def last_env_steps(run_dir: Path) -> int:
    """env_steps of progress.csv's last row so far (0 before the first)."""
    try:
        with open(run_dir / "progress.csv", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 400))
            line = f.read().splitlines()[-1]
        return int(line.split(b",", 1)[0])
    except (OSError, IndexError, ValueError):
        return 0


class CpuMeter:
    """User + system CPU seconds of some processes and all their descendants (the local
    workers), including those that have exited since: each process counts with the last
    figure seen for it."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU s

    def __call__(self) -> float:
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = p.cpu_times()
                        self.seen[(p.pid, p.create_time())] = times.user + times.system
        return sum(self.seen.values())


def check_paths(run_dir: Path, setup: str, workers: int) -> list[str]:
    """The coordinator's word on each worker (train.log): kind and transport path; raises
    unless every worker got what the setup stands for."""
    found = REGISTERED.findall((run_dir / "train.log").read_text(errors="replace"))
    want = ("local", "shm") if setup == "local" else ("remote", "frames")
    if len(found) != workers or any((kind, path) != want for _, kind, path in found):
        raise RuntimeError(f"{setup}: expected {workers} x {want} in train.log, got {found}")
    if setup != "local" and not all(peer.startswith(REMOTE_HOSTNAME) for peer, _, _ in found):
        raise RuntimeError(f"{setup}: workers not on host {REMOTE_HOSTNAME!r}: {found}")
    return [f"{peer}: {kind}, {path}" for peer, kind, path in found]


def run_once(ctx: dict, task: str, setup: str, steps: int, tag: str) -> dict:
    net: TwoHosts = ctx["net"]
    procs: Processes = ctx["procs"]
    spec, workers = TASKS[task], ctx["workers"]
    ctx["port"] += 1
    host = "127.0.0.1" if setup == "loopback" else ADDR_A
    endpoint = f"tcp://{host}:{ctx['port']}"
    run_dir = ctx["work"] / f"{task}-{setup}-{tag}"
    sets = [f"sampler.horizon={spec['horizon']}", *SETS, *spec["sets"]]
    coordinator = [ASYNCRL, "coordinator", "ppo", spec["env"], "--bind", endpoint,
                   "--keys", str(ctx["keys"]), "--workers", str(workers if setup == "local" else 0),
                   "--envs-per-worker", str(spec["envs"]), "--min-workers", str(workers),
                   "--steps", str(steps), "--run-dir", str(run_dir), "--no-progress",
                   *(a for s in sets for a in ("--set", s))]  # fmt: skip
    device = "lo" if setup == "loopback" else net.veth_a
    bytes0 = net.link_bytes(device)
    coord = procs.start(in_namespace(net.ns_a, coordinator), ctx["work"] / f"{run_dir.name}.log")
    remote = []
    if setup != "local":
        deadline = time.monotonic() + 120
        log = run_dir / "train.log"
        while "accepting remote workers" not in (log.read_text() if log.exists() else ""):
            if coord.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{setup}: the coordinator did not bind; see {run_dir}.log")
            time.sleep(0.1)
        ns = net.ns_b if setup == "veth" else net.ns_a
        for k, key_dir in enumerate(ctx["worker_keys"]):
            cmd = [ASYNCRL, "worker", "--connect", endpoint, "--keys", str(key_dir),
                   "--envs", str(spec["envs"])]  # fmt: skip
            remote.append(procs.start(as_other_host(ns, cmd), ctx["work"] / f"{run_dir.name}-w{k}.log"))  # fmt: skip
    # (env steps, CPU s of every process of the run) while it runs: CPU per step is taken from
    # the first progress row on, like the rate, so start-up (imports, env builds) is left out.
    samples, deadline = [], time.monotonic() + 900
    cpu = CpuMeter([coord.pid, *(p.pid for p in remote)])
    while coord.poll() is None and time.monotonic() < deadline:
        samples.append((last_env_steps(run_dir), cpu()))
        time.sleep(0.25)
    rc = procs.finish(coord, max(deadline - time.monotonic(), 0.1))
    # A remote worker exits on the coordinator's STOP; one that has not within a few seconds
    # missed it (it would wait out its 30 s silence timeout) and is sent SIGTERM instead.
    missed, worker_rcs = 0, []
    for proc in remote:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            missed += 1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        worker_rcs.append(procs.finish(proc, 15))
    link = net.link_bytes(device) - bytes0
    if rc != 0 or any(c != 0 for c in worker_rcs):
        raise RuntimeError(
            f"{task}/{setup}: coordinator exit {rc}, workers {worker_rcs}; logs in {ctx['work']}"
        )
    rate, env_steps = read_rate(run_dir)
    # From the first sample that saw a progress row to the first that saw the last one (the
    # shutdown after it is left out).
    timed = [(n, c) for n, c in samples if n > 0]
    n0, c0 = timed[0] if timed else (0, 0.0)
    n1, c1 = next(((n, c) for n, c in timed if n == timed[-1][0]), (0, 0.0))
    return {
        "rate": rate,
        "cpu_ms_per_kstep": 1e6 * (c1 - c0) / (n1 - n0) if n1 > n0 else None,
        "bytes_per_step": link / env_steps,
        "paths": check_paths(run_dir, setup, workers),
        "missed_stop": missed,
    }


# ------------------------------------------------------------------------------ report
def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def render(results: dict, tasks: list[str], workers: int, rounds: int) -> str:
    def med(task: str, setup: str, key: str) -> float | None:
        xs = results.get((task, setup), {}).get(key)
        return statistics.median(xs) if xs else None

    cols = " | ".join(TASKS[t]["label"] for t in tasks)
    out = []
    for key, title, digits in (
        ("rate", "env steps/s", 0),
        ("cpu", "CPU ms per 1,000 env steps (all processes)", 0),
    ):
        lines = [f"| {title}, median of {rounds} | {cols} |", "|---" + "|---:" * len(tasks) + "|"]
        for n, (setup, what) in enumerate(SETUPS.items(), 1):
            cells = [fmt(med(t, setup, key), digits) for t in tasks]
            lines.append(f"| {n}. {what} | " + " | ".join(cells) + " |")
        for a, b in (("veth", "local"), ("veth", "loopback"), ("loopback", "local")):
            cells = []
            for t in tasks:
                x, y = med(t, a, key), med(t, b, key)
                cells.append(f"**{x / y:.2f}**" if x and y else "-")
            lines.append(f"| {a} / {b} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    per_round = "; ".join(
        f"{TASKS[t]['label']} {setup}: "
        + " / ".join(f"{x:,.0f}" for x in results.get((t, setup), {}).get("rate", []))
        for t in tasks
        for setup in SETUPS
    )
    link = "; ".join(
        f"{TASKS[t]['label']} {setup} {fmt(med(t, setup, 'bytes'))}"
        for t in tasks
        for setup in ("veth", "loopback")
    )
    sizes = "; ".join(
        f"{TASKS[t]['label']}: {workers} workers x {TASKS[t]['envs']} envs x horizon "
        f"{TASKS[t]['horizon']}"
        for t in tasks
    )
    return (
        "\n\n".join(out) + f"\n\nenv steps/s per round, in the order run: {per_round}.  \n"
        f"Bytes over the link per env step (batches, parameters, heartbeats; median): {link}.  \n"
        f"Batches: {sizes}. PPO, 1 epoch of 1 minibatch per batch.\n"
    )


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------ main
def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["cartpole", "halfcheetah"], choices=list(TASKS))
    p.add_argument("--workers", type=int, default=2, help="workers in every setup (2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per run (10)")
    p.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/two_host.py needs root (network namespaces, veth, mounts): run it with sudo")
        return 2
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            print(f"bench/two_host.py needs `{tool}` (iproute2, util-linux)")
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started, load_start, t_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load(), time.monotonic()  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="asyncrl-two-host-"))
    net, procs = TwoHosts(), Processes()
    results: dict = {}
    paths: dict[str, list[str]] = {}
    failures: list[str] = []
    stops = [0, 0]  # remote workers that missed the coordinator's STOP; remote workers run
    loads: list[float] = []

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:5.0f}s] {msg}", flush=True)

    try:
        net.open()
        keys, worker_keys = make_keys(work, args.workers)
        ctx = dict(net=net, procs=procs, work=work, keys=keys, worker_keys=worker_keys,
                   workers=args.workers, port=5554)  # fmt: skip
        log(f"namespaces {net.ns_a} ({ADDR_A}), {net.ns_b} ({ADDR_B}); work dir {work}")
        for task in args.tasks:
            spec = TASKS[task]
            batch = args.workers * spec["envs"] * spec["horizon"]
            try:  # warm-up, and the size of a run of about --seconds
                warm = run_once(ctx, task, "veth", 12 * batch, "warmup")
            except RuntimeError as e:
                failures.append(f"{task} warm-up: {e}")
                log(f"{task}: warm-up failed: {e}")
                continue
            steps = max(10, round(warm["rate"] * args.seconds / batch)) * batch
            log(f"{task}: warm-up {warm['rate']:,.0f} steps/s; runs of {steps:,} env steps")
            for r in range(args.rounds):
                order = list(SETUPS)
                order = order[r % 3 :] + order[: r % 3]  # rotated: no setup always first
                for setup in order:
                    entry = results.setdefault((task, setup), {"rate": [], "cpu": [], "bytes": []})
                    loads.append(os.getloadavg()[0])
                    try:
                        out = run_once(ctx, task, setup, steps, f"r{r}")
                    except RuntimeError as e:
                        failures.append(f"{task}/{setup} round {r + 1}: {e}")
                        log(f"{task} round {r + 1}: {setup} failed: {e}")
                        continue
                    entry["rate"].append(out["rate"])
                    if out["cpu_ms_per_kstep"] is not None:
                        entry["cpu"].append(out["cpu_ms_per_kstep"])
                    entry["bytes"].append(out["bytes_per_step"])
                    paths[setup] = out["paths"]
                    if setup != "local":
                        stops[0] += out["missed_stop"]
                        stops[1] += args.workers
                    log(f"{task} round {r + 1}: {setup}: {out['rate']:,.0f} steps/s, "
                        f"{fmt(out['cpu_ms_per_kstep'])} CPU ms/1k steps, "
                        f"{out['bytes_per_step']:,.0f} B/step on the link, load {loads[-1]:.1f}; "
                        f"{'; '.join(out['paths'])}")  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()
        net.close()
    table = render(results, args.tasks, args.workers, args.rounds)
    print(table)
    print(f"remote workers that missed STOP (sent SIGTERM): {stops[0]} of {stops[1]}")
    if not args.no_append and results:
        argv_s = " ".join(sys.argv[1:])
        transports = "; ".join(f"{s}: {', '.join(p)}" for s, p in paths.items())
        section = (
            f"\n## Two hosts on one machine: veth vs local vs loopback workers ({started})\n\n"
            f"Command: `sudo .venv/bin/python bench/two_host.py{' ' + argv_s if argv_s else ''}` "
            f"({(time.monotonic() - t_start) / 60:.0f} min)  \n"
            f"Machine: {_common.machine_line()}; 1/5/15-min load {load_start} at start, "
            f"{load()} at end, 1-min load at the start of each run {min(loads, default=0):.1f} to "
            f"{max(loads, default=0):.1f} (a shared machine)  \n"
            f"Versions: {_common.versions_line()}, pyzmq {_zmq_versions()}, "
            f"{_common.git_line()}  \n"
            f"Transport per worker, from the coordinator's train.log (last run of each setup): "
            f"{transports}  \n"
            f"Remote workers that missed the coordinator's STOP at the end of a run (still "
            f"running 5 s later, sent SIGTERM): {stops[0]} of {stops[1]}\n\n{table}"
            + (f"\nFailures: {'; '.join(failures)}\n" if failures else "")
        )
        print(f"appended to {_common.append_results(section)}")
    if failures:
        print("failures:\n  " + "\n  ".join(failures) + f"\nlogs kept in {work}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _zmq_versions() -> str:
    import zmq

    return f"{zmq.__version__} (libzmq {zmq.zmq_version()})"


if __name__ == "__main__":
    sys.exit(main())
