"""F1, the harmonic mean of precision and recall: 2PR / (P + R), as a local ``evaluate`` metric.

Loaded with ``evaluate.load(path_to_this_folder)``: nothing is fetched from the Hub. Arguments as in
the Hub's ``f1`` metric: ``average`` ("binary" (default, class ``pos_label``), "macro", "micro",
"weighted"), ``labels`` (the classes to average over; default: those seen), ``pos_label`` (default 1).
A class never predicted (or never present) scores 0, as in scikit-learn.
"""

import datasets
import evaluate

from gpt2scratch.training.metrics._counting import score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions and references: lists of integer class ids of equal length.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary", labels=None, pos_label=1):
        value = score("f1", predictions, references, average=average, labels=labels, pos_label=pos_label)
        return {"f1": float(value)}
