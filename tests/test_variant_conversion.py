"""GPT-2 weights (OpenAI's TF checkpoints, transformers' GPT-2) into architecture variants: mean-pooled
key/value heads for grouped-query attention, rotary only with an explicit --drop-wpe, refusals otherwise."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from gpt2scratch.conversion.hf_gpt2 import export_hf, from_hf_model
from gpt2scratch.conversion.openai import from_openai_checkpoint
from gpt2scratch.io import save_model_folder

FIXTURE = Path(__file__).parent / "fixtures" / "tf" / "gpt2_a"  # n_embd 32, n_head 4, 2 layers


@pytest.fixture(scope="module")
def gpt2():
    return from_openai_checkpoint(FIXTURE)


def expected_pooled(weight: torch.Tensor, n_embd: int, n_head: int, n_kv_head: int) -> torch.Tensor:
    """Written out head by head: key/value head j is the mean of GPT-2 heads j·g … j·g+g-1."""
    hd, g = n_embd // n_head, n_head // n_kv_head
    q, k, v = weight[:n_embd], weight[n_embd : 2 * n_embd], weight[2 * n_embd :]
    parts = [q]
    for x in (k, v):
        heads = [x[h * hd : (h + 1) * hd] for h in range(n_head)]
        parts += [sum(heads[j * g : (j + 1) * g]) / g for j in range(n_kv_head)]
    return torch.cat(parts)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_openai_checkpoint_into_gqa_mean_pools_kv_heads(gpt2, n_kv_head):
    gqa = from_openai_checkpoint(FIXTURE, variant={"n_kv_head": n_kv_head})
    assert gqa.config.n_kv_head == n_kv_head
    for name, tensor in gpt2.state_dict().items():
        got = gqa.state_dict()[name]
        if ".attn.c_attn." in name:
            want = expected_pooled(tensor, 32, 4, n_kv_head)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
        else:
            assert torch.equal(got, tensor), name
    x = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        assert torch.isfinite(gqa(x).logits).all()


def test_n_kv_head_equal_to_n_head_and_a_wide_window_change_nothing(gpt2):
    same = from_openai_checkpoint(FIXTURE, variant={"n_kv_head": 4, "sliding_window": 64})
    x = torch.randint(0, 500, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(same(x).logits, gpt2(x).logits, rtol=0, atol=1e-6)


def test_rotary_needs_drop_wpe_and_says_what_it_dropped(gpt2, caplog):
    with pytest.raises(ValueError, match="--drop-wpe"):
        from_openai_checkpoint(FIXTURE, variant={"position_embedding_type": "rotary"})
    with caplog.at_level(logging.WARNING):
        rotary = from_openai_checkpoint(FIXTURE, variant={"position_embedding_type": "rotary"}, drop_wpe=True)
    assert "Dropped wpe" in caplog.text
    assert rotary.transformer.wpe is None
    state = rotary.state_dict()
    assert set(gpt2.state_dict()) - set(state) == {"transformer.wpe.weight"}
    assert all(torch.equal(state[k], v) for k, v in gpt2.state_dict().items() if k in state)


def test_fields_that_change_shapes_are_refused(gpt2):
    with pytest.raises(ValueError, match="variant fields"):
        from_openai_checkpoint(FIXTURE, variant={"n_layer": 3})
    with pytest.raises(ValueError, match="n_kv_head"):
        from_openai_checkpoint(FIXTURE, variant={"n_kv_head": 3})


def test_transformers_gpt2_into_gqa_and_no_export_back(gpt2, tmp_path, vocab_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    plain, gqa = from_hf_model(hf), from_hf_model(hf, variant={"n_kv_head": 2})
    for i in range(2):
        name = f"transformer.h.{i}.attn.c_attn.weight"
        want = expected_pooled(plain.state_dict()[name], 32, 4, 2)
        torch.testing.assert_close(gqa.state_dict()[name], want, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="--drop-wpe"):
        from_hf_model(hf, variant={"position_embedding_type": "rotary"})
    folder = save_model_folder(gqa, tmp_path / "gqa", vocab_dir)
    with pytest.raises(ValueError, match="cannot be exported"):
        export_hf(folder, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_cli_converts_into_a_variant_and_refuses_rotary_without_flag(tmp_path, small_vocab):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, folder)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(small_vocab / f, folder / f)
    refused = run_cli(
        "convert-openai", str(folder), str(tmp_path / "r"), "--set", "position_embedding_type=rotary"
    )
    assert refused.returncode == 2 and "--drop-wpe" in refused.stderr and not (tmp_path / "r").exists()
    out = tmp_path / "variant"
    done = run_cli(
        "convert-openai", str(folder), str(out), "--set", "n_kv_head=2", "position_embedding_type=rotary",
        "sliding_window=16", "--drop-wpe",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Dropped wpe" in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["n_kv_head"], config["position_embedding_type"], config["sliding_window"]) == (
        2,
        "rotary",
        16,
    )


def test_convert_hf_cli_into_gqa(tmp_path, vocab_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    src = tmp_path / "hf"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    ).save_pretrained(src)
    vocab = ["--tokenizer-dir", str(vocab_dir)]
    refused = run_cli("convert-hf", str(src), str(tmp_path / "r"), "--set", "n_layer=3", *vocab)
    assert refused.returncode == 2 and "variant fields" in refused.stderr and not (tmp_path / "r").exists()
    done = run_cli("convert-hf", str(src), str(tmp_path / "gqa"), "--set", "n_kv_head=1", *vocab)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "gqa" / "config.json").read_text())["n_kv_head"] == 1
    assert "gpt2scratch convert-hf" in (tmp_path / "gqa" / "README.md").read_text()
