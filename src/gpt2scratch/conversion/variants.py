"""GPT-2 weights (OpenAI's or transformers') into an architecture variant of the same size.

- Grouped-query / multi-query attention (``n_kv_head`` < ``n_head``): each key and value head of the variant is the
  mean of the GPT-2 heads in its group, the conversion the GQA paper (Ainslie et al., 2023, section 2) uses
  before a short phase of further training. Query heads are kept as they are.
- Rotary positions: GPT-2 learned absolute positions in ``wpe``; a rotary model has no such table, so converting
  drops it, and only when asked (``drop_wpe=True``, ``--drop-wpe``), because the result no longer computes what
  GPT-2 computed until it is trained further.
- A sliding window changes no weight: only tokens further back than the window stop being attended to.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ..configuration_gpt2scratch import GPT2ScratchConfig

VARIANT_FIELDS = ("position_embedding_type", "rope_theta", "rotary_pct", "n_kv_head", "sliding_window")
logger = logging.getLogger(__name__)


def variant_config(config: GPT2ScratchConfig, fields: dict) -> GPT2ScratchConfig:
    """``config`` with the architecture-variant ``fields`` set (checked like any config)."""
    unknown = sorted(set(fields) - set(VARIANT_FIELDS))
    if unknown:
        raise ValueError(
            f"{unknown} cannot be changed when converting GPT-2 weights; the variant fields are {list(VARIANT_FIELDS)}."
        )
    return type(config).from_dict({**config.to_dict(), **fields})


def pool_kv_heads(weight: torch.Tensor, config: GPT2ScratchConfig) -> torch.Tensor:
    """A fused ``c_attn`` weight (3·n_embd, ...) or bias (3·n_embd,) of an MHA model → the GQA layout
    (n_embd + 2·n_kv_head·head_dim, ...), each key/value head the mean of its group's heads."""
    hd = config.n_embd // config.n_head
    groups = config.n_head // config.n_kv_head
    q, k, v = weight.split(config.n_embd)
    pooled = [x.unflatten(0, (config.n_kv_head, groups, hd)).mean(1).flatten(0, 1) for x in (k, v)]
    return torch.cat([q, *pooled]).contiguous()


def to_variant(
    state: dict[str, torch.Tensor], config: GPT2ScratchConfig, fields: dict, drop_wpe: bool = False
) -> tuple[GPT2ScratchConfig, dict[str, torch.Tensor]]:
    """GPT-2's ``ForCausalLM`` state dict and config → those of the variant ``fields`` describe."""
    if not fields:
        return config, state
    target = variant_config(config, fields)
    state = dict(state)
    if target.position_embedding_type == "rotary" and "transformer.wpe.weight" in state:
        if not drop_wpe:
            raise ValueError(
                "GPT-2's weights encode positions in wpe (learned absolute position embeddings), which a rotary "
                "model does not have. Pass --drop-wpe (drop_wpe=True) to convert anyway without them: the model "
                "will not reproduce GPT-2's outputs until it is trained further."
            )
        del state["transformer.wpe.weight"]
        logger.warning("Dropped wpe (GPT-2's learned positions): the rotary model needs further training.")
    if target.n_kv_head != config.n_kv_head:
        if config.n_kv_head != config.n_head:
            raise ValueError("Only multi-head (GPT-2) weights can be pooled into grouped-query attention.")
        for name in [n for n in state if n.endswith(("attn.c_attn.weight", "attn.c_attn.bias"))]:
            state[name] = pool_kv_heads(state[name], target)
    return target, state


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """The converters' ``--set`` (variant fields only) and ``--drop-wpe`` options."""
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help=f"convert into an architecture variant; fields: {', '.join(VARIANT_FIELDS)} (e.g. --set n_kv_head=4)",
    )
    parser.add_argument(
        "--drop-wpe",
        action="store_true",
        help="allow position_embedding_type=rotary by dropping GPT-2's learned position embeddings",
    )


def variant_from_args(args: argparse.Namespace) -> dict:
    from ..model_commands import parse_overrides

    return parse_overrides(args.set or [])
