"""The model against transformers' own GPT-2 on identical random weights, and against itself
(cache vs none, eager vs SDPA, padded batch vs rows alone), plus the input checks."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification, fast
from gpt2scratch.conversion.hf_gpt2 import config_from_hf, from_hf_model, state_dict_from_hf, state_dict_to_hf
from gpt2scratch.modeling_gpt2scratch import GPT2ScratchLinear, GrowingLayer

ODD = dict(n_embd=96, n_head=3, n_layer=5, n_positions=77, vocab_size=50257)
TOL = 1e-4


def make_pair(seed: int = 0, attn: str = "sdpa", **shape):
    """A random transformers GPT-2 and this package's model holding the same weights, in eval mode."""
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**shape, attn_implementation=attn)).eval()
    ours = from_hf_model(hf).eval()
    ours.config._attn_implementation = attn
    return hf, ours


@pytest.fixture(scope="module")
def odd_pair():
    return make_pair(**ODD)


def left_pad(rows: list[list[int]], pad: int = 50256):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_logits_match_transformers_full_124m_shape():
    hf, ours = make_pair(seed=1)
    x = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        delta = (hf(x).logits - ours(x).logits).abs().max().item()
    assert delta <= TOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_and_loss_match_transformers_odd_shape(attn):
    hf, ours = make_pair(seed=2, attn=attn, **ODD)
    x = torch.randint(0, 50257, (3, 77))  # the full context
    with torch.no_grad():
        a, b = hf(x, labels=x), ours(x, labels=x)
    assert (a.logits - b.logits).abs().max().item() <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


def test_loss_ignores_minus_100_like_transformers(odd_pair):
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (2, 20))
    labels = x.clone()
    labels[:, :7] = -100
    with torch.no_grad():
        assert torch.allclose(hf(x, labels=labels).loss, ours(x, labels=labels).loss, atol=1e-5)
    # and the loss is the shifted next-token cross-entropy
    with torch.no_grad():
        logits = ours(x).logits
    manual = torch.nn.functional.cross_entropy(logits[:, 6:-1].reshape(-1, 50257), x[:, 7:].reshape(-1))
    assert torch.allclose(ours(x, labels=labels).loss, manual, atol=1e-5)


def test_greedy_generation_identical_single(odd_pair):
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (1, 9))
    kw = dict(max_new_tokens=64, do_sample=False, pad_token_id=50256, attention_mask=torch.ones_like(x))
    assert torch.equal(hf.generate(x, **kw), ours.generate(x, **kw))


def test_greedy_generation_identical_left_padded_batch(odd_pair):
    hf, ours = odd_pair
    ids, mask = left_pad([[464, 3290, 318, 257], [40, 1101], [2, 3, 4, 5, 6, 7, 8]])
    ids = ids[:, -7:]
    kw = dict(max_new_tokens=64, do_sample=False, pad_token_id=50256, attention_mask=mask)
    a, b = hf.generate(ids, **kw), ours.generate(ids, **kw)
    assert torch.equal(a, b)
    # each row equals that row generated alone
    for row in range(ids.shape[0]):
        real = ids[row][mask[row].bool()].unsqueeze(0)
        alone = ours.generate(real, max_new_tokens=64, do_sample=False, pad_token_id=50256,
                              attention_mask=torch.ones_like(real))  # fmt: skip
        assert torch.equal(alone[0, real.shape[1] :], b[row, ids.shape[1] :])


def test_cache_matches_no_cache(odd_pair):
    _, ours = odd_pair
    x = torch.randint(0, 50257, (2, 30))
    with torch.no_grad():
        full = ours(x, use_cache=False).logits
        cache = DynamicCache(config=ours.config)
        first = ours(x[:, :20], cache=cache, use_cache=True)
        steps = [first.logits]
        for t in range(20, 30):
            steps.append(ours(x[:, t : t + 1], cache=first.cache, use_cache=True).logits)
    assert (torch.cat(steps, 1) - full).abs().max().item() <= TOL


