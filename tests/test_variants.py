"""Architecture variants as config switches: rotary positions, grouped-query and sliding-window attention.

Each variant is checked against an independent reference (transformers' Llama rotary code, an MHA model with
the key/value heads repeated, a naive masked attention) and for cache / left-padding equality, alone and
combined, under eager and SDPA attention.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from conftest import run_cli, run_isolated
from transformers import DynamicCache
from transformers.masking_utils import create_sliding_window_causal_mask

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification
from gpt2scratch.io import save_model_folder
from gpt2scratch.modeling_gpt2scratch import GPT2ScratchAttention, apply_rotary, rotary_cos_sin

VOCAB = 97
VARIANTS = {
    "rotary": dict(position_embedding_type="rotary"),
    "rotary-partial": dict(position_embedding_type="rotary", rotary_pct=0.5),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "window": dict(sliding_window=5),
}
# Every variant alone, and every combination of the three switches.
COMBOS = {
    **VARIANTS,
    **{
        f"{p}+{k}+{w}": {**VARIANTS[p], **VARIANTS[k], **VARIANTS[w]}
        for p, k, w in itertools.product(["rotary", "rotary-partial"], ["gqa", "mqa"], ["window"])
    },
    "rotary+gqa": {**VARIANTS["rotary"], **VARIANTS["gqa"]},
    "gqa+window": {**VARIANTS["gqa"], **VARIANTS["window"]},
}


def make(impl: str = "sdpa", cls=GPT2ScratchForCausalLM, seed: int = 0, **fields):
    torch.manual_seed(seed)
    config = GPT2ScratchConfig.from_preset(
        "tiny", vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, num_labels=3, **fields
    )
    config._attn_implementation = impl
    return cls(config).eval()


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (3, 24))


# --- defaults ----------------------------------------------------------------------------------------


def test_defaults_are_gpt2():
    config = GPT2ScratchConfig()
    assert (config.position_embedding_type, config.n_kv_head, config.sliding_window) == ("learned", 12, None)
    assert config.num_key_value_heads == 12 and config.rotary_dim == 0
    model = make()
    c = model.config.n_embd
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * c, c)
    assert model.transformer.wpe.weight.shape == (model.config.n_positions, c)


@pytest.mark.parametrize(
    "fields, needle",
    [
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(n_kv_head=0), "n_kv_head"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(position_embedding_type="rotary", rotary_pct=0.1), "rotary_pct"),
        (dict(position_embedding_type="rotary", rotary_pct=1.5), "rotary_pct"),
        (dict(n_layer=0), "n_layer"),
        (dict(n_head="4"), "n_head"),
        (dict(attn_pdrop=1.5), "attn_pdrop"),
        (dict(resid_pdrop="0.1"), "resid_pdrop"),
    ],
)
def test_impossible_variants_are_refused(fields, needle):
    with pytest.raises(ValueError, match=needle):
        GPT2ScratchConfig.from_preset("tiny", **fields)


def test_generic_field_names_are_the_same_fields_checked_alike():
    """``hidden_size``, ``num_attention_heads``, ``num_hidden_layers`` … (transformers' generic names, which
    GPT2Config takes too) set GPT-2's fields before they are checked and derived: the key/value heads follow
    the heads, and a bad value is refused under the name given's field."""
    config = GPT2ScratchConfig(
        hidden_size=128, num_attention_heads=8, num_hidden_layers=2, max_position_embeddings=64
    )
    assert (config.n_embd, config.n_head, config.n_kv_head, config.n_layer, config.n_positions) == (
        128,
        8,
        8,
        2,
        64,
    )
    model = GPT2ScratchForCausalLM(config)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 128, 128)
    assert model(torch.tensor([[1, 2]])).logits.shape == (1, 2, config.vocab_size)
    with pytest.raises(ValueError, match=r"n_embd \(100\) must be divisible by n_head \(8\)"):
        GPT2ScratchConfig(n_embd=100, num_attention_heads=8)
    with pytest.raises(ValueError, match="not both"):
        GPT2ScratchConfig(n_head=4, num_attention_heads=8)


# --- grouped-query attention ------------------------------------------------------------------------


