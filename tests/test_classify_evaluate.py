"""``gpt2scratch classify`` and ``gpt2scratch evaluate`` on tiny random-init model folders.

Most runs call ``gpt2scratch.cli.main`` in-process (the same code path as the console script, and
much faster on a 2-core machine); two run the real command in a subprocess for exit codes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import stat

import pytest
import torch
from conftest import run_cli

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification
from gpt2scratch.cli import main
from gpt2scratch.io import save_model_folder
from gpt2scratch.tokenizer import encode, load_encoding
from gpt2scratch.training import commands
from gpt2scratch.training.metrics import classification_metrics

TEXTS = [
    "Hello, how are you doing today?",
    "WINNER!! You have been selected to receive a £900 prize reward. Call 09061701461 now",
    "ok",
    "Sorry, I'll call later",
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121",
]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, vocab_dir):
    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset(
        "tiny", vocab_size=50257, num_labels=2, id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1}
    )
    model = GPT2ScratchForSequenceClassification(config)
    with torch.no_grad():  # spread the logits so predictions differ between texts
        model.score.weight.mul_(30)
    return save_model_folder(model, tmp_path_factory.mktemp("models") / "classifier", vocab_dir)


@pytest.fixture(scope="module")
def reference(classifier_dir, vocab_dir):
    """Class probabilities of one text, computed alone (no padding) with the model loaded in-process."""
    model = GPT2ScratchForSequenceClassification.from_pretrained(classifier_dir).eval()
    encoding = load_encoding(vocab_dir)

    def probs(text: str, max_length: int = 128) -> torch.Tensor:
        ids = torch.tensor([encode(encoding, text)[:max_length]])
        with torch.no_grad():
            return torch.softmax(model(input_ids=ids).logits[0], dim=-1)

    return probs


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_classify_texts_match_an_in_process_forward(capsys, classifier_dir, reference):
    code, out, _ = _cli(capsys, "classify", classifier_dir, *TEXTS, "--batch-size", "2")
    assert code == 0
    lines = out.strip().split("\n")
    assert len(lines) == len(TEXTS)
    labels = set()
    for line, text in zip(lines, TEXTS, strict=True):
        label, score, printed = line.split("\t")
        expected = reference(text)
        assert printed == text
        assert label == ["ham", "spam"][int(expected.argmax())]
        assert float(score) == pytest.approx(float(expected.max()), abs=2e-6)
        labels.add(label)
    assert labels == {"ham", "spam"}, "the fixture should give both labels, or the comparison is weak"


def test_classify_options_between_model_and_texts(capsys, classifier_dir):
    """``classify MODEL --batch-size 2 TEXT...``: the same lines as with the options after the texts."""
    code, out, err = _cli(capsys, "classify", classifier_dir, "--batch-size", "2", *TEXTS[:3])
    assert code == 0, err
    code, mixed, _ = _cli(capsys, "classify", classifier_dir, TEXTS[0], "--max-length", "128", *TEXTS[1:3])
    assert code == 0 and mixed == out
    assert out == _cli(capsys, "classify", classifier_dir, *TEXTS[:3], "--batch-size", "2")[1]


def test_classify_truncation_keeps_the_first_tokens_and_reports_the_count(capsys, classifier_dir, reference):
    code, out, err = _cli(capsys, "classify", classifier_dir, *TEXTS, "--max-length", "6")
    assert code == 0
    long_texts = [t for t in TEXTS if len(encode(load_encoding(classifier_dir), t)) > 6]
    assert f"{len(long_texts)} of {len(TEXTS)} texts were longer than 6 tokens" in err
    for line, text in zip(out.strip().split("\n"), TEXTS, strict=True):
        assert float(line.split("\t")[1]) == pytest.approx(float(reference(text, 6).max()), abs=2e-6)


def test_classify_streams_a_1000_row_csv_in_batches(capsys, monkeypatch, tmp_path, classifier_dir, reference):
    rows = [[str(i), f'{TEXTS[i % len(TEXTS)]} #{i}, "quoted"\nsecond line', "x"] for i in range(1000)]
    src = _write_csv(tmp_path / "in.csv", ["id", "text", "label"], rows)

    lines_read = {"n": 0}
    from gpt2scratch.training import data

    real_lines = data._decoded_lines

    def counting_lines(raw, path):
        for line in real_lines(raw, path):
            lines_read["n"] += 1
            yield line

    done = {"rows": 0, "batches": 0}
    real_probs = commands.Classifier.probabilities

    def checking_probs(self, texts, where=None):
        # streaming: never more than the current batch (2 physical lines per row) read ahead of the model
        assert lines_read["n"] <= 1 + 2 * (done["rows"] + len(texts)) + 2
        done["rows"] += len(texts)
        done["batches"] += 1
        return real_probs(self, texts, where)

    monkeypatch.setattr(data, "_decoded_lines", counting_lines)
    monkeypatch.setattr(commands.Classifier, "probabilities", checking_probs)
    out = tmp_path / "out.csv"
    code, _, err = _cli(
        capsys, "classify", classifier_dir, "--input-file", src, "--output-file", out, "--batch-size", 64
    )
    assert code == 0, err
    assert done == {"rows": 1000, "batches": 16}
    with open(out, newline="", encoding="utf-8") as fh:
        got = list(csv.reader(fh))
    # the input already has a "label" column, so the predictions go to predicted_label/predicted_score
    assert got[0] == ["id", "text", "label", "predicted_label", "predicted_score"]
    assert [r[:3] for r in got[1:]] == rows
    for row in got[1:21] + got[-5:]:
        expected = reference(row[1])
        assert row[3] == ["ham", "spam"][int(expected.argmax())]
        assert float(row[4]) == pytest.approx(float(expected.max()), abs=2e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.csv.tmp")]


def test_classify_tsv_adds_label_and_score_columns(capsys, tmp_path, classifier_dir):
    src = _write_csv(tmp_path / "in.tsv", ["message"], [[t] for t in TEXTS], delimiter="\t")
    out = tmp_path / "out.tsv"
    code, _, err = _cli(
        capsys,
        "classify",
        classifier_dir,
        "--input-file",
        src,
        "--output-file",
        out,
        "--text-column",
        "message",
    )
    assert code == 0, err
    rows = list(csv.reader(out.open(encoding="utf-8"), delimiter="\t"))
    assert rows[0] == ["message", "label", "score"] and len(rows) == len(TEXTS) + 1


def test_evaluate_classification_matches_in_process_predictions(capsys, tmp_path, classifier_dir, reference):
    labels = ["ham", "spam", "1", "ham", "0"]  # names from label2id, or class ids
    src = _write_csv(tmp_path / "test.csv", ["text", "label"], list(zip(TEXTS, labels, strict=True)))
    code, out, err = _cli(capsys, "evaluate", classifier_dir, "--task", "classification", "--data", src)
    assert code == 0, err
    got = json.loads(out)
    predictions = [int(reference(t).argmax()) for t in TEXTS]
    references = [0, 1, 1, 0, 0]
    expected = classification_metrics(predictions, references)
    assert expected["accuracy"] == sum(p == r for p, r in zip(predictions, references, strict=True)) / 5
    assert got["examples"] == 5
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert got["labels"] == ["ham", "spam"]
    counted = [[sum(r == t and p == q for p, r in zip(predictions, references, strict=True)) for q in (0, 1)]
               for t in (0, 1)]  # fmt: skip
    assert got["confusion_matrix"] == counted and sum(map(sum, counted)) == 5


def test_evaluate_lm_loss_and_perplexity_match_the_model(capsys, tmp_path, vocab_dir):
    torch.manual_seed(1)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=50257)).eval()
    folder = save_model_folder(model, tmp_path / "lm", vocab_dir)
    text = "\n".join(TEXTS * 3)
    (tmp_path / "data.txt").write_text(text, encoding="utf-8")
    code, out, err = _cli(
        capsys, "evaluate", folder, "--task", "lm", "--data", tmp_path / "data.txt", "--max-length", 16
    )
    assert code == 0, err
    got = json.loads(out)

    _assert_lm_metrics(got, model, encode(load_encoding(vocab_dir), text), block=16)


def test_evaluate_lm_on_a_classifier_scores_its_backbone_quietly(
    capsys, tmp_path, classifier_dir, vocab_dir, transformers_log
):
    """The classifier's backbone under the LM head tied to its embeddings (as ``generate`` uses it): no
    transformers load report about the unused ``score`` head, one note, the backbone's own loss."""
    text = "\n".join(TEXTS * 3)
    (tmp_path / "data.txt").write_text(text, encoding="utf-8")
    code, out, err = _cli(
        capsys,
        "evaluate",
        classifier_dir,
        "--task",
        "lm",
        "--data",
        tmp_path / "data.txt",
        "--max-length",
        16,
    )
    assert code == 0, err
    assert not [m for m in transformers_log if "LOAD REPORT" in m], transformers_log
    assert err.count("gpt2scratch evaluate: note:") == 1 and "backbone" in err, err
    classifier = GPT2ScratchForSequenceClassification.from_pretrained(classifier_dir)
    lm = GPT2ScratchForCausalLM(classifier.config).eval()
    lm.load_state_dict(classifier.state_dict(), strict=False)
    _assert_lm_metrics(json.loads(out), lm, encode(load_encoding(vocab_dir), text), block=16)


