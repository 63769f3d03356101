"""Train a GPT-2-style byte-level BPE on your own text: ``gpt2scratch train-tokenizer FILES... OUT``.

The trainer is the ``tokenizers`` library's ``BpeTrainer`` behind GPT-2's byte-level pre-tokenisation
(GPT-2's split pattern, no prefix space), with ``<|endoftext|>`` as the only special token. The result
is written in GPT-2's own layout, so everything that reads GPT-2's vocabulary reads it unchanged: ids
0-255 are the 256 bytes in GPT-2's order, then one id per merge in merge order, then ``<|endoftext|>``
as the last id. ``OUT`` holds ``encoder.json`` + ``vocab.bpe`` (OpenAI's names, read by tiktoken) and
the files of :func:`gpt2scratch.tokenizer.save_tokenizer` (``tokenizer.json``,
``tokenizer_config.json``, ``vocab.json``, ``merges.txt``) for ``AutoTokenizer``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .tokenizer import ENDOFTEXT, load_encoding, save_tokenizer

N_BYTES = 256
DEFAULT_MIN_FREQUENCY = 2


def gpt2_byte_alphabet() -> list[str]:
    """The 256 one-byte tokens as GPT-2 spells them, in GPT-2's id order (printable Latin-1 bytes first)."""
    printable = [b for b in range(N_BYTES) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(N_BYTES) if b not in printable]
    return [chr(b) for b in printable] + [chr(N_BYTES + n) for n in range(len(others))]


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    """The texts with literal ``<|endoftext|>`` cut out: it is one special token, never merged text."""
    for text in texts:
        yield from text.split(ENDOFTEXT)


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = DEFAULT_MIN_FREQUENCY
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE of at most ``vocab_size`` tokens; return GPT-2-ordered ``(encoder, merges)``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < N_BYTES + 1:
        raise ValueError(f"--vocab-size {vocab_size} is too small: 256 byte tokens + <|endoftext|> need 257.")
    if min_frequency < 1:
        raise ValueError(f"--min-frequency must be >= 1, got {min_frequency}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_pieces(texts), trainer)
    trained = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    encoder = gpt2_layout(merges)
    if set(encoder) != set(trained["vocab"]):
        raise RuntimeError("The trained vocabulary does not match its merges; please report this.")
    return encoder, merges


def gpt2_layout(merges: list[tuple[str, str]]) -> dict[str, int]:
    """``encoder.json`` for ``merges``: the bytes, then one token per merge, then ``<|endoftext|>``."""
    encoder = {token: i for i, token in enumerate(gpt2_byte_alphabet())}
    for first, second in merges:
        token = first + second
        if token in encoder:  # tiktoken ranks tokens, so every merge must make a new one
            raise RuntimeError(
                f"Merge {first!r} + {second!r} makes a token that already exists; please report."
            )
        encoder[token] = len(encoder)
    encoder[ENDOFTEXT] = len(encoder)
    return encoder


def write_vocab(encoder: dict[str, int], merges: list[tuple[str, str]], out: str | os.PathLike) -> None:
    """OpenAI's ``encoder.json`` + ``vocab.bpe`` (``#version`` header, one merge a line) into ``out``."""
    out = Path(out)
    (out / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_texts(files: Iterable[str | os.PathLike]) -> Iterator[str]:
    """The lines of each UTF-8 text file (checked first, so a bad file is named before training)."""
    from .training.data import check_text_file

    paths = [check_text_file(f) for f in files]
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            yield from fh


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out: str | os.PathLike,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
    force: bool = False,
    model_max_length: int = 1024,
) -> Path:
    """Train on ``texts`` and write the tokenizer folder ``out`` atomically; return ``out``."""
    from .io import atomic_folder, check_new_folder

    check_new_folder(out, force)
    encoder, merges = train_bpe(texts, vocab_size, min_frequency)
    with atomic_folder(out, force=force) as tmp:
        write_vocab(encoder, merges, tmp)
        load_encoding(tmp)  # tiktoken accepts the files (it checks ids against merges)
        save_tokenizer(tmp, tmp, model_max_length=model_max_length)
    return Path(out)


def cmd_train_tokenizer(args) -> None:
    out = train_tokenizer(
        read_texts(args.files), args.vocab_size, args.out, args.min_frequency, force=args.force
    )
    n_vocab = load_encoding(out).n_vocab
    note = (
        ""
        if n_vocab == args.vocab_size
        else f" (the text allows no more merges at --min-frequency {args.min_frequency})"
    )
    print(f"Wrote {out}: {n_vocab} tokens{note}. Use it with --tokenizer-dir {out}.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-tokenizer", help="train a GPT-2-style byte-level BPE on your own text files")
    p.add_argument("files", nargs="+", type=Path, metavar="FILES", help="UTF-8 text files")
    p.add_argument("out", type=Path, help="folder to write (encoder.json, vocab.bpe, tokenizer.json, ...)")
    p.add_argument("--vocab-size", type=int, required=True, help="tokens, <|endoftext|> included (>= 257)")
    p.add_argument(
        "--min-frequency",
        type=int,
        default=DEFAULT_MIN_FREQUENCY,
        help=f"merge only pairs seen at least this often (default {DEFAULT_MIN_FREQUENCY})",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_train_tokenizer)
