"""What notebooks write besides figures' bytes: metrics JSON (read by the tests), tables as
CSV, figures as PNG, each atomically (figures are drawn by ``report.figures`` and
``report.diagnostic_figures``; the HTML report is ``report.html``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from tracin_we.core.persistence import atomic_write, write_json


def record_metrics(path: str | Path, **metrics: Any) -> dict:
    """Merge ``metrics`` into the JSON file at ``path`` (atomically) and return the whole record.
    NaN becomes null, so the file stays valid JSON."""
    path = Path(path)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    )
    write_json(path, record)
    return record


def save_table(table: pd.DataFrame, folder: str | Path, name: str, index: bool = False) -> Path:
    """Save ``table`` as ``<folder>/<name>.csv`` (atomically, the folder created if need be) and
    return the path."""
    path = Path(folder) / f"{name}.csv"
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=index))
    return path


def save_figure(fig: plt.Figure, figures_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (atomically) and return the path."""
    path = Path(figures_dir) / f"{name}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return path


# ---- one HTML report of executed notebooks ----
