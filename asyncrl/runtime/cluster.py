"""Launchers that start the sampler worker slots on a cluster: Ray actors in a placement group
(``RayLauncher``) and Slurm jobs through submitit (``SlurmLauncher``), behind the ``Launcher``
interface of ``launcher.py``.

Owns the actor and job handles, the placement group and the submitit executor; it does not own
the endpoint, the keys or the launch token (the coordinator makes those and hands them over).
Each slot is one actor or one job that runs the sampler program in its own process
(``run_program``: ``workers.sampler``'s ``main``, found by module name), which joins the
coordinator over TCP with the run's CURVE keys and launch token and takes its fixed slot. A dead
actor or job shows as an exit code; the coordinator restarts the slot through the usual restart
policy, and ``start`` puts the replacement in the same place (the slot's bundle). Ray and
submitit are imported here only, inside the classes: without them the rest of asyncrl works,
and choosing them fails with one line (``missing_dependency``).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncrl.runtime.launcher import PROGRAMS, JoinKeys, LauncherError, source_root

log = logging.getLogger("asyncrl.launcher")

LOOPBACK = "127.0.0.1"
KILLED = -9  # the exit code reported for an actor or job that died without returning one
_PACKAGES = {"ray": ("ray", "Ray"), "slurm": ("submitit", "submitit")}


def missing_dependency(launcher: str) -> str:
    """'' if ``launcher``'s package is installed, else the one line telling how to get it."""
    if launcher not in _PACKAGES:
        return ""
    module, name = _PACKAGES[launcher]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked (None in sys.modules) or broken
        found = False
    if found:
        return ""
    return (
        f"sampler.launcher = {launcher!r} needs {name}, which is not installed: "
        f"pip install asyncrl[{launcher}]"
    )


def _require(launcher: str):
    reason = missing_dependency(launcher)
    if reason:
        raise LauncherError(reason)
    return importlib.import_module(_PACKAGES[launcher][0])


def outward_address() -> str:
    """This host's address on its default route (what other machines reach it at); connecting
    a UDP socket only picks the interface, no packet is sent."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def run_program(role: str, args: Sequence[str], keys: JoinKeys | None, root: str = "") -> int:
    """Run ``role``'s program (``PROGRAMS``) in this process with ``args``, as ``python -m``
    would, and return its exit code: the body of a Ray actor or a submitit job. The key
    material arrives as data and is written to a private temporary directory for the program
    (``--server-key``/``--client-key``), removed when it returns."""
    if root and Path(root, "workers").is_dir() and root not in sys.path:
        sys.path.insert(0, root)  # a checkout run without installing, on this machine
    from asyncrl.runtime.auth import write_key_file

    argv = list(args)
    key_dir = tempfile.mkdtemp(prefix="asyncrl-join-")  # mode 700
    try:
        if keys is not None:
            server = write_key_file(Path(key_dir) / "server.key", keys.server_public)
            client = write_key_file(
                Path(key_dir) / "launched.key_secret", keys.client_public, keys.client_secret
            )
            argv += ["--server-key", str(server), "--client-key", str(client)]
        # By module name (a string, not an import): asyncrl never imports workers.
        program = importlib.import_module(PROGRAMS[role])
        return int(program.main(argv) or 0)
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail with one line when a ``HOST:PORT`` Ray address does not answer: ``ray.init``
    itself retries an unreachable cluster for minutes. Other forms (``auto``, ``ray://...``)
    are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise LauncherError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}): is `ray start "
            "--head` running there, and is the address its head node's HOST:PORT?"
        ) from None


class ProgramActor:
    """The Ray actor of one slot: runs the program once (``run``), in the actor's process."""

    def run(self, role: str, args: list[str], keys: JoinKeys | None, root: str) -> int:
        return run_program(role, args, keys, root)


@dataclass
class _Started:
    handle: Any  # the Ray actor or the submitit job
    done: Any = None  # Ray: the ObjectRef of ``run``
    name: str = ""
    code: int | None = None  # known exit code


