"""Training and scoring data at the edges: files too small to split, files with a header and no rows, and
the one table reader (:func:`gpt2scratch.training.data.open_table`) that ``finetune``, ``classify`` and
``evaluate`` share, on every layout it reads (CSV, TSV, the SMS Spam Collection's ``label<TAB>text``)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from test_classify_evaluate import classifier_dir  # noqa: F401 (a fixture)
from test_data_finetune import _args

from gpt2scratch.cli import main as cli_main
from gpt2scratch.training import data

pytestmark = pytest.mark.xdist_group("finetune_data")

SMS_LINES = 'ham\tSee you at 5 "sharp"\nspam\tWIN\ta prize, call now\r\n\nham\tok lor "\n'


def _csv(path, n_rows: int):
    rows = [f"text number {i},{'ab'[i % 2]}" for i in range(n_rows)]
    path.write_text("\n".join(["text,label", *rows]) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- splits


def test_three_rows_are_too_few_for_a_70_10_20_split(tmp_path):
    path = _csv(tmp_path / "tiny3.csv", 3)
    with pytest.raises(ValueError) as info:
        data.load_splits(_args(train_file=str(path)))
    message = str(info.value)
    assert "tiny3.csv: 3 rows are too few to split 70%/10%/20%" in message
    assert "at least 4 rows" in message and "--validation-file" in message


def test_the_fewest_rows_named_in_the_error_do_split_with_no_empty_part(tmp_path):
    for fractions in (
        data.SPLIT_FRACTIONS["classification"],
        data.SPLIT_FRACTIONS["instruction"],
        (0.9, 0.1),
    ):
        n = data.min_rows(fractions)
        parts = data.split_rows(Dataset.from_dict({"x": list(range(n))}), fractions, seed=1)
        assert [len(p) for p in parts] == data.split_sizes(n, fractions) and min(map(len, parts)) == 1
        with pytest.raises(ValueError, match=f"{n - 1} rows are too few"):
            data.split_rows(Dataset.from_dict({"x": list(range(n - 1))}), fractions, seed=1)


def test_balance_is_named_when_it_left_too_few_rows(tmp_path):
    path = tmp_path / "skewed.csv"
    path.write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(9)) + "u,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"skewed.csv \(after --balance\): 2 rows are too few"):
        data.load_splits(_args(train_file=str(path), balance=True))


def test_finetune_on_a_three_row_csv_exits_2_with_the_message(tmp_path, capsys):
    """The user's walkthrough: ``finetune --task classification --model init:tiny --train-file tiny3.csv``."""
    path = _csv(tmp_path / "tiny3.csv", 3)
    out = tmp_path / "run"
    code = cli_main(
        ["finetune", "--task", "classification", "--model", "init:tiny", "--train-file", str(path)]
        + ["--output-dir", str(out), "--max-steps", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "3 rows are too few" in err and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------------------- files with no rows


@pytest.mark.parametrize(
    "name, content",
    [("h.csv", "text,label\n"), ("h.tsv", "text\tlabel\n"), ("h.json", "[]"), ("h.csv", "text,label\n\n\n")],
)
def test_a_header_without_rows_is_named_as_such(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"h\.(csv|tsv|json) has no rows") as info:
        data.read_table(path)
    assert "corresponds to no data" not in str(info.value)


# ----------------------------------------------------------------------------------------- one table reader


def _streamed(path) -> list[dict]:
    with data.open_table(path) as table:
        return [dict(zip(table.header, row, strict=True)) for _, row in table.rows]


@pytest.mark.parametrize(
    "name, content",
    [
        ("t.csv", 'text,label\n"a, quoted\nnewline",ham\nplain,spam\n'),
        ("t.tsv", "label\ttext\nham\thello there\nspam\twin 007\n"),
        ("t.tab", "label\ttext\nham\thello\n"),
        ("SMSSpamCollection", SMS_LINES),
    ],
)
def test_finetune_reads_a_table_exactly_as_classify_and_evaluate_stream_it(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    rows = data.read_table(path).remove_columns([data.ROW]).to_list()
    assert rows == _streamed(path) and rows


def test_sms_layout_keeps_quotes_and_tabs_in_the_text(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(SMS_LINES.encode("utf-8"))
    with data.open_table(path) as table:
        assert table.header == ["label", "text"]
        got = list(table.rows)
    assert got == [
        (1, ["ham", 'See you at 5 "sharp"']),
        (2, ["spam", "WIN\ta prize, call now"]),
        (4, ["ham", 'ok lor "']),
    ]


def test_the_real_sms_collection_streams_with_its_5574_rows(shared_data):
    rows = _streamed(shared_data / "sms_spam/SMSSpamCollection")
    assert len(rows) == 5574 and {r["label"] for r in rows} == {"ham", "spam"}
    assert sum(r["label"] == "spam" for r in rows) == 747


def test_a_row_with_the_wrong_number_of_fields_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,ham\nhi, there,spam\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.csv, line 3: the row has 3 fields but the header names 2"):
        data.read_table(path)


def test_a_json_file_is_not_a_table_for_classify(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "hi", "label": "ham"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"t.jsonl: a .jsonl file is not a table"):
        with data.open_table(path):
            pass


def test_evaluate_and_classify_read_the_sms_layout(tmp_path, capsys, classifier_dir):  # noqa: F811
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(SMS_LINES.encode("utf-8"))
    code = cli_main(["evaluate", str(classifier_dir), "--task", "classification", "--data", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"examples": 3' in out
    code = cli_main(
        ["classify", str(classifier_dir), "--input-file", str(path), "--output-file", str(tmp_path / "o.csv")]
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o.csv").read_text(encoding="utf-8").startswith("label,text,predicted_label")


def test_a_column_named_twice_in_the_header_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label,text\nhello,ham,again\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"t.csv: the header names the column\(s\) \['text'\] more than once"
    ):
        data.read_table(path)


# ----------------------------------------------------------------------------------------- JSON values that are not strings


def _records(path, records: list[dict]):
    """``records`` as a JSON array (.json) or JSON lines (.jsonl), by the suffix of ``path``."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, label_of, names",
    [
        ("ints.json", lambda i: i % 2, ["0", "1"]),
        ("ints.jsonl", lambda i: i % 2, ["0", "1"]),
        ("mixed.json", lambda i: i % 2 if i % 3 else str(i % 2), ["0", "1"]),
        ("mixed.jsonl", lambda i: str(i % 2) if i % 3 else i % 2, ["0", "1"]),
        ("tens.json", lambda i: 10 * (i % 3) - 10, ["-10", "0", "10"]),
        ("bools.jsonl", lambda i: bool(i % 2), ["False", "True"]),
    ],
)
def test_json_labels_that_are_numbers_or_booleans_are_read_as_their_text(tmp_path, name, label_of, names):
    """The usual JSONL layout ``{"text": ..., "label": 1}``: the labels are the same as in the equivalent CSV
    file (``1`` as ``"1"``, ``true`` as ``"True"``), never ints that ``label_names`` cannot sort."""
    rows = [{"text": f"text number {i}", "label": label_of(i)} for i in range(12)]
    csv_path = tmp_path / "same.csv"
    csv_path.write_text(
        "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows), encoding="utf-8"
    )
    from_json = data.load_splits(_args(train_file=str(_records(tmp_path / name, rows))))
    from_csv = data.load_splits(_args(train_file=str(csv_path)))
    assert from_json.label_names == from_csv.label_names == names
    for split, ds in from_json.splits.items():
        assert ds["label"] == from_csv.splits[split]["label"]
        assert all(isinstance(label, str) for label in ds["label"])


def test_a_label_column_of_another_name_holding_ints_is_read_as_text(tmp_path):
    rows = [{"text": f"t{i}", "spam": i % 2} for i in range(12)]
    raw = data.load_splits(_args(train_file=str(_records(tmp_path / "t.jsonl", rows)), label_column="spam"))
    assert raw.label_names == ["0", "1"] and set(raw.splits["train"]["label"]) == {"0", "1"}


def test_finetune_on_jsonl_with_integer_labels_trains(tmp_path, capsys, vocab_dir):
    path = _records(tmp_path / "cint.jsonl", [{"text": f"win cash {i}", "label": i % 2} for i in range(10)])
    out = tmp_path / "run"
    code = cli_main(
        ["finetune", "--task", "classification", "--model", "init:tiny", "--train-file", str(path)]
        + ["--tokenizer-dir", str(vocab_dir), "--max-length", "32", "--batch-size", "2"]
        + ["--output-dir", str(out), "--max-steps", "1"]
    )
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["id2label"] == {"0": "0", "1": "1"}


def _alpaca(n: int = 6) -> list[dict]:
    return [{"instruction": f"Add {i} and 1", "input": "", "output": f"{i + 1}"} for i in range(n)]


@pytest.mark.parametrize(
    "name, change, where",
    [
        ("all.json", lambda r, i: r.update(output=i + 1), r"record 1, field 'output': the value 1 \(int\)"),
        # a column of mixed types: datasets reads the strings "1" and "null" back as 1 and None
        ("one.json", lambda r, i: i == 3 and r.update(output=4), r"record 4, field 'output': the value 4"),
        (
            "mix.json",
            lambda r, i: r.update(output=["2", "null", 4][i % 3]),
            r"record 3, field 'output': the value 4",
        ),
        ("one.jsonl", lambda r, i: i == 2 and r.update(input=5), r"record 3, field 'input': the value 5"),
        ("ins.jsonl", lambda r, i: i == 4 and r.update(instruction=1.5), r"record 5, field 'instruction'"),
        ("list.json", lambda r, i: i == 0 and r.update(output=["a"]), r"record 1, field 'output'"),
    ],
)
def test_an_alpaca_field_that_is_not_a_string_names_the_record(tmp_path, name, change, where):
    """As an int text column is refused for classification: a one-line error, not tiktoken's TypeError."""
    records = _alpaca()
    for i, record in enumerate(records):
        change(record, i)
    path = _records(tmp_path / name, records)
    with pytest.raises(ValueError, match=rf"{name}, {where}.*not text.*quote numbers"):
        data.load_splits(_args(task="instruction", train_file=str(path)))


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_finetune_and_evaluate_refuse_a_numeric_alpaca_output_with_exit_2(
    tmp_path, capsys, vocab_dir, command
):
    path = _records(tmp_path / "alpaca.json", [{"instruction": "Add 1 and 1", "input": "", "output": 2}] * 6)
    out = tmp_path / "run"
    common = ["--task", "instruction", "--tokenizer-dir", str(vocab_dir), "--max-length", "32"]
    if command == "finetune":
        argv = ["finetune", "--model", "init:tiny", "--train-file", str(path), "--output-dir", str(out)]
    else:
        argv = ["evaluate", "init:tiny", "--data", str(path)]
    code = cli_main(argv + common)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "alpaca.json, record 1, field 'output': the value 2 (int) is not text" in err
    assert not out.exists()
