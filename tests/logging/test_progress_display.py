"""Logging: the live display (terminal and plain), progress.csv writing and truncation, plots
from progress.csv, checkpoint files."""

from __future__ import annotations

import csv
import io
import sys
import time

import pytest
import torch

from asyncrl.logging import progress as progress_mod
from asyncrl.logging.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from asyncrl.logging.plot import plot_runs, read_progress
from asyncrl.logging.progress import (
    BASE_COLUMNS,
    EpisodeTracker,
    LiveDisplay,
    ProgressWriter,
    truncate_progress,
)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:  # pragma: no cover - rich may ask; there is no real descriptor
        raise OSError("no descriptor")


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- the live display -------------------------------------------------------------------------------


def test_display_on_a_terminal_does_not_crash(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    d = LiveDisplay(1000, "ppo CartPole-v1", enabled=True, start=100)
    assert d._progress is not None  # the rich bar is used on a terminal
    for steps in range(200, 1300, 100):  # past the total too
        d.update(steps, 1234.5, float("nan") if steps < 400 else 21.5, "eval 9.0")
    d.close()
    d.close()  # closing twice is harmless
    assert "ppo CartPole-v1" in tty.getvalue()


def test_plain_lines_at_most_every_10_seconds(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    d = LiveDisplay(10_000, "ppo CartPole-v1", enabled=True)  # capsys' stderr is not a TTY
    assert d._progress is None
    printed = []
    for dt in [0, 1, 5, 9.9, 10.5, 12, 19, 20.4, 21, 40]:
        clock.t = 1000.0 + dt
        d.update(int(dt * 100) + 1, 100.0, 20.0)
        err = capsys.readouterr().err
        if err:
            printed.append(dt)
            assert (
                err.count("\n") == 1 and "steps/s" in err and "ETA" in err and "return 20.0" in err
            )
    assert printed == [0, 10.5, 21, 40]
    d.close()


def test_disabled_display_prints_nothing(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    d = LiveDisplay(100, "x", enabled=False)
    d.update(50, 10.0, 1.0)
    d.close()
    assert sys.stderr.getvalue() == ""


def test_training_with_a_terminal_display(tmp_path, monkeypatch):
    """A real (tiny) run with the rich display on a fake terminal: no crash, bar drawn."""
    from asyncrl.configs.config import resolve_config
    from asyncrl.runners.train import train

    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    cfg = resolve_config(
        "ppo",
        "CartPole-v1",
        sets=[
            "steps=512",
            f"run_dir={tmp_path / 'run'}",
            "log.eval_every=-1",
            "log.tensorboard=false",
        ],
    )
    assert cfg.log.progress
    result = train(cfg)
    assert result.env_steps == 512 and not result.interrupted
    assert "steps/s" in tty.getvalue()


def test_training_without_a_terminal_prints_plain_lines(tmp_path, capsys):
    from asyncrl.configs.config import resolve_config
    from asyncrl.runners.train import train

    cfg = resolve_config(
        "ppo",
        "CartPole-v1",
        sets=[
            "steps=512",
            f"run_dir={tmp_path / 'run'}",
            "log.eval_every=-1",
            "log.tensorboard=false",
        ],
    )
    t0 = time.monotonic()
    train(cfg)
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[ppo CartPole-v1]")]
    assert 1 <= len(lines) <= 1 + seconds / 10  # the first update, then one per 10 s at most
    assert "/512" in lines[0] and "steps/s" in lines[0]


# -- progress.csv -----------------------------------------------------------------------------------


def test_progress_writer_columns_and_resume(tmp_path):
    w = ProgressWriter(tmp_path, tensorboard=False)
    w.write({"env_steps": 10, "time_s": 0.5, "policy_loss": 0.25, "return_mean": float("nan")})
    w.write({"env_steps": 20, "time_s": 1.0, "policy_loss": 0.125, "eval_return_mean": 3.0})
    w.close()
    with (tmp_path / "progress.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == BASE_COLUMNS + ["policy_loss"]
    assert rows[1][rows[0].index("return_mean")] == ""  # NaN is an empty cell
    assert rows[2][rows[0].index("eval_return_mean")] == "3"

    # A resumed writer keeps the header and drops rows past the checkpoint.
    w = ProgressWriter(tmp_path, tensorboard=False, resume_steps=10)
    w.write({"env_steps": 15, "time_s": 0.7, "policy_loss": 0.5, "extra_new": 1.0})
    w.close()
    cols = read_progress(tmp_path)
    assert cols["env_steps"] == [10, 15]
    # A column that appears later widens the file; earlier rows get an empty cell.
    assert cols["extra_new"][-1] == 1.0 and cols["extra_new"][0] != cols["extra_new"][0]


def test_truncate_progress_drops_late_and_torn_rows(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text("env_steps,time_s\n1,0.1\n2,0.2\n3,0.3\n4")  # "4": killed mid-row
    assert truncate_progress(path, 2) == 2
    assert path.read_text().splitlines() == ["env_steps,time_s", "1,0.1", "2,0.2"]
    assert truncate_progress(path, 2) == 0  # nothing to do: the file is left alone


def test_read_progress_skips_a_torn_last_line_and_reports_bad_cells(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text("env_steps,return_mean\n1,2.5\n2,\n3")
    cols = read_progress(tmp_path)
    assert cols["env_steps"] == [1, 2]
    assert cols["return_mean"][0] == 2.5 and cols["return_mean"][1] != cols["return_mean"][1]
    path.write_text("env_steps,return_mean\n1,abc\n2,3\n")
    with pytest.raises(ValueError, match="line 2: return_mean"):
        read_progress(tmp_path)


def test_plot_runs_writes_a_png(tmp_path):
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "progress.csv").write_text(
            "env_steps,return_mean,eval_return_mean\n100,10,\n200,20,25\n300,30,\n"
        )
    out = plot_runs([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "c.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="nope"):
        plot_runs([str(tmp_path / "a")], tmp_path / "d.png", metric="nope")
    assert not (tmp_path / "d.png").exists()


def test_episode_tracker_state_round_trip():
    t = EpisodeTracker(window=3)
    assert t.mean() != t.mean()  # NaN before any episode
    t.add([1.0, 2.0, 3.0, 4.0], [10, 20, 30, 40])
    assert t.total == 4 and t.mean() == 3.0
    u = EpisodeTracker(window=3)
    u.load_state_dict(t.state_dict())
    assert (u.total, u.mean(), u.std(), list(u.lengths)) == (4, 3.0, t.std(), [20, 30, 40])


# -- checkpoints ------------------------------------------------------------------------------------


def test_checkpoints_keep_the_newest_and_load(tmp_path):
    for steps in (100, 300, 200, 1000):
        save_checkpoint(tmp_path, steps, {"env_steps": steps, "w": torch.ones(2) * steps}, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt_000000000300.pt", "ckpt_000000001000.pt"]
    assert latest_checkpoint(tmp_path).name == "ckpt_000000001000.pt"
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], torch.ones(2) * 1000)
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    bad = tmp_path / "checkpoints" / "ckpt_000000000001.pt"
    bad.write_bytes(b"\x00garbage\n")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert "\n" not in str(e.value) and "ckpt_000000000001.pt" in str(e.value)
