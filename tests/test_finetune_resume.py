"""Checkpoints and resuming: a run stopped after step k and resumed ends bitwise where an uninterrupted run
ends (CPU, dropout on, gradient accumulation, an epoch boundary crossed after the resume); output folders
holding a run are refused unless resumed or forced."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import sms_subset, train

from gpt2scratch.cli import main as cli_main

pytestmark = pytest.mark.xdist_group("finetune_resume")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """40 ham + 40 spam → 56 training rows → 7 optimizer steps per epoch (4 × 2 accumulation)."""
    sms = sms_subset(shared_data, tmp_path_factory.mktemp("sms"), n_per_class=40)
    return [
        "--train-file",
        str(sms),
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "10",
        "--batch-size",
        "4",
        "--gradient-accumulation-steps",
        "2",
        "--lr",
        "3e-3",
        "--dropout",
        "0.1",
        "--warmup-steps",
        "2",
        "--max-length",
        "48",
        "--eval-every",
        "4",
    ]


@pytest.fixture(scope="module")
def uninterrupted(options, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "straight"
    train(out, *options)
    return out


def test_stopped_and_resumed_run_is_bitwise_identical(options, uninterrupted, tmp_path):
    out = tmp_path / "interrupted"
    assert train(out, *options, "--stop-after", "5") is None
    assert json.loads((out / "run.json").read_text()) == {"finished": False, "step": 5}
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-5"]
    assert not (out / "config.json").exists()  # no final model yet
    train(out, *options, "--resume-from", "latest")
    expected, resumed = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), f"{name} differs after resuming"
    assert train_losses(out) == train_losses(uninterrupted)
    assert json.loads((out / "history.json").read_text()) == json.loads(
        (uninterrupted / "history.json").read_text()
    )


@pytest.mark.parametrize("method", ["lora", "last-block"])
def test_a_partial_method_resumes_bitwise_with_checkpoints_that_hold_what_it_trains(
    options, method, tmp_path
):
    """LoRA and last-block train a part of the model: stopped and resumed, the same adapter / model files,
    losses and history as uninterrupted; a checkpoint's state holds the trained weights, not the frozen ones
    (they are the base's, recorded by a digest)."""
    from safetensors import safe_open

    extra = ["--method", method, *(["--lora-r", "4"] if method == "lora" else [])]
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    train(straight, *options, *extra, "--max-steps", "6")
    train(out, *options, *extra, "--max-steps", "6", "--stop-after", "3")
    with safe_open(out / "checkpoint-3/state/model.safetensors", "pt") as f:
        saved = list(f.keys())
    trained = {"lora": ("lora_", "score.modules_to_save"), "last-block": (".h.1.", "ln_f", "score")}[method]
    assert saved and all(any(part in k for part in trained) for k in saved), saved  # init:tiny: 2 blocks
    train(out, *options, *extra, "--max-steps", "6", "--resume-from", "latest")
    names = ["adapter_model.safetensors"] if method == "lora" else ["model.safetensors"]
    for name in [*names, "history.json"]:
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    assert train_losses(out) == train_losses(straight)


def test_a_partial_method_refuses_a_base_model_that_changed(options, vocab_dir, tmp_path, capsys):
    """The frozen weights are not in the checkpoints: resuming on other ones under the same --model path is
    refused (and writes nothing); on the same ones it goes on."""
    from test_run_lifecycle import snapshot

    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM
    from gpt2scratch.io import save_model_folder

    def base(seed: int) -> None:
        torch.manual_seed(seed)
        config = GPT2ScratchConfig.from_preset("tiny", vocab_size=50257)
        save_model_folder(GPT2ScratchForCausalLM(config), tmp_path / "base", vocab_dir, force=True)

    out, lora = tmp_path / "run", [*options, "--model", str(tmp_path / "base"), "--method", "lora"]
    base(0)
    train(out, *lora, "--max-steps", "4", "--stop-after", "2")
    base(1)
    before = snapshot(out)
    capsys.readouterr()
    assert (
        cli_main(["finetune", "--output-dir", str(out), *lora, "--max-steps", "4", "--resume-from", "latest"])
        == 2
    )
    err = capsys.readouterr().err
    assert f"the frozen weights of --model {tmp_path / 'base'} are not those the run trained on top of" in err
    assert snapshot(out) == before
    base(0)
    train(out, *lora, "--max-steps", "4", "--resume-from", "latest")
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 4}


