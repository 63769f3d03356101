"""Training and scoring data at the edges: files too small to split, files with a header and no rows, and
the one table reader (:func:`gpt2scratch.training.data.open_table`) that ``finetune``, ``classify`` and
``evaluate`` share, on every layout it reads (CSV, TSV, the SMS Spam Collection's ``label<TAB>text``)."""

from __future__ import annotations

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
