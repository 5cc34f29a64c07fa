"""``asyncrl submit``: a whole run as one submitit job. submitit's local executor runs the same code
path as Slurm (pickled job, a process of its own, submitit's files in RUN_DIR/submitit/), so the
end-to-end tests use it: the result comes back with --wait, the run directory is complete, a job
that fails on the node exits non-zero with its error tail, a requeued job (USR2, as Slurm sends
before the time limit) resumes its run. Bad input fails before anything is submitted."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from asyncrl.cli import main

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None,
    reason="submitit is not installed (pip install asyncrl[slurm])",
)

# A tiny PPO run on CartPole: a few seconds of training in the job's own process.
QUICK = ["--no-progress", "--set", "log.eval_episodes=2", "--time", "5"]


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of ``asyncrl ARGV`` run in-process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors and --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


class BoomEnv(gym.Env):
    """Builds on the submitting machine's checks (its id resolves), fails on the node."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, **kwargs):
        if os.environ.get("ASYNCRL_TEST_BOOM"):
            raise RuntimeError("boom on the node")


def _submitit_files(run_dir: Path, job_id: str) -> set[str]:
    return {p.name for p in (run_dir / "submitit").iterdir() if p.name.startswith(job_id)}


def _job_id(out: str) -> str:
    line = next(x for x in out.splitlines() if x.startswith("submitted job "))
    return line.split()[2]


@needs_submitit
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_local_job_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["submit", "--cluster", "local", "--wait", "ppo", "CartPole-v1", "--steps", "1024"]
    code, out, err = run_cli([*argv, *QUICK, "--run-dir", run_dir], capsys)
    assert code == 0, err
    job_id = _job_id(out)
    assert f"run dir: {run_dir}" in out
    assert f"logs: {run_dir / 'submitit' / f'{job_id}_0_log.out'}" in out
    # --wait prints the result the job's train() returned
    assert "done: 1024 env steps" in out and f"run dir {run_dir}" in out
    # the run directory as asyncrl train writes it, and submitit's files beside it
    assert (run_dir / "config.toml").exists()
    assert (run_dir / "progress.csv").read_text().startswith("env_steps,")
    assert sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))[-1].name == "ckpt_000000001024.pt"
    assert (run_dir / "train.log").exists()
    names = _submitit_files(run_dir, job_id)
    assert {f"{job_id}_0_log.out", f"{job_id}_0_log.err", f"{job_id}_0_result.pkl"} <= names
    assert (
        "Job completed successfully" in (run_dir / "submitit" / f"{job_id}_0_log.out").read_text()
    )


