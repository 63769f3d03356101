"""The life of a run folder beyond one uninterrupted run: moved or copied (a LoRA adapter still finds its
``base/``), resumed (only with the settings it was started with, a finished run only with ``--force``, and a
refused resume writes nothing), refused before its first write (a bad option leaves no half-made folder),
its ``training_args.yaml`` given back with ``--config``, and what it logs at the end."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from test_finetune import instruction_subset, one_thread, sms_subset, train  # noqa: F401 (one_thread: autouse)

from gpt2scratch.cli import main as cli_main
from gpt2scratch.training.args import TrainArgs, load_yaml

pytestmark = pytest.mark.xdist_group("run_lifecycle")


@pytest.fixture(scope="module")
def options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """:func:`three_step_run`, checkpoint-2."""
    return [*three_step_run(shared_data, vocab_dir, tmp_path_factory), "--save-every", "2"]


def three_step_run(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """20 ham + 20 spam → 28 training rows → 7 steps per epoch of 4; 3 steps, no periodic checkpoint."""
    sms = sms_subset(shared_data, tmp_path_factory.mktemp("sms"), n_per_class=20)
    return [
        *("--train-file", str(sms), "--tokenizer-dir", str(vocab_dir), "--max-steps", "3"),
        *("--batch-size", "4", "--lr", "3e-3", "--max-length", "32"),
    ]


@pytest.fixture(scope="module")
def finished(options, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    train(out, *options)
    return out


@pytest.fixture(scope="module")
def paused(options, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paused") / "run"
    assert train(out, *options, "--stop-after", "2") is None
    return out


def finetune(out: Path, *options: str) -> int:
    """``gpt2scratch finetune`` in this process (the same small settings as ``train``); the exit code."""
    from accelerate.state import AcceleratorState, GradientState
    from test_finetune import SMALL

    try:
        return cli_main(["finetune", "--output-dir", str(out), *SMALL, *options])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------- moving a LoRA run


def test_moved_lora_run_loads_from_its_own_base(options, tmp_path, monkeypatch, capsys):
    from peft import AutoPeftModelForSequenceClassification

    from gpt2scratch.loading import load_model

    out = tmp_path / "sms-lora"
    train(out, *options, "--method", "lora", "--lora-r", "4")
    ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_model(out, task="classification").model(input_ids=ids).logits
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    assert json.loads((moved / "adapter_config.json").read_text())["base_model_name_or_path"] == "./base"
    checkpoint = moved / "checkpoint-2" / "model"
    assert (
        json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "../../base"
    )
    with torch.no_grad():
        assert torch.equal(load_model(moved, task="classification").model(input_ids=ids).logits, expected)
        assert load_model(moved / "checkpoint-2", task="classification").kind == "checkpoint"
    assert cli_main(["classify", str(moved), "win a free prize now"]) == 0
    assert "win a free prize now" in capsys.readouterr().out
    monkeypatch.chdir(moved)  # plain PEFT takes the base path from the working directory
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(".", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------- resuming


@pytest.mark.parametrize(
    "changed, shown",
    [
        (["--lr", "0.01"], "--lr 0.01 (the run: 0.003)"),
        (
            ["--batch-size", "2"],
            "the run's global batch is 4 (4 per process × 1 process(es) × 1 accumulation); "
            "this launch's would be 2 (2 per process",
        ),
        (["--model", "init:gpt2"], "--model init:gpt2 (the run: init:tiny)"),
        (["--task", "lm"], "--task lm (the run: classification)"),
        (["--max-length", "16", "--seed", "7"], "--max-length 16 (the run: 32); --seed 7 (the run: 1)"),
    ],
)
def test_resume_with_changed_settings_is_refused_and_writes_nothing(paused, options, changed, shown, capsys):
    before = snapshot(paused)
    assert finetune(paused, *options, "--resume-from", "latest", *changed) == 2
    err = capsys.readouterr().err
    assert shown in err and "another --output-dir" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(paused) == before


def test_resume_on_changed_data_is_refused_and_writes_nothing(options, tmp_path, capsys):
    """The same --train-file path, other contents (a row edited, one added): the resumed run would train on
    other data under the run's name."""
    data, out = tmp_path / "SMSSpamCollection", tmp_path / "run"
    source = Path(options[options.index("--train-file") + 1]).read_text(encoding="utf-8")
    data.write_text(source, encoding="utf-8")
    assert finetune(out, *options, "--train-file", str(data), "--stop-after", "2") == 0
    capsys.readouterr()
    before = snapshot(out)
    resume = [*options, "--train-file", str(data), "--resume-from", "latest"]
    for edited in (source.replace("ham\t", "spam\t", 1), source + "ham\tone more message\n"):
        data.write_text(edited, encoding="utf-8")
        assert finetune(out, *resume) == 2
        err = capsys.readouterr().err
        assert "the data differ from those the run started with: train (28 rows then" in err, err
        assert f"read from {data}" in err and len(err.strip().splitlines()) == 1
        assert snapshot(out) == before
    data.write_text(source, encoding="utf-8")
    assert finetune(out, *resume) == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}


