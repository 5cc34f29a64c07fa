"""Fault and hostile-peer drill against `asyncrl coordinator` / `asyncrl train` (loopback only).

Five parts, each bounded in time, each a real `asyncrl` process as a user starts it:

1. hostile: `asyncrl coordinator ppo CartPole-v1 --bind tcp://127.0.0.1:PORT --workers 1` while
   a peer sends garbage, a flood of one-byte messages, amplifying headers (schemas padded with
   ~60k empty msgpack arrays), messages of many 1 MiB frames, bad REGISTERs, takeovers of the
   local worker's identity, a swarm of registrations, and one registered worker that only
   heartbeats. Reports messages sent, dropped/refused/late counts from progress.csv, the
   coordinator's peak RSS, whether the run finished and its last return.
2. kills: `asyncrl train ppo CartPole-v1 --mode parallel --workers 2`, one worker SIGKILLed
   every 2 s; the run must finish. Reports kills, restarts (log), finish.
3. double SIGTERM: five `asyncrl train` runs, each sent SIGTERM twice 0.05 s apart; reports
   exit codes, checkpoints written and /tmp/asyncrl-* leftovers.
4. trainer SIGKILL with the replay service (`dqn.replay_service = true`): leftovers of
   /tmp/asyncrl-replay-* and of the replay process.
5. every drill's stderr: count of `leaked shared_memory` warnings.

    python bench/drill.py [--quick] [--no-write]

Appends a section to bench/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asyncrl.runtime.protocol import PROTOCOL_VERSION, Header, MsgType, decode, encode  # noqa: E402

ASYNCRL = str(Path(sys.executable).parent / "asyncrl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "wb")  # noqa: SIM115 - closed by finish()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [ASYNCRL, *args],
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    proc.log_file = f  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(10)
    proc.log_file.close()
    return rc


def tmp_leftovers(prefix: str) -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")))


def last_row(run_dir: Path) -> dict:
    with open(run_dir / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def rss_watch(pid: int, stop: threading.Event, out: dict) -> None:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            out["peak"] = max(out.get("peak", 0), proc.memory_info().rss)
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)


# ------------------------------------------------------------------------------ 1. hostile
def hostile_peer(endpoint: str, stop: threading.Event, sent: dict) -> None:
    ctx = zmq.Context()
    socks = []

    def peer(identity: str):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.sndhwm = 0
        s.identity = identity.encode()
        s.connect(endpoint)
        socks.append(s)
        return s

    def count(kind: str, n: int = 1) -> None:
        sent[kind] = sent.get(kind, 0) + n

    try:
        # a worker that registers first and then only heartbeats (answers no request)
        silent = peer("silent")
        silent.send_multipart(encode(Header(MsgType.REGISTER, meta={"envs": 2})))
        count("silent worker REGISTER", 1)
        junk = peer("junk")
        for payload in (b"x", b"\x00" * 100, b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1])):
            for _ in range(200):
                junk.send(payload)
            count("garbage", 200)
        flood = peer("flood")
        for _ in range(20_000):
            flood.send(b"x")
        count("flood of 1-byte messages", 20_000)
        amp = peer("amplifier")
        pad = [[] for _ in range(60_000)]
        for i in range(150):
            schema = msgpack.packb({"dtype": "float32", "shape": [1], "pad": pad, "n": i})
            head = msgpack.packb(
                {
                    "asyncrl": PROTOCOL_VERSION,
                    "type": int(MsgType.SAMPLES),
                    "run_id": "",
                    "worker_id": "",
                    "seq": 0,
                    "policy_version": 0,
                    "schema": schema,
                }
            )
            amp.send_multipart([head, np.zeros(1, np.float32)])
        count("amplifying headers (~250 kB, 60k empty arrays)", 150)
        frames = peer("frames")
        frame = np.zeros(2**20, np.uint8)
        for _ in range(20):
            frames.send_multipart([b"\x80"] + [frame] * 30, copy=False)
        count("messages of 30 frames x 1 MiB", 20)
        bad = peer("badreg")
        for meta in ({"envs": 5000}, {"envs": 1e9}, {"pid": "abc", "envs": 2}, {"probe": [1]}):
            bad.send_multipart(encode(Header(MsgType.REGISTER, meta=meta)))
        count("bad REGISTERs", 4)
        for identity in ("local-0-0", "local-0-1"):
            t = peer(identity)
            t.send_multipart(encode(Header(MsgType.REGISTER, meta={"envs": 2})))
            t.send_multipart(encode(Header(MsgType.BYE)))
        count("identity takeovers (local-0-*)", 4)
        for i in range(100):
            peer(f"swarm-{i}").send_multipart(encode(Header(MsgType.REGISTER, meta={"envs": 64})))
        count("swarm REGISTERs (100 x 64 envs)", 100)
        run_id, last_beat = "", 0.0
        while not stop.is_set():  # the silent worker: answers nothing, only heartbeats
            if silent.poll(100):
                h, _ = decode(silent.recv_multipart(copy=False))
                run_id = run_id or h.run_id
            if time.monotonic() - last_beat >= 0.5:
                last_beat = time.monotonic()
                silent.send_multipart(encode(Header(MsgType.HEARTBEAT, run_id=run_id)))
                count("silent worker heartbeats")
    finally:
        for s in socks:
            s.close(0)
        ctx.term()


def drill_quiet(work: Path, steps: int) -> dict:
    """The same coordinator run with no hostile peer: the RSS to compare with."""
    run_dir = work / "quiet"
    proc = start(
        [
            "coordinator",
            "ppo",
            "CartPole-v1",
            "--bind",
            f"tcp://127.0.0.1:{free_port()}",
            "--workers",
            "1",
            "--steps",
            str(steps),
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ],
        work / "quiet.log",
    )
    stop, rss = threading.Event(), {}
    watch = threading.Thread(target=rss_watch, args=(proc.pid, stop, rss), daemon=True)
    watch.start()
    rc = finish(proc, 900)
    stop.set()
    return {"rc": rc, "peak_rss_mb": rss.get("peak", 0) / 2**20, "row": last_row(run_dir)}


def drill_hostile(work: Path, steps: int) -> dict:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    run_dir = work / "hostile"
    proc = start(
        [
            "coordinator",
            "ppo",
            "CartPole-v1",
            "--bind",
            endpoint,
            "--workers",
            "1",
            "--steps",
            str(steps),
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ],
        work / "hostile.log",
    )
    stop, rss, sent = threading.Event(), {}, {}
    watch = threading.Thread(target=rss_watch, args=(proc.pid, stop, rss), daemon=True)
    watch.start()
    time.sleep(3)  # let it bind (the peer reconnects anyway)
    t0 = time.monotonic()
    peer = threading.Thread(target=hostile_peer, args=(endpoint, stop, sent), daemon=True)
    peer.start()
    rc = finish(proc, 900)
    took = time.monotonic() - t0
    stop.set()
    peer.join(10)
    row = last_row(run_dir)
    log = (work / "hostile.log").read_text(errors="replace")
    return {
        "rc": rc,
        "took_s": took,
        "sent": sent,
        "peak_rss_mb": rss.get("peak", 0) / 2**20,
        "row": row,
        "traceback": "Traceback" in log,
        "log_lines": len(log.splitlines()),
        "train_log_lines": len((run_dir / "train.log").read_text().splitlines()),
        "leaked": log.count("leaked shared_memory"),
    }


def parallel_ppo(steps: str, run_dir: Path) -> list[str]:
    """`asyncrl train` arguments of a parallel-mode PPO CartPole run with two workers."""
    return ["train", "ppo", "CartPole-v1", "--mode", "parallel", "--workers", "2",
            "--steps", steps, "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip


# ------------------------------------------------------------------------------ 2. kills
def drill_kills(work: Path, steps: int) -> dict:
    run_dir = work / "kills"
    proc = start(
        parallel_ppo(str(steps), run_dir),
        work / "kills.log",
    )
    kills = 0
    while proc.poll() is None:
        time.sleep(2.0)
        try:
            workers = [
                c
                for c in psutil.Process(proc.pid).children(recursive=True)
                if "workers.sampler" in " ".join(c.cmdline())
            ]
        except psutil.NoSuchProcess:
            break
        if workers:
            try:
                workers[kills % len(workers)].kill()
                kills += 1
            except psutil.NoSuchProcess:
                pass
    rc = finish(proc, 60)
    text = (run_dir / "train.log").read_text(errors="replace")
    out = (work / "kills.log").read_text(errors="replace")
    return {
        "rc": rc,
        "kills": kills,
        "row": last_row(run_dir),
        "gone": text.count("is gone"),
        "traceback": "Traceback" in out,
        "leaked": out.count("leaked shared_memory"),
    }


# ------------------------------------------------------------------------------ 3. SIGTERM x2
def drill_double_sigterm(work: Path, runs: int) -> dict:
    before = tmp_leftovers("asyncrl-")
    codes, ckpts, leaked = [], 0, 0
    for i in range(runs):
        run_dir = work / f"sigterm{i}"
        proc = start(
            parallel_ppo("10000000", run_dir),
            work / f"sigterm{i}.log",
        )
        deadline = time.monotonic() + 120
        while not (run_dir / "progress.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        codes.append(finish(proc, 60))
        ckpts += bool(list((run_dir / "checkpoints").glob("*.pt")))
        leaked += (work / f"sigterm{i}.log").read_text(errors="replace").count("leaked shared")
    time.sleep(1)
    left = sorted(
        p
        for p in tmp_leftovers("asyncrl-") - before
        if not os.path.basename(p).startswith("asyncrl-replay")
    )
    return {"codes": codes, "checkpoints": ckpts, "leftovers": left, "leaked": leaked}


# ------------------------------------------------------------------------------ 4. SIGKILL
def drill_sigkill_replay(work: Path, runs: int) -> dict:
    before = tmp_leftovers("asyncrl-replay-")
    leaked, replay_alive = 0, 0
    for i in range(runs):
        run_dir = work / f"sigkill{i}"
        proc = start(
            [
                "train",
                "dqn",
                "CartPole-v1",
                "--steps",
                "10000000",
                "--set",
                "dqn.replay_service=true",
                "--run-dir",
                str(run_dir),
                "--no-progress",
            ],
            work / f"sigkill{i}.log",
        )
        deadline = time.monotonic() + 120
        while not (run_dir / "progress.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        finish(proc, 30)
        gone, alive = psutil.wait_procs(children, timeout=30)
        replay_alive += len(alive)
        for p in alive:
            p.kill()
        leaked += (work / f"sigkill{i}.log").read_text(errors="replace").count("leaked shared")
    time.sleep(1)
    return {
        "runs": runs,
        "leftovers": sorted(tmp_leftovers("asyncrl-replay-") - before),
        "children_alive_after_30s": replay_alive,
        "leaked": leaked,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drill-"))
    load = os.getloadavg()
    steps = 30_000 if args.quick else 100_000
    results = {
        "quiet": drill_quiet(work, steps),
        "hostile": drill_hostile(work, steps),
        "kills": drill_kills(work, 20_000 if args.quick else 40_000),
        "sigterm": drill_double_sigterm(work, 2 if args.quick else 5),
        "sigkill": drill_sigkill_replay(work, 1 if args.quick else 2),
    }
    h, k, s, r = results["hostile"], results["kills"], results["sigterm"], results["sigkill"]
    lines = [
        f"## Fault and hostile-peer drill (bench/drill.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python bench/drill.py{' --quick' if args.quick else ''}` on {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, pyzmq {zmq.__version__}, "
        f"libzmq {zmq.zmq_version()}; load average before: {load[0]:.2f}. Loopback only.",
        "",
        "| drill | what was done | result |",
        "|---|---|---|",
        "| hostile peer | "
        + "; ".join(f"{v:,} {k}" for k, v in h["sent"].items())
        + f" | exit {h['rc']} after {h['took_s']:.0f} s; {int(float(h['row'].get('env_steps', 0))):,} env steps, "
        f"return_mean {float(h['row'].get('return_mean') or 'nan'):.1f}; dropped "
        f"{h['row'].get('dropped_messages', '?')}, refused {h['row'].get('refused_workers', '?')}, "
        f"late batches {h['row'].get('late_batches', '?')}; coordinator peak RSS "
        f"{h['peak_rss_mb']:.0f} MB (the same run without the peer: "
        f"{results['quiet']['peak_rss_mb']:.0f} MB); train.log {h['train_log_lines']} lines; traceback: "
        f"{'yes' if h['traceback'] else 'no'} |",
        f"| a worker SIGKILLed every 2 s | {k['kills']} kills during a "
        f"{int(float(k['row'].get('env_steps', 0))):,}-step parallel PPO run | exit {k['rc']}; "
        f"{k['gone']} deaths noticed; lost batches {k['row'].get('lost_batches', '?')}; "
        f"return_mean {float(k['row'].get('return_mean') or 'nan'):.1f} (of the episodes that "
        "could finish: a killed worker's episodes never do); traceback: "
        f"{'yes' if k['traceback'] else 'no'} |",
        f"| double SIGTERM 0.05 s apart | {len(s['codes'])} parallel runs | exit codes "
        f"{s['codes']}; checkpoints written {s['checkpoints']}/{len(s['codes'])}; "
        f"/tmp/asyncrl-* left: {len(s['leftovers'])} |",
        f"| trainer SIGKILL with the replay service | {r['runs']} DQN runs | "
        f"/tmp/asyncrl-replay-* left: {len(r['leftovers'])}; child processes alive 30 s later: "
        f"{r['children_alive_after_30s']} |",
        f"| stderr of all drills | | `leaked shared_memory` warnings: "
        f"{h['leaked'] + k['leaked'] + s['leaked'] + r['leaked']} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    print(f"(work dir {work})")
    if not args.no_write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
