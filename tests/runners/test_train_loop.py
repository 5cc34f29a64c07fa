"""The training loop's run directory, resume, and stopping on a signal."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _runhelpers import copy_run, latest, read_rows, resume_cli, tensors_equal, train_cli

from asyncrl.algos.ppo import PPO
from asyncrl.configs.config import load_config, resolve_config
from asyncrl.logging.checkpoint import list_checkpoints, load_checkpoint
from asyncrl.runners.train import train

REQUIRED = [
    "env_steps",
    "time_s",
    "updates",
    "episodes",
    "return_mean",
    "return_std",
    "steps_per_s",
    "eval_return_mean",
]
PPO_LOSSES = ["policy_loss", "value_loss", "entropy"]


def adam_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["algo"]["optimizer"]["state"].values()}


def strictly_increasing(xs) -> bool:
    return all(b > a for a, b in zip(xs, xs[1:]))


# -- the run directory -----------------------------------------------------------------------------


def test_run_directory_contract(base_run):
    run = base_run
    # config.toml: the resolved config, reloadable
    cfg = load_config(run / "config.toml")
    expected = resolve_config(
        "ppo",
        "CartPole-v1",
        sets=["steps=1024", "log.eval_episodes=2", f"run_dir={run}", "log.progress=false"],
    )
    assert cfg == expected

    # progress.csv: the named columns, then the algorithm's losses; one row per batch here
    with (run / "progress.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(REQUIRED)] == REQUIRED
    assert set(PPO_LOSSES) <= set(header)
    rows = read_rows(run)
    steps = [int(r["env_steps"]) for r in rows]
    assert strictly_increasing(steps) and steps[-1] == 1024
    assert strictly_increasing([int(r["updates"]) for r in rows])
    assert all(float(r["steps_per_s"]) > 0 for r in rows)
    assert all(math.isfinite(float(r["eval_return_mean"])) for r in rows if r["eval_return_mean"])
    assert rows[-1]["eval_return_mean"] != ""  # the run ends with an evaluation
    assert int(rows[-1]["episodes"]) > 0 and float(rows[-1]["return_mean"]) > 0
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times)

    # TensorBoard events under tb/
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 200

    # checkpoints/: the newest few, the last one at the final env steps
    ckpts = list_checkpoints(run)
    assert 1 <= len(ckpts) <= cfg.log.keep_checkpoints
    final = load_checkpoint(ckpts[-1])
    assert final["env_steps"] == 1024
    assert final["algo"]["updates"] == int(rows[-1]["updates"])
    assert not list((run / "checkpoints").glob("*.tmp"))

    # the log file
    log = (run / "train.log").read_text()
    assert "ppo on CartPole-v1" in log and "finished at 1024 env steps" in log


def test_tensorboard_has_the_progress_scalars(base_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(base_run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"return_mean", "steps_per_s", "policy_loss"} <= tags
    assert [e.step for e in acc.Scalars("updates")][-1] == 1024


def test_python_api_validates_before_creating_the_run_dir(tmp_path):
    from asyncrl.configs.config import ConfigError

    cfg = resolve_config("ppo", "CartPole-v1", sets=[f"run_dir={tmp_path / 'r'}"])
    cfg.sampler.num_envs = 0
    with pytest.raises(ConfigError, match="sampler.num_envs"):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_train_takes_a_sampler_or_a_sampler_factory(tmp_path):
    """The seam: ``train(cfg, sampler=...)`` with a factory (called with the env steps done as
    the seed offset, on resume too) or a sampler instance (used as it is, closed by the run)."""
    from asyncrl.runners.train import make_sampler
    from asyncrl.samplers.serial import SerialSampler

    def quick(name):  # one batch of 256 env steps, no evaluation
        sets = ["steps=256", "log.eval_every=-1", "log.progress=false", "log.tensorboard=false"]
        return resolve_config("ppo", "CartPole-v1", sets=[f"run_dir={tmp_path / name}", *sets])

    offsets = []

    def factory(cfg, seed_offset=0):
        offsets.append(seed_offset)
        return make_sampler(cfg, seed_offset)

    assert train(quick("factory"), sampler=factory).env_steps == 256
    assert train(resume=tmp_path / "factory", steps=512, sampler=factory).env_steps == 512
    assert offsets == [0, 256]

    closed = []

    class Recording(SerialSampler):
        def close(self):
            closed.append(True)
            super().close()

    cfg = quick("instance")
    sampler = Recording(cfg.env, cfg.sampler.num_envs, cfg.sampler.horizon, seed=cfg.seed)
    result = train(cfg, sampler=sampler)
    assert result.env_steps == 256 and closed == [True]
    assert latest(tmp_path / "instance")["env_steps"] == 256


# -- resume -----------------------------------------------------------------------------------------


def test_resume_continues_the_curve(base_run, tmp_path):
    run = copy_run(base_run, tmp_path / "run", keep_latest_only=False)
    before_rows = read_rows(run)
    before = latest(run)
    n_updates = int(before_rows[-1]["updates"])
    assert adam_steps(before) == {n_updates}  # Adam's step count == updates so far

    assert resume_cli(run, 2048) == 0
    rows = read_rows(run)
    assert rows[: len(before_rows)] == before_rows  # the old curve is kept as it was
    steps = [int(r["env_steps"]) for r in rows]
    updates = [int(r["updates"]) for r in rows]
    assert strictly_increasing(steps), steps
    assert strictly_increasing(updates), updates
    assert steps[-1] == 2048
    # Across the boundary: the first new row continues from 1024 steps and its updates.
    first_new = rows[len(before_rows)]
    assert int(first_new["env_steps"]) == 1024 + 256
    assert int(first_new["updates"]) == n_updates + 20
    assert int(first_new["episodes"]) > int(before_rows[-1]["episodes"])
    assert float(first_new["time_s"]) >= float(before_rows[-1]["time_s"])

    after = latest(run)
    assert after["env_steps"] == 2048
    assert adam_steps(after) == {2 * n_updates} == {int(rows[-1]["updates"])}
    assert load_config(run / "config.toml").steps == 2048
    assert "resumed" in (run / "train.log").read_text()


def test_resume_restores_agent_optimizer_and_counters_exactly(base_run, tmp_path):
    """Resuming to the steps already reached runs no batch: the re-saved checkpoint is the
    loaded one, so everything that was restored is compared bit for bit."""
    run = copy_run(base_run, tmp_path / "run")
    before = latest(run)
    assert resume_cli(run, 1024) == 0
    after = latest(run)
    for key in ("env_steps", "policy_version", "episodes", "eval_return_mean", "algo_name"):
        assert after[key] == before[key] or (key == "eval_return_mean" and np.isnan(before[key]))
    assert tensors_equal(after["agent"], before["agent"])
    assert tensors_equal(after["algo"]["optimizer"], before["algo"]["optimizer"])
    assert after["algo"]["updates"] == before["algo"]["updates"]
    assert tensors_equal(after["algo"]["generator"], before["algo"]["generator"])
    assert after["time_s"] >= before["time_s"]
    assert read_rows(run) == read_rows(base_run)  # nothing appended


def test_resume_restores_rng_state(base_run, tmp_path):
    """Two resumes of the same checkpoint continue identically; a resume whose checkpoint
    carries another RNG state continues differently (so the RNG state is restored, not
    re-seeded from the config)."""
    runs = [copy_run(base_run, tmp_path / name) for name in ("a", "b", "other_rng")]
    ckpt_path = list_checkpoints(runs[2])[-1]
    ckpt = load_checkpoint(ckpt_path)
    gen = torch.Generator().manual_seed(12345)
    ckpt["rng"]["torch"] = gen.get_state()
    ckpt["rng"]["numpy"] = np.random.RandomState(12345).get_state()
    for env_id in ckpt.get("agent_rng") or {}:  # per-env acting streams (numpy bit generators)
        ckpt["agent_rng"][env_id] = np.random.default_rng([12345, int(env_id)]).bit_generator.state
    torch.save(ckpt, ckpt_path)

    for run in runs:
        assert resume_cli(run, 1536) == 0

    def new_rows(run):
        rows = read_rows(run)[4:]  # the first 4 rows are the copied curve
        return [{k: v for k, v in r.items() if k not in ("time_s", "steps_per_s")} for r in rows]

    a, b, other = (latest(r) for r in runs)
    assert new_rows(runs[0]) == new_rows(runs[1]) and len(new_rows(runs[0])) == 2
    assert tensors_equal(a["agent"], b["agent"])
    assert tensors_equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a.get("agent_rng") == b.get("agent_rng")
    assert not tensors_equal(a["agent"], other["agent"])


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path):
    """A run killed between a progress row and its next checkpoint: resuming from the older
    checkpoint drops the orphan rows so env_steps stay strictly increasing."""
    run = tmp_path / "run"
    assert (
        train_cli(
            "ppo",
            "CartPole-v1",
            "--steps",
            1024,
            "--run-dir",
            run,
            "--set",
            "log.checkpoint_every=256",
            "--set",
            "log.keep_checkpoints=0",
        )
        == 0
    )
    ckpts = list_checkpoints(run)
    assert [int(p.stem.split("_")[1]) for p in ckpts] == [256, 512, 768, 1024]
    for p in ckpts[2:]:
        p.unlink()  # as if the process had died right after the row at 1024
    assert resume_cli(run, 1280) == 0
    steps = [int(r["env_steps"]) for r in read_rows(run)]
    assert steps == [256, 512, 768, 1024, 1280]
    assert strictly_increasing(steps)


# -- stopping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signals", [1, 2])
def test_signal_stops_after_the_batch_with_a_checkpoint(tmp_path, monkeypatch, signals):
    """SIGINT (Ctrl-C) during a batch: once -> finish the batch, write a row and a checkpoint;
    twice -> stop at once, still with a final checkpoint. Exit code 130."""
    real_optimize = PPO.optimize
    calls = []

    def optimize(self, batch, progress):
        calls.append(1)
        if len(calls) == 3:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # let the handler run
        return real_optimize(self, batch, progress)

    monkeypatch.setattr(PPO, "optimize", optimize)
    handler_before = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    code = train_cli("ppo", "CartPole-v1", "--steps", 1_000_000, "--run-dir", run)
    assert code == 130
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    ckpt = latest(run)
    assert ckpt["env_steps"] == 3 * 256
    rows = read_rows(run)
    assert int(rows[-1]["env_steps"]) == 3 * 256  # the curve reaches the final checkpoint
    if signals == 1:  # the batch finished: 3 full updates rounds in the checkpoint
        assert ckpt["algo"]["updates"] == 3 * 20
    log = (run / "train.log").read_text()
    assert "SIGINT" in log and "final checkpoint" in log


def test_sigterm_subprocess_writes_a_final_checkpoint(tmp_path):
    """``kill -TERM`` on a running ``asyncrl train``: a clean exit with a checkpoint at the env
    steps reached and an intact progress.csv; the run can then be resumed."""
    import shutil

    exe = shutil.which("asyncrl") or str(Path(sys.executable).parent / "asyncrl")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            exe,
            "train",
            "ppo",
            "CartPole-v1",
            "--steps",
            "1e7",
            "--no-progress",
            "--run-dir",
            str(run),
            "--set",
            "log.eval_every=-1",
            "--set",
            "log.log_every_s=0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (run / "progress.csv").exists() and len(read_rows(run)) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"train exited early: {proc.communicate()}")
            time.sleep(0.05)
        else:
            pytest.fail("no progress rows within 60 s")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 128 + signal.SIGTERM), (proc.returncode, err)
    assert "Traceback" not in err
    assert "SIGTERM: stopping after this batch" in err
    assert out.startswith("presets: ppo_classic")  # what the run was configured with, ...
    assert out.splitlines()[-1].startswith("interrupted:")  # ... and how it ended
    rows = read_rows(run)  # parses: every line whole
    assert all(len(r) == len(rows[0]) and None not in r.values() for r in rows)
    steps = [int(r["env_steps"]) for r in rows]
    assert strictly_increasing(steps)
    ckpt = latest(run)
    assert ckpt["env_steps"] == steps[-1] >= 512
    assert f"{ckpt['env_steps']} env steps" in out
    assert "SIGTERM" in (run / "train.log").read_text()
