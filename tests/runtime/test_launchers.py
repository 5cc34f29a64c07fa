"""Launchers for the worker slots (``asyncrl/runtime/cluster.py``), with real parts: Ray actors in
a placement group on a local Ray (``ray.init(num_cpus=2)``) and Slurm jobs through submitit's
local executor run real sampler programs that join the coordinator over TCP with per-run CURVE
keys and take fixed slots. PPO learns CartPole on two Ray actors while one is killed with
``ray.kill`` and the other's process with SIGKILL, each restarted through the restart policy; a
short run on submitit jobs completes with its logs in the run directory; a TCP REGISTER that
claims a slot without the run's launch token is refused. Ray and submitit tests skip when the
package is not installed (``pip install asyncrl[ray]`` / ``asyncrl[slurm]``).
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading

import pytest
import zmq

import asyncrl
from asyncrl.configs.config import ConfigError
from asyncrl.runners.train import make_sampler
from asyncrl.runtime.protocol import Header, MsgType, encode
from tests.runtime._runtime_helpers import (
    CaptureSampler,
    asyncrl_cmd,
    config,
    finish,
    no_leftovers,  # noqa: F401 - module fixture: no process or shm segment remains
    popen,
    wait_until,
)
from tests.runtime.conftest import raw_peer, recv_reply


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray launcher needs Ray: pip install asyncrl[ray]")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _live(coordinator, slot: int):
    """The registered worker of ``slot`` (None while it is being replaced)."""
    live = [w for w in coordinator.alive_workers() if w.local and w.slot == slot]
    return live[0] if live else None


def _replaced(coordinator, slot: int, old_peer: bytes) -> bool:
    worker = _live(coordinator, slot)
    return worker is not None and worker.peer != old_peer


def _delivered(coordinator, batches: int) -> bool:
    """Both slots' workers have delivered ``batches`` batches each."""
    workers = [_live(coordinator, slot) for slot in (0, 1)]
    return all(w is not None and w.delivered >= batches for w in workers)


def _evals(run_dir) -> list[tuple[int, float]]:
    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        (int(r["env_steps"]), float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"]
    ]


@pytest.mark.learning
def test_ppo_learns_cartpole_on_ray_actors_and_killed_actors_are_replaced(
    ray_cluster, tmp_path, monkeypatch
):
    """PPO (the seeded ppo_classic setup of test_modes) on 2 Ray-launched workers x 4 envs.
    Once both have delivered batches, slot 0's actor is killed with ``ray.kill`` and then slot
    1's actor process with SIGKILL; each death is noticed through the launcher's exit code (or
    as the worker being unreachable), its slot restarted with a new actor in the slot's bundle,
    and the run trains all its steps and reaches an evaluation return of 475. Afterwards the
    run's actors and its placement group are gone."""
    ray = ray_cluster
    steps = 60_000
    cfg = config(
        run_dir=tmp_path,
        sets=[
            'sampler.mode="parallel"',
            'sampler.launcher="ray"',
            "sampler.workers=2",
            "sampler.num_envs=8",
            f"steps={steps}",
            "seed=1",
            "log.eval_every=10000",
        ],
    )
    capture = CaptureSampler(monkeypatch)
    report: dict = {}

    def drill():
        try:
            coord = capture.coordinator(120)
            launcher = coord.launcher
            assert wait_until(lambda: _delivered(coord, 3), 240), "no batches from both workers"
            # 1. ray.kill slot 0's actor, found by its name
            name = launcher.actor_name(0)
            assert name in ray.util.list_named_actors(), name
            peer0 = _live(coord, 0).peer
            ray.kill(ray.get_actor(name))
            assert wait_until(lambda: coord.restarts.get(0, 0) >= 1, 60), "kill not noticed"
            assert wait_until(lambda: _replaced(coord, 0, peer0), 180), "no replacement, slot 0"
            report["names"] = [name, launcher.actor_name(0)]
            # 2. SIGKILL slot 1's actor process
            worker1 = _live(coord, 1)
            assert worker1 is not None and worker1.pid > 0
            os.kill(worker1.pid, signal.SIGKILL)
            assert wait_until(lambda: coord.restarts.get(1, 0) >= 1, 60), "kill not noticed"
            assert wait_until(lambda: _replaced(coord, 1, worker1.peer), 180), "no replacement"
            report["done"] = True
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            report["error"] = e

    thread = threading.Thread(target=drill, daemon=True)
    thread.start()
    result = asyncrl.train(cfg)
    thread.join(30)
    if "error" in report:
        raise report["error"]
    assert report.get("done"), f"the drill did not finish during the run: {report}"
    coord = capture.sampler.coordinator

    assert not result.interrupted and coord.failure is None
    assert result.env_steps >= steps
    assert coord.restarts.get(0, 0) >= 1 and coord.restarts.get(1, 0) >= 1, coord.restarts
    evals = _evals(tmp_path)
    assert max(e for _, e in evals) >= 475, evals
    log_text = (tmp_path / "train.log").read_text()
    for slot in (0, 1):
        assert f"registered (slot {slot}, launched, envs {4 * slot}..{4 * slot + 3}" in log_text
    # reaped: no actor of the run is left, and its placement group is removed
    prefix = f"asyncrl-{coord.launcher.id}-"
    assert wait_until(
        lambda: not [n for n in ray.util.list_named_actors() if n.startswith(prefix)], 30
    ), ray.util.list_named_actors()
    groups = ray.util.placement_group_table()
    assert all(g["state"] == "REMOVED" for g in groups.values() if g["name"] == prefix[:-1])