@pytest.mark.parametrize("stride", [5, 12, 16])
def test_evaluate_lm_stride_gives_transformers_sliding_window_perplexity(stride, capsys, tmp_path, vocab_dir):
    """``--stride``: the loss transformers' GPT-2 (the same weights) gives with the sliding-window loop of its
    perplexity guide, each window's already-scored tokens labelled -100; ``--stride`` = ``--max-length`` is the
    consecutive blocks of the default."""
    from gpt2scratch.conversion.hf_gpt2 import to_hf_model

    torch.manual_seed(2)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=50257)).eval()
    folder = save_model_folder(model, tmp_path / "lm", vocab_dir)
    text = "\n".join(TEXTS * 3)
    (tmp_path / "data.txt").write_text(text, encoding="utf-8")
    data = ["--task", "lm", "--data", tmp_path / "data.txt", "--max-length", 16]
    code, out, err = _cli(capsys, "evaluate", folder, *data, "--stride", stride, "--batch-size", 3)
    assert code == 0, err
    got = json.loads(out)

    ids, hf = torch.tensor([encode(load_encoding(vocab_dir), text)]), to_hf_model(model).eval()
    total = count = windows = previous_end = 0
    with torch.no_grad():
        for begin in range(0, ids.shape[1], stride):
            end = min(begin + 16, ids.shape[1])
            target = ids[:, begin:end].clone()
            target[:, : -(end - previous_end)] = -100
            scored = int((target[:, 1:] != -100).sum())
            if scored:
                total += float(hf(ids[:, begin:end], labels=target).loss) * scored
                count, windows = count + scored, windows + 1
            previous_end = end
            if end == ids.shape[1]:
                break
    assert (got["blocks"], got["stride"], got["block_length"]) == (windows, stride, 16)
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    if stride == 16:
        code, default, err = _cli(capsys, "evaluate", folder, *data, "--batch-size", 3)
        assert code == 0 and json.loads(default) == got, err


