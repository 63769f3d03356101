"""``gpt2scratch classify`` and ``gpt2scratch evaluate``: use and score a trained model from the shell.

``classify MODEL TEXT...`` prints the predicted label and its probability for each text;
``--input-file`` streams a CSV/TSV (or the SMS Spam Collection's ``label<TAB>text`` file) in batches (constant memory) into ``--output-file``.
``evaluate MODEL --task classification`` scores a labelled CSV/TSV (accuracy, precision, recall, F1);
``evaluate MODEL --task lm`` gives the loss and perplexity of a text file. MODEL is anything
:func:`gpt2scratch.loading.load_model` opens (model folder, adapter, checkpoint, run folder, ...).

Tokenisation rule for classification: a text longer than ``--max-length`` tokens (default: the
model's ``n_positions``) keeps its FIRST ``--max-length`` tokens; the number of truncated texts is
reported on stderr. Batches are padded on the right with the tokenizer's ``<|endoftext|>`` (50256 in
GPT-2's) and carry an ``attention_mask``, so each text is classified exactly as it would be alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..io import current_umask
from ..model_commands import add_device_argument
from .data import Table, open_table


def register(subparsers) -> None:
    """Add the ``classify`` and ``evaluate`` subcommands."""
    _add_classify(subparsers)
    _add_evaluate(subparsers)


def _add_common(p: argparse.ArgumentParser, batch_help: str) -> None:
    p.add_argument(
        "model", metavar="MODEL", help="model folder, adapter, checkpoint, run folder or init:PRESET"
    )
    p.add_argument("--batch-size", type=int, default=None, help=batch_help)
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (classification: longer texts keep their first N tokens) or per block (lm); "
        "default: the model's n_positions",
    )
    p.add_argument(
        "--tokenizer-dir", default=None, help="folder with the GPT-2 vocabulary, if not beside the model"
    )
    add_device_argument(p)


def _add_classify(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify texts with a sequence-classification model",
        description="Print the predicted label and its probability for each TEXT, or stream a CSV/TSV "
        "(--input-file) into --output-file with two columns added: label and score (predicted_label and "
        "predicted_score when the input already has a label or score column).",
    )
    _add_common(p, "texts per forward pass (default 32)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument(
        "--input-file",
        default=None,
        help="CSV/TSV with a header row, or an SMSSpamCollection file (label<TAB>text); streamed in batches",
    )
    p.add_argument("--output-file", default=None, help="where to write the input rows plus label and score")
    p.add_argument(
        "--text-column", default="text", help="column of --input-file holding the text (default: text)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing --output-file")
    p.set_defaults(func=classify_command)


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on labelled data (classification) or text (lm); prints JSON",
        description="classification: accuracy, precision, recall and F1 (binary: of label id 1; more "
        "classes: macro average) and the confusion matrix on a CSV/TSV whose labels are names or ids known to the model's "
        "label2id. lm: loss and perplexity of a UTF-8 text file, tokenised whole and cut into "
        "consecutive blocks of --max-length tokens, or windows every --stride tokens. instruction: on Alpaca records (instruction, optional "
        "input, output), the loss on the response tokens and the ROUGE-L of the model's greedy responses, "
        "as finetune --task instruction scores its test split; --output-file keeps the responses.",
    )
    _add_common(
        p,
        "texts (classification, default 32), blocks (lm, default 2) or records (instruction, default 8) "
        "per forward pass",
    )
    p.add_argument("--task", choices=("classification", "lm", "instruction"), required=True)
    p.add_argument(
        "--data",
        required=True,
        help="CSV/TSV or SMSSpamCollection file (classification), text file (lm), JSON/JSONL/CSV of Alpaca "
        "records (instruction)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="instruction: tokens generated per response (default 64)",
    )
    p.add_argument(
        "--output-file", default=None, help="instruction: a JSON file of the records with each response added"
    )
    p.add_argument("--force", action="store_true", help="replace an existing --output-file")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="lm: start a window of --max-length tokens every N tokens, scoring only the tokens no earlier window "
        "scored, so each has at least max-length - N tokens of context (transformers' sliding-window "
        "perplexity); default: --max-length (consecutive blocks)",
    )
    p.add_argument("--text-column", default="text", help="classification: the text column (default: text)")
    p.add_argument(
        "--label-column", default="label", help="classification: the label column (default: label)"
    )
    p.set_defaults(func=evaluate_command)


# ----------------------------------------------------------------------------- reading input files


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """``items`` (a table's streamed rows, a list) in lists of ``size``, the last one shorter."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- model side


@dataclass
class Classifier:
    """A loaded classification model with its tokenizer and truncation length."""

    model: object
    encoding: object
    max_length: int
    truncated: int = 0
    seen: int = 0

    def probabilities(self, texts: list[str], where: list[str] | None = None):
        """Softmax class probabilities (B, num_labels) of ``texts``; ``where`` names each text in errors."""
        import torch

        input_ids, mask = (t.to(self.model.device) for t in self.encode(texts, where))
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits  # (B, num_labels)
        return torch.softmax(logits.float(), dim=-1).cpu()

    def encode(self, texts: list[str], where: list[str] | None = None):
        """Right-padded ids and attention mask; texts keep their first ``max_length`` tokens."""
        import torch

        from gpt2scratch.tokenizer import encode_batch

        ids = encode_batch(self.encoding, texts)
        for i, row in enumerate(ids):
            if not row:
                name = where[i] if where else f"text {i + 1}"
                raise ValueError(f"{name}: the text is empty; there is nothing to classify.")
        self.seen += len(ids)
        self.truncated += sum(len(row) > self.max_length for row in ids)
        ids = [row[: self.max_length] for row in ids]
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.encoding.eot_token, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return input_ids, mask

    def label(self, class_id: int) -> str:
        return str(self.model.config.id2label.get(class_id, class_id))

    def report_truncation(self, command: str) -> None:
        if self.truncated:
            print(
                f"gpt2scratch {command}: {self.truncated} of {self.seen} texts were longer than "
                f"{self.max_length} tokens and kept their first {self.max_length} tokens.",
                file=sys.stderr,
            )


def _max_length(config, requested: int | None) -> int:
    if requested is None:
        return config.n_positions
    if not 1 <= requested <= config.n_positions:
        raise ValueError(
            f"--max-length {requested} must be between 1 and the model's n_positions={config.n_positions}."
        )
    return requested


def _batch_size(requested: int | None, default: int) -> int:
    if requested is None:
        return default
    if requested < 1:
        raise ValueError(f"--batch-size must be at least 1, got {requested}.")
    return requested


def load_classifier(args) -> Classifier:
    """The model named by ``args.model`` as a classifier, with its tokenizer; refused unless it has a
    trained classification head (see :func:`check_classifier`)."""
    from gpt2scratch.loading import load_model, resolve_device
    from gpt2scratch.tokenizer import load_encoding

    device = resolve_device(args.device)
    check_classifier(args.model)
    loaded = load_model(args.model, task="classification", tokenizer_dir=args.tokenizer_dir, device=device)
    config = loaded.model.config
    return Classifier(loaded.model, load_encoding(loaded.tokenizer_dir), _max_length(config, args.max_length))


def check_classifier(spec: str) -> None:
    """Refuse a model without a trained classification head (a causal LM, a GPT-2 checkpoint, init:PRESET):
    loaded as a classifier it would get a freshly initialised head, and its labels and scores would be noise."""
    from gpt2scratch.model_commands import CLASSIFIER, model_spec

    found = model_spec(spec)
    if found.architecture != CLASSIFIER:
        raise ValueError(
            f"{spec} is a {found.architecture} ({found.kind}) with no trained classification head, so its "
            "predictions would come from a random head. Fine-tune it first (gpt2scratch finetune --task "
            f"classification --model {spec} ...) and pass the output folder."
        )


# ----------------------------------------------------------------------------- classify


def classify_command(args) -> int:
    """Classify the TEXT arguments (printed) or stream --input-file into --output-file."""
    batch_size = _batch_size(args.batch_size, 32)
    if args.input_file and args.texts:
        raise ValueError("Give either TEXT arguments or --input-file, not both.")
    if args.input_file:
        if not args.output_file:
            raise ValueError("--input-file needs --output-file (the CSV to write the predictions to).")
        return _classify_file(args, batch_size)
    if not args.texts:
        raise ValueError("Nothing to classify: give one or more TEXT arguments or --input-file.")
    classifier = load_classifier(args)
    for start in range(0, len(args.texts), batch_size):
        texts = args.texts[start : start + batch_size]
        probs = classifier.probabilities(texts, [f"TEXT {start + i + 1}" for i in range(len(texts))])
        for text, row in zip(texts, probs, strict=True):
            score, class_id = row.max(dim=-1)
            print(f"{classifier.label(int(class_id))}\t{float(score):.6f}\t{text}")
    classifier.report_truncation("classify")
    return 0


def _output_columns(header: list[str]) -> list[str]:
    taken = set(header)
    return ["predicted_label", "predicted_score"] if {"label", "score"} & taken else ["label", "score"]


def _classify_file(args, batch_size: int) -> int:
    out = _new_output_file(args.output_file, args.force)
    with open_table(args.input_file) as table:
        text_index = table.column(args.text_column, "--text-column")
        classifier = load_classifier(args)
        with _atomic_file(out) as fh:
            writer = csv.writer(fh, delimiter=_delimiter(out))
            writer.writerow(table.header + _output_columns(table.header))
            for batch in _progress(_batches(table.rows, batch_size), "classify", "texts"):
                texts = [table.full_row(line, row)[text_index] for line, row in batch]
                probs = classifier.probabilities(texts, [f"{table.path}, line {line}" for line, _ in batch])
                for (_, row), p in zip(batch, probs, strict=True):
                    score, class_id = p.max(dim=-1)
                    writer.writerow(row + [classifier.label(int(class_id)), f"{float(score):.6f}"])
    classifier.report_truncation("classify")
    print(f"gpt2scratch classify: wrote {classifier.seen} rows to {out}", file=sys.stderr)
    return 0


def _new_output_file(name: str | None, force: bool) -> Path | None:
    """``--output-file`` as a path (None if not given); an existing file is refused unless ``force``."""
    out = Path(name) if name else None
    if out is not None and out.exists() and not force:
        raise FileExistsError(
            f"{out} already exists; choose another --output-file or pass --force to replace it."
        )
    return out


@contextmanager
def _atomic_file(path: Path):
    """A text file written under a temporary name beside ``path``, renamed onto it only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            tmp.chmod(0o666 & ~current_umask())  # mkstemp's 0o600 would leave the final file private
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- evaluate


def evaluate_command(args) -> int:
    """Print the model's scores on ``--data`` as JSON."""
    if args.task != "instruction" and args.output_file:
        raise ValueError(
            "--output-file keeps the responses of --task instruction; the other tasks print JSON only."
        )
    if args.task == "classification":
        result = evaluate_classification(args)
    elif args.task == "lm":
        result = evaluate_lm(args)
    else:
        result = evaluate_instruction(args)
    print(
        json.dumps({"model": str(args.model), "task": args.task, "data": str(args.data), **result}, indent=2)
    )
    return 0


def label_mapper(config, table: Table):
    """A function mapping a label cell (a name in ``label2id``, or a class id) to its class id."""
    label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
    ids = {str(i) for i in range(config.num_labels)}

    def to_id(value: str, line: int) -> int:
        if value in label2id:
            return label2id[value]
        if value.strip() in ids:
            return int(value.strip())
        raise ValueError(
            f"{table.path}, line {line}: label {value!r} was never seen in training; this model knows "
            f"{', '.join(label2id) or 'no label names'} (ids 0..{config.num_labels - 1})."
        )

    return to_id


def evaluate_classification(args) -> dict:
    """Accuracy, precision, recall and F1 of the model on a labelled CSV/TSV, streamed in batches."""
    from gpt2scratch.training.metrics import classification_metrics

    batch_size = _batch_size(args.batch_size, 32)
    predictions: list[int] = []
    references: list[int] = []
    with open_table(args.data) as table:
        text_index = table.column(args.text_column, "--text-column")
        label_index = table.column(args.label_column, "--label-column")
        classifier = load_classifier(args)
        to_id = label_mapper(classifier.model.config, table)
        for batch in _progress(_batches(table.rows, batch_size), "evaluate", "texts"):
            rows = [(line, table.full_row(line, row)) for line, row in batch]
            references += [to_id(row[label_index], line) for line, row in rows]
            texts = [row[text_index] for _, row in rows]
            probs = classifier.probabilities(texts, [f"{table.path}, line {line}" for line, _ in batch])
            predictions += probs.argmax(dim=-1).tolist()
    if not references:
        raise ValueError(f"{args.data} has a header but no rows to evaluate.")
    classifier.report_truncation("evaluate")
    num_labels = classifier.model.config.num_labels
    metrics = classification_metrics(predictions, references, num_labels=num_labels)
    confusion = [[0] * num_labels for _ in range(num_labels)]
    for truth, predicted in zip(references, predictions, strict=True):
        confusion[truth][predicted] += 1
    return {
        "examples": len(references),
        "truncated": classifier.truncated,
        **metrics,
        "labels": [classifier.label(i) for i in range(num_labels)],
        "confusion_matrix": confusion,  # rows: the true label, columns: the predicted one, in "labels" order
    }


def read_text(path: str | os.PathLike, what: str = "Data file") -> str:
    """A UTF-8 text file (``-``: standard input); a bad byte is an error naming the line."""
    if str(path) == "-":
        path, data = "standard input", sys.stdin.buffer.read()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist (or is not a file).")
        data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: byte {data[e.start]:#04x} is not UTF-8. Re-save the file as UTF-8."
        ) from None


def evaluate_lm(args) -> dict:
    """Token-weighted mean next-token loss and perplexity of the text, in windows of ``--max-length`` tokens
    every ``--stride`` tokens (default: consecutive blocks), each token scored once (:func:`lm_windows`)."""
    from gpt2scratch.loading import resolve_device
    from gpt2scratch.model_commands import load_language_model
    from gpt2scratch.tokenizer import encode, load_encoding

    device = resolve_device(args.device)
    if args.stride is not None and args.stride < 1:
        raise ValueError(f"--stride must be at least 1, got {args.stride}.")
    text = read_text(args.data)
    loaded = load_language_model(args.model, args.tokenizer_dir, command="evaluate", device=device)
    block = _max_length(loaded.model.config, args.max_length)
    if block < 2:
        raise ValueError(f"--max-length {block}: a window of N tokens scores N - 1 of them; give 2 or more.")
    stride = block if args.stride is None else args.stride
    if stride > block:
        raise ValueError(
            f"--stride {stride} is longer than the windows (--max-length {block}): tokens between them would not "
            "be scored."
        )
    ids = encode(load_encoding(loaded.tokenizer_dir), text)
    rows = lm_windows(ids, block, stride)
    if not rows:
        raise ValueError(f"{args.data} has {len(ids)} tokens; at least 2 are needed to measure a loss.")
    loss = _mean_target_loss(loaded.model, rows, _batch_size(args.batch_size, 2))
    return {
        "tokens": len(ids),
        "blocks": len(rows),
        "block_length": block,
        "stride": stride,
        "loss": loss,
        "perplexity": math.exp(loss),
    }


def lm_windows(ids: list[int], length: int, stride: int) -> list[dict]:
    """Windows of ``length`` tokens starting every ``stride`` tokens, up to the window that reaches the end;
    each window's labels are the tokens no earlier window scored (-100 before them), so every token is scored
    once, after the first window with at least ``length - stride`` tokens of context (transformers' sliding-window
    perplexity). With ``stride == length``: consecutive blocks, the first token of each unscored (no context).
    Windows with nothing to score are left out."""
    from .data import IGNORE_INDEX

    rows, scored = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + length, len(ids))
        window, seen = ids[begin:end], max(scored - begin, 0)
        labels = [IGNORE_INDEX] * seen + window[seen:]
        if any(t != IGNORE_INDEX for t in labels[1:]):
            rows.append({"input_ids": window, "labels": labels})
        scored = end
        if end == len(ids):
            break
    return rows


