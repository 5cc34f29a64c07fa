"""Asynchronous sampling and optimization end to end: the learner process, the learner slots,
back-pressure, faults (a killed learner, a killed sampler), SIGTERM and resume; and the flow
control's bookkeeping on its own.
"""

from __future__ import annotations

import asyncio
import csv
import signal
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint
from asyncrl.runtime.flow import AsyncFlow
from asyncrl.runtime.protocol import Header, MsgType
from asyncrl.runtime.registry import WorkerRecord
from tests.runtime._runtime_helpers import (
    LeakWatch,
    asyncrl_cmd,
    finish,
    no_leftovers,  # noqa: F401 - module fixture: no process or shm segment remains
    popen,
    wait_until,
)

FAST = ["--set", "log.progress=false", "--set", "log.tensorboard=false"]


# ---------------------------------------------------------------------- the flow on its own
class FakeRuntime:
    """What AsyncFlow asks of the coordinator, recording the requests it sends."""

    def __init__(self, local_workers: int):
        self.local_workers = local_workers
        self.sent: list[tuple[int, int]] = []  # (slot, batch number)
        self.dropped_messages = 0
        self.workers = {
            s: WorkerRecord(f"w{s}".encode(), True, s, 4 * s, 4, "frames", "local")
            for s in range(local_workers)
        }
        self.host = SimpleNamespace(spawn=lambda coro: asyncio.get_running_loop().create_task(coro))

    def alive_workers(self):
        return [w for w in self.workers.values() if w.alive]

    def request_args(self, worker):
        return {}, None, None, 0

    async def send_request(self, worker, n, version, acting, names, params):
        self.sent.append((worker.slot, n))
        return True

    def pop_finals(self, peer):
        return []

    def declare_dead(self, worker, why):
        worker.alive = False


def _samples(flow, rt, slot: int, n: int):
    flow.on_samples(rt.workers[slot], Header(MsgType.SAMPLES, seq=n), np.zeros(1))


def test_async_flow_holds_workers_to_the_learner_slots_and_credits():
    async def scenario():
        rt = FakeRuntime(local_workers=2)
        delivered, complete = [], []
        flow = AsyncFlow(
            rt,
            slots=2,
            credits=2,
            deliver=lambda d, k: delivered.append((d.worker.slot, d.batch_number, k)),
            complete=lambda k, n: complete.append((k, n)),
        )
        flow.start()
        await flow.issue_all()
        # two credits each: batches 0 and 1 asked of both workers at once
        assert sorted(rt.sent) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        _samples(flow, rt, 0, 0)
        await asyncio.sleep(0)
        # slot 0's next batch (2) goes to learner slot 0, which still holds batch 0: held back
        assert (0, 2) not in rt.sent and flow.waits >= 1
        _samples(flow, rt, 0, 0)  # a duplicate is dropped, not delivered twice
        assert rt.dropped_messages == 1
        _samples(flow, rt, 1, 0)
        assert complete == [(0, 0)]
        _samples(flow, rt, 0, 1)
        _samples(flow, rt, 1, 1)
        assert complete == [(0, 0), (1, 1)]
        await asyncio.sleep(0)
        assert len(rt.sent) == 4  # both learner slots full: nobody is asked for more
        await flow.release(0)  # the learner is done with batch 0
        assert sorted(rt.sent[4:]) == [(0, 2), (1, 2)]
        assert [k for _, _, k in delivered] == [0, 0, 1, 1]
        # a dead worker's outstanding batch is asked of its replacement, in order
        rt.workers[1].alive = False
        replacement = WorkerRecord(b"w1b", True, 1, 4, 4, "frames", "local")
        rt.workers[1] = replacement
        await flow.on_register(replacement)
        assert rt.sent[-1] == (1, 2)

    asyncio.run(scenario())


def test_async_flow_gives_a_remote_worker_two_credits_until_the_learner_is_done():
    async def scenario():
        rt = FakeRuntime(local_workers=1)
        visitor = WorkerRecord(b"visitor", False, -1, 4, 2, "frames", "remote")
        rt.workers[b"visitor"] = visitor
        remote = []
        flow = AsyncFlow(
            rt,
            slots=2,
            credits=2,
            deliver=lambda d, k: None,
            complete=lambda k, n: None,
            deliver_remote=lambda d, source: remote.append((source, d.batch_number)),
        )
        flow.start()
        await flow.on_register(visitor)
        asked = [n for slot, n in rt.sent if slot == -1]
        assert asked == [0, 1]
        flow.on_samples(visitor, Header(MsgType.SAMPLES, seq=0), np.zeros(1))
        await asyncio.sleep(0)
        # delivered but not learned yet: still two of its batches in flight, nothing new asked
        assert [n for slot, n in rt.sent if slot == -1] == [0, 1]
        ((source, _),) = remote
        await flow.remote_learned(source)
        assert [n for slot, n in rt.sent if slot == -1] == [0, 1, 2]
        flow.on_samples(visitor, Header(MsgType.SAMPLES, seq=0), np.zeros(1))  # a duplicate
        assert rt.dropped_messages == 1 and len(remote) == 1
        # registering again is a new source; the old source's acks no longer count
        await flow.on_register(visitor)
        assert flow.remote[b"visitor"].name != source
        flow.on_dead(visitor, False)
        assert b"visitor" not in flow.remote
        await flow.remote_learned(source)  # nothing to do, no error

    asyncio.run(scenario())


