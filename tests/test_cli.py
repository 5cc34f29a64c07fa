"""The ``asyncrl`` command: every bad input is one error line and a non-zero exit before heavy
work; --help lists the presets; eval and plot on a real (tiny) run. Most cases run in-process
through ``asyncrl.cli.main``; a few run the installed ``asyncrl`` script as a subprocess."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl.cli import main

ASYNCRL = shutil.which("asyncrl") or str(Path(sys.executable).parent / "asyncrl")


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of ``asyncrl ARGV`` run in-process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors and --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(argv, cwd, timeout=120):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [ASYNCRL, *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_error_line(code, out, err, *names):
    assert code not in (0, None), f"expected a non-zero exit, got {code}; stderr: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert "error" in lines[0] and "Traceback" not in err
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny finished PPO run on CartPole (about a second)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "ppo",
            "CartPole-v1",
            "--steps",
            "1024",
            "--no-progress",
            "--run-dir",
            str(run_dir),
            "--set",
            "log.eval_episodes=2",
        ]
    )
    assert code == 0
    return run_dir


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "malformed.toml").write_text("steps = \n[sampler\n")
    (tmp_path / "wrongtype.toml").write_text('[sampler]\nnum_envs = "eight"\n')
    (tmp_path / "unknownkey.toml").write_text("[ppo]\nlearning_rat = 1e-3\n")
    (tmp_path / "empty_run").mkdir()
    return tmp_path


# -- bad input: one line, non-zero, names the bad thing ------------------------------------------

BAD_TRAIN = [
    (["train", "pppo", "CartPole-v1"], ["pppo", "ppo"]),  # names the valid algorithms too
    (["train", "ppo", "CartPol-v1"], ["CartPol-v1", "CartPole-v1"]),  # and suggests the id
    (["train", "ppo", "NoSuchEnv-v0"], ["NoSuchEnv-v0"]),
    (["train", "ppo", "no_such_module:Env"], ["no_such_module"]),
    (["train", "ppo", "CartPole-v1", "--set", "ppo.learning_rat=1e-3"], ["ppo.learning_rat"]),
    (["train", "ppo", "CartPole-v1", "--set", "samplr.num_envs=4"], ["samplr"]),
    (
        ["train", "ppo", "CartPole-v1", "--set", "ppo.learning_rate=fast"],
        ["ppo.learning_rate", "fast"],
    ),
    (["train", "ppo", "CartPole-v1", "--set", "sampler.num_envs=2.5"], ["sampler.num_envs"]),
    (["train", "ppo", "CartPole-v1", "--set", "ppo.anneal_lr=1"], ["ppo.anneal_lr"]),
    (
        ["train", "ppo", "CartPole-v1", "--set", 'model.hidden_sizes=[64,"x"]'],
        ["model.hidden_sizes"],
    ),
    (["train", "ppo", "CartPole-v1", "--set", "noequals"], ["noequals"]),
    (["train", "ppo", "CartPole-v1", "--set", "algo=a2c"], ["algo"]),
    (["train", "ppo", "CartPole-v1", "--set", "sampler=3"], ["sampler"]),
    (["train", "ppo", "CartPole-v1", "--set", "sampler.mode=bogus"], ["sampler.mode", "bogus"]),
    (["train", "ppo", "CartPole-v1", "--set", "sampler.horizon=0"], ["sampler.horizon"]),
    (["train", "ppo", "CartPole-v1", "--set", "model.activation=swish"], ["model.activation"]),
    (["train", "ppo", "CartPole-v1", "--set", "log.eval_episodes=0"], ["log.eval_episodes"]),
    (["train", "ppo", "CartPole-v1", "--set", "env.id=NoSuchEnv-v0"], ["NoSuchEnv-v0"]),
    (["train", "ppo", "CartPole-v1", "--device", "tpu"], ["tpu"]),
    (["train", "ppo", "CartPole-v1", "--steps", "lots"], ["--steps", "lots"]),
    (["train", "ppo", "CartPole-v1", "--workers", "-1"], ["--workers"]),
    (["train", "ppo", "CartPole-v1", "--workers", "0"], ["sampler.workers"]),  # 0 needs a bind
    (["train", "ppo"], ["ENV_ID"]),
    (["train", "--resume", "{tmp}/no_such_run"], ["no_such_run"]),
    (["train", "--resume", "{tmp}/empty_run"], ["empty_run", "config.toml"]),
    (
        ["train", "ppo", "CartPole-v1", "--config", "{tmp}/malformed.toml"],
        ["malformed.toml", "TOML"],
    ),
    (
        ["train", "ppo", "CartPole-v1", "--config", "{tmp}/missing.toml"],
        ["missing.toml", "does not exist"],
    ),
    (
        ["train", "ppo", "CartPole-v1", "--config", "{tmp}/wrongtype.toml"],
        ["wrongtype.toml", "sampler.num_envs"],
    ),
    (
        ["train", "ppo", "CartPole-v1", "--config", "{tmp}/unknownkey.toml"],
        ["unknownkey.toml", "ppo.learning_rat"],
    ),
    (["eval", "{tmp}/no_such_run"], ["no_such_run", "does not exist"]),
    (["eval", "{tmp}/empty_run"], ["empty_run", "config.toml"]),
    (["plot", "{tmp}/no_such_run"], ["no_such_run", "does not exist"]),
    (["plot", "{tmp}/empty_run"], ["empty_run", "progress.csv"]),
    (["frobnicate"], ["frobnicate"]),
    # an unknown algorithm: one line naming it and the valid ones (from configs/registry.py)
    (["train", "nope", "CartPole-v1"], ["unknown algorithm 'nope'", "ppo", "sac"]),
    (
        ["coordinator", "nope", "CartPole-v1", "--bind", "tcp://127.0.0.1:1"],
        ["unknown algorithm 'nope'", "ppo", "sac"],
    ),
]


@pytest.mark.parametrize("argv,names", BAD_TRAIN, ids=[" ".join(a[1:]) for a, _ in BAD_TRAIN])
def test_bad_input_is_one_error_line(argv, names, bad_files, capsys, monkeypatch):
    train_mod = importlib.import_module("asyncrl.runners.train")  # the module, not the function

    def no_sampler(*args, **kwargs):
        raise AssertionError("envs were built despite bad input")

    monkeypatch.setattr(train_mod, "make_sampler", no_sampler)
    monkeypatch.chdir(bad_files)  # a default run dir would land here, never in the checkout
    argv = [a.replace("{tmp}", str(bad_files)) for a in argv]
    names = [n.replace("{tmp}", str(bad_files)) for n in names]
    code, out, err = run_cli(argv, capsys)
    assert_one_error_line(code, out, err, *names)
    assert not (bad_files / "runs").exists(), "a run directory was created for bad input"


def test_bad_resume_steps_and_existing_run_dir(trained_run, tmp_path, capsys):
    # A run directory that already holds a run is not silently appended to.
    code, out, err = run_cli(
        [
            "train",
            "ppo",
            "CartPole-v1",
            "--steps",
            "512",
            "--no-progress",
            "--run-dir",
            trained_run,
        ],
        capsys,
    )
    assert_one_error_line(code, out, err, str(trained_run), "--resume")
    # --resume takes no algorithm and no --set (the run is configured already).
    code, out, err = run_cli(["train", "ppo", "CartPole-v1", "--resume", trained_run], capsys)
    assert_one_error_line(code, out, err, "--resume")
    code, out, err = run_cli(["train", "--resume", trained_run, "--set", "seed=3"], capsys)
    assert_one_error_line(code, out, err, "--resume")


def test_eval_of_run_without_checkpoints(trained_run, tmp_path, capsys):
    run = tmp_path / "nockpt"
    run.mkdir()
    shutil.copy(trained_run / "config.toml", run)
    shutil.copy(trained_run / "progress.csv", run)
    code, out, err = run_cli(["eval", run], capsys)
    assert_one_error_line(code, out, err, "no checkpoint", "nockpt")
    code, out, err = run_cli(["train", "--resume", run], capsys)
    assert_one_error_line(code, out, err, "no checkpoint", "nockpt")
    # A torn checkpoint file is reported, not a traceback.
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt_000000000256.pt").write_bytes(b"not a checkpoint")
    code, out, err = run_cli(["eval", run], capsys)
    assert_one_error_line(code, out, err, "ckpt_000000000256.pt")


def test_bad_eval_and_plot_options(trained_run, tmp_path, capsys):
    code, out, err = run_cli(["eval", trained_run, "--episodes", "0"], capsys)
    assert_one_error_line(code, out, err, "--episodes")
    code, out, err = run_cli(["eval", trained_run, "--video", tmp_path / "nodir" / "v.gif"], capsys)
    assert_one_error_line(code, out, err, "nodir")
    code, out, err = run_cli(["eval", trained_run, "--video", tmp_path / "v.avi"], capsys)
    assert_one_error_line(code, out, err, "v.avi")
    code, out, err = run_cli(["plot", trained_run, "--metric", "no_such_column"], capsys)
    assert_one_error_line(code, out, err, "no_such_column")
    code, out, err = run_cli(["plot", trained_run, "--out", tmp_path / "nodir" / "c.png"], capsys)
    assert_one_error_line(code, out, err, "nodir")


def test_bad_input_subprocess(tmp_path):
    """The installed script: one line on stderr, exit 2, nothing on stdout, no run dir."""
    r = run_subprocess(["train", "ppo", "NoSuchEnv-v0", "--steps", "1000"], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "NoSuchEnv-v0" in r.stderr
    assert not (tmp_path / "runs").exists()


# -- help -----------------------------------------------------------------------------------------


def test_train_help_lists_presets_and_algorithms(capsys):
    code, out, err = run_cli(["train", "--help"], capsys)
    assert code == 0
    for name in ("ppo_classic", "ppo_atari", "ppo_mujoco", "a2c_classic", "ppo", "a2c"):
        assert name in out


# -- eval and plot on a real run ---------------------------------------------------------------


def test_eval_prints_mean_and_std(trained_run, capsys):
    code, out, err = run_cli(["eval", trained_run, "--episodes", "3"], capsys)
    assert code == 0, err
    assert "3 episodes" in out and "mean" in out and "std" in out


def test_eval_writes_gif(trained_run, tmp_path, capsys):
    gif = tmp_path / "episode.gif"
    code, out, err = run_cli(["eval", trained_run, "--episodes", "1", "--video", gif], capsys)
    assert code == 0, err
    assert gif.exists() and gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    assert str(gif) in out


def test_plot_writes_png(trained_run, tmp_path, capsys):
    code, out, err = run_cli(["plot", trained_run], capsys)
    assert code == 0, err
    png = trained_run / "curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two = tmp_path / "two.png"
    code, out, err = run_cli(
        ["plot", trained_run, trained_run, "--out", two, "--metric", "eval_return_mean"], capsys
    )
    assert code == 0, err
    assert two.stat().st_size > 0


def test_train_subprocess(tmp_path):
    """A short run through the installed script."""
    run = tmp_path / "run"
    r = run_subprocess(
        [
            "train",
            "ppo",
            "CartPole-v1",
            "--steps",
            "1024",
            "--no-progress",
            "--run-dir",
            run,
            "--set",
            "log.eval_episodes=2",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "done: 1024 env steps" in r.stdout
    assert r.stderr == ""  # --no-progress: nothing but the result line
    assert (run / "config.toml").exists() and (run / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "argv",
    [
        ["coordinator", "ppo", "CartPole-v1", "--bind", "tcp://0.0.0.0:5555"],
        ["coordinator", "ppo", "CartPole-v1", "--bind", "tcp://*:5555"],
        ["coordinator", "ppo", "CartPole-v1", "--bind", "tcp://192.168.1.5:5555"],
        [
            "train",
            "ppo",
            "CartPole-v1",
            "--mode",
            "parallel",
            "--set",
            'sampler.bind="tcp://0.0.0.0:5555"',
        ],
    ],
)
def test_non_loopback_bind_without_keys_is_refused_with_how_to_make_keys(argv, capsys):
    code, out, err = run_cli(argv, capsys)
    line = assert_one_error_line(code, out, err, "without keys", "asyncrl keygen", "--insecure")
    assert "0.0.0.0" in line or "*" in line or "192.168.1.5" in line


def test_loopback_endpoints_need_no_keys_and_insecure_is_explicit():
    from asyncrl.runtime.auth import check_bind_security, is_loopback_endpoint

    for ep in ("tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5", "ipc:///tmp/x"):
        assert is_loopback_endpoint(ep) and check_bind_security(ep, "", False) == ""
    for ep in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://eth0:5555", "tcp://10.0.0.1:5"):
        assert not is_loopback_endpoint(ep)
        assert check_bind_security(ep, "", False)
        assert check_bind_security(ep, "keys/", False) == ""  # CURVE keys given
        assert check_bind_security(ep, "", True) == ""  # the user said --insecure


# -- presets: the run names them and warns about its budget; asyncrl presets -----------------------


def _stub_training(monkeypatch):
    """asyncrl.runners.train.train replaced: record the config, stop before any env is built."""
    seen = {}

    def fake_train(cfg=None, **kwargs):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module("asyncrl.runners.train"), "train", fake_train)
    return seen


def test_train_prints_the_presets_and_budget_warnings(capsys, monkeypatch):
    seen = _stub_training(monkeypatch)
    code, out, err = run_cli(
        ["train", "td3", "Hopper-v5", "--steps", "5000", "--no-progress"], capsys
    )
    assert code == 0 and seen["cfg"].preset == "td3_mujoco + td3/Hopper-v5"
    assert out.count("\n") == 1 and "presets: td3_mujoco + td3/Hopper-v5" in out
    assert "asyncrl presets td3 Hopper-v5" in out
    (line,) = err.splitlines()
    assert line.startswith("asyncrl train: warning: td3.learning_starts = 10000 >= steps = 5000")
    assert "--set td3.learning_starts=N" in line
    # eval and checkpoint intervals longer than the run, one line each
    code, out, err = run_cli(
        [
            "train", "td3", "Hopper-v5", "--steps", "3000", "--no-progress",
            "--set", "td3.learning_starts=100", "--set", "log.checkpoint_every=4000",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 2 and all("asyncrl train: warning:" in x for x in lines)
    assert "log.eval_every = 5000 > steps = 3000" in lines[0]
    assert "log.checkpoint_every = 4000 > steps = 3000" in lines[1]
    # a budget that fits: the preset line only, nothing on stderr
    code, out, err = run_cli(["train", "ppo", "CartPole-v1", "--steps", "1024"], capsys)
    assert code == 0 and err == "" and "presets: ppo_classic (" in out
    code, out, err = run_cli(["train", "a2c", "Pusher-v5"], capsys)
    assert code == 0 and "presets: none (dataclass defaults)" in out


def test_presets_lists_family_and_per_env_presets(capsys):
    code, out, err = run_cli(["presets"], capsys)
    assert code == 0 and err == ""
    for name in ("ppo_classic", "td3_mujoco", "dqn_classic", "Hopper-v5", "Acrobot-v1", "per-env"):
        assert name in out
    td3 = next(x for x in out.splitlines() if x.split()[:1] == ["td3"] and "-v5" in x)
    assert "Hopper-v5" in td3 and "InvertedPendulum-v5" in td3
    code, out, err = run_cli(["presets", "sac"], capsys)
    assert code == 0 and "sac_mujoco" in out and "td3_mujoco" not in out


def test_presets_explains_what_applies(capsys):
    code, out, err = run_cli(["presets", "td3", "Hopper-v5"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "td3 on Hopper-v5: td3_mujoco + td3/Hopper-v5"
    assert "td3_mujoco.toml" in out and "envs/td3/Hopper-v5.toml" in out
    assert "rl-baselines3-zoo" in out  # each file's first comment line names its source
    (row,) = [x for x in out.splitlines() if "td3.learning_starts" in x]
    assert "25000 -> 10000" in row and "(td3/Hopper-v5)" in row
    (row,) = [x for x in out.splitlines() if "log.eval_every" in x]
    assert "0 -> 5000" in row and "(td3_mujoco)" in row
    code, out, err = run_cli(["presets", "td3", "Pusher-v5"], capsys)  # family only
    assert code == 0 and out.splitlines()[0] == "td3 on Pusher-v5: td3_mujoco"
    code, out, err = run_cli(["presets", "pppo"], capsys)
    assert_one_error_line(code, out, err, "pppo")
    code, out, err = run_cli(["presets", "ppo", "CartPol-v1"], capsys)
    assert_one_error_line(code, out, err, "CartPol-v1", "CartPole-v1")


def test_train_help_mentions_per_env_presets(capsys):
    code, out, err = run_cli(["train", "--help"], capsys)
    assert code == 0 and "per-env presets" in out and "asyncrl presets" in out
    assert "family preset < per-env preset < --config" in out
