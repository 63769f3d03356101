"""Ctrl-C twice: a second SIGINT that arrives while the run is already saving to stop (writing the
checkpoint, or run.json) is logged and waits for that save, which completes; the run exits 130 and its
folder resumes to the end. The signals are real, sent by the run to itself at the named moments."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import output_into, training_forkserver
from test_finetune import SMALL, one_thread, train  # noqa: F401 (one_thread: autouse)
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
