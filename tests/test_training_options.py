"""``finetune``'s compute options: ``--activation-checkpointing`` (the blocks run again in the backward pass and
nothing else changes) and ``--compile`` / Accelerate's own dynamo backend (the model is compiled, its runs save,
checkpoint and resume as eager ones do, and train as the eager model does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import one_thread, sms_subset, train  # noqa: F401 (one_thread: autouse)

from gpt2scratch.modeling_gpt2scratch import GPT2ScratchMLP

pytestmark = pytest.mark.xdist_group("finetune")


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def block_calls(monkeypatch) -> list[bool]:
    """Every forward of a block's MLP from now on (inside the block, so run again where the block is
    recomputed), as whether it ran with gradients enabled."""
    calls, forward = [], GPT2ScratchMLP.forward

    def counted(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT2ScratchMLP, "forward", counted)
    return calls


@pytest.fixture(scope="module")
def sms_options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """3 classification steps of 4 on 28 SMS training rows, dropout on (the recomputation must redraw the
    same dropout masks)."""
    sms = sms_subset(shared_data, tmp_path_factory.mktemp("sms"), n_per_class=20)
    return [
        *("--train-file", str(sms), "--tokenizer-dir", str(vocab_dir), "--max-steps", "3"),
        *("--batch-size", "4", "--lr", "3e-3", "--max-length", "32", "--dropout", "0.1"),
    ]


@pytest.mark.parametrize("method", ["full", "lora", "last-block"])
def test_activation_checkpointing_runs_each_block_again_and_changes_nothing(
    method, sms_options, tmp_path, monkeypatch
):
    plain_calls = block_calls(monkeypatch)
    train(tmp_path / "plain", *sms_options, "--method", method)
    monkeypatch.undo()
    checkpointed_calls = block_calls(monkeypatch)
    train(tmp_path / "checkpointed", *sms_options, "--method", method, "--activation-checkpointing")

    # tiny: 2 blocks; 3 steps of one micro-batch: each block once more per step, its forward in the backward pass
    recomputed = 2 * 3
    assert len(checkpointed_calls) == len(plain_calls) + recomputed
    assert checkpointed_calls.count(True) == plain_calls.count(True) + recomputed
    plain, checkpointed = log_of(tmp_path / "plain"), log_of(tmp_path / "checkpointed")
    assert [(r["loss"], r["grad_norm"]) for r in checkpointed] == [(r["loss"], r["grad_norm"]) for r in plain]
    if method == "lora":
        a = load_file(tmp_path / "plain" / "adapter_model.safetensors")
        b = load_file(tmp_path / "checkpointed" / "adapter_model.safetensors")
    else:
        a, b = weights(tmp_path / "plain"), weights(tmp_path / "checkpointed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def lm_options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    """4 lm steps on 32-token blocks of the first 4 KB of the-verdict.txt, dropout off (a compiled dropout draws
    other masks than the eager one), checkpoint at step 2."""
    text = tmp_path_factory.mktemp("verdict") / "verdict.txt"
    text.write_text((shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8")[:4000])
    return [
        *("--task", "lm", "--train-file", str(text), "--tokenizer-dir", str(vocab_dir), "--max-length", "32"),
        *("--batch-size", "4", "--max-steps", "4", "--save-every", "2", "--dropout", "0"),
        *("--eval-max-batches", "1", "--max-new-tokens", "2"),
    ]


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters emptied before and after, so no other test's compilations count here, nor
    these (and their recompilation limits) in later tests of this process."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_compiled_runs_save_resume_and_train_as_the_eager_model(
    lm_options, tmp_path, monkeypatch, caplog, fresh_dynamo
):
    """``--compile`` and Accelerate's ``ACCELERATE_DYNAMO_BACKEND=inductor`` (what ``accelerate launch
    --dynamo_backend inductor`` sets) compile the model; its checkpoints and final folder hold the plain weight
    names (they used to fail: Accelerate's unwrapped model was the compiled wrapper); a compiled run stopped
    at step 2 and resumed ends with the weights of an uninterrupted one, and those of the eager run up to
    rounding."""
    from torch._dynamo.utils import counters

    from gpt2scratch.loading import load_model

    assert train(tmp_path / "resumed", *lm_options, "--compile", "--stop-after", "2") is None
    compiled_frames = counters["frames"]["ok"]
    assert compiled_frames > 0, "--compile compiled nothing"
    assert "torch.compile with backend inductor" in caplog.text
    assert "torch.compile on a CPU: the eager model's own products are faster here" in caplog.text
    checkpoint = load_model(str(tmp_path / "resumed" / "checkpoint-2")).model
    assert not any("_orig_mod" in name for name in checkpoint.state_dict())
    train(tmp_path / "resumed", *lm_options, "--compile", "--resume-from", "latest")

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "inductor")
    caplog.clear()
    train(tmp_path / "env", *lm_options)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")
    assert "torch.compile with backend inductor" in caplog.text
    caplog.clear()
    train(tmp_path / "eager", *lm_options)
    assert "torch.compile" not in caplog.text

    resumed, env, eager = (weights(tmp_path / name) for name in ("resumed", "env", "eager"))
    assert resumed.keys() == eager.keys() and not any("_orig_mod" in k for k in resumed)
    assert all(torch.equal(resumed[k], env[k]) for k in resumed)
    for k in eager:
        torch.testing.assert_close(env[k], eager[k], rtol=1e-4, atol=1e-5)
    assert [r["step"] for r in log_of(tmp_path / "resumed")] == [1, 2, 3, 4]
    compiled_losses = [r["loss"] for r in log_of(tmp_path / "env")]
    eager_losses = [r["loss"] for r in log_of(tmp_path / "eager")]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)


def test_options_benchmark_runs_each_variant_in_its_own_process(shared_data, tmp_path, benchmark_script):
    """``bench_finetune_options.py``'s smoke run: one finetune process per variant, its peak RSS, tokens/s and
    losses in the result file and the table; checkpointing's losses are the plain run's."""
    bench = benchmark_script("bench_finetune_options")
    bench.main(
        [
            "--preset",
            "tiny",
            "--max-length",
            "32",
            "--steps",
            "2",
            "--threads",
            "1",
            "--data",
            str(shared_data),
        ]
        + ["--variants", "plain", "activation-checkpointing", "--out", str(tmp_path)]
    )
    (result_file,) = tmp_path.glob("finetune-options-*.json")
    variants = json.loads(result_file.read_text())["variants"]
    assert set(variants) == {"plain", "activation-checkpointing"}
    for r in variants.values():
        assert r["peak_rss_mb"] > 100 and r["tokens_per_s"] > 0 and len(r["losses"]) == 2
    assert variants["activation-checkpointing"]["losses"] == variants["plain"]["losses"]
    table = (tmp_path / "finetune-options-latest.md").read_text()
    assert "| activation-checkpointing |" in table and "init:tiny" in table