def test_resume_with_another_tokenizer_in_the_same_folder_is_refused(
    options, small_vocab, shared_data, tmp_path, capsys
):
    """Same --tokenizer-dir path and vocabulary size, other tokens: the resumed run would read other ids."""
    from gpt2scratch.tokenizer_training import train_tokenizer

    plays = (shared_data / "corpora/tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    other = train_tokenizer([plays], 300, tmp_path / "other")  # small_vocab: 300 tokens of the-verdict.txt
    tokenizer, out = tmp_path / "tokenizer", tmp_path / "run"
    shutil.copytree(small_vocab, tokenizer)
    assert finetune(out, *options, "--tokenizer-dir", str(tokenizer), "--stop-after", "2") == 0
    capsys.readouterr()
    before = snapshot(out)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(other / name, tokenizer / name)
    assert finetune(out, *options, "--tokenizer-dir", str(tokenizer), "--resume-from", "latest") == 2
    err = capsys.readouterr().err
    assert f"the tokenizer in {tokenizer} (300 tokens) is not the one the run started with" in err, err
    assert len(err.strip().splitlines()) == 1 and snapshot(out) == before


def test_resume_may_change_how_often_it_logs_and_saves(paused, options, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(paused, out)
    changes = ["--save-every", "100", "--eval-every", "1", "--log-every", "2", "--on-nonfinite", "skip"]
    assert finetune(out, *options, "--resume-from", "latest", *changes) == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}
    assert yaml.safe_load((out / "training_args.yaml").read_text())["eval_every"] == 1


def test_resume_takes_the_runs_own_options(paused, tmp_path):
    """``--output-dir RUN --resume-from latest`` alone: the options the run recorded, none given again."""
    out = tmp_path / "resumed"
    shutil.copytree(paused, out)
    assert cli_main(["finetune", "--output-dir", str(out), "--resume-from", "latest"]) == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}
    recorded = yaml.safe_load((paused / "training_args.yaml").read_text()) | {"output_dir": str(out)}
    assert yaml.safe_load((out / "training_args.yaml").read_text()) == recorded


def test_resume_at_or_past_stop_after_trains_nothing(paused, options, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(paused, out)
    before = snapshot(out / "checkpoint-2")
    assert finetune(out, *options, "--resume-from", "latest", "--stop-after", "1") == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": False, "step": 2}
    assert not (out / "checkpoint-3").exists() and not (out / "model.safetensors").exists()
    assert snapshot(out / "checkpoint-2") == before


def test_finished_run_is_resumed_only_with_force(finished, options, tmp_path, capsys):
    before = snapshot(finished)
    assert finetune(finished, *options, "--resume-from", "latest") == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--force" in err
    assert snapshot(finished) == before
    out = tmp_path / "forced"
    shutil.copytree(finished, out)
    assert finetune(out, *options, "--resume-from", "latest", "--force") == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}
    assert (out / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()


def test_finished_run_is_refused_before_its_data_and_model_are_loaded(finished, options, monkeypatch, capsys):
    from gpt2scratch.training import loop

    def loaded(*args, **kwargs):
        raise AssertionError("the data or the model was loaded before the refusal")

    monkeypatch.setattr(loop, "load_splits", loaded)
    monkeypatch.setattr(loop, "load_for_task", loaded)
    before = snapshot(finished)
    assert finetune(finished, *options, "--resume-from", "latest") == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert snapshot(finished) == before


def test_run_options_file_resumes_the_run(options, tmp_path):
    """``finetune --config RUN/training_args.yaml --resume-from latest``: the file names the run's folder."""
    out = tmp_path / "r2"
    assert train(out, *options, "--stop-after", "2") is None
    recorded = out / "training_args.yaml"
    saved = yaml.safe_load(recorded.read_text())
    assert not {"config", "resume_from", "stop_after", "force"} & set(
        saved
    )  # one invocation's, not the run's
    assert TrainArgs(**load_yaml(recorded)).validate().to_dict() == saved
    assert cli_main(["finetune", "--config", str(recorded), "--resume-from", "latest"]) == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}


