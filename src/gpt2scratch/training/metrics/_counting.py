"""Per-class counts and precision/recall/F1 from them: the arithmetic the local metric modules share.

Conventions follow scikit-learn's, so numbers match what people compare against: a ratio whose
denominator is 0 (a class never predicted, or never present) counts as 0; ``average="binary"`` reports
the ``pos_label`` class only; ``"macro"`` is the unweighted mean over ``labels``; ``"micro"`` pools the
counts of all classes; ``"weighted"`` weights each class by its number of references.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

AVERAGES = ("binary", "macro", "micro", "weighted")


@dataclass(frozen=True)
class ClassCounts:
    """True positives, false positives and false negatives of one class, and its reference count."""

    tp: int
    fp: int
    fn: int

    @property
    def support(self) -> int:
        return self.tp + self.fn


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def class_counts(
    predictions: Sequence[int], references: Sequence[int], labels: Sequence[int]
) -> list[ClassCounts]:
    """One :class:`ClassCounts` per entry of ``labels``, in that order."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up."
        )
    pairs = list(zip((int(p) for p in predictions), (int(r) for r in references), strict=True))
    return [
        ClassCounts(
            tp=sum(p == c and r == c for p, r in pairs),
            fp=sum(p == c and r != c for p, r in pairs),
            fn=sum(p != c and r == c for p, r in pairs),
        )
        for c in labels
    ]


def _per_class(kind: str, c: ClassCounts) -> float:
    precision = _ratio(c.tp, c.tp + c.fp)
    recall = _ratio(c.tp, c.tp + c.fn)
    if kind == "precision":
        return precision
    if kind == "recall":
        return recall
    return _ratio(2 * precision * recall, precision + recall)


def _labels_for(average: str, predictions, references, labels, pos_label: int) -> list[int]:
    seen = sorted({int(x) for x in [*predictions, *references]})
    if average == "binary":
        extra = [x for x in seen if x not in (0, 1, pos_label)]
        if extra:
            raise ValueError(
                f"average='binary' needs two classes, but the labels include {extra}; use average='macro'."
            )
        return [pos_label]
    return [int(x) for x in labels] if labels is not None else seen


def score(
    kind: str,
    predictions: Sequence[int],
    references: Sequence[int],
    average: str = "binary",
    labels: Sequence[int] | None = None,
    pos_label: int = 1,
) -> float:
    """``kind`` ("precision", "recall" or "f1") averaged as ``average`` says."""
    if average not in AVERAGES:
        raise ValueError(f"average={average!r} is not supported; choose one of {', '.join(AVERAGES)}.")
    classes = _labels_for(average, predictions, references, labels, pos_label)
    counts = class_counts(predictions, references, classes)
    if average == "micro":
        pooled = ClassCounts(sum(c.tp for c in counts), sum(c.fp for c in counts), sum(c.fn for c in counts))
        return _per_class(kind, pooled)
    values = [_per_class(kind, c) for c in counts]
    if average == "weighted":
        return _ratio(
            sum(v * c.support for v, c in zip(values, counts, strict=True)), sum(c.support for c in counts)
        )
    return _ratio(sum(values), len(values))