class RayLauncher:
    """Sampler slots as Ray actors on a running Ray cluster, one ``{"CPU": cpus}`` bundle per
    slot in one placement group (``strategy`` PACK by default: as few nodes as fit).

    ``address`` '' joins the Ray this process has initialised already, else starts a local
    one (``ray.init()``); otherwise ``ray.init(address)``. Only a Ray started or joined here is
    shut down by ``close``. The actors are named ``asyncrl-<id>-<role>-<slot>-<n>`` (n counts
    the slot's incarnations; ``actor_name(slot)``). Their output goes to Ray's worker logs
    (``/tmp/ray/session_latest/logs/worker-*``), echoed to the training process's terminal."""

    remote = True

    def __init__(
        self,
        address: str = "",
        strategy: str = "PACK",
        cpus: float = 1.0,
        ready_timeout_s: float = 120.0,
    ):
        self.address, self.strategy, self.cpus = address, strategy, cpus
        self.ready_timeout_s = ready_timeout_s
        self.join_host = ""
        self.keys: JoinKeys | None = None
        self.processes: dict[Hashable, _Started] = {}
        self.id = uuid.uuid4().hex[:8]
        self._ray = None
        self._actor_class = None
        self._owns_ray = False
        self._slots = 0
        self._pg = None
        self._serial = itertools.count()

    # ------------------------------------------------------------------ cluster
    def prepare(self, slots: int) -> None:
        """Join (or start) Ray and reserve the slots' placement group; LauncherError (one line)
        when Ray cannot be reached or has no room for them within ``ready_timeout_s``."""
        ray = _require("ray")
        if not ray.is_initialized():
            _check_reachable(self.address)
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=True)
                else:
                    ray.init(include_dashboard=False, log_to_driver=True)
            except Exception as e:  # noqa: BLE001 - Ray raises many kinds; one line for the user
                where = f"at {self.address}" if self.address else "locally"
                raise LauncherError(f"cannot start or join Ray {where}: {e}".splitlines()[0]) from e
            self._owns_ray = True
        self._ray = ray
        self._actor_class = ray.remote(ProgramActor)
        self._slots = slots
        self._pg = self._placement_group()
        try:
            ray.get(self._pg.ready(), timeout=self.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources().get("CPU", 0)
            raise LauncherError(
                f"the Ray cluster has no room for {slots} sampler slots of {self.cpus:g} CPU each "
                f"(placement group not ready within {self.ready_timeout_s:.0f} s; {free:g} CPUs "
                "free): lower --workers or add nodes"
            ) from None
        self.join_host = self._join_host()

    def _placement_group(self):
        from ray.util.placement_group import placement_group

        return placement_group(
            [{"CPU": self.cpus}] * max(self._slots, 1),
            strategy=self.strategy,
            name=f"asyncrl-{self.id}",
        )

    def _join_host(self) -> str:
        """Loopback when every node of the cluster is this machine (the actors then share its
        memory: batches go through shared memory); else this node's address on the cluster's
        network, the one Ray itself uses."""
        ray = self._ray
        me = ray.util.get_node_ip_address()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if all(n.get("NodeManagerAddress") == me for n in nodes):
            return LOOPBACK
        return me

    # ------------------------------------------------------------------ slots
    def actor_name(self, key: Hashable) -> str:
        """The Ray name of ``key``'s current actor ('' if none was started)."""
        started = self.processes.get(key)
        return started.name if started is not None else ""

    def start(self, key: Hashable, role: str, args: Sequence[str]) -> int:
        """Start ``key``'s actor (in slot ``key``'s bundle when ``key`` is a slot number); an
        earlier actor of the key is killed first. Returns 0: the pid is known only once the
        program registers."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self._ray is None:
            raise LauncherError("RayLauncher.start before prepare")
        old = self.processes.pop(key, None)
        if old is not None:
            self._kill(old)
        if self._pg is None:  # reaped, then started again
            self._pg = self._placement_group()
        bundle = key if isinstance(key, int) and 0 <= key < self._slots else -1
        name = f"asyncrl-{self.id}-{role}-{key}-{next(self._serial)}"
        actor = self._actor_class.options(
            name=name,
            num_cpus=self.cpus,
            max_restarts=0,  # the coordinator restarts slots, through its restart policy
            max_task_retries=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self._pg, placement_group_bundle_index=bundle
            ),
        ).remote()
        done = actor.run.remote(role, list(args), self.keys, source_root())
        self.processes[key] = _Started(actor, done, name)
        return 0

    def exit_code(self, key: Hashable) -> int | None:
        """None while ``key``'s actor runs (or waits for its bundle), else the program's exit
        code; ``KILLED`` (-9) for an actor that died (``ray.kill``, its process killed, its
        node lost), logged with Ray's reason."""
        started = self.processes.get(key)
        if started is None:
            return None
        if started.code is None:
            ray = self._ray
            ready, _ = ray.wait([started.done], timeout=0)
            if not ready:
                return None
            try:
                started.code = int(ray.get(started.done))
            except ray.exceptions.RayActorError as e:
                started.code = KILLED
                log.info("Ray actor %s died: %s", started.name, str(e).splitlines()[0])
            except Exception as e:  # noqa: BLE001 - the program raised: Ray wraps it
                started.code = 1
                log.warning("Ray actor %s failed: %s", started.name, str(e).splitlines()[-1])
        return started.code

    def kill(self, key: Hashable, sig: int = 9) -> int:
        """Kill ``key``'s actor (``sig`` is not used: an actor is killed outright); returns 0.
        ProcessLookupError if none runs."""
        started = self.processes.get(key)
        if started is None or self.exit_code(key) is not None:
            raise ProcessLookupError(f"no actor runs for {key!r} now")
        self._kill(started)
        return 0

    def _kill(self, started: _Started) -> None:
        try:
            self._ray.kill(started.handle, no_restart=True)
        except Exception as e:  # noqa: BLE001 - gone already
            log.debug("ray.kill(%s): %s", started.name, e)

    def kill_and_wait(self, key: Hashable, timeout: float = 5.0) -> None:
        """Kill ``key``'s actor without waiting (this runs on the event loop): its bundle is
        free once Ray has ended it, and a replacement in the bundle waits for that."""
        started = self.processes.get(key)
        if started is not None and started.code is None:
            self._kill(started)

    def forget(self, key: Hashable) -> None:
        started = self.processes.pop(key, None)
        if started is not None:
            self._kill(started)

    def reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every actor's program to return (all together), then
        kill every actor and remove the placement group."""
        if self._ray is None:
            return
        ray = self._ray
        pending = [s.done for s in self.processes.values() if s.code is None]
        if pending and timeout > 0:
            ray.wait(pending, num_returns=len(pending), timeout=timeout)
        for started in self.processes.values():
            self._kill(started)
        self.processes.clear()
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self._pg)
            except Exception as e:  # noqa: BLE001 - Ray shutting down
                log.debug("remove_placement_group: %s", e)
            self._pg = None

    def close(self) -> None:
        """Reap what is left; shut Ray down if it was started or joined here."""
        self.reap(0)
        if self._owns_ray and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._owns_ray = None, False


class SlurmLauncher:
    """Sampler slots as Slurm jobs submitted with submitit, one job per slot (and per restart).

    ``cluster`` "slurm" submits with sbatch (``partition``, ``time_min``, ``cpus`` per task,
    ``gpus`` per node); "local" runs each job as a process on this machine with submitit's local
    executor, the same code path (used by the tests). Job files and logs go to ``folder``
    (``RUN_DIR/submitit/workers/``: ``JOBID_0_log.out`` / ``JOBID_0_log.err``, the pickled function
    with its arguments, key material and launch token included: the folder is made mode 700). A
    job's exit code is the program's, from its result; one that ended without a result
    (cancelled, timed out, killed, node lost) reports ``KILLED``."""

    remote = True

    def __init__(
        self,
        folder: str | Path = "",
        cluster: str = "slurm",
        partition: str = "",
        time_min: int = 60,
        cpus: int = 1,
        gpus: int = 0,
    ):
        if cluster not in ("slurm", "local"):
            raise LauncherError(f"slurm cluster {cluster!r}: expected 'slurm' or 'local'")
        self.folder = Path(folder) if folder else None
        self.cluster, self.partition = cluster, partition
        self.time_min, self.cpus, self.gpus = time_min, cpus, gpus
        self.join_host = ""
        self.keys: JoinKeys | None = None
        self.processes: dict[Hashable, _Started] = {}
        self.executor = None
        self._own_folder = False

    def prepare(self, slots: int) -> None:
        submitit = _require("slurm")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise LauncherError(
                "sampler.slurm_cluster = 'slurm' needs Slurm's sbatch on PATH (use "
                "sampler.slurm_cluster = 'local' to run the jobs on this machine)"
            )
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="asyncrl-submitit-"))
            self._own_folder = True
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)  # the job pickles hold the run's client key and launch token
        self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        params: dict[str, Any] = {
            "name": "asyncrl-sampler",
            "timeout_min": int(self.time_min),
            "cpus_per_task": int(self.cpus),
            "gpus_per_node": int(self.gpus),
        }
        if self.partition:
            params["slurm_partition"] = self.partition
        self.executor.update_parameters(**params)
        self.join_host = LOOPBACK if self.cluster == "local" else outward_address()

    def start(self, key: Hashable, role: str, args: Sequence[str]) -> int:
        """Submit ``key``'s job (an earlier job of the key is cancelled first); its job id
        when it is a number (the local executor's is the controller's pid), else 0."""
        if self.executor is None:
            raise LauncherError("SlurmLauncher.start before prepare")
        old = self.processes.pop(key, None)
        if old is not None:
            self._cancel(old)
        job = self.executor.submit(run_program, role, list(args), self.keys, source_root())
        self.processes[key] = _Started(job, name=str(job.job_id))
        return int(job.job_id) if str(job.job_id).isdigit() else 0

    def exit_code(self, key: Hashable) -> int | None:
        started = self.processes.get(key)
        if started is None:
            return None
        if started.code is None:
            job = started.handle
            if not job.done():
                return None
            started.code = self._outcome(job)
        return started.code

    @staticmethod
    def _outcome(job) -> int:
        # Read the result file directly: job.result() waits up to 15 s for a missing one (a
        # slow shared file system), which must not stall the coordinator's loop.
        from submitit.core.utils import pickle_load

        path = job.paths.result_pickle
        if not path.exists():
            log.info("job %s ended without a result (state %s)", job.job_id, job.state)
            return KILLED
        try:
            outcome, value = pickle_load(path)
        except Exception:  # noqa: BLE001 - torn or unreadable
            return KILLED
        if outcome != "success":
            log.warning("job %s failed: %s", job.job_id, str(value).strip().splitlines()[-1:])
            return 1
        return int(value or 0)

    def kill(self, key: Hashable, sig: int = 9) -> int:
        """Cancel ``key``'s job (``sig`` is not used); its job id. ProcessLookupError if none
        runs."""
        started = self.processes.get(key)
        if started is None or self.exit_code(key) is not None:
            raise ProcessLookupError(f"no job runs for {key!r} now")
        self._cancel(started)
        return int(started.name) if started.name.isdigit() else 0

    def _cancel(self, started: _Started) -> None:
        try:
            started.handle.cancel(check=False)
        except Exception as e:  # noqa: BLE001 - finished meanwhile
            log.debug("cancel job %s: %s", started.name, e)

    def kill_and_wait(self, key: Hashable, timeout: float = 5.0) -> None:
        """Cancel ``key``'s job without waiting (this runs on the event loop)."""
        started = self.processes.get(key)
        if started is not None and started.code is None:
            self._cancel(started)

    def forget(self, key: Hashable) -> None:
        started = self.processes.pop(key, None)
        if started is not None:
            self._cancel(started)

    def reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every job to end (all together), cancel the rest and
        wait a little more for them (a local job's processes are gone then)."""
        deadline = time.monotonic() + timeout
        jobs = list(self.processes.values())
        while time.monotonic() < deadline and not all(s.handle.done() for s in jobs):
            time.sleep(0.1)
        for started in jobs:
            if not started.handle.done():
                self._cancel(started)
        # A local job's controller ends its task with SIGINT, then SIGKILL after 1 s; a Slurm
        # job's end is seen only at the next sacct poll: not waited for.
        grace = time.monotonic() + (10.0 if self.cluster == "local" else 0.0)
        while time.monotonic() < grace and not all(s.handle.done() for s in jobs):
            time.sleep(0.1)
        self.processes.clear()

    def close(self) -> None:
        self.reap(0)
        if self._own_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
