"""Accuracy, the fraction of predictions equal to their reference, as a local ``evaluate`` metric.

Loaded with ``evaluate.load(path_to_this_folder)``: nothing is fetched from the Hub.
"""

import evaluate

from gpt2scratch.training.metrics._base import class_id_info


class Accuracy(evaluate.Metric):
    def _info(self):
        return class_id_info(__doc__)

    def _compute(self, predictions, references):
        right = sum(int(p) == int(r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": right / len(references) if references else 0.0}