def evaluate_instruction(args) -> dict:
    """Response loss (mean over response tokens and their ``<|endoftext|>``) and ROUGE-L of the greedy responses
    on Alpaca records, computed as ``finetune --task instruction`` scores its test split."""
    from types import SimpleNamespace

    import datasets

    from gpt2scratch.loading import resolve_device
    from gpt2scratch.model_commands import load_language_model
    from gpt2scratch.tokenizer import load_encoding

    from .data import read_table, standardise, tokenize_instruction
    from .metrics import rouge_l

    datasets.disable_progress_bars()  # as finetune does: the records are read and tokenised through datasets
    device = resolve_device(args.device)
    out = _new_output_file(args.output_file, args.force)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    records = standardise(read_table(args.data), SimpleNamespace(task="instruction"), str(args.data))
    loaded = load_language_model(args.model, args.tokenizer_dir, command="evaluate", device=device)
    model, encoding = loaded.model, load_encoding(loaded.tokenizer_dir)
    max_length, batch_size = _max_length(model.config, args.max_length), _batch_size(args.batch_size, 8)
    scored = tokenize_instruction(records, encoding, max_length, True, str(args.data)).to_list()
    kept = records.remove_columns(["_row"]).to_list()
    responses = _responses(model, encoding, kept, args.max_new_tokens, batch_size)
    for record, response in zip(kept, responses, strict=True):
        record["response"] = response
    if out is not None:
        with _atomic_file(out) as fh:
            json.dump(kept, fh, indent=1, ensure_ascii=False)
    return {
        "examples": len(kept),
        "response_loss": _mean_target_loss(model, scored, batch_size),
        "rouge_l": rouge_l(responses, [r["output"] for r in kept]),
        "max_new_tokens": args.max_new_tokens,
    }


