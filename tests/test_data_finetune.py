"""Training data and options: the SMS download (local server), splits, truncation, YAML options, the
configs/ folder, and every kind of bad input → exit code 2 with a message naming file/row/column and no
output folder touched."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from http_fixtures import http_server

from gpt2scratch.cli import main as cli_main
from gpt2scratch.training import data
from gpt2scratch.training.args import TrainArgs, load_yaml, parse_args

pytestmark = pytest.mark.xdist_group("finetune_data")
REPO = Path(__file__).resolve().parents[1]


def sms_zip(text: bytes) -> bytes:
    """A zip laid out like UCI's archive: the collection plus its readme."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("SMSSpamCollection", text)
        zf.writestr("readme", b"SMS Spam Collection v.1")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sms_bytes(shared_data) -> bytes:
    return (shared_data / "sms_spam/SMSSpamCollection").read_bytes()


def test_download_sms_spam_unzips_the_uci_archive(sms_bytes, tmp_path):
    with http_server({"/uci.zip": sms_zip(sms_bytes)}) as url:
        path = data.download_sms_spam(tmp_path, urls=(f"{url}/uci.zip", f"{url}/backup.zip"))
        assert [r[1] for r in url.requests if r[0] == "GET"] == ["/uci.zip"]
    assert path == tmp_path / "SMSSpamCollection" and path.read_bytes() == sms_bytes


def test_download_sms_spam_falls_back_to_the_backup_url(sms_bytes, tmp_path):
    with http_server({"/backup.zip": sms_zip(sms_bytes)}) as url:
        path = data.download_sms_spam(tmp_path, urls=(f"{url}/uci.zip", f"{url}/backup.zip"))
        assert [r[1] for r in url.requests if r[0] == "GET"][-1] == "/backup.zip"
    assert path.read_bytes() == sms_bytes
    assert len(data.read_table(path)) == 5574


def test_download_rejects_an_archive_without_the_collection(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("other.txt", b"x")
    with (
        http_server({"/uci.zip": buffer.getvalue()}) as url,
        pytest.raises(ValueError, match="no SMSSpamCollection"),
    ):
        data.download_sms_spam(tmp_path, urls=(f"{url}/uci.zip",))


def _args(**kw) -> SimpleNamespace:
    base = dict(
        task="classification",
        dataset=None,
        train_file=None,
        validation_file=None,
        test_file=None,
        text_column=None,
        label_column="label",
        balance=False,
        split_seed=123,
    )
    return SimpleNamespace(**{**base, **kw})


def test_sms_split_is_deterministic_balanced_70_10_20(shared_data):
    path = str(shared_data / "sms_spam/SMSSpamCollection")
    first = data.load_splits(_args(train_file=path, balance=True))
    again = data.load_splits(_args(train_file=path, balance=True))
    sizes = {k: len(v) for k, v in first.splits.items()}
    assert sizes == {"train": 1045, "validation": 149, "test": 300}  # 747 spam + 747 ham
    assert first.label_names == ["ham", "spam"]
    for name in sizes:
        assert first.splits[name]["_row"] == again.splits[name]["_row"]
    rows = [set(first.splits[n]["_row"]) for n in sizes]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_instruction_split_85_5_10_and_prompt(shared_data, vocab_dir):
    from gpt2scratch.tokenizer import load_encoding

    raw = data.load_splits(
        _args(task="instruction", train_file=str(shared_data / "instruction/instruction-data.json"))
    )
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 935, "validation": 55, "test": 110}
    prompt = data.format_prompt("Name a colour.", "")
    assert (
        prompt.endswith("### Instruction:\nName a colour.\n\n### Response:\n") and "### Input" not in prompt
    )
    tokens = data.tokenize_splits(raw, "instruction", load_encoding(vocab_dir), max_length=1024)
    row, record = tokens["train"][0], raw.splits["train"][0]
    enc = load_encoding(vocab_dir)
    n_prompt = len(enc.encode(data.format_prompt(record["instruction"], record["input"])))
    assert row["labels"][:n_prompt] == [-100] * n_prompt  # loss on the response only
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:] and row["input_ids"][-1] == 50256
    assert enc.decode(row["input_ids"][n_prompt:-1]) == record["output"]


