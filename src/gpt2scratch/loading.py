"""Open whatever a user points at as a model of this package.

One resolver serves every command that takes a MODEL (``generate``, ``classify``, ``evaluate``,
``finetune --model``): a model folder of this package, a PEFT adapter folder, a training checkpoint
folder or a run's output folder, a transformers GPT-2 folder (converted on the fly), an OpenAI
checkpoint folder, or ``init:PRESET`` for a randomly initialised model.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from .configuration_gpt2scratch import GPT2ScratchConfig
from .modeling_gpt2scratch import GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification
from .tokenizer import default_vocab_dir, find_vocab_files, load_encoding

TASK_CLASSES = {"causal-lm": GPT2ScratchForCausalLM, "classification": GPT2ScratchForSequenceClassification}
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's file names


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer_dir: Path  # a folder holding the vocabulary files
    kind: str  # what the spec pointed at: folder, adapter, checkpoint, hf-gpt2, openai, init


def resolve_device(name: str | None = "auto") -> torch.device:
    """The device a command runs on: ``auto`` (or None) takes CUDA where available, else Apple's MPS, else the
    CPU; a named device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) must exist here, or a ValueError says why."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(
                f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu (or auto)."
            )
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's MPS is not available here; use --device cpu (or auto).")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: use auto, cpu, cuda, cuda:N or mps.")
    return device


def _task_class(task: str):
    if task not in TASK_CLASSES:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASK_CLASSES)}.")
    return TASK_CLASSES[task]


def _tokenizer_dir(candidates: list[Path | None]) -> Path:
    for folder in candidates:
        if folder is None:
            continue
        try:
            find_vocab_files(folder)
            return Path(folder)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(
        "No GPT-2 vocabulary found next to the model; pass --tokenizer-dir with encoder.json + vocab.bpe "
        "(or vocab.json + merges.txt)."
    )


def resolve_folder(spec: str | os.PathLike) -> tuple[Path, str]:
    """The folder that holds the weights for ``spec``, and what kind it is."""
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"Model {spec} does not exist: give a model folder, a checkpoint, or init:PRESET."
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"Model {spec} is a file: give a model folder, a checkpoint, or init:PRESET."
        )
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        if (path / "model").is_dir():  # a training checkpoint-<step>/ folder
            return resolve_folder(path / "model")[0], "checkpoint"
        from .training.checkpoints import latest_checkpoint

        newest = latest_checkpoint(path)  # a run still in progress: its newest complete, verified checkpoint
        if newest is not None:
            return resolve_folder(newest / "model")[0], "checkpoint"
        if (path / "hparams.json").exists():
            return path, "openai"
        raise FileNotFoundError(
            f"{path} holds no model: expected config.json, adapter_config.json or hparams.json."
        )
    if (path / "adapter_config.json").exists():
        return path, "adapter"
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == "gpt2":
        return path, "hf-gpt2"
    if model_type != "gpt2scratch":
        raise ValueError(f"{path}/config.json has model_type {model_type!r}; expected gpt2scratch or gpt2.")
    return path, "folder"


