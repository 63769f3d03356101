"""FSDP2 on CPU: a model sharded per block with ``fully_shard`` over 2 gloo processes trains to the same losses
and saves the same (gathered, whole) weights as one unsharded process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fsdp_worker import train

from gpt2scratch import GPT2ScratchForCausalLM

WORKER = Path(__file__).with_name("fsdp_worker.py")
pytestmark = pytest.mark.xdist_group(
    "finetune_multiprocess"
)  # two processes: not beside the other such tests


@pytest.mark.parametrize(
    "variant",
    [{}, {"position_embedding_type": "rotary", "n_kv_head": 2, "sliding_window": 8}],
    ids=["gpt2", "rotary+gqa+window"],
)
def test_fully_sharded_training_matches_one_process(tmp_path, variant):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(WORKER), str(tmp_path), "--variant", json.dumps(variant)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, single_losses = train(variant)
    sharded_losses = json.loads((tmp_path / "losses.json").read_text())
    assert single_losses[-1] < single_losses[0]  # it trained
    assert sharded_losses == pytest.approx(single_losses, abs=1e-5)
    sharded = GPT2ScratchForCausalLM.from_pretrained(tmp_path)
    assert (
        sharded.lm_head.weight.data_ptr() == sharded.transformer.wte.weight.data_ptr()
    )  # tied after gathering
    a, b = single.state_dict(), sharded.state_dict()
    assert set(a) == set(b)
    for name, x in a.items():
        assert (b[name] - x).abs().max() < 1e-5, f"{name}: max |difference| {(b[name] - x).abs().max():.2e}"
