"""Each speed path is taken when it should be, and gives the eager path's outputs.

Paths in the model file (every user gets them): the fused tanh-GELU, the CPU thread policy for small
calls, SDPA with ``is_causal`` and no mask when nothing is padded, wide weights held column-major for
decoding, no-grad projections over a few rows (8-32; q/k/v and MLP input from 2) through oneDNN with the
roles swapped and wide ones over more rows through oneDNN as is (the LM head also with autograd), few-row
projections on the MKL paths (split across threads, the LM head transposed), kept positions in the last block (causal LM and classifier). The
in-place KV cache is tested against ``DynamicCache`` in test_modeling.py. Opt-in paths
(``gpt2scratch.fast``): vocabulary padding, fused AdamW, freed memory reused, static-cache generation, static cache +
``torch.compile``, ``greedy_loop`` (compiled on the CPU with the weights frozen in; tests/test_gpu.py runs it as a
CUDA graph where there is a GPU).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.activations import ACT2FN

import gpt2scratch.modeling_gpt2scratch as modeling
from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification, fast


@pytest.fixture
def model(tiny_config) -> GPT2ScratchForCausalLM:
    torch.manual_seed(0)
    m = GPT2ScratchForCausalLM(tiny_config).eval()
    m.generation_config.pad_token_id = tiny_config.eos_token_id
    return m


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.fixture
def restore_threads():
    """Restore thread count and measurements; decisions a test sets by hand are not re-measured."""
    threads = torch.get_num_threads()
    saved = dict(modeling._ONE_THREAD_FASTER), dict(modeling._MEASURED_AT)
    modeling._MEASURED_AT.clear()
    yield
    torch.set_num_threads(threads)
    for table, entries in zip((modeling._ONE_THREAD_FASTER, modeling._MEASURED_AT), saved, strict=True):
        table.clear()
        table.update(entries)


# ----------------------------------------------------------------------------------------- fused GELU
def test_gelu_new_runs_as_torch_fused_kernel_with_same_outputs(model, ids):
    act = model.transformer.h[0].mlp.act
    assert type(act) is type(ACT2FN["gelu_pytorch_tanh"]), "gelu_new should map to torch's fused tanh GELU"
    x = torch.randn(4, 300) * 4
    torch.testing.assert_close(act(x), ACT2FN["gelu_new"](x), atol=1e-6, rtol=0)
    with torch.no_grad():
        fused = model(ids).logits
        for block in model.transformer.h:
            block.mlp.act = ACT2FN["gelu_new"]
        reference = model(ids).logits
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- thread policy
def _threads_inside_forward(model, ids) -> list[int]:
    seen = []
    hook = model.transformer.h[0].register_forward_hook(lambda *a: seen.append(torch.get_num_threads()))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        hook.remove()
    return seen


def test_small_calls_run_on_one_thread_and_restore_the_callers_setting(model, restore_threads):
    torch.set_num_threads(2)
    modeling._ONE_THREAD_FASTER[2] = True  # as measured on small VMs
    small = torch.randint(0, 1000, (1, modeling.SMALL_CALL_TOKENS))
    large = torch.randint(0, 1000, (1, modeling.SMALL_CALL_TOKENS + 1))
    assert _threads_inside_forward(model, small) == [1]
    assert torch.get_num_threads() == 2, "the caller's thread count must be restored"
    assert _threads_inside_forward(model, large) == [2]
    modeling._ONE_THREAD_FASTER[2] = False  # where parallel regions are cheap, nothing changes
    assert _threads_inside_forward(model, small) == [2]


def test_thread_policy_restores_threads_when_forward_raises(model, restore_threads):
    torch.set_num_threads(2)
    modeling._ONE_THREAD_FASTER[2] = True
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        model(torch.tensor([[50257]]))
    assert torch.get_num_threads() == 2


def test_thread_policy_gives_the_same_generation(model, ids, restore_threads):
    torch.set_num_threads(2)
    modeling._ONE_THREAD_FASTER[2] = True
    serial = model.generate(ids, max_new_tokens=6, do_sample=False)
    modeling._ONE_THREAD_FASTER[2] = False
    parallel = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(serial, parallel)
    assert torch.get_num_threads() == 2


def test_thread_calibration_measures_restores_and_remeasures_when_stale(restore_threads, monkeypatch):
    torch.set_num_threads(2)
    modeling._ONE_THREAD_FASTER.clear()
    assert isinstance(modeling._one_thread_is_faster(2), bool)
    assert 2 in modeling._ONE_THREAD_FASTER
    assert torch.get_num_threads() == 2
    first = modeling._MEASURED_AT[2]
    modeling._one_thread_is_faster(2)
    assert modeling._MEASURED_AT[2] == first, "a fresh measurement is reused"
    modeling._MEASURED_AT[2] = first - modeling.REMEASURE_S - 1  # as if measured long ago
    modeling._one_thread_is_faster(2)
    assert modeling._MEASURED_AT[2] > first, "a stale measurement is taken again (the machine's load changes)"


# ------------------------------------------------------------------------------- SDPA without a mask
def test_unpadded_generate_uses_sdpa_is_causal_without_masks(model, ids, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((q.shape[-2], attn_mask is None, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    n_layer = model.config.n_layer
    assert len(calls) == 3 * n_layer
    assert calls[:n_layer] == [(ids.shape[1], True, True)] * n_layer  # prefill: causal kernel, no mask tensor
    assert calls[n_layer:] == [(1, True, False)] * (2 * n_layer)  # decode: one query sees all keys, no mask
    monkeypatch.undo()
    masked = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert torch.equal(out, masked)


def test_padded_rows_still_get_a_mask_and_match_the_row_alone(model):
    row = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(5))
    padded = torch.cat([torch.full((1, 3), 50256), row], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    alone = model.generate(row, max_new_tokens=5, do_sample=False)
    batched = model.generate(padded, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(batched[:, 3:], alone)


# ---------------------------------------------------------------------------------- vocabulary padding
@pytest.mark.parametrize("tied", [True, False])
def test_pad_vocab_keeps_logits_loss_and_generation(tiny_config, ids, tied):
    """Padded in place: the head keeps its class (its fast paths) and is tied as before, or padded on its own."""
    torch.manual_seed(0)
    tiny_config.tie_word_embeddings = tied
    model = GPT2ScratchForCausalLM(tiny_config).eval()
    model.generation_config.pad_token_id = tiny_config.eos_token_id
    head = model.lm_head
    with torch.no_grad():
        reference = model(ids, labels=ids)
    expected_tokens = model.generate(ids, max_new_tokens=5, do_sample=False)
    fast.pad_vocab(model, 64)
    assert model.transformer.wte.weight.shape[0] == 50304 == model.config.padded_vocab_size
    assert model.lm_head is head and type(head) is modeling.GPT2ScratchLinear and head.head
    assert repr(head).endswith("out_features=50304, bias=False, head=True)")
    assert head.out_features == head.weight.shape[0] == 50304
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied, "tied as before"
    out = model(ids, labels=ids)
    assert out.logits.shape[-1] == 50257
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, reference.loss, atol=1e-6, rtol=0)
    out.loss.backward()
    assert model.lm_head.weight.grad[50257:].abs().max() == 0, "padding rows must get no gradient"
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), expected_tokens)


def test_prepare_for_training_pads_only_on_gpu_by_default(model):
    fast.prepare_for_training(model)
    assert model.transformer.wte.weight.shape[0] == 50257
    fast.prepare_for_training(model, pad_multiple=100)
    assert model.transformer.wte.weight.shape[0] == 50300


# -------------------------------------------------------------------------------------- fused AdamW
def test_fused_adamw_is_fused_and_steps_like_the_default(tiny_config, ids):
    torch.manual_seed(0)
    a = GPT2ScratchForCausalLM(tiny_config)
    b = GPT2ScratchForCausalLM(tiny_config)
    b.load_state_dict(a.state_dict())
    fused = fast.make_optimizer(a, lr=1e-3)
    decayed = [p for p in b.parameters() if p.dim() >= 2]
    others = [p for p in b.parameters() if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": 0.01}, {"params": others, "weight_decay": 0.0}]
    plain = torch.optim.AdamW(groups, lr=1e-3)
    assert fused.defaults["fused"] is True
    for model, opt in ((a, fused), (b, plain)):
        model.eval()  # no dropout: both see the same function
        for _ in range(2):
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        # atol: the key bias gets ~0 gradient (softmax ignores it), where Adam amplifies rounding noise
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------- freed memory reused
REUSE_PROBE = """
import json, resource, torch
from gpt2scratch import fast

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

