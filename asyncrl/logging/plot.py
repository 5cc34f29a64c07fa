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
    cols: dict[str, list[float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                cols.setdefault(k, []).append(float(v) if v not in ("", None) else float("nan"))
    return cols


def plot_runs(run_dirs: list[str], out: str | Path, metric: str = "return_mean") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rd in run_dirs:
        cols = read_progress(rd)
        name = Path(rd).name
        x = cols.get("env_steps", [])
        if metric in cols:
            ax.plot(x, cols[metric], label=f"{name} ({metric})")
        ev = cols.get("eval_return_mean")
        if ev is not None and any(v == v for v in ev):
            pts = [(a, b) for a, b in zip(x, ev) if b == b]
            ax.plot(*zip(*pts), "o--", label=f"{name} (eval)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