def test_a_short_run_on_submitit_local_jobs_completes_with_logs_in_the_run_dir(tmp_path):
    """``asyncrl train --launcher slurm --set sampler.slurm_cluster="local"``: each of the 2
    slots is one submitit job on this machine (the same code path as sbatch) that joins over TCP
    with the run's keys and token; the run completes and the jobs' logs and results are in
    RUN_DIR/submitit/workers/ (each job returned 0: it was told to stop)."""
    pytest.importorskip(
        "submitit", reason="the Slurm launcher needs submitit: pip install asyncrl[slurm]"
    )
    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "ppo", "CartPole-v1",
            "--mode", "parallel", "--workers", "2", "--envs-per-worker", "2",
            "--launcher", "slurm", "--set", 'sampler.slurm_cluster="local"',
            "--steps", "4096", "--seed", "2", "--run-dir", str(run_dir), "--no-progress",
            "--set", "log.tensorboard=false", "--set", "log.eval_every=-1",
        ),
        tmp_path / "train.txt",
    )  # fmt: skip
    rc, out = finish(proc, 300)
    assert rc == 0, out
    assert "done: 4096 env steps" in out, out
    log_text = (run_dir / "train.log").read_text()
    for slot in (0, 1):
        assert f"registered (slot {slot}, launched, envs {2 * slot}..{2 * slot + 1}" in log_text
    folder = run_dir / "submitit" / "workers"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"  # the pickles hold the run's keys
    logs = sorted(folder.glob("*_0_log.out"))
    assert len(logs) == 2, sorted(p.name for p in folder.iterdir())
    from submitit.core.utils import pickle_load

    results = [pickle_load(p) for p in sorted(folder.glob("*_0_result.pkl"))]
    assert results == [("success", 0), ("success", 0)], results


class _Passive:
    """A remote launcher that starts nothing: the test's raw peers stand in for its programs."""

    remote = True
    join_host = "127.0.0.1"
    keys = None

    def __init__(self):
        self.processes: dict = {}

    def prepare(self, slots):
        pass

    def start(self, key, role, args):
        return 0

    def exit_code(self, key):
        return None

    def kill(self, key, sig=9):
        raise ProcessLookupError(key)

    def kill_and_wait(self, key, timeout=5.0):
        pass

    def forget(self, key):
        pass

    def reap(self, timeout):
        pass

    def close(self):
        pass


