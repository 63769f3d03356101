"""Lossless weight exchange with transformers' own GPT-2 (``GPT2LMHeadModel`` / ``GPT2Model``).

transformers' GPT-2 stores its linear layers as ``Conv1D`` (in × out); this package uses ``nn.Linear``
(out × in). Converting transposes those four matrices per block and renames nothing else.
"""

from __future__ import annotations

import torch

from ..configuration_gpt2scratch import GPT2ScratchConfig

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
CONFIG_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
    "bos_token_id", "eos_token_id",
)  # fmt: skip


def _is_conv1d(name: str) -> bool:
    return name.endswith(CONV1D_SUFFIXES)


def _transpose_conv1d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.t().contiguous() if _is_conv1d(k) and v.dim() == 2 else v) for k, v in state.items()}


def config_from_hf(hf_config) -> GPT2ScratchConfig:
    """This package's config for a transformers ``GPT2Config`` (same field names)."""
    unsupported = [
        f for f in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
        if getattr(hf_config, f, False)
    ]  # fmt: skip
    if unsupported or not getattr(hf_config, "scale_attn_weights", True):
        raise ValueError(f"This GPT-2 config uses options this package does not implement: {unsupported or ['scale_attn_weights=False']}.")
    return GPT2ScratchConfig(**{f: getattr(hf_config, f) for f in CONFIG_FIELDS})


def state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers GPT-2 state dict (``GPT2LMHeadModel`` or bare ``GPT2Model``) → ours (``ForCausalLM``)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old causal-mask buffers, not weights
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        out[key] = tensor
    out = _transpose_conv1d(out)
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``ForCausalLM`` state dict → transformers ``GPT2LMHeadModel`` keys and layout."""
    return _transpose_conv1d(dict(state))
