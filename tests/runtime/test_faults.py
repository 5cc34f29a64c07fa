"""Faults and bad input on the runtime, with real worker processes and sockets on loopback:
a SIGKILLed worker and a stalled (SIGSTOPped) worker are noticed and replaced while the run goes
on; garbage, truncated, foreign, wrong-version and oversized messages sent to the coordinator's
ROUTER are dropped (and counted) without harm; SIGTERM stops `asyncrl train` cleanly.
"""

from __future__ import annotations

import os
import re
import signal
import threading

import msgpack
import numpy as np
import pytest
import zmq

import asyncrl
from asyncrl.algos import ALGOS
from asyncrl.data import namedarraytuple
from asyncrl.logging.checkpoint import list_checkpoints
from asyncrl.runners.train import _seed_everything, make_sampler
from asyncrl.runtime.protocol import PROTOCOL_KEY, Header, MsgType, decode, encode
from tests.runtime._runtime_helpers import (
    CaptureSampler,
    asyncrl_cmd,
    config,
    finish,
    gone,
    no_leftovers,  # noqa: F401 - module fixture: no process or shm segment remains
    popen,
    shm_mapped_by,
    shm_segments,
    wait_until,
    worker_processes,
)

FAST_HEARTBEAT = ["sampler.heartbeat_s=0.5", "sampler.worker_timeout_s=2.0"]


def _replaced(coordinator, slot: int, old_peer: bytes) -> bool:
    """Another worker than ``old_peer`` registered in local ``slot`` (whatever its number:
    a replacement that itself fails under load is replaced again)."""
    return any(
        w.local and w.slot == slot and w.peer != old_peer for w in coordinator.alive_workers()
    )


def _live(coordinator, slot: int):
    """The registered worker of local ``slot`` (None while it is being replaced)."""
    live = [w for w in coordinator.alive_workers() if w.local and w.slot == slot]
    return live[0] if live else None


