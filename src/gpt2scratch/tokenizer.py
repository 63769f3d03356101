"""GPT-2's byte-level BPE: a tiktoken ``Encoding`` and a Hugging Face tokenizer, both from local files.

The vocabulary is two files, found in a folder under either naming: OpenAI's ``encoder.json`` +
``vocab.bpe`` or transformers' ``vocab.json`` + ``merges.txt`` (same contents). Nothing is downloaded.
A literal ``<|endoftext|>`` in text is encoded as the special token 50256 on both paths, as transformers
and the reference implementations do. A vocabulary trained by ``gpt2scratch train-tokenizer`` is the
same two files with fewer merges; its ``<|endoftext|>`` is its last id, read from ``encoder.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
# GPT-2's pre-tokenisation pattern (tiktoken's r50k/gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
VOCAB_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


def default_vocab_dir() -> Path | None:
    """``$GPT2SCRATCH_VOCAB_DIR``, else ``../shared/data/gpt2_vocab`` beside the working directory."""
    env = os.environ.get("GPT2SCRATCH_VOCAB_DIR")
    candidates = [Path(env)] if env else []
    repo_root = Path(__file__).resolve().parents[2]
    candidates += [Path.cwd().parent / "shared/data/gpt2_vocab", repo_root.parent / "shared/data/gpt2_vocab"]
    return next((p.resolve() for p in candidates if p.is_dir()), None)


def find_vocab_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The (encoder/vocab json, merges) pair in ``folder``; a clear error when neither naming is there."""
    folder = Path(folder)
    for enc_name, bpe_name in VOCAB_NAMES:
        enc, bpe = folder / enc_name, folder / bpe_name
        if enc.is_file() and bpe.is_file():
            return enc, bpe
    raise FileNotFoundError(
        f"No GPT-2 vocabulary in {folder}: expected encoder.json + vocab.bpe (OpenAI) or vocab.json + "
        "merges.txt (transformers). Pass --tokenizer-dir pointing at a folder with those files."
    )


def read_vocab(path: Path) -> dict:
    """``encoder.json`` / ``vocab.json``: token → id; an error naming the file when it is not JSON."""
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not a valid vocabulary file (a JSON object of token → id): {e}"
        ) from None
    if not isinstance(vocab, dict):
        raise ValueError(
            f"{path} is not a valid vocabulary file: it should hold a JSON object of token → id."
        )
    return vocab


@lru_cache(maxsize=8)
def _encoding(encoder_json: str, vocab_bpe: str, encoder_sha256: str, bpe_sha256: str) -> tiktoken.Encoding:
    """Built once per pair of files and contents. The hashes also make tiktoken re-read a file that changed:
    its loader keeps a copy of every file it reads in the temp folder, found again by the file's path."""
    eot = read_vocab(Path(encoder_json)).get(ENDOFTEXT)
    if eot is None:
        raise ValueError(f"{encoder_json} has no {ENDOFTEXT} token; every GPT-2-style vocabulary needs it.")
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=vocab_bpe,
            encoder_json_file=encoder_json,
            vocab_bpe_hash=bpe_sha256,
            encoder_json_hash=encoder_sha256,
        )
    except AssertionError:
        raise ValueError(
            f"{encoder_json} and {vocab_bpe} do not match: ids must be the 256 bytes in GPT-2's order, then "
            "one id per merge in merge order (as OpenAI's files and `gpt2scratch train-tokenizer` write them)."
        ) from None
    return tiktoken.Encoding(
        name="gpt2" if (eot, len(ranks)) == (ENDOFTEXT_ID, ENDOFTEXT_ID) else f"bpe-{len(ranks) + 1}",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: eot},
        explicit_n_vocab=len(ranks) + 1,
    )


def load_encoding(folder: str | os.PathLike) -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` encoding built from the vocabulary files in ``folder`` (no network); for a
    trained vocabulary, the same byte-level BPE with its own ranks (``n_vocab``, ``eot_token`` from the files)."""
    enc, bpe = find_vocab_files(folder)
    return _encoding(str(enc.resolve()), str(bpe.resolve()), _sha256(enc), _sha256(bpe))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encoding_digest(encoding: tiktoken.Encoding) -> dict:
    """The vocabulary's size and the SHA-256 of every token's bytes in id order and of the special tokens:
    equal for the same vocabulary in either file format."""
    h = hashlib.sha256()
    for i in range(encoding.n_vocab):
        try:
            token = encoding.decode_single_token_bytes(i)
        except KeyError:  # a special token's id
            continue
        h.update(len(token).to_bytes(4, "little") + token)
    for name in sorted(encoding.special_tokens_set):
        h.update(f"{name}={encoding.encode_single_token(name)}".encode())
    return {"tokens": encoding.n_vocab, "sha256": h.hexdigest()}


def encode(encoding: tiktoken.Encoding, text: str) -> list[int]:
    """Token ids of ``text``; a literal ``<|endoftext|>`` becomes the special token (50256 in GPT-2's)."""
    return encoding.encode(text, allowed_special={ENDOFTEXT})


def encode_batch(encoding: tiktoken.Encoding, texts: list[str]) -> list[list[int]]:
    return encoding.encode_batch(texts, allowed_special={ENDOFTEXT})


def hf_tokenizer(folder: str | os.PathLike, model_max_length: int = 1024):
    """A transformers ``GPT2Tokenizer`` from the vocabulary files in ``folder``, ids equal to tiktoken's.

    Its pad token is ``<|endoftext|>`` on the right, as training and ``classify`` pad batches (and as the
    classifier's ``pad_token_id`` says), so ``tokenizer(texts, padding=True)`` and batched pipelines work;
    the models pool and attend by ``attention_mask``, so the pad id may also occur inside a text."""
    from transformers import GPT2Tokenizer

    enc, bpe = find_vocab_files(folder)
    vocab = read_vocab(enc)
    lines = bpe.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    return GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        pad_token=ENDOFTEXT,
        padding_side="right",
    )


def save_tokenizer(folder: str | os.PathLike, out: str | os.PathLike, model_max_length: int = 1024) -> None:
    """Write the tokenizer files to ``out``: ``tokenizer.json`` + ``tokenizer_config.json`` for
    ``AutoTokenizer``, and ``vocab.json`` + ``merges.txt`` so tiktoken can be built from the folder too."""
    enc, bpe = find_vocab_files(folder)
    hf_tokenizer(folder, model_max_length).save_pretrained(out)
    out = Path(out)
    if enc.resolve() != (out / "vocab.json").resolve():
        shutil.copyfile(enc, out / "vocab.json")
        shutil.copyfile(bpe, out / "merges.txt")