@needs_submitit
@pytest.mark.timeout(120)
def test_debug_cluster_runs_in_process_and_waits(tmp_path, capsys):
    """--cluster debug runs the same job in this process, waiting even without --wait."""
    run_dir = tmp_path / "run"
    argv = ["submit", "--cluster", "debug", "ppo", "CartPole-v1", "--steps", "512", *QUICK]
    code, out, err = run_cli([*argv, "--run-dir", run_dir], capsys)
    assert code == 0, err
    assert "done: 512 env steps" in out
    assert (run_dir / "checkpoints" / "ckpt_000000000512.pt").exists()
    assert (run_dir / "submitit").is_dir()
    # --resume RUN_DIR: the job continues the run (to a new total --steps)
    argv = ["submit", "--cluster", "debug", "--resume", run_dir, "--steps", "1024", "--time", "5"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "done: 1024 env steps" in out
    assert "resumed" in (run_dir / "train.log").read_text()


@needs_submitit
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_failing_job_exits_nonzero_with_its_error_tail(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASYNCRL_TEST_BOOM", "1")  # the local job inherits this environment
    monkeypatch.chdir(Path(__file__).parents[1])  # the job imports tests.test_submit from here
    run_dir = tmp_path / "run"
    env_id = f"{__name__}:BoomEnv"
    argv = ["submit", "--cluster", "local", "--wait", "ppo", env_id, "--steps", "512", *QUICK]
    code, out, err = run_cli([*argv, "--run-dir", run_dir], capsys)
    assert code == 1, out + err
    job_id = _job_id(out)
    first, *rest = err.strip().splitlines()
    assert first.startswith(f"asyncrl submit: error: job {job_id} failed: ")  # the job's error
    assert first.endswith("RuntimeError: boom on the node")
    assert rest and "log.err" in rest[0]  # then the end of the job's error log
    assert any("boom on the node" in x for x in rest[1:])


def _task_pid(controller_pid: str) -> int:
    """The training process of a local job (the child of submitit's controller)."""
    children = Path(f"/proc/{controller_pid}/task/{controller_pid}/children")
    return int(children.read_text().split()[0])


@needs_submitit
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the job's pid")
def test_requeued_job_resumes_its_run(tmp_path):
    """USR2 (what Slurm sends before the time limit, or on preemption): submitit calls
    TrainJob.checkpoint and requeues; train writes a final checkpoint on the way out and the
    requeued job resumes the run from it, continuing the same progress.csv."""
    import asyncrl
    from asyncrl.runners.submit import Resources, submit

    sets = ["steps=2048", "log.progress=false", "log.eval_episodes=2", "log.checkpoint_every=256"]
    cfg = asyncrl.resolve_config("ppo", "CartPole-v1", sets=sets)
    cfg.run_dir = str(tmp_path / "run")
    job = submit(cfg, Resources(cluster="local", time_min=5))
    try:
        checkpoints = Path(cfg.run_dir) / "checkpoints"
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("ckpt_*.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(_task_pid(job.job_id), signal.SIGUSR2)
        result = job.wait()
    finally:
        if not job.job.done():
            job.job.cancel()  # (a failed test leaves no job running)
    assert result.env_steps >= 2048 and not result.interrupted and result.agent is None
    log_out = job.logs[0].read_text()
    assert "Requeued job" in log_out and log_out.count("Starting with JobEnvironment") == 2
    train_log = (Path(cfg.run_dir) / "train.log").read_text()
    assert "requeued" in train_log and "resumed" in train_log
    steps = [
        int(x.split(",")[0]) for x in (Path(cfg.run_dir) / "progress.csv").read_text().split()[1:]
    ]
    assert steps == sorted(steps) and steps[-1] >= 2048  # one curve, monotonic


# -- checked on the submitting machine: one line, nothing submitted --------------------------------


@pytest.fixture
def no_submission(monkeypatch):
    """Fails the test if anything reaches submitit's executor."""
    if importlib.util.find_spec("submitit") is None:
        return
    import submitit

    def refuse(*args, **kwargs):
        raise AssertionError("a job was submitted")

    monkeypatch.setattr(submitit, "AutoExecutor", refuse)


@needs_submitit
@pytest.mark.parametrize(
    "argv, names",
    [
        (["ppo", "NoSuchEnv-v0"], ["NoSuchEnv-v0"]),
        (["ppo", "CartPole-v1", "--set", "ppo.learning_rat=1e-3"], ["ppo.learning_rat"]),
        (["nope", "CartPole-v1"], ["unknown algorithm 'nope'"]),
        (["ppo"], ["ENV_ID"]),
        (["--resume", "{tmp}/no_such_run"], ["no_such_run"]),
    ],
)
def test_bad_input_fails_at_submit_time(argv, names, tmp_path, capsys, no_submission):
    run_dir = tmp_path / "run"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(["submit", "--cluster", "local", *argv, "--run-dir", run_dir], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("asyncrl submit: error:")
    for name in names:
        assert name in err
    assert not run_dir.exists()


@needs_submitit
def test_a_run_dir_holding_a_run_is_refused(tmp_path, capsys, no_submission):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "progress.csv").write_text("env_steps\n")
    code, _, err = run_cli(["submit", "ppo", "CartPole-v1", "--run-dir", run_dir], capsys)
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "submitit").exists()


@needs_submitit
def test_slurm_without_srun_is_one_line(tmp_path, capsys, monkeypatch, no_submission):
    monkeypatch.setattr("asyncrl.runners.submit.shutil.which", lambda name: None)
    argv = ["submit", "--cluster", "slurm", "ppo", "CartPole-v1", "--run-dir", tmp_path / "run"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "srun" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_without_submitit_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    argv = ["submit", "ppo", "CartPole-v1", "--run-dir", tmp_path / "run"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err == "asyncrl submit needs submitit: pip install asyncrl[slurm]\n"
    assert not (tmp_path / "run").exists()


# -- what the job asks of Slurm (a stand-in executor: no sbatch here) ------------------------------


class _FakeExecutor:
    made: list = []

    def __init__(self, folder, cluster=None):
        self.folder, self.cluster, self.params = Path(folder), cluster, {}
        _FakeExecutor.made.append(self)

    def update_parameters(self, **params):
        self.params.update(params)

    def submit(self, fn):
        self.fn = fn
        folder = self.folder

        class Paths:
            stdout = folder / "4242_0_log.out"
            stderr = folder / "4242_0_log.err"

        class Job:
            job_id = "4242"
            paths = Paths

        return Job


@needs_submitit
def test_slurm_parameters(tmp_path, capsys, monkeypatch):
    import submitit

    from asyncrl.runners.submit import TrainJob

    _FakeExecutor.made = []
    monkeypatch.setattr(submitit, "AutoExecutor", _FakeExecutor)
    monkeypatch.setattr("asyncrl.runners.submit.shutil.which", lambda name: "/usr/bin/srun")
    run_dir = tmp_path / "run"
    argv = [
        "submit", "--partition", "gpu", "--time", "240", "--gpus", "1", "--mem-gb", "16",
        "--slurm-arg", "account=rl", "--slurm-arg", "exclusive",
        "ppo", "CartPole-v1", "--mode", "parallel", "--workers", "2", "--run-dir", run_dir,
    ]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    (ex,) = _FakeExecutor.made
    assert ex.cluster == "slurm" and ex.folder == run_dir / "submitit"
    assert ex.params == {
        "name": "asyncrl-ppo-CartPole-v1",
        "timeout_min": 240,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 3,  # the training process and two workers
        "gpus_per_node": 1,
        "mem_gb": 16.0,
        "slurm_partition": "gpu",
        "slurm_additional_parameters": {"account": "rl", "exclusive": True},
    }
    assert isinstance(ex.fn, TrainJob)
    assert ex.fn.cfg.device == "cuda"  # --gpus without --device trains on the GPU
    assert ex.fn.cfg.run_dir == str(run_dir)  # fixed (absolute) before submission
    assert "submitted job 4242 (slurm, partition gpu, 240 min, 3 cpus, 1 gpu)\n" in out
    assert f"logs: {run_dir / 'submitit' / '4242_0_log.out'}" in out


@needs_submitit
def test_train_job_checkpoint_requeues_itself():
    import asyncrl
    from asyncrl.runners.submit import TrainJob

    job = TrainJob(asyncrl.resolve_config("ppo", "CartPole-v1"))
    delayed = job.checkpoint()
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}


@pytest.mark.parametrize(
    "message, line",
    [
        ("Traceback (most recent call last):\n  File x\nValueError: bad\n", "ValueError: bad"),
        ("trace\nasyncrl.runners.learners.LearnerExited: learner 1 exited", None),
        ("Job 1 has not produced any output (state: CANCELLED)\n", None),
    ],
)
def test_one_line_summary_of_a_job_error(message, line):
    from asyncrl.runners.submit import _summary

    expected = line or message.strip().splitlines()[-1 if "Exited" in message else 0]
    assert _summary(message) == expected


def test_default_cpus_count_the_processes():
    import asyncrl
    from asyncrl.runners.submit import default_cpus, default_gpus

    cfg = asyncrl.resolve_config("ppo", "CartPole-v1")
    assert default_cpus(cfg) == 1 and default_gpus(cfg) == 0  # serial: one process
    cfg.sampler.mode, cfg.sampler.workers = "parallel", 4
    assert default_cpus(cfg) == 5
    cfg.sampler.asynchronous, cfg.learners = True, 2
    assert default_cpus(cfg) == 7  # and two learner processes
    cfg.device = "cuda"
    assert default_gpus(cfg) == 2
    cfg.sampler.launcher = "ray"  # the workers run elsewhere
    assert default_cpus(cfg) == 3