def test_killed_and_stalled_workers_are_replaced_and_the_run_completes(tmp_path, monkeypatch):
    """SIGKILL worker 0 mid-run, then SIGSTOP worker 1: each is declared dead, restarted in its
    slot (its owed batch, if any, re-requested); the run trains all its steps and leaves no
    process or shared memory behind.

    Only what holds however the races go is asserted: a kill may be noticed as the process's
    exit or as the worker being unreachable (a kill between rounds), a stall as silence or
    (later) as unreachable; a replacement may itself be replaced on a loaded machine; a fault
    between rounds owes no batch. Rounds need every local slot, so the run cannot end before
    each fault has been handled."""
    steps = 24_576
    cfg = config(
        run_dir=tmp_path,
        sets=[
            'sampler.mode="parallel"',
            "sampler.workers=2",
            "sampler.num_envs=8",
            "sampler.horizon=32",
            f"steps={steps}",
            "log.eval_every=-1",
            *FAST_HEARTBEAT,
        ],
    )
    capture = CaptureSampler(monkeypatch)
    report: dict = {}

    def drill():
        try:
            coord = capture.coordinator()
            assert wait_until(lambda: coord._itr is not None and coord._itr >= 3, 120)
            # 1. SIGKILL worker 0 while it samples (or just before or after: see above).
            assert wait_until(lambda: _live(coord, 0) is not None, 60)
            peer0, pid0 = _live(coord, 0).peer, _live(coord, 0).pid
            report["shm0"] = shm_mapped_by([pid0])
            coord.kill_local(0, signal.SIGKILL)
            report["pid0"], report["peer0"] = pid0, peer0
            assert wait_until(lambda: coord.restarts.get(0, 0) >= 1, 30), "kill not noticed"
            assert wait_until(lambda: _replaced(coord, 0, peer0), 90), "no replacement, slot 0"
            # 2. SIGSTOP worker 1 once a round has started after the replacement: alive but
            # silent. (coord._itr is None between rounds, so read it through a fallback)
            itr = coord._itr or 0
            assert wait_until(lambda: (coord._itr or 0) > itr, 60)
            assert wait_until(lambda: _live(coord, 1) is not None, 60)
            peer1, pid1 = _live(coord, 1).peer, _live(coord, 1).pid
            report["shm1"] = shm_mapped_by([pid1])
            os.kill(pid1, signal.SIGSTOP)
            report["pid1"], report["peer1"] = pid1, peer1
            assert wait_until(lambda: coord.restarts.get(1, 0) >= 1, 30), "stall not noticed"
            assert wait_until(lambda: _replaced(coord, 1, peer1), 90), "no replacement, slot 1"
            report["done"] = True
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            report["error"] = e

    thread = threading.Thread(target=drill, daemon=True)
    thread.start()
    try:
        result = asyncrl.train(cfg)
    finally:
        if "pid1" in report and not gone(report["pid1"]):  # the run failed: unfreeze, clean up
            os.kill(report["pid1"], signal.SIGKILL)
    thread.join(30)
    if "error" in report:
        raise report["error"]
    assert report.get("done"), f"the drill did not finish during the run: {report}"
    coord = capture.sampler.coordinator

    assert not result.interrupted
    assert result.env_steps >= steps  # all steps, despite the faults
    assert coord.restarts.get(0, 0) >= 1 and coord.restarts.get(1, 0) >= 1, coord.restarts
    assert coord.failure is None
    # A batch is lost only by a worker that died owing it.
    assert coord.lost_batches <= sum(coord.restarts.values())
    log_text = (tmp_path / "train.log").read_text()
    for peer in (report["peer0"], report["peer1"]):
        assert f"worker {peer!r} is gone (" in log_text, log_text
    # A stalled worker is never declared silent before worker_timeout_s (2 s) of silence.
    silences = [float(x) for x in re.findall(r"is gone \(silent for ([0-9.]+) s\)", log_text)]
    assert all(x >= 2.0 for x in silences), silences
    # No process or shared memory of the run remains (the stalled one was killed, not left).
    assert gone(report["pid0"]) and gone(report["pid1"])
    assert not worker_processes()
    leaked = lambda: (report["shm0"] | report["shm1"]) & shm_segments()  # noqa: E731
    # a killed worker's segments are unlinked by its resource tracker once it notices
    assert wait_until(lambda: not leaked(), 30), leaked()


# ------------------------------------------------------------------------------- bad input

Arrays = namedarraytuple("Arrays", ["a", "b"])


def _recv_reply(sock, timeout_s: float = 5.0):
    if not sock.poll(timeout_s * 1000):
        return None
    return decode(sock.recv_multipart(copy=False))


def _bad_messages() -> list[tuple[str, list[bytes]]]:
    """(what, frames) of messages the coordinator must drop, each counted once."""
    good = encode(
        Header(MsgType.HEARTBEAT, run_id="x", worker_id="intruder"),
        Arrays(np.arange(1000, dtype=np.float32), np.ones((4, 4), np.int64)),
    )
    good = [bytes(memoryview(f)) for f in good]
    samples_slot = msgpack.packb(
        {
            PROTOCOL_KEY: 1,
            "type": int(MsgType.SAMPLES),
            "run_id": "x",
            "worker_id": "intruder",
            "seq": 1,
            "policy_version": 0,
            "slot": 0,
            "shm": {"name": "asyncrl_0000000000000000", "schema": {"dtype": "float32"}},
        }
    )
    deep: dict = {"dtype": "float32", "shape": [1]}
    for _ in range(200):
        deep = {"fields": ["x"], "children": [deep]}
    return [
        ("random bytes", [os.urandom(64)]),
        ("empty frame", [b""]),
        ("random multi-frame", [os.urandom(16), os.urandom(4096), os.urandom(3)]),
        ("msgpack, not a map", [msgpack.packb([1, 2, 3])]),
        ("foreign map", [msgpack.packb({"hello": "world"})]),
        ("missing keys", [msgpack.packb({PROTOCOL_KEY: 1, "type": 4})]),
        ("unknown type", [msgpack.packb({**msgpack.unpackb(good[0]), "type": 999})]),
        ("truncated frame", [good[0], good[1][:-7], good[2]]),
        ("missing frame", good[:2]),
        ("extra frame", [*good, b"\x00" * 8]),
        ("frames without schema", [encode(Header(MsgType.HEARTBEAT))[0], b"\x00" * 8]),
        (
            "deep schema",
            [
                msgpack.packb({**msgpack.unpackb(good[0]), "schema": msgpack.packb(deep)}),
                b"\x00" * 4,
            ],
        ),
        ("msgpack extension", [msgpack.packb(msgpack.ExtType(5, b"boom"))]),
        ("oversized header", [msgpack.packb({PROTOCOL_KEY: 1, "pad": b"\x00" * (2 << 20)})]),
        ("foreign shm slot", [samples_slot]),
        ("REGISTER asking for 1e9 envs", encode(Header(MsgType.REGISTER, meta={"envs": 10**9}))),
        ("HEARTBEAT from a stranger", encode(Header(MsgType.HEARTBEAT, worker_id="intruder"))),
    ]


