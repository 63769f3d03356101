"""A byte-level BPE trained here works everywhere GPT-2's vocabulary does (``train-tokenizer``).

The tokenizer is trained once per module on a small slice of the real corpora (about a second); the
checks then run on every line of every corpus in ``../shared/data``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_finetune import sms_subset
from test_tokenizer import corpus_lines
from transformers import AutoTokenizer

from gpt2scratch.cli import main
from gpt2scratch.tokenizer import ENDOFTEXT, encode, encode_batch, load_encoding
from gpt2scratch.tokenizer_training import gpt2_byte_alphabet, train_tokenizer

VOCAB = 1000


def training_slice(shared_data: Path) -> list[str]:
    """A few thousand lines of each corpus: enough merges for VOCAB, fast to train."""
    return [line for lines in corpus_lines(shared_data).values() for line in lines[:2000]]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory) -> Path:
    return train_tokenizer(training_slice(shared_data), VOCAB, tmp_path_factory.mktemp("tok") / "bpe")


@pytest.fixture(scope="module")
def model_dir(trained, tmp_path_factory) -> Path:
    """``gpt2scratch init tiny --tokenizer-dir TRAINED``, in this process."""
    out = tmp_path_factory.mktemp("init") / "tiny"
    assert main(["init", "tiny", str(out), "--tokenizer-dir", str(trained)]) == 0
    return out


@pytest.fixture(scope="module")
def both_paths(model_dir):
    """The package's tiktoken path and transformers' AutoTokenizer, both from the saved model folder."""
    return load_encoding(model_dir), AutoTokenizer.from_pretrained(model_dir)


def test_layout_is_gpt2s(trained, vocab_dir):
    """Ids 0-255 are GPT-2's own byte tokens, one id per merge follows, <|endoftext|> is last."""
    ours = json.loads((trained / "encoder.json").read_text(encoding="utf-8"))
    gpt2 = json.loads((vocab_dir / "encoder.json").read_text(encoding="utf-8"))
    assert gpt2_byte_alphabet() == [t for t, i in sorted(gpt2.items(), key=lambda kv: kv[1])[:256]]
    assert list(ours)[:256] == gpt2_byte_alphabet() and list(ours.values()) == list(range(VOCAB))
    merges = (trained / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) - 1 == VOCAB - 257
    assert ours[ENDOFTEXT] == VOCAB - 1 == load_encoding(trained).eot_token
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (trained / name).is_file(), name


def test_tiktoken_equals_auto_tokenizer_on_every_corpus_line(both_paths, shared_data):
    encoding, hf = both_paths
    assert encoding.n_vocab == len(hf) == VOCAB
    for name, lines in corpus_lines(shared_data).items():
        ours = encode_batch(encoding, lines)
        theirs = hf(lines)["input_ids"]
        mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        assert not mismatches, f"{name}: line {mismatches[0]}: {lines[mismatches[0]]!r}"
        assert encoding.decode([t for row in ours for t in row]) == "".join(lines), name


