"""F1, the harmonic mean of precision and recall: 2PR / (P + R), as a local ``evaluate`` metric.

Loaded with ``evaluate.load(path_to_this_folder)``: nothing is fetched from the Hub. Arguments as in
the Hub's ``f1`` metric: ``average`` ("binary" (default, class ``pos_label``), "macro", "micro",
"weighted"), ``labels`` (the classes to average over; default: those seen), ``pos_label`` (default 1).
A class never predicted (or never present) scores 0, as in scikit-learn.
"""

# The module, not its class, is imported: evaluate takes the first Metric class in this file's namespace.
from gpt2scratch.training.metrics import _base


class F1(_base.CountedMetric):
    kind = "f1"