def test_default_cache_appends_in_place_and_matches_dynamic_cache(odd_pair):
    """The cache a forward or ``generate`` makes has GrowingLayers: decode steps write into spare room
    (same storage from step to step) and give the logits and tokens of transformers' DynamicCache."""
    _, ours = odd_pair
    x = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = ours(x[:, :20], use_cache=True)
        cache = out.cache
        assert all(type(layer) is GrowingLayer for layer in cache.layers)
        plain = DynamicCache(config=ours.config)
        ref = ours(x[:, :20], cache=plain, use_cache=True)
        storage = cache.layers[0].keys.data_ptr()
        for t in range(20, 30):
            step = ours(x[:, t : t + 1], cache=cache, use_cache=True)
            ref = ours(x[:, t : t + 1], cache=plain, use_cache=True)
            torch.testing.assert_close(step.logits, ref.logits, atol=TOL, rtol=0)
        assert cache.layers[0].keys.data_ptr() == storage, "appended in place, not copied"
        assert cache.get_seq_length() == 30
        for ours_layer, ref_layer in zip(cache.layers, plain.layers, strict=True):
            torch.testing.assert_close(ours_layer.keys, ref_layer.keys, atol=0, rtol=0)
            torch.testing.assert_close(ours_layer.values, ref_layer.values, atol=0, rtol=0)
    prompt = x[:, :5]
    kw = dict(max_new_tokens=70, do_sample=False, pad_token_id=50256, attention_mask=torch.ones_like(prompt))
    user_cache = DynamicCache(config=ours.config)  # left as the user made it
    assert torch.equal(ours.generate(prompt, **kw), ours.generate(prompt, cache=user_cache, **kw))
    assert all(type(layer) is DynamicLayer for layer in user_cache.layers)


def test_cache_filled_under_inference_mode_continues_outside_it(odd_pair):
    """A cache filled under ``torch.inference_mode()`` goes on under ``no_grad`` and in ``generate``, as
    transformers' DynamicCache does (its buffers are copied out once; inference tensors are read-only there)."""
    _, ours = odd_pair
    x = torch.randint(0, 50257, (1, 9))
    with torch.no_grad():
        full = ours(x).logits[:, -1]
    with torch.inference_mode():
        cache = ours(x[:, :-1], use_cache=True).cache
    with torch.no_grad():
        step = ours(x[:, -1:], cache=cache).logits[:, -1]
    assert (step - full).abs().max().item() <= TOL
    assert not cache.layers[0].keys.is_inference()
    with torch.inference_mode():
        cache = ours(x[:, :-1], use_cache=True).cache
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=50256)
    assert torch.equal(ours.generate(x, cache=cache, **kw), ours.generate(x, **kw))


def test_growing_cache_after_crop_reorder_and_with_autograd(odd_pair):
    """Crop keeps writing into the buffer (over the cropped positions); a reorder (beam search) copies into a
    new buffer; with autograd the layer concatenates like DynamicLayer. Each agrees with DynamicCache."""
    _, ours = odd_pair
    x = torch.randint(0, 50257, (3, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        grow = ours(x[:, :8], use_cache=True).cache
        plain = DynamicCache(config=ours.config)
        ours(x[:, :8], cache=plain, use_cache=True)
        for cache in (grow, plain):
            cache.crop(-2)
            cache.reorder_cache(torch.tensor([2, 0, 1]))
        for cache in (grow, plain):
            ours(x[[2, 0, 1], 6:9], cache=cache, use_cache=True)
            cache.crop(-2)
            logits = ours(x[[2, 0, 1], 7:10], cache=cache, use_cache=True).logits
        torch.testing.assert_close(logits, ours(x[[2, 0, 1], :10]).logits[:, 7:], atol=TOL, rtol=0)
        for g, p in zip(grow.layers, plain.layers, strict=True):
            torch.testing.assert_close(g.keys, p.keys, atol=0, rtol=0)
    with_grad = ours(x, use_cache=True).cache.layers[0]
    assert with_grad.keys.requires_grad and not hasattr(with_grad, "_buffers")


def test_beam_search_matches_transformers(odd_pair):
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(7))
    kw = dict(
        max_new_tokens=20, num_beams=3, do_sample=False, pad_token_id=50256, attention_mask=torch.ones_like(x)
    )
    assert torch.equal(hf.generate(x, **kw), ours.generate(x, **kw))


def test_static_cache_generation_matches_dynamic(odd_pair):
    _, ours = odd_pair
    x = torch.randint(0, 50257, (2, 6))
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=50256, attention_mask=torch.ones_like(x))
    assert torch.equal(ours.generate(x, **kw), ours.generate(x, cache_implementation="static", **kw))