def cycle():
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 2**20)  # 64 MB, over glibc's largest mmap threshold
    held = rss()
    del t
    return {"rss_dropped": held - rss(), "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}

before = [cycle() for _ in range(3)]
applied = fast.reuse_freed_memory()
cycle()  # grows the heap once (or twice, when another allocation took the start of the freed block meanwhile)
print(json.dumps({"before": before, "applied": applied, "after": [cycle() for _ in range(3)]}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="reuse_freed_memory acts on glibc's malloc")
def test_reuse_freed_memory_keeps_large_blocks_for_the_next_tensor():
    """In a fresh process (the setting is process-wide): a freed 64 MB tensor goes back to the system
    before, and the next one faults every page in again; after, it stays in the process and, once the heap
    has grown, a next one reuses it without faulting a page in (under load another allocation sometimes
    takes the start of the freed block first, so one cycle of three may still grow the heap)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", REUSE_PROBE], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe["applied"] is True
    assert all(cycle["rss_dropped"] > 48 * 2**20 and cycle["faults"] > 12000 for cycle in probe["before"])
    assert all(cycle["rss_dropped"] < 8 * 2**20 for cycle in probe["after"])
    assert min(cycle["faults"] for cycle in probe["after"]) < 1000, "the freed block is reused, unfaulted"


# ---------------------------------------------------------------------------------- static KV cache
def test_static_cache_generate_uses_a_static_cache_and_matches(model, ids, monkeypatch):
    from transformers.cache_utils import StaticCache

    seen = []
    forward = modeling.GPT2ScratchModel.forward

    def spy(self, *args, cache=None, **kwargs):
        seen.append(type(cache))
        return forward(self, *args, cache=cache, **kwargs)

    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    monkeypatch.setattr(modeling.GPT2ScratchModel, "forward", spy)
    out = fast.static_cache(model)(ids, max_new_tokens=6, do_sample=False)
    assert seen and all(issubclass(t, StaticCache) for t in seen)
    assert torch.equal(out, expected)


def test_compiled_static_generate_traces_one_graph_and_matches(model, ids):
    """torch.compile(fullgraph=True) with the 'eager' backend: proves the decode step is one graph with no
    breaks (the thread policy and input checks stay outside) without minutes of inductor codegen on CPU."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them: an earlier test's graph breaks would count here
    expected = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
    generate = fast.static_compiled(model, backend="eager")
    out = generate(ids[:1], max_new_tokens=5, do_sample=False)
    assert torch.equal(out, expected)
    assert getattr(model, "_compiled_call", None) is not None, "generate did not take the compiled path"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert not torch._dynamo.utils.counters["graph_break"]


# ------------------------------------------------------------------------------------- greedy_loop
def _ending_rows_in_turn(model, ids) -> list[int]:
    """End-of-text ids that end row 0 at its first new token and row 1 at its second."""
    full = model.generate(ids, max_new_tokens=2, do_sample=False, eos_token_id=None)
    T = ids.shape[1]
    assert full[1, T] not in (full[0, T], full[1, T + 1]), "pick other inputs: row 1 would end at once"
    return [int(full[0, T]), int(full[1, T + 1])]


def test_greedy_loop_runs_its_own_static_loop_and_matches_generate(model, ids, monkeypatch):
    from transformers.cache_utils import StaticCache

    seen, forward = [], modeling.GPT2ScratchModel.forward

    def spy(self, input_ids=None, *args, cache=None, **kwargs):
        seen.append((type(cache), input_ids.shape[1]))
        return forward(self, input_ids, *args, cache=cache, **kwargs)

    expected = model.generate(ids, max_new_tokens=9, do_sample=False, eos_token_id=None)
    generate = fast.greedy_loop(model)
    monkeypatch.setattr(modeling.GPT2ScratchModel, "forward", spy)
    monkeypatch.setattr(type(model), "generate", lambda *a, **k: pytest.fail("greedy_loop called generate"))
    out = generate(ids, max_new_tokens=9, eos_token_id=None)
    assert torch.equal(out, expected) and out.is_contiguous()
    # one prefill over the prompt, then one single-token step per further token, all on one static cache
    assert seen == [(StaticCache, ids.shape[1])] + [(StaticCache, 1)] * 8


def test_greedy_loop_reads_an_empty_end_of_text_list_as_none(model, ids, monkeypatch):
    eos = _ending_rows_in_turn(model, ids)
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    monkeypatch.setattr(model.generation_config, "pad_token_id", None)
    generate = fast.greedy_loop(model)
    assert generate(ids, max_new_tokens=6).shape[1] == ids.shape[1] + 2, "the model's own ids end both rows"
    expected = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert torch.equal(generate(ids, max_new_tokens=6, eos_token_id=[]), expected)


def test_greedy_loop_pads_after_end_of_text_and_stops_as_generate(model, ids):
    eos = _ending_rows_in_turn(model, ids)
    expected = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=7)
    out = fast.greedy_loop(model)(ids, max_new_tokens=12, eos_token_id=eos, pad_token_id=7)
    assert torch.equal(out, expected)
    assert out.shape[1] == ids.shape[1] + 2, "both rows ended by the second token: the output stops there"
    assert out[0, -1].item() == 7, "the row that ended first is padded"


@pytest.mark.parametrize("attention", [None, "eager"])
def test_greedy_loop_step_is_one_graph_reused_across_lengths(model, ids, attention):
    """fullgraph=True with the 'eager' backend: the decode step traces as one graph with no breaks (what
    is captured as a CUDA graph on GPU) and calls of other lengths reuse it."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    generate = fast.greedy_loop(model, compile=True, backend="eager", attention=attention)
    for new in (6, 11):
        expected = model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None)
        assert torch.equal(generate(ids, max_new_tokens=new, eos_token_id=None), expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]


def test_greedy_loop_compiled_on_cpu_freezes_the_weights_and_recompiles_when_they_change(
    model, ids, monkeypatch
):
    """Compiled on the CPU, the step holds the weights as constants by default (inductor's freeze pass runs)
    and gives generate's tokens; after an in-place change of one weight the next call warns, compiles again
    and gives the changed model's tokens (the old constants would give the old ones). The caller's inductor
    settings are left as they were."""
    import torch._inductor.config as inductor_config
    import torch._inductor.freezing as freezing

    frozen, freeze = [], freezing.freeze

    def spy(*args, **kwargs):
        frozen.append(True)
        return freeze(*args, **kwargs)

    monkeypatch.setattr(freezing, "freeze", spy)
    generate = fast.greedy_loop(model, compile=True)
    before = model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert torch.equal(generate(ids, max_new_tokens=4, eos_token_id=None), before)
    assert frozen == [True], "the step was compiled without freezing"
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(-3.0)
    after = model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert not torch.equal(after, before), "pick a change that changes the tokens"
    with pytest.warns(UserWarning, match="weights changed since its decode step was compiled"):
        assert torch.equal(generate(ids, max_new_tokens=4, eos_token_id=None), after)
    assert frozen == [True, True]
    assert not inductor_config.freezing and not inductor_config.max_autotune


def test_greedy_loop_decode_attention_is_its_steps_own(model, ids, monkeypatch):
    """The step's attention can differ from the model's (eager for fp32 on CUDA, where it was measured
    faster); the prompt still goes through the model's own, and the tokens are generate's."""
    calls, eager = [], modeling.eager_attention

    def spy(module, query, *args, **kwargs):
        calls.append(query.shape[-2])
        return eager(module, query, *args, **kwargs)

    assert model.config._attn_implementation == "sdpa"
    assert fast.decode_attention(model) is None, "on the CPU the model's own attention is kept"
    expected = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    monkeypatch.setattr(modeling, "eager_attention", spy)
    out = fast.greedy_loop(model, attention="eager")(ids, max_new_tokens=5, eos_token_id=None)
    assert torch.equal(out, expected)
    assert calls == [1] * (4 * model.config.n_layer), "eager attention in the 4 decode steps only"


def test_greedy_loop_refuses_what_it_does_not_do(model, ids):
    generate = fast.greedy_loop(model)
    mask = torch.ones_like(ids)
    assert generate(ids, max_new_tokens=2, attention_mask=mask).shape == (2, ids.shape[1] + 2)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="unpadded prompts only"):
        generate(ids, max_new_tokens=2, attention_mask=mask)
    with pytest.raises(ValueError, match="greedily only"):
        generate(ids, max_new_tokens=2, do_sample=True)
    with pytest.raises(ValueError, match="exceeds this model's n_positions"):
        generate(ids, max_new_tokens=model.config.n_positions)
    with pytest.raises(ValueError, match="pass compile=True too"):
        fast.greedy_loop(model, frozen=True)


# ---------------------------------------------------------------------------------------------- MFU
def test_mfu_uses_nanogpt_formula_and_real_peaks():
    config = GPT2ScratchConfig.from_preset("gpt2")
    per_token = fast.training_flops_per_token(config, 1024)
    assert per_token == pytest.approx(6 * 124.3e6 + 12 * 12 * 768 * 1024, rel=0.01)
    assert fast.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert fast.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert fast.peak_flops("cpu") is None
    assert fast.mfu(100_000, config, 1024, "NVIDIA H100 80GB HBM3") == pytest.approx(
        100_000 * per_token / 989e12
    )


# --------------------------------------------------------------------------------- the benchmark itself
def test_benchmark_smoke_run_writes_result_and_table(tmp_path, restore_threads, benchmark_script):
    bench = benchmark_script("bench_speed")
    argv = ["--preset", "tiny", "--threads", "1", "--repeats", "1", "--new-tokens", "3", "--no-gpu"]
    argv += ["--sections", "prefill", "decode", "--skip-paths", "static_compiled", "greedy_loop_frozen"]
    argv += ["--out", str(tmp_path)]
    path = bench.main(argv)
    result = json.loads(path.read_text())
    cpu = result["cpu"][0]
    assert cpu["max_abs_logit_diff"] < 1e-4, "the two models must carry the same weights"
    assert {"ours", "transformers", "ours_static", "ours_greedy_loop"} <= set(cpu["decode_b1"])
    assert {"ours_int8_weights", "ours_fp16_weights"} <= set(cpu["decode_b8"])
    assert all(v > 0 for v in cpu["decode_b8"].values())
    assert "prefill_4x256/ours/1thr" in result["ratios"]
    table = (tmp_path / "speed-latest.md").read_text()
    b1 = next(line for line in table.splitlines() if line.startswith("| greedy generate() batch 1"))
    best_exact, quantized = b1.split("|")[-3:-1]
    assert "int8" not in best_exact and "int8 " in quantized and "fp16 " in quantized
    assert f"on {bench.machine_label(result['machine'])}, torch" in table


def test_benchmark_decodes_the_batch_sizes_asked_for(tmp_path, restore_threads, benchmark_script):
    """``--decode-batches``: a row per batch size, without a target where the issue sets none, and no
    bandwidth-floor row without batch 1."""
    bench = benchmark_script("bench_speed")
    paths = ["static", "static_compiled", "greedy_loop", "greedy_loop_frozen", "int8_weights", "fp16_weights"]
    argv = ["--preset", "tiny", "--threads", "1", "--repeats", "1", "--new-tokens", "2", "--no-gpu"]
    argv += [
        "--sections",
        "decode",
        "--decode-batches",
        "2",
        "8",
        "--skip-paths",
        *paths,
        "--out",
        str(tmp_path),
    ]
    result = json.loads(bench.main(argv).read_text())
    cpu = result["cpu"][0]
    assert (
        set(cpu) >= {"decode_b2", "decode_b8"} and "decode_b1" not in cpu and "decode_floor_tok_s" not in cpu
    )
    assert set(cpu["decode_b2"]) == {"ours", "transformers"}
    assert {"decode_b2/ours/1thr", "decode_b8/ours/1thr"} <= set(result["ratios"])
    table = (tmp_path / "speed-latest.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| greedy generate() batch")]
    assert [row.split(",")[0] for row in rows] == [
        "| greedy generate() batch 2",
        "| greedy generate() batch 8",
    ]
    assert "| (no target) |" in rows[0] and "| ≥ 1.3× |" in rows[1]
    assert not any("floor" in line for line in table)


def test_benchmark_memory_section_measures_training_and_decoding_in_own_processes(tmp_path, benchmark_script):
    """``--sections memory``: peak RSS of a training step and RSS after a batch-1 generate(), each model in
    a process of its own, both in the JSON and in the table."""
    bench = benchmark_script("bench_speed")
    argv = [
        "--preset",
        "tiny",
        "--threads",
        "1",
        "--sections",
        "memory",
        "--no-gpu",
        "--memory-shape",
        "2",
        "16",
    ]
    result = json.loads(bench.main([*argv, "--out", str(tmp_path)]).read_text())
    (cpu,) = result["cpu"]
    assert set(cpu["peak_rss_train"]) == {"ours", "transformers", "ours_fast"}
    assert all(
        entry["peak_rss_mb"] >= entry["rss_after_load_mb"] > 0 for entry in cpu["peak_rss_train"].values()
    )
    decoding = cpu["rss_decode_b1"]
    assert set(decoding) == {"ours_decode", "transformers_decode"}
    assert all(entry["rss_after_generate_mb"] > 0 and entry["peak_rss_mb"] > 0 for entry in decoding.values())
    row = next(
        line for line in (tmp_path / "speed-latest.md").read_text().splitlines() if "generate() of 16" in line
    )
    assert f"| {decoding['ours_decode']['rss_after_generate_mb']} | " in row


def test_benchmark_tables_tell_hosts_of_one_cpu_name_apart(benchmark_script):
    """Result tables name the vector unit and family/model numbers: "AMD EPYC" covered an AVX2 host and an
    AVX-512 one on this project's machine; older result files, without the numbers, still render."""
    bench = benchmark_script("bench_speed")
    zen5 = {
        "cpu_model": "AMD EPYC",
        "cpus": 2,
        "simd": ["avx2", "fma", "avx512f"],
        "cpu_id": "family 26 model 2",
    }
    assert bench.machine_label(zen5) == "AMD EPYC (AVX-512, family 26 model 2, 2 vCPUs)"
    assert (
        bench.machine_label({"cpu_model": "AMD EPYC", "cpus": 2, "simd": ["avx2"]})
        == "AMD EPYC (AVX2, 2 vCPUs)"
    )
    if Path("/proc/cpuinfo").exists():
        assert bench.machine_info()["cpu_id"].startswith("family ")


def test_decode_budget_benchmark_stubs_only_one_row_products_and_writes_its_table(
    tmp_path, restore_threads, benchmark_script
):
    """benchmarks/bench_decode_budget.py: its stub zeroes the one-row products and nothing else, and a smoke
    run writes every part of the split (the weights' plain sums too)."""
    budget = benchmark_script("bench_decode_budget")
    torch.manual_seed(0)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with torch.no_grad():
        prompt = model(ids).logits
        step = model(ids[:, :1]).logits
        with budget.products_stubbed():
            assert torch.equal(model(ids).logits, prompt), "products over several rows run as they are"
            assert not model(ids[:, :1]).logits.any(), "one-row products, the head's too, give zeros"
        assert torch.equal(model(ids[:, :1]).logits, step), "the real products are back"
    argv = ["--preset", "tiny", "--threads", "1", "--repeats", "1", "--new-tokens", "4"]
    result = json.loads(budget.main([*argv, "--out", str(tmp_path)]).read_text())
    (run,) = result["runs"]
    assert set(run["ms_per_token"]) == set(budget.PARTS) and run["floor_ms"] > 0 and run["read_gb_per_s"] > 0
    assert all(ms >= 0 for ms in run["ms_per_token"].values())
    table = (tmp_path / "decode-budget-latest.md").read_text()
    assert "| 1 | " in table and "products ÷ sums" in table


@pytest.mark.skipif(not modeling.ONEDNN_LINEAR, reason="this torch build has no oneDNN")
def test_gemm_benchmark_times_both_ways_of_each_product_on_the_same_values(
    tmp_path, restore_threads, benchmark_script
):
    """benchmarks/bench_gemm.py: MKL's and oneDNN's ways of the forward and both backward products give the
    same values, and a smoke run writes every projection's three products."""
    gemm = benchmark_script("bench_gemm")
    x, weight, bias, grad = torch.randn(16, 24), torch.randn(40, 24), torch.randn(40), torch.randn(16, 40)
    expected = {"forward": x @ weight.t() + bias, "grad_x": grad @ weight, "grad_w": grad.t() @ x}
    for name, fns in gemm.products(x, weight, bias, grad).items():
        for fn in fns:
            torch.testing.assert_close(fn(), expected[name], atol=1e-4, rtol=1e-5, msg=name)
    seen = []
    projections = benchmark_script("bench_projections")
    before = modeling.ONEDNN_EVERY_PRODUCT
    step = projections.with_setting(
        lambda: seen.append(modeling.ONEDNN_EVERY_PRODUCT), "ONEDNN_EVERY_PRODUCT", not before
    )
    step()
    assert seen == [not before] and modeling.ONEDNN_EVERY_PRODUCT == before, "switched for the step only"
    argv = ["--preset", "tiny", "--rows", "16", "--threads", "1", "--repeats", "1", "--out", str(tmp_path)]
    steps_argv = ["--train-repeats", "1", "--train-shape", "2", "8", "--train-methods", "full", "lora"]
    result = json.loads(gemm.main([*argv, *steps_argv]).read_text())
    assert [run["projection"] for run in result["runs"]] == list(gemm.shapes("tiny"))
    for run in result["runs"]:
        assert all(run[p]["mkl_gflops"] > 0 and run[p]["onednn_gflops"] > 0 for p in gemm.PRODUCTS)
        assert all(run[p]["max_abs_diff"] < 1e-3 for p in gemm.PRODUCTS)
    assert [(s["method"], s["batch"], s["seq"]) for s in result["training"]] == [
        ("full", 2, 8),
        ("lora", 2, 8),
    ]
    for steps in result["training"]:
        assert all(steps[f"{n}_tokens_per_s"] > 0 for n in ("on", "off", "transformers"))
    table = (tmp_path / "gemm-latest.md").read_text()
    assert "| lm_head | 16 | 1 |" in table and "| full | 2×8 | 1 |" in table
    assert "| LoRA (PEFT, rank 8) | 2×8 | 1 |" in table
    for kind in (
        "ours",
        "hf",
    ):  # adapters on every q/k/v, attention output and MLP layer; nothing else trains
        folders = gemm.write_folders("tiny", tmp_path / kind)
        lora = gemm.with_lora(gemm.load(kind, folders[0 if kind == "ours" else 1]))
        trained = [name for name, p in lora.named_parameters() if p.requires_grad]
        assert trained and all("lora_" in name for name in trained)
        assert len(trained) == 2 * 4 * lora.config.n_layer, kind


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="reuse_freed_memory acts on glibc's malloc")
def test_allocator_benchmark_smoke_run_compares_the_two_settings(tmp_path):
    """bench_allocator.py (a script: run as users run it) times both models under each setting, each in its
    own process, and only the reuse setting applies the change. (Whether the default faults here depends on
    glibc's adaptive thresholds with a tiny model; the change itself: test_reuse_freed_memory_….)"""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_allocator.py"
    argv = ["--preset", "tiny", "--threads", "1", "--seqs", "16", "--rounds", "1", "--steps", "1"]
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("allocator-*.json")
    (run,) = json.loads(path.read_text())["runs"]
    assert (run["default"]["applied"], run["reuse"]["applied"]) == (False, True)
    for setting in ("default", "reuse"):
        for name in ("ours", "transformers"):
            figures = run[setting][name]
            assert figures["best_tokens_per_s"] > 0 and figures["faults_per_step"] >= 0, (setting, name)
    assert "| 1 | 4×16 | ours ÷ transformers |" in (tmp_path / "allocator-latest.md").read_text()


def test_benchmark_gpu_sections_dry_run_on_cpu(tmp_path, benchmark_script):
    """The GPU sections' code (parity, training with MFU, decode through every GPU path), run on the CPU
    with a tiny model, so that a run on a lent GPU does not fail on a bug this machine can find."""
    bench = benchmark_script("bench_speed")
    argv = ["--preset", "tiny", "--gpu-only", "--gpu-device", "cpu", "--compile-backend", "eager"]
    argv += ["--gpu-train-shape", "2", "16", "--new-tokens", "3", "--repeats", "1", "--gpu-hf-compiled"]
    argv += ["--gpu-sections", "parity", "train", "decode_b1", "--skip-paths", "static_compiled"]
    argv += ["--gpu-profile", "--gpu-decode-bf16", "--gpu-decode-autotune", "--gpu-decode-eager-attention"]
    path = bench.main(argv + ["--gpu-train-dropout", "0", "--out", str(tmp_path)])
    gpu = json.loads(path.read_text())["gpu"]
    assert gpu["parity"]["max_abs_logit_diff_fp32"] < 1e-4
    assert set(gpu["train"]["tok_s"]) == {"ours", "transformers", "ours_fast", "transformers_compiled"}
    off = dict.fromkeys(("attn_pdrop", "resid_pdrop", "embd_pdrop"), 0.0)
    assert gpu["train"]["dropout"] == dict.fromkeys(gpu["train"]["tok_s"], off), "every model trains without"
    assert set(gpu["decode_b1"]["tok_s"]) == {
        "ours",
        "transformers",
        "ours_static",
        "ours_greedy_loop",
        "ours_greedy_loop_bf16",
        "ours_greedy_loop_bf16_autotune",
        "ours_greedy_loop_eager_attention",
        "ours_greedy_loop_bf16_eager_attention",
    }
    same = gpu["decode_b1"]["same_tokens_as_transformers"]
    assert all(
        same[name] for name in ("ours", "ours_static", "ours_greedy_loop", "ours_greedy_loop_eager_attention")
    )
    assert any("aten::" in line for line in gpu["train"]["profile_ours_fast"])
    assert any("aten::" in line for line in gpu["decode_b1"]["profile_ours_greedy_loop_bf16"])
    table = (tmp_path / "speed-gpu-latest.md").read_text()
    assert "| training 2×16 bf16 autocast, dropout 0 | ours_fast |" in table
    assert not (tmp_path / "speed-latest.md").exists(), "a GPU-only run leaves the CPU table alone"


# ------------------------------------------------------------------------- projections over few rows
needs_onednn = pytest.mark.skipif(not modeling.ONEDNN_LINEAR, reason="this torch build has no oneDNN")


@pytest.fixture
def linear_calls(monkeypatch):
    """(rows, out_features) of every product ``project`` leaves to ``F.linear`` (``plain_linear``)."""
    calls, product = [], modeling.plain_linear

    def recording(x, linear):
        calls.append((x.shape[:-1].numel(), linear.out_features))
        return product(x, linear)

    monkeypatch.setattr(modeling, "plain_linear", recording)
    return calls


@pytest.fixture
def split_calls(monkeypatch):
    calls, split = [], modeling.split_matmul

    def recording(x, weight, parts, transposed):
        calls.append((x.shape[0], tuple(weight.shape), parts, transposed))
        return split(x, weight, parts, transposed)

    monkeypatch.setattr(modeling, "split_matmul", recording)
    return calls


@pytest.fixture
def bag_calls(monkeypatch):
    """(the input's shape, Wᵀ's shape, threads) of every ``bag_product`` call."""
    calls, product = [], modeling.bag_product

    def recording(x, linear):
        calls.append((tuple(x.shape), tuple(linear.weight.t().shape), torch.get_num_threads()))
        return product(x, linear)

    monkeypatch.setattr(modeling, "bag_product", recording)
    return calls


@pytest.fixture
def no_onednn(monkeypatch):
    """The MKL paths alone (what a torch build without oneDNN runs)."""
    monkeypatch.setattr(modeling, "ONEDNN_LINEAR", False)


@pytest.fixture
def onednn_calls(monkeypatch):
    """(rows, out_features, swapped) of every ``onednn_linear`` call."""
    calls, product = [], modeling.onednn_linear

    def recording(x, weight, bias=None, swapped=False):
        calls.append((x.shape[0], weight.shape[0], swapped))
        return product(x, weight, bias, swapped)

    monkeypatch.setattr(modeling, "onednn_linear", recording)
    return calls


def two_threads() -> None:
    """Run the model at 2 threads, with the thread policy told that 2 threads are not slower here (use
    with the ``restore_threads`` fixture)."""
    torch.set_num_threads(2)
    modeling._ONE_THREAD_FASTER[2] = False


def column_major(weight: torch.Tensor) -> bool:
    return weight.t().is_contiguous() and not weight.is_contiguous()


@pytest.mark.parametrize("n", [7, 8, 50257])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("stored", ["row-major", "column-major"])
def test_split_matmul_equals_the_plain_product(n, rows, parts, stored):
    """Split over the weight's rows (uneven splits leave a remainder), in both orientations, for a weight
    stored either way."""
    g = torch.Generator().manual_seed(n + rows)
    weight, x = torch.randn(n, 16, generator=g), torch.randn(rows, 16, generator=g)
    if stored == "column-major":
        weight = weight.t().contiguous().t()
        assert column_major(weight)
    for transposed in (False, True):
        y = modeling.split_matmul(x, weight, parts, transposed)
        torch.testing.assert_close(y, x @ weight.t(), atol=1e-5, rtol=1e-5)
        assert y.shape == (rows, n) and y.is_contiguous()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_bag_product_equals_the_plain_product(restore_threads, threads, bias):
    """One row through a column-major weight as an embedding-bag sum: one bag per thread where the threads
    divide the 16 inputs (1, 2), one bag where they do not (3); the plain product's values."""
    torch.manual_seed(threads)
    linear = torch.nn.Linear(16, 50, bias=bias)
    linear.weight.data = linear.weight.data.t().contiguous().t()
    x = torch.randn(16)
    torch.set_num_threads(threads)
    with torch.no_grad():
        y = modeling.bag_product(x, linear)
        torch.testing.assert_close(y, linear(x), atol=1e-5, rtol=1e-5)
    assert y.shape == (50,)


def test_lm_head_runs_transposed_for_several_rows_without_grad_and_matches(
    model, ids, linear_calls, restore_threads, no_onednn
):
    """At one thread, no-grad CPU forwards over 2..HEAD_TRANSPOSED_MAX_ROWS rows compute the head as
    (W hᵀ)ᵀ (faster with MKL) when the head is held row-major; one row, or a forward that records autograd,
    calls the Linear. Same logits."""
    modeling.set_weight_layout(model, column_major=False)
    torch.set_num_threads(1)
    head = model.config.vocab_size
    with torch.no_grad():
        fast_logits = model(ids).logits
        assert (ids.numel(), head) not in linear_calls, "several rows without grad: not the head Linear"
        assert (ids.numel(), model.config.n_embd) in linear_calls, "the blocks call their Linears"
        linear_calls.clear()
        one_row = model(ids[:1], logits_to_keep=1).logits
        assert (1, head) in linear_calls
        h = model.transformer(ids).last_hidden_state
        torch.testing.assert_close(fast_logits, model.lm_head(h), atol=1e-5, rtol=0)
        torch.testing.assert_close(one_row, fast_logits[:1, -1:], atol=1e-5, rtol=0)
    assert fast_logits.is_contiguous() and fast_logits.shape == (*ids.shape, head)
    linear_calls.clear()
    grad_logits = model(ids).logits
    assert linear_calls[-1] == (ids.numel(), head), "with autograd the Linear (and its backward) is used"
    torch.testing.assert_close(grad_logits.detach(), fast_logits, atol=1e-5, rtol=0)


def test_lm_head_uses_the_linear_beyond_the_row_limit(
    model, monkeypatch, linear_calls, restore_threads, no_onednn
):
    modeling.set_weight_layout(model, column_major=False)
    torch.set_num_threads(1)
    monkeypatch.setattr(modeling, "HEAD_TRANSPOSED_MAX_ROWS", 4)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
        assert (4, model.config.vocab_size) not in linear_calls
        model(torch.zeros(1, 5, dtype=torch.long))
        assert (5, model.config.vocab_size) in linear_calls


@pytest.mark.parametrize("column_major_weights", [True, False])
def test_few_rows_split_across_threads_and_match(
    model, ids, split_calls, bag_calls, linear_calls, restore_threads, column_major_weights, no_onednn
):
    """With 2 threads, a no-grad forward over <= SPLIT_MAX_ROWS rows splits every projection (a row-major
    head in the transposed orientation when it has several rows) and gives the one-thread logits; more
    rows, or one thread, do not split, and one row on column-major weights runs as embedding bags where
    FBGEMM is there. Weights held either way (one-row decoding holds them column-major)."""
    model.column_major_decoding = False  # generate leaves the layout set here
    modeling.set_weight_layout(model, column_major=column_major_weights)
    assert column_major(model.lm_head.weight) == column_major_weights
    torch.set_num_threads(1)
    with torch.no_grad():
        reference = model(ids).logits
        decode_ref = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
        )
    assert split_calls == []
    linear_calls.clear()
    two_threads()
    with torch.no_grad():
        logits = model(ids).logits
        decoded = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    assert torch.equal(decoded, decode_ref)
    assert linear_calls == [], "every projection of a small no-grad forward is split"
    head = (ids.numel(), (model.config.vocab_size, model.config.n_embd), 2, not column_major_weights)
    assert head in split_calls and (ids.shape[0], *head[1:3], not head[3]) not in split_calls
    assert len({call[1] for call in split_calls}) == 5, "qkv, attention out, MLP in and out, the head"
    assert all(parts == 2 for _, _, parts, _ in split_calls)
    assert any(rows == 2 and not transposed for rows, _, _, transposed in split_calls), "decode steps"

    split_calls.clear()
    bag_calls.clear()
    big = torch.zeros(1, modeling.SPLIT_MAX_ROWS + 1, dtype=torch.long)
    with torch.no_grad():
        model(big, logits_to_keep=1)
    c = model.config.n_embd
    kept_row = [(c, c), (4 * c, c), (c, 4 * c), head[1]]  # last attention out, MLP and head: the kept row
    if column_major_weights and modeling.BAG_PRODUCTS:
        assert split_calls == [] and [weight_t[::-1] for _, weight_t, _ in bag_calls] == kept_row
    else:
        assert split_calls == [(1, shape, 2, False) for shape in kept_row] and bag_calls == []
    split_calls.clear()
    model(ids)  # autograd
    assert split_calls == []