def train_losses(folder: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (folder / "train_log.jsonl").read_text().splitlines()]


def test_finished_output_dir_is_refused_without_force(options, uninterrupted, capsys):
    before = (uninterrupted / "model.safetensors").read_bytes()
    assert cli_main(["finetune", "--output-dir", str(uninterrupted), *options]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert (uninterrupted / "model.safetensors").read_bytes() == before


def test_force_replaces_a_finished_run(options, uninterrupted, tmp_path):
    out = tmp_path / "forced"
    train(out, *options, "--max-steps", "1")
    (out / "stale.txt").write_text("from the old run")
    train(out, *options, "--max-steps", "2", "--force")
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 2}


def test_unfinished_run_needs_resume_or_force(options, tmp_path, capsys):
    out = tmp_path / "half"
    train(out, *options, "--stop-after", "1")
    assert cli_main(["finetune", "--output-dir", str(out), *options]) == 2
    assert "--resume-from latest" in capsys.readouterr().err


@pytest.mark.parametrize("resume", ["missing-folder", "latest"])
def test_resume_from_nothing_is_an_error(resume, options, tmp_path, capsys):
    spec = str(tmp_path / resume) if resume != "latest" else "latest"
    assert cli_main(["finetune", "--output-dir", str(tmp_path / "new"), *options, "--resume-from", spec]) == 2
    err = capsys.readouterr().err
    assert "--resume-from" in err and (resume in err)
    assert not (tmp_path / "new").exists()


def test_a_resume_may_make_the_global_batch_otherwise_but_not_change_it(
    options, tmp_path, capsys, caplog, monkeypatch
):
    """4 per process × 2 accumulation → 8 × 1 (on one process here; with two processes in
    test_finetune_multiprocess): the same global batch, allowed with a warning; a global batch of 16 refused,
    writing nothing. A checkpoint that does not record its number of processes (before this rule) keeps the
    batch options as they were."""
    from test_run_lifecycle import snapshot

    from gpt2scratch.training import loop
    from gpt2scratch.training.checkpoints import read_trainer_state

    out = tmp_path / "run"
    train(out, *options, "--stop-after", "5")
    resume = ["finetune", "--output-dir", str(out), *options, "--resume-from", "latest", "--batch-size", "8"]
    before = snapshot(out)
    assert cli_main(resume) == 2
    err = capsys.readouterr().err
    assert (
        "the run's global batch is 8 (4 per process × 1 process(es) × 2 accumulation); this launch's would be "
        "16 (8 per process × 1 process(es) × 2 accumulation)"
    ) in err
    assert snapshot(out) == before
    with monkeypatch.context() as m:  # as read from a checkpoint written before the rule
        m.setattr(loop, "read_trainer_state", lambda c: {**read_trainer_state(c), "processes": None})
        assert cli_main([*resume, "--gradient-accumulation-steps", "1"]) == 2
    assert "changed from the run being resumed" in capsys.readouterr().err
    assert snapshot(out) == before
    with caplog.at_level(logging.WARNING):
        assert cli_main([*resume, "--gradient-accumulation-steps", "1"]) == 0
    assert (
        "resuming as 8 per process × 1 process(es) × 1 accumulation, where the run had 4 per process × "
        "1 process(es) × 2 accumulation" in caplog.text
    )
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 10}
    assert len(train_losses(out)) == 10
