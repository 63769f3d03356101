"""A saved folder loads where gpt2scratch is not installed: Auto classes, AutoTokenizer, pipelines."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import run_isolated

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM
from gpt2scratch.io import save_model_folder
from gpt2scratch.modeling_gpt2scratch import AUTO_MAP
from gpt2scratch.tokenizer import encode, load_encoding

ALLOWED_TOP_LEVEL = {"torch", "transformers", "__future__"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, vocab_dir):
    torch.manual_seed(0)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny")).eval()
    out = tmp_path_factory.mktemp("remote") / "model"
    save_model_folder(model, out, vocab_dir)
    return model, out


def test_folder_contents(saved):
    _, out = saved
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "configuration_gpt2scratch.py",
        "modeling_gpt2scratch.py",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "gpt2scratch"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128


def test_code_files_import_only_stdlib_torch_transformers(saved):
    import sys

    _, out = saved
    for name in ("configuration_gpt2scratch.py", "modeling_gpt2scratch.py"):
        tree = ast.parse((out / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:  # the single-dot sibling import
                    assert node.module == "configuration_gpt2scratch", f"{name}: from .{node.module}"
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            for root in roots:
                assert root in ALLOWED_TOP_LEVEL or root in sys.stdlib_module_names, f"{name} imports {root}"


def test_isolated_load_same_logits_and_pipelines(saved, vocab_dir):
    model, out = saved
    text = "Hello there, General Kenobi <|endoftext|> again"
    ids = torch.tensor([encode(load_encoding(vocab_dir), text)])
    with torch.no_grad():
        expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, out.parent / "expected.pt")
    code = f"""
import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, pipeline)
p = {str(out)!r}
exp = torch.load({str(out.parent / "expected.pt")!r})
tok = AutoTokenizer.from_pretrained(p, trust_remote_code=True)
assert tok({text!r})["input_ids"] == exp["ids"][0].tolist(), "tokenizer ids differ from tiktoken"
lm = AutoModelForCausalLM.from_pretrained(p, trust_remote_code=True).eval()
assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
with torch.no_grad():
    assert (lm(exp["ids"]).logits - exp["logits"]).abs().max() < 1e-5
    base = AutoModel.from_pretrained(p, trust_remote_code=True).eval()
    hidden = base(exp["ids"]).last_hidden_state
    assert (lm.lm_head(hidden) - exp["logits"]).abs().max() < 1e-5
clf = AutoModelForSequenceClassification.from_pretrained(p, trust_remote_code=True, num_labels=2).eval()
with torch.no_grad():
    assert (clf.transformer(exp["ids"]).last_hidden_state - hidden).abs().max() < 1e-5
gen = pipeline("text-generation", model=lm, tokenizer=tok)
text_out = gen("Hello", max_new_tokens=5, do_sample=False)[0]["generated_text"]
direct = lm.generate(tok("Hello", return_tensors="pt")["input_ids"], max_new_tokens=5, do_sample=False)
assert text_out == tok.decode(direct[0]), (text_out, tok.decode(direct[0]))
cls = pipeline("text-classification", model=clf, tokenizer=tok)
res = cls(["free prize, call now", "see you at lunch"])
assert len(res) == 2 and all(r["label"] in ("LABEL_0", "LABEL_1") for r in res)
print("OK")
"""
    result = run_isolated(code, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_plain_save_pretrained_ships_the_code_however_the_class_was_imported(saved, tmp_path):
    """With this package imported, a folder loaded through the Auto classes gets the package's own class; its
    ``save_pretrained`` (and a plain ``save_pretrained`` of a model made in Python) writes the two code files
    and the full ``auto_map``, and the folder loads where the package is not installed."""
    from transformers import AutoModelForCausalLM

    model, out = saved
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(loaded) is GPT2ScratchForCausalLM
    loaded.save_pretrained(tmp_path / "resaved")
    GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny")).save_pretrained(tmp_path / "made")
    for folder in ("resaved", "made"):
        names = {p.name for p in (tmp_path / folder).iterdir()}
        assert {"configuration_gpt2scratch.py", "modeling_gpt2scratch.py"} <= names, folder
        assert json.loads((tmp_path / folder / "config.json").read_text())["auto_map"] == AUTO_MAP
    code = f"""
from transformers import AutoModelForSequenceClassification
AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "resaved")!r}, trust_remote_code=True)
print("OK")
"""
    result = run_isolated(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_saving_a_classifier_keeps_full_auto_map(tmp_path, vocab_dir):
    from gpt2scratch import GPT2ScratchForSequenceClassification

    model = GPT2ScratchForSequenceClassification(GPT2ScratchConfig.from_preset("tiny", num_labels=2))
    save_model_folder(model, tmp_path / "clf", vocab_dir)
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["architectures"] == ["GPT2ScratchForSequenceClassification"]


def test_failed_save_leaves_nothing_and_existing_folder_is_kept(tmp_path, vocab_dir):
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny"))
    out = tmp_path / "m"
    with pytest.raises(FileNotFoundError, match="No GPT-2 vocabulary"):
        save_model_folder(model, out, tmp_path)  # no vocab files there
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    save_model_folder(model, out, vocab_dir)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        save_model_folder(model, out, vocab_dir)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    save_model_folder(model, out, vocab_dir, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert Path(out / "config.json").exists()