# ---------------------------------------------------------------------- end to end
def _async_cmd(run_dir, *extra: str, steps: int = 200_000) -> list[str]:
    return asyncrl_cmd(
        "train",
        "ppo",
        "CartPole-v1",
        "--mode",
        "parallel",
        "--workers",
        "2",
        "--async",
        "--steps",
        str(steps),
        "--run-dir",
        str(run_dir),
        *FAST,
        *extra,
    )


def _children(pid: int, module: str) -> list[psutil.Process]:
    out = []
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE and module in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "progress.csv") as f:
        return list(csv.DictReader(f))


def test_a_killed_learner_ends_the_run_with_one_line_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    with LeakWatch() as watch:
        proc = popen(
            _async_cmd(run_dir, "--set", "log.checkpoint_every=4096"), tmp_path / "out.txt"
        )
        assert wait_until(lambda: len(list_checkpoints(run_dir)) >= 1, 180), finish(proc, 5)[1]
        (learner,) = _children(proc.pid, "workers.optimizer")
        learner.kill()
        code, out = finish(proc, 120)
        assert code == 1, out
        assert "the learner process exited" in out and "Traceback" not in out, out
        assert wait_until(lambda: not _children(proc.pid, "workers."), 30)
    assert not watch.leaked()
    last = load_checkpoint(list_checkpoints(run_dir)[-1])
    resumed = popen(
        asyncrl_cmd("train", "--resume", str(run_dir), "--steps", str(last["env_steps"] + 4096)),
        tmp_path / "resume.txt",
    )
    code, out = finish(resumed, 240)
    assert code == 0, out
    final = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert final["env_steps"] >= last["env_steps"] + 4096
    assert final["policy_version"] > last["policy_version"], "the learner's version goes on"
    steps = [int(r["env_steps"]) for r in _rows(run_dir)]
    assert steps == sorted(steps), "the curve stays monotonic across the resume"


def test_sigterm_writes_a_final_checkpoint_and_a_killed_sampler_is_replaced(tmp_path):
    run_dir = tmp_path / "run"
    proc = popen(_async_cmd(run_dir, "--set", "log.checkpoint_every=100000"), tmp_path / "o.txt")
    assert wait_until(lambda: (run_dir / "progress.csv").exists(), 180), finish(proc, 5)[1]
    assert wait_until(lambda: len(_children(proc.pid, "workers.sampler")) == 2, 60)
    victim = _children(proc.pid, "workers.sampler")[0]
    victim.kill()
    # its replacement registers and the run goes on: more rows after the kill
    rows_then = len(_rows(run_dir))
    assert wait_until(lambda: len(_rows(run_dir)) > rows_then + 2, 120), finish(proc, 5)[1]
    assert wait_until(lambda: len(_children(proc.pid, "workers.sampler")) == 2, 60)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, 120)
    assert code == 128 + signal.SIGTERM, out
    assert "Traceback" not in out
    ckpt = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert ckpt["env_steps"] > 0 and ckpt["policy_version"] > 0
    assert ckpt["env_steps"] == int(_rows(run_dir)[-1]["env_steps"]), "the curve reaches it"


# ---------------------------------------------------------------------- learning, asynchronously
def _train_async(algo: str, env_id: str, run_dir, sets: list[str]):
    import asyncrl

    cfg = asyncrl.resolve_config(
        algo,
        env_id,
        sets=[
            f'run_dir="{run_dir}"',
            "log.progress=false",
            "log.tensorboard=false",
            "sampler.asynchronous=true",
            *sets,
        ],
    )
    result = asyncrl.train(cfg)
    return result, _rows(run_dir)


def asyncrl_config(run_dir):
    import asyncrl

    return asyncrl.load_config(run_dir / "config.toml")


def _evals(rows) -> list[float]:
    return [float(r["eval_return_mean"]) for r in rows if r["eval_return_mean"]]


@pytest.mark.learning
def test_async_appo_learns_cartpole_within_its_sync_budget(tmp_path):
    # the serial APPO test's budget (tests/test_learning.py): 475 within 40k steps
    result, rows = _train_async(
        "appo",
        "CartPole-v1",
        tmp_path,
        ['sampler.mode="parallel"', "sampler.workers=2", "seed=1", "steps=40000"],
    )
    assert max(_evals(rows)) >= 475, _evals(rows)
    lags = [float(r["policy_lag_mean"]) for r in rows]
    assert max(lags) >= 0.5, "workers run ahead of the learner: the lag is measured"
    assert max(float(r["policy_lag_max"]) for r in rows) <= 3, "bounded by the slots in flight"
    assert float(rows[-1]["lag_dropped_total"]) == 0  # within appo.max_policy_lag (20)


