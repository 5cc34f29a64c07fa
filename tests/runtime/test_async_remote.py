"""Remote workers in asynchronous runs: `asyncrl worker --connect` joins an `asyncrl coordinator
--async` job (CURVE keys, TCP on loopback) and its batches are learned. Off-policy: its steps go
to a replay ring of its own, one worker is killed mid-run and another joins, the replay ratio
holds over all env steps and the checkpoint keeps every ring. On-policy (APPO): its batches are
optimized on as they come."""

from __future__ import annotations

import csv
import signal

import pytest

from asyncrl.cli import main as asyncrl_main
from asyncrl.logging.checkpoint import latest_checkpoint, load_checkpoint
from asyncrl.replay.sources import holds_sources
from tests.runtime._runtime_helpers import (
    asyncrl_cmd,
    finish,
    free_port,
    no_leftovers,  # noqa: F401 - module fixture: no process or shm segment remains
    popen,
    wait_until,
)


def _rows(run_dir) -> list[dict]:
    try:
        with open(run_dir / "progress.csv") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _last(run_dir, column: str) -> int:
    rows = _rows(run_dir)
    return int(float(rows[-1][column])) if rows and rows[-1].get(column) else 0


def _coordinator(tmp_path, algo: str, keys, endpoint: str, sets: list[str]):
    run_dir = tmp_path / "run"
    cmd = asyncrl_cmd(
        "coordinator", algo, "CartPole-v1",
        "--bind", endpoint, "--keys", str(keys),
        "--workers", "1", "--async",
        "--steps", "1e7", "--seed", "0",
        "--run-dir", str(run_dir), "--no-progress",
        "--set", "log.tensorboard=false",
        "--set", "log.log_every_s=0",
        "--set", "log.eval_every=-1",
        *[x for s in sets for x in ("--set", s)],
    )  # fmt: skip
    return popen(cmd, tmp_path / "coordinator.txt"), run_dir


def _worker(tmp_path, endpoint, keys, name: str, envs: int):
    cmd = asyncrl_cmd(
        "worker", "--connect", endpoint, "--keys", str(keys), "--envs", str(envs), "--id", name
    )
    return popen(cmd, tmp_path / f"{name}.txt")


def test_remote_workers_come_and_go_in_an_async_off_policy_run(tmp_path):
    keys = tmp_path / "keys"
    assert asyncrl_main(["keygen", str(keys), "--workers", "1"]) == 0
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    coordinator, run_dir = _coordinator(
        tmp_path, "dqn", keys, endpoint, ["dqn.learning_starts=500", "sampler.horizon=64"]
    )
    out = tmp_path / "coordinator.txt"
    procs = [coordinator]
    try:
        # the run learns on its local worker first
        assert wait_until(lambda: _last(run_dir, "updates") > 0, 120), out.read_text()
        first = _worker(tmp_path, endpoint, keys, "first", 2)
        procs.append(first)
        assert wait_until(lambda: _last(run_dir, "remote_steps") >= 64 * 2 * 3, 120), (
            out.read_text(),
            (tmp_path / "first.txt").read_text(),
        )
        assert _last(run_dir, "replay_sources") == 2
        first.kill()  # gone without a word; the run goes on
        finish(first, 10)
        steps = _last(run_dir, "remote_steps")
        local_before = _last(run_dir, "env_steps")
        assert wait_until(lambda: _last(run_dir, "env_steps") >= local_before + 64 * 4, 120)
        second = _worker(tmp_path, endpoint, keys, "second", 3)
        procs.append(second)
        assert wait_until(lambda: _last(run_dir, "remote_steps") >= steps + 64 * 3 * 3, 120), (
            out.read_text(),
            (tmp_path / "second.txt").read_text(),
        )
        # the first worker's ring stays: three rings now
        assert wait_until(lambda: _last(run_dir, "replay_sources") == 3, 30)
        coordinator.send_signal(signal.SIGTERM)
        rc, text = finish(coordinator, 120)
        assert rc == 130, text
        rc, text = finish(second, 30)
        assert rc == 0, text
    finally:
        for p in procs:
            if p.poll() is None:
                finish(p, 0)
    rows = _rows(run_dir)
    last = rows[-1]
    env_steps, remote = int(float(last["env_steps"])), int(float(last["remote_steps"]))
    assert remote >= 64 * 2 * 3 + 64 * 3 * 3 and env_steps > remote
    # 0.5 updates per env step, remote steps included (10%)
    ratio = float(last["replay_ratio"])
    assert abs(ratio - 0.5) <= 0.05, ratio
    assert int(last["dropped_messages"]) == 0
    ckpt = load_checkpoint(latest_checkpoint(run_dir), map_location="cpu")
    replay = ckpt["algo"]["replay"]
    assert holds_sources(replay)
    assert sum(k.startswith("source") and k.endswith("/meta") for k in replay) == 2


@pytest.mark.parametrize("algo", ["appo"])
def test_a_remote_worker_feeds_an_async_on_policy_run(algo, tmp_path):
    keys = tmp_path / "keys"
    assert asyncrl_main(["keygen", str(keys), "--workers", "1"]) == 0
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    coordinator, run_dir = _coordinator(tmp_path, algo, keys, endpoint, [])
    worker = None
    try:
        assert wait_until(lambda: _last(run_dir, "updates") > 0, 120)
        worker = _worker(tmp_path, endpoint, keys, "visitor", 4)
        # APPO CartPole: batches of 32 steps; 10 of the visitor's learned
        assert wait_until(lambda: _last(run_dir, "remote_steps") >= 32 * 4 * 10, 120), (
            tmp_path / "coordinator.txt"
        ).read_text()
        worker.send_signal(signal.SIGTERM)  # it says goodbye
        rc, text = finish(worker, 30)
        assert rc == 0, text
        coordinator.send_signal(signal.SIGTERM)
        rc, text = finish(coordinator, 120)
        assert rc == 130, text
    finally:
        for p in (coordinator, worker):
            if p is not None and p.poll() is None:
                finish(p, 0)
    last = _rows(run_dir)[-1]
    assert float(last["policy_lag_max"]) <= 20  # within the preset's bound
    assert int(last["dropped_messages"]) == 0
