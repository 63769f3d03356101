"""Several processes on CPU: a 2-process run (gloo) matches the single-process run of the same global batch,
and two processes that Accelerate does not connect are refused with the command that works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_finetune import REPO_SCRIPTS, one_thread, sms_subset, train  # noqa: F401

pytestmark = pytest.mark.xdist_group("finetune_multiprocess")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], use_cpu: bool, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 scripts/finetune.py ARGS`` in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "yes"
    # with ACCELERATE_USE_CPU: configs/accelerate_cpu_2proc.yaml; without: the same launch as command-line flags
    how = (
        ["--config_file", str(REPO_SCRIPTS.parent / "configs/accelerate_cpu_2proc.yaml")]
        if use_cpu
        else ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *how,
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO_SCRIPTS / "finetune.py"),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def same_losses(run: Path, reference: Path, steps: int = 5) -> None:
    """The logged losses of ``run`` and ``reference`` agree step by step to float rounding (1e-5)."""
    got, expected = losses(run), losses(reference)
    assert len(got) == len(expected) == steps
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5, (got, expected)


@pytest.fixture(scope="module")
def common(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    sms = sms_subset(shared_data, tmp_path_factory.mktemp("sms"), n_per_class=40)
    return [
        "--train-file",
        str(sms),
        "--tokenizer-dir",
        str(vocab_dir),
        "--max-steps",
        "5",
        "--lr",
        "3e-3",
        "--dropout",
        "0",
        "--max-length",
        "48",
        "--seed",
        "1",
        "--model",
        "init:tiny",
        "--log-every",
        "1",
    ]


def test_two_processes_match_one_with_the_same_global_batch(common, tmp_path):
    """Dropout off (each process has its own dropout stream); classification's per-example mean loss makes
    the DDP-averaged gradient equal to the single-process one, so losses agree to float rounding."""
    two = launch([*common, "--output-dir", str(tmp_path / "two"), "--batch-size", "4"], use_cpu=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Training on 2 process(es)" in two.stderr
    train(tmp_path / "one", *common, "--batch-size", "8")
    same_losses(tmp_path / "two", tmp_path / "one")
    metrics = json.loads((tmp_path / "two/metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_batch"] == 8


def test_a_one_process_run_resumes_on_two_with_the_same_global_batch(common, tmp_path):
    """Refused while the global batch would double (writing nothing); with --batch-size halved, the resumed
    steps see the same examples and the losses agree with the uninterrupted run's to float rounding."""
    from test_run_lifecycle import snapshot

    out, straight = tmp_path / "run", tmp_path / "straight"
    train(out, *common, "--batch-size", "8", "--stop-after", "2")
    before = snapshot(out)
    resume = [*common, "--output-dir", str(out), "--resume-from", "latest"]
    refused = launch(resume, use_cpu=True)
    assert refused.returncode != 0 and snapshot(out) == before
    assert "the run's global batch is 8 (8 per process × 1 process(es) × 1 accumulation)" in refused.stderr
    resumed = launch([*resume, "--batch-size", "4"], use_cpu=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming as 4 per process × 2 process(es) × 1 accumulation" in resumed.stderr
    train(straight, *common, "--batch-size", "8")
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 5}
    same_losses(out, straight)


def test_a_two_process_lora_run_resumes_from_checkpoints_without_the_base(common, tmp_path):
    """Under DDP too a LoRA checkpoint's state holds the adapters and the head (the names Accelerate saves have
    no DDP prefix); the resumed run's losses agree with one process's uninterrupted run to float rounding."""
    from safetensors import safe_open

    out, straight = tmp_path / "run", tmp_path / "straight"
    lora = ["--method", "lora", "--lora-r", "4", "--lora-dropout", "0"]
    paused = launch(
        [*common, *lora, "--output-dir", str(out), "--batch-size", "4", "--stop-after", "2"], True
    )
    assert paused.returncode == 0, paused.stderr[-3000:]
    with safe_open(out / "checkpoint-2/state/model.safetensors", "pt") as f:
        assert all("lora_" in k or "modules_to_save" in k for k in f.keys()), list(f.keys())
    resume = [*common, *lora, "--output-dir", str(out), "--batch-size", "4", "--resume-from", "latest"]
    resumed = launch(resume, use_cpu=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train(straight, *common, *lora, "--batch-size", "8")
    same_losses(out, straight)


def test_unconnected_processes_are_refused(tmp_path):
    result = launch(
        ["--train-file", "x.csv", "--output-dir", str(tmp_path / "out")], use_cpu=False, timeout=180
    )
    assert result.returncode != 0
    assert "ACCELERATE_USE_CPU=yes accelerate launch --multi_gpu --num_processes 2" in result.stderr
    assert not (tmp_path / "out").exists()
