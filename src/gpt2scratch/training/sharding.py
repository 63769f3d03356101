"""Fully sharded data parallel (torch's FSDP2 ``fully_shard``) for this package's models.

Each module class named in the model's ``_no_split_modules`` (one transformer block) becomes its own shard
unit; the embeddings, the final LayerNorm and the tied head stay with the root unit, so the tie survives
sharding. Saving gathers the full state dict (on CPU) first: a model folder holds whole tensors.
"""

from __future__ import annotations

import torch
from torch import nn


def shard_model(model: nn.Module, **fsdp_kwargs) -> nn.Module:
    """``fully_shard`` every ``_no_split_modules`` block of ``model``, then the model itself (in place)."""
    from torch.distributed.fsdp import fully_shard

    block_names = set(getattr(model, "_no_split_modules", None) or [])
    if not block_names:
        raise ValueError(f"{type(model).__name__} names no _no_split_modules to shard by.")
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of a (possibly) sharded ``model``, gathered to CPU on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
