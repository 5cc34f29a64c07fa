"""Replay throughput and memory: asyncrl's Atari replay buffers against Stable-Baselines3's.

Every buffer holds Atari transitions (4x84x84 uint8 stacks, int64 action) from ``--n-envs`` envs
and is measured in the same run, on the same data, in interleaved rounds (median):

- inserts/s into a *full* buffer (every insert overwrites): per env step of B envs (``t=1``,
  SB3's granularity), and, for asyncrl, per sampler batch of ``t=128`` steps;
- sample(32)/s and sample(256)/s from the full buffer, including the conversion to torch tensors
  (SB3's ``sample`` returns tensors; ours are numpy, converted zero-copy by ``to_torch``), and
  for asyncrl also into a preallocated batch (``sample(..., out=replay.batch_buffer(n))``);
- resident memory: RSS growth of a fresh process while one buffer is built and filled, per
  transition, and that figure times 1M (an extrapolation unless ``--size 1000000``).

Buffers: SB3 ``ReplayBuffer(optimize_memory_usage=True)`` (1-step, stores each stack once);
asyncrl ``UniformReplay`` storing whole stacks, ``FrameReplay`` and ``PrioritizedFrameReplay``
storing each frame once (n-step=3 targets computed at sample time, which SB3 does not do).
Frames come from a pool of random frames, stacked as FrameStackObservation would, with
episodes of 200-2000 steps (a reset pads with the first frame).

    python bench/replay_throughput.py [--size 40000] [--n-envs 8] [--seconds 1.0] [--rounds 5]
        [--only sb3,stacked,frame,prioritized_frame] [--memory-only] [--no-append]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import torch

from asyncrl.data import to_torch
from asyncrl.replay import FrameReplay, PrioritizedFrameReplay, Transition, UniformReplay

STACK, FRAME = 4, (84, 84)
CHUNK = 128  # steps per sampler batch for the batched insert figure
POOL = 512  # distinct random frames
RESULTS = Path(__file__).with_name("RESULTS.md")


class AtariLikeStream:
    """Consistent frame stacks for B envs: the stack's older frames are the previous newest ones."""

    def __init__(self, n_envs: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.integers(0, 256, (POOL, *FRAME), dtype=np.uint8)
        self.n_envs = n_envs
        self.frame_ids = np.tile(self.rng.integers(0, POOL, (n_envs, 1)), (1, STACK))
        self.remaining = self.rng.integers(200, 2000, n_envs)

    def next(self, t: int):
        """A [t, B] Transition and the [t, B] next stacks (SB3 stores both)."""
        ids = np.empty((t + 1, self.n_envs, STACK), np.int64)
        done = np.zeros((t, self.n_envs), bool)
        for i in range(t + 1):
            ids[i] = self.frame_ids
            if i == t:
                break
            newest = self.rng.integers(0, POOL, self.n_envs)
            self.frame_ids = np.concatenate([self.frame_ids[:, 1:], newest[:, None]], 1)
            self.remaining -= 1
            done[i] = self.remaining <= 0
            if done[i].any():
                restart = self.rng.integers(0, POOL, done[i].sum())
                self.frame_ids[done[i]] = restart[:, None]
                self.remaining[done[i]] = self.rng.integers(200, 2000, done[i].sum())
        stacks = self.pool[ids]  # [t + 1, B, 4, 84, 84]
        zeros = np.zeros((t, self.n_envs), bool)
        action = self.rng.integers(0, 6, (t, self.n_envs))
        reward = self.rng.normal(size=(t, self.n_envs)).astype(np.float32)
        samples = Transition(stacks[:t], action, reward, done, zeros)
        return samples, stacks[1:]


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


EXAMPLE = Transition(np.zeros((STACK, *FRAME), np.uint8), np.int64(0), np.float32(0), False, False)
OURS = {"stacked": UniformReplay, "frame": FrameReplay, "prioritized_frame": PrioritizedFrameReplay}


class Ours:
    """An asyncrl buffer, filled until it wraps, and its measured operations."""

    def __init__(self, kind: str, size: int, n_envs: int, streams):
        self.kind, self.n_envs = kind, n_envs
        self.chunks, self.steps = streams
        self.buffer = OURS[kind](EXAMPLE, size=size, n_envs=n_envs, discount=0.99, n_step=3, seed=0)
        self.next_chunk = 0
        while self.buffer.steps_written < self.buffer.rows + CHUNK:
            self.insert_chunk()
        self.rng = np.random.default_rng(1)
        self.td = np.random.default_rng(2).normal(size=256)
        self.out = {n: self.buffer.batch_buffer(n) for n in (32, 256)}

    def insert_chunk(self):
        self.buffer.append(self.chunks[self.next_chunk % len(self.chunks)][0])
        self.next_chunk += 1

    def insert_step(self):
        self.buffer.append(self.steps[self.next_chunk % len(self.steps)][0])
        self.next_chunk += 1

    def sample_into(self, batch_size: int):
        return self.buffer.sample(batch_size, self.rng, out=self.out[batch_size])

    def figures(self) -> dict:
        out = {
            "insert_t1": (self.insert_step, self.n_envs),
            "insert_t128": (self.insert_chunk, self.n_envs * CHUNK),
            "sample32": (lambda: to_torch(self.buffer.sample(32, self.rng)), 1),
            "sample256": (lambda: to_torch(self.buffer.sample(256, self.rng)), 1),
            "sample32_out": (lambda: to_torch(self.sample_into(32)), 1),
            "sample256_out": (lambda: to_torch(self.sample_into(256)), 1),
        }
        if self.kind == "prioritized_frame":

            def sample_update():
                batch = to_torch(self.buffer.sample(256, self.rng))
                self.buffer.update_priorities(batch.indices, self.td)

            out["sample256+update"] = (sample_update, 1)
        return out


class SB3:
    """Stable-Baselines3's ReplayBuffer with optimize_memory_usage (each stack stored once)."""

    def __init__(self, size: int, n_envs: int, streams):
        from gymnasium import spaces
        from stable_baselines3.common.buffers import ReplayBuffer

        self.n_envs, self.steps = n_envs, streams[1]
        obs_space = spaces.Box(0, 255, (STACK, *FRAME), np.uint8)
        # optimize_memory_usage excludes handle_timeout_termination in SB3.
        self.buffer = ReplayBuffer(
            size, obs_space, spaces.Discrete(6), device="cpu", n_envs=n_envs,
            optimize_memory_usage=True, handle_timeout_termination=False,
        )  # fmt: skip
        self.infos = [{} for _ in range(n_envs)]
        self.next_step = 0
        while not self.buffer.full or self.buffer.pos < CHUNK:
            self.insert_step()

    def insert_step(self):
        samples, next_stacks = self.steps[self.next_step % len(self.steps)]
        self.buffer.add(
            samples.observation[0], next_stacks[0], samples.action[0], samples.reward[0],
            samples.terminated[0], self.infos,
        )  # fmt: skip
        self.next_step += 1

    def figures(self) -> dict:
        return {
            "insert_t1": (self.insert_step, self.n_envs),
            "sample32": (lambda: self.buffer.sample(32), 1),
            "sample256": (lambda: self.buffer.sample(256), 1),
        }


def build(kind: str, size: int, n_envs: int, streams):
    return SB3(size, n_envs, streams) if kind == "sb3" else Ours(kind, size, n_envs, streams)


def streams_for(n_envs: int):
    stream = AtariLikeStream(n_envs)
    return [stream.next(CHUNK) for _ in range(4)], [stream.next(1) for _ in range(64)]


def memory_worker(kind: str, size: int, n_envs: int) -> None:
    """Run in a fresh process: RSS growth while building and filling one buffer, as JSON."""
    streams = streams_for(n_envs)
    before = rss()
    start = time.perf_counter()
    built = build(kind, size, n_envs, streams)
    fill_s = time.perf_counter() - start
    grown = rss() - before
    nbytes = built.buffer.nbytes if kind != "sb3" else None
    print(json.dumps({"rss": grown, "nbytes": nbytes, "fill_s": fill_s, "size": size}))


def measure_memory(kind: str, size: int, n_envs: int) -> dict:
    command = [sys.executable, __file__, "--memory-worker", kind, "--size", str(size)]
    command += ["--n-envs", str(n_envs)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {kind} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(load_at_start: str) -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; 1/5/15-min load average {load_at_start} at start, {load} at end "
        "(a shared machine: other jobs ran alongside)"
    )


def versions() -> str:
    try:
        import stable_baselines3

        sb3_version = stable_baselines3.__version__
    except ImportError:
        sb3_version = "not installed"
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return (
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"stable-baselines3 {sb3_version}, asyncrl {commit}"
    )


NAMES = {
    "sb3": "SB3 ReplayBuffer (optimize_memory_usage), 1-step",
    "stacked": "asyncrl UniformReplay, whole stacks, n=3",
    "frame": "asyncrl FrameReplay, n=3",
    "prioritized_frame": "asyncrl PrioritizedFrameReplay, n=3",
}
COLUMNS = {
    "insert_t1": "inserts/s, t=1",
    "insert_t128": "inserts/s, t=128",
    "sample32": "sample(32)/s",
    "sample256": "sample(256)/s",
    "sample32_out": "sample(32, out=)/s",
    "sample256_out": "sample(256, out=)/s",
    "sample256+update": "PER sample(256)+update/s",
}


def table(results: dict, memory: dict, size: int) -> str:
    base = results.get("sb3", {})
    million = "1M transitions" + (" (measured)" if size == 1_000_000 else " (extrapolated)")
    header = ["buffer", *COLUMNS.values(), f"bytes/transition (RSS at {size:,})", million]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for kind in memory:
        row = [NAMES[kind]]
        for key in COLUMNS:
            value = results.get(kind, {}).get(key)
            text = "-" if value is None else f"{value:,.0f}"
            reference = base.get(key.removesuffix("_out"))
            if value is not None and reference:
                text += f" ({value / reference:.1f}x)"
            row.append(text)
        per_transition = memory[kind]["rss"] / memory[kind]["size"]
        row += [f"{per_transition:,.0f}", f"{per_transition * 1e6 / 1e9:.1f} GB"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=40_000, help="transitions per buffer")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure (all rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; median taken")
    parser.add_argument("--only", default=",".join(NAMES), help="comma-separated buffers")
    parser.add_argument("--memory-only", action="store_true", help="skip throughput")
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker, args.size, args.n_envs)
        return
    torch.set_num_threads(1)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in NAMES]
    if unknown:
        parser.error(f"unknown buffers {unknown}; choose from {list(NAMES)}")
    if "sb3" in kinds and importlib.util.find_spec("stable_baselines3") is None:
        print("stable-baselines3 is not installed: measuring asyncrl only", file=sys.stderr)
        kinds.remove("sb3")

    started = time.perf_counter()
    load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    memory = {}
    for kind in kinds:  # each in a fresh process, so RSS growth is this buffer's alone
        memory[kind] = measure_memory(kind, args.size, args.n_envs)
        print(f"memory {kind}: {memory[kind]}", file=sys.stderr)
    results: dict[str, dict] = {}
    if not args.memory_only:
        streams = streams_for(args.n_envs)
        built = {kind: build(kind, args.size, args.n_envs, streams) for kind in kinds}
        figures = {kind: built[kind].figures() for kind in kinds}
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):  # interleaved, so load changes hit every buffer alike
            for kind in kinds:
                for name, (fn, per_call) in figures[kind].items():
                    value = rate(fn, args.seconds / args.rounds) * per_call
                    rates.setdefault((kind, name), []).append(value)
        for (kind, name), values in rates.items():
            results.setdefault(kind, {})[name] = float(np.median(values))

    text = table(results, memory, args.size)
    command = "python bench/replay_throughput.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    note = (
        f"{args.size:,} Atari transitions (4x84x84 uint8 stacks, episodes of 200-2000 steps) from "
        f"{args.n_envs} envs per buffer; buffers are full and wrapping while measured. Ratios are "
        "against SB3 measured in the same run (interleaved rounds, median). t=1 inserts one step "
        "of all envs per call (SB3's granularity), t=128 a sampler batch. Samples include the "
        "conversion to torch tensors; SB3 returns 1-step transitions, asyncrl computes 3-step "
        "returns. `out=` fills a preallocated batch (`batch_buffer`) instead of allocating one; "
        "its ratio is against SB3's plain sample (SB3 has no such option). The PER column samples "
        "256 and updates their priorities. RSS: growth of a fresh process while building and "
        "filling one buffer; the 1M column multiplies the per-transition figure (extrapolated, "
        "not measured at 1M unless --size says so)."
    )
    if args.memory_only:
        note = (
            f"Memory only (--memory-only): RSS growth of a fresh process while building and "
            f"filling one buffer of {args.size:,} Atari transitions (4x84x84 uint8 stacks, "
            f"episodes of 200-2000 steps) from {args.n_envs} envs, until it wraps."
        )
    print(text)
    print(note)
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not args.no_append:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            f"\n## Replay throughput and memory ({stamp})\n\n"
            f"Command: `{command.strip()}`  \nMachine: {machine(load_at_start)}  \nVersions: {versions()}\n\n"
            f"{text}\n\n{note}\n"
        )
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n")
        with RESULTS.open("a") as f:
            f.write(section)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
