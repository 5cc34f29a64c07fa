"""Supervision of local workers and clean ends of a run, with real processes on loopback.

* The restart policy (asyncrl/runtime/supervision.py) as a pure function: a worker that
  delivered a batch is restarted at once however often it dies; one that dies without doing
  any work is restarted after a growing delay, and its slot given up past a rate.
* A worker killed every second or two never ends the run; a slot that always fails ends it
  with one error line and a final checkpoint.
* Leftovers: a SIGKILLed trainer leaves no replay-store socket folder; a kill drill followed
  by a double SIGTERM leaves no coordinator socket, prints no resource-tracker warning and
  exits 143 with a checkpoint.

Every wait is for an event (a process exit, a file, a counter) with a generous bound.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psutil
import pytest

import asyncrl
from asyncrl.algos import ALGOS
from asyncrl.logging.checkpoint import list_checkpoints
from asyncrl.runners.train import _seed_everything, make_sampler
from asyncrl.runtime.supervision import RestartPolicy
from tests.runtime._runtime_helpers import (
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

# ------------------------------------------------------------------------------- the policy


def test_productive_deaths_restart_at_once_however_often():
    policy = RestartPolicy(max_failures=1, window_s=60.0, backoff_s=0.5)
    assert all(policy.on_death(0, 2.0 * i, productive=True) == 0.0 for i in range(100))
    assert policy.failures(0, 200.0) == 0


def test_unproductive_deaths_back_off_exponentially_then_the_slot_is_given_up():
    policy = RestartPolicy(max_failures=5, window_s=60.0, backoff_s=0.5, max_backoff_s=4.0)
    delays = [policy.on_death(1, float(t), productive=False) for t in range(5)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped
    assert policy.on_death(1, 5.0, productive=False) is None  # the 6th within 60 s
    assert policy.on_death(0, 5.0, productive=False) == 0.5  # slots are independent


def test_the_cap_is_a_rate_and_a_batch_resets_the_back_off():
    policy = RestartPolicy(max_failures=2, window_s=10.0, backoff_s=0.1, max_backoff_s=8.0)
    assert policy.on_death(0, 0.0, False) == 0.1
    assert policy.on_death(0, 1.0, False) == 0.2
    # Two more failures, but the first two have left the window: not given up.
    assert policy.on_death(0, 30.0, False) == 0.4
    assert policy.failures(0, 30.0) == 1
    assert policy.on_death(0, 31.0, False) == 0.8
    # An incarnation that delivered: restarted at once, back-off and failures start over.
    assert policy.on_death(0, 32.0, True) == 0.0
    assert policy.failures(0, 32.0) == 0
    assert policy.on_death(0, 33.0, False) == 0.1
    assert policy.on_death(0, 34.0, False) == 0.2
    assert policy.on_death(0, 35.0, False) is None  # the third within 10 s: given up


def test_productive_means_a_batch_or_a_long_enough_life():
    policy = RestartPolicy(healthy_s=30.0)
    assert policy.productive(1, 0.1)
    assert policy.productive(0, 30.0)
    assert not policy.productive(0, 29.9)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_failures": -1}, {"window_s": 0.0}, {"backoff_s": -1.0}, {"backoff_s": 9.0}],
)
def test_bad_policy_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)


# ------------------------------------------------------------------------------- live runs


def _live(coordinator, slot: int):
    live = [w for w in coordinator.alive_workers() if w.local and w.slot == slot]
    return live[0] if live else None


def test_a_worker_killed_every_second_or_two_never_ends_the_run(caplog):
    """Slot 1's worker is SIGKILLed each time it has delivered a batch, at most once a second,
    many more times than ``restart_limit`` (1): every round still completes with every
    column fresh, the replacements start at once (no back-off: each incarnation worked) and
    the run is never given up."""
    kills_wanted = 3
    cfg = config(
        sets=[
            'sampler.mode="parallel"',
            "sampler.workers=2",
            "sampler.num_envs=4",
            "sampler.horizon=16",
            "sampler.restart_limit=1",
        ]
    )
    caplog.set_level(logging.INFO, logger="asyncrl.coordinator")
    _seed_everything(cfg.seed)
    sampler = make_sampler(cfg)
    agent = ALGOS["ppo"].make_agent(
        sampler.obs_space, sampler.action_space, cfg.model, "cpu", cfg.algo_params
    )
    kills: list[bytes] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def killer():
        coord = sampler.coordinator
        last = -1e9
        try:
            while len(kills) < kills_wanted and not done.is_set():

                def ready(last=last):
                    w = _live(coord, 1)
                    # A second batch was asked of it: it delivered the first.
                    return w is not None and w.requests >= 2 and time.monotonic() - last >= 1.0

                assert wait_until(lambda: ready() or done.is_set(), 90), "no batch from slot 1"
                if done.is_set():
                    return
                w = _live(coord, 1)
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:  # it died by itself meanwhile: not ours to count
                    continue
                kills.append(w.peer)
                last = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    thread = threading.Thread(target=killer, daemon=True)
    batches = after = 0
    try:
        sampler.initialize(agent)
        thread.start()
        deadline = time.monotonic() + 150
        # Sample until the last replacement has delivered two batches too.
        while after < 2 and not errors and time.monotonic() < deadline:
            batch = sampler.obtain()  # raises if a slot was given up or left a column stale
            assert batch.env_steps == 16 * 4
            batches += 1
            after = after + 1 if len(kills) >= kills_wanted else 0
        coord = sampler.coordinator
    finally:
        done.set()
        thread.join(30)
        sampler.close()
    if errors:
        raise errors[0]
    assert len(kills) == kills_wanted and after == 2, (kills, batches)
    assert len(set(kills)) == kills_wanted  # a new worker each time
    assert coord.failure is None
    assert coord.restarts.get(1, 0) >= kills_wanted > cfg.sampler.restart_limit
    backoffs = [r.message for r in caplog.records if "restarting it in" in r.message]
    assert not backoffs, backoffs


def test_a_slot_that_always_fails_ends_the_run_with_one_error_and_a_checkpoint(tmp_path):
    """`asyncrl train` on an env that cannot be built in a worker: the slot's worker dies each
    time without a batch, is restarted after a back-off, then given up. The run ends with one
    error line (the RuntimeError_ the coordinator raises) and exit status 1, after writing a
    final checkpoint; the log says why. (The workers' own tracebacks go to stderr too.)"""
    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "ppo", "tests.runtime._failing_env:FailsInWorkers",
            "--mode", "parallel", "--workers", "1", "--steps", "1000", "--run-dir", str(run_dir),
            *CLI_QUIET,
            "--set", "sampler.num_envs=2", "--set", "sampler.horizon=8",
            "--set", "sampler.restart_limit=1", "--set", "sampler.restart_backoff_s=0.1",
        ),
        tmp_path / "out.txt",
    )  # fmt: skip
    # Well before a round's own timeout (120 s): 2 worker starts and a 0.1 s back-off.
    rc, out = finish(proc, 110)
    assert rc == 1, out
    errors = [line for line in out.splitlines() if line.startswith("asyncrl train: error:")]
    assert len(errors) == 1, out
    assert errors[0].startswith(
        "asyncrl train: error: local worker 0 failed 2 times within 60 s without delivering"
    ), errors
    assert "RuntimeError_" not in out, out  # no traceback of the training process
    assert list_checkpoints(run_dir), "no final checkpoint"
    log_text = (run_dir / "train.log").read_text()
    assert "restarting it in 0.1 s" in log_text, log_text
    assert "run failed at 0 env steps: RuntimeError_: local worker 0 failed" in log_text, log_text
    assert not worker_processes()


