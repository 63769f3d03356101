"""convert-openai / from_openai_checkpoint on GPT-2 checkpoints written by real TensorFlow.

References: the logits TensorFlow computed when it wrote each fixture (scripts/make_tf_fixtures.py),
and transformers' own ``GPT2LMHeadModel`` fed the checkpoint's arrays directly.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

import gpt2scratch.io as io
from gpt2scratch.cli import main
from gpt2scratch.conversion.openai import convert_openai, find_checkpoint, from_openai_checkpoint
from gpt2scratch.conversion.tf_bundle import CheckpointError, TFCheckpoint
from gpt2scratch.tokenizer import save_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
GPT2_FIXTURES = ["gpt2_a", "gpt2_b", "gpt2_sharded"]


def ckpt_folder(tmp_path: Path, vocab_dir: Path | None = None, name: str = "gpt2_a") -> Path:
    """A copy of a fixture checkpoint folder, with the vocabulary files of ``vocab_dir`` beside it when given."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    if vocab_dir is not None:
        for f in ("encoder.json", "vocab.bpe"):
            shutil.copyfile(vocab_dir / f, folder / f)
    return folder


def tf_reference(folder: Path) -> tuple[torch.Tensor, np.ndarray]:
    return torch.from_numpy(np.load(folder / "input_ids.npy")), np.load(folder / "logits.npy")


