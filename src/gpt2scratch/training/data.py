"""Training data: files (or a hub id) → checked ``datasets`` splits → token ids → padded batches.

Formats, chosen by the file's suffix: ``.csv``; ``.tsv``/``.tab`` (tab-separated with a header);
``.json``/``.jsonl``; ``.txt`` (plain text, for ``lm``); and the SMS Spam Collection layout
(``label<TAB>text`` per line, no header), used for a file without a suffix such as ``SMSSpamCollection``.
Rows are counted from 1, not counting a header line.

The three table layouts (CSV, TSV, SMS) are read by one streaming reader, :func:`open_table`, used by
``finetune`` (through :func:`read_table`) and by ``classify --input-file`` and ``evaluate``, so a file
that one command reads, the others read the same way: every cell as the string in the file.

Splits, when only ``--train-file`` is given: classification 70/10/20 (train/validation/test),
instruction 85/5/10, otherwise a deterministic 10% of the training rows becomes the validation split
(for ``lm``: the last 10% of the packed blocks). The shuffle uses ``--split-seed``, not ``--seed``, so
the test set stays put when the training seed changes.

Truncation rule: an example longer than ``--max-length`` tokens keeps its first ``max_length``
tokens (classification pools the last kept token; an instruction example keeps its prompt and loses
the end of its response). The number of truncated examples is logged per split; instruction examples
left with no response token are dropped from training (also logged).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..tokenizer import ENDOFTEXT_ID, encode_batch, encoding_digest

log = logging.getLogger(__name__)

SMS_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
)
SMS_FILE = "SMSSpamCollection"
SMS_DATASET = "uci:sms_spam"  # --dataset value that downloads the SMS Spam Collection (cached)
PAD_ID = ENDOFTEXT_ID
IGNORE_INDEX = -100
ALPACA_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
SPLIT_FRACTIONS = {"classification": (0.7, 0.1, 0.2), "instruction": (0.85, 0.05, 0.1)}
HOLDOUT_FRACTION = 0.1
READERS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "json", ".txt": "text"}
TABLE_KINDS = ("csv", "tsv", "sms")  # the layouts open_table streams
SMS_HEADER = ["label", "text"]
FIELD_LIMIT = 1 << 24  # characters in one CSV field (the csv module's default, 128 KiB, is too small)
ROW = "_row"  # 1-based row number in the source file, kept for error messages


@dataclass
class RawSplits:
    """Untokenised splits with standard columns, the file each came from, and whether we split them."""

    splits: dict  # name ("train", "validation", "test") -> datasets.Dataset
    sources: dict[str, str]
    was_split: bool = False
    label_names: list[str] = field(default_factory=list)


def splits_digest(raw: RawSplits) -> dict[str, dict]:
    """Each split's row count and the SHA-256 of its rows: what a resume compares (:func:`check_same_data`)."""
    digest = {}
    for name, ds in raw.splits.items():
        h = hashlib.sha256()
        for rows in ds.iter(batch_size=1000):
            h.update(json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest[name] = {"rows": len(ds), "sha256": h.hexdigest()}
    return digest


def check_same_data(recorded: dict | None, raw: RawSplits, resume_from: str) -> dict[str, dict]:
    """The digest of ``raw`` (:func:`splits_digest`), after refusing a resume whose data differ from
    ``recorded``, those its run started with (None: a checkpoint written before they were recorded)."""
    digest = splits_digest(raw)
    changed = [
        f"{name} ({recorded[name]['rows']} rows then, {digest[name]['rows'] if name in digest else 'none'} now, "
        f"read from {raw.sources.get(name, raw.sources['train'])})"
        for name in (recorded or {})
        if recorded[name] != digest.get(name)
    ]
    if changed:
        raise ValueError(
            f"--resume-from {resume_from}: the data differ from those the run started with: {'; '.join(changed)}. "
            "A resumed run trains on its own data: restore them, or start a new run in another --output-dir."
        )
    return digest


def check_same_tokenizer(recorded: dict | None, encoding, resume_from: str, folder: Path) -> dict:
    """The digest of ``encoding`` (:func:`..tokenizer.encoding_digest`), after refusing a resume whose
    vocabulary differs from ``recorded``, the one its run started with (None: not recorded)."""
    digest = encoding_digest(encoding)
    if recorded is not None and recorded != digest:
        raise ValueError(
            f"--resume-from {resume_from}: the tokenizer in {folder} ({digest['tokens']} tokens) is not the one "
            f"the run started with ({recorded['tokens']} tokens, other tokens or ranks). A resumed run keeps its "
            "tokenizer: restore those files, or start a new run in another --output-dir."
        )
    return digest


# ----------------------------------------------------------------------------------------- reading files


def check_text_file(path: str | os.PathLike) -> Path:
    """The path, once it is known to be an existing, non-empty, UTF-8 file; else an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file.")
    if not path.is_file():
        raise ValueError(f"{path} is not a file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: it holds no rows.")
    decoder, line, blank = codecs.getincrementaldecoder("utf-8")(), 1, True
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line += chunk[: e.start].count(b"\n")
                raise ValueError(
                    f"{path}, line {line}: bytes that are not UTF-8 ({chunk[e.start : e.start + 4]!r}). "
                    "Re-save the file as UTF-8."
                ) from None
            line += chunk.count(b"\n")
            blank = blank and not text.strip()
    if blank:
        raise ValueError(f"{path} is empty: it holds only whitespace.")
    return path


def file_kind(path: Path) -> str:
    """The layout of ``path`` from its suffix (see the module docstring); an error for an unknown suffix."""
    kind = READERS.get(path.suffix.lower(), "sms" if not path.suffix else None)
    if kind is None:
        raise ValueError(f"{path}: unknown format {path.suffix!r}; use .csv, .tsv, .json, .jsonl or .txt.")
    return kind


def read_table(path: str | os.PathLike):
    """A ``datasets.Dataset`` of the file's rows (format from the suffix), with a ``_row`` column."""
    path = check_text_file(path)
    kind = file_kind(path)
    ds = _read_delimited(path) if kind in TABLE_KINDS else _load_with_datasets(path, kind)
    if len(ds) == 0:
        raise ValueError(f"{path} has no rows, only a header line; add one row per example below it.")
    return ds.add_column(ROW, list(range(1, len(ds) + 1)))


def _read_delimited(path: Path):
    """A CSV, TSV or SMS file as a ``Dataset`` of strings, read by :func:`open_table`."""
    from datasets import Dataset

    with open_table(path) as table:
        repeated = sorted({name for name in table.header if table.header.count(name) > 1})
        if repeated:
            raise ValueError(
                f"{path}: the header names the column(s) {repeated} more than once; rename them."
            )
        rows = [table.full_row(line, row) for line, row in table.rows]
    return Dataset.from_dict({name: [r[i] for r in rows] for i, name in enumerate(table.header)})


@dataclass
class Table:
    """A table file being streamed: its header and an iterator of (line number, row of strings)."""

    path: Path
    header: list[str]
    rows: Iterator[tuple[int, list[str]]]

    def column(self, name: str, option: str) -> int:
        """Index of column ``name``; a clear error naming the file and its columns when absent."""
        if name not in self.header:
            raise ValueError(
                f"{self.path} has no column {name!r} (its columns: {', '.join(self.header) or 'none'}); "
                f"pass {option} with one of them."
            )
        return self.header.index(name)

    def full_row(self, line: int, row: list[str]) -> list[str]:
        """``row``, once it is known to have exactly one value per column (a dataset needs every one)."""
        if len(row) != len(self.header):
            raise ValueError(
                f"{self.path}, line {line}: the row has {len(row)} fields but the header names "
                f"{len(self.header)} ({', '.join(self.header)}); quote values that contain the delimiter."
            )
        return row


@contextmanager
def open_table(path: str | os.PathLike) -> Iterator[Table]:
    """Open a CSV, TSV (``.tsv``/``.tab``) or SMS Spam Collection file (no suffix), streamed row by row.

    CSV and TSV files start with a header row; the SMS layout has none and gets the columns ``label`` and
    ``text``. CSV parsing is strict: a quote left open, or text right after a closing quote, is an error
    naming the line rather than rows silently merged into one. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file).")
    kind = file_kind(path)
    if kind not in TABLE_KINDS:
        raise ValueError(
            f"{path}: a {path.suffix} file is not a table; give a .csv, .tsv or SMS Spam Collection file."
        )
    with path.open("rb") as fh:
        lines = _decoded_lines(fh, path)
        if kind == "sms":
            yield Table(path, list(SMS_HEADER), _sms_rows(lines, path))
            return
        csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
        reader = csv.reader(lines, delimiter="\t" if kind == "tsv" else ",", strict=True)
        rows = _csv_rows(reader, path)
        _, header = next(rows, (0, None))
        if not header:
            raise ValueError(
                f"{path} is empty: expected a header row naming the columns, then one row per example."
            )
        yield Table(path, header, rows)


def _decoded_lines(raw_lines, path: Path) -> Iterator[str]:
    """Lines of a binary file decoded as UTF-8 (a leading BOM dropped); a bad byte is an error naming the line."""
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}, line {number}: byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8. "
                "Re-save the file as UTF-8."
            ) from None
        yield line.removeprefix("\ufeff") if number == 1 else line


def _csv_rows(reader, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) for each non-blank row; malformed CSV becomes an error naming the line."""
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as e:
        raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({e}).") from None


def _sms_rows(lines: Iterator[str], path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, [label, text]) of ``label<TAB>text`` lines: no header, no quoting, tabs kept in the text."""
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab:
            raise ValueError(f"{path}, line {number}: expected 'label<TAB>text' (no tab found).")
        yield number, [label.strip(), text]


def _load_with_datasets(path: Path, kind: str):
    """A JSON/JSONL or plain-text file through ``datasets``' own builders."""
    from datasets import load_dataset

    if kind == "json":
        _check_json(path)
    options = {"sample_by": "paragraph"} if kind == "text" else {}
    try:
        return load_dataset(kind, data_files=str(path), split="train", **options)
    except Exception as e:  # malformed JSON: pyarrow errors of many types
        raise ValueError(f"{path}: cannot be read as {kind.upper()}: {e}") from None


def _check_json(path: Path) -> None:
    """Parse a .json/.jsonl file with Python's json first: a clear error naming the line, and pyarrow's reader
    (which crashed the process on one fuzzed file) never sees malformed input."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if _one_document(text):
            raise ValueError(
                f"{path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})."
            ) from None
        data = None
    if isinstance(data, dict) or (isinstance(data, list) and all(isinstance(r, dict) for r in data)):
        if not data:
            raise ValueError(
                f"{path} has no rows: its JSON {type(data).__name__} is empty; add one record per example."
            )
        return  # one JSON document: an array of records (or columns)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}, line {n}: not valid JSON ({e.msg}); expected one JSON object per line."
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}, line {n}: expected a JSON object (a record), got {type(record).__name__}."
            )


def _one_document(text: str) -> bool:
    """Whether ``text`` is meant as one JSON document (an array, or an object spread over lines), not JSON lines."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("["):
        return True
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return first.startswith("{")
    return False


def cache_dir() -> Path:
    """Where downloaded data is kept: ``$GPT2SCRATCH_CACHE``, else ``~/.cache/gpt2scratch``."""
    return Path(os.environ.get("GPT2SCRATCH_CACHE") or Path.home() / ".cache" / "gpt2scratch")


def download_sms_spam(dest_dir: str | os.PathLike, urls: Sequence[str] | None = None) -> Path:
    """``dest_dir/SMSSpamCollection``, downloaded (UCI first, then the backup URL) and unzipped if absent."""
    from ..conversion.download import download_file

    urls = urls or SMS_URLS
    dest_dir = Path(dest_dir)
    target = dest_dir / SMS_FILE
    if target.is_file():
        return target
    hint = f"Check the network, or pass a local copy: --train-file PATH/{SMS_FILE} (unzipped from {urls[0]})"
    archive = download_file(list(urls), dest_dir / "sms_spam_collection.zip", hint=hint)
    try:
        with zipfile.ZipFile(archive) as zf:
            member = next((n for n in zf.namelist() if Path(n).name == SMS_FILE), None)
            if member is None:
                raise ValueError(f"{archive}: the archive has no {SMS_FILE} file (it holds {zf.namelist()}).")
            tmp = target.with_suffix(".part")
            tmp.write_bytes(zf.read(member))
            tmp.replace(target)
    except zipfile.BadZipFile:
        raise ValueError(f"{archive} is not a zip archive; delete it and download again.") from None
    return target


# ----------------------------------------------------------------------------------------- splits


def load_splits(args) -> RawSplits:
    """Read the training data named by ``args`` and return checked train/validation(/test) splits."""
    if args.dataset == SMS_DATASET:
        path = download_sms_spam(cache_dir() / "sms_spam")
        splits, sources = {"train": read_table(path)}, {"train": str(path)}
    elif args.dataset and args.dataset.startswith("uci:"):
        raise ValueError(f"--dataset {args.dataset}: the one UCI dataset known here is {SMS_DATASET}.")
    elif args.dataset:
        splits, sources = _hub_splits(args.dataset)
    else:
        splits = {"train": read_table(args.train_file)}
        sources = {"train": str(args.train_file)}
        for name, path in (("validation", args.validation_file), ("test", args.test_file)):
            if path:
                splits[name], sources[name] = read_table(path), str(path)
    splits = {name: standardise(ds, args, sources[name]) for name, ds in splits.items()}
    raw = RawSplits(splits, sources)
    if args.task == "classification" and args.balance:
        raw.splits["train"] = balance(raw.splits["train"], args.split_seed)
    _split_if_needed(raw, args)
    if args.task == "classification":
        raw.label_names = label_names(raw.splits["train"])
        if len(raw.label_names) < 2:
            raise ValueError(
                f"{sources['train']}: the training data has only the label {raw.label_names}; two are needed."
            )
        for name, ds in raw.splits.items():
            check_labels(ds, raw.label_names, raw.sources[name], args.label_column)
    return raw


def _hub_splits(dataset_id: str):
    """The splits of a Hugging Face Hub dataset (needs the network or the local HF cache)."""
    from datasets import load_dataset

    try:
        loaded = load_dataset(dataset_id)
    except Exception as e:
        raise ValueError(f"--dataset {dataset_id}: cannot be loaded ({e}).") from None
    names = {
        "train": "train",
        "validation": "validation",
        "valid": "validation",
        "val": "validation",
        "test": "test",
    }
    splits = {
        names[k]: v.add_column(ROW, list(range(1, len(v) + 1))) for k, v in loaded.items() if k in names
    }
    if "train" not in splits:
        raise ValueError(f"--dataset {dataset_id} has no 'train' split (it has {list(loaded)}).")
    return splits, {k: f"{dataset_id}[{k}]" for k in splits}


def _split_if_needed(raw: RawSplits, args) -> None:
    """Carve validation (and test) out of train when they were not given (see the module docstring)."""
    splits = raw.splits
    if "validation" in splits or args.task == "lm":
        return
    train = splits["train"]
    source = raw.sources["train"] + (
        " (after --balance)" if args.task == "classification" and args.balance else ""
    )
    if "test" not in splits and args.task in SPLIT_FRACTIONS:
        parts = split_rows(train, SPLIT_FRACTIONS[args.task], args.split_seed, source)
        splits["train"], splits["validation"], splits["test"] = parts
        raw.sources["test"] = raw.sources["train"]
    else:
        splits["train"], splits["validation"] = split_rows(
            train, (1 - HOLDOUT_FRACTION, HOLDOUT_FRACTION), args.split_seed, source
        )
    raw.sources["validation"] = raw.sources["train"]
    raw.was_split = True


def split_rows(ds, fractions: Sequence[float], seed: int, source: str = "the data") -> list:
    """Shuffle ``ds`` with ``seed`` and cut it into consecutive parts of the given fractions (last takes the rest).

    Every part gets at least one row; data too small for that is an error saying how many rows are needed."""
    sizes = split_sizes(len(ds), fractions)
    if min(sizes) < 1:
        shares = "/".join(f"{f:.0%}" for f in fractions)
        raise ValueError(
            f"{source}: {len(ds)} rows are too few to split {shares} with at least one row in every part; "
            f"that needs at least {min_rows(fractions)} rows. Add rows, or pass --validation-file "
            "(and --test-file) to give the held-out rows in files of their own."
        )
    ds = ds.shuffle(seed=seed)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [ds.select(range(a, a + n)) for a, n in zip(starts, sizes, strict=True)]


def split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Rows per part when ``n`` rows are split by ``fractions``: at least 1 for all but the last, which takes
    the rest (0 or less when ``n`` is too small)."""
    sizes = [max(1, int(n * frac)) for frac in fractions[:-1]]
    return sizes + [n - sum(sizes)]


def min_rows(fractions: Sequence[float]) -> int:
    """The fewest rows :func:`split_rows` can split by ``fractions`` with no part empty."""
    n = len(fractions)
    while min(split_sizes(n, fractions)) < 1:
        n += 1
    return n


def balance(ds, seed: int):
    """Down-sample every class to the size of the rarest one (as the seeds do for spam vs ham)."""
    import numpy as np

    labels = np.array(ds["label"])
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), counts.min(), replace=False) for c in classes]
    )
    log.info("balanced classes %s to %d rows each", [str(c) for c in classes], counts.min())
    return ds.select(np.sort(keep))


def write_splits(raw: RawSplits, folder: str | os.PathLike, task: str) -> list[Path]:
    """Write the splits we made (CSV for classification, JSON for instruction) so a run can be repeated."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ds in raw.splits.items():
        ds = ds.remove_columns([ROW])
        if task == "classification":
            path = folder / f"{name}.csv"
            ds.to_csv(str(path), index=False)
        else:
            path = folder / f"{name}.json"
            path.write_text(json.dumps(ds.to_list(), indent=1, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------- columns and labels


def standardise(ds, args, source: str):
    """Rename/check columns: classification → text, label; instruction → instruction, input, output; lm → text."""
    if args.task == "instruction":
        return _check_instruction(ds, source)
    text_col = args.text_column or "text"
    needed = [(text_col, "--text-column")]
    if args.task == "classification":
        needed.append((args.label_column, "--label-column"))
    for col, option in needed:
        if col not in ds.column_names:
            shown = [c for c in ds.column_names if c != ROW]
            raise ValueError(f"{source}: no column {col!r} ({option}); the file has columns {shown}.")
    _check_text_type(ds, text_col, source)
    if args.task == "lm":
        ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b[text_col]], batched=True)
    else:
        _check_no_missing(ds, text_col, source)
    keep = {text_col: "text"} if args.task == "lm" else {text_col: "text", args.label_column: "label"}
    ds = ds.select_columns([*keep, ROW])
    if args.task == "classification":
        _check_no_missing(ds, args.label_column, source)
        # labels as text, whatever their JSON type (1 → "1", true → "True"), so that a JSON file names its
        # classes as the equivalent CSV file does. A new column, not ``map``: that casts an overwritten
        # column back to its old type, and the labels came back as ints or bools.
        labels = [str(v).strip() for v in ds[args.label_column]]
        ds = ds.remove_columns([args.label_column]).add_column("label", labels)
    if text_col != "text":
        ds = ds.rename_column(text_col, "text")
    if args.task == "lm":
        separator = "\n\n" if source.endswith(".txt") else "<|endoftext|>"
        ds = ds.map(lambda b: {"text": [t + separator for t in b["text"]]}, batched=True)
    return ds


def _check_text_type(ds, column: str, source: str) -> None:
    """The text column must have been read as strings (or be empty), not numbers or records."""
    dtype = getattr(ds.features[column], "dtype", None)
    if dtype not in ("string", "large_string", "null"):
        raise ValueError(
            f"{source}: column {column!r} was read as {ds.features[column]}, not as text; every value in it "
            'must be a string (in JSON, quote numbers: "text": "42").'
        )


def _check_strings(ds, column: str, source: str) -> None:
    """Every value of an Alpaca field must be a string (or null): a number or a record is an error naming the
    record, as a number in the text column is for classification (a one-line error, not tiktoken's TypeError)."""
    feature = ds.features[column]
    if getattr(feature, "dtype", None) in ("string", "large_string", "null"):
        return
    values = ds[column]
    if type(feature).__name__ == "Json":  # mixed types, decoded lossily ("1" comes back as 1): ask the file
        values = _json_field(Path(source), column, len(ds)) or values
    for row, value in zip(ds[ROW], values, strict=True):
        if value is not None and not isinstance(value, str):
            raise ValueError(
                f"{source}, record {row}, field {column!r}: the value {value!r} ({type(value).__name__}) is not "
                f'text; every value of it must be a string (in JSON, quote numbers: "{column}": "42").'
            )
    raise ValueError(
        f"{source}: field {column!r} was read as {feature}, not as text; every value of it must be a string "
        f'(in JSON, quote numbers: "{column}": "42").'
    )


def _json_field(path: Path, column: str, n_rows: int) -> list | None:
    """The values of ``column`` in the records of a .json/.jsonl file as Python's json reads them (None when
    ``path`` is no such file or its records do not line up with the ``n_rows`` rows read)."""
    if not path.is_file() or file_kind(path) != "json":
        return None
    text = path.read_text(encoding="utf-8-sig")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # JSON lines (_check_json has parsed each one already)
        document = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(document, dict):  # one object of columns
        values = document.get(column)
    elif isinstance(document, list):
        values = [r.get(column) if isinstance(r, dict) else None for r in document]
    else:
        values = None
    return values if isinstance(values, list) and len(values) == n_rows else None


def _check_no_missing(ds, column: str, source: str) -> None:
    for row, value in zip(ds[ROW], ds[column], strict=True):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"{source}, row {row}, column {column!r}: the value is missing or empty.")


def _check_instruction(ds, source: str):
    """Alpaca records need ``instruction`` and ``output``; ``input`` is optional."""
    for col in ("instruction", "output"):
        if col not in ds.column_names:
            raise ValueError(
                f"{source}: the records have no {col!r} field; Alpaca records need instruction and output."
            )
    if "input" not in ds.column_names:
        ds = ds.add_column("input", [""] * len(ds))
    for col in ("instruction", "input", "output"):
        _check_strings(ds, col, source)  # first: a column of mixed types reads "null" as None
    for col in ("instruction", "output"):
        _check_no_missing(ds, col, source)
    ds = ds.map(lambda b: {"input": [v or "" for v in b["input"]]}, batched=True)
    return ds.select_columns(["instruction", "input", "output", ROW])


def label_names(train) -> list[str]:
    """The training labels, sorted (numerically when they are all integers): id i is ``names[i]``."""
    names = set(train["label"])
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_labels(ds, names: list[str], source: str, column: str) -> None:
    """Every label of ``ds`` must have been seen in training."""
    known = set(names)
    for row, label in zip(ds[ROW], ds["label"], strict=True):
        if label not in known:
            raise ValueError(
                f"{source}, row {row}, column {column!r}: label {label!r} never occurs in the training data "
                f"(labels there: {names}). Fix the label or add examples of it to the training file."
            )


# ----------------------------------------------------------------------------------------- tokenisation


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt, ending with the ``### Response:`` header the model completes."""
    prompt = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
    if input_text:
        prompt += f"\n\n### Input:\n{input_text}"
    return prompt + "\n\n### Response:\n"


def tokenize_splits(
    raw: RawSplits, task: str, encoding, max_length: int, response_loss_only: bool = True
) -> dict:
    """Token ids for every split (``Dataset.map(batched=True)`` over the tiktoken encoder), truncated by the rule."""
    out = {}
    for name, ds in raw.splits.items():
        if task == "classification":
            out[name] = _tokenize_classification(ds, encoding, max_length, raw.label_names, name)
        elif task == "instruction":
            # the test split always scores response tokens only (the before/after response loss)
            out[name] = tokenize_instruction(
                ds, encoding, max_length, response_loss_only or name == "test", name
            )
        else:
            out[name] = pack_blocks(ds, encoding, max_length, name)
    if task == "lm" and "validation" not in out:
        out["train"], out["validation"] = _holdout_blocks(out["train"])
    return out


def _map(ds, fn, name: str, **kwargs):
    """``Dataset.map`` in memory, with a fixed fingerprint so the encoder object need not be hashed."""
    # ``name`` may be a path (evaluate's data file): datasets refuses "/" and the like in a fingerprint
    fingerprint = re.sub(r"[^\w.-]", "_", f"{ds._fingerprint}-{name}-{fn.__name__}")[:64]
    return ds.map(fn, batched=True, keep_in_memory=True, new_fingerprint=fingerprint, **kwargs)


def _log_truncated(ds, max_length: int, split: str) -> None:
    n = sum(1 for length in ds["n_tokens"] if length > max_length)
    if n:
        log.warning(
            "%s: %d of %d examples are longer than %d tokens and were truncated",
            split,
            n,
            len(ds),
            max_length,
        )


def _tokenize_classification(ds, encoding, max_length: int, names: list[str], split: str):
    ids_of = {name: i for i, name in enumerate(names)}

    def tokenize(batch):
        ids = encode_batch(encoding, batch["text"])
        return {
            "input_ids": [x[:max_length] for x in ids],
            "n_tokens": [len(x) for x in ids],
            "labels": [ids_of[label] for label in batch["label"]],
        }

    ds = _map(ds, tokenize, split)
    _log_truncated(ds, max_length, split)
    return ds.select_columns(["input_ids", "labels"])


def tokenize_instruction(ds, encoding, max_length: int, response_loss_only: bool, split: str):
    """Prompt + response + ``<|endoftext|>`` ids, and labels (-100 over the prompt with ``response_loss_only``);
    examples whose response was truncated away are dropped (a warning says how many)."""

    def tokenize(batch):
        prompts = [format_prompt(i, x) for i, x in zip(batch["instruction"], batch["input"], strict=True)]
        prompt_ids = encode_batch(encoding, prompts)
        response_ids = [r + [encoding.eot_token] for r in encode_batch(encoding, batch["output"])]
        ids, labels = [], []
        for p, r in zip(prompt_ids, response_ids, strict=True):
            full = (p + r)[:max_length]
            ids.append(full)
            hidden = min(len(p), len(full)) if response_loss_only else 0
            labels.append([IGNORE_INDEX] * hidden + full[hidden:])
        return {
            "input_ids": ids,
            "labels": labels,
            "n_tokens": [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)],
        }

    ds = _map(ds, tokenize, split)
    _log_truncated(ds, max_length, split)
    before = len(ds)
    ds = ds.filter(lambda row: any(t != IGNORE_INDEX for t in row["labels"][1:]), keep_in_memory=True)
    if len(ds) < before:
        log.warning(
            "%s: dropped %d examples whose response was truncated away entirely", split, before - len(ds)
        )
    if len(ds) == 0:
        raise ValueError(
            f"{split}: no example keeps a response token within --max-length {max_length}; raise it."
        )
    return ds.select_columns(["input_ids", "labels"])