def test_evaluate_lm_stride_outside_the_window_is_refused(capsys, tmp_path, lm_dir):
    (tmp_path / "t.txt").write_text("some text to score " * 10, encoding="utf-8")
    for length, stride, message in [
        (16, 0, "--stride must be at least 1"),
        (16, 17, "--stride 17 is longer than the windows"),
        (1, 1, "--max-length 1: a window of N tokens scores N - 1 of them"),  # not "the file is too short"
    ]:
        code, out, err = _cli(capsys, "evaluate", lm_dir, "--task", "lm", "--data", tmp_path / "t.txt",
                              "--max-length", length, "--stride", stride)  # fmt: skip
        assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def _assert_lm_metrics(got: dict, model, ids: list[int], block: int) -> None:
    """``evaluate --task lm``'s figures equal each block's own (mean) loss, token-weighted, from ``model``."""
    blocks = [ids[i : i + block] for i in range(0, len(ids), block)]
    blocks = [b for b in blocks if len(b) >= 2]
    total = count = 0
    with torch.no_grad():
        for b in blocks:
            t = torch.tensor([b])
            total += float(model(input_ids=t, labels=t).loss) * (len(b) - 1)
            count += len(b) - 1
    assert got["tokens"] == len(ids) and got["blocks"] == len(blocks)
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


# ----------------------------------------------------------------------------- errors


def test_missing_text_column_names_the_file_and_its_columns(tmp_path, classifier_dir):
    """Through the real console entry point: exit code 2 and a one-line message."""
    src = _write_csv(tmp_path / "msgs.csv", ["id", "body"], [["1", "hi"]])
    proc = run_cli(
        "classify", str(classifier_dir), "--input-file", str(src), "--output-file", str(tmp_path / "o.csv")
    )
    assert proc.returncode == 2
    assert "msgs.csv has no column 'text' (its columns: id, body)" in proc.stderr
    assert "--text-column" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.csv").exists()


def test_unknown_label_names_the_row(capsys, tmp_path, classifier_dir):
    rows = [["hello", "ham"], ["win", "spam"], ["lunch?", "eggs"]]
    src = _write_csv(tmp_path / "t.csv", ["text", "label"], rows)
    code, _, err = _cli(capsys, "evaluate", classifier_dir, "--task", "classification", "--data", src)
    assert code == 2
    assert "t.csv, line 4: label 'eggs' was never seen in training" in err and "ham, spam" in err


