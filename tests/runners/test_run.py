"""Run on its own (no agent is trained): schedules after resume, progress rows, the final
checkpoint and cleanup order, signals. A fake loop drives it in batches of 256 env steps."""

from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pytest
import torch
from _runhelpers import read_rows

from asyncrl.configs.config import ConfigError, resolve_config
from asyncrl.envs import EpisodeStats
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint
from asyncrl.logging.progress import BASE_COLUMNS
from asyncrl.runners.run import Run

BATCH = 256


class FakeEvaluate:
    """Stands in for runners.evaluation.evaluate: returns [1, 3] and notes the env steps."""

    def __init__(self):
        self.at: list[int] = []
        self.run: Run | None = None

    def __call__(self, agent, env_spec, episodes, **kwargs):
        self.at.append(self.run.env_steps)
        return np.array([1.0, 3.0])


def open_run(run_dir, *sets: str, resume=None, steps=None) -> tuple[Run, FakeEvaluate]:
    cfg = None
    if resume is None:
        sets = (f"run_dir={run_dir}", "log.progress=false", "log.tensorboard=false", *sets)
        cfg = resolve_config("ppo", "CartPole-v1", sets=list(sets))
    evaluate = FakeEvaluate()
    run = Run.open(cfg, resume=resume, steps=steps, evaluate=evaluate)
    evaluate.run = run
    return run, evaluate


def loop_state() -> dict:
    return {"agent": {"w": torch.ones(2)}, "algo": {"updates": 3}}


def drive(run: Run, batches: int, during=None) -> None:
    """The loop's part, for ``batches`` batches or until the run should stop; ``during(i)`` runs
    in batch i between counting its steps and recording it (where the update would be)."""
    for i in range(batches):
        if run.should_stop:
            break
        run.add_steps(BATCH, EpisodeStats([float(i)], [10]))
        if during is not None:
            during(i)
        run.record({"loss": 0.5}, agent="the agent")
        run.maybe_checkpoint()


def ckpt_steps(run_dir) -> list[int]:
    return [load_checkpoint(p)["env_steps"] for p in list_checkpoints(run_dir)]


def test_schedules_continue_after_resume(tmp_path):
    sets = (
        "steps=1024",
        "log.eval_every=300",
        "log.checkpoint_every=256",
        "log.keep_checkpoints=0",
    )
    run, evaluate = open_run(tmp_path, *sets)
    assert (run.next_eval, run.next_checkpoint) == (300, 256)
    with run.running(loop_state):
        drive(run, 2)
    assert evaluate.at == [512] and run.last_eval == 2.0
    assert ckpt_steps(tmp_path) == [256, 512]  # the second written twice: by schedule, at the end
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert set(ckpt) == {
        *loop_state(),
        *("env_steps", "time_s", "episodes", "rng", "eval_return_mean", "algo_name"),
    }

    resumed, evaluate = open_run(None, resume=tmp_path, steps=2048)
    assert resumed.cfg.steps == 2048 and resumed.resumed["env_steps"] == 512
    assert (resumed.env_steps, resumed.episodes.total, resumed.last_eval) == (512, 2, 2.0)
    assert resumed.time_offset == ckpt["time_s"] > 0
    assert (resumed.next_eval, resumed.next_checkpoint) == (600, 768)
    with resumed.running(loop_state):
        assert torch.equal(torch.get_rng_state(), ckpt["rng"]["torch"])  # restored on entry
        drive(resumed, 2)
    assert evaluate.at == [768, 1024]  # due at 600 and 900
    assert ckpt_steps(tmp_path) == [256, 512, 768, 1024]


def test_default_and_disabled_schedules(tmp_path):
    run, _ = open_run(tmp_path / "a", "steps=5000")  # eval_every=0: ten per run
    assert (run.next_eval, run.next_checkpoint) == (500, 500)
    run, evaluate = open_run(tmp_path / "b", "steps=512", "log.eval_every=-1")
    assert run.next_eval is None
    with run.running(loop_state):
        drive(run, 10)
    assert evaluate.at == [] and run.env_steps == 512 and not run.interrupted


