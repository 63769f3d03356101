"""Model folders: write one atomically (weights, config, code, tokenizer, generation config, card)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import PreTrainedModel

from .tokenizer import save_tokenizer

AUTO_MAP = {
    "AutoConfig": "configuration_gpt2scratch.GPT2ScratchConfig",
    "AutoModel": "modeling_gpt2scratch.GPT2ScratchModel",
    "AutoModelForCausalLM": "modeling_gpt2scratch.GPT2ScratchForCausalLM",
    "AutoModelForSequenceClassification": "modeling_gpt2scratch.GPT2ScratchForSequenceClassification",
}


def check_new_folder(out: str | os.PathLike, force: bool = False) -> None:
    """Refuse an existing ``out`` unless ``force``: called before slow work, and by :func:`atomic_folder`."""
    if Path(out).exists() and not force:
        raise FileExistsError(
            f"{out} already exists; choose another output folder or pass --force to replace it."
        )


@contextmanager
def atomic_folder(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it vanishes.

    An existing ``out`` is refused unless ``force`` (and then replaced only once the new one is complete).
    """
    out = Path(out)
    check_new_folder(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_for_save(model: PreTrainedModel) -> None:
    """Make ``save_pretrained`` ship the code files and an ``auto_map`` naming every Auto class."""
    model.config.auto_map = dict(AUTO_MAP)
    model.config.register_for_auto_class()
    model.register_for_auto_class(_auto_class_of(model))


def _auto_class_of(model: PreTrainedModel) -> str:
    for auto_name, target in AUTO_MAP.items():
        if target.endswith("." + type(model).__name__):
            return auto_name
    raise TypeError(f"{type(model).__name__} is not a gpt2scratch model class.")


def write_model_folder(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    model_card: str | None = None,
) -> None:
    """Write a complete model folder into ``folder`` (which must exist): safetensors weights,
    ``config.json`` with ``auto_map``, the two code files, generation config, tokenizer files, and a
    model card ``README.md`` when one is given."""
    prepare_for_save(model)
    model.save_pretrained(folder)
    save_tokenizer(tokenizer_dir, folder, model_max_length=model.config.n_positions)
    if model_card is not None:
        Path(folder, "README.md").write_text(model_card, encoding="utf-8")


def save_model_folder(
    model: PreTrainedModel,
    out: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    model_card: str | None = None,
    force: bool = False,
) -> Path:
    """:func:`write_model_folder` into ``out`` atomically: a failure leaves no partial folder behind."""
    with atomic_folder(out, force=force) as tmp:
        write_model_folder(model, tmp, tokenizer_dir, model_card)
    return Path(out)
