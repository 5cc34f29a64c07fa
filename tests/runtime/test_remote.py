"""Remote workers: `asyncrl worker --connect tcp://127.0.0.1:PORT` joins a running job (and
leaves it) and its steps count; with CURVE keys (`asyncrl keygen`), a worker with the right key
works and one without it is refused. Real processes and TCP on loopback.
"""

from __future__ import annotations

import csv
import signal

import numpy as np

from asyncrl.algos import ALGOS
from asyncrl.cli import main as asyncrl_main
from asyncrl.runners.train import _seed_everything, make_sampler
from asyncrl.runtime.auth import generate_keypair
from tests.runtime._runtime_helpers import (
    asyncrl_cmd,
    config,
    finish,
    free_port,
    no_leftovers,  # noqa: F401 - module fixture: no process or shm segment remains
    popen,
    wait_until,
)


def test_a_worker_joins_a_running_job_and_leaves_it(tmp_path):
    """Python API job with one local worker (4 envs) and sampler.bind; a remote worker (2 envs)
    started with `asyncrl worker --connect` widens each batch to 6 envs while it is there."""
    cfg = config(
        sets=[
            'sampler.mode="parallel"',
            "sampler.workers=1",
            "sampler.num_envs=4",
            "sampler.horizon=16",
            'sampler.bind="tcp://127.0.0.1:*"',
            "sampler.heartbeat_s=0.5",
        ]
    )
    _seed_everything(cfg.seed)
    sampler = make_sampler(cfg)
    agent = ALGOS["ppo"].make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    worker = None
    try:
        sampler.initialize(agent)
        coord = sampler.coordinator
        assert sampler.obtain().env_steps == 16 * 4
        worker = popen(
            asyncrl_cmd(
                "worker", "--connect", coord.remote_endpoint, "--envs", "2", "--id", "visitor"
            ),
            tmp_path / "worker.txt",
        )
        widths = []
        total = 0
        for _ in range(2000):  # the job goes on while the worker starts up
            batch = sampler.obtain()
            widths.append(batch.samples.env.reward.shape[1])
            total += batch.env_steps
            if widths[-1] == 6:
                break
            assert worker.poll() is None, (tmp_path / "worker.txt").read_text()
        assert widths[-1] == 6, "the remote worker never delivered a batch"
        assert batch.env_steps == 16 * 6
        # Its columns hold real CartPole steps: observations move, rewards are 1.
        remote = batch.samples[:, 4:6]
        assert np.abs(remote.env.observation).sum() > 0
        assert (remote.env.reward == 1).all()
        for _ in range(3):
            batch = sampler.obtain()
            assert batch.env_steps == 16 * 6
            total += batch.env_steps
        (record,) = [w for w in coord.alive_workers() if not w.local]
        assert record.peer == b"visitor" and record.num_envs == 2 and record.env_offset == 4
        # Its heartbeats count its own env steps: at least the 4 batches of 16 x 2 it delivered
        # (a heartbeat sent before the last batch shows fewer: wait for a later one).
        assert wait_until(lambda: record.steps >= 16 * 2 * 4, 30), record.steps
        assert total == 16 * 4 * (len(widths) - 1) + 16 * 6 * 4

        # It leaves (Ctrl-C / SIGTERM): a BYE, and the batches are 4 envs wide again.
        worker.send_signal(signal.SIGTERM)
        rc, out = finish(worker, 30)
        assert rc == 0, out
        assert wait_until(lambda: len(coord.alive_workers()) == 1, 10)
        assert sampler.obtain().env_steps == 16 * 4
        assert coord.restarts == {}
    finally:
        sampler.close()
        if worker is not None and worker.poll() is None:
            finish(worker, 0)


def test_curve_keys_admit_the_right_worker_and_refuse_others(tmp_path):
    """`asyncrl coordinator --keys` (1 local worker, --min-workers 2): workers with an unknown
    key or no key are refused (non-zero exit, logged by the coordinator); the worker with the
    right key joins and samples half of every batch until the run ends, then exits 0."""
    keys, strangers = tmp_path / "keys", tmp_path / "strangers"
    assert asyncrl_main(["keygen", str(keys)]) == 0
    generate_keypair(strangers, "intruder")  # a valid key pair the coordinator does not know
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    coordinator = popen(
        asyncrl_cmd(
            "coordinator", "ppo", "CartPole-v1",
            "--bind", endpoint, "--keys", str(keys),
            "--workers", "1", "--min-workers", "2",
            "--steps", "4096", "--seed", "3",
            "--run-dir", str(run_dir), "--no-progress",
            "--set", "log.tensorboard=false",
            "--set", "log.log_every_s=0",
            "--set", "log.eval_every=-1",
        ),
        tmp_path / "coordinator.txt",
    )  # fmt: skip
    procs = [coordinator]
    try:
        log = run_dir / "train.log"
        up = lambda: log.exists() and "registered (local" in log.read_text()  # noqa: E731
        assert wait_until(lambda: up() or coordinator.poll() is not None, 120)
        assert coordinator.poll() is None, (tmp_path / "coordinator.txt").read_text()

        wrong_key = popen(
            asyncrl_cmd(
                "worker", "--connect", endpoint,
                "--server-key", str(keys / "server.key"),
                "--client-key", str(strangers / "intruder.key_secret"),
            ),
            tmp_path / "wrong_key.txt",
        )  # fmt: skip
        no_key = popen(asyncrl_cmd("worker", "--connect", endpoint), tmp_path / "no_key.txt")
        procs += [wrong_key, no_key]
        rc_wrong, out_wrong = finish(wrong_key, 90)
        rc_none, out_none = finish(no_key, 90)
        assert rc_wrong != 0 and "refused" in out_wrong, out_wrong
        assert rc_none != 0, out_none
        text = log.read_text()
        assert "refused CURVE client key" in text, text  # the unknown key, by the ZAP handler
        assert "CURVE handshake failed" in text, text  # the worker without keys
        assert "registered (remote" not in text  # nobody got in
        # The run waits for its second worker (nothing sampled yet).
        assert not (run_dir / "progress.csv").exists() or len(_rows(run_dir)) == 0

        good = popen(
            asyncrl_cmd("worker", "--connect", endpoint, "--keys", str(keys)),
            tmp_path / "good.txt",
        )
        procs.append(good)
        rc, out = finish(coordinator, 180)
        assert rc == 0, out
        rc_good, out_good = finish(good, 30)
        assert rc_good == 0, out_good  # told to stop when the run ended
    finally:
        for p in procs:
            if p.poll() is None:
                finish(p, 0)
    text = log.read_text()
    assert "registered (remote, envs 8..15" in text, text
    rows = _rows(run_dir)
    steps = [int(r["env_steps"]) for r in rows]
    # Every batch: 8 local + 8 remote envs x 32 steps.
    assert steps[0] == 512 and all(b - a == 512 for a, b in zip(steps, steps[1:])), steps
    assert steps[-1] >= 4096


def _rows(run_dir):
    with open(run_dir / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))
