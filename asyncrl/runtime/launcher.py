"""The launcher: starts, signals and reaps the run's processes (sampler workers, the learner,
the replay store). Local subprocesses here (``LocalLauncher``, the default); Ray actors and
Slurm jobs (submitit) for the sampler slots behind the same interface (``Launcher``) in
``cluster.py``.

Owns process handles only. Which program runs is named by role (``PROGRAMS``): this is the one
place that knows the ``workers`` package by module name (``asyncrl`` never imports it). Every
program is a fresh interpreter (spawn semantics, no fork) in its own session, so a terminal's
Ctrl-C reaches the training process only, which then stops them; each program also exits by
itself when its parent dies (``--parent-pid``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# role -> the module run with ``python -m``; the programs live in the top-level workers package
PROGRAMS = {
    "sampler": "workers.sampler",
    "learner": "workers.optimizer",
    "learner-peer": "workers.peer",  # learners 1..N-1 of a data-parallel group
    "replay": "workers.replay",
}

# A program's segments are registered with its own resource tracker, which unlinks them if the
# program is killed (it cannot): that cleanup is by design here, so its "leaked shared_memory
# objects" warning is not for the user (-W options pass on to the tracker process; the filter
# matches warnings issued by that module only).
_QUIET_TRACKER = ["-W", "ignore::UserWarning:multiprocessing.resource_tracker"]


class LauncherError(RuntimeError):
    """A launcher cannot start its programs (a package missing, the cluster unreachable or
    full); one line for the user."""


@dataclass(frozen=True)
class JoinKeys:
    """The CURVE key material (z85 text) a launched program joins the coordinator with: the
    server's public key and the run's own client key pair. Handed over as data (an actor's or a
    job's arguments), never as paths: the program may run on another machine."""

    server_public: str
    client_public: str
    client_secret: str


class Launcher(Protocol):
    """What the runtime needs from a way of starting processes (local, Ray, Slurm).

    A key names what runs: a sampler slot's number, or "learner". ``processes`` holds one handle
    per started key (the coordinator reads which slots exist from it). A ``remote`` launcher's
    programs may run on other machines: they join over TCP at an address on ``join_host`` with
    ``keys`` and the run's launch token (set by the coordinator before the first ``start``)
    instead of over ipc, and they cannot watch the training process's pid."""

    remote: bool
    join_host: str  # remote: the address its programs reach this host at (known after prepare)
    keys: JoinKeys | None  # remote: what its programs authenticate with (None: no CURVE)
    processes: dict[Hashable, Any]

    def prepare(
        self, slots: int
    ) -> None: ...  # before the first start (may block, may raise LauncherError)
    def start(self, key: Hashable, role: str, args: Sequence[str]) -> int: ...
    def exit_code(self, key: Hashable) -> int | None: ...
    def kill(self, key: Hashable, sig: int = 9) -> int: ...
    def kill_and_wait(self, key: Hashable, timeout: float = 5.0) -> None: ...
    def forget(self, key: Hashable) -> None: ...
    def reap(self, timeout: float) -> None: ...
    def close(self) -> None: ...  # after the last reap: let go of the cluster


def source_root() -> str:
    """The checkout this package runs from when ``workers`` sits next to ``asyncrl`` (a run
    without installing), else ''."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "workers").is_dir() else ""


def program_command(role: str, args: Sequence[str]) -> list[str]:
    """The command line that runs ``role``'s program with ``args``."""
    try:
        module = PROGRAMS[role]
    except KeyError:
        raise ValueError(f"unknown process role {role!r}; valid: {', '.join(PROGRAMS)}") from None
    return [sys.executable, *_QUIET_TRACKER, "-m", module, *args]


def program_env(torch_threads: int = 1) -> dict[str, str]:
    """The environment of a started program: this one's, one OpenMP thread per process unless
    the user set it, and the source tree importable however this process was started (a
    checkout run without installing: ``workers`` sits next to ``asyncrl``)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(torch_threads))
    root = source_root()
    if root:
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def popen(role: str, args: Sequence[str], torch_threads: int = 1, **kwargs) -> subprocess.Popen:
    """Start ``role``'s program as a local subprocess in its own session."""
    if os.name == "posix":
        group = {"start_new_session": True}
    else:  # pragma: no cover - Windows
        group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return subprocess.Popen(
        program_command(role, args),
        env=program_env(torch_threads),
        stdin=subprocess.DEVNULL,
        **group,
        **kwargs,
    )


class LocalLauncher:
    """Local subprocesses, one per key (a sampler slot, "learner", ...)."""

    remote = False  # its programs join over ipc and watch our pid
    join_host = ""
    keys = None

    def __init__(self, torch_threads: int = 1):
        self.torch_threads = torch_threads
        self.processes: dict[Hashable, subprocess.Popen] = {}

    def prepare(self, slots: int) -> None:
        pass

    def close(self) -> None:
        pass

    def start(self, key: Hashable, role: str, args: Sequence[str]) -> int:
        proc = popen(role, args, self.torch_threads)
        self.processes[key] = proc
        return proc.pid

    def exit_code(self, key: Hashable) -> int | None:
        """None while ``key``'s process runs (or none was started), else its exit code."""
        proc = self.processes.get(key)
        return None if proc is None else proc.poll()

    def running(self, key: Hashable) -> bool:
        proc = self.processes.get(key)
        return proc is not None and proc.poll() is None

    def kill(self, key: Hashable, sig: int = 9) -> int:
        """Send ``sig`` to ``key``'s process; its pid. ProcessLookupError if none runs."""
        proc = self.processes.get(key)
        if proc is None or proc.returncode is not None or proc.poll() is not None:
            raise ProcessLookupError(f"no process runs for {key!r} now")
        os.kill(proc.pid, sig)
        return proc.pid

    def kill_and_wait(self, key: Hashable, timeout: float = 5.0) -> None:
        proc = self.processes.get(key)
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def forget(self, key: Hashable) -> None:
        self.processes.pop(key, None)

    def reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every process (all together), then kill what is left."""
        import time

        deadline = time.monotonic() + timeout
        for proc in list(self.processes.values()):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.processes.clear()
