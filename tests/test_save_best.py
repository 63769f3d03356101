"""``finetune --save-best METRIC``: ``OUTPUT_DIR/best`` holds the model of the best validation METRIC so far
(replaced only by a strictly better one), across a stop and resume too; LoRA runs keep an adapter there that
loads on the run's ``base/``; the folder is not uploaded with the run; a full disk keeps the previous one.
``--early-stopping-patience N`` finishes the run after N evaluations without a better one."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import one_thread, sms_subset, train  # noqa: F401 (one_thread: autouse)

from gpt2scratch.training.loop import Trainer

pytestmark = pytest.mark.xdist_group("finetune")

# validation f1 at steps 0-5, as the scripted evaluations below report it: best at step 2, which the 0.9 of the last
# step, 5, does not beat (step 0, before training, is not a candidate)
SCRIPT = [0.95, 0.6, 0.9, 0.7, 0.5, 0.9]


@pytest.fixture
def scripted_f1(monkeypatch) -> None:
    """Trainer.evaluate as it is, but for the validation f1 during training, which follows SCRIPT step by step
    (so which step is best does not hang on how a tiny model's f1 moves)."""
    evaluate = Trainer.evaluate

    def scripted(self, split, stoppable=False):
        metrics = evaluate(self, split, stoppable)
        if split == "validation" and self.phase == "training" and metrics is not None:
            metrics["f1"] = SCRIPT[self.state.step]
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", scripted)


@pytest.fixture(scope="module")
def options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """5 classification steps of 4 on 28 SMS training rows, evaluated and checkpointed at every step."""
    sms = sms_subset(shared_data, tmp_path_factory.mktemp("sms"), n_per_class=20)
    return [
        *("--train-file", str(sms), "--tokenizer-dir", str(vocab_dir), "--max-steps", "5"),
        *("--batch-size", "4", "--lr", "3e-3", "--max-length", "32"),
        *("--eval-every", "1", "--save-every", "1"),
        *("--save-best", "f1"),
    ]


def test_best_folder_holds_the_model_of_the_best_validation_metric(options, tmp_path, scripted_f1):
    from gpt2scratch.hub import files_to_upload

    out = tmp_path / "run"
    metrics = train(out, *options)
    assert json.loads((out / "best" / "best.json").read_text()) == {"metric": "f1", "value": 0.9, "step": 2}
    assert (metrics["best_metric"], metrics["best_value"], metrics["best_step"]) == ("f1", 0.9, 2)
    best = load_file(out / "best" / "model.safetensors")
    at_step_2 = load_file(out / "checkpoint-2" / "model" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert best.keys() == at_step_2.keys()
    assert all(torch.equal(best[k], at_step_2[k]) for k in best)
    assert not all(torch.equal(best[k], final[k]) for k in best)
    assert not any(p.parts[0] == "best" for p in files_to_upload(out))
    assert not (out / ".best.tmp").exists() and not (out / ".best.old").exists()


def test_best_survives_a_stop_and_resume(options, tmp_path, scripted_f1):
    """Stopped at step 3 (best: step 2) and resumed: step 5's 0.9 does not replace it, as in one run."""
    out = tmp_path / "run"
    assert train(out, *options, "--stop-after", "3") is None
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 2
    metrics = train(out, *options, "--resume-from", "latest")
    assert metrics["best_step"] == 2
    best = load_file(out / "best" / "model.safetensors")
    at_step_2 = load_file(out / "checkpoint-2" / "model" / "model.safetensors")
    assert all(torch.equal(best[k], at_step_2[k]) for k in best)


def test_lora_best_is_an_adapter_on_the_runs_base(options, tmp_path, scripted_f1):
    from gpt2scratch.loading import load_model

    out = tmp_path / "run"
    train(out, *options, "--method", "lora", "--max-steps", "3")
    assert (out / "best" / "adapter_config.json").is_file()
    ids = torch.tensor([[464, 2068, 7586, 21831]])
    best, at_step_2 = (
        load_model(str(folder)).model.eval() for folder in (out / "best", out / "checkpoint-2/model")
    )
    with torch.no_grad():
        assert torch.equal(best(ids).logits, at_step_2(ids).logits)


@pytest.mark.parametrize(
    "task, metric, message",
    [
        ("classification", "perplexity", "validated on loss, accuracy"),
        ("lm", "f1", "validated on loss, perplexity"),
    ],
)
def test_a_metric_the_task_does_not_have_is_refused(task, metric, message):
    from gpt2scratch.training.args import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args(["--task", task, "--train-file", "x.txt", "--output-dir", "o", "--save-best", metric])


def test_disk_full_while_saving_the_best_keeps_the_previous_one(
    options, tmp_path, scripted_f1, monkeypatch, capsys
):
    """Step 2 improves on step 1, and its write fails for want of space: exit 4, step 1's best intact."""
    from accelerate.state import AcceleratorState, GradientState
    from test_finetune import SMALL

    from gpt2scratch.cli import main
    from gpt2scratch.training.checkpoints import FAULT_ENV

    out = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "enospc_best:2")
    try:
        assert main(["finetune", "--output-dir", str(out), *SMALL, *options]) == 4
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    err = capsys.readouterr().err
    assert (
        f"no space left on device while writing {out / 'best'}" in err
        and "the previous best is intact" in err
    )
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 1
    assert not (out / ".best.tmp").exists() and (out / "checkpoint-1").is_dir()


@pytest.mark.parametrize("stopped", [False, True])
def test_early_stopping_finishes_after_patience_evaluations_without_improvement(
    stopped, options, tmp_path, scripted_f1, caplog
):
    """Patience 2: steps 3 and 4 do not beat step 2's 0.9, so the run finishes at step 4 of 5 (final evaluation,
    final model, finished run.json); also when stopped at step 3 and resumed (the count comes from the history)."""
    out = tmp_path / "run"
    if stopped:
        assert train(out, *options, "--early-stopping-patience", "2", "--stop-after", "3") is None
    with caplog.at_level(logging.INFO, logger="gpt2scratch"):
        metrics = train(
            out, *options, "--early-stopping-patience", "2", *(["--resume-from", "latest"] * stopped)
        )
    assert (metrics["steps"], metrics["best_step"]) == (4, 2) and "test" in metrics
    assert (
        "early stopping at step 4: no better validation f1 than 0.9000 (step 2) in 2 evaluations"
        in caplog.text
    )
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 4}
    logged = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4] and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("given", [["--eval-every", "5"], ["--save-best", "f1"]])
def test_early_stopping_needs_the_metric_it_watches_and_how_often(given):
    from gpt2scratch.training.args import parse_args

    with pytest.raises(
        ValueError, match="--early-stopping-patience needs --save-best METRIC .* and --eval-every"
    ):
        parse_args(["--train-file", "x.csv", "--output-dir", "o", "--early-stopping-patience", "2", *given])
