"""End-to-end fine-tuning on a tiny random-init GPT-2 and the real data: each task × method.

Each run is a few optimizer steps, in this process (``run(parse_args([...]))``), so the whole file
takes well under two minutes on two cores. What is checked: the loss falls, the metrics in
metrics.json equal those recomputed by hand from the reloaded output folder, the plots and the
TensorBoard loss at every logged step are written, only the intended parameters train, and LoRA's
merged and unmerged models agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt2scratch.training.args import parse_args

pytestmark = pytest.mark.xdist_group("finetune")

REPO_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SMALL = ["--model", "init:tiny", "--batch-size", "8", "--seed", "1", "--log-every", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine a second thread makes tiny steps ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(out: Path, *options: str) -> dict | None:
    """Run ``finetune`` in this process and reset Accelerate's process-wide state afterwards."""
    from accelerate.state import AcceleratorState, GradientState

    from gpt2scratch.training.loop import run

    try:
        return run(parse_args(["--output-dir", str(out), *SMALL, *options]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def sms_subset(shared_data: Path, folder: Path, n_per_class: int = 100) -> Path:
    """The first ``n_per_class`` ham and spam lines of the real SMS file, in its own format."""
    lines = (shared_data / "sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    ham = [x for x in lines if x.startswith("ham\t")][:n_per_class]
    spam = [x for x in lines if x.startswith("spam\t")][:n_per_class]
    path = folder / "SMSSpamCollection"
    path.write_text("\n".join(ham + spam) + "\n", encoding="utf-8")
    return path


def instruction_subset(shared_data: Path, folder: Path, n: int = 48) -> Path:
    records = json.loads((shared_data / "instruction/instruction-data.json").read_text(encoding="utf-8"))
    path = folder / "instructions.json"
    path.write_text(json.dumps(records[:n]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sms(shared_data, tmp_path_factory) -> Path:
    return sms_subset(shared_data, tmp_path_factory.mktemp("sms"))


@pytest.fixture(scope="module")
def cls_full(sms, vocab_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "full"
    train(
        out,
        "--train-file",
        str(sms),
        "--balance",
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "12",
        "--lr",
        "2e-3",
        "--eval-every",
        "4",
        "--save-every",
        "6",
        "--max-length",
        "64",
    )
    return out


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def train_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def val_loss_fell(out: Path) -> None:
    """The validation loss at the end is below the one before training (history.json, step 0)."""
    history = json.loads((out / "history.json").read_text())["val_loss"]
    assert history[0][0] == 0
    assert history[-1][1] == pytest.approx(read_metrics(out)["validation"]["loss"])
    assert history[-1][1] < history[0][1], f"validation loss went from {history[0][1]} to {history[-1][1]}"


def classify_csv(folder: Path, csv: Path, max_length: int = 64) -> tuple[list[int], list[int], list[float]]:
    """Predictions and per-example losses of the saved folder (Auto classes + trust_remote_code + its
    tokenizer) on a split CSV, one message at a time (no padding)."""
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    rows = pd.read_csv(csv, keep_default_na=False)
    refs = [model.config.label2id[str(label)] for label in rows["label"]]
    preds, losses = [], []
    with torch.no_grad():
        for text, ref in zip(rows["text"], refs, strict=True):
            logits = model(**tok(text, truncation=True, max_length=max_length, return_tensors="pt")).logits
            preds.append(int(logits.argmax(-1)))
            losses.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor([ref]))))
    return preds, refs, losses


# ----------------------------------------------------------------------------------------- classification


def test_classification_full_writes_everything(cls_full):
    names = {p.name for p in cls_full.iterdir()}
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "training_args.yaml",
        "loss-plot.png",
        "loss-plot.pdf",
        "accuracy-plot.png",
        "accuracy-plot.pdf",
        "run.json",
    ):
        assert name in names, name
    assert json.loads((cls_full / "run.json").read_text()) == {"finished": True, "step": 12}
    assert sorted(p.name for p in (cls_full / "data").iterdir()) == [
        "test.csv",
        "train.csv",
        "validation.csv",
    ]
    assert (cls_full / "checkpoint-6/model/config.json").is_file()
    config = json.loads((cls_full / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"}


def test_classification_split_is_balanced_70_10_20(cls_full):
    import pandas as pd

    sizes = {n: len(pd.read_csv(cls_full / f"data/{n}.csv")) for n in ("train", "validation", "test")}
    assert sizes == {"train": 140, "validation": 20, "test": 40}
    labels = pd.concat([pd.read_csv(cls_full / f"data/{n}.csv") for n in sizes])["label"]
    assert (labels == "spam").sum() == (labels == "ham").sum() == 100


def test_classification_loss_falls(cls_full):
    val_loss_fell(cls_full)


def test_metrics_equal_predictions_of_reloaded_folder(cls_full):
    """metrics.json (computed by the in-memory model on padded batches) = loss, accuracy and F1 counted by
    hand from the reloaded folder's predictions."""
    preds, refs, losses = classify_csv(cls_full, cls_full / "data/test.csv")
    test = read_metrics(cls_full)["test"]
    assert test["loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    tp = sum(p == r == 1 for p, r in zip(preds, refs, strict=True))
    fp = sum(p == 1 and r == 0 for p, r in zip(preds, refs, strict=True))
    fn = sum(p == 0 and r == 1 for p, r in zip(preds, refs, strict=True))
    assert test["accuracy"] == pytest.approx(
        sum(p == r for p, r in zip(preds, refs, strict=True)) / len(refs)
    )
    assert test["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert test["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)


def test_tensorboard_holds_loss_of_every_step(cls_full):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (cls_full / "tensorboard").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    scalars = {e.step: e.value for e in acc.Scalars("train/loss")}
    logged = {r["step"]: r["loss"] for r in train_log(cls_full)}
    assert sorted(scalars) == list(range(1, 13))
    assert scalars == pytest.approx(logged, rel=1e-6)
    assert [e.step for e in acc.Scalars("val/accuracy")] == [0, 4, 8, 12]


def test_checkpoint_model_loads_through_loading(cls_full):
    from gpt2scratch.loading import load_model

    loaded = load_model(cls_full / "checkpoint-6", task="classification")
    final = load_model(cls_full, task="classification")
    assert loaded.kind == "checkpoint"
    assert not torch.equal(loaded.model.score.weight, final.model.score.weight)


@pytest.fixture(scope="module")
def cls_lora(sms, vocab_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "lora"
    train(
        out,
        "--train-file",
        str(sms),
        "--balance",
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "8",
        "--lr",
        "5e-3",
        "--method",
        "lora",
        "--lora-r",
        "4",
        "--max-length",
        "64",
        "--save-every",
        "4",
    )
    return out


def test_lora_trains_only_adapters_and_head(cls_lora, tiny_config, monkeypatch):
    metrics = read_metrics(cls_lora)
    e, r = tiny_config.n_embd, 4
    per_block = (
        r * (e + 3 * e) + r * (e + e) + r * (e + 4 * e) + r * (4 * e + e)
    )  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert metrics["trainable_parameters"] == tiny_config.n_layer * per_block + 2 * e  # + the score head
    from peft import AutoPeftModelForSequenceClassification

    from gpt2scratch import GPT2ScratchForSequenceClassification

    # the adapter names its base "./base", which PEFT takes from the working directory
    monkeypatch.chdir(cls_lora)
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(".", trust_remote_code=True)
    base = GPT2ScratchForSequenceClassification.from_pretrained(cls_lora / "base").state_dict()
    tuned = {
        k.replace(".base_layer", ""): v
        for k, v in peft_model.get_base_model().state_dict().items()
        if "lora_" not in k and "score" not in k
    }
    assert tuned.keys() == {k for k in base if not k.startswith("score")}
    for name, value in tuned.items():
        assert torch.equal(value, base[name]), f"{name} changed: only adapters and the head may train"
    head = peft_model.get_base_model().score.modules_to_save["default"].weight
    assert not torch.equal(head, base["score.weight"])


def test_lora_merged_equals_unmerged(cls_lora):
    from peft import PeftModel

    from gpt2scratch import GPT2ScratchForSequenceClassification

    base = GPT2ScratchForSequenceClassification.from_pretrained(cls_lora / "base").eval()
    unmerged = PeftModel.from_pretrained(base, cls_lora).eval()
    ids = torch.randint(0, 50257, (3, 20))
    with torch.no_grad():
        before = unmerged(input_ids=ids).logits
        merged = unmerged.merge_and_unload()
        after = merged(input_ids=ids).logits
    assert (before - after).abs().max() < 1e-5
    from gpt2scratch.loading import load_model

    loaded = load_model(cls_lora, task="classification").model
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, after, atol=1e-6)


def test_lora_metrics_match_reloaded_adapter(cls_lora):
    preds, refs = _predict_with_loading(cls_lora)
    assert read_metrics(cls_lora)["test"]["accuracy"] == pytest.approx(
        sum(p == r for p, r in zip(preds, refs, strict=True)) / len(refs)
    )


def _predict_with_loading(folder: Path):
    import pandas as pd

    from gpt2scratch.loading import load_model
    from gpt2scratch.tokenizer import encode, load_encoding

    loaded = load_model(folder, task="classification")
    enc = load_encoding(loaded.tokenizer_dir)
    rows = pd.read_csv(folder / "data/test.csv", keep_default_na=False)
    with torch.no_grad():
        preds = [
            int(loaded.model(input_ids=torch.tensor([encode(enc, t)[:64]])).logits.argmax(-1))
            for t in rows["text"]
        ]
    return preds, [loaded.model.config.label2id[x] for x in rows["label"]]


def test_last_block_freezes_all_but_last_block(sms, vocab_dir, tmp_path, tiny_config):
    from accelerate.utils import set_seed

    from gpt2scratch.loading import load_model

    out = tmp_path / "last"
    train(
        out,
        "--train-file",
        str(sms),
        "--balance",
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "4",
        "--lr",
        "5e-3",
        "--method",
        "last-block",
        "--max-length",
        "64",
    )
    set_seed(1)  # the run's seed: the same random initial weights
    initial = load_model(
        "init:tiny", task="classification", tokenizer_dir=vocab_dir, num_labels=2
    ).model.state_dict()
    final = load_model(out, task="classification").model.state_dict()
    trainable = [k for k in initial if k.startswith(("transformer.h.1.", "transformer.ln_f.", "score."))]
    for name, value in initial.items():
        assert torch.equal(final[name], value) == (name not in trainable), name
    e = tiny_config.n_embd
    block = 12 * e * e + 13 * e  # attn + mlp matrices and biases, two LayerNorms
    assert read_metrics(out)["trainable_parameters"] == block + 2 * e + 2 * e


@pytest.mark.parametrize("option, calls", [([], 0), (["--reuse-freed-memory"], 1)])
def test_cpu_run_keeps_freed_memory_for_reuse_when_asked(
    option, calls, sms, vocab_dir, tmp_path, monkeypatch
):
    """On CPU ``finetune --reuse-freed-memory`` calls ``fast.reuse_freed_memory`` once, before training, and
    without the option never. Recorded, not applied: what it does is tested in test_fast_paths.py."""
    from gpt2scratch.training import loop

    seen = []
    monkeypatch.setattr(loop, "reuse_freed_memory", lambda: seen.append(True) or True)
    out = tmp_path / "run"
    train(
        out,
        "--train-file",
        str(sms),
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "1",
        "--max-length",
        "32",
        *option,
    )
    assert len(seen) == calls
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 1}


# ----------------------------------------------------------------------------------------- instruction


@pytest.fixture(scope="module")
def instructions(shared_data, tmp_path_factory) -> Path:
    return instruction_subset(shared_data, tmp_path_factory.mktemp("instr"))


@pytest.mark.parametrize("method", ["full", "lora", "last-block"])
def test_instruction(method, instructions, vocab_dir, tmp_path):
    out = tmp_path / method
    extra = ["--method", method] + (["--merge", "--lora-r", "8"] if method == "lora" else [])
    metrics = train(
        out,
        "--task",
        "instruction",
        "--train-file",
        str(instructions),
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "4",
        "--lr",
        "1e-2",
        "--max-new-tokens",
        "12",
        "--max-length",
        "96",
        "--batch-size",
        "4",
        "--eval-max-batches",
        "2",
        *extra,
    )
    test = metrics["test"]
    assert test["response_loss_after"] < test["response_loss_before"]
    responses = json.loads((out / "test-responses.json").read_text())
    assert len(responses) == 6 and {"instruction", "input", "output", "response"} <= set(responses[0])
    from gpt2scratch.training.metrics import rouge_l

    assert test["rouge_l"] == pytest.approx(
        rouge_l([r["response"] for r in responses], [r["output"] for r in responses])
    )
    assert (out / "config.json").is_file() and not (
        out / "adapter_config.json"
    ).exists()  # lora merged: plain folder
    assert sorted(p.name for p in (out / "data").iterdir()) == ["test.json", "train.json", "validation.json"]
    if method == "full":
        evaluate_scores_the_test_split_as_the_run_did(out, test, responses)


def test_accumulated_micro_batches_weigh_every_target_token_as_one_batch(instructions, vocab_dir, tmp_path):
    """4 Alpaca records per step as one micro-batch, or as 2 accumulated micro-batches of 2: the same records, and
    the same loss per step and weights to float rounding, every response token weighing alike (the responses'
    lengths differ, so a mean of the micro-batches' means would not give this)."""
    options = [
        *("--task", "instruction", "--train-file", str(instructions), "--tokenizer-dir", str(vocab_dir)),
        *(
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--max-length",
            "96",
            "--dropout",
            "0",
            "--eval-max-batches",
            "1",
        ),
        *("--max-new-tokens", "1"),
    ]
    train(tmp_path / "one", *options, "--batch-size", "4")
    train(tmp_path / "two", *options, "--batch-size", "2", "--gradient-accumulation-steps", "2")
    one, two = train_log(tmp_path / "one"), train_log(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("one", "two"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5)


def evaluate_scores_the_test_split_as_the_run_did(out: Path, test: dict, responses: list[dict]) -> None:
    """``evaluate --task instruction`` on the run's model and test split: the run's response loss, ROUGE-L
    and responses."""
    import contextlib
    import io

    from gpt2scratch.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", str(out), "--task", "instruction", "--data", str(out / "data" / "test.json"),
                     "--max-new-tokens", "12", "--max-length", "96", "--batch-size", "4",
                     "--output-file", str(out / "evaluated.json")])  # fmt: skip
    assert code == 0
    got = json.loads(printed.getvalue())
    assert got["examples"] == len(responses) == 6
    assert got["response_loss"] == pytest.approx(test["response_loss_after"], rel=1e-5)
    assert got["rouge_l"] == pytest.approx(test["rouge_l"])
    assert json.loads((out / "evaluated.json").read_text()) == responses


# ----------------------------------------------------------------------------------------- lm


@pytest.mark.parametrize("method", ["full", "lora", "last-block"])
def test_lm(method, shared_data, vocab_dir, tmp_path):
    out = tmp_path / method
    text = tmp_path / "verdict.txt"  # the first 8 KB: 30-odd blocks of 64 tokens
    text.write_text(
        (shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8")[:8000], encoding="utf-8"
    )
    metrics = train(
        out,
        "--task",
        "lm",
        "--train-file",
        str(text),
        "--eval-max-batches",
        "2",
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "4",
        "--lr",
        "1e-2",
        "--max-length",
        "64",
        "--method",
        method,
        "--eval-every",
        "2",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "4",
    )
    val = metrics["validation"]
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]))
    val_loss_fell(out)
    samples = (out / "samples.txt").read_text()
    assert samples.count("--- step") == 3  # step 0, 2 and 4
    from transformers import AutoModelForCausalLM

    if method == "lora":
        assert (out / "adapter_config.json").is_file() and (out / "base/config.json").is_file()
    else:
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)


def test_model_may_be_a_checkpoint_of_another_run(cls_full, sms, vocab_dir, tmp_path):
    """--model checkpoint-<step>/ continues from those weights: the step-0 validation loss is the checkpoint's,
    below the random initialisation's."""
    out = tmp_path / "continued"
    train(out, "--model", str(cls_full / "checkpoint-6"), "--train-file", str(sms), "--balance",
          "--max-steps", "1", "--max-length", "64")  # fmt: skip
    start = json.loads((out / "history.json").read_text())["val_loss"][0]
    fresh = json.loads((cls_full / "history.json").read_text())["val_loss"][0]
    assert start[0] == fresh[0] == 0
    assert start[1] < fresh[1] - 0.05
