"""convert-torch: "LLMs from scratch" GPTModel and nanoGPT checkpoints, checked by logits against
direct re-implementations of those two forwards written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, run_isolated

from gpt2scratch import cli
from gpt2scratch.conversion import torch_checkpoints
from gpt2scratch.conversion.torch_checkpoints import convert_torch, from_torch_checkpoint

V, T, E, H, L = 61, 12, 32, 4, 2  # vocab, context, width, heads, layers


def _rand(*shape, scale=0.3, offset=0.0):
    return torch.randn(*shape) * scale + offset


def _linear(state, name, n_out, n_in, bias=True):
    state[f"{name}.weight"] = _rand(n_out, n_in)
    if bias:
        state[f"{name}.bias"] = _rand(n_out, scale=0.1)


def _norm(state, weight, bias, n=E):
    state[weight] = _rand(n, scale=0.1, offset=1.0)
    if bias is not None:
        state[bias] = _rand(n, scale=0.1)


def llms_state(qkv_bias=True, tied=False, vocab=V, n_embd=E, n_layer=L):
    """Random tensors under "LLMs from scratch" GPTModel names, mask buffers included."""
    torch.manual_seed(0)
    s = {"tok_emb.weight": _rand(vocab, n_embd), "pos_emb.weight": _rand(T, n_embd)}
    for i in range(n_layer):
        p = f"trf_blocks.{i}."
        for w in ("W_query", "W_key", "W_value"):
            _linear(s, f"{p}att.{w}", n_embd, n_embd, bias=qkv_bias)
        _linear(s, f"{p}att.out_proj", n_embd, n_embd)
        _linear(s, f"{p}ff.layers.0", 4 * n_embd, n_embd)
        _linear(s, f"{p}ff.layers.2", n_embd, 4 * n_embd)
        _norm(s, f"{p}norm1.scale", f"{p}norm1.shift", n_embd)
        _norm(s, f"{p}norm2.scale", f"{p}norm2.shift", n_embd)
        s[f"{p}att.mask"] = torch.triu(torch.ones(T, T), diagonal=1)
    _norm(s, "final_norm.scale", "final_norm.shift", n_embd)
    s["out_head.weight"] = s["tok_emb.weight"] if tied else _rand(vocab, n_embd)
    return s


def nanogpt_ckpt(bias=True, compiled=False, vocab=V):
    """A nanoGPT ``ckpt.pt`` dict: model_args + GPT-2-named state dict (head tied, mask buffers kept)."""
    torch.manual_seed(1)
    s = {"transformer.wte.weight": _rand(vocab, E), "transformer.wpe.weight": _rand(T, E)}
    for i in range(L):
        p = f"transformer.h.{i}."
        _norm(s, p + "ln_1.weight", p + "ln_1.bias" if bias else None)
        _linear(s, p + "attn.c_attn", 3 * E, E, bias)
        _linear(s, p + "attn.c_proj", E, E, bias)
        _norm(s, p + "ln_2.weight", p + "ln_2.bias" if bias else None)
        _linear(s, p + "mlp.c_fc", 4 * E, E, bias)
        _linear(s, p + "mlp.c_proj", E, 4 * E, bias)
        s[p + "attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    _norm(s, "transformer.ln_f.weight", "transformer.ln_f.bias" if bias else None)
    s["lm_head.weight"] = s["transformer.wte.weight"]
    if compiled:
        s = {f"_orig_mod.{k}": v for k, v in s.items()}
    args = dict(n_layer=L, n_head=H, n_embd=E, block_size=T, bias=bias, vocab_size=vocab, dropout=0.0)
    return {"model_args": args, "model": s, "iter_num": 7, "best_val_loss": torch.tensor(2.5), "config": {}}


# ---- the two reference forwards, written directly from the layouts ----


def _ln(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    y = (x - mean) / torch.sqrt(var + 1e-5) * w
    return y + b if b is not None else y


def _lin(x, s, name):
    y = x @ s[f"{name}.weight"].T
    return y + s[f"{name}.bias"] if f"{name}.bias" in s else y


def _attend(q, k, v, n_head):
    B, Tq, C = q.shape
    q, k, v = (t.view(B, Tq, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // n_head)
    future = torch.triu(torch.ones(Tq, Tq, dtype=torch.bool), diagonal=1)
    att = scores.masked_fill(future, float("-inf")).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, Tq, C)


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def llms_forward(s, ids, n_head=H):
    x = s["tok_emb.weight"][ids] + s["pos_emb.weight"][: ids.shape[1]]
    n_layer = len({k.split(".")[1] for k in s if k.startswith("trf_blocks.")})
    for i in range(n_layer):
        p = f"trf_blocks.{i}."
        h = _ln(x, s[p + "norm1.scale"], s[p + "norm1.shift"])
        q, k, v = (_lin(h, s, f"{p}att.{w}") for w in ("W_query", "W_key", "W_value"))
        x = x + _lin(_attend(q, k, v, n_head), s, p + "att.out_proj")
        h = _ln(x, s[p + "norm2.scale"], s[p + "norm2.shift"])
        x = x + _lin(_gelu_tanh(_lin(h, s, p + "ff.layers.0")), s, p + "ff.layers.2")
    x = _ln(x, s["final_norm.scale"], s["final_norm.shift"])
    return x @ s["out_head.weight"].T


def nanogpt_forward(ckpt, ids, gelu=F.gelu):
    s = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    a = ckpt["model_args"]
    x = s["transformer.wte.weight"][ids] + s["transformer.wpe.weight"][: ids.shape[1]]
    for i in range(a["n_layer"]):
        p = f"transformer.h.{i}."
        h = _ln(x, s[p + "ln_1.weight"], s.get(p + "ln_1.bias"))
        q, k, v = _lin(h, s, p + "attn.c_attn").split(a["n_embd"], dim=-1)
        x = x + _lin(_attend(q, k, v, a["n_head"]), s, p + "attn.c_proj")
        h = _ln(x, s[p + "ln_2.weight"], s.get(p + "ln_2.bias"))
        x = x + _lin(gelu(_lin(h, s, p + "mlp.c_fc")), s, p + "mlp.c_proj")
    x = _ln(x, s["transformer.ln_f.weight"], s.get("transformer.ln_f.bias"))
    return x @ s["lm_head.weight"].T


def _ids(vocab=V, seed=2):
    return torch.randint(0, vocab, (3, T), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# ---- conversion matches the reference forwards ----


@pytest.mark.parametrize(
    "qkv_bias, wrapped, tied",
    [(True, False, False), (False, False, False), (False, True, True), (True, True, False)],
)
def test_llms_from_scratch_logits_match(tmp_path, qkv_bias, wrapped, tied):
    state = llms_state(qkv_bias=qkv_bias, tied=tied)
    obj = (
        {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
        if wrapped
        else state
    )
    torch.save(obj, tmp_path / "model.pth")
    model = from_torch_checkpoint(tmp_path / "model.pth", n_head=H)
    c = model.config
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (V, T, E, L, H)
    assert (c.qkv_bias, c.bias, c.tie_word_embeddings) == (qkv_bias, True, tied)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    ids = _ids()
    torch.testing.assert_close(_logits(model, ids), llms_forward(state, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias, compiled", [(True, False), (False, True), (True, True)])
def test_nanogpt_logits_match(tmp_path, bias, compiled):
    ckpt = nanogpt_ckpt(bias=bias, compiled=compiled)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    model = from_torch_checkpoint(tmp_path / "ckpt.pt")
    c = model.config
    assert (c.bias, c.qkv_bias, c.tie_word_embeddings, c.activation_function) == (bias, bias, True, "gelu")
    assert (c.n_positions, c.n_head, c.resid_pdrop) == (T, H, 0.0)
    assert (model.transformer.h[0].ln_1.bias is None) == (not bias)
    ids = _ids()
    torch.testing.assert_close(_logits(model, ids), nanogpt_forward(ckpt, ids), atol=1e-5, rtol=0)


def test_nanogpt_tanh_gelu_override(tmp_path):
    ckpt = nanogpt_ckpt()
    torch.save(ckpt, tmp_path / "ckpt.pt")
    model = from_torch_checkpoint(tmp_path / "ckpt.pt", activation="gelu_new")
    ids = _ids()
    expected = nanogpt_forward(ckpt, ids, gelu=_gelu_tanh)
    torch.testing.assert_close(_logits(model, ids), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, nanogpt_forward(ckpt, ids), atol=1e-5)  # the two GELUs differ here


def test_n_head_from_the_gpt2_size_of_the_same_width(tmp_path):
    state = llms_state(vocab=8, n_embd=768, n_layer=1)
    torch.save(state, tmp_path / "m.pth")
    model = from_torch_checkpoint(tmp_path / "m.pth")
    assert model.config.n_head == 12
    ids = _ids(vocab=8)
    expected = llms_forward(state, ids, n_head=12)  # logits up to ~25 from 768-wide unscaled weights:
    atol = 2e-5 * expected.abs().max().item()  # fp32 rounding, summed in another order by oneDNN/MKL
    torch.testing.assert_close(_logits(model, ids), expected, atol=atol, rtol=1e-5)


# ---- errors ----


def test_n_head_unknown_is_a_clear_error(tmp_path):
    torch.save(llms_state(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"n_embd=32 matches no GPT-2 size.*--n-head"):
        from_torch_checkpoint(tmp_path / "m.pth")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"model_state_dict": llms_state(), "extra": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth was refused.*weights_only=True") as err:
        from_torch_checkpoint(tmp_path / "evil.pth", n_head=H)
    assert "open" in str(err.value)  # names the global it refused
    assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt is not a readable PyTorch checkpoint"):
        from_torch_checkpoint(tmp_path / "notes.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a checkpoint layout.*'weights'"):
        from_torch_checkpoint(tmp_path / "other.pt")


def test_unexpected_tensor_is_named(tmp_path):
    state = llms_state()
    state["trf_blocks.1.att.rotary.inv_freq"] = torch.zeros(4)
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"unexpected tensors .*trf_blocks\.1\.att\.rotary\.inv_freq \(4,\)"):
        from_torch_checkpoint(tmp_path / "m.pth", n_head=H)


def test_missing_tensor_is_named(tmp_path):
    state = llms_state()
    del state["trf_blocks.1.norm2.shift"]
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"m\.pth: tensor 'trf_blocks\.1\.norm2\.shift' is missing"):
        from_torch_checkpoint(tmp_path / "m.pth", n_head=H)
    ckpt = nanogpt_ckpt(compiled=True)
    del ckpt["model"]["_orig_mod.transformer.h.0.mlp.c_fc.bias"]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"'transformer\.h\.0\.mlp\.c_fc\.bias' is missing"):
        from_torch_checkpoint(tmp_path / "ckpt.pt")


def test_model_args_that_disagree_with_shapes_are_named(tmp_path):
    ckpt = nanogpt_ckpt()
    ckpt["model_args"]["block_size"] = 16
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight has shape \(12, 32\).*needs \(16, 32\)"):
        from_torch_checkpoint(tmp_path / "ckpt.pt")


def test_classifier_head_is_refused(tmp_path):
    state = llms_state()
    state["out_head.weight"] = _rand(2, E)
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(ValueError, match="classifier head"):
        from_torch_checkpoint(tmp_path / "m.pth", n_head=H)


def test_tokenizer_larger_than_vocab_is_refused(tmp_path, vocab_dir):
    torch.save(llms_state(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"61 rows but the tokenizer .* has 50257 tokens"):
        convert_torch(tmp_path / "m.pth", tmp_path / "out", tokenizer_dir=vocab_dir, n_head=H)
    assert not (tmp_path / "out").exists()


def test_no_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("gpt2scratch.tokenizer.default_vocab_dir", lambda: None)
    torch.save(llms_state(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match="--tokenizer-dir"):
        torch_checkpoints.convert_torch(tmp_path / "m.pth", tmp_path / "out", n_head=H)


def test_nanogpt_padded_vocab_keeps_spare_rows_as_padding(tmp_path, vocab_dir):
    from gpt2scratch import GPT2ScratchForCausalLM

    ckpt = nanogpt_ckpt(vocab=50304)  # nanoGPT's default: GPT-2's 50257 rounded up to a multiple of 64
    torch.save(ckpt, tmp_path / "ckpt.pt")
    convert_torch(tmp_path / "ckpt.pt", tmp_path / "out", tokenizer_dir=vocab_dir)
    model = GPT2ScratchForCausalLM.from_pretrained(tmp_path / "out").eval()
    c = model.config
    assert (c.vocab_size, c.pad_vocab_size_multiple, model.transformer.wte.weight.shape[0]) == (
        50257,
        64,
        50304,
    )
    ids = _ids(vocab=50257)
    expected = nanogpt_forward(ckpt, ids)[..., :50257]
    torch.testing.assert_close(_logits(model, ids), expected, atol=1e-5, rtol=0)
    assert "| vocabulary | 50,257 |" in (tmp_path / "out" / "README.md").read_text()


# ---- the command and the folder it writes ----


def test_cli_writes_a_folder_that_transformers_loads(tmp_path, vocab_dir):
    state = llms_state(qkv_bias=False, vocab=50257, tied=False)  # untied head: both matrices must survive
    torch.save({"model_state_dict": state}, tmp_path / "model.pth")
    out = tmp_path / "converted"
    args = ["convert-torch", str(tmp_path / "model.pth"), str(out), "--tokenizer-dir", str(vocab_dir)]
    done = run_cli(*args, "--n-head", "4")
    assert done.returncode == 0, done.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }

    # Load it where gpt2scratch cannot be imported: only the folder's own code is used.
    torch.save(_ids(vocab=50257), tmp_path / "ids.pt")
    loaded = run_isolated(LOAD_FOLDER.format(out=str(out), tmp=str(tmp_path)), cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == "transformers_modules [15496, 995]"
    torch.testing.assert_close(
        torch.load(tmp_path / "logits.pt"), llms_forward(state, _ids(vocab=50257)), atol=1e-5, rtol=0
    )
    assert cli.main(args) == 2  # OUT exists and no --force


LOAD_FOLDER = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({out!r}, trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load({tmp!r} + "/ids.pt")).logits, {tmp!r} + "/logits.pt")
print(type(model).__module__.split(".")[0], AutoTokenizer.from_pretrained({out!r}, trust_remote_code=True)("Hello world")["input_ids"])
"""
