"""Opt-in speed paths, beside the defaults that plain ``from_pretrained`` + ``generate()`` already use.

The model file itself (which travels with the weights) holds the paths every user gets; this module
holds the ones a user asks for, each with outputs equal to the eager path's (see tests/test_fast_paths.py):

- ``pad_vocab`` / ``prepare_for_training``: vocabulary rows padded to a multiple of 64 (identical
  logits and loss), ``torch.compile`` of the model where it pays (GPU);
- ``make_optimizer``: AdamW with the fused kernel where torch has one for the device;
- ``DECODE_PATHS``: ``generate``-like callables (static KV cache, static cache + ``torch.compile``);
- ``training_flops_per_token``, ``peak_flops``, ``mfu``: nanoGPT's model-FLOPs-utilisation formula
  with the device's real dense bf16 peak.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Dense bf16 peak FLOP/s by device name fragment (H200 has H100 SXM's compute).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


# ------------------------------------------------------------------------------------------ training
def pad_vocab(model: nn.Module, multiple: int = 64) -> nn.Module:
    """Pad the token embedding (and the tied head) to a multiple of ``multiple`` rows, in place.

    The new rows are zero and never indexed; the model slices logits back to ``vocab_size``, so logits
    and loss are unchanged while the head's matmul gets a friendlier shape."""
    config = model.config
    config.pad_vocab_size_multiple = multiple
    wte = model.get_input_embeddings()
    rows = config.padded_vocab_size
    if wte.weight.shape[0] == rows:
        return model
    if wte.weight.shape[0] > rows:
        raise ValueError(f"the embedding has {wte.weight.shape[0]} rows, more than padded_vocab_size={rows}")
    model.set_input_embeddings(_padded_embedding(wte, rows))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        new_head = nn.Linear(
            head.in_features, rows, bias=False, device=head.weight.device, dtype=head.weight.dtype
        )
        if config.tie_word_embeddings:
            new_head.weight = model.get_input_embeddings().weight
        else:
            new_head.weight = nn.Parameter(_pad_rows(head.weight.data, rows))
        model.set_output_embeddings(new_head)
    return model


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    out = weight.new_zeros(rows, weight.shape[1])
    out[: weight.shape[0]] = weight
    return out


def _padded_embedding(wte: nn.Embedding, rows: int) -> nn.Embedding:
    new = nn.Embedding(rows, wte.embedding_dim, device=wte.weight.device, dtype=wte.weight.dtype)
    new.weight = nn.Parameter(_pad_rows(wte.weight.data, rows))
    return new


def prepare_for_training(
    model: nn.Module, pad_multiple: int | None = None, compile: bool = False
) -> nn.Module:
    """The training-speed options in one call: vocabulary padding (default: to 64 rows on GPU, where
    tensor-core shapes pay; none on CPU) and, optionally, ``torch.compile``."""
    if pad_multiple is None:
        pad_multiple = 64 if model.device.type == "cuda" else 1
    if pad_multiple > 1:
        pad_vocab(model, pad_multiple)
    if compile:
        model.forward = torch.compile(model.forward)
    return model


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (dim >= 2) only (biases, LayerNorms and other vectors are not
    decayed), using torch's fused kernel where the parameters allow it (CPU and CUDA, fp32/bf16): one
    kernel for all parameters, about twice as fast as the per-parameter loop on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params
    )
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused or None)


# ------------------------------------------------------------------------------------------ decoding
def static_cache(model: nn.Module) -> Callable:
    """``generate`` with a preallocated KV cache (``cache_implementation="static"``), eager forward."""

    def generate(input_ids, **kwargs):
        return model.generate(input_ids, cache_implementation="static", **kwargs)

    return generate


def static_compiled(model: nn.Module, backend: str = "inductor") -> Callable:
    """``generate`` with a static KV cache and the decode step compiled by ``torch.compile`` as one graph
    (CUDA graphs on GPU; on CPU too, where the first call spends minutes compiling)."""
    from transformers import CompileConfig

    cuda_graphs = model.device.type == "cuda" and backend == "inductor"
    config = CompileConfig(
        fullgraph=True, backend=backend, mode="reduce-overhead" if cuda_graphs else "default"
    )
    config._compile_all_devices = True

    def generate(input_ids, **kwargs):
        return model.generate(input_ids, cache_implementation="static", compile_config=config, **kwargs)

    return generate


DECODE_PATHS: dict[str, Callable[[nn.Module], Callable]] = {
    "static": static_cache,
    "static_compiled": static_compiled,
}
GPU_DECODE_PATHS = ("static", "static_compiled")


# ------------------------------------------------------------------------------------------ MFU
def training_flops_per_token(config, seq_len: int) -> float:
    """nanoGPT's estimate: 6 * parameters (without position embeddings) + 12 * L * H * Q * T for attention."""
    n_params = config.vocab_size * config.n_embd + config.n_layer * (
        12 * config.n_embd**2 + 13 * config.n_embd
    )
    head_dim = config.n_embd // config.n_head
    return 6 * n_params + 12 * config.n_layer * config.n_head * head_dim * seq_len


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU (H100/H200 SXM 989 TFLOP/s, A100 312), else None."""
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


def mfu(tokens_per_s: float, config, seq_len: int, device_name: str) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (None if unknown)."""
    peak = peak_flops(device_name)
    return tokens_per_s * training_flops_per_token(config, seq_len) / peak if peak else None
