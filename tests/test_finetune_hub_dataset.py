"""``finetune --dataset USER/NAME`` reads a Hub dataset: tested against the local Hub-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from hub_server import LocalHub


def sms_csv(lines: list[str]) -> bytes:
    rows = ["text,label"]
    for line in lines:
        label, text = line.split("\t", 1)
        rows.append('"' + text.replace('"', '""') + f'",{label}')
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.xdist_group("hub_dataset")
def test_finetune_reads_a_hub_dataset_by_id(shared_data, vocab_dir, tmp_path):
    lines = (shared_data / "sms_spam/SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    train, test = lines[:160], lines[160:200]
    hub = LocalHub()
    with hub:
        hub.add_dataset("user/sms", {"train.csv": sms_csv(train), "test.csv": sms_csv(test)})
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(hub.client_env(tmp_path / "hf"))
        out = tmp_path / "run"
        args = ["--task", "classification", "--model", "init:tiny", "--dataset", "user/sms",
                "--label-column", "label", "--output-dir", str(out), "--max-steps", "3", "--batch-size", "8",
                "--eval-every", "3", "--tokenizer-dir", str(vocab_dir)]  # fmt: skip
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts/finetune.py"), *args],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert any("/api/datasets/user/sms" in path for _, path in hub.requests)
    metrics = json.loads((out / "metrics.json").read_text())
    # the test split is the Hub's test.csv (40 messages), scored whole
    correct = metrics["test"]["accuracy"] * len(test)
    assert abs(correct - round(correct)) < 1e-9
    config = json.loads((out / "config.json").read_text())
    assert set(config["label2id"]) == {"ham", "spam"}