def test_rows_the_first_an_evaluation_the_last_step_and_the_loops_columns(tmp_path):
    run, evaluate = open_run(
        tmp_path, "steps=1280", "log.eval_every=768", "log.log_every_s=1000000"
    )
    with run.running(loop_state, columns=lambda: {"updates": 7, "dropped": 1}):
        drive(run, 10)
    assert evaluate.at == [768, 1280]  # the due one and one at the end
    rows = read_rows(tmp_path)
    assert [int(r["env_steps"]) for r in rows] == [256, 768, 1280]
    assert [r["eval_return_mean"] for r in rows] == ["", "2", "2"]
    assert list(rows[0]) == [*BASE_COLUMNS, "loss", "dropped"]
    assert rows[-1]["updates"] == "7" and rows[-1]["episodes"] == "5"
    assert math.isclose(float(rows[-1]["return_mean"]), 2.0)  # episodes 0..4
    assert ckpt_steps(tmp_path)[-1] == 1280


def test_an_error_writes_a_row_and_a_final_checkpoint_then_closes_in_order(tmp_path):
    run, _ = open_run(tmp_path, "steps=100000", "log.eval_every=-1", "log.log_every_s=1000000")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    closed = []
    close = [
        lambda: closed.append(("sampler", ckpt_steps(tmp_path))),  # after the final checkpoint
        lambda: closed.append(("algo", None)),
    ]
    with pytest.raises(RuntimeError, match="boom"), run.running(loop_state, close=close):
        drive(run, 1)
        run.add_steps(BATCH)  # counted, then the update fails
        raise RuntimeError("boom")
    assert closed == [("sampler", [512]), ("algo", None)]
    assert [int(r["env_steps"]) for r in read_rows(tmp_path)] == [256, 512]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    log = (tmp_path / "train.log").read_text()
    assert "run failed at 512 env steps: RuntimeError: boom; writing a final checkpoint" in log
    assert "finished at" not in log


def test_one_signal_stops_after_the_batch(tmp_path, capfd):
    run, _ = open_run(tmp_path, "steps=100000", "log.eval_every=-1", "log.log_every_s=1000000")
    handler_before = signal.getsignal(signal.SIGTERM)

    def signal_in_the_third(i):
        if i == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # let the handler run

    with run.running(loop_state):
        drive(run, 10, during=signal_in_the_third)
    assert run.interrupted and run.stop_signal == signal.SIGTERM
    assert run.env_steps == 3 * BATCH  # the batch finished, no other began
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert ckpt_steps(tmp_path) == [3 * BATCH]
    assert [int(r["env_steps"]) for r in read_rows(tmp_path)] == [256, 768]  # the last at the end
    assert "SIGTERM: stopping after this batch" in capfd.readouterr().err
    assert "stopped by SIGTERM at 768 env steps" in (tmp_path / "train.log").read_text()
    assert run.result("the agent").stop_signal == signal.SIGTERM


def test_a_second_signal_stops_at_once_and_signals_in_the_cleanup_are_acknowledged(tmp_path, capfd):
    run, _ = open_run(tmp_path, "steps=100000", "log.eval_every=-1")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    reached: list[int] = []

    def two_signals_in_the_second(i):
        if i == 1:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
            reached.append(i)  # not reached: the second signal raised StopTraining

    def signals_while_closing():
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
            time.sleep(0.01)
        reached.append(-1)

    with run.running(loop_state, close=[signals_while_closing]):
        drive(run, 10, during=two_signals_in_the_second)
    assert reached == [-1]
    assert run.interrupted and run.stop_signal == signal.SIGINT and run.env_steps == 2 * BATCH
    assert ckpt_steps(tmp_path) == [2 * BATCH]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert capfd.readouterr().err.count("already stopping") == 2
    log = (tmp_path / "train.log").read_text()
    assert "stopped at once by a second SIGINT at 512 env steps" in log


def test_run_directory_checks(tmp_path):
    run, _ = open_run(tmp_path, "steps=256")
    with run.running(loop_state):
        drive(run, 1)
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run(tmp_path, "steps=256")
    with pytest.raises(ConfigError, match="does not exist"):
        open_run(None, resume=tmp_path / "missing")
    with pytest.raises(ConfigError, match="no config.toml"):
        open_run(None, resume=tmp_path / "checkpoints")