# ------------------------------------------------------------------------------- leftovers

CLI_QUIET = ["--no-progress", "--set", "log.tensorboard=false", "--set", "log.eval_every=-1"]


def _children_running(pid: int, module: str) -> list[psutil.Process]:
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and module in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _arg(proc: psutil.Process, flag: str) -> str:
    cmd = proc.cmdline()
    return cmd[cmd.index(flag) + 1]


def test_a_killed_trainer_leaves_no_replay_socket_behind(tmp_path):
    """SIGKILL of `asyncrl train dqn` with the replay store in its own process: the store
    notices its parent is gone, exits and removes its ipc socket folder."""
    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "dqn", "CartPole-v1", "--steps", "10000000", "--run-dir", str(run_dir),
            *CLI_QUIET, "--set", "dqn.replay_service=true",
        ),
        tmp_path / "out.txt",
        start_new_session=True,
    )  # fmt: skip
    store = None
    try:
        started = lambda: (run_dir / "progress.csv").exists()  # noqa: E731
        assert wait_until(lambda: started() or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()
        (store,) = _children_running(proc.pid, "workers.replay")
        folder = os.path.dirname(_arg(store, "--bind").removeprefix("ipc://"))
        assert os.path.basename(folder).startswith("asyncrl-replay-") and os.path.isdir(folder)
        proc.kill()
        finish(proc, 10)
        assert wait_until(lambda: gone(store.pid), 30), "the replay store outlived its trainer"
    finally:
        if proc.poll() is None:
            finish(proc, 0)
        if store is not None and not gone(store.pid):
            store.kill()
    assert wait_until(lambda: not os.path.exists(folder), 10), os.listdir(folder)


def test_a_kill_drill_then_a_double_sigterm_leaves_nothing_behind(tmp_path):
    """`asyncrl train --mode parallel --workers 2`: a worker is SIGKILLed and replaced (its
    resource tracker unlinks its segments, without a warning on stderr), then the trainer gets
    SIGTERM twice 0.05 s apart. The second signal lands in the loop (stop at once) or in the
    final cleanup (acknowledged, not raised): either way the run exits 143 (128 + SIGTERM)
    with a final checkpoint, no traceback, no coordinator socket folder, no worker process
    and no shared memory."""
    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "ppo", "CartPole-v1", "--mode", "parallel", "--workers", "2",
            "--steps", "10000000", "--run-dir", str(run_dir), *CLI_QUIET,
        ),
        tmp_path / "out.txt",
        start_new_session=True,
    )  # fmt: skip
    pids: list[int] = []
    try:
        started = lambda: (run_dir / "progress.csv").exists()  # noqa: E731
        assert wait_until(lambda: started() or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()
        workers = worker_processes(proc.pid)
        assert len(workers) == 2, workers
        ipc_dir = os.path.dirname(_arg(workers[0], "--connect").removeprefix("ipc://"))
        assert os.path.exists(os.path.join(ipc_dir, "coordinator.sock"))
        victim = workers[0]
        victim_segments = shm_mapped_by([victim.pid])
        assert victim_segments, "the workers use shared memory on this host"
        victim.kill()
        log_path = run_dir / "train.log"
        replaced = lambda: log_path.read_text().count("registered (local") >= 3  # noqa: E731
        assert wait_until(replaced, 90), log_path.read_text()
        # The victim's tracker unlinks its segments (and would have warned by then).
        assert wait_until(lambda: not victim_segments & shm_segments(), 30)
        workers = worker_processes(proc.pid)
        pids = [w.pid for w in workers]
        segments = shm_mapped_by([proc.pid, *pids])
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)  # the drill itself: a second SIGTERM 0.05 s after the first
        proc.send_signal(signal.SIGTERM)
        rc, out = finish(proc, 60)
    finally:
        if proc.poll() is None:
            finish(proc, 0)
    assert rc == 128 + signal.SIGTERM, out
    assert "Traceback" not in out, out
    assert "leaked" not in out and "resource_tracker" not in out, out
    assert list_checkpoints(run_dir), "no final checkpoint"
    assert not os.path.exists(ipc_dir), os.listdir(ipc_dir)
    assert wait_until(lambda: all(gone(p) for p in pids), 15), "orphan worker processes"
    assert wait_until(lambda: not segments & shm_segments(), 10), segments & shm_segments()