def _responses(model, encoding, records: list[dict], max_new_tokens: int, batch_size: int) -> list[str]:
    """The model's greedy responses to the records' Alpaca prompts, decoded, ``batch_size`` prompts at a time."""
    from .scoring import greedy_responses, instruction_prompts

    prompts = instruction_prompts(encoding, records, max_new_tokens, model.config.n_positions)
    responses = []
    for chunk in _progress(_batches(prompts, batch_size), "responses", "prompts", len(prompts)):
        ids = greedy_responses(model, chunk, max_new_tokens, encoding.eot_token)
        responses += [encoding.decode(row).strip() for row in ids]
    return responses


def _mean_target_loss(model, rows: list[dict], batch_size: int) -> float:
    """Token-weighted mean next-token loss over the target tokens of ``rows``, ``batch_size`` rows per forward."""
    total, count = 0.0, 0
    for chunk in _progress(_batches(rows, batch_size), "loss", "examples", len(rows)):
        batch_total, batch_count = _target_loss_sum(model, chunk)
        total, count = total + batch_total, count + batch_count
    return total / count


def _progress(batches, desc: str, unit: str, total: int | None = None) -> Iterator[list]:
    """``batches`` as they are, behind a progress bar counting their items (at a terminal only; it is
    removed once done, leaving the command's own output)."""
    from tqdm.auto import tqdm

    from ..cli import live_terminal

    with tqdm(desc=desc, unit=f" {unit}", total=total, disable=not live_terminal(), leave=False) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _target_loss_sum(model, rows: list[dict]) -> tuple[float, int]:
    """Summed next-token cross-entropy over the target tokens of ``rows`` (``input_ids``, ``labels`` with
    -100 where nothing is predicted), right-padded into one batch, and the number of those tokens."""
    import torch

    from .data import collate
    from .scoring import token_losses

    batch = {k: v.to(model.device) for k, v in collate(rows, pad_id=model.config.eos_token_id).items()}
    with torch.inference_mode():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = token_losses(logits.float(), batch["labels"])
    return float(total.sum()), int(count.sum())
