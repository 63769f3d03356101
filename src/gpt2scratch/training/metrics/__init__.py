"""Evaluation metrics through ``evaluate``, from metric modules that live in this folder.

``evaluate.load("accuracy")`` fetches its script from the Hub, which fails offline; each subfolder
here (``accuracy``, ``precision``, ``recall``, ``f1``, ``rouge_l``) is instead a local module loaded
with ``evaluate.load(<folder>)``, so metrics work with ``HF_HUB_OFFLINE=1`` and no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "rouge_l")


def metric_path(name: str) -> Path:
    """The folder of the local metric module ``name`` (pass it to ``evaluate.load``)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"No local metric {name!r}; the local metrics are {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / name


@cache
def load_metric(name: str):
    """``evaluate.load`` of the local module ``name``, kept in memory (no cache files), loaded once."""
    import evaluate

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)


def classification_metrics(
    predictions: Sequence[int], references: Sequence[int], num_labels: int = 2
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of class-id predictions.

    With two labels, precision/recall/F1 are those of the positive class 1; with more, their macro
    average over all ``num_labels`` classes (a class never predicted counts with precision 0).
    """
    predictions, references = [int(p) for p in predictions], [int(r) for r in references]
    _check_ids(predictions, references, num_labels)
    if num_labels == 2:
        averaging = {"average": "binary", "pos_label": 1}
    else:
        averaging = {"average": "macro", "labels": list(range(num_labels))}
    result = {"accuracy": _compute("accuracy", predictions, references)}
    for name in ("precision", "recall", "f1"):
        result[name] = _compute(name, predictions, references, **averaging)
    return result


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure of each prediction against its reference (rouge-score, no stemming)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up."
        )
    return float(
        load_metric("rouge_l").compute(predictions=list(predictions), references=list(references))["rougeL"]
    )


def _compute(name: str, predictions: list[int], references: list[int], **kwargs) -> float:
    return float(load_metric(name).compute(predictions=predictions, references=references, **kwargs)[name])


def _check_ids(predictions: list[int], references: list[int], num_labels: int) -> None:
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2, got {num_labels}.")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up."
        )
    if not references:
        raise ValueError("No examples to score: predictions and references are empty.")
    bad = sorted({x for x in [*predictions, *references] if not 0 <= x < num_labels})
    if bad:
        raise ValueError(f"Class ids {bad} are outside 0..{num_labels - 1} (num_labels={num_labels}).")


__all__ = ["classification_metrics", "rouge_l", "load_metric", "metric_path", "METRIC_NAMES"]
