"""Sample Factory 2 side of bench/sample_factory_appo.py: one APPO run on a gymnasium env.

Run by the interpreter of bench/.venv-sf (Sample Factory 2.1 needs gymnasium<1 and numpy<2,
which asyncrl's own venv does not have); it imports nothing from asyncrl. Owns registering the
env for Sample Factory, the run, and the log of what the run reached when; the hyperparameters
are chosen by the caller (its command line is Sample Factory's, passed through).

    bench/.venv-sf/bin/python bench/_sf_appo.py --log FILE [--lr-linear-decay]
        [--eval-episodes 10] -- --env=CartPole-v1 --train_dir=DIR --experiment=NAME ...

The log (JSON lines) has one line per learner iteration, written by a handler of the learner's
env-step report on Sample Factory's runner (``runner.policy_msg_handlers``):
``{"t": s, "env_steps": n, "return_mean": r, "episodes": k}`` where ``t`` counts from just
before ``runner.init()`` (which starts the worker, inference and learner processes), ``env_steps``
are the env steps the learner has consumed, and ``return_mean`` is Sample Factory's own
training-episode reward averaged over its last ``--stats_avg`` (100) finished episodes. Its
last line, ``{"final": ...}``, carries the run's end and, with ``--eval-episodes``, the mean
return of that many deterministic (argmax / mean action) episodes of the final policy, run
after training and off every clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import gymnasium as gym


def _patch_vtrace_summaries() -> None:
    """Work around a Sample Factory 2.1.1 bug: with ``--with_vtrace=True`` the learner's
    ``_record_summaries`` reads ``mb.advantages``, which only the GAE path computes, and the
    learner process dies at its first summary (fixed upstream after 2.1.1, PRs #278/#286/#332,
    not released). Only the TensorBoard advantage statistics are affected: they get the
    minibatch's normalised V-trace advantages instead. Applied at import, so that the processes
    Sample Factory spawns (they import this file as ``__mp_main__``) have it too."""
    from sample_factory.algo.learning.learner import Learner
    from sample_factory.utils.attr_dict import AttrDict

    original = Learner._record_summaries
    if getattr(original, "_vtrace_safe", False):
        return

    def record_summaries(self, train_loop_vars):
        if "advantages" not in train_loop_vars.mb:
            train_loop_vars = AttrDict(train_loop_vars)
            train_loop_vars.mb = AttrDict({**train_loop_vars.mb, "advantages": train_loop_vars.adv})
        return original(self, train_loop_vars)

    record_summaries._vtrace_safe = True
    Learner._record_summaries = record_summaries


_patch_vtrace_summaries()


def make_gym_env(full_env_name, cfg=None, env_config=None, render_mode=None):
    """Sample Factory's env factory signature; a plain gymnasium env (its wrappers added by SF)."""
    return gym.make(full_env_name, render_mode=render_mode)


class ProgressLog:
    """Collects (time, env steps, training return) each time the learner reports its env steps
    (after each training iteration; once at start-up with 0)."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.rows: list[dict] = []

    def on_learner_env_steps(self, runner, msg: dict, policy_id: int) -> None:
        # Called after the runner's own handler of this message: runner.env_steps is current.
        rewards = runner.policy_avg_stats.get("reward", [[]])[policy_id]
        self.rows.append(
            {
                "t": round(time.perf_counter() - self.t0, 4),
                "env_steps": int(runner.env_steps.get(policy_id, 0)),
                "return_mean": float(statistics.fmean(rewards)) if rewards else None,
                "episodes": len(rewards),
            }
        )


def evaluate_final_policy(cfg, episodes: int, seed: int) -> float:
    """Mean return of ``episodes`` deterministic episodes of the run's latest checkpoint."""
    import torch
    from sample_factory.algo.learning.learner import Learner
    from sample_factory.algo.sampling.batched_sampling import preprocess_actions
    from sample_factory.algo.utils.action_distributions import argmax_actions
    from sample_factory.algo.utils.env_info import extract_env_info
    from sample_factory.algo.utils.make_env import make_env_func_batched
    from sample_factory.algo.utils.rl_utils import prepare_and_normalize_obs
    from sample_factory.model.actor_critic import create_actor_critic
    from sample_factory.model.model_utils import get_rnn_size
    from sample_factory.utils.attr_dict import AttrDict

    cfg.num_envs = 1
    env = make_env_func_batched(cfg, env_config=AttrDict(worker_index=0, vector_index=0, env_id=0))
    env_info = extract_env_info(env, cfg)
    model = create_actor_critic(cfg, env.observation_space, env.action_space)
    model.eval()
    model.model_to_device(torch.device("cpu"))
    checkpoints = Learner.get_checkpoints(Learner.checkpoint_dir(cfg, 0), "checkpoint_*")
    model.load_state_dict(Learner.load_checkpoint(checkpoints, torch.device("cpu"))["model"])
    returns = []
    obs, _ = env.reset(seed=seed)
    rnn_state = torch.zeros([1, get_rnn_size(cfg)])
    total = 0.0
    with torch.no_grad():
        while len(returns) < episodes:
            out = model(prepare_and_normalize_obs(model, obs), rnn_state)
            action = argmax_actions(model.action_distribution())
            if action.ndim == 1:
                action = action.unsqueeze(-1)
            obs, reward, terminated, truncated, _ = env.step(preprocess_actions(env_info, action))
            rnn_state = out["new_rnn_states"]
            total += float(reward[0])
            if bool(terminated[0]) or bool(truncated[0]):
                returns.append(total)
                total = 0.0  # the batched wrapper resets the env itself
    env.close()
    return statistics.fmean(returns)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, sf_argv = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log", required=True, help="JSON-lines progress file to write")
    p.add_argument(
        "--lr-linear-decay",
        action="store_true",
        help="decay the learning rate linearly to 0 over train_for_env_steps (SF's "
        "LinearDecayScheduler, which its 2.1 CLI does not offer among --lr_schedule's choices)",
    )
    p.add_argument("--eval-episodes", type=int, default=0, help="final deterministic episodes")
    args = p.parse_args(ours)

    from sample_factory.algo.utils.misc import LEARNER_ENV_STEPS, ExperimentStatus
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
    from sample_factory.envs.env_utils import register_env
    from sample_factory.train import make_runner

    parser, partial = parse_sf_args(argv=sf_argv)
    register_env(partial.env, make_gym_env)
    cfg = parse_full_cfg(parser, sf_argv)
    if args.lr_linear_decay:
        cfg.lr_schedule = "linear_decay"

    cfg, runner = make_runner(cfg)
    progress = ProgressLog(time.perf_counter())
    # Appended after the runner's own handler of this key. (Not register_policy_msg_handler: in
    # 2.1.1 it replaces the key's handler list with the bare function, and the runner then fails.)
    runner.policy_msg_handlers[LEARNER_ENV_STEPS].append(progress.on_learner_env_steps)
    status = runner.init()
    if status == ExperimentStatus.SUCCESS:
        status = runner.run()
    end_s = time.perf_counter() - progress.t0
    final = {"t_end": round(end_s, 4), "status": int(status), "eval_return_mean": None}
    if status == ExperimentStatus.SUCCESS and args.eval_episodes > 0:
        final["eval_return_mean"] = evaluate_final_policy(
            cfg, args.eval_episodes, cfg.seed + 10_000
        )
    with open(args.log, "w") as f:
        for row in progress.rows:
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"final": final}) + "\n")
    return 0 if status == ExperimentStatus.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