def test_hooked_or_wrapped_projections_run_what_wraps_them_and_keep_the_fast_path(
    model, ids, split_calls, restore_threads, no_onednn
):
    """The fast path is the layer's own forward (``GPT2ScratchLinear``), so a forward hook, or a replaced
    ``forward`` that calls the original (as Accelerate's offloading does), runs and the product is still
    split; a layer replaced by another ``nn.Linear`` class runs that class's forward alone."""
    two_threads()
    block = model.transformer.h[0].mlp
    fc_shape, layers = tuple(block.c_fc.weight.shape), model.config.n_layer
    seen = []

    def split_fc_calls() -> int:
        split_calls.clear()
        with torch.no_grad():
            model(ids)
        return sum(shape == fc_shape for _, shape, _, _ in split_calls)

    assert split_fc_calls() == layers
    handle = block.c_fc.register_forward_hook(lambda module, args, out: seen.append("hook"))
    assert split_fc_calls() == layers and seen == ["hook"]
    handle.remove()
    block.c_fc.forward = lambda x, _f=block.c_fc.forward: (seen.append("forward"), _f(x))[1]
    assert split_fc_calls() == layers and seen == ["hook", "forward"]
    del block.c_fc.forward

    class Wrapped(torch.nn.Linear):
        def forward(self, x):
            seen.append("subclass")
            return super().forward(x)

    wrapped = Wrapped(block.c_fc.in_features, block.c_fc.out_features)
    wrapped.load_state_dict(block.c_fc.state_dict())
    block.c_fc = wrapped
    assert split_fc_calls() == layers - 1 and seen == ["hook", "forward", "subclass"]


