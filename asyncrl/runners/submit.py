"""A whole training run as one job through submitit: on Slurm, or on this machine (``asyncrl submit``).

Owns: fixing a run's directory before it is submitted, the submitit executor for it (cluster,
resources, submitit's files under ``<run_dir>/submitit/``), the picklable job (``TrainJob``:
``train(cfg)`` on the node, continuing its run when requeued) and waiting for its result. Must
not parse arguments (cli.py), know a loss or a socket. submitit is imported only when a job is
submitted or run, so asyncrl works without it (``pip install asyncrl[slurm]`` adds it).

From Python::

    from asyncrl.runners.submit import Resources, submit
    cfg = asyncrl.resolve_config("ppo", "CartPole-v1", sets=["steps=50000"])
    job = submit(cfg, Resources(cluster="slurm", partition="cpu", time_min=30, cpus=4))
    result = job.wait()     # the TrainResult, with agent None (load_agent(result.run_dir))

Clusters (submitit's names): ``slurm`` (sbatch; needs ``srun`` on the submitting machine),
``local`` (a detached process on this machine, same code path, same files), ``debug`` (in this
process when waited for; submitit opens pdb on an error). Default: slurm where ``srun`` exists,
else local.

Time limits and preemption: Slurm sends USR2 ``signal_delay_s`` (90 s) before the time limit,
and on preemption. submitit's handler then calls ``TrainJob.checkpoint``, requeues the job
(at most ``max_num_timeout``, 3, timeouts) and exits by raising SystemExit inside ``train``,
whose cleanup writes a final checkpoint on the way out. The requeued job finds that
checkpoint in the run directory and resumes it (``train(resume=run_dir)``), so the curve goes
on. SIGTERM (``scancel``) stops the run as in ``asyncrl train``: after the current batch, with
a final checkpoint; the job then returns an interrupted result.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncrl.configs.config import ConfigError, TrainConfig, load_config
from asyncrl.logging.checkpoint import list_checkpoints
from asyncrl.runners.run import TrainResult, default_run_dir

SUBMITIT_MISSING = "asyncrl submit needs submitit: pip install asyncrl[slurm]"
CLUSTERS = ("slurm", "local", "debug")
SUBMITIT_DIR = "submitit"  # submitit's files inside the run directory
TAIL_LINES = 20  # lines of the job's error log shown when it failed

log = logging.getLogger("asyncrl")


class SubmititMissing(ImportError):
    """submitit is not installed; the message says how to install it."""


class JobFailed(Exception):
    """The job ended without a result: ``summary`` (one line), ``tail`` (the end of its error
    log), ``logs`` (where the full logs are)."""

    def __init__(self, job_id: str, summary: str, tail: str, logs: list[Path]):
        super().__init__(f"job {job_id} failed: {summary}")
        self.job_id, self.summary, self.tail, self.logs = job_id, summary, tail, logs


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise SubmititMissing(SUBMITIT_MISSING) from None
    return submitit


@dataclass
class Resources:
    """What the job asks of the cluster. None: see each field."""

    cluster: str | None = None  # slurm | local | debug; None: slurm where srun exists, else local
    partition: str | None = None  # Slurm partition; None: the cluster's default
    time_min: int = 60  # time limit in minutes (a timed-out job is requeued and resumes)
    cpus: int | None = None  # None: one per process the run starts (default_cpus)
    gpus: int | None = None  # None: one per learner on cuda, else 0 (default_gpus)
    mem_gb: float | None = None  # None: the cluster's default
    name: str | None = None  # job name; None: asyncrl-ALGO-ENV
    # sbatch options submitit has no argument for: {"account": "rl", "exclusive": True} ->
    # #SBATCH --account=rl, #SBATCH --exclusive (they win over submitit's own lines)
    slurm_args: dict[str, Any] = field(default_factory=dict)


def default_cpus(cfg: TrainConfig) -> int:
    """One CPU per process the run starts on the node: the training process, its sampler
    workers (unless a Ray or Slurm launcher starts them elsewhere), the learner processes
    besides it, and a replay store process."""
    runtime = cfg.sampler.mode != "serial"
    local_workers = cfg.sampler.launcher == "local"
    workers = cfg.sampler.workers if runtime and local_workers else 0
    # an asynchronous run's learners are all processes of their own (learner 0 included)
    learners = cfg.learners if runtime and cfg.sampler.asynchronous else cfg.learners - 1
    replay = 1 if getattr(cfg.algo_params, "replay_service", False) else 0
    return 1 + workers + learners + replay


def default_gpus(cfg: TrainConfig) -> int:
    return cfg.learners if cfg.device.startswith("cuda") else 0


def resolve_cluster(cluster: str | None) -> str:
    """The cluster a job goes to; one ConfigError line where it cannot."""
    if cluster is None:
        return "slurm" if shutil.which("srun") else "local"
    if cluster not in CLUSTERS:
        raise ConfigError(f"unknown cluster {cluster!r}; valid: {', '.join(CLUSTERS)}")
    if cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError(
            "cluster 'slurm': no srun on this machine (not a Slurm login node?); "
            "--cluster local runs the job here"
        )
    return cluster


def prepare_run(cfg: TrainConfig, resume: bool = False) -> TrainConfig:
    """A copy of ``cfg`` with its run directory fixed (absolute, so the node finds it whatever
    its working directory), after the checks that would fail on the node: a new run's
    directory must not hold a run, a resumed one must hold a checkpoint. Nothing is written."""
    cfg = copy.deepcopy(cfg)
    run_dir = Path(cfg.run_dir or default_run_dir(cfg)).expanduser().absolute()
    holds_run = (run_dir / "progress.csv").exists() or bool(list_checkpoints(run_dir))
    if resume and not list_checkpoints(run_dir):
        raise ConfigError(f"run directory {str(run_dir)!r} has no checkpoint to resume")
    if not resume and holds_run:
        raise ConfigError(
            f"run directory {str(run_dir)!r} already holds a run; resume it with --resume "
            "or choose another --run-dir"
        )
    cfg.run_dir = str(run_dir)
    return cfg


def resume_config(run_dir: str | Path, steps: int | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` to continue (optionally to a new total ``steps``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    if not (run_dir / "config.toml").exists():
        raise ConfigError(f"{str(run_dir)!r} has no config.toml: not a run directory")
    cfg = load_config(run_dir / "config.toml")
    cfg.run_dir = str(run_dir)
    if steps is not None:
        cfg.steps = int(steps)
    return cfg


@dataclass
class TrainJob:
    """What runs on the node: ``train(cfg)``, or, when the run directory already holds a
    checkpoint (a requeued job, ``asyncrl submit --resume``), ``train(resume=run_dir)``.
    Pickled by submitit (by reference to this module, so the node needs asyncrl installed)."""

    cfg: TrainConfig

    def __call__(self) -> TrainResult:
        from asyncrl.runners.train import train

        run_dir = Path(self.cfg.run_dir)
        if list_checkpoints(run_dir):
            result = train(resume=run_dir, steps=self.cfg.steps, progress=self.cfg.log.progress)
        else:
            result = train(copy.deepcopy(self.cfg))
        # the agent stays on the node: its parameters are in the run's checkpoints
        return dataclasses.replace(result, agent=None)

    def checkpoint(self):
        """Called by submitit on a timeout or preemption: requeue this same job (it resumes)."""
        log.warning(
            "the job timed out or was preempted: requeued; a final checkpoint is written now "
            "and the requeued job resumes from it"
        )
        return import_submitit().helpers.DelayedSubmission(self)


@dataclass
class SubmittedRun:
    """A submitted job and where its run and logs are."""

    job: Any  # submitit.Job
    cluster: str
    run_dir: Path  # absolute
    resources: Resources  # as asked for: the defaults filled in

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    @property
    def logs(self) -> list[Path]:
        """submitit's stdout and stderr files of the job (``<run_dir>/submitit/JOB_0_log.*``)."""
        return [self.job.paths.stdout, self.job.paths.stderr]

    def wait(self) -> TrainResult:
        """Wait for the job to end: its TrainResult (agent None), or JobFailed."""
        submitit = import_submitit()
        try:
            return self.job.result()
        except submitit.core.utils.UncompletedJobError as e:  # FailedJobError too
            raise JobFailed(self.job_id, _summary(str(e)), self.error_tail(), self.logs) from None

    def error_tail(self, lines: int = TAIL_LINES) -> str:
        path = self.job.paths.stderr
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def _summary(message: str) -> str:
    """One line from submitit's error: the exception line of the job's traceback, else the
    first line of the message."""
    lines = [x.strip() for x in message.splitlines() if x.strip()]
    trace_end = [
        x for x in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\w*(:|$)", x)
    ]
    return trace_end[-1] if trace_end else (lines[0] if lines else "no result")


