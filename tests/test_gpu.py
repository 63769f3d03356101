"""On a CUDA device: parity with transformers' GPT-2, the compiled training step, and ``greedy_loop`` as a
CUDA graph. Skipped where there is no GPU (CI has none; run them on one with ``pytest tests/test_gpu.py``)."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, fast
from gpt2scratch.conversion.hf_gpt2 import CONFIG_FIELDS, state_dict_to_hf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def pair():
    """Ours and transformers' GPT2LMHeadModel with the same random weights, on the GPU, fp32, TF32 off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # same gradients in train mode
    config = GPT2ScratchConfig.from_preset("tiny", vocab_size=50257, **no_dropout)
    ours = GPT2ScratchForCausalLM(config)
    hf = GPT2LMHeadModel(GPT2Config(**{f: getattr(config, f) for f in CONFIG_FIELDS}))
    hf.load_state_dict(state_dict_to_hf(ours.state_dict()), strict=False)
    return ours.cuda(), hf.cuda()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(3)).cuda()


def test_same_logits_and_bf16_loss_as_transformers_on_gpu(pair, ids):
    ours, hf = (m.eval() for m in pair)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a, b = (m(input_ids=ids, labels=ids).loss for m in (ours, hf))
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_compiled_training_step_matches_eager_on_gpu(pair, ids):
    """prepare_for_training (vocabulary padded to 64, torch.compile) + fused AdamW: same loss and
    gradients as the eager model in bf16 autocast, up to bf16 rounding."""
    ours, _ = pair
    eager = GPT2ScratchForCausalLM(ours.config).cuda()
    eager.load_state_dict(ours.state_dict())
    compiled = fast.prepare_for_training(ours.train(), compile=True)
    assert compiled.lm_head.weight.shape[0] % 64 == 0
    losses = []
    for model in (eager.train(), compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=2e-2, rtol=2e-2)
    g_eager = eager.transformer.h[0].attn.c_attn.weight.grad
    g_compiled = compiled.transformer.h[0].attn.c_attn.weight.grad
    assert torch.cosine_similarity(g_eager.flatten(), g_compiled.flatten(), dim=0) > 0.99
    optimizer = fast.make_optimizer(compiled, lr=1e-3)
    assert optimizer.defaults["fused"]
    optimizer.step()


def test_greedy_loop_is_a_cuda_graph_and_matches_generate_on_gpu(pair, ids):
    from torch._dynamo.utils import counters

    ours, _ = pair
    ours.eval().generation_config.pad_token_id = ours.config.eos_token_id
    torch._dynamo.reset()
    counters.clear()
    generate = fast.greedy_loop(ours)
    for new in (16, 40):
        expected = ours.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None)
        assert torch.equal(generate(ids, max_new_tokens=new, eos_token_id=None), expected)
    assert counters["stats"]["unique_graphs"] == 1, "calls of another length recompiled the step"
    assert [d.graph is not None for d in generate.decoders.values()] == [True], "no CUDA graph was captured"


@pytest.fixture
def lm_and_classifier(tmp_path, vocab_dir):
    from gpt2scratch import GPT2ScratchForSequenceClassification
    from gpt2scratch.io import save_model_folder

    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset("tiny", vocab_size=50257, num_labels=2)
    lm = save_model_folder(GPT2ScratchForCausalLM(config), tmp_path / "lm", vocab_dir)
    classifier = GPT2ScratchForSequenceClassification(config)
    with torch.no_grad():
        classifier.score.weight.mul_(30)  # predictions that differ between texts
    return lm, save_model_folder(classifier, tmp_path / "classifier", vocab_dir)


def test_commands_on_the_gpu_match_the_cpu(lm_and_classifier, tmp_path, capsys):
    """generate, classify and evaluate with --device cuda (and auto, which takes it) print what --device cpu
    prints: the same tokens and labels, scores and loss up to float rounding."""
    from gpt2scratch.cli import main

    lm, classifier = lm_and_classifier
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    commands = {
        "generate": ["generate", str(lm), "--prompt", "Hello world", "--max-new-tokens", "12"],
        "classify": ["classify", str(classifier), "Hello there", "WINNER!! Call now", "ok"],
        "evaluate": ["evaluate", str(lm), "--task", "lm", "--data", str(tmp_path / "text.txt")],
    }
    for name, args in commands.items():
        outputs = []
        for device in ("cpu", "cuda", "auto"):
            assert main([*args, "--device", device]) == 0, name
            outputs.append(capsys.readouterr().out)
        cpu, *gpu = outputs
        for out in gpu:
            if name == "generate":
                assert out == cpu
            elif name == "classify":
                rows = [
                    (line.split("\t"), ref.split("\t"))
                    for line, ref in zip(out.splitlines(), cpu.splitlines(), strict=True)
                ]
                assert all(a[0] == b[0] and abs(float(a[1]) - float(b[1])) < 1e-4 for a, b in rows), out
            else:
                assert abs(json.loads(out)["loss"] - json.loads(cpu)["loss"]) < 1e-4, out


def test_finetune_compiled_and_checkpointed_on_the_gpu(shared_data, vocab_dir, tmp_path):
    """``finetune --compile`` and ``--activation-checkpointing`` on the GPU (bf16 autocast, the default there):
    each trains, checkpoints and saves as the plain run does, with its losses up to bf16 rounding."""
    from test_finetune import train

    text = tmp_path / "verdict.txt"
    text.write_text((shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8")[:8000])
    options = [
        *("--task", "lm", "--train-file", str(text), "--tokenizer-dir", str(vocab_dir), "--max-length", "64"),
        *("--batch-size", "4", "--max-steps", "6", "--save-every", "3", "--dropout", "0"),
        *("--eval-max-batches", "1", "--max-new-tokens", "2"),
    ]
    losses = {}
    for name, extra in {
        "plain": [],
        "compiled": ["--compile"],
        "checkpointed": ["--activation-checkpointing"],
    }.items():
        train(tmp_path / name, *options, *extra)
        log = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["loss"] for line in log]
        assert (tmp_path / name / "checkpoint-3" / "model").is_dir() and (
            tmp_path / name / "model.safetensors"
        ).is_file()
    assert losses["compiled"] == pytest.approx(losses["plain"], rel=2e-2)
    assert losses["checkpointed"] == pytest.approx(losses["plain"], rel=1e-3)
