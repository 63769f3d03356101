"""``gpt2scratch push`` against a local Hub (tests/hub_server.py): what goes up loads back, by repo id,
in an interpreter without gpt2scratch, with the same logits; refusals happen before any request.

huggingface_hub reads HF_ENDPOINT at import, so every Hub client runs in a subprocess whose
environment points at the local server (HF_TOKEN, HF_HOME in tmp, HF_HUB_DISABLE_XET=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_isolated
from hub_server import LocalHub

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification
from gpt2scratch.hub import adapter_base, check_folder, files_to_upload, push_to_hub
from gpt2scratch.io import save_model_folder
from gpt2scratch.model_card import REPO_PLACEHOLDER, count_parameters, model_card
from gpt2scratch.tokenizer import encode, load_encoding, save_tokenizer

TOKEN = "hf_local_test_token"
TEXT = "Every effort moves you, and the verdict was"

# Runs ``gpt2scratch push`` once per argv list in one interpreter (imports are slow on a busy
# machine); before each, a marker request lets the test attribute the server's requests to it.
PUSH_SCRIPT = """
import contextlib, io, json, os, sys, urllib.request
from gpt2scratch import cli
if "gpt2scratch.hub" not in cli.COMMAND_MODULES:  # until cli.py lists it
    cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, "gpt2scratch.hub")
results = []
for i, argv in enumerate(json.loads(sys.argv[1])):
    try:
        urllib.request.urlopen(f"{os.environ['HF_ENDPOINT']}/marker/{i}")
    except Exception:
        pass
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["push", *argv])
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def isolated_prelude(env: dict[str, str]) -> str:
    """Code that points the isolated interpreter at the local Hub before anything imports huggingface_hub."""
    return f"import os, json\nos.environ.pop('HF_HUB_OFFLINE', None)\nos.environ.update(json.loads({json.dumps(env)!r}))\n"


def card_snippets(readme: bytes) -> str:
    """The model card's Python code blocks, run after the test's own code: the card's usage must work."""
    blocks = re.findall(r"```python\n(.*?)```", readme.decode(), re.S)
    assert blocks, "the model card has no Python example"
    return "\n".join(blocks)


