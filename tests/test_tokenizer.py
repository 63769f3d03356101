"""tiktoken and the saved Hugging Face tokenizer give identical ids on the real corpora."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from gpt2scratch.tokenizer import ENDOFTEXT_ID, encode, encode_batch, load_encoding, save_tokenizer


@pytest.fixture(scope="module")
def tokenizers(vocab_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(vocab_dir, out, model_max_length=1024)
    return load_encoding(vocab_dir), AutoTokenizer.from_pretrained(out), out


def corpus_lines(shared_data) -> dict[str, list[str]]:
    sms = (shared_data / "sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    shakespeare = (shared_data / "corpora/tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()
    verdict = (shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8").splitlines()
    records = json.loads((shared_data / "instruction/instruction-data.json").read_text(encoding="utf-8"))
    instructions = [r[k] for r in records for k in ("instruction", "input", "output") if r.get(k)]
    return {"sms": sms, "shakespeare": shakespeare, "verdict": verdict, "instructions": instructions}


def test_tiktoken_equals_hf_tokenizer_on_every_corpus_line(tokenizers, shared_data):
    encoding, hf, _ = tokenizers
    for name, lines in corpus_lines(shared_data).items():
        assert len(lines) > 100, name
        ours = encode_batch(encoding, lines)
        theirs = hf(lines)["input_ids"]
        mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        assert not mismatches, f"{name}: line {mismatches[0]}: {lines[mismatches[0]]!r}"


def test_endoftext_literal_is_the_special_token_on_both_paths(tokenizers):
    encoding, hf, _ = tokenizers
    text = "first<|endoftext|>second"
    assert ENDOFTEXT_ID in encode(encoding, text)
    assert encode(encoding, text) == hf(text)["input_ids"]
    assert encode(encoding, "<|endoftext|>") == [ENDOFTEXT_ID]


def test_saved_folder_has_files_for_both_paths(tokenizers, vocab_dir):
    encoding, hf, out = tokenizers
    assert hf.model_max_length == 1024 and hf.eos_token_id == ENDOFTEXT_ID
    again = load_encoding(out)  # tiktoken built from the saved folder's vocab.json + merges.txt
    assert again.encode("Hello world, ünïcödé") == encoding.encode("Hello world, ünïcödé")
    assert json.loads((out / "vocab.json").read_text()) == json.loads(
        (vocab_dir / "encoder.json").read_text()
    )


def test_missing_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json \\+ vocab.bpe"):
        load_encoding(tmp_path)


def test_saved_classifier_tokenizer_pads_batches_as_the_model_expects(vocab_dir, tmp_path):
    """A classifier folder's tokenizer pads with ``<|endoftext|>`` (the config's pad_token_id) on the right,
    so ``padding=True`` and a batched pipeline work and score each text as it scores alone."""
    import torch
    from transformers import pipeline

    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForSequenceClassification
    from gpt2scratch.io import save_model_folder

    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset(  # as finetune makes a classifier: pad_token_id set
        "tiny", vocab_size=50257, num_labels=2, id2label={0: "ham", 1: "spam"}, pad_token_id=ENDOFTEXT_ID
    )
    model = GPT2ScratchForSequenceClassification(config)
    with torch.no_grad():  # spread the logits so the scores differ between texts
        model.score.weight.mul_(30)
    folder = save_model_folder(model, tmp_path / "classifier", vocab_dir)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert (tok.pad_token, tok.pad_token_id, tok.padding_side) == ("<|endoftext|>", ENDOFTEXT_ID, "right")
    assert tok.pad_token_id == model.config.pad_token_id
    texts = ["ok", "WINNER!! Call 09061701461 now to claim your prize", "see you at noon", "hi"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1] == ENDOFTEXT_ID and batch["attention_mask"][0, -1] == 0
    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    alone = [classify(t)[0] for t in texts]
    batched = classify(texts, batch_size=2)
    assert [r["label"] for r in batched] == [r["label"] for r in alone]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in alone], abs=1e-5)