def test_accelerate_offloaded_model_keeps_the_fast_paths_and_outputs(
    model, ids, split_calls, restore_threads, no_onednn
):
    """With Accelerate's CPU offloading the weights wait on the meta device and its hooks put them in place
    for each forward; the products inside still take the fast path, with the same logits and tokens."""
    import accelerate

    two_threads()
    row = ids[:1]
    with torch.no_grad():
        expected_logits = model(ids).logits
    expected_tokens = model.generate(row, max_new_tokens=4, do_sample=False)
    split_calls.clear()
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected_logits)
    assert len(split_calls) == 4 * model.config.n_layer + 1, "every projection of the forward was split"
    assert torch.equal(model.generate(row, max_new_tokens=4, do_sample=False), expected_tokens)


@needs_onednn
def test_lora_base_layers_take_the_fast_path_with_the_same_loss_and_gradients(
    model, ids, onednn_calls, monkeypatch
):
    """PEFT's LoRA layers call the wrapped ``GPT2ScratchLinear`` as their base layer: in training with
    ``ONEDNN_EVERY_PRODUCT`` the frozen base products go through oneDNN (forward and grad x, no grad W), and
    loss and the adapters' gradients equal those of the plain products."""
    from gpt2scratch.training.lora import add_lora

    monkeypatch.setattr(modeling, "ONEDNN_EVERY_PRODUCT", True)
    lora = add_lora(model, "lm", ["c_attn", "c_proj", "c_fc"], r=4, alpha=8, dropout=0.0)
    lora.train()
    for name, param in lora.named_parameters():  # B starts at zero, which would leave A without gradients
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    config, rows = model.config, ids.numel()
    base = model.transformer.h[0].attn.c_attn.base_layer
    assert type(base) is modeling.GPT2ScratchLinear

    def loss_and_grads():
        lora.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks
        loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}

    loss, grads = loss_and_grads()
    c = config.n_embd
    base_shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)] * config.n_layer
    expected = [call for i, o in base_shapes for call in ((rows, o), (rows, i))]  # forward, grad x
    expected.remove((rows, c))  # the first block's q/k/v: its input (frozen embeddings, LayerNorm) needs none
    expected += [(rows, config.vocab_size), (rows, c)]  # the frozen head: forward and grad x
    assert sorted(call[:2] for call in onednn_calls) == sorted(expected)
    assert any("lora_A" in name for name in grads) and all(g.abs().sum() > 0 for g in grads.values())
    monkeypatch.setattr(modeling, "ONEDNN_LINEAR", False)
    onednn_calls.clear()
    ref_loss, ref_grads = loss_and_grads()
    assert onednn_calls == []
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