def load_model(
    spec: str | os.PathLike,
    task: str = "causal-lm",
    tokenizer_dir: str | os.PathLike | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load ``spec`` as a model for ``task`` ("causal-lm" or "classification"), in eval mode, on ``device``
    (a name for :func:`resolve_device`; None: where it loads, the CPU)."""
    cls = _task_class(task)
    extra = {} if num_labels is None else {"num_labels": num_labels}
    given_vocab = Path(tokenizer_dir) if tokenizer_dir else None
    if str(spec).startswith("init:"):  # sized to the tokenizer, as `gpt2scratch init` does
        vocab = _tokenizer_dir([given_vocab, default_vocab_dir()])
        encoding = load_encoding(vocab)
        eot = encoding.eot_token
        sizes = dict(vocab_size=encoding.n_vocab, bos_token_id=eot, eos_token_id=eot)
        model = cls(GPT2ScratchConfig.from_preset(str(spec)[5:], **sizes, **extra))
        return LoadedModel(_placed(model, None, device), vocab, "init")
    folder, kind = resolve_folder(spec)
    adapter = (folder / "adapter_config.json").exists()  # kind "adapter", or a LoRA run's checkpoint
    if not adapter and kind != "openai":
        _check_weights(folder)
    with weights_read(folder):
        if adapter:
            model = _load_adapter(folder, task, extra)
        elif kind == "hf-gpt2":
            model = _load_hf_gpt2(folder, cls, extra)
        elif kind == "openai":
            model = _load_openai(folder, cls, extra)
        else:
            model = cls.from_pretrained(folder, **extra)
    vocab = _tokenizer_dir([given_vocab, folder, _adapter_base(folder) if adapter else None])
    _check_vocab_fits(model.config.vocab_size, vocab)
    return LoadedModel(_placed(model, dtype, device), vocab, kind)


def _check_vocab_fits(vocab_size: int, vocab: Path) -> None:
    """Refuse a tokenizer with more tokens than the model embeds (another model's: its ids would be out of
    range at the first forward, or dropped from decoded text)."""
    tokens = load_encoding(vocab).n_vocab
    if tokens > vocab_size:
        raise ValueError(
            f"the tokenizer in {vocab} has {tokens} tokens, more than this model's vocab_size={vocab_size}: it is "
            "not this model's tokenizer. Give the one the model was trained with (--tokenizer-dir)."
        )


@contextmanager
def weights_read(folder: Path):
    """Within: a safetensors file of ``folder`` that cannot be read (cut short, damaged) is a one-line
    ValueError naming the folder, not safetensors' own error without a path."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as err:
        raise ValueError(
            f"{folder}: a weights file is damaged or incomplete ({err}); save, convert or download the model again."
        ) from None


def _placed(model: torch.nn.Module, dtype: torch.dtype | None, device) -> torch.nn.Module:
    """``model`` in eval mode, in ``dtype`` and on ``device`` where given."""
    if device is not None:
        model = model.to(device if isinstance(device, torch.device) else resolve_device(device))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _check_weights(folder: Path) -> None:
    """Refuse a model folder with a config but no weights: what a failed save leaves, e.g. one of a
    ``fast.quantized_for_cpu`` copy (decode-only, it cannot be saved) past its refusal."""
    advice = (
        "Save the model again (a quantized_for_cpu copy is decode-only and cannot be saved: save, or fine-tune, "
        "the float model it was made from)."
    )
    _refuse_weightless(folder, WEIGHT_FILES, "config.json", advice)


def _refuse_weightless(folder: Path, names: tuple[str, ...], config: str, advice: str) -> None:
    """A one-line error when ``folder`` holds none of the weight files ``names`` beside its ``config``."""
    if not any((folder / name).is_file() for name in names):
        raise FileNotFoundError(
            f"{folder} has {config} but no weights ({names[0]}): an incomplete folder. {advice}"
        )


def _adapter_base(folder: Path) -> Path | None:
    """The base model folder an adapter names; a relative path is relative to the adapter folder (so a moved
    run folder finds its own ``base/``), not to the working directory as PEFT's ``AutoPeftModel`` takes it."""
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base and not Path(base).is_absolute():
        base = folder / base
    return Path(base) if base else None


def adapter_base_folder(folder: Path) -> Path:
    """The existing base model folder of adapter ``folder`` (:func:`_adapter_base`); a clear error if missing."""
    base_dir = _adapter_base(folder)
    if base_dir is None or not base_dir.is_dir():
        raise FileNotFoundError(
            f"The base model of adapter {folder} ({base_dir}) is missing: set base_model_name_or_path in "
            f"{folder / 'adapter_config.json'} to the base model folder (a relative path is taken from the "
            "adapter folder)."
        )
    return base_dir


def _load_adapter(folder: Path, task: str, extra: dict):
    """A PEFT adapter on its base model, merged so callers get a plain model of this package."""
    from peft import PeftModel

    _refuse_weightless(folder, ADAPTER_WEIGHT_FILES, "adapter_config.json", "Save the adapter again.")
    base_dir = adapter_base_folder(folder)
    _check_weights(base_dir)
    base = _task_class(task).from_pretrained(base_dir, **extra)
    return PeftModel.from_pretrained(base, folder).merge_and_unload()


def _from_lm_weights(cls, config: GPT2ScratchConfig, state: dict, extra: dict, source: Path):
    """A ``cls`` model holding a causal-LM state dict (the classifier keeps its fresh ``score`` head)."""
    model = cls(GPT2ScratchConfig(**{**config.to_dict(), **extra}))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("score.")]
    unexpected = [k for k in unexpected if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match GPT-2 (missing {missing}, unexpected {unexpected})."
        )
    return model


def _load_hf_gpt2(folder: Path, cls, extra: dict):
    """A transformers GPT-2 folder, converted on the fly."""
    from transformers import GPT2LMHeadModel

    from .conversion.hf_gpt2 import config_from_hf, state_dict_from_hf

    hf = GPT2LMHeadModel.from_pretrained(folder)
    return _from_lm_weights(
        cls, config_from_hf(hf.config), state_dict_from_hf(hf.state_dict()), extra, folder
    )


def _load_openai(folder: Path, cls, extra: dict):
    """An OpenAI TensorFlow checkpoint folder, read without TensorFlow."""
    from .conversion.openai import from_openai_checkpoint

    lm = from_openai_checkpoint(folder)
    if cls is GPT2ScratchForCausalLM and not extra:
        return lm
    return _from_lm_weights(cls, lm.config, lm.state_dict(), extra, folder)
