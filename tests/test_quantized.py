"""``fast.quantized_for_cpu``: int8 / fp16 weight copies of a model for CPU inference.

Outputs are not the fp32 model's (quality is measured by benchmarks/bench_quantized.py), so these tests
check what each copy is: every linear layer replaced by fbgemm's kernel holding the rounding of its
weight, the original model untouched, logits within the rounding's reach, a KV-cached ``generate`` equal
to the copy's own uncached argmax, and clear refusals of what it cannot do.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification, fast
from gpt2scratch import modeling_gpt2scratch as modeling

DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture
def model(tiny_config) -> GPT2ScratchForCausalLM:
    torch.manual_seed(0)
    return GPT2ScratchForCausalLM(tiny_config).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(5))


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, DynamicLinear))}


@pytest.mark.parametrize("weights", ["int8", "fp16"])
def test_every_linear_layer_is_replaced_and_the_model_is_left_as_it_was(model, weights):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = fast.quantized_for_cpu(model, weights)
    originals, replaced = _linears(model), _linears(quantized)
    assert set(replaced) == set(originals)
    assert len(originals) == 4 * model.config.n_layer + 1  # c_attn, c_proj, c_fc, mlp.c_proj; lm_head
    dtype = torch.qint8 if weights == "int8" else torch.float16
    for name, module in replaced.items():
        assert type(module) is DynamicLinear and module._packed_params.dtype == dtype, name
        assert type(originals[name]) is modeling.GPT2ScratchLinear, name  # the original keeps its class
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.lm_head.weight is model.transformer.wte.weight  # the original's tie is kept


def test_inplace_converts_the_model_itself_to_the_same_copy(model, ids, tmp_path):
    with torch.no_grad():
        expected = fast.quantized_for_cpu(model, "int8")(ids).logits
    converted = fast.quantized_for_cpu(model, "int8", inplace=True)
    assert converted is model and type(model.lm_head) is DynamicLinear
    assert type(model.transformer.h[0].mlp.c_fc) is DynamicLinear
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
    with pytest.raises(RuntimeError, match="save the fp32 model"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights", ["int8", "fp16"])
def test_the_copys_state_dict_loads_into_another_copy(model, tiny_config, ids, weights):
    """torch's own way to keep a quantized model: its state dict (quantized params and their dtypes)."""
    quantized = fast.quantized_for_cpu(model, weights)
    torch.manual_seed(1)
    other = fast.quantized_for_cpu(GPT2ScratchForCausalLM(tiny_config).eval(), weights)
    with torch.no_grad():
        assert not torch.equal(other(ids).logits, quantized(ids).logits)
        other.load_state_dict(quantized.state_dict())
        assert torch.equal(other(ids).logits, quantized(ids).logits)


def test_int8_weights_are_symmetric_per_output_channel_roundings(model):
    quantized = fast.quantized_for_cpu(model, "int8")
    originals = _linears(model)
    for name, module in _linears(quantized).items():
        w, q = originals[name].weight.detach(), module.weight()
        assert q.qscheme() == torch.per_channel_affine and not q.q_per_channel_zero_points().any()
        scales = q.q_per_channel_scales().float()
        torch.testing.assert_close(scales, w.abs().amax(1) / 127.5, rtol=1e-5, atol=0)
        assert ((q.dequantize() - w).abs() <= scales[:, None] / 2 + 1e-7).all(), name


def test_fp16_weights_are_the_half_precision_values(model):
    quantized = fast.quantized_for_cpu(model, "fp16")
    originals = _linears(model)
    for name, module in _linears(quantized).items():
        weight, bias = module._packed_params._weight_bias()
        assert torch.equal(weight, originals[name].weight.detach().half().float()), name
        if originals[name].bias is not None:
            assert torch.equal(bias, originals[name].bias.detach()), name


@pytest.mark.parametrize(("weights", "atol"), [("int8", 0.08), ("fp16", 2e-3)])
def test_logits_come_from_the_quantized_kernels_and_stay_close(model, ids, weights, atol):
    quantized = fast.quantized_for_cpu(model, weights)
    calls = []
    for module in _linears(quantized).values():
        module.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        exact, approximate = model(ids).logits, quantized(ids).logits
    assert len(calls) == len(_linears(quantized))  # each layer ran once, through fbgemm's module
    assert not torch.equal(exact, approximate)  # rounded weights: not the fp32 path
    assert (exact - approximate).abs().max() < atol * exact.abs().max()