def test_compresses_the_text_it_was_trained_on(trained, shared_data):
    """Merges were learned: far fewer tokens than bytes on the training text."""
    text = "\n".join(training_slice(shared_data))
    assert len(encode(load_encoding(trained), text)) < 0.5 * len(text.encode("utf-8"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_round_trip_arbitrary_unicode(both_paths, text):
    encoding, hf = both_paths
    ids = encode(encoding, text)
    assert encoding.decode(ids) == text
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == text


def test_endoftext_is_one_special_token_on_both_paths(both_paths):
    encoding, hf = both_paths
    text = "first<|endoftext|>second"
    assert encode(encoding, text).count(VOCAB - 1) == 1
    assert encode(encoding, text) == hf(text)["input_ids"]
    assert hf.eos_token_id == VOCAB - 1


def test_init_sizes_the_model_from_the_tokenizer(model_dir, trained):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["vocab_size"] == VOCAB
    assert config["eos_token_id"] == config["bos_token_id"] == VOCAB - 1
    assert load_file(model_dir / "model.safetensors")["transformer.wte.weight"].shape[0] == VOCAB
    for name in ("vocab.json", "merges.txt"):  # the folder carries the trained tokenizer, not GPT-2's
        assert (model_dir / name).read_text(encoding="utf-8") == (trained / name).read_text(encoding="utf-8")


def test_init_preset_model_argument_is_sized_from_the_tokenizer_too(trained):
    from gpt2scratch.loading import load_model

    loaded = load_model("init:tiny", tokenizer_dir=trained)
    config = loaded.model.config
    assert (config.vocab_size, config.eos_token_id, loaded.tokenizer_dir) == (VOCAB, VOCAB - 1, trained)
    assert loaded.model.get_input_embeddings().weight.shape[0] == VOCAB


def test_init_refuses_a_vocab_size_below_the_tokenizer(trained, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["init", "tiny", str(out), "--tokenizer-dir", str(trained), "--set", "vocab_size=500"]) == 2
    assert "smaller than the tokenizer" in capsys.readouterr().err and not out.exists()


def test_train_tokenizer_command(shared_data, tmp_path, capsys):
    sms = shared_data / "sms_spam/SMSSpamCollection"
    out = tmp_path / "bpe"
    assert main(["train-tokenizer", str(sms), str(out), "--vocab-size", "400", "--min-frequency", "3"]) == 0
    assert "400 tokens" in capsys.readouterr().out
    assert load_encoding(out).n_vocab == 400
    assert main(["train-tokenizer", str(sms), str(out), "--vocab-size", "400"]) == 2  # OUT exists
    assert "--force" in capsys.readouterr().err
    assert main(["train-tokenizer", str(sms), str(tmp_path / "x"), "--vocab-size", "100"]) == 2
    assert "257" in capsys.readouterr().err
    assert (
        main(["train-tokenizer", str(tmp_path / "missing.txt"), str(tmp_path / "y"), "--vocab-size", "300"])
        == 2
    )
    assert "missing.txt" in capsys.readouterr().err


def test_a_tokenizer_trained_again_into_its_folder_is_read_anew(shared_data, tmp_path, monkeypatch):
    """tiktoken's loader keeps a copy of each file it reads, found again by path (also in a later process):
    the vocabulary files' contents, not their path, decide what is loaded."""
    from gpt2scratch import tokenizer

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    folder, corpora = tmp_path / "bpe", sorted((shared_data / "corpora").glob("*.txt"))
    texts = [p.read_text(encoding="utf-8")[:20000] for p in corpora]
    text = "the king and the queen"
    first = encode(load_encoding(train_tokenizer([texts[0]], 300, folder)), text)
    train_tokenizer([texts[1]], 280, folder, force=True)
    tokenizer._encoding.cache_clear()  # as in a new process: only tiktoken's copies are left
    again, fresh = load_encoding(folder), load_encoding(shutil.copytree(folder, tmp_path / "copy"))
    assert again.n_vocab == 280 and encode(again, text) == encode(fresh, text) != first


def test_mismatched_vocab_files_are_a_clear_error(trained, tmp_path):
    (tmp_path / "encoder.json").write_text((trained / "encoder.json").read_text(encoding="utf-8"))
    merges = (trained / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    (tmp_path / "vocab.bpe").write_text("\n".join([merges[0], *merges[2:], merges[1]]) + "\n")
    with pytest.raises(ValueError, match="do not match"):
        load_encoding(tmp_path)


@pytest.mark.xdist_group("finetune")
def test_pretrain_then_classify_with_the_trained_vocabulary(model_dir, shared_data, tmp_path):
    """LM pre-training from the init folder, then SMS classification: both folders carry the tokenizer."""
    from accelerate.state import AcceleratorState, GradientState

    from gpt2scratch.training.args import parse_args
    from gpt2scratch.training.loop import run

    def finetune(*options: str) -> dict:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run(parse_args(["--batch-size", "8", "--max-length", "64", "--seed", "1", *options]))
        finally:
            torch.set_num_threads(threads)
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    lm, cls = tmp_path / "lm", tmp_path / "cls"
    text = shared_data / "corpora/the-verdict.txt"
    finetune("--task", "lm", "--model", str(model_dir), "--train-file", str(text), "--output-dir", str(lm),
             "--max-steps", "3", "--eval-every", "3")  # fmt: skip
    sms = sms_subset(shared_data, tmp_path, n_per_class=40)
    metrics = finetune("--task", "classification", "--model", str(lm), "--train-file", str(sms), "--balance",
                       "--output-dir", str(cls), "--max-steps", "3", "--eval-every", "3")  # fmt: skip
    assert metrics["test"]["loss"] > 0
    config = json.loads((cls / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["pad_token_id"] == VOCAB - 1
    line = "Free entry in 2 a wkly comp to win FA Cup final tkts"
    for folder in (lm, cls):
        assert AutoTokenizer.from_pretrained(folder)(line)["input_ids"] == encode(
            load_encoding(model_dir), line
        )