def hf_gpt2_from_arrays(folder: Path):
    """transformers' GPT2LMHeadModel holding the checkpoint's arrays (its Conv1D takes OpenAI's [in, out])."""
    from transformers import GPT2Config, GPT2LMHeadModel

    h = json.loads((folder / "hparams.json").read_text())
    config = GPT2Config(
        vocab_size=h["n_vocab"], n_positions=h["n_ctx"], n_embd=h["n_embd"], n_layer=h["n_layer"],
        n_head=h["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    ckpt = TFCheckpoint(folder / "model.ckpt")
    arrays = {name: torch.from_numpy(np.array(ckpt.read(name))) for name in ckpt.names()}
    state = {"transformer.wte.weight": arrays["model/wte"], "transformer.wpe.weight": arrays["model/wpe"]}
    state |= {
        "transformer.ln_f.weight": arrays["model/ln_f/g"],
        "transformer.ln_f.bias": arrays["model/ln_f/b"],
    }
    for i in range(h["n_layer"]):
        for part in ("ln_1", "ln_2", "attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            ours = f"transformer.h.{i}.{part.replace('/', '.')}"
            w, b = ("g", "b") if part.startswith("ln") else ("w", "b")
            state[f"{ours}.weight"] = arrays[f"model/h{i}/{part}/{w}"].squeeze(0)
            state[f"{ours}.bias"] = arrays[f"model/h{i}/{part}/{b}"]
    model = GPT2LMHeadModel(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model


@torch.no_grad()
@pytest.mark.parametrize("name", GPT2_FIXTURES)
def test_logits_equal_tensorflow_and_transformers(name):
    folder = FIXTURES / name
    ids, tf_logits = tf_reference(folder)
    model = from_openai_checkpoint(folder)
    ours = model(ids).logits
    np.testing.assert_allclose(ours.numpy(), tf_logits, atol=1e-5, rtol=0)
    hf = hf_gpt2_from_arrays(folder)(ids).logits
    torch.testing.assert_close(ours, hf, atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.training


@torch.no_grad()
def test_dtype_option_casts_every_weight(tmp_path):
    full = from_openai_checkpoint(FIXTURES / "gpt2_b")
    half = from_openai_checkpoint(FIXTURES / "gpt2_b/model.ckpt.index", dtype=torch.bfloat16)
    full_state, half_state = full.state_dict(), half.state_dict()
    assert {t.dtype for t in half_state.values()} == {torch.bfloat16}
    for key, value in full_state.items():
        torch.testing.assert_close(half_state[key], value.to(torch.bfloat16), atol=0, rtol=0)


def test_checkpoint_file_path_taken_as_file_name(tmp_path):
    folder = ckpt_folder(tmp_path)
    assert "/tmp" in (folder / "checkpoint").read_text()  # TF wrote an absolute path from elsewhere
    assert find_checkpoint(folder) == folder / "model.ckpt"
    for f in folder.glob("model.ckpt.*"):
        f.rename(folder / f.name.replace("model.ckpt", "run7.ckpt"))
    shutil.copyfile(folder / "run7.ckpt.index", folder / "decoy.ckpt.index")
    (folder / "checkpoint").write_text('model_checkpoint_path: "C:\\\\Users\\\\me\\\\gpt2\\\\run7.ckpt"\n')
    assert find_checkpoint(folder) == folder / "run7.ckpt"
    (folder / "checkpoint").unlink()
    with pytest.raises(CheckpointError, match="decoy.ckpt.index, run7.ckpt.index"):
        find_checkpoint(folder)
    (folder / "decoy.ckpt.index").unlink()
    assert find_checkpoint(folder) == folder / "run7.ckpt"  # the single .index
    ids, tf_logits = tf_reference(folder)
    with torch.no_grad():
        np.testing.assert_allclose(from_openai_checkpoint(folder)(ids).logits.numpy(), tf_logits, atol=1e-5)


# --- the command -------------------------------------------------------------------------------------


@torch.no_grad()
def test_cli_writes_a_loadable_model_folder(tmp_path, small_vocab):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpt2scratch.tokenizer import encode, load_encoding

    folder, out = ckpt_folder(tmp_path, small_vocab, "gpt2_b"), tmp_path / "out"
    result = run_cli("convert-openai", str(folder), str(out))
    assert result.returncode == 0, result.stderr
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids, tf_logits = tf_reference(folder)
    np.testing.assert_allclose(model(ids).logits.numpy(), tf_logits, atol=1e-5, rtol=0)
    expected = encode(load_encoding(small_vocab), "Hello world")
    assert AutoTokenizer.from_pretrained(out)("Hello world")["input_ids"] == expected
    assert "convert-openai" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["n_layer"] == 3  # gpt2_b


def test_bfloat16_folder_and_force(tmp_path, small_vocab):
    from transformers import AutoModelForCausalLM

    folder, out = ckpt_folder(tmp_path, small_vocab), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert-openai", str(folder), str(out), "--dtype", "bfloat16"]) == 2
    assert (out / "keep.txt").read_text() == "mine"  # not overwritten without --force
    assert main(["convert-openai", str(folder), str(out), "--dtype", "bfloat16", "--force"]) == 0
    assert not (out / "keep.txt").exists()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert list(tmp_path.glob(".out.*")) == []


def _flip_tensor_byte(folder: Path, tensor: str) -> None:
    ckpt = TFCheckpoint(folder / "model.ckpt")
    info, path = ckpt.info(tensor), ckpt.shard_path(ckpt.info(tensor).shard_id)
    data = bytearray(path.read_bytes())
    data[info.offset + info.size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate_last_tensor(folder: Path) -> str:
    ckpt = TFCheckpoint(folder / "model.ckpt")
    last = max(ckpt.variables.values(), key=lambda i: i.offset)
    with open(ckpt.shard_path(0), "r+b") as f:
        f.truncate(last.offset + last.size - 3)
    return last.name


def _set_hparam(folder: Path, **changes) -> None:
    path = folder / "hparams.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


BREAKAGES = {  # name → (how to break the folder, what the message must contain)
    "crc": (lambda f: _flip_tensor_byte(f, "model/h1/mlp/c_fc/w"), ["model.ckpt.data-00000-of-00001", "'model/h1/mlp/c_fc/w'", "CRC32C"]),
    "truncated": (_truncate_last_tensor, ["model.ckpt.data-00000-of-00001", "'model/wte'", "truncated"]),
    "missing index": (lambda f: (f / "model.ckpt.index").unlink(), ["model.ckpt.index", "not found"]),
    "corrupted index": (lambda f: _flip_byte_at(f / "model.ckpt.index", 40), ["model.ckpt.index", "corrupted"]),
    "hparams n_embd": (lambda f: _set_hparam(f, n_embd=48), ["hparams.json", "'model/", "shape"]),
    "hparams n_vocab": (lambda f: _set_hparam(f, n_vocab=50257), ["hparams.json", "'model/wte'", "[500, 32]"]),
    "hparams n_layer low": (lambda f: _set_hparam(f, n_layer=1), ["model.ckpt.index", "model/h1/"]),
    "hparams n_layer high": (lambda f: _set_hparam(f, n_layer=3), ["model.ckpt.index", "missing", "model/h2/"]),
    "missing encoder.json": (lambda f: (f / "encoder.json").unlink(), ["encoder.json", "missing"]),
    "missing vocab.bpe": (lambda f: (f / "vocab.bpe").unlink(), ["vocab.bpe", "missing"]),
    "corrupt encoder.json": (lambda f: (f / "encoder.json").write_text('{"a": 0,'), ["encoder.json", "not a valid vocabulary"]),
}  # fmt: skip


def _flip_byte_at(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_cli_errors_name_the_problem_and_leave_no_out(tmp_path, small_vocab, capsys, breakage):
    folder, out = ckpt_folder(tmp_path, small_vocab), tmp_path / "out"
    brk, expected = BREAKAGES[breakage]
    brk(folder)
    assert main(["convert-openai", str(folder), str(out)]) != 0
    message = capsys.readouterr().err
    assert message.startswith("gpt2scratch convert-openai: error:") and message.count("\n") == 1
    for fragment in expected:
        assert fragment in message, message
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []


def test_cli_error_exit_code_in_a_real_process(tmp_path, small_vocab):
    folder, out = ckpt_folder(tmp_path, small_vocab), tmp_path / "out"
    _flip_tensor_byte(folder, "model/wpe")
    result = run_cli("convert-openai", str(folder), str(out))
    assert result.returncode != 0
    assert "'model/wpe'" in result.stderr and "model.ckpt.data-00000-of-00001" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []


def test_convert_openai_function_refuses_unknown_dtype(tmp_path, small_vocab):
    with pytest.raises(ValueError, match="float8"):
        convert_openai(ckpt_folder(tmp_path, small_vocab), tmp_path / "out", dtype="float8")


def test_tokenizer_larger_than_n_vocab_is_refused(tmp_path, vocab_dir, capsys):
    """GPT-2's 50257-token vocabulary beside a checkpoint of n_vocab 500: its ids would index past wte."""
    folder, out = ckpt_folder(tmp_path, vocab_dir), tmp_path / "out"
    assert main(["convert-openai", str(folder), str(out)]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "50257 tokens" in message and "n_vocab=500" in message, message
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []


def test_tokenizer_error_in_the_forked_child_reaches_the_user(tmp_path, small_vocab, capsys, monkeypatch):
    """The forked child that writes the tokenizer files reports its errors as the parent would."""
    import gpt2scratch.conversion.openai as openai

    monkeypatch.setattr(openai, "check_tokenizer_fits", lambda *args: None)  # leave the reading to the child
    folder, out = ckpt_folder(tmp_path, small_vocab), tmp_path / "out"
    (folder / "encoder.json").write_text('{"a": 0,')
    assert main(["convert-openai", str(folder), str(out)]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "encoder.json" in message and "not a valid vocabulary" in message
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []


def save_tokenizer_recording_pid(folder, out, model_max_length):  # module level: the child unpickles it
    Path(out, "writer.pid").write_text(str(os.getpid()))
    return save_tokenizer(folder, out, model_max_length)


@pytest.mark.parametrize("fork", [True, False])
def test_tokenizer_files_written_by_a_forked_child_on_linux(tmp_path, vocab_dir, monkeypatch, fork):
    """convert-openai builds the tokenizer in a forked process on Linux (it holds the GIL, so a thread
    would only take turns with the weights); other commands use a thread. Same files either way."""
    monkeypatch.setattr(io, "save_tokenizer", save_tokenizer_recording_pid)
    model = from_openai_checkpoint(ckpt_folder(tmp_path, vocab_dir))
    out = io.save_model_folder(model, tmp_path / "out", vocab_dir, fork=fork)
    child = int((out / "writer.pid").read_text()) != os.getpid()
    assert child == (fork and sys.platform == "linux")
    reference = tmp_path / "reference"
    save_tokenizer(vocab_dir, reference, model.config.n_positions)
    for f in reference.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_convert_openai_forks_for_the_tokenizer(tmp_path, small_vocab, monkeypatch):
    calls = []
    writer = io.tokenizer_writer
    monkeypatch.setattr(io, "tokenizer_writer", lambda fork: calls.append(fork) or writer(fork))
    convert_openai(ckpt_folder(tmp_path, small_vocab), tmp_path / "out")
    assert calls == [True]


def test_a_daemonic_process_writes_the_tokenizer_in_a_thread(monkeypatch):
    """multiprocessing forbids children of daemonic processes (e.g. Pool workers): no fork there."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    monkeypatch.setattr(io.multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    with io.tokenizer_writer(fork=True) as pool:
        assert isinstance(pool, ThreadPoolExecutor)