# ----------------------------------------------------------------------------------------- refused at setup


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--method", "lora", "--lora-target-modules", "foo"], "--lora-target-modules ['foo']"),
        (["--batch-size", "64"], "do not fill one global batch"),
    ],
)
def test_setup_error_leaves_no_output_folder(options, bad, message, tmp_path, capsys):
    out = tmp_path / "new"
    assert finetune(out, *options, *bad) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_model_that_is_not_a_saved_model_is_refused_in_one_line(options, tmp_path, tiny_config, capsys):
    """What a save cut short leaves (config.json, no weights: e.g. a decode-only ``quantized_for_cpu`` copy,
    which refuses to be saved, saved past that refusal), or a pickled model file."""
    from gpt2scratch import GPT2ScratchForCausalLM

    tiny_config.save_pretrained(tmp_path / "no-weights")
    torch.save(GPT2ScratchForCausalLM(tiny_config), tmp_path / "model.pt")
    for model, message in [("no-weights", "has config.json but no weights"), ("model.pt", "is a file")]:
        assert finetune(tmp_path / "out", *options, "--model", str(tmp_path / model)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_setup_error_with_force_keeps_the_finished_run(finished, options, capsys):
    before = snapshot(finished)
    assert finetune(finished, *options, "--force", "--method", "lora", "--lora-target-modules", "foo") == 2
    assert "--lora-target-modules" in capsys.readouterr().err
    assert snapshot(finished) == before


# ----------------------------------------------------------------------------------------- what it logs


def tiny_lm_run(shared_data, vocab_dir, tmp_path, caplog, *options: str) -> None:
    """A few lm steps of the tiny model on the first 4 KB of the-verdict.txt, INFO logs captured."""
    text = tmp_path / "verdict.txt"
    text.write_text((shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8")[:4000])
    with caplog.at_level(logging.INFO):
        train(tmp_path / "lm", "--task", "lm", "--train-file", str(text), "--tokenizer-dir", str(vocab_dir),
              "--max-length", "32", "--batch-size", "4", "--eval-max-batches", "1", "--max-new-tokens", "2",
              *options)  # fmt: skip


def test_lm_run_logs_validation_metrics_and_no_tied_weight_warning(shared_data, vocab_dir, tmp_path, caplog):
    tiny_lm_run(shared_data, vocab_dir, tmp_path, caplog, "--max-steps", "2", "--save-every", "1")
    assert (tmp_path / "lm" / "checkpoint-1").is_dir()
    assert "validation metrics: loss" in caplog.text and "metrics: None" not in caplog.text
    assert "Removed shared tensor" not in caplog.text


@pytest.mark.parametrize("peak, terminal", [(None, False), (1e12, False), (1e12, True)])
def test_run_prints_tokens_per_second_and_mfu(
    peak, terminal, shared_data, vocab_dir, tmp_path, caplog, capsys, monkeypatch
):
    """Each logged step's loss, tokens/s (and MFU where the device's peak is known) on the progress bar at a
    terminal, else as a log line; the run ends with one line of its speed. MFU is nanoGPT's formula over that
    peak (none on a CPU)."""
    from gpt2scratch.fast import training_flops_per_token
    from gpt2scratch.training import loop

    monkeypatch.setattr(loop, "device_peak_flops", lambda device: peak)
    monkeypatch.setattr(loop, "live_terminal", lambda: terminal)
    tiny_lm_run(shared_data, vocab_dir, tmp_path, caplog, "--max-steps", "3", "--log-every", "2")
    log = [json.loads(line) for line in (tmp_path / "lm" / "train_log.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    messages = [r.getMessage() for r in caplog.records]
    (line,) = [m for m in messages if m.startswith("steps 1-3 in ")]
    assert f"{metrics['tokens_per_s']:,.0f} tokens/s over all processes" in line
    step_lines = [m for m in messages if m.startswith(("step 2/3: ", "step 3/3: "))]
    if terminal:
        assert not step_lines and "tok/s=" in capsys.readouterr().err
    else:
        assert [m.split(":")[0] for m in step_lines] == ["step 2/3", "step 3/3"]
        assert all(f"tok/s {r['tokens_per_s']:,.0f}" in m for r, m in zip(log, step_lines, strict=True))
    if peak is None:
        assert metrics["mfu"] is None and "MFU n/a: no known peak" in line
        assert all("mfu" not in r for r in log) and not any(" mfu " in m for m in step_lines)
        return
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    per_token = training_flops_per_token(type("C", (), config), 32)
    assert all(r["mfu"] == pytest.approx(per_token * r["tokens_per_s"] / peak) for r in log)
    assert f"MFU {metrics['mfu']:.1%}" in line
    assert all(f"mfu {r['mfu']:.1%}" in m for r, m in zip(log, step_lines, strict=False))


def test_only_the_tied_head_warning_is_dropped():
    from gpt2scratch.training.loop import _TiedWeightsFilter

    def record(names: str) -> logging.LogRecord:
        message = f"[RANK 0] Removed shared tensor {names} while saving. This should be OK, but check …"
        return logging.LogRecord("accelerate.utils.other", logging.WARNING, __file__, 1, message, None, None)

    quiet = _TiedWeightsFilter()
    assert not quiet.filter(record("{'lm_head.weight'}"))
    assert not quiet.filter(record("{'base_model.model.lm_head.weight'}"))
    assert quiet.filter(record("{'lm_head.weight', 'transformer.h.0.mlp.c_fc.weight'}"))
    assert quiet.filter(record("{'score.weight'}"))


def test_every_file_of_a_run_has_the_mode_open_gives(finished):
    """Weights too: safetensors writes 0o600, the run's checkpoints and final model are given the umask's mode."""
    import stat

    from gpt2scratch.io import current_umask

    files = [p for p in finished.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" and "checkpoint-" in str(p) for p in files)
    assert {p.relative_to(finished).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.relative_to(finished).as_posix(): 0o666 & ~current_umask() for p in files
    }


def test_lm_samples_continue_the_sample_prompt(shared_data, vocab_dir, tmp_path, caplog):
    """``--sample-prompt``: each evaluation's sample (steps 0 and 2) continues that text, in samples.txt and the
    log, as "LLMs from scratch" prints "Every effort moves you" continued after each epoch."""
    tiny_lm_run(shared_data, vocab_dir, tmp_path, caplog, "--max-steps", "2", "--eval-every", "2",
                "--sample-prompt", "Every effort moves you")  # fmt: skip
    samples = (tmp_path / "lm" / "samples.txt").read_text(encoding="utf-8").split("--- step ")[1:]
    assert [s.split("\n", 1)[0] for s in samples] == ["0", "2"]
    assert all(s.split("\n", 1)[1].startswith("Every effort moves you|>") for s in samples)
    assert "step 2 sample: Every effort moves you|>" in caplog.text


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--max-new-tokens", "128"], "leaves no room for a prompt in n_positions=128"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
        (["--task", "lm", "--max-length", "1"], "predicts N - 1 of them; give 2 or more"),
    ],
)
def test_generation_and_block_lengths_that_cannot_work_are_refused_before_training(
    shared_data, vocab_dir, bad, message, tmp_path, capsys
):
    """An instruction run's test responses (generated at the very end) that would not fit the context, no new
    tokens at all, or LM blocks of one token (nothing to predict: loss 0, perplexity 1) are refused before the
    run trains or writes anything, not after training (which lost the trained model)."""
    data = instruction_subset(shared_data, tmp_path, n=8)
    out = tmp_path / "new"
    options = ["--task", "instruction", "--train-file", str(data), "--tokenizer-dir", str(vocab_dir)]
    assert finetune(out, *options, "--max-steps", "1", "--max-length", "64", *bad) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--sample-prompt", "Once upon a time"], "only with --task lm"),
        (["--task", "lm", "--sample-prompt", "word " * 5000], "leaves no room to continue it"),
    ],
)
def test_bad_sample_prompt_is_refused_before_the_run_writes(options, bad, message, tmp_path, capsys):
    out = tmp_path / "new"
    assert finetune(out, *options, *bad, "--max-length", "32") == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_accelerates_own_gradient_accumulation_is_refused(options, tmp_path, capsys, monkeypatch):
    """``accelerate launch --gradient_accumulation_steps 4`` would make Accelerate divide every loss by 4 in
    ``backward`` while the loop's own accumulation stays at 1: refused, naming the loop's option, before anything
    is written."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    out = tmp_path / "new"
    assert finetune(out, *options) == 2
    err = capsys.readouterr().err
    assert "give --gradient-accumulation-steps 4" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    assert finetune(out, *options, "--max-steps", "1") == 0
