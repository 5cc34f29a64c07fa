"""Helpers for the runtime's end-to-end tests (coordinator, modes, faults, remote workers).

The runtime starts real processes (``python -m workers.sampler``) and shared-memory segments;
``no_leftovers`` checks that a test left neither behind, and ``train_subprocess`` runs the
``asyncrl`` command line the way a user would.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import asyncrl

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["log.progress=false", "log.tensorboard=false"]


def config(algo: str = "ppo", env_id: str = "CartPole-v1", run_dir: Path | None = None, sets=()):
    base = [*QUIET]
    if run_dir is not None:
        base.append(f'run_dir="{run_dir}"')
    return asyncrl.resolve_config(algo, env_id, sets=[*base, *sets])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("asyncrl_")}
    except FileNotFoundError:  # not Linux
        return set()


def worker_processes(root_pid: int | None = None, module: str = "workers.sampler") -> list:
    """Live ``module`` processes (default: sampler workers) below ``root_pid`` (default: this
    process)."""
    try:
        procs = psutil.Process(root_pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE and module in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def live_children() -> list[psutil.Process]:
    """Live descendants of this process, except multiprocessing's resource tracker (which
    lives as long as the process that started it, by design)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(
                p.cmdline()
            ):
                out.append(p)
        except psutil.Error:
            pass
    return out


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def asyncrl_cmd(*args: str) -> list[str]:
    """The ``asyncrl`` command as a user runs it: the console script installed next to this
    interpreter (``python -m asyncrl.cli`` where there is none)."""
    script = Path(sys.executable).parent / ("asyncrl.exe" if os.name == "nt" else "asyncrl")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "asyncrl.cli", *args]


def popen(args: list[str], log_path: Path, **kw) -> subprocess.Popen:
    f = open(log_path, "wb")  # noqa: SIM115 - closed by the caller through proc.stdout_file
    proc = subprocess.Popen(
        args,
        stdout=f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
        cwd=ROOT,
        **kw,
    )
    proc.log_file = f  # type: ignore[attr-defined]
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for ``proc`` (kill it past ``timeout``); returns (exit code, its output)."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        rc = proc.wait(10)
    proc.log_file.close()
    return rc, proc.log_path.read_text(errors="replace")


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.kill()
        except psutil.Error:
            pass


_SHM_RE = re.compile(r"/dev/shm/(asyncrl_[0-9a-f]+)")


def shm_mapped_by(pids) -> set[str]:
    """Names of the asyncrl_* shared-memory segments the processes ``pids`` have mapped."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                names.update(_SHM_RE.findall(f.read()))
        except OSError:
            pass
    return names


class LeakWatch:
    """Notes every asyncrl_* segment mapped by this process or its descendants (every
    ``interval`` s, from /proc/PID/maps) so that a test can check those, and only those, are
    gone at the end: other programs on a shared machine create segments of their own."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leak-watch", daemon=True)

    def _scan(self) -> None:
        pids = [os.getpid()]
        try:
            pids += [p.pid for p in psutil.Process().children(recursive=True)]
        except psutil.Error:
            pass
        self.seen |= shm_mapped_by(pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._scan()

    def __enter__(self) -> LeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()

    def leaked(self) -> set[str]:
        return self.seen & shm_segments()


@pytest.fixture(autouse=True, scope="module")
def no_leftovers():
    """Import into a test module: after its tests, no child process and none of the shared
    memory segments they used remain."""
    watch = LeakWatch().__enter__()
    try:
        yield watch
    finally:
        watch.__exit__()
    check_nothing_left_behind(watch)


def check_nothing_left_behind(watch: LeakWatch, timeout: float = 10.0) -> None:
    """No live child process and no segment the watch saw remains (after ``timeout`` s:
    a killed worker's segments are unlinked by its resource tracker once that notices)."""
    assert wait_until(lambda: not live_children(), timeout), [
        " ".join(p.cmdline()) for p in live_children()
    ]
    assert wait_until(lambda: not watch.leaked(), timeout), watch.leaked()


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class CaptureSampler:
    """Patch ``asyncrl.runners.train.make_sampler`` so a test can reach the run's sampler (and
    its coordinator) while ``asyncrl.train`` runs it."""

    def __init__(self, monkeypatch):
        import importlib
        import threading

        # (``asyncrl.runners.train`` the attribute is the function; the module is wanted here)
        train_module = importlib.import_module("asyncrl.runners.train")

        self.sampler = None
        self.created = threading.Event()
        original = train_module.make_sampler

        def make(*args, **kwargs):
            self.sampler = original(*args, **kwargs)
            self.created.set()
            return self.sampler

        monkeypatch.setattr(train_module, "make_sampler", make)

    def coordinator(self, timeout: float = 60.0):
        assert self.created.wait(timeout), "the run made no sampler"
        assert wait_until(lambda: self.sampler.coordinator is not None, timeout)
        return self.sampler.coordinator
