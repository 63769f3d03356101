"""Local evaluate metric modules: values checked against hand-computed ones, offline loading, packaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpt2scratch.training.metrics import METRIC_NAMES, classification_metrics, metric_path, rouge_l


def test_binary_metrics_match_hand_computed_values():
    # TP = 2 (items 0, 6), FP = 2 (1, 2), FN = 1 (3), TN = 2 (4, 5)
    predictions = [1, 1, 1, 0, 0, 0, 1]
    references = [1, 0, 0, 1, 0, 0, 1]
    got = classification_metrics(predictions, references)
    precision, recall = 2 / 4, 2 / 3
    expected = {
        "accuracy": 4 / 7,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_binary_metrics_when_the_positive_class_is_never_predicted():
    got = classification_metrics([0, 0, 0, 0], [0, 1, 0, 1])
    assert got == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_three_class_macro_metrics_with_a_class_never_predicted():
    predictions = [0, 1, 1, 0, 1]
    references = [0, 1, 2, 2, 1]
    # class 0: TP 1, FP 1, FN 0 -> P 1/2, R 1,  F1 2/3
    # class 1: TP 2, FP 1, FN 0 -> P 2/3, R 1,  F1 4/5
    # class 2: TP 0, FP 0, FN 2 -> P 0 (never predicted), R 0, F1 0
    got = classification_metrics(predictions, references, num_labels=3)
    expected = {
        "accuracy": 3 / 5,
        "precision": (1 / 2 + 2 / 3 + 0) / 3,
        "recall": (1 + 1 + 0) / 3,
        "f1": (2 / 3 + 4 / 5 + 0) / 3,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_macro_average_counts_every_label_even_when_absent_from_the_data():
    # num_labels=4 but class 3 appears nowhere: it still counts (as 0) in the macro average
    got3 = classification_metrics([0, 1, 2], [0, 1, 2], num_labels=3)
    got4 = classification_metrics([0, 1, 2], [0, 1, 2], num_labels=4)
    assert got3 == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert got4["accuracy"] == 1.0 and got4["f1"] == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    "predictions, references, num_labels, message",
    [
        ([0, 1], [0], 2, "2 predictions but 1 references"),
        ([0, 2], [0, 1], 2, "Class ids [2] are outside 0..1"),
        ([], [], 2, "No examples"),
        ([0], [0], 1, "num_labels must be at least 2"),
    ],
)
def test_classification_metrics_rejects_bad_input(predictions, references, num_labels, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        classification_metrics(predictions, references, num_labels=num_labels)


def test_rouge_l_matches_hand_computed_lcs_values():
    predictions = ["the cat sat on the mat", "a b c d e", "same words here", "nothing shared"]
    references = ["the cat is on a mat", "b d f", "Same, words here!", "totally different"]
    # 1: LCS "the cat on mat" = 4 of 6 and 6 tokens -> P = R = 4/6, F = 2/3
    # 2: LCS "b d" = 2; P = 2/5, R = 2/3 -> F = 2PR/(P+R) = 1/2
    # 3: rouge-score lower-cases and drops punctuation -> identical -> 1
    # 4: no common token -> 0
    f2 = 2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3)
    assert f2 == pytest.approx(0.5)
    assert rouge_l(predictions, references) == pytest.approx((2 / 3 + f2 + 1 + 0) / 4, abs=1e-12)
    assert rouge_l(["x y z"], ["x y z"]) == 1.0


def test_rouge_l_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])


OFFLINE_LOAD = """
import json, evaluate, sys
paths = json.loads(sys.argv[1])
args = {
    "accuracy": dict(predictions=[1, 0, 1], references=[1, 1, 1]),
    "precision": dict(predictions=[1, 0, 1], references=[1, 1, 0]),
    "recall": dict(predictions=[1, 0, 1], references=[1, 1, 0]),
    "f1": dict(predictions=[0, 1, 2], references=[0, 2, 2], average="macro"),
    "rouge_l": dict(predictions=["a b c d"], references=["a c"]),
}
out = {name: evaluate.load(path).compute(**args[name]) for name, path in paths.items()}
print(json.dumps(out))
"""


def test_metric_modules_load_offline_with_evaluate_load(tmp_path):
    """Each folder loads with plain ``evaluate.load(<folder>)`` with the Hub unreachable and a fresh cache."""
    paths = {name: str(metric_path(name)) for name in METRIC_NAMES}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # nothing cached from earlier runs
        "HF_ENDPOINT": "http://127.0.0.1:9",  # a closed port: any network attempt fails
    }
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOAD, json.dumps(paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["accuracy"] == {"accuracy": pytest.approx(2 / 3)}
    assert got["precision"] == {"precision": pytest.approx(1 / 2)}  # TP 1, FP 1
    assert got["recall"] == {"recall": pytest.approx(1 / 2)}  # TP 1, FN 1
    # macro F1: class 0 -> 1, class 1 -> 0 (its one prediction is wrong), class 2 -> P 1, R 1/2, F 2/3
    assert got["f1"] == {"f1": pytest.approx((1 + 0 + 2 / 3) / 3)}
    # LCS "a c" = 2: P 2/4, R 2/2 -> F 2/3
    assert got["rouge_l"]["rougeL"] == pytest.approx(2 / 3)


def test_metric_folders_are_packages_so_the_wheel_ships_them():
    """setuptools ships a folder's ``*.py`` only when it is a package: each metric folder must be one."""
    from conftest import REPO
    from setuptools import find_packages

    packages = set(find_packages(str(REPO / "src")))
    for name in METRIC_NAMES:
        assert f"gpt2scratch.training.metrics.{name}" in packages
        assert (metric_path(name) / f"{name}.py").is_file()