def pack_blocks(ds, encoding, block_size: int, split: str):
    """Concatenate the texts and cut them into blocks of ``block_size`` (labels = inputs; the model shifts).

    Each text already ends with its separator: a blank line between paragraphs of a .txt file, and
    ``<|endoftext|>`` after each row of a table.
    Rows are packed 1000 at a time; the tail of each group that does not fill a block is dropped.
    """

    def pack(batch):
        ids = [t for row in encode_batch(encoding, batch["text"]) for t in row]
        blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
        return {"input_ids": blocks, "labels": blocks}

    ds = _map(ds, pack, split, batch_size=1000, remove_columns=ds.column_names)
    if len(ds) == 0:
        raise ValueError(f"{split}: the text is shorter than one block of --max-length {block_size} tokens.")
    return ds


def _holdout_blocks(blocks):
    """The last 10% of the packed blocks (contiguous text, so no overlap with training) as validation."""
    n_val = max(1, int(len(blocks) * HOLDOUT_FRACTION))
    if len(blocks) < 2:
        raise ValueError("The text makes fewer than two blocks; give more text or a smaller --max-length.")
    cut = len(blocks) - n_val
    return blocks.select(range(cut)), blocks.select(range(cut, len(blocks)))


# ----------------------------------------------------------------------------------------- batches


def collate(rows: list[dict], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest one (right padding): ``input_ids``, ``attention_mask``,
    ``labels`` (per-token labels padded with -100; class ids as a 1-D tensor)."""
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if rows and isinstance(rows[0].get("labels"), list):
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        batch["labels"] = labels
    elif rows and "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
    return batch