def test_missing_label_column(capsys, tmp_path, classifier_dir):
    src = _write_csv(tmp_path / "t.csv", ["text", "category"], [["hello", "ham"]])
    code, _, err = _cli(capsys, "evaluate", classifier_dir, "--task", "classification", "--data", src)
    assert code == 2 and "t.csv has no column 'label' (its columns: text, category)" in err


@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_non_utf8_bytes_name_the_line(capsys, tmp_path, classifier_dir, command):
    src = tmp_path / "bad.csv"
    src.write_bytes(b"text,label\nhello,ham\ncaf\xe9 au lait,ham\n")
    if command == "classify":
        args = ["classify", classifier_dir, "--input-file", src, "--output-file", tmp_path / "o.csv"]
    else:
        args = ["evaluate", classifier_dir, "--task", "classification", "--data", src]
    code, _, err = _cli(capsys, *args)
    assert code == 2
    assert "bad.csv, line 3: byte 0xe9 at column 4 is not UTF-8" in err
    assert not (tmp_path / "o.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.csv")]


def test_non_utf8_text_file_for_lm_names_the_line(capsys, tmp_path, classifier_dir):
    (tmp_path / "t.txt").write_bytes(b"one\ntwo\nthr\xffee\n")
    code, _, err = _cli(capsys, "evaluate", classifier_dir, "--task", "lm", "--data", tmp_path / "t.txt")
    assert code == 2 and "t.txt, line 3: byte 0xff is not UTF-8" in err


@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_missing_input_file_is_named(capsys, tmp_path, classifier_dir, command):
    missing = tmp_path / "nope.csv"
    if command == "classify":
        args = ["classify", classifier_dir, "--input-file", missing, "--output-file", tmp_path / "o.csv"]
    else:
        args = ["evaluate", classifier_dir, "--task", "classification", "--data", missing]
    code, _, err = _cli(capsys, *args)
    assert code == 2 and f"{missing} does not exist" in err


def test_missing_model_fails_with_exit_code(tmp_path):
    proc = run_cli("classify", str(tmp_path / "no-model"), "hello")
    assert proc.returncode == 2 and "no-model does not exist" in proc.stderr


def test_existing_output_is_kept_without_force(capsys, tmp_path, classifier_dir):
    src = _write_csv(tmp_path / "in.csv", ["text"], [["hello"]])
    out = tmp_path / "out.csv"
    out.write_text("keep me", encoding="utf-8")
    code, _, err = _cli(capsys, "classify", classifier_dir, "--input-file", src, "--output-file", out)
    assert code == 2 and "out.csv already exists" in err and out.read_text(encoding="utf-8") == "keep me"
    code, _, err = _cli(
        capsys, "classify", classifier_dir, "--input-file", src, "--output-file", out, "--force"
    )
    assert code == 0, err
    assert out.read_text(encoding="utf-8").startswith("text,label,score")


@pytest.mark.parametrize("bad_row", [["hello"], ["hello", "ham", "7", "extra"]], ids=["short", "long"])
@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_a_row_with_too_few_or_too_many_fields_is_refused_and_writes_nothing(
    capsys, tmp_path, classifier_dir, command, bad_row
):
    """A CSV row whose field count is not the header's is an error naming the line (as finetune's), not an
    output row whose prediction lands under another column."""
    src = tmp_path / "in.csv"
    src.write_text("text,label,id\nfree prize,spam,1\n" + ",".join(bad_row) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    options = (
        ["--input-file", src, "--output-file", out]
        if command == "classify"
        else ["--task", "classification", "--data", src]
    )
    code, _, err = _cli(capsys, command, classifier_dir, *options)
    assert code == 2 and f"in.csv, line 3: the row has {len(bad_row)} fields but the header names 3" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "rows, message",
    [
        ([["hello"], [""]], "in.csv, line 3: the text is empty"),
        ([["hello"]], None),
    ],
)
def test_empty_text_and_bad_max_length(capsys, tmp_path, classifier_dir, rows, message):
    src = _write_csv(tmp_path / "in.csv", ["text"], rows)
    out = tmp_path / "out.csv"
    if message is None:  # a valid file, but --max-length beyond the model's context
        args = ["--max-length", "999"]
        message = "--max-length 999 must be between 1 and the model's n_positions=128"
    else:
        args = []
    code, _, err = _cli(capsys, "classify", classifier_dir, "--input-file", src, "--output-file", out, *args)
    assert code == 2 and message in err and not out.exists()


