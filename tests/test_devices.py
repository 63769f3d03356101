"""``--device`` of ``generate``, ``classify`` and ``evaluate``: what ``auto`` picks, and a clear error for a
device this machine lacks, given before any model is loaded. The commands on a real GPU: tests/test_gpu.py."""

from __future__ import annotations

import re

import pytest
import torch

from gpt2scratch.cli import main
from gpt2scratch.loading import load_model, resolve_device


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has ``cuda`` CUDA GPUs and MPS or not (nothing is put on them)."""

    def have(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return have


@pytest.mark.parametrize(
    "cuda, mps, expected", [(0, False, "cpu"), (0, True, "mps"), (1, False, "cuda"), (2, True, "cuda")]
)
def test_auto_takes_a_gpu_where_there_is_one(machine, cuda, mps, expected):
    machine(cuda, mps)
    assert resolve_device("auto") == resolve_device(None) == torch.device(expected)


def test_named_devices(machine):
    machine(cuda=2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    "cuda, name, message",
    [
        (0, "cuda", "sees no CUDA GPU; use --device cpu"),
        (2, "cuda:2", "has 2 CUDA GPU(s), cuda:0 to cuda:1"),
        (0, "mps", "MPS is not available"),
        (0, "gpu", "'gpu' is not a device"),
        (0, "meta", "use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_a_device_this_machine_lacks_is_a_clear_error(machine, cuda, name, message):
    machine(cuda)
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_device(name)


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory, vocab_dir):
    from gpt2scratch import GPT2ScratchConfig, GPT2ScratchForCausalLM
    from gpt2scratch.io import save_model_folder

    torch.manual_seed(0)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset("tiny", vocab_size=50257))
    return save_model_folder(model, tmp_path_factory.mktemp("dev") / "lm", vocab_dir)


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--prompt", "Hello"],
        ["classify", "Hello"],
        ["evaluate", "--task", "lm", "--data", "text.txt"],
    ],
)
def test_commands_refuse_a_missing_gpu_before_loading(command, machine, lm_folder, capsys, monkeypatch):
    machine(cuda=0)
    monkeypatch.setattr("gpt2scratch.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    code = main([command[0], str(lm_folder), *command[1:], "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "sees no CUDA GPU" in err, err


def test_quantized_weights_decode_on_the_cpu_only(machine, lm_folder, capsys):
    machine(cuda=1)  # auto would take the GPU; a quantized copy runs on the CPU, so auto means the CPU
    from gpt2scratch.model_commands import generation_device

    assert generation_device("auto", "int8") == torch.device("cpu")
    assert generation_device("auto", "fp32") == torch.device("cuda")
    code = main(["generate", str(lm_folder), "--prompt", "Hi", "--weights", "int8", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "--weights int8 decodes on the CPU only" in err, err


def test_generate_on_the_named_cpu_prints_the_default_tokens(lm_folder, capsys):
    args = ["generate", str(lm_folder), "--prompt", "Hello world", "--max-new-tokens", "5"]
    outputs = []
    for extra in ([], ["--device", "cpu"]):
        assert main(args + extra) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("Hello world")


def test_load_model_places_the_model(lm_folder):
    loaded = load_model(lm_folder, device="cpu", dtype=torch.float64)
    assert loaded.model.device == torch.device("cpu") and loaded.model.dtype == torch.float64
    assert not loaded.model.training