# --------------------------------------------------------------------------- oneDNN from eight rows


def _wide_projections(config) -> set[int]:
    return {3 * config.n_embd, 4 * config.n_embd, config.vocab_size}  # q/k/v, MLP in, the head


def test_onednn_is_used_only_where_the_op_exists_and_works(monkeypatch):
    """The oneDNN op is private to torch: a build without oneDNN, or an op that fails or answers wrong,
    leaves the MKL paths."""
    product = modeling.onednn_linear

    def failing(*args):
        raise RuntimeError("mkldnn::_linear_pointwise: schema changed")

    monkeypatch.setattr(modeling, "onednn_linear", failing)
    assert modeling._onednn_linear_works() is False
    monkeypatch.setattr(modeling, "onednn_linear", lambda *args: product(*args) + 1)
    assert modeling._onednn_linear_works() is False
    monkeypatch.setattr(modeling, "onednn_linear", product)
    assert modeling._onednn_linear_works() is torch.backends.mkldnn.is_available()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert modeling._onednn_linear_works() is False


@needs_onednn
@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_linear_equals_the_linear_and_is_row_major(swapped, bias):
    """Both orientations give F.linear's values as a contiguous (rows, out) tensor, with or without a bias
    (the swapped product is a transposed view until the bias is added or it is copied)."""
    x, weight = torch.randn(8, 48), torch.randn(144, 48)
    b = torch.randn(144) if bias else None
    y = modeling.onednn_linear(x, weight, b, swapped=swapped)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, weight, b), atol=1e-5, rtol=1e-5)
    assert y.shape == (8, 144) and y.is_contiguous()