def test_eager_matches_sdpa(odd_pair):
    _, ours = odd_pair
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    with torch.no_grad():
        ours.config._attn_implementation = "eager"
        eager = ours(ids, attention_mask=mask).logits
        ours.config._attn_implementation = "sdpa"
        sdpa = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (eager[real] - sdpa[real]).abs().max().item() <= TOL


@pytest.mark.parametrize("explicit_positions", [False, True])
def test_left_padded_batch_equals_rows_alone(odd_pair, explicit_positions):
    _, ours = odd_pair
    rows = [[464, 3290, 318, 257, 1332], [40, 1101], [50256, 50256, 11, 12]]  # a row with 50256 inside
    ids, mask = left_pad(rows)
    kw = {}
    if explicit_positions:
        kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = ours(ids, attention_mask=mask, **kw).logits
        for i, row in enumerate(rows):
            alone = ours(torch.tensor([row])).logits[0]
            assert (batched[i, -len(row) :] - alone).abs().max().item() <= TOL


def test_right_padded_batch_equals_rows_alone(odd_pair):
    _, ours = odd_pair
    rows = [[464, 3290, 318, 257, 1332], [40, 1101]]
    ids = torch.tensor([rows[0], rows[1] + [50256] * 3])
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
    with torch.no_grad():
        batched = ours(ids, attention_mask=mask).logits
        alone = ours(torch.tensor([rows[1]])).logits[0]
    assert (batched[1, :2] - alone).abs().max().item() <= TOL


def test_inputs_embeds_hidden_states_attentions(odd_pair):
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (2, 11))
    with torch.no_grad():
        by_ids = ours(x).logits
        by_embeds = ours(inputs_embeds=ours.transformer.wte(x)).logits
        out = ours(x, output_hidden_states=True, output_attentions=True)
    assert torch.allclose(by_ids, by_embeds, atol=1e-6)
    assert len(out.hidden_states) == ours.config.n_layer + 1
    assert len(out.attentions) == ours.config.n_layer
    assert out.attentions[0].shape == (2, 3, 11, 11)
    # attention weights are causal and sum to one
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(2, 3, 11), atol=1e-5)
    assert out.attentions[0][0, 0].triu(1).abs().max() == 0


def test_token_type_ids_match_transformers(odd_pair):
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (2, 9))
    types = torch.tensor([[0] * 4 + [1] * 5, [2] * 9])
    with torch.no_grad():
        a, b = hf(x, token_type_ids=types).logits, ours(x, token_type_ids=types).logits
        plain = ours(x).logits
    assert (a - b).abs().max().item() <= TOL
    assert (b - plain).abs().max().item() > 1e-2  # the types took effect
    prompt, prompt_types = x[:1, :5], types[:1, :5]
    kwargs = dict(token_type_ids=prompt_types, max_new_tokens=6, do_sample=False, pad_token_id=50256)
    assert torch.equal(hf.generate(prompt, **kwargs), ours.generate(prompt, **kwargs))