def _repeat_kv_heads(gqa: GPT2ScratchForCausalLM) -> dict:
    """The MHA state dict whose every query head sees a copy of its group's key/value head."""
    cfg = gqa.config
    hd, groups = cfg.n_embd // cfg.n_head, cfg.n_head // cfg.n_kv_head
    state = {}
    for name, t in gqa.state_dict().items():
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            q, k, v = t.split([cfg.n_embd, cfg.n_kv_head * hd, cfg.n_kv_head * hd])
            k, v = (
                x.unflatten(0, (cfg.n_kv_head, hd)).repeat_interleave(groups, 0).flatten(0, 1) for x in (k, v)
            )
            t = torch.cat([q, k, v])
        state[name] = t
    return state


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_equals_mha_with_repeated_kv_heads(impl, n_kv_head, tokens):
    gqa = make(impl, n_kv_head=n_kv_head)
    mha = make(impl, seed=5)
    mha.load_state_dict(_repeat_kv_heads(gqa))
    with torch.no_grad():
        got, want = gqa(tokens).logits, mha(tokens).logits
    if n_kv_head == gqa.config.n_head:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    kv = n_kv_head * gqa.config.n_embd // gqa.config.n_head
    assert gqa.transformer.h[0].attn.c_attn.weight.shape[0] == gqa.config.n_embd + 2 * kv


def test_kv_cache_shrinks_with_fewer_kv_heads():
    full, mqa = GPT2ScratchConfig(), GPT2ScratchConfig(n_kv_head=1)
    assert full.kv_cache_bytes_per_token == 2 * 12 * 768 * 4
    assert mqa.kv_cache_bytes_per_token * 12 == full.kv_cache_bytes_per_token
    model = make(n_kv_head=1)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    assert cache.layers[0].keys.shape == (1, 1, 6, 16)


# --- sliding window ---------------------------------------------------------------------------------


def naive_window_attention(attn: GPT2ScratchAttention, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """Attention written out position by position: query t sees keys max(0, t-window+1) … t."""
    B, T, C = x.shape
    hd, groups = attn.head_dim, attn.num_key_value_groups
    q, k, v = attn.c_attn(x).split([C, attn.kv_dim, attn.kv_dim], dim=-1)
    q, k, v = q.view(B, T, -1, hd), k.view(B, T, -1, hd), v.view(B, T, -1, hd)
    out = torch.zeros(B, T, attn.n_head, hd)
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        for h in range(attn.n_head):
            keys, values = k[:, lo : t + 1, h // groups], v[:, lo : t + 1, h // groups]
            weights = torch.softmax((keys @ q[:, t, h, :, None]).squeeze(-1) / hd**0.5, dim=-1)
            out[:, t, h] = (weights[..., None] * values).sum(1)
    return attn.c_proj(out.reshape(B, T, C))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("window", [1, 3, 7])
def test_sliding_window_masks_exactly_the_tokens_outside_it(impl, window):
    model = make(impl, sliding_window=window, n_kv_head=2)
    attn = model.transformer.h[0].attn
    torch.manual_seed(2)
    x = torch.randn(2, 12, model.config.n_embd)
    with torch.no_grad():
        built = create_sliding_window_causal_mask(model.config, x, None, None)
        got, _ = attn(x, built)
        want = naive_window_attention(attn, x, window)
        unwindowed = naive_window_attention(attn, x, None)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(got, unwindowed, atol=1e-3)  # the window did cut something


def test_window_at_least_the_sequence_equals_full_attention(tokens):
    full = make()
    for window in (tokens.shape[1], tokens.shape[1] + 10):
        windowed = make(sliding_window=window)
        windowed.load_state_dict(full.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(windowed(tokens).logits, full(tokens).logits, rtol=0, atol=1e-6)


def test_one_layer_window_sees_exactly_window_tokens_back():
    model = make(sliding_window=4, n_layer=1)
    x = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        base = model(x).logits[0, 10]
        for pos, changes in [(6, False), (7, True), (10, True)]:
            y = x.clone()
            y[0, pos] = (y[0, pos] + 1) % VOCAB
            moved = not torch.allclose(model(y).logits[0, 10], base, atol=1e-6)
            assert moved == changes, (
                f"token at {pos} {'should' if changes else 'should not'} reach position 10"
            )


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_sliding_window_cache_stays_bounded(impl):
    window = 6
    model = make(impl, sliding_window=window, position_embedding_type="rotary", n_kv_head=2)
    prompt = torch.randint(0, VOCAB, (2, 4))
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=3 * window, do_sample=False, return_dict_in_generate=True, pad_token_id=0
        )
        cached = [layer.keys.shape[-2] for layer in out.cache.layers]
        no_cache = model.generate(
            prompt, max_new_tokens=3 * window, do_sample=False, use_cache=False, pad_token_id=0
        )
    assert out.sequences.shape[1] == 4 + 3 * window
    assert len(cached) == model.config.n_layer and max(cached) <= window
    assert torch.equal(out.sequences, no_cache)


@pytest.mark.parametrize("name", ["rotary-partial+gqa+window", "mqa"])
def test_static_cache_generates_what_the_dynamic_cache_does(name):
    model = make(**COMBOS[name])
    prompt = torch.randint(1, VOCAB, (2, 5))
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(
            model.generate(prompt, cache_implementation="static", **kw), model.generate(prompt, **kw)
        )


# --- rotary -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotary_pct", [1.0, 0.25])
def test_rotary_matches_transformers_llama(rotary_pct):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = GPT2ScratchConfig(
        n_embd=256, n_head=4, position_embedding_type="rotary", rope_theta=500.0, rotary_pct=rotary_pct
    )
    dim = config.rotary_dim
    llama = LlamaRotaryEmbedding(
        LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, head_dim=dim, rope_theta=500.0)
    )
    torch.manual_seed(3)
    q, k = torch.randn(2, 4, 9, 64), torch.randn(2, 4, 9, 64)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [3, 9, 27, 81, 100, 200, 300, 400, 1000]])
    cos, sin = rotary_cos_sin(config, positions, torch.float32)
    ref_cos, ref_sin = llama(q, positions)
    want_q, want_k = apply_rotary_pos_emb(q[..., :dim], k[..., :dim], ref_cos, ref_sin)
    got_q, got_k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    torch.testing.assert_close(got_q[..., :dim], want_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_k[..., :dim], want_k, rtol=0, atol=1e-6)
    assert torch.equal(got_q[..., dim:], q[..., dim:])  # the unrotated part passes through


