"""Streamed model folders: ``io.write_safetensors`` writes what ``safetensors.torch.save_file`` writes, and
``convert-openai`` (which streams) writes what ``save_pretrained`` of the in-memory conversion writes."""

from __future__ import annotations

import filecmp
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from gpt2scratch.conversion.openai import card, convert_openai, from_openai_checkpoint
from gpt2scratch.io import SAFETENSORS_DTYPES, save_model_folder, write_safetensors

FIXTURES = Path(__file__).parent / "fixtures" / "tf"


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bytes viewed as ``dtype`` (0/1 for bool), so every bit pattern of every dtype is exercised."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 2 if dtype == torch.bool else 256, (n,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def assert_same_as_save_file(tmp_path: Path, tensors: dict, metadata: dict | None) -> None:
    save_file(tensors, tmp_path / "library.safetensors", metadata=metadata)
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    write_safetensors(tmp_path / "streamed.safetensors", layout, tensors.__getitem__, metadata)
    library = (tmp_path / "library.safetensors").read_bytes()
    assert (tmp_path / "streamed.safetensors").read_bytes() == library


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}])
def test_every_dtype_mixed_in_one_file_equals_save_file(tmp_path, metadata):
    tensors = {
        f"{i:02d}.{str(dtype).split('.')[1]}": random_tensor(dtype, (3, 2), i)
        for i, dtype in enumerate(reversed(list(SAFETENSORS_DTYPES)))
    }
    tensors |= {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "Zé→名": torch.arange(5)}
    tensors["big"] = random_tensor(torch.float32, (3, 100_003), 99)  # written in several chunks
    assert_same_as_save_file(tmp_path, tensors, metadata)


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda name: name != "__metadata__"
)
specs = st.tuples(st.sampled_from(list(SAFETENSORS_DTYPES)), st.lists(st.integers(0, 4), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.dictionaries(names, specs, min_size=1, max_size=6), value=st.text(max_size=8))
def test_random_names_shapes_and_dtypes_equal_save_file(tmp_path, layout, value):
    tensors = {
        name: random_tensor(dtype, tuple(shape), i) for i, (name, (dtype, shape)) in enumerate(layout.items())
    }
    assert_same_as_save_file(tmp_path, tensors, {"note": value})


def test_the_metadata_key_is_no_tensor_name(tmp_path):
    with pytest.raises(ValueError, match="__metadata__"):
        write_safetensors(tmp_path / "w.safetensors", {"__metadata__": (torch.float32, (1,))}, lambda n: None)


@pytest.mark.parametrize(
    "given", [torch.zeros(2, 3, dtype=torch.float16), torch.zeros(3, 2), torch.zeros(3, 2).t()]
)
def test_a_tensor_unlike_its_header_is_refused(tmp_path, given):
    with pytest.raises(ValueError, match=r"tensor 'w' came as .* the header says torch.float32 \[2, 3\]"):
        write_safetensors(tmp_path / "w.safetensors", {"w": (torch.float32, (2, 3))}, lambda name: given)


# --- convert-openai -----------------------------------------------------------------------------------


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert "model.safetensors" in names
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []


@pytest.mark.parametrize(
    "dtype, variant",
    [
        ("float32", None),
        ("bfloat16", None),
        ("float16", {"n_kv_head": 2, "position_embedding_type": "rotary"}),
    ],
)
def test_convert_openai_streams_the_folder_save_pretrained_writes(tmp_path, small_vocab, dtype, variant):
    """Byte for byte, every file: weights (tied lm_head left out by transformers' own rule), config,
    code, tokenizer, card; also for a variant (pooled key/value heads, wpe dropped)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "gpt2_b", folder)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(small_vocab / f, folder / f)
    drop_wpe = variant is not None
    streamed = convert_openai(folder, tmp_path / "streamed", dtype, variant=variant, drop_wpe=drop_wpe)
    model = from_openai_checkpoint(folder, getattr(torch, dtype), variant, drop_wpe)
    in_memory = save_model_folder(
        model, tmp_path / "in_memory", folder, model_card=card(folder, model, dtype)
    )
    same_files(streamed, in_memory)


@torch.no_grad()
def test_streamed_folder_loads_with_tied_head(tmp_path, small_vocab):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "gpt2_a", folder)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(small_vocab / f, folder / f)
    out = convert_openai(folder, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    reference = from_openai_checkpoint(folder)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=0, rtol=0)