def test_truncation_keeps_the_first_tokens_and_is_logged(tmp_path, vocab_dir, caplog):
    from gpt2scratch.tokenizer import load_encoding

    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "word " * 50 + ",a\nshort,b\nother,a\n", encoding="utf-8")
    raw = data.load_splits(_args(train_file=str(csv), test_file=str(csv), validation_file=str(csv)))
    enc = load_encoding(vocab_dir)
    with caplog.at_level(logging.WARNING, logger="gpt2scratch"):
        tokens = data.tokenize_splits(raw, "classification", enc, max_length=8)
    assert tokens["train"][0]["input_ids"] == enc.encode("word " * 50)[:8]
    assert "train: 1 of 3 examples are longer than 8 tokens and were truncated" in caplog.text


def test_lm_packs_blocks_of_max_length(shared_data, vocab_dir):
    from gpt2scratch.tokenizer import load_encoding

    raw = data.load_splits(_args(task="lm", train_file=str(shared_data / "corpora/the-verdict.txt")))
    enc = load_encoding(vocab_dir)
    tokens = data.tokenize_splits(raw, "lm", enc, max_length=32)
    assert all(len(r) == 32 for r in [*tokens["train"]["input_ids"], *tokens["validation"]["input_ids"]])
    text = (shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8")
    assert enc.decode(tokens["train"][0]["input_ids"]) == enc.decode(enc.encode(text)[:32])
    assert len(tokens["validation"]) == int(0.1 * (len(tokens["train"]) + len(tokens["validation"])))


def test_collate_pads_right_with_masks():
    batch = data.collate([{"input_ids": [1, 2, 3], "labels": [5, 6, 7]}, {"input_ids": [4], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 50256, 50256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert data.collate([{"input_ids": [1], "labels": 1}])["labels"].tolist() == [1]


# ----------------------------------------------------------------------------------------- options


def test_yaml_config_is_overridden_by_the_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "lr: 0.01\nmax-steps: 7\nlora_target_modules: [c_attn]\ntrain_file: a.csv\n", encoding="utf-8"
    )
    args = parse_args(["--config", str(config), "--lr", "0.5", "--output-dir", "o"])
    assert (args.lr, args.max_steps, args.target_modules, args.train_file) == (0.5, 7, ["c_attn"], "a.csv")
    config.write_text("learning_rate: 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        load_yaml(config)
    config.write_text("max_steps: many\n", encoding="utf-8")
    with pytest.raises(ValueError, match="max_steps must be an integer"):
        load_yaml(config)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--merge"], "--merge only applies to --method lora"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--resume-from", "runs/x/checkpoint-99"], "--resume-from runs/x/checkpoint-99: no such checkpoint"),
        (["--push-to-hub", "not a repo"], "--push-to-hub 'not a repo' is not a Hub repository id"),
    ],
)
def test_invalid_options_name_the_option(options, message):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        parse_args(["--train-file", "a.csv", "--output-dir", "o", *options])
    assert message in str(e.value)
    if "--resume-from" in options:  # named first, even without the options a resume takes from its run
        with pytest.raises(FileNotFoundError, match="no such checkpoint"):
            parse_args(["--output-dir", "o", *options])


def test_every_config_file_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        if path.name.startswith("accelerate_"):
            config = load_config_from_file(str(path))
            assert config.num_processes >= 1, path
        else:
            TrainArgs(**{**load_yaml(path), "output_dir": "o"}).validate()


# ----------------------------------------------------------------------------------------- bad input


