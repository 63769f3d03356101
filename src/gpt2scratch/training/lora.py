"""Which parameters train: all (``full``), the last N blocks (``last-block``), or PEFT LoRA adapters (``lora``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

HEADS = ("score", "lm_head")


def apply_method(model: nn.Module, method: str, task: str, args) -> nn.Module:
    """Return the model to train for ``method``: itself (full / last-block, with frozen parts) or a PEFT model."""
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "last-block":
        return freeze_all_but_last(model, args.last_n_blocks)
    if method == "lora":
        return add_lora(model, task, args.target_modules, args.lora_r, args.lora_alpha, args.lora_dropout)
    raise ValueError(f"Unknown --method {method!r}.")


def freeze_all_but_last(model: nn.Module, n_blocks: int) -> nn.Module:
    """Freeze everything except the last ``n_blocks`` blocks, the final LayerNorm and the head (as the seeds do).

    The causal-LM head is tied to the token embeddings, so for lm/instruction those train too.
    """
    blocks = model.transformer.h
    if n_blocks > len(blocks):
        raise ValueError(f"--last-n-blocks {n_blocks} exceeds the model's {len(blocks)} blocks.")
    model.requires_grad_(False)
    for module in [*blocks[len(blocks) - n_blocks :], model.transformer.ln_f]:
        module.requires_grad_(True)
    for name in HEADS:
        if hasattr(model, name):
            getattr(model, name).requires_grad_(True)
    return model


def add_lora(
    model: nn.Module, task: str, target_modules: Sequence[str], r: int, alpha: float, dropout: float
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters on ``target_modules``; the classifier head ``score`` trains in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing or not target_modules:
        raise ValueError(
            f"--lora-target-modules {list(target_modules)}: {missing or 'none'} not in the model; "
            "GPT-2's linear layers are c_attn, c_proj and c_fc."
        )
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=["score"] if task == "classification" else None,
    )
    return get_peft_model(model, config)


def frozen_names(model: nn.Module) -> frozenset[str]:
    """The state-dict names of the parameters that do not train, each name of a shared tensor included."""
    return frozenset(
        name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
    )


def weights_digest(model: nn.Module, names: frozenset[str]) -> str:
    """SHA-256 of the parameters ``names`` (name, dtype, shape and bytes, in name order)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    h = hashlib.sha256()
    for name in sorted(names):
        t = params[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    params = list({id(p): p for p in model.parameters()}.values())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