def test_bad_messages_are_dropped_and_the_run_goes_on():
    """Garbage to the ROUTER of a running job (remote endpoint, raw DEALER): every message is
    dropped with a logged reason and counted; a wrong-version peer is told why it is refused;
    the batches before, between and after are complete."""
    cfg = config(
        sets=[
            'sampler.mode="parallel"',
            "sampler.workers=1",
            "sampler.num_envs=4",
            "sampler.horizon=16",
            'sampler.bind="tcp://127.0.0.1:*"',
        ]
    )
    _seed_everything(cfg.seed)
    sampler = make_sampler(cfg)
    agent = ALGOS["ppo"].make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    ctx = zmq.Context()
    try:
        sampler.initialize(agent)
        coord = sampler.coordinator
        endpoint = coord.remote_endpoint
        assert endpoint.startswith("tcp://127.0.0.1:")

        def batch_ok():
            batch = sampler.obtain()
            assert batch.env_steps == 16 * 4
            assert batch.samples.env.observation.shape == (16, 4, 4)
            assert np.abs(batch.samples.env.observation).sum() > 0

        batch_ok()
        intruder = ctx.socket(zmq.DEALER)
        intruder.linger = 0
        intruder.identity = b"intruder"
        intruder.connect(endpoint)
        bad = _bad_messages()
        expected = 0

        def handled() -> int:  # dropped, or (a REGISTER that cannot be accepted) refused
            return coord.dropped_messages + coord.refused_workers

        for i, (what, frames) in enumerate(bad):
            intruder.send_multipart(frames)
            expected += 1
            assert wait_until(lambda n=expected: handled() >= n, 10), what
            assert handled() == expected, f"{what} counted twice"
            if i % 5 == 4:
                batch_ok()  # the job keeps sampling between the bad messages
        # The stranger's HEARTBEAT is answered: not registered.
        replies = []
        while (reply := _recv_reply(intruder, 1.0)) is not None:
            replies.append(reply[0])
        assert any(
            h.type == MsgType.REFUSED and "not registered" in h.meta["reason"] for h in replies
        ), replies
        assert any(  # and the REGISTER asking for 1e9 envs was told why
            h.type == MsgType.REFUSED and "envs must be an integer" in h.meta["reason"]
            for h in replies
        ), replies

        # A peer speaking another protocol version is refused with a reason.
        other = dict(msgpack.unpackb(encode(Header(MsgType.REGISTER, worker_id="future"))[0]))
        other[PROTOCOL_KEY] = 99
        intruder.send_multipart([msgpack.packb(other)])
        reply = _recv_reply(intruder)
        assert reply is not None, "no answer to a wrong-version REGISTER"
        header, _ = reply
        assert header.type == MsgType.REFUSED
        assert "99" in header.meta["reason"] and "protocol" in header.meta["reason"]
        assert handled() == expected + 1
        assert coord.refused_workers == 1  # the REGISTER asking for 1e9 envs

        # Nothing was registered by all this, and the job goes on.
        assert [w.peer for w in coord.alive_workers()] == [b"local-0-0"]
        assert coord.restarts == {} and coord.lost_batches == 0
        for _ in range(3):
            batch_ok()
        intruder.close()
    finally:
        sampler.close()
        ctx.destroy(linger=0)  # closes the intruder too when an assertion skipped that (term hangs)
    assert not worker_processes()