@pytest.mark.parametrize("weights", ["int8", "fp16"])
def test_cached_greedy_generate_equals_the_copys_own_uncached_argmax(model, ids, weights):
    quantized = fast.quantized_for_cpu(model, weights)
    out = quantized.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    tokens = ids
    with torch.no_grad():
        for _ in range(6):
            next_token = quantized(tokens, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    assert torch.equal(out, tokens)


def test_weights_held_column_major_by_a_one_row_generate_quantize_alike(model, ids):
    """``generate`` may hold the wide weights column-major (one-row decoding); the copy must not care."""
    from gpt2scratch.modeling_gpt2scratch import set_weight_layout

    with torch.no_grad():
        before = fast.quantized_for_cpu(model, "int8")(ids).logits
    set_weight_layout(model, column_major=True)
    assert not model.lm_head.weight.is_contiguous()
    with torch.no_grad():
        assert torch.equal(fast.quantized_for_cpu(model, "int8")(ids).logits, before)


def test_a_text_generation_pipeline_runs_on_the_copy(model, vocab_dir):
    from transformers import pipeline

    from gpt2scratch.tokenizer import hf_tokenizer

    tok = hf_tokenizer(vocab_dir)
    quantized = fast.quantized_for_cpu(model, "int8")
    text = pipeline("text-generation", model=quantized, tokenizer=tok)(
        "Hello world", max_new_tokens=5, do_sample=False
    )
    ids = tok("Hello world", return_tensors="pt")["input_ids"]
    expected = quantized.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=50256)
    assert text[0]["generated_text"] == tok.decode(expected[0])


def test_a_sequence_classifier_is_quantized_score_head_included(tiny_config, ids):
    torch.manual_seed(0)
    classifier = GPT2ScratchForSequenceClassification(
        GPT2ScratchConfig(**{**tiny_config.to_dict(), "num_labels": 2})
    )
    classifier.config.pad_token_id = tiny_config.eos_token_id
    quantized = fast.quantized_for_cpu(classifier.eval(), "int8")
    assert type(quantized.score) is DynamicLinear
    with torch.no_grad():
        torch.testing.assert_close(quantized(ids).logits, classifier(ids).logits, atol=0.05, rtol=0.05)


def test_refusals_say_what_to_do(model, tmp_path):
    with pytest.raises(ValueError, match="int8, fp16"):
        fast.quantized_for_cpu(model, "int4")
    with pytest.raises(ValueError, match="dtype=torch.float32"):
        fast.quantized_for_cpu(GPT2ScratchForCausalLM(model.config).to(torch.bfloat16))
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        GPT2ScratchForCausalLM(model.config), peft.LoraConfig(r=2, target_modules=["c_attn"])
    )
    with pytest.raises(ValueError, match="merge_and_unload"):
        fast.quantized_for_cpu(lora)
    quantized = fast.quantized_for_cpu(model)
    assert not any(p.requires_grad for p in quantized.parameters())  # training it fails at backward()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError, match="save the fp32 model"):
        quantized.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_quality_and_speed_benchmark_smoke_run(tmp_path, vocab_dir, shared_data, benchmark_script):
    """benchmarks/bench_quantized.py end to end on the tiny shape: quality figures for each copy on real
    text, speed at one thread, weight bytes per token in the expected order."""
    import json

    from gpt2scratch.tokenizer import save_tokenizer

    bench = benchmark_script("bench_quantized")
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    folder = tmp_path / "model"
    GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=50257)).save_pretrained(folder)
    save_tokenizer(vocab_dir, folder, model_max_length=128)
    argv = ["--model", str(folder), "--text", str(shared_data / "corpora" / "the-verdict.txt")]
    argv += ["--max-blocks", "2", "--preset", "tiny", "--threads", "1", "--repeats", "1", "--new-tokens", "3"]
    try:
        path = bench.main(argv + ["--out", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(path.read_text())
    trained = result["quality"][0]["variants"]
    assert set(trained) == {"fp32", "int8", "fp16"} and trained["fp32"]["tokens"] == 2 * 127
    assert 0 < trained["int8"]["kl_from_fp32"] and 0.5 < trained["fp16"]["top1_agreement"] <= 1
    assert len(trained["int8"]["greedy_tokens_matching_fp32"]) == 8
    assert len(result["quality"]) == 2 and result["quality"][1]["about"].startswith("Random weights")
    sizes = result["weight_bytes_per_token"]
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert all(v > 0 for v in result["speed"][0]["decode_b8"].values())
    assert "| 1 | greedy generate() batch 1" in (tmp_path / "out" / "quantized-latest.md").read_text()


@pytest.mark.parametrize("weights", ["int8", "fp16"])
def test_generate_command_decodes_with_quantized_weights(tmp_path, vocab_dir, weights):
    from conftest import run_cli

    from gpt2scratch.tokenizer import hf_tokenizer, save_tokenizer

    torch.manual_seed(0)
    folder = tmp_path / "model"
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=50257)).eval()
    model.save_pretrained(folder)
    save_tokenizer(vocab_dir, folder, model_max_length=128)
    gen = run_cli(
        "generate", str(folder), "--prompt", "Hello world", "--max-new-tokens", "8", "--weights", weights
    )
    assert gen.returncode == 0, gen.stderr
    assert f"decoding with {weights} weights" in gen.stderr
    tok = hf_tokenizer(vocab_dir)
    ids = tok("Hello world", return_tensors="pt")["input_ids"]
    quantized = fast.quantized_for_cpu(model, weights)
    expected = quantized.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=50256)
    assert gen.stdout.strip() == tok.decode(expected[0]).strip()
