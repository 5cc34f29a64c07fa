"""The per-step round trip of central inference on one host: a worker hands 1 KB of
observations to the inference server and gets its actions back, with a no-op agent (so only
the transport and the server's bookkeeping are timed), against bare pyzmq echoing the same
1 KB over ipc and tcp (DEALER -> ROUTER -> DEALER, synchronous sockets, no asyncio).

Rows: bare pyzmq ipc and tcp echo; asyncrl's shared-memory channel (observations written into
the worker's segment, an 8-byte request and a 16-byte reply on a Unix socket, the answer read
from the segment: ``runtime/inference.py``), as it runs by default (both sides sleep in the
kernel until a message comes) and with ``sampler.inference_spin_us = 50`` (both sides poll
for 50 us first). Both sides are separate processes; the median of
``--count`` round trips after a warm-up, in ``--rounds`` interleaved rounds (median of their
medians). The issue's aim: at most 1.5x bare pyzmq's 1 KB round trip.

    python bench/inference_rtt.py [--count 3000] [--rounds 3] [--no-append]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from transport_overhead import free_tcp_endpoint as free_tcp  # noqa: E402
from transport_overhead import spawn  # noqa: E402

OBS = 256  # float32: 1 KB of observations per request


def _echo(endpoint: str, count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.connect(endpoint)
    for _ in range(count):
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    sock.close()
    ctx.term()


def bare(endpoint: str, count: int, warmup: int) -> float:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.bind(endpoint)
    child = spawn(_echo, endpoint, count + warmup)
    payload = np.zeros(OBS, np.float32)
    times = []
    for i in range(count + warmup):
        t0 = time.perf_counter()
        sock.send(payload, copy=False)
        np.frombuffer(sock.recv(copy=False).buffer, np.float32)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    child.join(30)
    sock.close()
    ctx.term()
    return statistics.median(times)


class _NoopAgent:
    policy_version = 0

    def step(self, obs, env_ids):
        return np.zeros(len(env_ids), np.int64), None


def _server(path: str, ready, done, spin_s: float) -> None:
    from asyncrl.runtime.inference import InferenceServer

    server = InferenceServer(_NoopAgent(), lambda f, *a: f(*a), lambda a: None, lambda *a: None)
    server.open_channel(path, lambda peer, ids, pid: "", synchronous=True, spin_s=spin_s)
    server.begin_round([b"bench"])
    ready.set()
    done.wait(120)
    server.close()


def channel(count: int, warmup: int, spin_s: float = 0.0) -> float:
    from asyncrl.runtime.inference import InferenceClient, slot_example

    path = os.path.join(tempfile.mkdtemp(prefix="asyncrl-bench-"), "inference.sock")
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_server, args=(path, ready, done, spin_s), daemon=True)
    proc.start()
    ready.wait(60)
    example = slot_example(np.zeros(OBS, np.float32), np.int64(0), None)
    client = InferenceClient(
        path, "bench", [np.zeros(1, np.int64)], example, timeout_s=30, spin_s=spin_s
    )
    view = client.views[0]
    obs = np.zeros((1, OBS), np.float32)
    times = []
    for i in range(count + warmup):
        t0 = time.perf_counter()
        view.observation[:] = obs
        client.request(0)
        client.wait(0)
        np.array(view.action)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    client.close()
    done.set()
    proc.join(30)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    load0 = os.getloadavg()
    rows: dict[str, list[float]] = {"bare pyzmq, ipc": [], "bare pyzmq, tcp": [],
                                    "asyncrl inference channel (shm + Unix socket)": [],
                                    "asyncrl inference channel, inference_spin_us = 50": []}  # fmt: skip
    for _ in range(args.rounds):
        d = tempfile.mkdtemp(prefix="asyncrl-bench-")
        rows["bare pyzmq, ipc"].append(bare(f"ipc://{d}/echo.sock", args.count, 300))
        rows["bare pyzmq, tcp"].append(bare(free_tcp(), args.count, 300))
        rows["asyncrl inference channel (shm + Unix socket)"].append(channel(args.count, 300))
        rows["asyncrl inference channel, inference_spin_us = 50"].append(
            channel(args.count, 300, 50e-6)
        )
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in rows.items()}
    ref = min(med["bare pyzmq, ipc"], med["bare pyzmq, tcp"])
    lines = [
        f"## Central inference round trip, 1 KB, one host ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python bench/inference_rtt.py --count {args.count} --rounds {args.rounds}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.platform()}; load average "
        f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} before, {load1[0]:.2f} {load1[1]:.2f} "
        f"{load1[2]:.2f} after  ",
        f"Versions: Python {platform.python_version()}, pyzmq {zmq.__version__} "
        f"(libzmq {zmq.zmq_version()}), numpy {np.__version__}",
        "",
        "| round trip (median of round medians) | us | / best bare pyzmq |",
        "|---|---:|---:|",
    ]
    for k, v in med.items():
        lines.append(f"| {k} | {v * 1e6:.1f} | {v / ref:.2f} |")
    lines += [
        "",
        "Rounds (us): "
        + "; ".join(f"{k}: " + " / ".join(f"{x * 1e6:.1f}" for x in v) for k, v in rows.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