def test_rotary_scores_depend_only_on_relative_position():
    config = GPT2ScratchConfig(n_embd=64, n_head=2, position_embedding_type="rotary")
    torch.manual_seed(4)
    q, k = torch.randn(1, 2, 1, 32), torch.randn(1, 2, 1, 32)

    def score(m: int, n: int) -> torch.Tensor:
        cq, sq = rotary_cos_sin(config, torch.tensor([[m]]), torch.float32)
        ck, sk = rotary_cos_sin(config, torch.tensor([[n]]), torch.float32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum(-1)

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=0, atol=1e-4)
    torch.testing.assert_close(score(0, 0), (q * k).sum(-1), rtol=0, atol=1e-6)
    assert not torch.allclose(score(7, 3), score(7, 4), atol=1e-3)


def test_rotary_model_is_shift_invariant_and_has_no_wpe(tokens):
    model = make(position_embedding_type="rotary", sliding_window=None)
    assert model.transformer.wpe is None and "transformer.wpe.weight" not in model.state_dict()
    x = tokens[:, :10]
    with torch.no_grad():
        plain = model(x).logits
        shifted = model(x, position_ids=torch.arange(30, 40).expand(3, -1)).logits
        learned = make()(x).logits
        learned_shifted = make()(x, position_ids=torch.arange(30, 40).expand(3, -1)).logits
    torch.testing.assert_close(shifted, plain, rtol=0, atol=1e-4)
    assert not torch.allclose(learned, learned_shifted, atol=1e-3)


# --- every variant and combination: cache, padding, classifier ------------------------------------------


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(COMBOS))
def test_cache_and_left_padding_equal_the_plain_forward(name, impl, tokens):
    model = make(impl, **COMBOS[name])
    with torch.no_grad():
        full = model(tokens, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        steps = [model(tokens[:, :9], cache=cache).logits]
        steps += [model(tokens[:, t : t + 1], cache=cache).logits for t in range(9, tokens.shape[1])]
        alone = model(tokens[:1, 7:]).logits
        mask = torch.ones_like(tokens)
        mask[0, :7] = 0
        padded = model(tokens, attention_mask=mask).logits[:1, 7:]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["rotary+gqa", "rotary-partial+mqa+window"])
def test_left_padded_batch_generates_what_each_row_generates_alone(name):
    model = make(**COMBOS[name])
    torch.manual_seed(6)
    short, long = torch.randint(1, VOCAB, (1, 4)), torch.randint(1, VOCAB, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    mask = (torch.arange(9) >= torch.tensor([[5], [0]])).long()
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, **kw)
        assert torch.equal(together[0, 5:], model.generate(short, **kw)[0])
        assert torch.equal(together[1], model.generate(long, **kw)[0])


