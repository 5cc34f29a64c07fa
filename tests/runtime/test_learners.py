"""Data-parallel learners end to end, from the command line: ``--learners 2`` trains in
synchronous and asynchronous runs of every algorithm family, and a learner that is killed ends
the run with one line and a checkpoint that ``--resume`` continues from."""

from __future__ import annotations

import csv

import pytest

from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint
from tests.runtime._runtime_helpers import (
    LeakWatch,
    asyncrl_cmd,
    finish,
    no_leftovers,  # noqa: F401 - module fixture: no process or segment left behind
    popen,
    wait_until,
    worker_processes,
)

QUIET = ["--no-progress", "--set", "log.tensorboard=false", "--set", "log.eval_every=-1"]


def _train(run_dir, algo, env, steps, *extra):
    return asyncrl_cmd(
        "train", algo, env, "--learners", "2", "--steps", str(steps), "--run-dir", str(run_dir),
        *QUIET, *extra,
    )  # fmt: skip


def _peers(pid: int) -> list:
    return worker_processes(pid, "workers.peer")


def _rows(run_dir) -> list[dict]:
    try:
        with open(run_dir / "progress.csv") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


# (algo, env, mode flags, settings): one per family, both loops; small and quick
SMOKE = {
    "a2c-serial": ("a2c", "CartPole-v1", [], ["sampler.num_envs=4"]),
    "appo-async": ("appo", "CartPole-v1", ["--mode", "parallel", "--workers", "2", "--async"], []),
    "dqn-async": (
        "dqn",
        "CartPole-v1",
        ["--mode", "parallel", "--workers", "2", "--async"],
        ["dqn.learning_starts=500", "sampler.num_envs=2"],
    ),
    "td3-serial": (
        "td3",
        "Pendulum-v1",
        [],
        ["td3.learning_starts=400", "td3.hidden_sizes=[32, 32]", "sampler.num_envs=4"],
    ),
}


@pytest.mark.parametrize("case", list(SMOKE))
def test_two_learners_train_every_family_in_both_loops(tmp_path, case):
    algo, env, flags, sets = SMOKE[case]
    run_dir = tmp_path / "run"
    extra = [*flags, *(x for s in sets for x in ("--set", s))]
    steps = 1200 if algo == "td3" else 3000
    proc = popen(_train(run_dir, algo, env, steps, *extra), tmp_path / "out.txt")
    assert wait_until(lambda: len(_peers(proc.pid)) == 1, 120), finish(proc, 5)[1]
    code, out = finish(proc, 300)
    assert code == 0, out
    final = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert final["env_steps"] >= steps
    assert int(_rows(run_dir)[-1]["updates"]) > 0, out


@pytest.mark.parametrize("loop", ["sync", "async"])
def test_a_killed_learner_ends_the_run_with_one_line_and_a_checkpoint(tmp_path, loop):
    run_dir = tmp_path / "run"
    flags = ["--mode", "parallel", "--workers", "1", "--async"] if loop == "async" else []
    sets = ["--set", "log.log_every_s=0", "--set", "sampler.num_envs=4"]
    with LeakWatch() as watch:
        proc = popen(_train(run_dir, "ppo", "CartPole-v1", 10**6, *flags, *sets), tmp_path / "o")
        # learning is under way: learner 1 has taken steps with learner 0
        assert wait_until(lambda: len(_rows(run_dir)) >= 2, 180), finish(proc, 5)[1]
        (peer,) = _peers(proc.pid)
        steps_before = int(_rows(run_dir)[-1]["env_steps"])
        peer.kill()
        code, out = finish(proc, 120)
        assert code == 1, out
        assert "learner 1 of 2" in out and "exited with signal SIGKILL" in out, out
        assert "Traceback" not in out, out
        assert wait_until(lambda: not _peers(proc.pid), 30)
    assert not watch.leaked()
    last = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert last["env_steps"] >= steps_before, "the final checkpoint is the failure's"
    resumed = popen(
        asyncrl_cmd("train", "--resume", str(run_dir), "--steps", str(last["env_steps"] + 2048)),
        tmp_path / "resume.txt",
    )
    code, out = finish(resumed, 240)
    assert code == 0, out
    final = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert final["env_steps"] >= last["env_steps"] + 2048
    assert final["policy_version"] > last["policy_version"]