@pytest.mark.parametrize(
    "types, message",
    [(torch.zeros(2, 8, dtype=torch.long), "shape"), (torch.full((2, 9), 50257), r"\[0, 50257\)")],
)
def test_bad_token_type_ids_are_a_clear_error(odd_pair, types, message):
    with pytest.raises(ValueError, match=message):
        odd_pair[1](torch.randint(0, 50257, (2, 9)), token_type_ids=types)


def test_logits_to_keep(odd_pair):
    _, ours = odd_pair
    x = torch.randint(0, 50257, (2, 11))
    with torch.no_grad():
        full = ours(x).logits
        last = ours(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, 50257) and torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_training_with_dropout_matches_transformers_step_for_step(attn):
    """Dropout on (GPT-2's 0.1 in all three places): from the same seed both models draw the same masks, so
    the first step's gradients and every AdamW step's loss equal transformers'."""
    hf, ours = make_pair(seed=3, attn=attn, **ODD)
    assert ours.config.attn_pdrop == ours.config.resid_pdrop == ours.config.embd_pdrop == 0.1
    x = torch.randint(0, 50257, (2, 32))

    def train(model, seed: int, steps: int = 3) -> tuple[list[float], dict]:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(seed)
        losses, first_grads = [], None
        for _ in range(steps):
            loss = model(x, labels=x).loss
            loss.backward()
            if first_grads is None:
                first_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses, first_grads

    (theirs, hf_grads), (mine, grads) = train(hf, seed=4), train(ours, seed=4)
    assert mine == pytest.approx(theirs, abs=1e-5)
    grads = state_dict_to_hf(grads)
    assert hf_grads.keys() <= grads.keys()
    for name, grad in hf_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    fresh = make_pair(seed=3, attn=attn, **ODD)[1]
    assert abs(train(fresh, seed=5, steps=1)[0][0] - theirs[0]) > 1e-3, "other masks, another loss"


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset(
        "tiny", vocab_size=300, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    model = GPT2ScratchForCausalLM(config).train()
    x = torch.randint(0, 300, (2, 16))
    model(x, labels=x).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(x, labels=x).loss.backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_peft_wraps_the_model_without_a_deprecation_warning(tiny_config):
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap; ours answers it quietly."""
    import warnings

    from peft import LoraConfig, get_peft_model

    model = GPT2ScratchForCausalLM(tiny_config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert not model.is_gradient_checkpointing
        model.activation_checkpointing_enable()
        assert model.is_gradient_checkpointing
        get_peft_model(model, LoraConfig(target_modules=["c_attn"], r=2))


def test_past_key_values_is_taken_as_the_cache_like_transformers(odd_pair):
    """The cache's pre-5.x name (still passed by callers such as PEFT) works as transformers' GPT-2 takes it."""
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (2, 9))
    with torch.no_grad(), pytest.warns(FutureWarning, match="past_key_values"):
        full = ours(x).logits[:, -1]
        step = ours(x[:, -1:], past_key_values=ours(x[:, :-1], use_cache=True).cache).logits[:, -1]
        expected = hf(x[:, -1:], past_key_values=hf(x[:, :-1], use_cache=True).cache).logits[:, -1]
    assert (step - full).abs().max().item() <= TOL
    assert (step - expected).abs().max().item() <= TOL


def test_a_given_cache_is_used_with_use_cache_false_like_transformers(odd_pair):
    """A cache passed in explicitly is read and filled even with ``use_cache=False`` (a fine-tuning recipe
    leaves ``config.use_cache`` so; continuous batching passes both), and not returned, as transformers does."""
    hf, ours = odd_pair
    x = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        full = ours(x).logits[:, -1]
        for model in (hf, ours):
            cache = DynamicCache(config=model.config)
            assert model(x[:, :-1], cache=cache, use_cache=False).cache is None
            assert cache.get_seq_length() == 7
            step = model(x[:, -1:], cache=cache, use_cache=False).logits[:, -1]
            assert (step - full).abs().max().item() <= TOL


def test_peft_prefix_tuning_matches_transformers(odd_pair):
    """PEFT's prefix tuning hands its virtual tokens' keys and values over as ``past_key_values``: the same
    logits and loss as on transformers' GPT-2, and the prefix gets gradients."""
    import warnings

    from peft import PrefixTuningConfig, get_peft_model

    x = torch.randint(0, 50257, (2, 7))
    results = []
    for model in make_pair(seed=6, **ODD):
        torch.manual_seed(7)
        prefixed = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = prefixed(input_ids=x, labels=x)
        out.loss.backward()
        results.append(
            (out.logits.detach(), out.loss.item(), prefixed.prompt_encoder.default.embedding.weight.grad)
        )
    (hf_logits, hf_loss, hf_grad), (logits, loss, grad) = results
    with torch.no_grad():
        assert (logits - model(x).logits).abs().max().item() > 1e-2  # the prefix changes them
    assert (logits - hf_logits).abs().max().item() <= TOL
    assert abs(loss - hf_loss) <= 1e-5
    assert grad is not None and torch.allclose(grad, hf_grad, atol=1e-6)


def test_weights_tied_and_initialised_like_gpt2():
    torch.manual_seed(0)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=1000, n_layer=8))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    block = model.transformer.h[0]
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.c_proj.weight.std().item() - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)
    assert block.attn.c_attn.bias.abs().max() == 0 and torch.all(block.ln_1.weight == 1)