@pytest.mark.parametrize("name", ["rotary-partial+gqa+window", "mqa"])
def test_classifier_pools_the_same_token_whatever_the_padding(name, tokens):
    model = make(cls=GPT2ScratchForSequenceClassification, **COMBOS[name])
    mask = torch.ones_like(tokens)
    mask[1, :6] = 0
    with torch.no_grad():
        batch = model(tokens, attention_mask=mask).logits
        alone = model(tokens[1:2, 6:]).logits
    assert batch.shape == (3, 3)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-5)


def test_lora_trains_a_variant_model():
    from peft import LoraConfig, get_peft_model

    model = make(**COMBOS["rotary+gqa+window"]).train()
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn", "c_proj", "c_fc"]))
    x = torch.randint(0, VOCAB, (2, 16))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = peft(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft.eval()
    with torch.no_grad():
        want = peft(x).logits
        torch.testing.assert_close(peft.merge_and_unload()(x).logits, want, rtol=0, atol=1e-5)


# --- saved folders, the CLI --------------------------------------------------------------------------


def test_variant_folder_loads_with_remote_code_alone(tmp_path, vocab_dir, tokens):
    model = make(**COMBOS["rotary-partial+gqa+window"])
    out = save_model_folder(model, tmp_path / "variant", vocab_dir)
    with torch.no_grad():
        want = model(tokens).logits
    torch.save(tokens, tmp_path / "tokens.pt")
    torch.save(want, tmp_path / "want.pt")
    proc = run_isolated(
        f"""
import torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
c = m.config
assert (c.position_embedding_type, c.rotary_pct, c.n_kv_head, c.sliding_window) == ("rotary", 0.5, 2, 5), c
x = torch.load({str(tmp_path / "tokens.pt")!r})
with torch.no_grad():
    torch.testing.assert_close(m(x).logits, torch.load({str(tmp_path / "want.pt")!r}), rtol=0, atol=0)
print("same logits")
""",
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "same logits" in proc.stdout, proc.stderr[-2000:]


def test_init_sets_variant_fields(tmp_path, vocab_dir):
    out = tmp_path / "init"
    proc = run_cli(
        "init", "tiny", str(out), "--tokenizer-dir", str(vocab_dir),
        "--set", "position_embedding_type=rotary", "n_kv_head=2", "sliding_window=32", "rope_theta=5000",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["position_embedding_type"], config["n_kv_head"], config["sliding_window"]) == (
        "rotary",
        2,
        32,
    )
    assert config["rope_theta"] == 5000
    card = (out / "README.md").read_text()  # init writes a model card too
    assert (
        card.startswith("---\n") and "library_name: transformers" in card and "gpt2scratch init tiny" in card
    )
    bad = run_cli("init", "tiny", str(tmp_path / "bad"), "--set", "n_kv_head=3")
    assert bad.returncode == 2 and "n_kv_head" in bad.stderr and not (tmp_path / "bad").exists()


# --- scripts/finetune.py ------------------------------------------------------------------------------


@pytest.mark.xdist_group("finetune")
@pytest.mark.parametrize("task", ["lm", "classification"])
def test_finetune_trains_a_variant_and_saves_it(task, tmp_path, shared_data, vocab_dir):
    """scripts/finetune.py on a rotary + GQA + sliding-window model (made by `init --set`): the loss falls,
    and the saved model keeps the variant and reloads with the same validation figures."""
    from test_finetune import sms_subset, train, val_loss_fell

    init = run_cli(
        "init", "tiny", str(tmp_path / "init"), "--tokenizer-dir", str(vocab_dir), "--set",
        "position_embedding_type=rotary", "n_kv_head=2", "sliding_window=16", "rotary_pct=0.5",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    if task == "lm":
        data = tmp_path / "verdict.txt"
        data.write_text((shared_data / "corpora/the-verdict.txt").read_text(encoding="utf-8")[:6000])
    else:
        data = sms_subset(shared_data, tmp_path, 100)
    steps, lr = ("4", "1e-2") if task == "lm" else ("12", "2e-3")
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train(
            out, "--model", str(tmp_path / "init"), "--task", task, "--train-file", str(data),
            "--tokenizer-dir", str(vocab_dir), "--max-steps", steps, "--lr", lr, "--max-length", "48",
            "--eval-every", "4", "--eval-max-batches", "2", "--batch-size", "8", "--max-new-tokens", "4",
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    val_loss_fell(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["position_embedding_type"], config["n_kv_head"], config["sliding_window"]) == (
        "rotary",
        2,
        16,
    )
    assert "wpe.weight" not in " ".join(GPT2ScratchForCausalLM.from_pretrained(out).state_dict())
    assert math.isfinite(metrics["validation"]["loss"])