@needs_onednn
@pytest.mark.parametrize("every_product", [False, True], ids=["wide-unswapped", "every-unswapped"])
def test_onednn_projects_without_grad_and_matches(
    model, ids, onednn_calls, linear_calls, restore_threads, monkeypatch, every_product
):
    """No-grad forwards on row-major weights: over ONEDNN_MIN_ROWS to ONEDNN_SWAPPED_MAX_ROWS rows every
    projection goes through oneDNN with the roles swapped, q/k/v and the MLP input from 2 rows; over more rows
    the wide ones (q/k/v, MLP input, head) through oneDNN as they are and the narrow ones (attention and MLP
    output) through MKL, or through oneDNN too with ``ONEDNN_EVERY_PRODUCT``, which also takes every weight but
    the head as it is from 2 rows (q/k/v and the MLP input then unswapped at 2-7 rows) and the head from 6; one
    row not at all. Logits and batch-8 tokens equal the MKL
    paths'; column-major wide weights (one-row decoding) keep the MKL paths."""
    monkeypatch.setattr(modeling, "ONEDNN_EVERY_PRODUCT", every_product)
    modeling.set_weight_layout(model, column_major=False)
    model.column_major_decoding = False
    torch.set_num_threads(1)
    c, vocab = model.config.n_embd, model.config.vocab_size
    every, wide = {3 * c, c, 4 * c, vocab}, _wide_projections(model.config)
    high, few_rows = modeling.ONEDNN_SWAPPED_MAX_ROWS, modeling.ONEDNN_MIN_ROWS - 1
    batch = torch.randint(0, 50257, (8, 5), generator=torch.Generator().manual_seed(5))
    longer = torch.randint(0, 50257, (1, high + 1), generator=torch.Generator().manual_seed(6))

    def run(inputs):
        onednn_calls.clear()
        linear_calls.clear()
        with torch.no_grad():
            logits = model(inputs).logits
            tokens = model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=4, do_sample=False
            )
        return logits, tokens

    # (out, swapped) over 2-7 rows: with every product, all but the head as they are; else q/k/v, MLP in swapped
    if every_product:
        two = {(out, False) for out in every - {vocab}}
    else:
        two = {(out, True) for out in wide - {vocab}}
    logits, _ = run(ids[:, :-1])  # 22 rows
    assert set(onednn_calls) >= {(ids[:, :-1].numel(), out, True) for out in every}
    assert {call[1:] for call in onednn_calls if call[0] == 2} == two
    assert {out for rows, out in linear_calls} == {c} - {out for out, _ in two}, "narrow ones on MKL"
    few_logits, _ = run(ids[:1, :few_rows])
    head_few = {(vocab, False)} if every_product else set()
    assert {call[1:] for call in onednn_calls} == two | head_few
    assert {call[0] for call in onednn_calls} == {few_rows}
    onednn_calls.clear()
    with torch.no_grad():
        model(ids[:1, : modeling.EVERY_HEAD_MIN_ROWS - 1])
    assert (vocab, False) not in {call[1:] for call in onednn_calls}, "the head under 6 rows: MKL"
    longer_logits, _ = run(longer)
    unswapped = every if every_product else wide
    assert {call for call in onednn_calls if call[0] == high + 1} == {
        (high + 1, out, False) for out in unswapped
    }
    assert {out for rows, out in linear_calls if rows == high + 1} == ({c} - unswapped), "narrow ones: MKL"
    batch_logits, tokens = run(batch)
    assert {(8, out, True) for out in every} <= set(onednn_calls), "batch-8 decode steps"
    with torch.no_grad():
        onednn_calls.clear()
        model(ids[:1, :1])
        assert onednn_calls == [], "one row"
        monkeypatch.setattr(modeling, "ONEDNN_LINEAR", False)
        few = ids[:1, :few_rows]
        for inputs, fast in (
            (ids[:, :-1], logits),
            (few, few_logits),
            (longer, longer_logits),
            (batch, batch_logits),
        ):
            torch.testing.assert_close(fast, model(inputs).logits, atol=1e-5, rtol=0)
        ref_tokens = model.generate(
            batch, attention_mask=torch.ones_like(batch), max_new_tokens=4, do_sample=False
        )
    assert torch.equal(tokens, ref_tokens)
    assert onednn_calls == []
    monkeypatch.setattr(modeling, "ONEDNN_LINEAR", True)
    modeling.set_weight_layout(model, column_major=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :-1]).logits, logits, atol=1e-5, rtol=0)
    assert not {out for rows, out, swapped in onednn_calls} & wide, "column-major wide weights: MKL"