@pytest.mark.learning
def test_async_dqn_learns_cartpole_and_holds_the_replay_ratio(tmp_path):
    # the synchronous test's budget (tests/test_learning_dqn.py): the best eval >= 450 in 60k
    result, rows = _train_async(
        "dqn",
        "CartPole-v1",
        tmp_path,
        [
            'sampler.mode="parallel"',
            "sampler.workers=1",
            "seed=0",
            "steps=60000",
            "log.eval_every=5120",
        ],
    )
    assert max(_evals(rows)) >= 450, _evals(rows)
    setting = asyncrl_config(tmp_path).algo_params.replay_ratio
    ratios = [float(r["replay_ratio"]) for r in rows if r["replay_ratio"]]
    assert all(abs(x - setting) <= 0.1 * setting for x in ratios), (setting, ratios)  # 10%
    # the learner is the slow side here (it is busy nearly all the time): samplers waited
    assert float(rows[-1]["learner_busy"]) > 0.5 and int(rows[-1]["sampler_waits"]) > 0


@pytest.mark.learning
def test_async_sac_learns_pendulum_within_its_sync_budget(tmp_path):
    # tests/test_learning_qpg.py's budget: -250 within 10k steps. Batches of 8 steps (the
    # preset's are 1): one learner message per 8 env steps, the same updates per env step.
    result, rows = _train_async(
        "sac",
        "Pendulum-v1",
        tmp_path,
        [
            'sampler.mode="parallel"',
            "sampler.workers=1",
            "sampler.horizon=8",
            "seed=0",
            "steps=10000",
            "log.eval_every=1000",
            "log.eval_episodes=10",
            "sac.hidden_sizes=[64, 64]",
        ],
    )
    assert max(_evals(rows)) >= -250, _evals(rows)
    setting = asyncrl_config(tmp_path).algo_params.replay_ratio
    ratios = [float(r["replay_ratio"]) for r in rows if r["replay_ratio"]]
    assert abs(ratios[-1] - setting) <= 0.1 * setting, (setting, ratios)


@pytest.mark.parametrize("mode", ["central", "alternating"])
def test_async_appo_runs_in_the_central_placements(mode, tmp_path):
    result, rows = _train_async(
        "appo",
        "CartPole-v1",
        tmp_path,
        [f'sampler.mode="{mode}"', "sampler.workers=2", "steps=3000", "log.eval_every=-1"],
    )
    assert result.env_steps >= 3000
    assert int(rows[-1]["updates"]) > 0 and float(rows[-1]["policy_lag_max"]) <= 3


def test_samples_older_than_the_lag_bound_are_dropped_and_counted(tmp_path):
    # Lag 0 allowed, four batches in flight: most columns arrive a version or more behind.
    result, rows = _train_async(
        "appo",
        "CartPole-v1",
        tmp_path,
        [
            'sampler.mode="parallel"',
            "sampler.workers=2",
            "sampler.async_batches=4",
            "appo.max_policy_lag=0",
            "steps=6000",
            "log.eval_every=-1",
        ],
    )
    last = rows[-1]
    assert float(last["lag_dropped_total"]) > 0, last
    assert max(float(r["policy_lag_max"]) for r in rows) >= 1
    assert int(last["updates"]) > 0  # batches whose policy is current are still learned from


def test_a_killed_replay_store_ends_the_async_run_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    cmd = asyncrl_cmd(
        "train",
        "dqn",
        "CartPole-v1",
        "--mode",
        "parallel",
        "--workers",
        "1",
        "--async",
        "--steps",
        "200000",
        "--run-dir",
        str(run_dir),
        *FAST,
        "--set",
        "dqn.replay_service=true",
        "--set",
        "log.checkpoint_every=2048",
    )
    with LeakWatch() as watch:
        proc = popen(cmd, tmp_path / "out.txt")
        assert wait_until(lambda: len(list_checkpoints(run_dir)) >= 1, 180), finish(proc, 5)[1]
        (store,) = _children(proc.pid, "workers.replay")
        store.kill()
        code, out = finish(proc, 120)
        assert code == 1, out
        assert "replay store exited" in out and "Traceback" not in out, out
        assert wait_until(lambda: not _children(proc.pid, "workers."), 30)
    assert not watch.leaked()


def test_the_replay_ratio_is_held_with_slow_samplers(tmp_path):
    # An env that takes 5 ms a step: the learner waits for data, and still does exactly its
    # replay_ratio of updates per env step.
    result, rows = _train_async(
        "dqn",
        "AsyncrlSlowCartPole-v1",
        tmp_path,
        [
            'env.imports=["tests.envs.toy_envs"]',
            "env.kwargs={step_s=0.005}",
            'sampler.mode="parallel"',
            "sampler.workers=1",
            "steps=3072",
            "log.eval_every=-1",
            "log.log_every_s=0",
        ],
    )
    setting = asyncrl_config(tmp_path).algo_params.replay_ratio
    ratios = [float(r["replay_ratio"]) for r in rows if r["replay_ratio"]]
    assert ratios and all(abs(x - setting) <= 0.1 * setting for x in ratios), (setting, ratios)
    assert float(rows[-1]["learner_busy"]) < 0.5, rows[-1]  # the samplers are the slow side
