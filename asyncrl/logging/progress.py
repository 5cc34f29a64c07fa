"""Run-directory metrics: progress.csv, TensorBoard events, the log file and a live display.

Owns writing metrics; knows nothing about how they are computed. progress.csv always has the
columns env_steps, time_s, updates, episodes, return_mean, return_std, steps_per_s,
eval_return_mean, then whatever the algorithm reports (losses). ``return_mean`` is the mean raw
return of the last 100 finished training episodes (the usual "ep_rew_mean").
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

BASE_COLUMNS = [
    "env_steps",
    "time_s",
    "updates",
    "episodes",
    "return_mean",
    "return_std",
    "steps_per_s",
    "eval_return_mean",
    "eval_return_std",
]


def setup_file_logger(run_dir: Path) -> logging.Logger:
    logger = logging.getLogger("asyncrl")
    logger.setLevel(logging.INFO)
    path = str(run_dir / "train.log")
    if not any(
        isinstance(h, logging.FileHandler) and h.baseFilename == path for h in logger.handlers
    ):
        for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(h)
            h.close()
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(fh)
    return logger


class ProgressWriter:
    """Appends rows to progress.csv (resuming keeps the header) and mirrors them to TensorBoard.

    ``resume_steps``: the env steps of the checkpoint a resumed run starts from. Rows (and
    TensorBoard events) written after that checkpoint by the interrupted run are dropped, so the
    continued curve stays strictly increasing in env steps.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        extra_columns: list[str] | None = None,
        resume_steps: int | None = None,
    ):
        self.path = run_dir / "progress.csv"
        self.columns: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                self.columns = next(csv.reader(f), None)
            if resume_steps is not None and self.columns:
                truncate_progress(self.path, resume_steps)
        self._extra = list(extra_columns or [])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = resume_steps + 1 if resume_steps is not None else None
                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if self.columns is None:
            extras = [k for k in row if k not in BASE_COLUMNS]
            self.columns = BASE_COLUMNS + [k for k in self._extra if k not in extras] + extras
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        new = [k for k in row if k not in self.columns]
        if new:  # a column that appears later (e.g. a loss once learning starts): widen the file
            self._widen(new)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in self.columns])
            f.flush()
        if self.tb is not None:
            step = int(row["env_steps"])
            for k, v in row.items():
                if k != "env_steps" and isinstance(v, int | float) and not math.isnan(float(v)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def _widen(self, new: list[str]) -> None:
        """Rewrite progress.csv with ``new`` columns appended (empty in earlier rows), atomically."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        self.columns = self.columns + new
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in rows[1:]:
                w.writerow(r + [""] * (len(self.columns) - len(r)))
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def truncate_progress(path: Path, max_env_steps: int) -> int:
    """Drop rows of a progress.csv whose env_steps exceed ``max_env_steps`` (and torn last
    lines); rewrites the file atomically. Returns the number of rows dropped."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "env_steps" not in rows[0]:
        return 0
    header, body = rows[0], rows[1:]
    col = header.index("env_steps")
    kept = []
    for r in body:
        try:
            ok = len(r) == len(header) and float(r[col]) <= max_env_steps
        except ValueError:
            ok = False
        if ok:
            kept.append(r)
    if len(kept) == len(body):
        return 0
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows([header, *kept])
    tmp.replace(path)
    return len(body) - len(kept)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


class EpisodeTracker:
    """Rolling window of finished-episode raw returns."""

    def __init__(self, window: int = 100):
        self.returns: deque[float] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self.total = 0

    def add(self, returns, lengths) -> None:
        self.returns.extend(returns)
        self.lengths.extend(lengths)
        self.total += len(returns)

    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def std(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    def state_dict(self) -> dict:
        return {"returns": list(self.returns), "lengths": list(self.lengths), "total": self.total}

    def load_state_dict(self, s: dict) -> None:
        self.returns.clear()
        self.lengths.clear()
        self.add(s["returns"], s["lengths"])
        self.total = s["total"]


class LiveDisplay:
    """A rich progress bar (steps, steps/s, return, ETA) when stderr is a terminal; otherwise
    (a log file, CI) a plain line on stderr at most every ``plain_every_s`` seconds."""

    def __init__(
        self,
        total_steps: int,
        description: str,
        enabled: bool = True,
        start: int = 0,
        plain_every_s: float = 10.0,
    ):
        self.enabled = enabled
        self.total = total_steps
        self.description = description
        self.plain_every_s = plain_every_s
        self._progress = None
        self._last_plain: float | None = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8} steps/s"),
                TextColumn("return {task.fields[ret]}"),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._task = self._progress.add_task(
                description, total=total_steps, completed=start, rate="-", ret="-", extra=""
            )
            self._progress.start()

    def update(
        self, env_steps: int, steps_per_s: float, return_mean: float, extra: str = ""
    ) -> None:
        ret = "-" if math.isnan(return_mean) else f"{return_mean:.1f}"
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=min(env_steps, self.total),
                rate=f"{steps_per_s:,.0f}",
                ret=ret,
                extra=extra,
            )
        elif self.enabled and (
            self._last_plain is None or time.monotonic() - self._last_plain >= self.plain_every_s
        ):
            self._last_plain = time.monotonic()
            pct = 100.0 * env_steps / max(self.total, 1)
            eta = (self.total - env_steps) / steps_per_s if steps_per_s > 0 else float("nan")
            print(
                f"[{self.description}] {env_steps}/{self.total} ({pct:.0f}%) "
                f"{steps_per_s:,.0f} steps/s return {ret} {extra} ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
