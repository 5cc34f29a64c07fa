"""Learning curves from progress.csv files as a PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_progress(run_dir: str | Path) -> dict[str, list[float]]:
    path = Path(run_dir) / "progress.csv"
    if not path.exists():
        raise FileNotFoundError(f"no progress.csv in {str(run_dir)!r}")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    if rows and len(rows[-1]) != len(header):
        rows.pop()  # a torn last line (the run was killed while writing it)
    cols: dict[str, list[float]] = {k: [] for k in header}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{str(path)!r} line {line}: {len(row)} fields, expected {len(header)}"
            )
        for k, v in zip(header, row):
            try:
                cols[k].append(float(v) if v != "" else float("nan"))
            except ValueError:
                raise ValueError(f"{str(path)!r} line {line}: {k} is not a number: {v!r}") from None
    return cols


def plot_runs(run_dirs: list[str], out: str | Path, metric: str = "return_mean") -> Path:
    """One PNG with ``metric`` (and the evaluation return, where logged) against env steps."""
    data = {rd: read_progress(rd) for rd in run_dirs}
    for rd, cols in data.items():
        if metric not in cols:
            raise ValueError(f"{str(rd)!r} has no column {metric!r}; columns: {', '.join(cols)}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rd, cols in data.items():
        name = Path(rd).name
        x = cols.get("env_steps", [])
        ax.plot(x, cols[metric], label=f"{name} ({metric})")
        ev = cols.get("eval_return_mean")
        if ev is not None and any(v == v for v in ev):
            pts = [(a, b) for a, b in zip(x, ev) if b == b]
            ax.plot(*zip(*pts), "o--", label=f"{name} (eval)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return" if "return" in metric else metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
