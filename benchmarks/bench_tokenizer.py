#!/usr/bin/env python
"""Compression of a byte-level BPE trained here vs GPT-2's vocabulary, on held-out text.

    .venv/bin/python benchmarks/bench_tokenizer.py                 # ~1 minute on a shared 2-core CPU
    .venv/bin/python benchmarks/bench_tokenizer.py --vocab-sizes 4096 8192

The text is the SMS Spam Collection (message texts), tinyshakespeare and the Alpaca-style instruction
records (instruction, input and output of each) from ``../shared/data``. Each corpus is cut into a
training part and a held-out part (``--holdout``, 10%): SMS messages and instruction records by a
seeded shuffle, Shakespeare by its last paragraphs (contiguous, so no line is on both sides). A
tokenizer of each ``--vocab-sizes`` is trained (``gpt2scratch.tokenizer_training.train_tokenizer``) on
the three training parts together; the figure is tokens per character on each held-out part (lower
is better), beside GPT-2's 50257-token vocabulary on the same text.

Results: ``benchmarks/results/tokenizer-compression-<date>.json`` and ``.md`` (machine named).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from sms_recorded_run import machine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED, help="the shared data folder")
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of each corpus held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def corpora(data: Path) -> dict[str, list[str]]:
    """Documents of each corpus: SMS message texts, Shakespeare paragraphs, instruction records."""
    sms = [
        line.partition("\t")[2]
        for line in (data / "sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    ]
    plays = (data / "corpora/tinyshakespeare.txt").read_text(encoding="utf-8")
    records = json.loads((data / "instruction/instruction-data.json").read_text(encoding="utf-8"))
    fields = ("instruction", "input", "output")
    return {
        "sms": [t for t in sms if t.strip()],
        "shakespeare": [p + "\n\n" for p in plays.split("\n\n") if p.strip()],
        "instructions": ["\n\n".join(r[k] for k in fields if r.get(k)) for r in records],
    }


def split(name: str, docs: list[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): the tail of Shakespeare, a seeded random 10% of the other corpora."""
    if name != "shakespeare":
        docs = docs[:]
        random.Random(seed).shuffle(docs)
    cut = len(docs) - max(1, int(len(docs) * holdout))
    return docs[:cut], docs[cut:]


def tokens_per_char(encoding, docs: list[str]) -> dict:
    from gpt2scratch.tokenizer import encode_batch

    tokens = sum(len(ids) for ids in encode_batch(encoding, docs))
    chars = sum(len(d) for d in docs)
    return {"tokens": tokens, "chars": chars, "tokens_per_char": tokens / chars}


def measure(args) -> dict:
    from gpt2scratch.tokenizer import default_vocab_dir, load_encoding
    from gpt2scratch.tokenizer_training import train_tokenizer

    parts = {name: split(name, docs, args.holdout, args.seed) for name, docs in corpora(args.data).items()}
    train_docs = [d for train, _ in parts.values() for d in train]
    held = {name: h for name, (_, h) in parts.items()}
    held["all"] = [d for h in held.values() for d in h]
    encodings = {"gpt2 (50257)": (load_encoding(default_vocab_dir()), None)}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.vocab_sizes:
            start = time.perf_counter()
            folder = train_tokenizer(train_docs, size, Path(tmp) / str(size), args.min_frequency)
            encoding = load_encoding(folder)
            encodings[f"trained ({encoding.n_vocab})"] = (encoding, time.perf_counter() - start)
            print(
                f"trained {encoding.n_vocab} tokens in {encodings[f'trained ({encoding.n_vocab})'][1]:.1f} s"
            )
        rows = {
            label: {
                "train_seconds": seconds,
                "vocab_size": encoding.n_vocab,
                "held_out": {name: tokens_per_char(encoding, docs) for name, docs in held.items()},
            }
            for label, (encoding, seconds) in encodings.items()
        }
    sizes = {
        name: {"train_docs": len(parts[name][0]), "held_out_docs": len(h), "held_out_chars": sum(map(len, h))}
        for name, h in held.items()
        if name != "all"
    }
    return {"corpora": sizes, "train_chars": sum(map(len, train_docs)), "tokenizers": rows}


def write_report(result: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    names = ["sms", "shakespeare", "instructions", "all"]
    gpt2 = result["tokenizers"]["gpt2 (50257)"]["held_out"]
    lines = [
        f"# Tokenizer compression on held-out text, {result['date']}",
        "",
        "Tokens per character on the held-out part of each corpus (lower is better; in brackets: "
        "relative to GPT-2's vocabulary). Trained vocabularies: `gpt2scratch train-tokenizer` "
        f"(min frequency {result['min_frequency']}) on the other {1 - result['holdout']:.0%} of the "
        f"three corpora together ({result['train_chars']:,} characters).",
        "",
        "| vocabulary | " + " | ".join(names) + " | training s |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for label, row in result["tokenizers"].items():
        cells = []
        for name in names:
            tpc = row["held_out"][name]["tokens_per_char"]
            ratio = tpc / gpt2[name]["tokens_per_char"]
            cells.append(f"{tpc:.4f}" + ("" if row["train_seconds"] is None else f" ({ratio:.2f}×)"))
        seconds = "—" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds} |")
    held = ", ".join(
        f"{name} {c['held_out_docs']:,} docs / {c['held_out_chars']:,} chars"
        for name, c in result["corpora"].items()
    )
    m = result["machine"]
    lines += [
        "",
        f"Held out: {held}; `all` pools them (so Shakespeare weighs most). Shakespeare's held-out part "
        "is its last paragraphs; SMS messages and instruction records are a seeded random 10%.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared), load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}. "
        "Reproduce: `.venv/bin/python benchmarks/bench_tokenizer.py`.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    info = machine()
    result = {
        "date": started.strftime("%Y-%m-%d"),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": info,
        "holdout": args.holdout,
        "seed": args.seed,
        "min_frequency": args.min_frequency,
        **measure(args),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"tokenizer-compression-{result['date']}"
    write_report(result, stem)
    print(stem.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