def test_vocab_padding_gives_identical_outputs():
    torch.manual_seed(0)
    base = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=1000)).eval()
    padded = GPT2ScratchForCausalLM(
        GPT2ScratchConfig.from_preset("tiny", vocab_size=1000, pad_vocab_size_multiple=64)
    )
    assert padded.transformer.wte.weight.shape[0] == 1024
    state = base.state_dict()
    for key in ("transformer.wte.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], torch.zeros(24, state[key].shape[1])])
    padded.load_state_dict(state)
    x = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        assert torch.equal(base(x, labels=x).logits, padded.eval()(x, labels=x).logits)


SMALL_HF = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=32)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded-like-converted-nanogpt"])
@pytest.mark.parametrize("tokens", [1010, 990])
def test_resize_token_embeddings_like_transformers_and_reloads(tmp_path, padded, tokens):
    """Adding (or removing) tokens gives transformers' GPT-2's new rows and logits for the same seed, also on a
    vocabulary padded to 64 rows (as every converted nanoGPT checkpoint is): the rows stay padded, zero, and
    ``vocab_size`` counts real tokens, and the saved folder loads back with the same logits."""
    hf, ours = make_pair(seed=4, **SMALL_HF)
    if padded:
        fast.pad_vocab(ours, 64)
        with torch.no_grad():  # nanoGPT's padding rows were trained: not zero
            ours.transformer.wte.weight[1000:] = 1.0
    for model in (hf, ours):
        torch.manual_seed(5)
        model.resize_token_embeddings(tokens)
    assert ours.config.vocab_size == tokens
    rows = ours.transformer.wte.weight.shape[0]
    assert rows == (1024 if padded else tokens)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert not ours.transformer.wte.weight[tokens:].any()
    x = torch.tensor([[tokens - 1, 5, 6, 999 if tokens > 1000 else 0, tokens - 2]])
    with torch.no_grad():
        expected, got = hf(x).logits, ours(x).logits
        assert got.shape == expected.shape == (1, 5, tokens)
        assert (expected - got).abs().max().item() <= TOL
        ours.save_pretrained(tmp_path)
        reloaded = GPT2ScratchForCausalLM.from_pretrained(tmp_path).eval()
        assert (reloaded(x).logits - got).abs().max().item() <= 1e-6