# --- fixtures: a model, an adapter, a server, and one round of pushes ---------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory, vocab_dir):
    """A tiny causal LM folder, a LoRA adapter on it (recording the local base path), broken copies."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny")).eval()
    folder = save_model_folder(model, root / "model", vocab_dir)

    incomplete = root / "incomplete"
    shutil.copytree(folder, incomplete)
    (incomplete / "model.safetensors").unlink()
    (incomplete / "modeling_gpt2scratch.py").unlink()

    adapter_model, adapter = _adapter(model, folder, root / "adapter", vocab_dir)
    return {
        "root": root,
        "model": model,
        "folder": folder,
        "incomplete": incomplete,
        "adapter_model": adapter_model,
        "adapter": adapter,
    }


def _adapter(base_model, base_folder: Path, out: Path, vocab_dir: Path):
    """A LoRA adapter with non-zero B matrices (so it changes the logits), saved as the trainer does."""
    import copy

    from gpt2scratch.training.lora import add_lora

    peft_model = add_lora(
        copy.deepcopy(base_model), "lm", ["c_attn", "c_proj", "c_fc"], r=4, alpha=8, dropout=0.0
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_folder.resolve())
    peft_model.save_pretrained(str(out))
    save_tokenizer(vocab_dir, out, model_max_length=base_model.config.n_positions)
    return peft_model.eval(), out


@pytest.fixture(scope="module")
def hub():
    server = LocalHub(token=TOKEN, user="user")
    with server as url:
        yield server, url


@pytest.fixture(scope="module")
def pushes(hub, local):
    """Every push, in order, through the real command in one subprocess; results keyed by name."""
    server, _ = hub
    runs = {
        "incomplete": [str(local["incomplete"]), "user/incomplete"],
        "adapter-no-id": [str(local["adapter"]), "user/lora-no-id"],
        "bad-token": [str(local["folder"]), "user/tiny", "--token", "hf_wrong"],
        "other-namespace": [str(local["folder"]), "alice/tiny"],
        "model": [str(local["folder"]), "user/tiny", "--commit-message", "first push"],
        "again": [str(local["folder"]), "user/tiny"],
        "adapter": [str(local["adapter"]), "user/tiny-lora", "--base-model-id", "user/tiny", "--private"],
        "no-branch": [str(local["folder"]), "user/tiny", "--revision", "dev"],
    }
    out = local["root"] / "push-results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(server.client_env(local["root"] / "hf-home-push"))
    proc = subprocess.run(
        [sys.executable, "-c", PUSH_SCRIPT, json.dumps(list(runs.values())), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip(runs, json.loads(out.read_text()), strict=True))
    for i, name in enumerate(runs):  # the server requests each push made, between its markers
        start = server.requests.index(("GET", f"/marker/{i}"))
        end = (
            server.requests.index(("GET", f"/marker/{i + 1}")) if i + 1 < len(runs) else len(server.requests)
        )
        results[name]["requests"] = server.requests[start + 1 : end]
    return results


# --- pushing -----------------------------------------------------------------------------------------


def test_push_uploads_the_complete_folder(hub, pushes, local):
    server, _ = hub
    result = pushes["model"]
    assert result["rc"] == 0, result["err"]
    assert "user/tiny" in result["out"]
    files = server.files("user/tiny")
    local_files = {p.name for p in local["folder"].iterdir()}
    assert set(files) == local_files  # README.md was written into the folder first, then pushed with it
    for name in ("model.safetensors", "config.json", "modeling_gpt2scratch.py", "tokenizer.json"):
        assert files[name] == (local["folder"] / name).read_bytes(), name
    repo = server.repo("user/tiny")
    assert repo.messages[repo.main] == "first push" and not repo.private
    assert ("POST", "/api/models/user/tiny/commit/main") in result["requests"]


def test_pushing_unchanged_folder_again_makes_no_commit(hub, pushes):
    server, _ = hub
    assert pushes["again"]["rc"] == 0, pushes["again"]["err"]
    assert not any(path.endswith("/commit/main") for _, path in pushes["again"]["requests"])
    assert len(server.repo("user/tiny").commits) == 2  # the empty initial commit + "first push"


def test_pushed_card_is_a_model_card(hub, pushes, local):
    server, _ = hub
    card = server.files("user/tiny")["README.md"].decode()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"gpt2", "gpt2scratch", "custom_code"} <= set(meta["tags"]) and meta["license"] == "mit"
    assert "model-index" not in meta
    n_params = sum(p.numel() for p in local["model"].parameters())
    assert f"| parameters | {n_params:,}" in card
    assert (
        "| layers | 2 |" in card
        and "| attention heads | 4 |" in card
        and "| context length (tokens) | 128 |" in card
    )
    assert "from_pretrained(repo, trust_remote_code=True)" in card and 'repo = "user/tiny"' in card
    assert REPO_PLACEHOLDER not in card and "## Limitations and bias" in card
    assert ("POST", "/api/validate-yaml") in pushes["model"]["requests"]


def test_bad_token_is_a_clear_error(hub, pushes):
    result = pushes["bad-token"]
    assert result["rc"] == 2
    assert "rejected the token (401)" in result["err"] and "--token" in result["err"]
    assert "Traceback" not in result["err"]


def test_hub_refusals_are_clear_errors(hub, pushes):
    server, _ = hub
    other = pushes["other-namespace"]
    assert other["rc"] == 2 and "may not write to alice/tiny (403)" in other["err"], other["err"]
    assert ("model", "alice/tiny") not in server.repos
    branch = pushes["no-branch"]
    assert branch["rc"] == 2 and "user/tiny has no branch 'dev'" in branch["err"], branch["err"]
    assert "Traceback" not in other["err"] + branch["err"]


def test_incomplete_folder_is_refused_before_any_request(hub, pushes):
    server, _ = hub
    result = pushes["incomplete"]
    assert result["rc"] == 2
    assert "missing modeling_gpt2scratch.py, model.safetensors" in result["err"]
    assert result["requests"] == [] and ("model", "user/incomplete") not in server.repos


def test_adapter_with_local_base_is_refused_without_base_model_id(hub, pushes, local):
    server, _ = hub
    result = pushes["adapter-no-id"]
    assert result["rc"] == 2
    assert "--base-model-id" in result["err"] and str(local["folder"].resolve()) in result["err"]
    assert result["requests"] == [] and ("model", "user/lora-no-id") not in server.repos


def test_adapter_is_pushed_with_the_hub_base_id(hub, pushes, local):
    server, _ = hub
    assert pushes["adapter"]["rc"] == 0, pushes["adapter"]["err"]
    files = server.files("user/tiny-lora")
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "user/tiny"
    local_config = json.loads((local["adapter"] / "adapter_config.json").read_text())
    assert local_config["base_model_name_or_path"] == str(
        local["folder"].resolve()
    )  # the local folder still loads
    assert files["adapter_model.safetensors"] == (local["adapter"] / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "user/tiny" and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "[More Information Needed]" not in card  # PEFT's empty template was replaced by a real card
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/tiny-lora"' in card
    assert server.repo("user/tiny-lora").private


# --- loading back by repo id, where gpt2scratch is not installed ---------------------------------------


def test_pushed_model_loads_by_repo_id_with_the_same_logits(hub, pushes, local, vocab_dir):
    server, _ = hub
    assert pushes["model"]["rc"] == 0
    out = local["root"] / "loaded-model.pt"
    code = (
        isolated_prelude(server.client_env(local["root"] / "hf-home-model"))
        + f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("user/tiny", trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained("user/tiny", trust_remote_code=True).eval()
ids = tokenizer({TEXT!r}, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
torch.save({{"ids": ids, "logits": logits, "module": type(model).__module__}}, {str(out)!r})
"""
        + card_snippets(server.files("user/tiny")["README.md"])
    )
    proc = run_isolated(code, cwd=local["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Every effort moves you") == 2  # the card's generate and pipeline examples ran
    loaded = torch.load(out)
    assert loaded["module"].startswith("transformers_modules.")  # the code came from the repo
    assert loaded["ids"][0].tolist() == encode(load_encoding(vocab_dir), TEXT)
    with torch.no_grad():
        expected = local["model"](loaded["ids"]).logits
    torch.testing.assert_close(loaded["logits"], expected, rtol=0, atol=1e-5)


def test_pushed_adapter_loads_by_repo_id_with_the_same_logits(hub, pushes, local):
    server, _ = hub
    assert pushes["adapter"]["rc"] == 0
    out = local["root"] / "loaded-adapter.pt"
    ids = torch.tensor([[464, 1110, 318, 257, 1332, 13, 198, 50256]])
    code = (
        isolated_prelude(server.client_env(local["root"] / "hf-home-adapter"))
        + f"""
import torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("user/tiny-lora", trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.tensor({ids.tolist()})).logits
torch.save(logits, {str(out)!r})
"""
        + card_snippets(server.files("user/tiny-lora")["README.md"])
    )
    proc = run_isolated(code, cwd=local["root"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():
        expected = local["adapter_model"](input_ids=ids).logits
        base = local["model"](ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter changes the output
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=1e-5)
    assert any("/user/tiny/resolve/" in path for _, path in server.requests)  # the base came from the Hub


# --- datasets from the local Hub --------------------------------------------------------------------


def test_load_dataset_from_local_hub(hub, tmp_path):
    server, _ = hub
    train = b'text,label\n"Free entry, win a prize",1\nSee you at noon,0\nOk lar... Joking wif u oni,0\n'
    test = b"text,label\nURGENT! Call now,1\n"
    server.add_dataset("user/sms", {"train.csv": train, "test.csv": test, "README.md": b"# sms\n"})
    records = [
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
        {"instruction": "Greet", "input": "", "output": "Hi"},
    ]
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    server.add_dataset(
        "user/instr", {"data/train.jsonl": lines, "data/validation.jsonl": lines[: lines.index(b"\n") + 1]}
    )
    out = tmp_path / "rows.json"
    code = (
        isolated_prelude(server.client_env(tmp_path / "hf-home"))
        + f"""
import datasets
rows = {{}}
for repo in ("user/sms", "user/instr"):
    ds = datasets.load_dataset(repo)
    rows[repo] = {{split: ds[split].to_list() for split in ds}}
json.dump(rows, open({str(out)!r}, "w"))
"""
    )
    proc = run_isolated(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows["user/sms"] == {
        "train": [
            {"text": "Free entry, win a prize", "label": 1},
            {"text": "See you at noon", "label": 0},
            {"text": "Ok lar... Joking wif u oni", "label": 0},
        ],
        "test": [{"text": "URGENT! Call now", "label": 1}],
    }
    assert rows["user/instr"] == {
        "train": records,
        "validation": records[:1],
    }  # data/ folder layout, JSON lines


# --- local checks and the card, in process -------------------------------------------------------------


def test_check_folder_names_each_missing_file(local, tmp_path):
    check_folder(local["folder"])
    check_folder(local["adapter"])
    with pytest.raises(FileNotFoundError, match="missing modeling_gpt2scratch.py, model.safetensors"):
        check_folder(local["incomplete"])
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        check_folder(tmp_path / "nope")
    no_map = tmp_path / "no-auto-map"
    shutil.copytree(local["folder"], no_map)
    config = json.loads((no_map / "config.json").read_text())
    del config["auto_map"]
    (no_map / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="auto_map"):
        check_folder(no_map)
    bare = tmp_path / "adapter"
    shutil.copytree(local["adapter"], bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="PEFT adapter folder: missing tokenizer.json"):
        check_folder(bare)


def test_adapter_base_rules(local):
    assert adapter_base(local["adapter"], "alice/base")[0] == "alice/base"
    with pytest.raises(ValueError, match="--base-model-id"):
        adapter_base(local["adapter"], None)
    with pytest.raises(ValueError, match="not a Hub repository id"):
        adapter_base(local["adapter"], "/some/local/path")


def test_push_refuses_bad_repo_id_and_missing_token(local, monkeypatch):
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_to_hub(local["folder"], "a/b/c")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PermissionError, match="No Hugging Face token"):
        push_to_hub(local["folder"], "user/x")


def test_run_folder_leftovers_are_not_uploaded(local, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(local["folder"], run)
    for leftover in ("checkpoint-10/model", "base", "data", ".final.tmp"):
        (run / leftover).mkdir(parents=True)
        (run / leftover / "x.bin").write_bytes(b"x")
    (run / "metrics.json").write_text("{}")
    names = {str(p) for p in files_to_upload(run)}
    assert "metrics.json" in names and "model.safetensors" in names
    assert not any(n.startswith(("checkpoint-", "base", "data", ".")) for n in names)


def test_card_of_a_finetune_run_folder_lists_options_and_metrics(local, tmp_path):
    from gpt2scratch.hub import card_for

    run = tmp_path / "run"
    shutil.copytree(local["folder"], run)
    (run / "README.md").unlink(missing_ok=True)
    options = {
        "task": "lm",
        "method": "full",
        "model": str(local["folder"]),
        "lr": 0.0003,
        "train_file": "/home/me/secret/the-verdict.txt",
        "output_dir": str(run),
        "force": True,
    }
    (run / "training_args.yaml").write_text(yaml.safe_dump(options))
    (run / "metrics.json").write_text(json.dumps({"val": {"loss": 3.25, "perplexity": 25.79}, "steps": 40}))
    card = card_for(run, "user/verdict", "user/tiny", None)
    assert "Fine-tuned with `gpt2scratch finetune` (task `lm`, method `full`) starting from `model`" in card
    assert "| lr | 0.0003 |" in card and "| train_file | the-verdict.txt |" in card
    assert "/home/me" not in card and str(run) not in card and "force" not in card
    assert (
        "| split | loss | perplexity |" in card
        and "| val | 3.25 | 25.79 |" in card
        and "| steps | 40 |" in card
    )
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == "user/tiny"


def test_model_card_for_a_classifier_with_training_and_metrics():
    config = GPT2ScratchConfig.from_preset("tiny", num_labels=2, id2label={0: "ham", 1: "spam"})
    config.architectures = ["GPT2ScratchForSequenceClassification"]
    card = model_card(
        config,
        title="gpt2 spam",
        source="Fine-tuned from OpenAI's 124M checkpoint.",
        training={"method": "lora", "lr": 0.0005, "train_file": "a|b.csv"},
        metrics={"train": {"loss": 0.12345, "accuracy": 0.97}, "test": {"accuracy": 0.955}, "steps": 120},
        base_model="openai-community/gpt2",
        pipeline_tag="text-classification",
    )
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "openai-community/gpt2" and meta["pipeline_tag"] == "text-classification"
    with torch.device("meta"):
        n = sum(p.numel() for p in GPT2ScratchForSequenceClassification(config).parameters())
    assert count_parameters(config) == n and f"{n:,}" in card
    assert "AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)" in card
    assert 'pipeline("text-classification"' in card and "| labels | ham, spam |" in card
    assert (
        "| split | loss | accuracy |" in card
        and "| train | 0.1235 | 0.97 |" in card
        and "| test |  | 0.955 |" in card
    )
    assert "| steps | 120 |" in card and "| train_file | a\\|b.csv |" in card
    assert "Fine-tuned from OpenAI's 124M checkpoint." in card


def test_model_card_for_gpt2_124m_counts_its_parameters():
    card = model_card(GPT2ScratchConfig.from_preset("gpt2"), title="GPT-2", source="OpenAI")
    assert "124,439,808" in card  # transformers' GPT-2 124M, tied head counted once
    assert (
        "base_model" not in card.split("---\n")[1]
        and "## Training" not in card
        and "## Evaluation" not in card
    )
