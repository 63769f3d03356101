"""Accuracy, the fraction of predictions equal to their reference, as a local ``evaluate`` metric.

Loaded with ``evaluate.load(path_to_this_folder)``: nothing is fetched from the Hub.
"""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions and references: lists of integer class ids of equal length.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        right = sum(int(p) == int(r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": right / len(references) if references else 0.0}