def _register(ctx, endpoint: str, identity: str, meta: dict, keys=None):
    """A raw peer's REGISTER on ``endpoint`` (a CURVE client with ``keys``): the answer."""
    if keys is None:
        sock = raw_peer(ctx, endpoint, identity)
    else:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.identity = identity.encode()
        sock.curve_secretkey = keys.client_secret.encode()
        sock.curve_publickey = keys.client_public.encode()
        sock.curve_serverkey = keys.server_public.encode()
        sock.connect(endpoint)
    sock.send_multipart(encode(Header(MsgType.REGISTER, worker_id=identity, meta=meta)))
    header, _ = recv_reply(sock)
    sock.close()
    return header


def test_a_tcp_register_claiming_a_slot_without_the_launch_token_is_refused(make_coordinator, zctx):
    """Over TCP only the launcher's programs take slots. (1) A run whose workers are local
    processes, with sampler.bind: a remote REGISTER claiming slot 0 is refused, with or without
    a token, and an ordinary one is accepted. (2) A remote launcher and no sampler.bind: the
    coordinator binds loopback TCP with per-run CURVE keys; a peer with those keys is refused a
    slot without the token or with a wrong one, and for a slot out of range, and takes its slot
    (env offset k*M) with the token; without a slot it is refused (no remote workers)."""
    coord = make_coordinator(mode="parallel", bind="tcp://127.0.0.1:*")
    for meta in ({"slot": 0}, {"slot": 0, "launch_token": coord.launch_token}):
        header = _register(zctx, coord.remote_endpoint, "claimer", meta)
        assert header.type == MsgType.REFUSED and "launch token" in header.meta["reason"], header
    assert _register(zctx, coord.remote_endpoint, "visitor", {"envs": 2}).type == (
        MsgType.REGISTERED
    )
    assert [w.slot for w in coord.alive_workers()] == [-1]

    coord = make_coordinator(mode="parallel", launcher=_Passive())
    keys, endpoint = coord.launcher.keys, coord.launch_endpoint
    assert coord.remote_endpoint == "" and endpoint.startswith("tcp://127.0.0.1:") and keys
    for meta, reason in (
        ({"slot": 1}, "launch token"),
        ({"slot": 1, "launch_token": "not-the-token"}, "launch token"),
        ({"slot": 1, "launch_token": 12345}, "launch token"),
        ({"slot": 2, "launch_token": coord.launch_token}, "bad local slot"),
        ({"envs": 2}, "no remote workers"),
    ):
        header = _register(zctx, endpoint, "claimer", meta, keys)
        assert header.type == MsgType.REFUSED and reason in header.meta["reason"], (meta, header)
    assert not coord.alive_workers() and coord.refused_workers == 5
    header = _register(
        zctx, endpoint, "launched-1", {"slot": 1, "launch_token": coord.launch_token}, keys
    )
    assert header.type == MsgType.REGISTERED, header
    assert header.meta["env_offset"] == 2 and header.meta["num_envs"] == 2
    (record,) = coord.alive_workers()
    assert record.local and record.slot == 1 and record.socket_name == "remote"


def test_choosing_a_launcher_whose_package_is_missing_fails_with_one_line(monkeypatch):
    """Without Ray or submitit (hidden here), ``sampler.launcher`` ray or slurm fails before any
    process starts, with one line saying what to install."""
    for launcher, module in (("ray", "ray"), ("slurm", "submitit")):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` fails, as uninstalled
        cfg = config(sets=['sampler.mode="parallel"', f'sampler.launcher="{launcher}"'])
        with pytest.raises(ConfigError) as info:
            make_sampler(cfg)
        message = str(info.value)
        assert f"pip install asyncrl[{launcher}]" in message and "\n" not in message, message
    with pytest.raises(ConfigError, match="needs a runtime mode"):
        config(sets=['sampler.launcher="ray"', 'sampler.mode="serial"'])