# ------------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_stops_asyncrl_train_cleanly(tmp_path, how):
    """`asyncrl train --mode parallel --workers 2` gets SIGTERM (the process alone) or Ctrl-C
    (SIGINT to its whole process group, as a terminal sends it): it stops after the batch,
    writes a final checkpoint, exits 128 + signal, no worker quits early or is restarted, and
    no worker process or shm segment remains."""
    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "ppo", "CartPole-v1",
            "--mode", "parallel", "--workers", "2",
            "--steps", "10000000",
            "--run-dir", str(run_dir),
            "--no-progress",
            "--set", "log.tensorboard=false",
            "--set", "log.eval_every=-1",
        ),
        tmp_path / "out.txt",
        start_new_session=True,  # its own process group, like a job in a terminal
    )  # fmt: skip
    try:
        started = lambda: (run_dir / "progress.csv").exists()  # noqa: E731
        assert wait_until(lambda: started() or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()
        workers = worker_processes(proc.pid)
        assert len(workers) == 2, workers
        pids = [w.pid for w in workers]
        segments = shm_mapped_by([proc.pid, *pids])
        assert segments, "the workers use shared memory on this host"
        if how == "SIGTERM":
            sig = signal.SIGTERM
            proc.send_signal(sig)
        else:
            sig = signal.SIGINT
            os.killpg(proc.pid, sig)
        rc, out = finish(proc, 60)
    finally:
        if proc.poll() is None:
            finish(proc, 0)
    assert rc == 128 + sig, out
    assert f"asyncrl: {sig.name}: stopping after this batch" in out and "interrupted" in out, out
    assert "Traceback" not in out and "leaked" not in out, out
    assert list_checkpoints(run_dir), "no final checkpoint"
    log = (run_dir / "train.log").read_text()
    assert f"stopped by {sig.name}" in log, log
    # Nobody quit early (and was restarted) while the run stopped: no worker went before the
    # stop began, none registered after it.
    stopped_at = log.index(f"stopped by {sig.name}")
    assert stopped_at < log.index("is gone"), log
    assert "registered (local" not in log[stopped_at:], log
    assert wait_until(lambda: all(gone(p) for p in pids), 10), "orphan worker processes"
    assert not segments & shm_segments(), "shared memory left in /dev/shm"


def test_workers_exit_when_the_training_process_is_killed(tmp_path):
    """SIGKILL of `asyncrl train` itself (nothing can clean up there): its workers notice
    that their parent is gone and exit within seconds, unlinking their shared memory."""
    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "ppo", "CartPole-v1",
            "--mode", "parallel", "--workers", "2",
            "--steps", "10000000",
            "--run-dir", str(run_dir),
            "--no-progress",
            "--set", "log.tensorboard=false",
            "--set", "log.eval_every=-1",
        ),
        tmp_path / "out.txt",
        start_new_session=True,
    )  # fmt: skip
    try:
        started = lambda: (run_dir / "progress.csv").exists()  # noqa: E731
        assert wait_until(lambda: started() or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()
        workers = worker_processes(proc.pid)
        pids = [w.pid for w in workers]
        assert len(pids) == 2
        segments = shm_mapped_by(pids)
        connect = workers[0].cmdline()[workers[0].cmdline().index("--connect") + 1]
        ipc_dir = os.path.dirname(connect.removeprefix("ipc://"))
        proc.kill()
        finish(proc, 10)
        # They check every heartbeat (1 s); the bound is generous for a loaded machine.
        assert wait_until(lambda: all(gone(p) for p in pids), 30), "orphan worker processes"
    finally:
        if proc.poll() is None:
            finish(proc, 0)
        for pid in pids if "pids" in locals() else []:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not segments & shm_segments(), 5), segments & shm_segments()
    # ... and the coordinator's ipc socket folder, which nobody else is left to remove.
    assert wait_until(lambda: not os.path.exists(ipc_dir), 5), ipc_dir