def test_resize_token_embeddings_pads_to_a_multiple_keeping_real_tokens():
    """``pad_to_multiple_of`` pads the rows, but ``vocab_size`` stays the real tokens (transformers' GPT-2 would
    count the padding rows as tokens, and its logits would offer them); a call with no arguments changes
    nothing; an untied head stays the model's own linear layer (transformers rebuilds it as an nn.Linear)."""
    _, ours = make_pair(seed=4, **SMALL_HF)
    before = ours.transformer.wte.weight.detach().clone()
    assert ours.resize_token_embeddings() is ours.transformer.wte
    assert torch.equal(ours.transformer.wte.weight, before)
    ours.resize_token_embeddings(1001, pad_to_multiple_of=64)
    assert (ours.config.vocab_size, ours.config.padded_vocab_size) == (1001, 1024)
    assert torch.equal(ours.transformer.wte.weight[:1000], before)
    with torch.no_grad():
        assert ours(torch.tensor([[1000, 3]])).logits.shape == (1, 2, 1001)
    untied = GPT2ScratchForCausalLM(
        GPT2ScratchConfig.from_preset("tiny", vocab_size=1000, tie_word_embeddings=False)
    )
    untied.resize_token_embeddings(1001, pad_to_multiple_of=64)
    assert type(untied.lm_head) is GPT2ScratchLinear and untied.lm_head.head
    assert (
        untied.lm_head.weight.shape == (1024, untied.config.n_embd) and not untied.lm_head.weight[1001:].any()
    )


# --- sequence classification -------------------------------------------------------------------


def make_classifier_pair(num_labels: int = 3):
    torch.manual_seed(3)
    hc = GPT2Config(**ODD, num_labels=num_labels, pad_token_id=50256)
    hf = GPT2ForSequenceClassification(hc).eval()
    ours = GPT2ScratchForSequenceClassification(
        config_from_hf(hc).__class__(
            **{**config_from_hf(hc).to_dict(), "num_labels": num_labels, "pad_token_id": 50256}
        )
    ).eval()
    state = {k: v for k, v in state_dict_from_hf(hf.state_dict()).items() if k != "lm_head.weight"}
    ours.load_state_dict(state, strict=True)
    return hf, ours


def test_classifier_matches_transformers_when_pooling_agrees():
    hf, ours = make_classifier_pair()
    rows = [[464, 3290, 318, 257, 1332], [40, 1101, 7]]
    ids = torch.tensor([rows[0], rows[1] + [50256, 50256]])  # right padding, no 50256 in the text
    mask = (ids != 50256).long()
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        a, b = hf(ids, attention_mask=mask, labels=labels), ours(ids, attention_mask=mask, labels=labels)
    assert (a.logits - b.logits).abs().max().item() <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


