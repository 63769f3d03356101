"""ROUGE-L (longest common subsequence) F-measure, as a local ``evaluate`` metric.

Loaded with ``evaluate.load(path_to_this_folder)``: nothing is fetched from the Hub, and the scoring
is Google's ``rouge-score`` package with its default tokenizer (lower-cased, runs of ``[a-z0-9]``;
no stemming unless ``use_stemmer=True``), which needs no NLTK data. Returns the mean F-measure over
the pairs (``rougeL``), and the mean precision and recall beside it.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions and references: lists of strings of equal length.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer=False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [
            scorer.score(ref, pred)["rougeL"] for pred, ref in zip(predictions, references, strict=True)
        ]
        return {
            "rougeL": _mean([s.fmeasure for s in scores]),
            "rougeL_precision": _mean([s.precision for s in scores]),
            "rougeL_recall": _mean([s.recall for s in scores]),
        }


def _mean(values):
    return sum(values) / len(values) if values else 0.0