def test_empty_csv_and_no_input(capsys, tmp_path, classifier_dir):
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    code, _, err = _cli(
        capsys, "evaluate", classifier_dir, "--task", "classification", "--data", tmp_path / "empty.csv"
    )
    assert code == 2 and "empty.csv is empty" in err
    code, _, err = _cli(capsys, "classify", classifier_dir)
    assert code == 2 and "Nothing to classify" in err


def test_malformed_csv_names_the_line(capsys, tmp_path, classifier_dir):
    src = tmp_path / "broken.csv"
    src.write_text('text,label\nhello,ham\n"quoted"tail,spam\n', encoding="utf-8")
    code, _, err = _cli(capsys, "evaluate", classifier_dir, "--task", "classification", "--data", src)
    assert code == 2 and "broken.csv, line 3: not valid CSV" in err


def test_a_text_longer_than_the_csv_module_default_field_limit(capsys, tmp_path, classifier_dir, reference):
    long_text = "spam and eggs " * 20_000  # 280,000 characters, over csv's default 131,072 limit
    src = _write_csv(tmp_path / "long.csv", ["text"], [[long_text], ["short"]])
    out = tmp_path / "out.csv"
    code, _, err = _cli(capsys, "classify", classifier_dir, "--input-file", src, "--output-file", out)
    assert code == 0, err
    assert "1 of 2 texts were longer than 128 tokens and kept their first 128 tokens" in err
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert float(rows[1][2]) == pytest.approx(float(reference(long_text).max()), abs=2e-6)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, vocab_dir):
    """A causal LM folder: no classification head."""
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=50257))
    return save_model_folder(model, tmp_path_factory.mktemp("models") / "lm", vocab_dir)


@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_a_model_without_a_trained_head_is_refused(capsys, tmp_path, lm_dir, command):
    """Loaded as a classifier, a causal LM gets a random head: classify refuses it as evaluate does."""
    data = _write_csv(tmp_path / "in.csv", ["text", "label"], [["hello", "LABEL_0"]])
    args = ["hello"] if command == "classify" else ["--task", "classification", "--data", data]
    code, out, err = _cli(capsys, command, lm_dir, *args)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"{lm_dir} is a GPT2ScratchForCausalLM" in err and "no trained classification head" in err


def test_output_file_has_the_mode_open_gives(capsys, tmp_path, classifier_dir):
    src = _write_csv(tmp_path / "in.csv", ["text"], [["hello"]])
    out = tmp_path / "out.csv"
    old = os.umask(0o022)
    try:
        code, _, err = _cli(capsys, "classify", classifier_dir, "--input-file", src, "--output-file", out)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "records, extra, message",
    [
        ([{"instruction": "Say hi."}], [], "no 'output' field"),
        ([{"instruction": "Say hi.", "output": "hi"}], ["--max-new-tokens", "0"], "--max-new-tokens must be"),
        (
            [{"instruction": "Say hi.", "output": "hi"}],
            ["--output-file", "kept.json"],
            "kept.json already exists",
        ),
        (
            [{"instruction": "Say hi.", "output": "hi"}],
            ["--task", "lm", "--output-file", "x.json"],
            "--task instruction",
        ),
    ],
)
def test_evaluate_instruction_errors_write_nothing(
    records, extra, message, capsys, tmp_path, lm_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.json").write_text(json.dumps(records))
    (tmp_path / "kept.json").write_text("old")
    args = ["evaluate", lm_dir, "--task", "instruction", "--data", "data.json", *extra]
    code, out, err = _cli(capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "kept.json"]
    assert (tmp_path / "kept.json").read_text() == "old"


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_at_a_terminal_only(terminal, capsys, tmp_path, classifier_dir, monkeypatch):
    """A bar counting the texts while a file is classified, where stderr is a terminal; none in a log or pipe."""
    monkeypatch.setattr("gpt2scratch.cli.live_terminal", lambda: terminal)
    src = _write_csv(tmp_path / "in.csv", ["text"], [[t] for t in TEXTS * 4])
    code, _, err = _cli(capsys, "classify", classifier_dir, "--input-file", src, "--output-file",
                        tmp_path / "out.csv", "--batch-size", "8")  # fmt: skip
    assert code == 0, err
    assert ("classify: 0 texts" in err) == terminal, err  # drawn at the start, then redrawn as it goes
    assert err.splitlines()[-1] == f"gpt2scratch classify: wrote 20 rows to {tmp_path / 'out.csv'}"
