"""The processes of data-parallel learners (``learners = N``): learner 0 is the process that
holds the algorithm already (the training process in synchronous runs, workers/optimizer.py in
asynchronous ones); it starts learners 1..N-1 (``python -m workers.peer``, through the
launcher), joins their process group and hands them the config, the spaces and its state, so
that all N start equal. The update itself is algos/ddp.py's.

Learner 0 publishes parameters and writes checkpoints, as a single learner does. A learner that
exits ends the run: learner 0 notices it before the next batch, or in the middle of one (its
collective fails), and raises one line naming it; the run then writes its final checkpoint
from learner 0's state (runners/run.py), so ``--resume`` continues from there. The others exit
when learner 0 does (``--parent-pid``, and their collectives fail).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any

from asyncrl.algos import ddp


class LearnerExited(RuntimeError):
    """A data-parallel learner process ended before the run did."""


def learner_device(device: str, rank: int) -> str:
    """Learner ``rank``'s device: the CPU for all, or one GPU each from the configured one on
    (``cuda`` -> cuda:0, cuda:1, ...; ``cuda:2`` -> cuda:2, cuda:3, ...)."""
    if not device.startswith("cuda"):
        return device
    first = int(device.split(":")[1]) if ":" in device else 0
    return f"cuda:{first + rank}"


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Learners(ddp.DataParallel):
    """Learner 0's side of a group of ``cfg.learners`` (see the module docstring)."""

    def __init__(self, cfg: Any, agent: Any, algo: Any, obs_space: Any, action_space: Any):
        from asyncrl.runtime.launcher import popen

        super().__init__(algo, check=self.check)
        n = int(cfg.learners)
        if cfg.device.startswith("cuda"):
            import torch

            need = int(learner_device(cfg.device, n - 1).split(":")[1]) + 1
            if torch.cuda.device_count() < need:
                raise ValueError(
                    f"learners={n} on {cfg.device} needs {need} GPUs; "
                    f"{torch.cuda.device_count()} visible"
                )
        self._dir = tempfile.mkdtemp(prefix="asyncrl-learners-")
        init = f"file://{os.path.join(self._dir, 'rendezvous')}"
        threads = max(int(cfg.torch_threads), 1)
        self.processes: dict[int, subprocess.Popen] = {}
        try:
            for rank in range(1, n):
                args = ["--init", init, "--rank", str(rank), "--world", str(n)]
                args += ["--device", learner_device(cfg.device, rank), "--parent-pid"]
                args += [str(os.getpid()), "--torch-threads", str(threads)]
                self.processes[rank] = popen("learner-peer", args, threads)
            self._join(n, init, learner_device(cfg.device, 0))
            ddp.broadcast((cfg.to_dict(), obs_space, action_space))
            ddp.share_state(agent, algo)
        except BaseException:
            self.close()
            raise

    def _join(self, n: int, init: str, device: str) -> None:
        """Join the group, watching the others meanwhile: the rendezvous itself would wait
        for a learner that failed to start until its timeout (half an hour)."""
        done, failed = threading.Event(), []

        def join() -> None:
            try:
                ddp.init_group(0, n, init, device)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                failed.append(e)
            finally:
                done.set()

        threading.Thread(target=join, name="asyncrl-learners-join", daemon=True).start()
        while not done.wait(0.1):
            self.check(0.0)
        if failed:
            raise failed[0]

    def check(self, wait_s: float = 0.0) -> None:
        """Raise ``LearnerExited`` if a learner process has ended (waiting up to ``wait_s``
        for one to be seen gone)."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank, proc in self.processes.items():
                code = proc.poll()
                if code is not None:
                    raise LearnerExited(
                        f"learner {rank} of {len(self.processes) + 1} (pid {proc.pid}) exited "
                        f"with {_describe(code)}; the run stops"
                    )
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the other learners, leave the group, then close the algorithm."""
        if ddp.active() is not None:
            if all(p.poll() is None for p in self.processes.values()):
                self.stop()
            ddp.shutdown()
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.processes.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
        if hasattr(self.algo, "close"):
            self.algo.close()


def start_learners(cfg: Any, agent: Any, algo: Any, obs_space: Any, action_space: Any) -> Any:
    """``algo`` itself for one learner, else learner 0 of ``cfg.learners`` (``Learners``)."""
    if int(getattr(cfg, "learners", 1)) <= 1:
        return algo
    return Learners(cfg, agent, algo, obs_space, action_space)
