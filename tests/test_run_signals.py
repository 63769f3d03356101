"""Ctrl-C twice: a second SIGINT that arrives while the run is already saving to stop (writing the
checkpoint, or run.json) is logged and waits for that save, which completes; the run exits 130 and its
folder resumes to the end. After the last step: a SIGINT in the final evaluation stops it with a checkpoint
of that step, from which a resume ends as the uninterrupted run; one in the final save waits for it. The
signals are real, sent by the run to itself at the named moments."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import output_into, training_forkserver
from test_finetune import SMALL, instruction_subset, one_thread, train  # noqa: F401 (one_thread: autouse)
from test_run_lifecycle import three_step_run

from gpt2scratch.cli import main as cli_main
from gpt2scratch.training.checkpoints import checkpoint_problem

pytestmark = pytest.mark.xdist_group("run_signals")


@pytest.fixture(scope="module")
def options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    return three_step_run(shared_data, vocab_dir, tmp_path_factory)


def _interrupted_twice(argv: list[str], second_during: str, log: str) -> None:
    """Target of a forked child: ``gpt2scratch finetune ARGV`` that sends itself SIGINT while training step 1,
    and again once the stop path has written the file ``second_during`` of step 1 (before it is renamed)."""
    from gpt2scratch.training import checkpoints, loop

    output_into(log)
    train_step, write_json = loop.Trainer.train_step, checkpoints._write_json

    def first_signal(self, batches):
        stats = train_step(self, batches)
        if self.state.step == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return stats

    def second_signal(path: Path, data: dict) -> None:
        write_json(path, data)
        if path.name == second_during and data.get("step") == 1:
            os.kill(os.getpid(), signal.SIGINT)

    loop.Trainer.train_step, checkpoints._write_json = first_signal, second_signal
    sys.exit(cli_main(["finetune", *argv]))


@pytest.fixture(scope="module")
def forkserver():
    return training_forkserver("test_run_signals")


@pytest.mark.parametrize("second_during", ["trainer_state.json", ".run.json.tmp"])
def test_second_sigint_while_stopping_lets_the_save_finish(forkserver, options, second_during, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    argv = ["--output-dir", str(out), *SMALL, *options]
    child = forkserver.Process(target=_interrupted_twice, args=(argv, second_during, str(log)))
    child.start()
    child.join(300)
    err = log.read_text()
    assert child.exitcode == 128 + signal.SIGINT, err[-3000:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((out / "run.json").read_text()) == {"finished": False, "step": 1}
    assert checkpoint_problem(out / "checkpoint-1") is None
    assert "SIGINT received: already stopping" in err and "Traceback" not in err
    assert "SIGINT: stopped after step 1 and saved" in err
    train(out, *options, "--resume-from", "latest")
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}


# ----------------------------------------------------------------------------------------- after the last step


def _signalled_at(argv: list[str], method: str, log: str) -> None:
    """Target of a forked child: ``gpt2scratch finetune ARGV`` that sends itself SIGINT as ``Trainer.METHOD``
    starts in the final phase (the final evaluation, or the final save)."""
    from gpt2scratch.training import loop

    output_into(log)
    torch.set_num_threads(1)  # as the uninterrupted run in the test process (one_thread)
    original = getattr(loop.Trainer, method)

    def signalled(self, *args, **kwargs):
        if self.phase in ("final evaluation", "final save"):
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    setattr(loop.Trainer, method, signalled)
    sys.exit(cli_main(["finetune", *argv]))


def _final_phase_run(forkserver, argv: list[str], method: str, log: Path) -> str:
    child = forkserver.Process(target=_signalled_at, args=(argv, method, str(log)))
    child.start()
    child.join(300)
    err = log.read_text()
    assert child.exitcode == (0 if method == "_save_final" else 128 + signal.SIGINT), err[-3000:]
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def instruction_options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """An instruction run of 3 steps whose final evaluation generates the 6 test responses in 2 batches."""
    data = instruction_subset(shared_data, tmp_path_factory.mktemp("instructions"))
    return [
        *("--task", "instruction", "--train-file", str(data), "--tokenizer-dir", str(vocab_dir)),
        *("--max-steps", "3", "--batch-size", "4", "--max-length", "64", "--max-new-tokens", "4"),
        *("--eval-max-batches", "1"),
    ]


@pytest.mark.parametrize("task, method", [("classification", "evaluate"), ("instruction", "_generate")])
def test_sigint_in_the_final_evaluation_saves_the_last_step_and_resumes_to_the_same_end(
    forkserver, request, task, method, tmp_path
):
    """No periodic checkpoints: before, Ctrl-C in the final evaluation (metrics, or the instruction responses)
    lost the whole run."""
    options = request.getfixturevalue("options" if task == "classification" else "instruction_options")
    out, reference = tmp_path / "run", tmp_path / "uninterrupted"
    err = _final_phase_run(forkserver, ["--output-dir", str(out), *SMALL, *options], method, tmp_path / "log")
    assert "saving a checkpoint after this evaluation batch (step 3)" in err
    assert "SIGINT: stopped after step 3 and saved" in err
    assert json.loads((out / "run.json").read_text()) == {"finished": False, "step": 3}
    assert checkpoint_problem(out / "checkpoint-3") is None
    assert not (out / "metrics.json").exists() and not (out / "test-responses.json").exists()
    train(out, *options, "--resume-from", "latest")  # evaluates and saves, trains nothing
    train(reference, *options)
    for name in ("model.safetensors", "history.json", *(["test-responses.json"] * (task == "instruction"))):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    metrics, expected = (json.loads((f / "metrics.json").read_text()) for f in (out, reference))
    assert metrics["test"] == expected["test"] and metrics["validation"] == expected["validation"]


def test_sigint_in_the_final_save_waits_for_it(forkserver, options, tmp_path):
    out = tmp_path / "run"
    err = _final_phase_run(
        forkserver, ["--output-dir", str(out), *SMALL, *options], "_save_final", tmp_path / "log"
    )
    assert "SIGINT received: already saving the finished run" in err
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}
    assert (out / "metrics.json").is_file() and (
        out / "README.md"
    ).is_file()  # the model card, after the save