@needs_onednn
@pytest.mark.parametrize("every", [False, True], ids=["head", "every-product"])
def test_onednn_trains_with_the_linears_loss_and_gradients(model, ids, onednn_calls, monkeypatch, every):
    """With autograd the LM head goes through oneDNN (``OneDNNLinear``), its backward products through MKL;
    with ``ONEDNN_EVERY_PRODUCT`` every projection does, forward and both backward products. Loss and every
    gradient (the tied embedding's included) equal the Linear's. Autocast, and fewer than ONEDNN_MIN_ROWS
    rows, keep the Linear."""
    monkeypatch.setattr(modeling, "ONEDNN_EVERY_PRODUCT", every)
    model.train()
    config = model.config
    c, rows = config.n_embd, ids.numel()

    def loss_and_grads(inputs):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks
        loss = model(inputs, labels=inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads(ids)
    if every:  # forward (rows, out); backward grad W: (rows, in), gradᵀ x: (out, in)
        shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)] * config.n_layer + [(c, config.vocab_size)]
        expected = [call for i, o in shapes for call in ((rows, o), (rows, i), (o, i))]
        assert sorted(call[:2] for call in onednn_calls) == sorted(expected)
    else:
        assert onednn_calls == [(rows, config.vocab_size, False)]
    logits = model(ids).logits
    assert type(logits.grad_fn.next_functions[0][0]).__name__ == "OneDNNLinearBackward"
    onednn_calls.clear()
    loss_and_grads(ids[:1, : modeling.ONEDNN_MIN_ROWS - 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(ids).logits.dtype == torch.bfloat16
    assert onednn_calls == []
    monkeypatch.setattr(modeling, "ONEDNN_LINEAR", False)
    ref_loss, ref_grads = loss_and_grads(ids)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


@needs_onednn
@pytest.mark.parametrize("every", [False, True], ids=["mkl-backward", "onednn-backward"])
def test_onednn_linear_function_gives_the_linears_gradients(monkeypatch, every):
    """``OneDNNLinear``: output and the gradients of x, W and b equal ``F.linear``'s, only those asked for
    are computed (a frozen weight gets none), and a second derivative (a gradient penalty) is F.linear's."""
    monkeypatch.setattr(modeling, "ONEDNN_EVERY_PRODUCT", every)
    gen = torch.Generator().manual_seed(3)
    x, weight, bias = (torch.randn(*shape, generator=gen) for shape in ((12, 20), (36, 20), (36,)))
    upstream = torch.randn(12, 36, generator=gen)

    def grads(fn, *inputs):
        inputs = [t.clone().requires_grad_(need) for t, need in inputs]
        y = fn(*inputs)
        y.backward(upstream)
        return y.detach(), [t.grad for t in inputs]

    for weight_needs in (True, False):
        inputs = ((x, True), (weight, weight_needs), (bias, True))
        y, got = grads(modeling.OneDNNLinear.apply, *inputs)
        ref_y, expected = grads(torch.nn.functional.linear, *inputs)
        torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-5)
        for g, e in zip(got, expected, strict=True):
            assert (g is None) == (e is None)
            if g is not None:
                torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    second = []  # a gradient penalty: d/dW of |d(y . upstream)/dx|^2, for each implementation
    for fn in (modeling.OneDNNLinear.apply, torch.nn.functional.linear):
        xg, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        (gx,) = torch.autograd.grad((fn(xg, w, None) * upstream).sum(), xg, create_graph=True)
        gx.pow(2).sum().backward()
        second.append(w.grad)
    torch.testing.assert_close(second[0], second[1], atol=1e-4, rtol=1e-5)


@needs_onednn
def test_torch_func_transforms_keep_the_linear(model, ids, onednn_calls):
    """Under ``torch.func`` (per-sample gradients and the like) every projection is the Linear: the
    autograd Function and the oneDNN op have no functorch rules. Same gradients as autograd's."""
    from torch.func import functional_call, grad

    params = {name: p.detach() for name, p in model.named_parameters()}
    grads = grad(lambda p: functional_call(model, p, (ids,), {"labels": ids}).loss)(params)
    assert onednn_calls == []
    reference = torch.autograd.grad(model(ids, labels=ids).loss, list(model.parameters()))
    assert (ids.numel(), model.config.vocab_size, False) in onednn_calls, "plain autograd: the head on oneDNN"
    for (name, _), expected in zip(model.named_parameters(), reference, strict=True):
        torch.testing.assert_close(grads[name], expected, atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------ column-major weights for decoding
needs_column_major = pytest.mark.skipif(
    not modeling.COLUMN_MAJOR_DECODING, reason="row-major throughout without MKL or FBGEMM"
)


def _resident_kb_of(path: Path) -> int | None:
    """Resident kB of ``path``'s mappings in this process (None: not mapped), from /proc/self/smaps."""
    total, inside = None, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.endswith(":"):  # a mapping's header line
            inside = line.endswith(str(path))
            total = (total or 0) if inside else total
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@needs_column_major
@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads the process's mappings from /proc")
def test_column_major_copy_lets_the_checkpoint_file_go(model, ids, tmp_path):
    """``from_pretrained`` leaves the weights in the memory-mapped checkpoint. The first one-row generate
    copies the linear weights column-major and the other tensors (biases, LayerNorms, positions) into memory
    of their own, so no tensor holds the file and its pages leave the process (they would stay resident,
    a second copy of the weights, while one tensor pointed into it). Values and parameter objects stay; a
    second call copies nothing."""
    import gc

    model.save_pretrained(tmp_path)
    checkpoint = tmp_path / "model.safetensors"
    loaded = GPT2ScratchForCausalLM.from_pretrained(tmp_path).eval()
    loaded.generation_config.pad_token_id = model.config.eos_token_id
    assert _resident_kb_of(checkpoint) is not None, "from_pretrained maps the file (else nothing to test)"
    params = dict(loaded.named_parameters())
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in params.items()}
    row = ids[:1]
    tokens = loaded.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=3, do_sample=False)
    gc.collect()
    assert not _resident_kb_of(checkpoint), "no page of the checkpoint left in the process"
    after = {name: p.data_ptr() for name, p in loaded.named_parameters()}
    assert all(after[name] != ptr for name, (ptr, _) in before.items()), "every tensor in its own memory"
    assert dict(loaded.named_parameters()) == params
    for name, (_, value) in before.items():
        assert torch.equal(params[name], value), name
    again = loaded.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=3, do_sample=False)
    assert torch.equal(again, tokens)
    assert {name: p.data_ptr() for name, p in loaded.named_parameters()} == after, "nothing copied again"


@needs_column_major
def test_one_row_generate_holds_weights_column_major_and_train_restores_them(model, ids):
    """eval() alone keeps row-major; a one-row generate() in eval mode stores the linear layers' weights
    (with FBGEMM's embedding bags all of them, else q/k/v, MLP-input and the tied head/embedding) column-major,
    in the same parameter objects with the same values, the others as they were, and decodes the row-major
    model's tokens; several rows per step (a batch, beams, several returned sequences) and train() restore
    row-major."""
    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    linear = {n for n, p in params.items() if p.dim() == 2 and "wpe" not in n}
    wide = {n for n in linear if params[n].shape[0] > params[n].shape[1]}
    assert {
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_fc.weight",
    } <= wide
    assert {"transformer.h.0.attn.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"} <= linear - wide
    held = linear if modeling.BAG_PRODUCTS else wide
    assert all(p.is_contiguous() for p in params.values()), "eval() alone changes nothing"
    row = ids[:1]

    def greedy(prompt, **kwargs) -> torch.Tensor:
        mask = torch.ones_like(prompt)
        return model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, **kwargs)

    def row_major() -> bool:
        return all(p.is_contiguous() for p in params.values())

    model.column_major_decoding = False  # the switch a user has
    row_major_tokens = greedy(row)
    assert row_major()
    with torch.no_grad():
        row_major_logits = model(row).logits
    del model.column_major_decoding  # the default: on with MKL
    assert torch.equal(greedy(row), row_major_tokens)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(column_major(params[n]) for n in held)
    assert all(params[n].is_contiguous() for n in params if n not in held)
    with torch.no_grad():
        torch.testing.assert_close(model(row).logits, row_major_logits, atol=1e-5, rtol=0)
    for several_rows in (
        {"prompt": ids},
        {"prompt": row, "num_beams": 2},
        {"prompt": row, "num_beams": 2, "num_return_sequences": 2},
    ):
        greedy(**several_rows)
        assert row_major(), several_rows
        greedy(row)
        assert column_major(model.lm_head.weight)
    model.train()
    assert dict(model.named_parameters()) == params, "the same parameter objects"
    assert row_major()
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    model.generate(row, max_new_tokens=1)
    assert row_major(), "generate in training mode keeps row-major"