def test_classifier_pools_last_real_token_where_transformers_does_not():
    hf, ours = make_classifier_pair()
    text = [464, 3290, 50256]  # a text that ends in <|endoftext|>, as the seeds' inputs do
    ids = torch.tensor([text + [50256, 50256]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    left_ids, left_mask = left_pad([text])
    left_ids = torch.cat([torch.full((1, 2), 50256), left_ids], 1)
    left_mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), left_mask], 1)
    with torch.no_grad():
        alone = ours(torch.tensor([text]), attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
        right = ours(ids, attention_mask=mask).logits
        left = ours(left_ids, attention_mask=left_mask).logits
        theirs = hf(ids, attention_mask=mask).logits
    assert (right - alone).abs().max().item() <= TOL
    assert (left - alone).abs().max().item() <= TOL
    # transformers pools the rightmost non-pad id (position 1 here), not the real last token
    assert (theirs - alone).abs().max().item() > 1e-3


def test_classifier_without_a_mask_pools_as_transformers_does():
    """No attention_mask: the last token that is not the pad id, on either padding side (transformers'
    rule); without a pad id, the last position."""
    hf, ours = make_classifier_pair()
    right = torch.tensor([[464, 3290, 318, 257, 1332], [40, 1101, 7, 50256, 50256]])
    left = torch.tensor([[464, 3290, 318, 257, 1332], [50256, 50256, 40, 1101, 7]])
    with torch.no_grad():
        for ids in (right, left):
            assert (hf(ids).logits - ours(ids).logits).abs().max().item() <= TOL
        masked = ours(right, attention_mask=(right != 50256).long()).logits
        assert (ours(right).logits - masked).abs().max().item() <= TOL
        ours.config.pad_token_id = None
        last = ours(right[:1]).logits
        ours.config.pad_token_id = 50256
    assert (last - hf(right[:1]).logits).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours(attention_mask=torch.ones_like(right))


def test_classifier_problem_types():
    torch.manual_seed(0)
    config = GPT2ScratchConfig.from_preset("tiny", vocab_size=300, num_labels=3)
    model = GPT2ScratchForSequenceClassification(config).eval()
    x = torch.randint(0, 300, (4, 8))
    logits = model(x).logits
    single = model(x, labels=torch.tensor([0, 1, 2, 1])).loss
    assert torch.allclose(single, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 1])))
    model.config.problem_type = None
    multi_labels = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    multi = model(x, labels=multi_labels).loss
    assert model.config.problem_type == "multi_label_classification"
    assert torch.allclose(multi, torch.nn.functional.binary_cross_entropy_with_logits(logits, multi_labels))
    reg = GPT2ScratchForSequenceClassification(
        GPT2ScratchConfig.from_preset("tiny", vocab_size=300, num_labels=1)
    )
    target = torch.randn(4)
    out = reg(x, labels=target)
    assert reg.config.problem_type == "regression"
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))


# --- bad input -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return GPT2ScratchForCausalLM(
        GPT2ScratchConfig.from_preset("tiny", vocab_size=300, n_positions=16)
    ).eval()


def test_token_id_out_of_vocab_is_a_clear_error(small):
    with pytest.raises(ValueError, match=r"token id 300.*vocabulary \[0, 300\)"):
        small(torch.tensor([[1, 2, 300]]))
    with pytest.raises(ValueError, match="token id -1"):
        small(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="token id 999"):
        small.generate(torch.tensor([[1, 999]]), max_new_tokens=2)


def test_sequence_longer_than_context_is_a_clear_error(small):
    with pytest.raises(ValueError, match=r"17 tokens long.*n_positions=16.*Truncate"):
        small(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens=10 exceeds this model's n_positions=16"):
        small.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=10)
    cache = DynamicCache(config=small.config)
    small(torch.zeros(1, 12, dtype=torch.long), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"including 12 cached"):
        small(torch.zeros(1, 5, dtype=torch.long), cache=cache, use_cache=True)


@pytest.mark.parametrize("how", ["max_length", "generation_config", "model's generation_config"])
def test_generation_past_the_context_is_refused_before_the_first_step(small, how, monkeypatch):
    """However the length is set, a call that may pass n_positions is refused before any forward pass."""
    from transformers import GenerationConfig

    calls = []
    monkeypatch.setattr(small, "forward", lambda *a, **k: calls.append(1))
    ids, length = torch.zeros(1, 10, dtype=torch.long), {"max_length": 17}
    if how == "max_length":
        kwargs, message = length, "plus new tokens up to max_length=17 exceeds this model's n_positions=16"
    elif how == "generation_config":
        kwargs, message = (
            {"generation_config": GenerationConfig(max_new_tokens=7)},
            "max_new_tokens=7 exceeds",
        )
    else:
        monkeypatch.setattr(small.generation_config, "max_new_tokens", 7)
        kwargs, message = {}, "max_new_tokens=7 exceeds"
    with pytest.raises(ValueError, match=message):
        small.generate(ids, pad_token_id=0, **kwargs)
    assert not calls
    small.generation_config.max_new_tokens = None