@pytest.fixture
def existing_output(tmp_path) -> Path:
    """An output folder that must survive every failed run, even with --force."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    return out


def fails(capsys, *options: str, output: Path) -> str:
    """Run ``gpt2scratch finetune`` expecting exit code 2; return its error message."""
    code = cli_main(["finetune", "--output-dir", str(output), "--force", "--max-steps", "1", *options])
    assert code == 2
    assert (output / "keep.txt").read_text() == "precious"
    return capsys.readouterr().err


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


CSV = "text,label\nhello there,ham\nwin a prize,spam\nsee you,ham\nfree cash,spam\n"


def test_missing_file(capsys, existing_output, tmp_path):
    err = fails(capsys, "--train-file", str(tmp_path / "nope.csv"), output=existing_output)
    assert "nope.csv: no such file" in err


def test_empty_file(capsys, existing_output, tmp_path):
    err = fails(capsys, "--train-file", str(write(tmp_path / "empty.csv", "")), output=existing_output)
    assert "empty.csv is empty" in err


def test_missing_text_column(capsys, existing_output, tmp_path):
    path = write(tmp_path / "t.csv", CSV.replace("text,", "message,"))
    err = fails(capsys, "--train-file", str(path), output=existing_output)
    assert "t.csv: no column 'text' (--text-column)" in err and "'message'" in err


def test_missing_label_column(capsys, existing_output, tmp_path):
    path = write(tmp_path / "t.csv", CSV)
    err = fails(capsys, "--train-file", str(path), "--label-column", "category", output=existing_output)
    assert "no column 'category' (--label-column)" in err


def test_empty_text_value_names_the_row(capsys, existing_output, tmp_path):
    path = write(tmp_path / "t.csv", CSV + ",ham\n")
    err = fails(capsys, "--train-file", str(path), output=existing_output)
    assert "t.csv, row 5, column 'text'" in err


def test_numbers_in_the_text_column_are_refused(capsys, existing_output, tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": 12, "label": "ham"}\n{"text": 7, "label": "spam"}\n')
    err = fails(capsys, "--train-file", str(path), output=existing_output)
    assert "t.jsonl: column 'text' was read as Value('int64'), not as text" in err


def test_label_unseen_in_training(capsys, existing_output, tmp_path):
    train = write(tmp_path / "train.csv", CSV)
    test = write(tmp_path / "test.csv", "text,label\nhi,ham\nbuy now,scam\n")
    err = fails(
        capsys,
        "--train-file",
        str(train),
        "--validation-file",
        str(train),
        "--test-file",
        str(test),
        output=existing_output,
    )
    assert "test.csv, row 2, column 'label': label 'scam' never occurs in the training data" in err


def test_non_utf8_bytes_name_the_line(capsys, existing_output, tmp_path):
    path = write(tmp_path / "latin1.csv", CSV.encode() + "caf\xe9 ol\xe9,ham\n".encode("latin-1"))
    err = fails(capsys, "--train-file", str(path), output=existing_output)
    assert "latin1.csv, line 6: bytes that are not UTF-8" in err


def test_instruction_record_without_output(capsys, existing_output, tmp_path):
    records = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}]
    path = write(tmp_path / "i.json", json.dumps(records))
    err = fails(capsys, "--task", "instruction", "--train-file", str(path), output=existing_output)
    assert "i.json, row 2, column 'output'" in err


def test_nonexistent_resume_from(capsys, existing_output, tmp_path):
    path = write(tmp_path / "t.csv", CSV)
    err = fails(
        capsys,
        "--train-file",
        str(path),
        "--resume-from",
        str(tmp_path / "checkpoint-9"),
        output=existing_output,
    )
    assert "checkpoint-9: no such checkpoint folder" in err


def test_script_exits_nonzero_with_one_line(tmp_path):
    """scripts/finetune.py as a user runs it: exit code 2 and the message, no traceback."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/finetune.py"),
            "--train-file",
            str(tmp_path / "missing.csv"),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "missing.csv: no such file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_dataset_uci_sms_spam_downloads_once_into_the_cache(sms_bytes, tmp_path, monkeypatch):
    with http_server({"/backup.zip": sms_zip(sms_bytes)}) as url:
        monkeypatch.setattr(data, "SMS_URLS", (f"{url}/uci.zip", f"{url}/backup.zip"))
        monkeypatch.setenv("GPT2SCRATCH_CACHE", str(tmp_path))
        raw = data.load_splits(_args(dataset="uci:sms_spam", balance=True))
        again = data.load_splits(_args(dataset="uci:sms_spam", balance=True))
        assert sum(1 for r in url.requests if r[0] == "GET") == 2  # the 404 and the backup, once
    assert {k: len(v) for k, v in raw.splits.items()} == {"train": 1045, "validation": 149, "test": 300}
    assert raw.splits["test"]["_row"] == again.splits["test"]["_row"]


def test_an_unknown_uci_dataset_names_the_one_known():
    """``--dataset uci:foo`` is not looked for as a file (nor on the Hub): the error names ``uci:sms_spam``."""
    from types import SimpleNamespace

    from gpt2scratch.training.data import load_splits

    with pytest.raises(ValueError, match="the one UCI dataset known here is uci:sms_spam"):
        load_splits(SimpleNamespace(dataset="uci:foo"))