@needs_column_major
def test_only_cpu_fp32_weights_owning_their_storage_change_layout(tiny_config):
    """bf16 weights, and a weight that is a view into a larger buffer (as FSDP's flat parameters are),
    stay row-major; train() restores a column-major weight whatever its dtype."""
    torch.manual_seed(0)
    model = GPT2ScratchForCausalLM(tiny_config)
    c_fc = model.transformer.h[0].mlp.c_fc
    flat = torch.zeros(c_fc.weight.numel() + 7)
    flat[: c_fc.weight.numel()] = c_fc.weight.detach().reshape(-1)
    c_fc.weight.data = flat[: c_fc.weight.numel()].view(c_fc.weight.shape)
    modeling.set_weight_layout(model, column_major=True)
    assert c_fc.weight.is_contiguous() and c_fc.weight.data_ptr() == flat.data_ptr()
    assert column_major(model.transformer.h[1].mlp.c_fc.weight)
    half = GPT2ScratchForCausalLM(tiny_config).to(torch.bfloat16)
    modeling.set_weight_layout(half, column_major=True)
    assert all(p.is_contiguous() for p in half.parameters())
    model.to(torch.bfloat16)  # column-major on CPU, then cast (or moved): the layout goes along
    assert column_major(model.lm_head.weight) and model.lm_head.weight.dtype == torch.bfloat16
    model.train()
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.skipif(not modeling.BAG_PRODUCTS, reason="embedding-bag products need FBGEMM (x86 builds)")
def test_one_row_decoding_runs_every_product_as_an_embedding_bag(model, ids, restore_threads, bag_calls):
    """A one-row generate() runs each decode step's products (q/k/v, attention output, MLP in and out, the
    head) as embedding bags, one bag per thread, and the prompt's forward those of its kept last position
    (the last block's attention output and MLP, the head); same tokens as the row-major model without
    them, at 1 and 2 threads."""
    row = ids[:1]
    model.column_major_decoding = False
    torch.set_num_threads(1)
    expected = model.generate(row, max_new_tokens=5, do_sample=False)
    assert bag_calls == [], "row-major weights: no bags"
    del model.column_major_decoding
    c, vocab = model.config.n_embd, model.config.vocab_size
    shapes = {(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c), (c, vocab)}
    for threads in (1, 2):
        bag_calls.clear()
        two_threads() if threads == 2 else torch.set_num_threads(1)
        assert torch.equal(model.generate(row, max_new_tokens=5, do_sample=False), expected), threads
        steps = 4  # the first new token comes from the prompt's forward
        assert len(bag_calls) == 4 + steps * (4 * model.config.n_layer + 1)
        assert {weight for _, weight, _ in bag_calls} == shapes
        assert all(x == weight[:1] and t == threads for x, weight, t in bag_calls)


@pytest.mark.skipif(not modeling.BAG_PRODUCTS, reason="embedding-bag products need FBGEMM (x86 builds)")
def test_lora_one_row_decoding_runs_the_base_products_as_embedding_bags(
    model, ids, restore_threads, bag_calls
):
    """A PEFT LoRA model's one-row generate() runs its base layers (and the head) as embedding bags, the
    adapters as PEFT computes them; same tokens as the merged model decoding with row-major weights."""
    from gpt2scratch.training.lora import add_lora

    row = ids[:1]
    base_tokens = model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=5, do_sample=False)
    lora = add_lora(model, "lm", ["c_attn", "c_proj", "c_fc"], r=4, alpha=8, dropout=0.0).eval()
    for name, param in lora.named_parameters():
        if "lora_B" in name:  # nonzero adapters
            torch.nn.init.normal_(param, std=0.5)
    two_threads()
    bag_calls.clear()
    tokens = lora.generate(
        input_ids=row, attention_mask=torch.ones_like(row), max_new_tokens=5, do_sample=False
    )
    steps = 4  # the first new token comes from the prompt's forward
    assert len(bag_calls) == 4 + steps * (4 * model.config.n_layer + 1)
    assert column_major(model.transformer.h[0].mlp.c_fc.base_layer.weight)
    with torch.no_grad():
        merged = lora.merge_and_unload()
    modeling.set_weight_layout(merged, column_major=False)
    merged.column_major_decoding = False
    bag_calls.clear()
    expected = merged.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=5, do_sample=False)
    assert bag_calls == []
    assert torch.equal(tokens, expected)
    assert not torch.equal(tokens, base_tokens), "the adapters change the tokens"


@needs_column_major
def test_state_dict_after_column_major_decoding_is_the_row_major_weights_and_saves(model, ids, tmp_path):
    """state_dict() after a one-row generate() hands out the weights themselves, row-major again (one storage
    for the tied head and embedding), so safetensors' save_file takes it, save_pretrained reloads the same
    values, and an in-place update through it (an EMA copy, timm's pattern) reaches the model."""
    from safetensors.torch import save_file

    model.generate(ids[:1], max_new_tokens=2, do_sample=False)
    assert column_major(model.lm_head.weight)
    state = model.state_dict()
    assert all(t.is_contiguous() for t in state.values())
    assert not column_major(model.lm_head.weight) and model.lm_head.weight.is_contiguous()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, tmp_path / "plain.safetensors")
    model.save_pretrained(tmp_path / "saved")
    reloaded = GPT2ScratchForCausalLM.from_pretrained(tmp_path / "saved")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    model.generate(ids[:1], max_new_tokens=2, do_sample=False)
    before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.mul_(0.5)
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, before * 0.5)


@needs_column_major
def test_training_in_eval_mode_between_generates_trains_as_row_major(model, ids):
    """A user training in eval mode with one-row generate() calls between the steps (sampling as it trains):
    a forward with autograd holds the weights row-major again, so torch's fused AdamW (which walks each
    parameter, gradient and state in memory order) takes the same steps as on a model that never
    generated."""
    import copy

    plain = copy.deepcopy(model)
    plain.column_major_decoding = False
    losses = {}
    for name, m in (("generating", model), ("plain", plain)):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True)
        losses[name] = []
        for rows in (1, 2, 1, 1):
            m.generate(ids[:rows], max_new_tokens=2, do_sample=False)
            assert column_major(m.lm_head.weight) == (m is model and rows == 1)
            loss = m(ids, labels=ids).loss
            assert all(p.is_contiguous() for p in m.parameters())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[name].append(loss.item())
    assert losses["generating"] == losses["plain"]


# --------------------------------------------------------------------------- positions to keep
def test_kept_positions_skip_the_last_blocks_mlp_and_keep_the_cache(model, ids):
    """``logits_to_keep`` reaches the last block: it runs its attention projection and MLP for the kept
    positions only (earlier blocks and every cache entry still see all positions); logits, cache and
    hidden states equal the full forward's."""
    rows = {}

    def record(layer):
        def hook(module, args, out):
            rows[layer] = args[0].shape[1]

        return hook

    for i, block in enumerate(model.transformer.h):
        block.mlp.c_fc.register_forward_hook(record(i))
    with torch.no_grad():
        full = model(ids, use_cache=True)
        rows_full, rows = dict(rows), {}
        kept = model(ids, use_cache=True, logits_to_keep=1)
    last = model.config.n_layer - 1
    assert rows_full[last] == ids.shape[1] and rows[last] == 1
    assert all(rows[i] == ids.shape[1] for i in range(last))
    torch.testing.assert_close(kept.logits, full.logits[:, -1:], atol=1e-5, rtol=0)
    for layer in range(model.config.n_layer):
        torch.testing.assert_close(kept.cache.layers[layer].keys, full.cache.layers[layer].keys)
        torch.testing.assert_close(kept.cache.layers[layer].values, full.cache.layers[layer].values)
    picked = torch.tensor([0, 5, 11])
    with torch.no_grad():
        indexed = model(ids, logits_to_keep=picked, output_hidden_states=True)
    torch.testing.assert_close(indexed.logits, full.logits[:, picked], atol=1e-5, rtol=0)
    assert indexed.hidden_states[-1].shape[1] == ids.shape[1], "hidden states keep every position"
    base = model.transformer(ids, positions_to_keep=2)
    assert base.last_hidden_state.shape[1] == 2


def test_classifier_keeps_each_rows_pooled_position_only(tiny_config):
    """The classifier hands each row's last real token to the base model as a (batch, 1) index: the last
    block's MLP runs on one position per row, with the logits (and gradients) of the full computation."""
    torch.manual_seed(0)
    model = GPT2ScratchForSequenceClassification(
        tiny_config.__class__(**{**tiny_config.to_dict(), "num_labels": 3})
    )
    ids = torch.randint(0, 50257, (3, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right-padded
    mask[1, :4] = 0  # left-padded
    rows = []
    model.transformer.h[-1].mlp.c_fc.register_forward_hook(lambda m, a, o: rows.append(tuple(a[0].shape[:2])))
    model.eval()
    kept = model(ids, attention_mask=mask).logits
    full = model(ids, attention_mask=mask, output_hidden_states=True).logits  # hidden states: no keeping
    assert rows == [(3, 1), (3, 9)]
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=0)
    labels = torch.tensor([0, 2, 1])
    grads = []
    for hidden in (False, True):
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels, output_hidden_states=hidden).loss.backward()
        grads.append(model.transformer.h[0].attn.c_attn.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
