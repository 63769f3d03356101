"""What the local metric modules share: the input schema of class-id metrics, and the one
precision/recall/F1 module class (each module only names its score)."""

from __future__ import annotations

import sys

import datasets
import evaluate

from ._counting import score


def class_id_info(description: str) -> evaluate.MetricInfo:
    """``MetricInfo`` for metrics over two equal-length lists of integer class ids."""
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description="predictions and references: lists of integer class ids of equal length.",
        features=datasets.Features(
            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        ),
    )


class CountedMetric(evaluate.Metric):
    """Precision, recall or F1 (``kind``) from per-class counts; arguments as in the Hub's metrics."""

    kind: str

    def _info(self):
        return class_id_info(sys.modules[type(self).__module__].__doc__ or "")

    def _compute(self, predictions, references, average="binary", labels=None, pos_label=1):
        value = score(self.kind, predictions, references, average=average, labels=labels, pos_label=pos_label)
        return {self.kind: float(value)}