def test_signals_during_the_final_cleanup_do_not_cut_it_short(tmp_path, monkeypatch):
    """A SIGTERM stops the loop; more SIGTERMs and a SIGINT arriving while the final checkpoint
    is written are acknowledged, not raised: the checkpoint is written, the sampler closed and
    the handlers restored, and the run reports the first signal. (Deterministic: the signals
    are sent from inside the cleanup itself.)"""
    import importlib

    from asyncrl.algos.ppo import PPO

    train_module = importlib.import_module("asyncrl.runners.train")
    real_optimize, real_save = PPO.optimize, train_module.save_checkpoint
    calls: list[int] = []
    seen: dict[str, bool] = {}

    def optimize(self, batch, progress):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the first: stop after this batch
        return real_optimize(self, batch, progress)

    def save_checkpoint(*args, **kwargs):
        if calls and len(calls) >= 3:  # the final one, in the cleanup
            for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
                os.kill(os.getpid(), sig)
                time.sleep(0.01)  # let the handler run here, inside the cleanup
            seen["survived"] = True
        return real_save(*args, **kwargs)

    monkeypatch.setattr(PPO, "optimize", optimize)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    cfg = config(run_dir=tmp_path, sets=["steps=1000000", "log.eval_every=-1"])
    result = asyncrl.train(cfg)
    assert seen.get("survived"), "the cleanup was cut short"
    assert result.interrupted and result.stop_signal == signal.SIGTERM
    assert list_checkpoints(tmp_path) and result.env_steps == 3 * 256
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers


def test_ctrl_c_reaches_the_trainer_only_and_the_replay_is_saved(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) on `asyncrl train
    dqn` with the replay store in its own process: the store runs in its own session, so it
    is still there to hand over its contents for the final checkpoint; exit 130."""
    from asyncrl.logging.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    proc = popen(
        asyncrl_cmd(
            "train", "dqn", "CartPole-v1", "--steps", "10000000", "--run-dir", str(run_dir),
            *CLI_QUIET, "--set", "dqn.replay_service=true", "--set", "dqn.save_replay=true",
        ),
        tmp_path / "out.txt",
        start_new_session=True,  # its own process group, like a job in a terminal
    )  # fmt: skip
    store = None
    try:
        started = lambda: (run_dir / "progress.csv").exists()  # noqa: E731
        assert wait_until(lambda: started() or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()
        (store,) = _children_running(proc.pid, "workers.replay")
        os.killpg(proc.pid, signal.SIGINT)
        rc, out = finish(proc, 60)
    finally:
        if proc.poll() is None:
            finish(proc, 0)
    assert rc == 128 + signal.SIGINT, out
    assert "Traceback" not in out, out
    (ckpt,) = list_checkpoints(run_dir)[-1:]
    state = load_checkpoint(ckpt, map_location="cpu")
    assert "replay" in state["algo"], sorted(state["algo"])
    assert wait_until(lambda: gone(store.pid), 15), "the replay store outlived the run"
