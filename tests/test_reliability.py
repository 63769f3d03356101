"""Fault injection: a run SIGKILLed at named points inside a step and inside a checkpoint write (plus one
seeded random moment), then resumed, ends bitwise where an uninterrupted run ends; SIGTERM leaves a
resumable checkpoint; truncated or altered checkpoints are skipped with a warning naming them; a NaN
loss stops the run (exit 3) or is skipped; an injected ENOSPC leaves the previous checkpoint intact.

The kills use the test hook ``GPT2SCRATCH_FAULT=POINT:STEP`` (``training/checkpoints.py: injected``).
All kills share one chained run (each process resumes what the previous one left), so the file costs
about a dozen tiny runs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import output_into
from safetensors.torch import load_file
from test_finetune import SMALL, one_thread, sms_subset, train  # noqa: F401 (one_thread: autouse)
from test_finetune_resume import train_losses

from gpt2scratch.cli import main as cli_main
from gpt2scratch.training.checkpoints import (
    FAULT_ENV,
    MARKER,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
)

pytestmark = pytest.mark.xdist_group("reliability")
RANDOM_KILL_SEED = 8


@pytest.fixture(scope="module")
def options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """56 training rows, 8 steps of 4 × 2 accumulation, dropout on, a checkpoint every 2 steps (2 kept)."""
    sms = sms_subset(shared_data, tmp_path_factory.mktemp("sms"), n_per_class=40)
    return [
        *("--train-file", str(sms), "--tokenizer-dir", str(vocab_dir), "--max-steps", "8"),
        *("--batch-size", "4", "--gradient-accumulation-steps", "2", "--lr", "3e-3", "--dropout", "0.1"),
        *("--warmup-steps", "2", "--max-length", "32", "--eval-every", "4"),
        *("--save-every", "2", "--keep-checkpoints", "2"),
    ]


@pytest.fixture(scope="module")
def uninterrupted(options, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    train(out, *options)
    return out


def finetune_cli(out: Path, *options: str) -> int:
    """``gpt2scratch finetune`` in this process; returns the exit code (Accelerate's state reset after)."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        return cli_main(["finetune", "--output-dir", str(out), *SMALL, *options])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _finetune_main(argv: list[str], fault: str | None, log: str) -> None:
    """Target of a forked child: ``gpt2scratch finetune ARGV`` with the fault hook set, output into ``log``."""
    output_into(log)
    os.environ.pop(FAULT_ENV, None)
    os.environ.update({FAULT_ENV: fault} if fault else {})
    torch.set_num_threads(1)
    sys.exit(cli_main(["finetune", *argv]))


@pytest.fixture(scope="module")
def forkserver():
    """Runs are forked from a server that has imported torch and the training code once (a fresh
    interpreter per run would spend most of its time importing)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "gpt2scratch.training.loop", "datasets", "accelerate", "test_reliability"]
    )
    return ctx


class Run:
    """A ``finetune`` process forked from the server; ``log`` holds its stdout and stderr."""

    def __init__(self, server, out: Path, options: list[str], *extra: str, fault: str | None = None):
        self.log = out.with_name(out.name + f"-{time.monotonic_ns()}.log")
        argv = ["--output-dir", str(out), *SMALL, *options, *extra]
        self.process = server.Process(target=_finetune_main, args=(argv, fault, str(self.log)))
        self.process.start()

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        self.process.join(timeout)
        assert self.process.exitcode is not None, "the run did not end"
        return self.process.exitcode, self.log.read_text()


def killed_at(server, out: Path, options: list[str], fault: str, resume: bool = True) -> str:
    """Run until the hook SIGKILLs the process at ``fault``; returns its output."""
    code, log = Run(
        server, out, options, *(["--resume-from", "latest"] if resume else []), fault=fault
    ).wait()
    assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{log[-3000:]}"
    return log


def logged_steps(out: Path) -> int:
    path = out / "train_log.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_for_step(run: Run, out: Path, steps: int) -> None:
    """Poll until this process has trained: it logged its start (a resumed run first cuts train_log.jsonl
    back to its checkpoint) and train_log.jsonl holds ``steps`` lines."""
    deadline = time.monotonic() + 300
    while "Global batch" not in _text(run.log) or logged_steps(out) < steps:
        assert run.process.is_alive(), f"the run ended (exit {run.process.exitcode}) before step {steps}"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def assert_same_weights(expected_dir: Path, actual_dir: Path) -> None:
    expected, actual = (
        load_file(expected_dir / "model.safetensors"),
        load_file(actual_dir / "model.safetensors"),
    )
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs"


def complete_steps(out: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in list_checkpoints(out)]


def test_sigkill_at_every_kill_point_then_resume_is_bitwise_identical(
    forkserver, options, uninterrupted, tmp_path, caplog
):
    out = tmp_path / "killed"
    # 1. inside step 3, after backward, before the optimizer step: checkpoint-2 is all that survives
    killed_at(forkserver, out, options, "mid_step:3", resume=False)
    assert complete_steps(out) == [2] and latest_checkpoint(out).name == "checkpoint-2"
    assert json.loads((out / "run.json").read_text()) == {"finished": False, "step": 0}
    # 2. checkpoint 4 fully written into its temporary folder, not yet renamed
    killed_at(forkserver, out, options, "after_temp_write:4")
    assert (out / ".checkpoint-4.tmp").is_dir() and not (out / "checkpoint-4").exists()
    assert latest_checkpoint(out).name == "checkpoint-2"
    # 3. renamed to checkpoint-4 but no completion marker: skipped with a warning naming it
    killed_at(forkserver, out, options, "after_rename:4")
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / MARKER).exists()
    with caplog.at_level("WARNING", logger="gpt2scratch"):
        assert latest_checkpoint(out).name == "checkpoint-2"
    assert "checkpoint-4" in caplog.text and "never completed" in caplog.text
    # 4. the marker written under its temporary name, not renamed; rotation (keep 2) has not run yet
    killed_at(forkserver, out, options, "before_marker:6")
    assert (out / "checkpoint-6" / f".{MARKER}.tmp").is_file() and not (
        out / "checkpoint-6" / MARKER
    ).exists()
    assert complete_steps(out) == [2, 4] and latest_checkpoint(out).name == "checkpoint-4"
    # 5. a seeded random moment after step 5 ends (inside step 6 or checkpoint-6's write, or just after)
    rng = random.Random(RANDOM_KILL_SEED)
    run = Run(forkserver, out, options, "--resume-from", "latest")
    wait_for_step(run, out, 5)
    time.sleep(rng.uniform(0.0, 0.15))
    os.kill(run.process.pid, signal.SIGKILL)
    assert run.wait()[0] == -signal.SIGKILL, "the run finished before the random kill"
    assert latest_checkpoint(out) is not None
    # finally resume in this process and compare with the uninterrupted run
    train(out, *options, "--resume-from", "latest")
    assert_same_weights(uninterrupted, out)
    assert train_losses(out) == train_losses(uninterrupted)
    assert json.loads((out / "history.json").read_text()) == json.loads(
        (uninterrupted / "history.json").read_text()
    )
    assert complete_steps(out) == complete_steps(uninterrupted) == [4, 6]  # rotated, newest 2 kept
    assert not list(out.glob(".checkpoint-*"))


def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(forkserver, options, uninterrupted, tmp_path):
    out = tmp_path / "terminated"
    run = Run(forkserver, out, options, "--save-every", "100")  # no periodic checkpoint: SIGTERM's only
    wait_for_step(run, out, 1)
    run.process.terminate()  # SIGTERM
    code, err = run.wait()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM" in err and "--resume-from latest" in err and "Traceback" not in err
    run = json.loads((out / "run.json").read_text())
    assert run["finished"] is False and 1 <= run["step"] < 8
    saved = latest_checkpoint(out)
    assert saved.name == f"checkpoint-{run['step']}" and checkpoint_problem(saved) is None
    train(out, *options, "--save-every", "100", "--resume-from", "latest")
    assert_same_weights(uninterrupted, out)


@pytest.fixture
def finished_copy(uninterrupted, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    return out


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete", "marker"])
def test_damaged_checkpoint_is_skipped_with_a_warning(finished_copy, damage, caplog, capsys, options):
    newest = finished_copy / "checkpoint-6"
    weights = newest / "state" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "alter":  # same size, one byte flipped
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        (newest / "trainer_state.json").unlink()
    else:
        (newest / MARKER).write_text("{not json")
    with caplog.at_level("WARNING", logger="gpt2scratch"):
        assert latest_checkpoint(finished_copy).name == "checkpoint-4"
    assert "skipping" in caplog.text and "checkpoint-6" in caplog.text
    code = finetune_cli(finished_copy, *options, "--resume-from", str(newest))
    assert code == 2 and str(newest) in capsys.readouterr().err


def test_run_folder_as_model_loads_the_newest_complete_checkpoint(uninterrupted, tmp_path):
    """A run folder without a final model (still running, or killed) given as MODEL: the newest checkpoint
    that verifies, not the highest-numbered one."""
    from gpt2scratch.loading import load_model

    run = tmp_path / "unfinished"
    run.mkdir()
    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.copytree(uninterrupted / name, run / name)
    weights = run / "checkpoint-6" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    loaded = load_model(run, task="classification")
    want = load_file(uninterrupted / "checkpoint-4" / "model" / "model.safetensors")
    got = loaded.model.state_dict()
    assert loaded.kind == "checkpoint" and all(torch.equal(got[k], v) for k, v in want.items())


def test_nan_loss_stops_with_exit_3_naming_the_step(options, tmp_path, capsys, monkeypatch):
    out = tmp_path / "nan"
    monkeypatch.setenv(FAULT_ENV, "nan_loss:5")
    assert finetune_cli(out, *options) == 3
    err = capsys.readouterr().err
    assert "Non-finite loss nan at step 5" in err and "micro-batches 9-10" in err
    assert "checkpoint-4 is intact" in err
    assert complete_steps(out) == [2, 4] and checkpoint_problem(out / "checkpoint-4") is None
    assert json.loads((out / "run.json").read_text())["finished"] is False
    assert not (out / "model.safetensors").exists()


def test_nan_loss_skip_option_skips_the_update(options, tmp_path, caplog, monkeypatch):
    out = tmp_path / "skip"
    monkeypatch.setenv(FAULT_ENV, "nan_loss:3")
    with caplog.at_level("WARNING", logger="gpt2scratch"):
        train(out, *options, "--max-steps", "4", "--save-every", "100", "--on-nonfinite", "skip")
    assert "step 3" in caplog.text and "skipped" in caplog.text
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and logged[2]["loss"] != logged[2]["loss"]  # NaN
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())


@pytest.mark.parametrize("where", ["checkpoint", "final"])
def test_disk_full_keeps_the_previous_checkpoint(where, options, tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    step = 4 if where == "checkpoint" else 8
    monkeypatch.setenv(FAULT_ENV, f"enospc_{where}:{step}")
    assert finetune_cli(out, *options) == 4
    err = capsys.readouterr().err
    assert "no space left on device" in err and "removed" in err
    kept = latest_checkpoint(out)
    assert kept.name == ("checkpoint-2" if where == "checkpoint" else "checkpoint-6")
    assert f"{kept} is intact" in err and checkpoint_problem(kept) is None
    if where == "checkpoint":
        assert not (out / "checkpoint-4").exists()
    assert not list(out.glob(".*.tmp")) and not (out / "model.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["finished"] is False


class _Payload:
    """A pickle that runs code when loaded (it would create the file ``path``)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_code_carrying_pickle_in_a_checkpoint_is_refused(finished_copy, tmp_path, options, capsys):
    """Even with a marker that matches it (an attacker can recompute checksums), the pickle is not run."""
    newest, side_effect = finished_copy / "checkpoint-6", tmp_path / "pwned"
    optimizer = newest / "state" / "optimizer.bin"
    torch.save({"state": _Payload(str(side_effect))}, optimizer)
    marker = json.loads((newest / MARKER).read_text())
    digest = hashlib.sha256(optimizer.read_bytes()).hexdigest()
    marker["files"]["state/optimizer.bin"] = {"size": optimizer.stat().st_size, "sha256": digest}
    (newest / MARKER).write_text(json.dumps(marker))
    assert checkpoint_problem(newest) is None
    # --force: a finished run is otherwise refused before its checkpoint is opened
    assert finetune_cli(finished_copy, *options, "--resume-from", str(newest), "--force") == 2
    err = capsys.readouterr().err
    assert "refused" in err and "weights_only=True" in err
    assert not side_effect.exists()


def test_finetune_script_gives_the_same_exit_codes(options, tmp_path):
    """scripts/finetune.py as a user runs it: a NaN stop is exit 3 with its one-line message, no traceback."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "finetune.py"
    env = {**os.environ, FAULT_ENV: "nan_loss:1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--output-dir", str(tmp_path / "run"), *options],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "finetune: error: Non-finite loss nan at step 1" in proc.stderr and "Traceback" not in proc.stderr