def test_float_or_empty_input_ids_are_a_clear_error(small):
    with pytest.raises(ValueError, match=r"integer token ids.*torch.float32"):
        small(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \(1, 0\)\)"):
        small(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids is empty"):
        small.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    assert small(torch.tensor([[1, 2]], dtype=torch.int32)).logits.shape == (1, 2, 300)


def test_attention_mask_of_wrong_shape_is_a_clear_error(small):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\).*\(1, 5\)"):
        small(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="2-D"):
        small(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(5))


def test_sync_checks_run_once_per_generate_not_per_step(small, monkeypatch):
    import gpt2scratch.modeling_gpt2scratch as modeling

    calls = []
    real = modeling._check_inputs
    monkeypatch.setattr(modeling, "_check_inputs", lambda *a: calls.append(a[-1]) or real(*a))
    small.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert calls.count(True) == 1  # the generate() entry check; the decode steps skip the synced part
    assert len(calls) >= 5


def test_torch_export_with_a_dynamic_batch_and_length(tiny_config):
    """``torch.export`` with symbolic batch and sequence sizes (transformers' GPT-2 exports so): the exported
    program runs other sizes with the eager model's logits."""
    from torch.export import Dim

    model = GPT2ScratchForCausalLM(tiny_config).eval()
    program = torch.export.export(
        model,
        (),
        kwargs={"input_ids": torch.randint(0, 50257, (2, 12)), "use_cache": False},
        dynamic_shapes={
            "input_ids": {0: Dim("batch", max=64), 1: Dim("seq", min=2, max=128)},
            "use_cache": None,
        },
    )
    x = torch.randint(0, 50257, (3, 20))
    with torch.no_grad():
        got = program.module()(input_ids=x, use_cache=False).logits
        assert (got - model(x).logits).abs().max().item() <= 1e-5


def test_forward_on_the_meta_device_gives_shapes(tiny_config):
    """On the meta device (shape inference, FLOP counting, as transformers' GPT-2 allows) the checks that read
    values step aside: logits and loss of the right shapes, no error."""
    with torch.device("meta"):
        model = GPT2ScratchForCausalLM(tiny_config)
    ids = torch.randint(0, 50257, (2, 12), device="meta")
    out = model(ids, labels=ids, token_type_ids=ids)
    assert out.logits.shape == (2, 12, 50257) and out.logits.is_meta and out.loss.is_meta


def test_continuous_batching_generates_what_generate_does(odd_pair):
    """transformers' continuous batching (``generate_batch``: a paged cache, many requests packed into one
    row) gives each request the tokens ``generate()`` gives it alone."""
    _, ours = odd_pair
    from transformers import GenerationConfig

    prompts = [
        torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 9, 3)
    ]
    config = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=-1, pad_token_id=0)
    out = ours.generate_batch(prompts, generation_config=config, warmup=False)
    got = [out[key].generated_tokens for key in sorted(out)]
    expected = [
        ours.generate(torch.tensor([p]), generation_config=config)[0, len(p) :].tolist() for p in prompts
    ]
    assert got == expected


def test_a_gradient_penalty_second_derivative_matches_transformers():
    """``create_graph=True`` through the whole model (eager attention: torch's CPU flash SDPA has no double
    backward, for either model), as a gradient penalty takes it: the penalty and the weights' gradients equal
    transformers' (the LM head's oneDNN product was once-differentiable and refused this)."""
    hf, ours = make_pair(seed=8, attn="eager", n_embd=64, n_layer=2, n_head=4, n_positions=32)
    ids = torch.randint(0, 50257, (2, 12))
    results = []
    for model in (hf, ours):
        embeds = model.transformer.wte(ids).detach().requires_grad_()
        (grad,) = torch.autograd.grad(model(inputs_embeds=embeds, labels=ids).loss, embeds, create_graph=True)
        penalty = grad.pow(2).sum()
        penalty.backward()
        results.append((penalty.item(), model.transformer.h[0].attn.c_attn.weight.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1].t(), atol=1e-5, rtol=1e-4)
