"""Training curves as PNG and PDF, like the seeds' ``loss-plot.pdf`` and ``accuracy-plot.pdf``.

A history maps a series name (``train_loss``, ``val_loss``, ``train_accuracy``, ``val_accuracy``) to
``(optimizer_step, value)`` pairs; each plot draws the train and validation series of one quantity
against the optimizer step. Matplotlib runs headless (Agg), so this works on servers and in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

# Each plot: file stem, y-axis label, and the history keys it draws with their legend labels.
PLOTS = {
    "loss": ("loss-plot", "Loss", {"train_loss": "Training loss", "val_loss": "Validation loss"}),
    "accuracy": (
        "accuracy-plot",
        "Accuracy",
        {"train_accuracy": "Training accuracy", "val_accuracy": "Validation accuracy"},
    ),
}
FORMATS = ("png", "pdf")


def save_plots(history: dict[str, list[tuple[int, float]]], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``loss-plot.{png,pdf}`` (when a loss series exists) and ``accuracy-plot.{png,pdf}`` (when an
    accuracy series exists) into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, ylabel, series in PLOTS.values():
        present = {key: label for key, label in series.items() if history.get(key)}
        if present:
            written += _save_figure(_curve_figure(history, present, ylabel), out_dir / stem)
    return written


def _curve_figure(history: dict[str, list[tuple[int, float]]], series: dict[str, str], ylabel: str):
    """One figure: each series in ``series`` (history key -> legend label) as a line over steps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    for key, label in series.items():
        steps, values = zip(*sorted(history[key]), strict=True)
        style = "-" if key.startswith("train") else "-."
        ax.plot(steps, values, style, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("Optimizer step")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig


def _save_figure(fig, stem: Path) -> list[Path]:
    """``fig`` as ``stem.png`` and ``stem.pdf``, through the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None)
    return paths
