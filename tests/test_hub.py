"""``gpt2scratch push`` and ``finetune --push-to-hub`` against a local Hub (tests/hub_server.py): what goes
up is exactly the expected files, loads back by repo id in an interpreter without gpt2scratch with the
same logits, and the options (private, revision, pull request) reach the server as asked; refusals
happen before any request.

huggingface_hub reads HF_ENDPOINT at import, so every Hub client runs in a subprocess whose
environment points at the local server (HF_TOKEN, HF_HOME in tmp, HF_HUB_DISABLE_XET=1): one for all
the pushes (and the finetune run), one for all the loads.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_isolated
from hub_server import LocalHub

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification, cli
from gpt2scratch.hub import adapter_base, check_folder, files_to_upload, finish_run, recorded_base
from gpt2scratch.io import save_model_folder
from gpt2scratch.model_card import REPO_PLACEHOLDER, count_parameters, model_card
from gpt2scratch.tokenizer import encode, load_encoding, save_tokenizer

pytestmark = pytest.mark.xdist_group("hub")  # the module's fixtures (a server, two subprocesses) run once

TOKEN = "hf_local_test_token"
TEXT = "Every effort moves you, and the verdict was"
IDS = [[464, 1110, 318, 257, 1332, 13, 198, 50256]]
TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"}
CODE = {"config.json", "configuration_gpt2scratch.py", "modeling_gpt2scratch.py", "model.safetensors"}
LM_FILES = CODE | TOKENIZER | {"generation_config.json", "README.md"}
CLASSIFIER_FILES = CODE | TOKENIZER | {"README.md"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"} | TOKENIZER
RUN_FILES = {"metrics.json", "history.json", "run.json", "train_log.jsonl", "training_args.yaml"} | {
    f"{name}-plot.{ext}" for name in ("loss", "accuracy") for ext in ("png", "pdf")
}

# Runs each command in one interpreter (imports are slow on a busy machine): ``gpt2scratch push ARGV``
# or ``scripts/finetune.py ARGV``; before each, a marker request lets the test attribute the server's
# requests to it.
PUSH_SCRIPT = """
import contextlib, io, json, os, runpy, sys, urllib.request
import torch
torch.set_num_threads(1)  # tiny steps on a shared 2-core machine
from gpt2scratch import cli
finetune = runpy.run_path(sys.argv[3])["main"]
results = []
for i, (command, argv) in enumerate(json.loads(sys.argv[1])):
    try:
        urllib.request.urlopen(f"{os.environ['HF_ENDPOINT']}/marker/{i}")
    except Exception:
        pass
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["push", *argv]) if command == "push" else finetune(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""

# Loads every pushed repository by id in one interpreter without gpt2scratch; each part records its
# results, or its traceback, so one failure does not hide the others.
LOAD_SCRIPT = """
import contextlib, io, traceback
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
IDS = torch.tensor(IDS_LIST)

def model():
    tokenizer = AutoTokenizer.from_pretrained("user/tiny")
    lm = AutoModelForCausalLM.from_pretrained("user/tiny", trust_remote_code=True).eval()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    return {"ids": ids, "logits": lm(ids).logits, "module": type(lm).__module__}

def branch():
    lm = AutoModelForCausalLM.from_pretrained("user/tiny", revision="dev", trust_remote_code=True).eval()
    return {"logits": lm(IDS).logits}

def classifier():
    tokenizer = AutoTokenizer.from_pretrained("user/tiny-cls")
    cls = AutoModelForSequenceClassification.from_pretrained("user/tiny-cls", trust_remote_code=True).eval()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    classify = pipeline("text-classification", model="user/tiny-cls", trust_remote_code=True)
    return {"ids": ids, "logits": cls(ids).logits, "pipeline": classify(TEXT)[0]}

def adapter():
    lm = AutoPeftModelForCausalLM.from_pretrained("user/tiny-lora", trust_remote_code=True).eval()
    return {"logits": lm(input_ids=IDS).logits}

def run():
    cls = AutoPeftModelForSequenceClassification.from_pretrained("user/sms-lora", trust_remote_code=True).eval()
    return {"logits": cls(input_ids=IDS).logits}

results = {}
for name, part in [("model", model), ("branch", branch), ("classifier", classifier), ("adapter", adapter), ("run", run)]:
    out = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(out):
            results[name] = part()
            exec(SNIPPETS.get(name, ""), {})  # the model card's own examples
        results[name]["stdout"] = out.getvalue()
    except Exception:
        results[name] = {"error": traceback.format_exc()}
torch.save(results, OUT)
"""


def isolated_prelude(env: dict[str, str]) -> str:
    """Code that points the isolated interpreter at the local Hub before anything imports huggingface_hub."""
    return f"import os, json\nos.environ.pop('HF_HUB_OFFLINE', None)\nos.environ.update(json.loads({json.dumps(env)!r}))\n"


def card_snippets(readme: bytes) -> str:
    """The model card's Python code blocks: the card's usage must work."""
    blocks = re.findall(r"```python\n(.*?)```", readme.decode(), re.S)
    assert blocks, "the model card has no Python example"
    return "\n".join(blocks)


def front_matter(card: bytes | str) -> dict:
    text = card.decode() if isinstance(card, bytes) else card
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def calls(server: LocalHub, result: dict, path: str) -> list:
    """The server's record of the requests to ``path`` made by one command."""
    return [c for c in server.calls[result["calls"]] if c.path == path]


def first_weights(local: dict) -> bytes:
    return (local["folder"] / "model.safetensors").read_bytes()


def loaded(part: dict) -> dict:
    assert "error" not in part, part.get("error")
    return part


# --- fixtures: models, an adapter, a server, one round of pushes, one round of loads -------------------


def _tiny(cls, seed: int, **config):
    torch.manual_seed(seed)
    return cls(GPT2ScratchConfig.from_preset("tiny", **config)).eval()


@pytest.fixture(scope="module")
def local(tmp_path_factory, vocab_dir, shared_data):
    """Tiny causal LMs (the first, and an update), a LoRA adapter (recording the local base path), a
    classifier and its update, broken copies, and a small SMS training file."""
    root = tmp_path_factory.mktemp("hub")
    model = _tiny(GPT2ScratchForCausalLM, 0)
    folder = save_model_folder(model, root / "model", vocab_dir)
    updated = _tiny(GPT2ScratchForCausalLM, 3)
    save_model_folder(updated, root / "updated", vocab_dir)

    incomplete = root / "incomplete"
    shutil.copytree(folder, incomplete)
    (incomplete / "model.safetensors").unlink()
    (incomplete / "modeling_gpt2scratch.py").unlink()

    labels = {"num_labels": 2, "id2label": {0: "ham", 1: "spam"}, "label2id": {"ham": 0, "spam": 1}}
    classifier = _tiny(GPT2ScratchForSequenceClassification, 2, **labels)
    save_model_folder(classifier, root / "cls-v1", vocab_dir)
    (root / "cls-v1" / "pytorch_model.bin").write_bytes(b"stale weights of an older save")
    classifier_v2 = copy.deepcopy(classifier)
    with torch.no_grad():
        classifier_v2.score.weight.mul_(-2.0)
    save_model_folder(classifier_v2, root / "cls-v2", vocab_dir)

    adapter_model, adapter = _adapter(model, folder, root / "adapter", vocab_dir)
    lines = (shared_data / "sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    sms = root / "SMSSpamCollection"
    sms.write_text("\n".join([x for x in lines if x.startswith("ham")][:24] + [x for x in lines if x.startswith("spam")][:24]) + "\n")  # fmt: skip
    return {
        "root": root,
        "model": model,
        "folder": folder,
        "updated": updated,
        "incomplete": incomplete,
        "classifier_v2": classifier_v2,
        "adapter_model": adapter_model,
        "adapter": adapter,
        "sms": sms,
        "run": root / "run",
    }


def _adapter(base_model, base_folder: Path, out: Path, vocab_dir: Path):
    """A LoRA adapter with non-zero B matrices (so it changes the logits), saved as the trainer does."""
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
def pushes(hub, local, vocab_dir):
    """Every command, in order, in one subprocess; results keyed by name, each with the slice of
    ``server.calls`` it made."""
    server, _ = hub
    folder, updated, root = str(local["folder"]), str(local["root"] / "updated"), local["root"]
    finetune = ["--task", "classification", "--method", "lora", "--model", "init:tiny", "--train-file",
                str(local["sms"]), "--tokenizer-dir", str(vocab_dir), "--output-dir", str(local["run"]),
                "--max-steps", "2", "--batch-size", "8", "--max-length", "32", "--lora-dropout", "0",
                "--push-to-hub", "user/sms-lora"]  # fmt: skip
    runs = {
        "incomplete": ("push", [str(local["incomplete"]), "user/incomplete"]),
        "adapter-no-id": ("push", [str(local["adapter"]), "user/lora-no-id"]),
        "bad-token": ("push", [folder, "user/tiny", "--token", "hf_wrong"]),
        "other-namespace": ("push", [folder, "alice/tiny"]),
        "pr-and-branch": ("push", [folder, "user/tiny", "--create-pr", "--revision", "dev"]),
        "model": ("push", [folder, "user/tiny", "--commit-message", "first push"]),
        "again": ("push", [folder, "user/tiny"]),
        "branch": ("push", [updated, "user/tiny", "--revision", "dev"]),
        "pr": ("push", [updated, "user/tiny", "--create-pr", "--commit-message", "new weights"]),
        "adapter": ("push", [str(local["adapter"]), "user/tiny-lora", "--base-model-id", "user/tiny", "--private"]),
        "classifier": ("push", [str(root / "cls-v1"), "user/tiny-cls"]),
        "classifier-update": ("push", [str(root / "cls-v2"), "user/tiny-cls", "--commit-message", "v2"]),
        "finetune": ("finetune", finetune),  # last: it configures logging for the interpreter
    }  # fmt: skip
    out = root / "push-results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(server.client_env(root / "hf-home-push"))
    proc = subprocess.run(
        [sys.executable, "-c", PUSH_SCRIPT, json.dumps(list(runs.values())), str(out),
         str(REPO / "scripts/finetune.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip(runs, json.loads(out.read_text()), strict=True))
    marks = [server.requests.index(("GET", f"/marker/{i}")) for i in range(len(runs))] + [len(server.calls)]
    for i, name in enumerate(runs):  # the requests each command made, between its markers
        results[name]["calls"] = slice(marks[i] + 1, marks[i + 1])
        results[name]["requests"] = server.requests[marks[i] + 1 : marks[i + 1]]
    return results


@pytest.fixture(scope="module")
def loads(hub, pushes, local):
    """Every pushed repository loaded by id (LOAD_SCRIPT) where gpt2scratch cannot be imported."""
    server, _ = hub
    repos = {"model": "user/tiny", "classifier": "user/tiny-cls", "adapter": "user/tiny-lora"}
    snippets = {
        name: card_snippets(server.files(repo)["README.md"])
        for name, repo in repos.items()
        if repo in {r for _, r in server.repos}
    }
    out = local["root"] / "loaded.pt"
    code = (
        isolated_prelude(server.client_env(local["root"] / "hf-home-load"))
        + f"TEXT, IDS_LIST, OUT = {TEXT!r}, {IDS!r}, {str(out)!r}\nSNIPPETS = {snippets!r}\n"
        + LOAD_SCRIPT
    )
    proc = run_isolated(code, cwd=local["root"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


# --- pushing -----------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_model_folder(hub, pushes, local):
    server, _ = hub
    result = pushes["model"]
    assert result["rc"] == 0, result["err"]
    assert "user/tiny" in result["out"]
    files = server.files("user/tiny")
    assert set(files) == LM_FILES  # README.md was written into the folder first, then pushed with it
    for name in LM_FILES:
        assert files[name] == (local["folder"] / name).read_bytes(), name
    repo = server.repo("user/tiny")
    assert repo.messages[repo.main] == "first push"  # the later branch and pull request left main alone
    (create,) = calls(server, result, "/api/repos/create")
    assert create.payload["name"] == "tiny" and create.payload.get("visibility") != "private"
    (commit,) = calls(server, result, "/api/models/user/tiny/commit/main")
    assert commit.payload["summary"] == "first push" and commit.query == {}
    assert not repo.private


def test_pushing_unchanged_folder_again_makes_no_commit(hub, pushes):
    server, _ = hub
    assert pushes["again"]["rc"] == 0, pushes["again"]["err"]
    assert not any(path.endswith("/commit/main") for _, path in pushes["again"]["requests"])


def test_revision_creates_the_branch_and_commits_there(hub, pushes, local):
    server, _ = hub
    result = pushes["branch"]
    assert result["rc"] == 0, result["err"]
    assert result["out"].strip().endswith("/user/tiny/tree/dev")
    assert [c.method for c in calls(server, result, "/api/models/user/tiny/branch/dev")] == ["POST"]
    assert len(calls(server, result, "/api/models/user/tiny/commit/dev")) == 1
    new = (local["root"] / "updated" / "model.safetensors").read_bytes()
    assert server.files("user/tiny", "dev")["model.safetensors"] == new
    assert server.files("user/tiny")["model.safetensors"] == first_weights(local)


def test_create_pr_opens_a_pull_request_and_leaves_main(hub, pushes, local):
    server, _ = hub
    result = pushes["pr"]
    assert result["rc"] == 0, result["err"]
    assert result["out"].strip().endswith("/user/tiny/discussions/1")
    (commit,) = calls(server, result, "/api/models/user/tiny/commit/main")
    assert commit.query == {"create_pr": "1"} and commit.payload["summary"] == "new weights"
    new = (local["root"] / "updated" / "model.safetensors").read_bytes()
    assert server.files("user/tiny", "refs/pr/1")["model.safetensors"] == new
    assert server.files("user/tiny")["model.safetensors"] == first_weights(local)
    refused = pushes["pr-and-branch"]
    assert refused["rc"] == 2 and "--create-pr" in refused["err"] and "--revision dev" in refused["err"]
    assert refused["requests"] == []


def test_second_push_updates_in_place(hub, pushes, local):
    server, _ = hub
    assert pushes["classifier"]["rc"] == 0, pushes["classifier"]["err"]
    repo = server.repo("user/tiny-cls")
    (first,) = [sha for sha, message in repo.messages.items() if message == "Upload cls-v1 with gpt2scratch"]
    assert "pytorch_model.bin" in repo.commits[first]
    result = pushes["classifier-update"]
    assert result["rc"] == 0, result["err"]
    assert len(repo.commits) == 3 and repo.messages[repo.main] == "v2"  # initial, v1, v2: one repository
    files = server.files("user/tiny-cls")
    assert set(files) == CLASSIFIER_FILES  # the stale weights file of the first push is gone
    for name in CLASSIFIER_FILES:
        assert files[name] == (local["root"] / "cls-v2" / name).read_bytes(), name


def test_pushed_card_is_a_model_card(hub, pushes, local):
    server, _ = hub
    card = server.files("user/tiny")["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"gpt2", "gpt2scratch", "custom_code"} <= set(meta["tags"]) and meta["license"] == "mit"
    assert "model-index" not in meta and "datasets" not in meta
    n_params = sum(p.numel() for p in local["model"].parameters())
    assert f"| parameters | {n_params:,}" in card
    assert (
        "| layers | 2 |" in card
        and "| attention heads | 4 |" in card
        and "| context length (tokens) | 128 |" in card
    )
    assert 'repo = "user/tiny"' in card and "revision=revision, trust_remote_code=True)" in card
    assert "set `revision` to the full commit sha" in card
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
    assert "Traceback" not in other["err"]


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


def test_adapter_is_pushed_private_with_the_hub_base_id(hub, pushes, local):
    server, _ = hub
    result = pushes["adapter"]
    assert result["rc"] == 0, result["err"]
    files = server.files("user/tiny-lora")
    assert set(files) == ADAPTER_FILES
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "user/tiny"
    local_config = json.loads((local["adapter"] / "adapter_config.json").read_text())
    assert local_config["base_model_name_or_path"] == str(local["folder"].resolve())  # still loads locally
    assert files["adapter_model.safetensors"] == (local["adapter"] / "adapter_model.safetensors").read_bytes()
    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["base_model"] == "user/tiny" and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "[More Information Needed]" not in card  # PEFT's empty template was replaced by a real card
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/tiny-lora"' in card
    (create,) = calls(server, result, "/api/repos/create")
    assert create.payload == {"name": "tiny-lora", "organization": "user", "visibility": "private"}
    assert server.repo("user/tiny-lora").private


# --- finetune --push-to-hub ----------------------------------------------------------------------------


def test_finetune_pushes_the_adapter_and_its_base(hub, pushes, local):
    server, _ = hub
    result, run = pushes["finetune"], local["run"]
    assert result["rc"] == 0, result["err"][-3000:]
    files = server.files("user/sms-lora")
    tensorboard = {name for name in files if name.startswith("tensorboard/")}
    assert set(files) - tensorboard == ADAPTER_FILES | RUN_FILES  # no base/, data/ or checkpoints
    for name in set(files) - {"adapter_config.json", "training_args.yaml"}:
        assert files[name] == (run / name).read_bytes(), name
    options = yaml.safe_load(files["training_args.yaml"])
    assert options["train_file"] == "SMSSpamCollection" and options["output_dir"] == "run"
    assert (
        options["push_to_hub"] == "user/sms-lora"
        and str(local["root"]) not in files["training_args.yaml"].decode()
    )
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "user/sms-lora-base"
    base = server.files("user/sms-lora-base")
    assert set(base) == CLASSIFIER_FILES
    assert base["model.safetensors"] == (run / "base" / "model.safetensors").read_bytes()
    assert "[user/sms-lora](https://huggingface.co/user/sms-lora)" in base["README.md"].decode()
    assert f"pushed {run} to {server.url}/user/sms-lora" in result["err"]  # logged by the main process
    pushed = [c.path for c in server.calls[result["calls"]] if c.path.endswith("/commit/main")]
    assert pushed == ["/api/models/user/sms-lora-base/commit/main", "/api/models/user/sms-lora/commit/main"]


def test_finetune_card_carries_the_metrics_of_the_run(hub, pushes, local):
    server, _ = hub
    assert pushes["finetune"]["rc"] == 0
    metrics = json.loads((local["run"] / "metrics.json").read_text())
    card = server.files("user/sms-lora")["README.md"].decode()
    meta = front_matter(card)
    assert meta["base_model"] == "user/sms-lora-base" and meta["pipeline_tag"] == "text-classification"
    assert meta["library_name"] == "peft" and "datasets" not in meta  # trained on a local file
    (index,) = meta["model-index"]
    assert index["name"] == "sms-lora"
    recorded = {
        (r["dataset"]["split"], m["type"]): m["value"]
        for r in index["results"]
        for m in r["metrics"]
        if r["task"]["type"] == "text-classification" and r["dataset"]["name"] == "SMSSpamCollection"
    }
    expected = {
        (split, name): value for split in ("validation", "test") for name, value in metrics[split].items()
    }
    assert recorded == expected and ("test", "accuracy") in recorded
    assert f"| test | {metrics['test']['loss']:.4g} | {metrics['test']['accuracy']:.4g} |" in card
    assert "![Loss](loss-plot.png)" in card and "Training data: `SMSSpamCollection`" in card
    assert str(local["root"]) not in card  # no local paths published
    assert (local["run"] / "README.md").read_text() == card  # the card was written into the run folder


# --- loading back by repo id, where gpt2scratch is not installed ---------------------------------------


def test_pushed_model_loads_by_repo_id_with_the_same_logits(loads, local, vocab_dir):
    part = loaded(loads["model"])
    assert part["stdout"].count("Every effort moves you") == 2  # the card's generate and pipeline ran
    assert part["module"].startswith("transformers_modules.")  # the code came from the repo
    assert part["ids"][0].tolist() == encode(load_encoding(vocab_dir), TEXT)
    with torch.no_grad():
        expected = local["model"](part["ids"]).logits
    torch.testing.assert_close(part["logits"], expected, rtol=0, atol=1e-5)


def test_branch_loads_with_its_revision(loads, local):
    part = loaded(loads["branch"])
    with torch.no_grad():
        expected = local["updated"](torch.tensor(IDS)).logits
    torch.testing.assert_close(part["logits"], expected, rtol=0, atol=1e-5)


def test_pushed_classifier_loads_with_auto_class_and_pipeline(loads, local):
    part = loaded(loads["classifier"])
    with torch.no_grad():
        expected = local["classifier_v2"](part["ids"]).logits  # the second push's weights
    torch.testing.assert_close(part["logits"], expected, rtol=0, atol=1e-5)
    probs = expected.softmax(-1)[0]
    label = int(probs.argmax())
    assert part["pipeline"]["label"] == ["ham", "spam"][label]
    assert part["pipeline"]["score"] == pytest.approx(float(probs[label]), abs=1e-5)
    assert "'label':" in part["stdout"]  # the card's pipeline example ran


def test_pushed_adapter_loads_by_repo_id_with_the_same_logits(hub, loads, local):
    server, _ = hub
    part = loaded(loads["adapter"])
    ids = torch.tensor(IDS)
    with torch.no_grad():
        expected = local["adapter_model"](input_ids=ids).logits
        base = local["model"](ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)  # the adapter changes the output
    torch.testing.assert_close(part["logits"], expected, rtol=0, atol=1e-5)
    assert any("/user/tiny/resolve/" in path for _, path in server.requests)  # the base came from the Hub


def test_finetune_pushed_adapter_loads_with_auto_peft(loads, local):
    from gpt2scratch.loading import load_model

    part = loaded(loads["run"])
    with torch.no_grad():
        expected = load_model(local["run"], task="classification").model(torch.tensor(IDS)).logits
    torch.testing.assert_close(part["logits"], expected, rtol=0, atol=1e-5)


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


def test_a_relative_base_is_taken_from_the_adapter_folder(tmp_path, monkeypatch):
    """finetune writes ``./base``: the run's own base, even where the working directory has a base/ too."""
    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "./base"}))
    (tmp_path / "elsewhere" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert recorded_base(run) == ("./base", str((run / "base").resolve()))
    shutil.rmtree(
        run / "base"
    )  # nothing beside the adapter: plain PEFT's reading, from the working directory
    assert recorded_base(run)[1] == str((tmp_path / "elsewhere" / "base").resolve())


def test_adapter_base_rules(local):
    assert adapter_base(local["adapter"], "alice/base")[0] == "alice/base"
    with pytest.raises(ValueError, match="--base-model-id"):
        adapter_base(local["adapter"], None)
    with pytest.raises(ValueError, match="not a Hub repository id"):
        adapter_base(local["adapter"], "/some/local/path")


@pytest.fixture
def online(monkeypatch, tmp_path):
    """This process as a user's shell: not offline, no token in the environment or the login cache."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    return monkeypatch


def test_missing_token_is_a_clear_error(local, online, tmp_path, capsys):
    assert cli.main(["push", str(local["folder"]), "a/b/c"]) == 2
    assert "not a Hub repository id" in capsys.readouterr().err
    assert cli.main(["push", str(local["folder"]), "user/x"]) == 2
    err = capsys.readouterr().err
    assert "No Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "hf-token").write_text("hf_from_the_login_cache\n")  # what `hf auth login` saves
    from gpt2scratch.hub import resolve_token

    assert resolve_token(None) == "hf_from_the_login_cache"
    online.setenv("HF_TOKEN", "hf_from_the_environment")
    assert resolve_token(None) == "hf_from_the_environment"


def test_unreachable_hub_is_a_clear_error(local, online, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    online.setattr("huggingface_hub.constants.ENDPOINT", endpoint)  # what HF_ENDPOINT sets at import
    online.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(local["folder"]), "user/tiny"]) == 2
    err = capsys.readouterr().err
    assert f"Could not reach the Hub at {endpoint}" in err and "HF_ENDPOINT" in err
    assert "then push again" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_finish_run_writes_the_card_of_a_run_once(local, tmp_path):
    run = tmp_path / "my-run"
    shutil.copytree(local["folder"], run)
    (run / "README.md").unlink(missing_ok=True)
    options = {"task": "lm", "method": "full", "dataset": "user/verdict", "lr": 0.0003}
    (run / "training_args.yaml").write_text(yaml.safe_dump(options))
    metrics = {"train": {"loss": 3.0}, "validation": {"loss": 3.25, "perplexity": 25.79}, "steps": 40}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert finish_run(run, None) is None
    card = (run / "README.md").read_text()
    meta = front_matter(card)
    assert meta["datasets"] == ["user/verdict"] and meta["pipeline_tag"] == "text-generation"
    (index,) = meta["model-index"]
    assert index["name"] == "my-run"
    (result,) = index["results"]  # validation only: training-split figures are not evaluation results
    assert result["dataset"] == {"name": "user/verdict", "type": "user/verdict", "split": "validation"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"loss": 3.25, "perplexity": 25.79}
    assert "Training data: `user/verdict`" in card and REPO_PLACEHOLDER in card  # replaced at push time
    (run / "README.md").write_text("# my own card\n")
    finish_run(run, None)
    assert (run / "README.md").read_text() == "# my own card\n"  # an existing card is kept


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
    assert (
        "AutoModelForSequenceClassification.from_pretrained(repo, revision=revision, trust_remote_code=True)"
        in card
    )
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


@pytest.mark.parametrize("task", ["classification", "instruction"])
def test_model_card_settings_name_the_split_seed_and_only_the_tasks_own_options(task):
    config = GPT2ScratchConfig.from_preset("tiny")
    training = {
        "task": task,
        "train_file": "data.csv",
        "split_seed": 7,
        "response_loss_only": True,
        "balance": True,
    }
    pipeline_tag = "text-classification" if task == "classification" else "text-generation"
    card = model_card(config, title="t", source="s", training=training, pipeline_tag=pipeline_tag)
    shares = "70%/10%/20%" if task == "classification" else "85%/5%/10%"
    assert f"train/validation/test {shares} (split seed 7)" in card and "`split_seed`" not in card
    assert ("| response_loss_only | True |" in card) == (task == "instruction")
    assert ("| balance | True |" in card) == (task == "classification")


def test_instruction_card_prompts_with_the_template_it_was_trained_on():
    from gpt2scratch.model_card import INSTRUCTION_EXAMPLE
    from gpt2scratch.training.data import format_prompt

    training = {"task": "instruction", "model": "gpt2-124m", "train_file": "data.json"}
    card = model_card(GPT2ScratchConfig.from_preset("tiny"), title="t", source="s", training=training)
    block = card.split("prompt = (", 1)[1].split("\n)\n", 1)[0]
    assert eval("(" + block.split("\n", 1)[1] + ")") == format_prompt(*INSTRUCTION_EXAMPLE)
    assert "### Response:" in card and "out[0, ids.shape[1] :]" in card
    assert "GPT-2 was trained on WebText" in card


def test_card_of_a_run_from_random_init_does_not_claim_webtext():
    training = {"task": "lm", "model": "init:tiny", "train_file": "corpus.txt"}
    card = model_card(GPT2ScratchConfig.from_preset("tiny"), title="t", source="s", training=training)
    assert "WebText" in card and "trained on WebText" not in card
    assert "from random initialisation on the data described above only" in card


@pytest.mark.parametrize("method", ["full", "lora", "last-block"])
def test_model_card_settings_leave_out_other_methods_options(method):
    training = {"task": "classification", "method": method, "lora_r": 8, "last_n_blocks": 1, "lr": 0.001}
    card = model_card(GPT2ScratchConfig.from_preset("tiny"), title="t", source="s", training=training)
    assert "| lr | 0.001 |" in card
    assert ("| lora_r | 8 |" in card) == (method == "lora")
    assert ("| last_n_blocks | 1 |" in card) == (method == "last-block")


def test_model_card_says_how_an_lm_run_held_out_its_validation_blocks():
    training = {"task": "lm", "train_file": "corpus.txt", "split_seed": 7}
    card = model_card(GPT2ScratchConfig.from_preset("tiny"), title="t", source="s", training=training)
    assert "`corpus.txt`, the last 10% of its packed blocks held out for validation." in card
    assert "train/validation/test" not in card


@pytest.mark.parametrize("pipeline_tag", ["text-classification", "text-generation"])
def test_model_card_loads_the_tokenizer_with_trust_remote_code(pipeline_tag):
    """AutoTokenizer reads config.json (model type gpt2scratch, remote code) to pick the tokenizer: without
    trust_remote_code=True it asks "Do you wish to run the custom code?" or, non-interactively, fails."""
    card = model_card(GPT2ScratchConfig.from_preset("tiny"), title="t", source="s", pipeline_tag=pipeline_tag)
    calls = re.findall(r"AutoTokenizer\.from_pretrained\([^)]*\)", card)
    assert calls == ["AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)"]