def submit(
    cfg: TrainConfig, resources: Resources | None = None, *, resume: bool = False
) -> SubmittedRun:
    """Submit ``train(cfg)`` as one job (``resume``: continue the run in ``cfg.run_dir``).

    Everything that can be checked here is checked before anything is written or submitted
    (one ConfigError line): the cluster, the run directory, GPUs for the learners. The run
    directory is fixed now; submitit's files go to ``<run_dir>/submitit/``."""
    submitit = import_submitit()
    resources = resources or Resources()
    cluster = resolve_cluster(resources.cluster)
    cfg = prepare_run(cfg, resume=resume)
    cpus = resources.cpus if resources.cpus is not None else default_cpus(cfg)
    gpus = resources.gpus if resources.gpus is not None else default_gpus(cfg)
    if cfg.device.startswith("cuda") and gpus < cfg.learners:
        raise ConfigError(
            f"{cfg.learners} learner(s) on {cfg.device} take one GPU each: ask for "
            f"--gpus {cfg.learners} (got {gpus})"
        )
    if cluster != "slurm" and cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # the node is this machine
            raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available")
    run_dir = Path(cfg.run_dir)
    executor = submitit.AutoExecutor(folder=run_dir / SUBMITIT_DIR, cluster=cluster)
    env_name = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.env.id)
    params: dict[str, Any] = {
        "name": resources.name or f"asyncrl-{cfg.algo}-{env_name}",
        "timeout_min": int(resources.time_min),
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": int(cpus),
        "gpus_per_node": int(gpus),
    }
    if resources.mem_gb is not None:
        params["mem_gb"] = float(resources.mem_gb)
    if resources.partition:
        params["slurm_partition"] = resources.partition
    if resources.slurm_args:
        params["slurm_additional_parameters"] = dict(resources.slurm_args)
    executor.update_parameters(**params)
    try:
        job = executor.submit(TrainJob(cfg))
    except (submitit.core.utils.FailedSubmissionError, OSError) as e:  # sbatch refused it
        raise ConfigError(f"the job was not submitted: {_summary(str(e))}") from None
    resources = dataclasses.replace(resources, cluster=cluster, cpus=cpus, gpus=gpus)
    return SubmittedRun(
        job, cluster, run_dir, resources
    )  # the resources asked for, defaults filled
