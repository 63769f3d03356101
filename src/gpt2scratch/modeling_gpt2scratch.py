"""GPT-2 written from scratch as Hugging Face ``PreTrainedModel`` classes.

This file travels with the weights (``trust_remote_code``): it imports only the standard library, torch,
transformers and its sibling ``configuration_gpt2scratch``. Parameter names follow GPT-2's own (``wte``,
``wpe``, ``h``, ``ln_f``, ``c_attn``, ``c_proj``, ``c_fc``); linear layers are ``nn.Linear`` (out × in:
``GPT2ScratchLinear``, whose forward is ``project``), the transpose of OpenAI's and transformers'
``Conv1D`` layout is done once by the converters. One-row ``generate`` in eval mode on CPU holds the
weights column-major in memory (``set_weight_layout``) and, on x86, runs each one-row product as an
embedding-bag sum (``bag_product``); shapes, names and the state dict are unchanged. On CPU, no-grad
products over a few rows (8-32; 2-32 for q/k/v and the MLP input) go through oneDNN with the roles
swapped, (W xᵀ)ᵀ, and wide ones over more rows through oneDNN as torch.compile's CPU backend calls it
(``project``); on a CPU with AVX-512, every product over 8 rows or more, training's included, and no-grad
ones over 2-7 rows on every weight but the head (from 6 on the head) as they are.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv  # each k/v head → its group of query heads
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_gpt2scratch import GPT2ScratchConfig


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention; ``attention_mask`` is additive or boolean (B, 1, Tq, Tk), or None (then causal,
    within the module's sliding window if it has one)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, Tq, Tk)
    if attention_mask is None:
        q_len, k_len = query.shape[-2], key.shape[-2]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        if module.sliding_window is not None:  # keys less than sliding_window positions back
            causal = causal.triu(k_len - q_len - module.sliding_window + 1)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2)  # (B, Tq, nh, hs)
    return out, weights


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dimensions of each head of ``x`` (B, nh, T, hs) by its position's
    angles (half-split pairing, as in GPT-NeoX and Llama); the other dimensions pass through."""
    dim = cos.shape[-1]
    rot = x[..., :dim] * cos + rotate_half(x[..., :dim]) * sin
    return rot if dim == x.shape[-1] else torch.cat((rot, x[..., dim:]), dim=-1)


def rotary_cos_sin(config: GPT2ScratchConfig, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos and sin (B, 1, T, rotary_dim) of the angles position * theta^(-2i/rotary_dim), computed in fp32."""
    dim = config.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=position_ids.device).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    angles = position_ids[..., None].float() * inv_freq  # (B, T, dim/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


# Projections over few rows on CPU without autograd (decoding, short prompts). MKL runs a matrix-vector or
# few-row product no faster on two threads than on one, and multiplies the 50k-row LM head by a few columns
# faster than a few rows by it (measured on x86 with MKL: benchmarks/results/projections-*.md).
SPLIT_MAX_ROWS = 64  # at most this many rows: with > 1 thread, split the output features across threads
HEAD_TRANSPOSED_MAX_ROWS = 128  # 2 to this many rows: the LM head as (W hᵀ)ᵀ
# oneDNN's inner product (what torch.compile's CPU backend calls for a linear layer) beats MKL's GEMM on a
# wide row-major weight (out > in: q/k/v, MLP input, the LM head) from 8 rows on, above all for the head
# (50257 outputs, an odd row length for MKL): at 8-512 rows 1.0-2.6x less time than nn.Linear and 1.1-1.8x
# less than MKL's best paths, in three runs; on the narrow ones (attention output, MLP output) it did not
# win, and MKL keeps them (benchmarks/results/projections-2026-11-30.md and its git history). Without
# autograd this now serves the wide weights over more than ONEDNN_SWAPPED_MAX_ROWS rows; with autograd, the
# LM head from ONEDNN_MIN_ROWS rows (both measured on an AVX2 host; with AVX-512 see ONEDNN_EVERY_PRODUCT).
ONEDNN_MIN_ROWS = 8
# Over a few rows oneDNN is faster still with the roles swapped, the weight as its input and the rows as its
# weight: (W xᵀ)ᵀ. Over ONEDNN_MIN_ROWS to ONEDNN_SWAPPED_MAX_ROWS rows on every row-major weight, and from
# 2 rows on q/k/v and the MLP input, it took 0.98-1.81x less time than the paths above (median 1.35x over
# 38 shapes at 1 and 2 threads, benchmarks/results/projections-2026-11-30.md); over fewer rows the narrow
# weights and the head did not gain (MKL's split and (W hᵀ)ᵀ), and at 48-64 rows nothing did.
ONEDNN_SWAPPED_MAX_ROWS = 32


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, swapped: bool = False
) -> torch.Tensor:
    """x Wᵀ + b for an fp32 x (rows, in) and W (out, in), through oneDNN; no autograd. Either may be a
    transposed view of a contiguous tensor (the backward of ``OneDNNLinear``); the result is contiguous.
    ``swapped`` computes it as (W xᵀ)ᵀ, W as oneDNN's input and x as its weight (faster over a few rows)."""
    if not swapped:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    y = torch.ops.mkldnn._linear_pointwise(weight, x, None, "none", [], "").t()
    if bias is None:
        return y.contiguous()
    return torch.add(y, bias, out=y.new_empty(y.shape))  # row-major, in the same pass (y + bias would not be)


def _onednn_linear_works() -> bool:
    """Whether this torch has the (private) op, and it computes a small product right."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    x, weight, bias = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3), torch.ones(4)
    try:
        expected = F.linear(x, weight, bias)
        return all(
            torch.equal(onednn_linear(x, weight, bias, swapped), expected) for swapped in (False, True)
        )
    except (RuntimeError, TypeError):
        return False


ONEDNN_LINEAR = _onednn_linear_works()


# On a CPU with AVX-512, oneDNN's JIT kernels use it, and the MKL that torch calls for fp32 products seems
# not to: on an AMD Zen 5 host MKL ran the 124M model's training products (512 rows) at 130-185 GFLOPS on 2
# threads, oneDNN at 170-420, forward and both backward products (benchmarks/bench_gemm.py). There every
# product over ONEDNN_MIN_ROWS rows or more goes through oneDNN, with autograd too; elsewhere (AVX2, where
# oneDNN won only the wide weights' forward) the choices above stand.
ONEDNN_EVERY_PRODUCT = ONEDNN_LINEAR and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
# There, without autograd, oneDNN as it is also beat MKL's few-row paths on the narrow weights (attention and
# MLP output) at 2-7 rows (1.0-2.2x less time, once 0.94x), and on the LM head from 6 rows (1.1-2.5x), where
# MKL's time jumps; at 2-5 rows the two were level on the head (0.9-1.1x); and on the wide weights other than
# the head (q/k/v, MLP input) at 2-7 rows it beat the swapped roles (as is won 23 of 24 shapes and thread
# counts, by up to 1.3x; level at 8 rows, swapped ahead from 12; benchmarks/README.md).
EVERY_MIN_ROWS = 2
EVERY_HEAD_MIN_ROWS = 6


def _backward_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a bᵀ for ``OneDNNLinear``'s backward: through oneDNN where it runs every product (it takes the
    transposed views as they are), else MKL's, as ``F.linear``'s backward computes it."""
    return onednn_linear(a, b) if ONEDNN_EVERY_PRODUCT else a @ b.t()


class OneDNNLinear(torch.autograd.Function):
    """x Wᵀ + b with autograd, forward through ``onednn_linear``, the backward products through
    ``_backward_product``: grad_x = grad W, grad_W = gradᵀ x, grad_b = Σ grad. Under ``create_graph=True``
    (a gradient penalty, a second derivative) the backward products are torch's own, differentiable ones."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad, needs = grad.contiguous(), ctx.needs_input_grad
        product = (lambda a, b: a @ b.t()) if torch.is_grad_enabled() else _backward_product
        grad_x = product(grad, weight.t()) if needs[0] else None
        grad_weight = product(grad.t(), x.t()) if needs[1] else None
        grad_bias = grad.sum(0) if ctx.has_bias and needs[2] else None
        return grad_x, grad_weight, grad_bias


def _plain_cpu_fp32(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether x Wᵀ may be computed another way than ``F.linear``: an fp32 weight stored row- or
    column-major, on CPU, without autocast, compilation or ``torch.func`` transforms."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (weight.is_contiguous() or weight.t().is_contiguous())
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


def split_matmul(x: torch.Tensor, weight: torch.Tensor, parts: int, transposed: bool) -> torch.Tensor:
    """x Wᵀ for x (rows, in) and W (out, in), as one batched product over ``parts`` slices of W's rows, so
    that each thread reads its own slice; ``transposed`` computes each slice as (W_i xᵀ)ᵀ. A column-major
    W (``weight.t()`` contiguous) is sliced in place, each slice a block of Wᵀ's columns."""
    rows, (n, k) = x.shape[0], weight.shape
    size = n // parts
    if weight.is_contiguous():
        slices = weight[: parts * size].view(parts, size, k)
    else:
        slices = weight.as_strided((parts, size, k), (size, 1, n))
    if transposed:
        y = torch.matmul(slices, x.t()).permute(2, 0, 1)  # (parts, size, rows) -> (rows, parts, size)
    else:
        y = torch.matmul(x, slices.transpose(1, 2)).transpose(0, 1)  # (parts, rows, size) -> (rows, ...)
    y = y.reshape(rows, parts * size).contiguous()
    if parts * size < n:
        y = torch.cat((y, F.linear(x, weight[parts * size :])), dim=1)
    return y


# One row through a column-major weight, x Wᵀ = Σᵢ xᵢ Wᵀ[i], is an embedding-bag sum over all of Wᵀ's rows
# with x as the per-sample weights. FBGEMM's kernel for it (x86 builds of torch) streams the weights faster
# than MKL's matrix-vector product: the 124M model's 49 one-row products of a decode step, in model order,
# took 19.9 against 27.5 ms at 1 thread and 14.6 against 17.6 ms at 2 (medians of 4, AVX-512 host,
# benchmarks/README.md); split into one bag per thread, the threads read their own blocks of Wᵀ.
BAG_PRODUCTS = "fbgemm" in torch.backends.quantized.supported_engines


@functools.lru_cache(maxsize=32)
def _bag_indices(features: int, parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (every row of Wᵀ once) and offsets (``parts`` equal bags) for ``bag_product``."""
    return torch.arange(features), torch.arange(0, features, features // parts)


def bag_product(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(x)`` for one row x (in,) and a column-major fp32 weight (``weight.t()`` contiguous), as
    ``F.embedding_bag`` over the rows of Wᵀ weighted by x: one bag per thread when the thread count divides
    ``in`` (the bags' sums then added), else one. No autograd; equal to the plain product up to float
    rounding."""
    weight_t = linear.weight.t()
    features, parts = weight_t.shape[0], torch.get_num_threads()
    parts = parts if features % parts == 0 else 1
    indices, offsets = _bag_indices(features, parts)
    y = F.embedding_bag(indices, weight_t, offsets, mode="sum", per_sample_weights=x)
    y = y[0] if parts == 1 else y.sum(0)
    return y if linear.bias is None else y + linear.bias


def project(linear: nn.Linear, x: torch.Tensor, head: bool = False) -> torch.Tensor:
    """x Wᵀ + b for ``linear``'s weight and bias (``GPT2ScratchLinear``'s forward), computed the fastest way
    measured on CPU in fp32:

    - without autograd, row-major weight: over ``ONEDNN_MIN_ROWS`` to ``ONEDNN_SWAPPED_MAX_ROWS`` rows (from
      2 rows for a wide weight, out > in, other than the LM head, ``head``, unless ``ONEDNN_EVERY_PRODUCT``)
      oneDNN with the roles swapped; over more rows, a wide weight (any weight with ``ONEDNN_EVERY_PRODUCT``)
      through oneDNN as it is (``onednn_linear``); with ``ONEDNN_EVERY_PRODUCT`` also every weight but the
      head from ``EVERY_MIN_ROWS`` rows and the LM head from ``EVERY_HEAD_MIN_ROWS``;
    - with autograd, row-major weight, ``ONEDNN_MIN_ROWS`` rows or more: through oneDNN (``OneDNNLinear``)
      the LM head, or with ``ONEDNN_EVERY_PRODUCT`` every weight;
    - without autograd, one row, column-major weight (one-row ``generate``), on x86: an embedding-bag sum
      (``bag_product``);
    - otherwise, no autograd, more than one thread, few rows: the output features split across the threads
      (``split_matmul``); a row-major head over 2 to ``HEAD_TRANSPOSED_MAX_ROWS`` rows as (W hᵀ)ᵀ.

    Same values up to float rounding; anything else (GPU, other dtypes, autocast, column-major weights with
    autograd) is ``F.linear`` (``plain_linear``)."""
    if not _plain_cpu_fp32(linear.weight, x):  # first: under compilation or export, no size is looked at
        return plain_linear(x, linear)
    rows = x.shape[:-1].numel()
    if rows == 0:
        return plain_linear(x, linear)
    flat, weight = x.reshape(rows, x.shape[-1]), linear.weight
    if rows == 1 and BAG_PRODUCTS and not weight.is_contiguous() and not torch.is_grad_enabled():
        return bag_product(flat[0], linear).view(*x.shape[:-1], -1)
    if rows == 1 and torch.get_num_threads() == 1:
        return plain_linear(x, linear)  # every path below ends here
    onednn, wide = ONEDNN_LINEAR and weight.is_contiguous(), _is_wide(linear)
    unswapped = onednn and rows >= _onednn_min_rows(head) and (wide or ONEDNN_EVERY_PRODUCT)
    swapped_from = 2 if wide and not (head or ONEDNN_EVERY_PRODUCT) else ONEDNN_MIN_ROWS
    if torch.is_grad_enabled():
        if not (unswapped and (head or ONEDNN_EVERY_PRODUCT)):
            return plain_linear(x, linear)
        y = OneDNNLinear.apply(flat.contiguous(), weight, linear.bias)
    elif onednn and swapped_from <= rows <= ONEDNN_SWAPPED_MAX_ROWS:
        y = onednn_linear(flat.contiguous(), weight, linear.bias, swapped=True)
    elif unswapped:
        y = onednn_linear(flat.contiguous(), weight, linear.bias)
    else:
        y = _mkl_product(flat, linear, head)
        if y is None:
            return plain_linear(x, linear)
    return y.view(*x.shape[:-1], -1)


def plain_linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``nn.Linear``'s own product, where ``project`` has no faster one."""
    return F.linear(x, linear.weight, linear.bias)


class GPT2ScratchLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, state dict and initialisation) whose forward is ``project``: the
    fastest product measured for its shape on CPU in fp32, ``F.linear`` elsewhere. Being the module's own
    forward, it runs inside whatever wraps the module: forward hooks, Accelerate's offloading hooks, and PEFT's
    LoRA layers, which call it as their base layer. ``head`` marks the LM head (its few-row paths differ)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, head: bool = False, **kwargs):
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(self, x, self.head)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", head=True" if self.head else "")


def _onednn_min_rows(head: bool) -> int:
    """The fewest rows ``project`` runs through oneDNN as it is (unswapped)."""
    if ONEDNN_EVERY_PRODUCT and not torch.is_grad_enabled():
        return EVERY_HEAD_MIN_ROWS if head else EVERY_MIN_ROWS
    return ONEDNN_MIN_ROWS


def _is_wide(linear: nn.Linear) -> bool:
    """More outputs than inputs: q/k/v, the MLP input and the LM head in GPT-2."""
    return linear.out_features > linear.in_features


def _mkl_product(flat: torch.Tensor, linear: nn.Linear, head: bool) -> torch.Tensor | None:
    """``project``'s MKL paths for a no-grad product (None: ``plain_linear``)."""
    threads, rows, row_major = torch.get_num_threads(), flat.shape[0], linear.weight.is_contiguous()
    if threads > 1 and rows <= SPLIT_MAX_ROWS and linear.out_features >= threads:
        y = split_matmul(flat, linear.weight, threads, transposed=head and row_major and rows > 1)
    elif head and row_major and 1 < rows <= HEAD_TRANSPOSED_MAX_ROWS:
        y = torch.mm(linear.weight, flat.t()).t().contiguous()
    else:
        return None
    return y if linear.bias is None else y + linear.bias


# where column-major was measured faster for one-row products (MKL on the wide weights, embedding bags on all)
COLUMN_MAJOR_DECODING = torch.backends.mkl.is_available() or BAG_PRODUCTS


def _layout_weights(model: nn.Module, every: bool) -> list[nn.Parameter]:
    """The weights of ``model``'s ``nn.Linear`` layers (``every``) or of its wide ones only (out > in:
    q/k/v, MLP input, LM head), once each, that are plain tensors owning their storage (not views into a
    flat buffer as FSDP or DeepSpeed make them)."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and (every or _is_wide(module)):
            if _owns_storage(module.weight.data):
                found[id(module.weight)] = module.weight
    return list(found.values())


def _owns_storage(data: torch.Tensor) -> bool:
    """A plain tensor alone in its storage (not a view into a flat buffer as FSDP or DeepSpeed make)."""
    return type(data) is torch.Tensor and data.untyped_storage().nbytes() == data.nbytes


def set_weight_layout(model: nn.Module, column_major: bool) -> None:
    """Hold the CPU fp32 weights of the linear layers (``_layout_weights``: all of them where one-row
    products run as embedding bags, ``BAG_PRODUCTS``, else the wide ones) column-major (each stored as a
    contiguous Wᵀ, the memory layout of transformers' ``Conv1D``), or every column-major one, on any device,
    row-major again. Values, shapes and parameter objects do not change. A one-row product streams the
    weights faster that way: as an embedding bag (``bag_product``), or with MKL alone, a wide weight
    1.2–1.8× faster (``benchmarks/bench_projections.py``); with more rows row-major is faster.
    ``generate`` picks the layout for its call; ``train()``, a forward with autograd and ``state_dict()``
    restore row-major, so that training, optimizers (fused AdamW walks its tensors' memory in one order) and
    in-place updates through the state dict (an EMA copy) see the weights as they were. A switch to column-major
    also gives the model's other CPU tensors their own memory (``_own_memory``). Not thread-safe against a
    forward running on the same model meanwhile."""
    if not column_major:
        return _row_major(model)
    moved = []
    with torch.no_grad():
        for weight in _layout_weights(model, every=BAG_PRODUCTS):
            data = weight.data
            if data.is_contiguous() and data.device.type == "cpu" and data.dtype == torch.float32:
                weight.data = data.t().contiguous().t()
                moved.append(weight)
        if moved:
            _own_memory(model, skip=moved)


def _row_major(model: nn.Module) -> None:
    """Every column-major parameter of ``model`` (a whole tied pair, through either end) row-major again."""
    with torch.no_grad():
        for param in model.parameters():
            data = param.data
            if data.dim() == 2 and not data.is_contiguous() and data.t().is_contiguous():
                param.data = data.contiguous()


def _row_major_state(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    """State-dict pre-hook (a module-level function, so that a pickled model keeps it): ``_row_major``."""
    _row_major(module)


def _own_memory(model: nn.Module, skip: list[torch.Tensor]) -> None:
    """Copy ``model``'s CPU parameters and buffers but ``skip`` (each alone in its storage, ``_owns_storage``)
    into memory of their own: same objects, same values. After ``from_pretrained`` every tensor is a view
    into the checkpoint's memory-mapped file, which stays mapped while any of them is, with every page the
    column-major copies read still resident: the 124M model's RSS after a one-row ``generate`` was 1312 MB
    with the biases, LayerNorms and position embedding left there, 846 MB with them copied (transformers'
    GPT-2: 845; ``benchmarks/bench_speed.py --sections memory``)."""
    skipped = {id(t) for t in skip}
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in skipped and tensor.device.type == "cpu" and _owns_storage(tensor.data):
            tensor.data = tensor.data.clone()


class GPT2ScratchAttention(nn.Module):
    """Causal self-attention with one fused q/k/v projection; ``n_kv_head`` < ``n_head`` shares each key/value
    head among a group of query heads (grouped-query / multi-query attention)."""

    def __init__(self, config: GPT2ScratchConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.kv_dim = config.n_kv_head * self.head_dim
        self.num_key_value_groups = config.n_head // config.n_kv_head  # the name transformers' SDPA reads
        self.sliding_window = config.sliding_window
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.c_attn = GPT2ScratchLinear(config.n_embd, config.n_embd + 2 * self.kv_dim, bias=config.qkv_bias)
        self.c_proj = GPT2ScratchLinear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        x,
        attention_mask=None,
        cache: Cache | None = None,
        output_attentions=False,
        rotary=None,
        keep=None,
        **kwargs,
    ):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([C, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, n_kv_head, T, hs)
        v = v.view(B, T, -1, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:  # kwargs: a paged cache (continuous batching) reads and fills them
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        chosen = kwargs.pop("attn_implementation", None)  # a call may pick its own (fast.greedy_loop does)
        impl = "eager" if output_attentions else chosen or self.config._attn_implementation
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention)
        y, weights = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            scaling=self.scaling,
            dropout=self.attn_dropout if self.training else 0.0,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        y = y.reshape(B, T, C)
        y = take_positions(y, keep)  # only these go on (the cache above holds every position's k/v)
        return self.resid_dropout(self.c_proj(y)), weights


def take_positions(x: torch.Tensor, keep) -> torch.Tensor:
    """``x`` (B, T, ...) at the kept positions: all for None; a slice or 1-D index tensor, the same in every
    row; a (B, k) index tensor, each row's own."""
    if keep is None:
        return x
    if isinstance(keep, torch.Tensor) and keep.dim() == 2:
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        return x[rows, keep.to(x.device)]
    return x[:, keep]


# GPT-2's tanh-approximated GELU, computed by torch's one fused kernel instead of six elementwise ops
# (same formula, |difference| < 1e-6; about 2x faster and fewer saved activations in training).
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}


class GPT2ScratchMLP(nn.Module):
    def __init__(self, config: GPT2ScratchConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = GPT2ScratchLinear(config.n_embd, inner, bias=config.bias)
        self.act = ACT2FN[FUSED_ACTIVATIONS.get(config.activation_function, config.activation_function)]
        self.c_proj = GPT2ScratchLinear(inner, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2ScratchBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2ScratchConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = GPT2ScratchAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = GPT2ScratchMLP(config)

    def forward(
        self, x, attention_mask=None, cache=None, output_attentions=False, rotary=None, keep=None, **kwargs
    ):
        """``keep`` (see ``take_positions``; None for all): the positions whose output is wanted; the others
        still fill the cache but skip the attention output projection and the MLP."""
        a, weights = self.attn(
            self.ln_1(x),
            attention_mask,
            cache=cache,
            output_attentions=output_attentions,
            rotary=rotary,
            keep=keep,
            **kwargs,
        )
        x = take_positions(x, keep) + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class GPT2ScratchPreTrainedModel(PreTrainedModel):
    config_class = GPT2ScratchConfig
    config: GPT2ScratchConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPT2ScratchBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def __init__(self, config: GPT2ScratchConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.register_state_dict_pre_hook(_row_major_state)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """transformers' deprecated alias of ``is_activation_checkpointing``, without its FutureWarning: PEFT
        reads it each time it wraps a model, where the user can do nothing about the warning."""
        return self.is_activation_checkpointing

    def train(self, mode: bool = True):
        """``nn.Module.train``; training mode also holds the weights row-major again if ``generate`` made
        them column-major (``set_weight_layout``)."""
        super().train(mode)
        if mode:
            set_weight_layout(self, column_major=False)
        return self

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, with ``auto_map`` naming every Auto class (``AUTO_MAP``) and the
        two code files beside the weights."""
        self.config.auto_map = dict(AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """transformers' resize, on a vocabulary whose rows may be padded (``pad_vocab_size_multiple``, as in a
        converted nanoGPT checkpoint): ``config.vocab_size`` becomes ``new_num_tokens`` (real tokens, as
        before), the rows stay padded to ``pad_to_multiple_of`` (default: the config's multiple) with zero
        rows, and new tokens are initialised from the real rows only, as transformers initialises them
        (transformers' own resize would count the padding rows as tokens and leave some new tokens as
        padding rows, and the folder saved afterwards would not load). An untied LM head stays a
        ``GPT2ScratchLinear``."""
        if new_num_tokens is None and pad_to_multiple_of is None:
            return self.get_input_embeddings()
        config = self.config
        tokens = config.vocab_size if new_num_tokens is None else new_num_tokens
        multiple = pad_to_multiple_of or config.pad_vocab_size_multiple
        weight = self.get_input_embeddings().weight
        if weight.shape[0] != config.vocab_size:  # drop the padding rows, drawing no random numbers
            with torch.random.fork_rng(devices=[weight.device] if weight.device.type == "cuda" else []):
                super().resize_token_embeddings(config.vocab_size, mean_resizing=False)
        super().resize_token_embeddings(tokens, mean_resizing=mean_resizing)
        config.pad_vocab_size_multiple = multiple
        rows = config.padded_vocab_size
        if rows != tokens:
            super().resize_token_embeddings(rows, mean_resizing=False)
            config.vocab_size = tokens
            with torch.no_grad():
                for module in (self.get_input_embeddings(), self.get_output_embeddings()):
                    if module is not None:
                        module.weight[tokens:].zero_()
        head = self.get_output_embeddings()
        if type(head) is nn.Linear:  # transformers rebuilt an untied head as a plain nn.Linear
            head.__class__, head.head = GPT2ScratchLinear, True
        return self.get_input_embeddings()

    def _init_weights(self, module):
        """GPT-2's initialisation: N(0, 0.02), zero biases, unit LayerNorm, and the residual projections
        scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.initializer_range
        if getattr(module, "is_residual_projection", False):
            std = std / math.sqrt(2 * self.config.n_layer)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    @contextmanager
    def _inputs_checked(self):
        """Within this context ``forward`` skips the checks that need a device sync (done once up front)."""
        self._skip_input_checks = True
        try:
            yield
        finally:
            self._skip_input_checks = False


def _check_inputs(
    config, input_ids, attention_mask, position_ids, past_length: int, sync_checks: bool
) -> None:
    """Raise a ValueError a user can act on for out-of-range ids, over-long inputs and misshaped masks."""
    if input_ids is not None and input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence), got {tuple(input_ids.shape)}.")
    if input_ids is not None and (input_ids.is_floating_point() or input_ids.dtype == torch.bool):
        raise ValueError(f"input_ids must hold integer token ids (torch.long), got dtype {input_ids.dtype}.")
    if input_ids is not None and input_ids.numel() == 0:
        raise ValueError(
            f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token per row, e.g. "
            "<|endoftext|> to generate from nothing."
        )
    shape = input_ids.shape if input_ids is not None else None
    if isinstance(past_length, torch.Tensor):  # a static cache keeps its length on the device
        if not sync_checks:
            return  # checked once up front; reading it here would sync (and break torch.compile graphs)
        past_length = int(past_length)
    if shape is not None and past_length + shape[1] > config.n_positions:
        raise ValueError(
            f"The input is {past_length + shape[1]} tokens long (including {past_length} cached), but this model "
            f"has n_positions={config.n_positions}. Truncate the input (e.g. tokenizer(..., truncation=True, "
            f"max_length={config.n_positions})) or use a sliding window."
        )
    if attention_mask is not None and shape is not None and attention_mask.dim() == 2:
        expected = (shape[0], past_length + shape[1])
        if tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but must be (batch, cached + new tokens) "
                f"= {expected}: one entry per token, 1 for real tokens and 0 for padding."
            )
    elif attention_mask is not None and attention_mask.dim() not in (2, 4):
        raise ValueError(
            f"attention_mask must be 2-D (batch, sequence) or a prepared 4-D mask, got shape "
            f"{tuple(attention_mask.shape)}."
        )
    if not sync_checks:
        return
    if (
        input_ids is not None
        and input_ids.numel()
        and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size)
    ):
        bad = input_ids[(input_ids < 0) | (input_ids >= config.vocab_size)][0].item()
        raise ValueError(
            f"input_ids contains token id {bad}, outside this model's vocabulary [0, {config.vocab_size}). "
            "Use the tokenizer saved with this model, or resize the embeddings."
        )
    if position_ids is not None and position_ids.numel() and position_ids.max() >= config.n_positions:
        raise ValueError(
            f"position_ids reaches {position_ids.max().item()}, but n_positions is {config.n_positions}."
        )


def _too_long(prompt_tokens: int, asked: str, n_positions: int) -> ValueError:
    return ValueError(
        f"The prompt ({prompt_tokens} tokens) plus {asked} exceeds this model's n_positions={n_positions}. "
        "Shorten the prompt or ask for fewer new tokens."
    )


def _token_types(token_type_ids: torch.Tensor, shape: tuple[int, int], vocab_size: int) -> torch.Tensor:
    """``token_type_ids`` as (batch, new tokens), or a ValueError naming the shape or ids it must have."""
    if token_type_ids.numel() != shape[0] * shape[1] or token_type_ids.shape[-1] != shape[1]:
        raise ValueError(
            f"token_type_ids has shape {tuple(token_type_ids.shape)} but must be (batch, new tokens) = {shape}."
        )
    readable = not torch.compiler.is_compiling() and token_type_ids.device.type != "meta"
    if readable and (token_type_ids.min() < 0 or token_type_ids.max() >= vocab_size):
        raise ValueError(
            f"token_type_ids must be token ids in [0, {vocab_size}) (GPT-2 embeds them with its token "
            f"embeddings), got values from {token_type_ids.min().item()} to {token_type_ids.max().item()}."
        )
    return token_type_ids.view(shape)


# CPU thread policy. A forward over few new tokens (a decode step, a short prompt) is dozens of small ops;
# where starting a parallel region costs more than such an op takes (~1 ms per region on small VMs),
# these calls run on one thread. That cost depends on what else the machine runs, so it is measured per
# thread count and again every REMEASURE_S seconds (well under 1 ms on a quiet machine); the caller's
# setting is restored after each call.
SMALL_CALL_TOKENS = 64
REMEASURE_S = 10.0
_ONE_THREAD_FASTER: dict[int, bool] = {}
_MEASURED_AT: dict[int, float] = {}  # time.monotonic() of each measurement; absent = never re-measure


def _one_thread_is_faster(threads: int) -> bool:
    """Whether a small parallel op (an add over 128k floats) runs faster on one thread than on ``threads``."""
    measured = _MEASURED_AT.get(threads)
    if threads not in _ONE_THREAD_FASTER or (
        measured is not None and time.monotonic() - measured > REMEASURE_S
    ):
        x = torch.ones(1 << 17)

        def best_time(n: int) -> float:
            torch.set_num_threads(n)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                torch.add(x, x)
                times.append(time.perf_counter() - start)
            return min(times)

        try:
            _ONE_THREAD_FASTER[threads] = best_time(1) < best_time(threads)
            _MEASURED_AT[threads] = time.monotonic()
        finally:
            torch.set_num_threads(threads)
    return _ONE_THREAD_FASTER[threads]


@contextmanager
def small_call_threads(tokens: int, device: torch.device):
    """Run the enclosed CPU work on one thread if it is small (<= SMALL_CALL_TOKENS tokens) and one thread
    is faster here; restore the caller's thread count afterwards."""
    threads = torch.get_num_threads()
    serial = (
        device.type == "cpu"
        and threads > 1
        and tokens <= SMALL_CALL_TOKENS
        and _one_thread_is_faster(threads)
    )
    if not serial:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _with_thread_policy(forward):
    """Decorate a model ``forward`` with ``small_call_threads``, sized by its input_ids or inputs_embeds; with
    autograd, the weights row-major first (``set_weight_layout``)."""

    @functools.wraps(forward)
    def wrapped(self, input_ids=None, *args, **kwargs):
        if torch.compiler.is_compiling():
            return forward(self, input_ids, *args, **kwargs)
        if torch.is_grad_enabled():
            _row_major(self)  # see set_weight_layout
        x = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if x is None or x.dim() < 2:
            return forward(self, input_ids, *args, **kwargs)
        with small_call_threads(x.shape[0] * x.shape[1], x.device):
            return forward(self, input_ids, *args, **kwargs)

    return wrapped


# transformers' models take the cache as ``past_key_values`` too (deprecated in 5.x, with a FutureWarning), and
# callers still pass it so: PEFT's prefix tuning, for one. Taken as transformers' GPT-2 takes it.
CACHE_ALIAS = deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into buffers with room to spare: a no-grad
    update writes the new positions in place instead of copying the whole cache (``torch.cat``) at every
    decode step; the room doubles when full. Whatever replaces ``keys``/``values`` by other tensors (beam
    reordering, batch selection) is copied into a new buffer at the next update; ``crop`` keeps a prefix
    view, and the next update writes over the cropped positions. Buffers made under ``torch.inference_mode()``
    are copied into new ones at the first update outside it. With autograd it concatenates, as
    ``DynamicLayer`` does (in-place writes would corrupt saved tensors)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.get_seq_length()
        end = old + key_states.shape[-2]
        if not self._holds(key_states, old, end):
            self._buffers = tuple(
                self._grown(cached, new, old, end)
                for cached, new in ((self.keys, key_states), (self.values, value_states))
            )
        key_buffer, value_buffer = self._buffers
        key_buffer[..., old:end, :] = key_states
        value_buffer[..., old:end, :] = value_states
        self.keys, self.values = key_buffer[..., :end, :], value_buffer[..., :end, :]
        return self.keys, self.values

    def _holds(self, new: torch.Tensor, old: int, end: int) -> bool:
        """Whether the buffers fit ``new`` with room for ``end`` positions, and keys/values still start them."""
        buffers = getattr(self, "_buffers", None)
        if buffers is None:
            return False
        first = buffers[0]
        fits = first.shape[-2] >= end and first.shape[:-2] == new.shape[:-2]
        if not fits or first.dtype != new.dtype or first.device != new.device:
            return False
        if first.is_inference() and not torch.is_inference_mode_enabled():
            return False  # filled under torch.inference_mode(): writable only there, so copied out
        return old == 0 or all(
            cached.data_ptr() == buffer.data_ptr() and cached.stride() == buffer.stride()
            for cached, buffer in zip((self.keys, self.values), buffers, strict=True)
        )

    @staticmethod
    def _grown(cached: torch.Tensor, new: torch.Tensor, old: int, end: int) -> torch.Tensor:
        buffer = new.new_empty((*new.shape[:-2], max(2 * end, 64), new.shape[-1]))
        if old:
            buffer[..., :old, :] = cached
        return buffer


def growing_cache(cache: Cache | None) -> Cache | None:
    """Give a fresh ``DynamicCache`` (nothing stored yet) ``GrowingLayer``s in place of its ``DynamicLayer``s;
    any other cache is returned as it is."""
    if type(cache) is DynamicCache and not getattr(cache, "offloading", False):
        if not any(layer.is_initialized for layer in cache.layers):
            cache.layers = [
                GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers
            ]
    return cache


def positions_from_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Positions that count real tokens only (cumsum of the mask - 1; 0 on padding), for the last
    ``query_length`` columns of a 2-D mask: a left-padded row gets the same positions as when alone."""
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return positions[:, -query_length:]


class GPT2ScratchModel(GPT2ScratchPreTrainedModel):
    """The bare transformer: embeddings (learned positions, or none with rotary), blocks, final LayerNorm."""

    def __init__(self, config: GPT2ScratchConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        learned = config.position_embedding_type == "learned"
        self.wpe = nn.Embedding(config.n_positions, config.n_embd) if learned else None
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2ScratchBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False
        self._skip_input_checks = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    @CACHE_ALIAS
    @_with_thread_policy
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        positions_to_keep: int | torch.Tensor = 0,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """``positions_to_keep``: the positions ``last_hidden_state`` holds (as transformers'
        ``logits_to_keep``: 0 for all, n for the last n, or a tensor of indices: 1-D for the same positions in
        every row, (batch, k) for each row's own); every position still fills
        the cache and ``hidden_states``, and unless those are requested the last block computes its
        attention projection and MLP for the kept positions only. ``token_type_ids`` (batch, new tokens), as
        in transformers' GPT-2: their token embeddings are added to the input's."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        output_attentions = bool(
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache, cache = False, None
        elif use_cache and cache is None:
            cache = growing_cache(DynamicCache(config=self.config))
        # as in transformers' GPT-2, a cache given with use_cache=False is still read and filled, not returned

        # a paged cache (continuous batching) packs many sequences into one row, with their positions given
        packed = cache is not None and not hasattr(cache, "get_seq_length")
        past_length = cache.get_seq_length() if cache is not None and not packed else 0
        on_meta = (input_ids if input_ids is not None else inputs_embeds).device.type == "meta"  # no values
        sync_checks = not (self._skip_input_checks or torch.compiler.is_compiling() or on_meta)
        if not packed:
            _check_inputs(self.config, input_ids, attention_mask, position_ids, past_length, sync_checks)

        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        B, T = inputs_embeds.shape[:2]
        mask_positions = position_ids
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = positions_from_mask(attention_mask, T)
            else:
                position_ids = (torch.arange(T, device=inputs_embeds.device) + past_length).unsqueeze(0)
        if self.wpe is not None:
            x, rotary = inputs_embeds + self.wpe(position_ids), None
        else:
            x, rotary = inputs_embeds, rotary_cos_sin(self.config, position_ids, inputs_embeds.dtype)
        if token_type_ids is not None:  # added after the positions, as transformers' GPT-2 does
            x = x + self.wte(_token_types(token_type_ids, (B, T), self.config.vocab_size))
        x = self.drop(x)

        make_mask = (
            create_causal_mask if self.config.sliding_window is None else create_sliding_window_causal_mask
        )
        mask = make_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=mask_positions,
        )
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        keep = None if isinstance(positions_to_keep, int) and positions_to_keep == 0 else positions_to_keep
        keep = slice(-keep, None) if isinstance(keep, int) else keep
        for block in self.h:
            x, weights = block(
                x,
                attention_mask=mask,
                cache=cache,
                output_attentions=output_attentions,
                rotary=rotary,
                keep=keep if block is self.h[-1] and not output_hidden_states else None,
                **kwargs,
            )
            if output_attentions:
                attentions += (weights,)
            if output_hidden_states and block is not self.h[-1]:
                hidden_states += (x,)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden_states += (x,)
            x = take_positions(x, keep)
        out = BaseModelOutputWithPast(
            last_hidden_state=x,
            cache=cache if use_cache else None,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return out if return_dict is not False else out.to_tuple()


class GPT2ScratchForCausalLM(GPT2ScratchPreTrainedModel, GenerationMixin):
    """GPT-2 with its language-model head, tied to the token embeddings."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    column_major_decoding = COLUMN_MAJOR_DECODING  # False on a model: generate leaves the layout alone

    def __init__(self, config: GPT2ScratchConfig):
        super().__init__(config)
        self.transformer = GPT2ScratchModel(config)
        self.lm_head = GPT2ScratchLinear(config.n_embd, config.padded_vocab_size, bias=False, head=True)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @CACHE_ALIAS
    @_with_thread_policy
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            positions_to_keep=logits_to_keep,
            token_type_ids=token_type_ids,
            **kwargs,
        )
        logits = self.lm_head(out.last_hidden_state)  # (B, T_keep, V)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if return_dict is not False else result.to_tuple()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """transformers' cache set-up; the default dynamic cache it makes gets ``GrowingLayer``s."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if generation_config.cache_implementation in (None, "dynamic") and not getattr(
            cache, "_is_user_defined", False
        ):
            growing_cache(cache)

    def _rows_per_step(self, input_ids, kwargs: dict) -> int:
        """How many sequences each decode step of ``generate(input_ids, **kwargs)`` runs."""
        config = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams", config.num_beams) or 1
        returned = kwargs.get("num_return_sequences", config.num_return_sequences) or 1
        x = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() >= 2 else 1
        return batch * max(beams, returned)

    def layout_for_decoding(self, rows_per_step: int) -> None:
        """In eval mode with ``column_major_decoding``: the linear layers' weights (``set_weight_layout``)
        column-major for one row per decode step, row-major for more; else leave them as they are."""
        if not self.training and self.column_major_decoding:
            set_weight_layout(self, column_major=rows_per_step == 1)

    def check_generation_inputs(self, input_ids, attention_mask=None, position_ids=None, max_new_tokens=None):
        """What ``generate`` checks once up front (so that its decode steps need not): ids within the
        vocabulary, the mask's shape, and the prompt plus ``max_new_tokens`` within ``n_positions``."""
        _check_inputs(self.config, input_ids, attention_mask, position_ids, 0, True)
        if max_new_tokens is not None and input_ids.shape[1] + max_new_tokens > self.config.n_positions:
            raise _too_long(input_ids.shape[1], f"max_new_tokens={max_new_tokens}", self.config.n_positions)

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        """transformers' length checks, then the longest sequence the call may reach (``max_length``, however
        it was set: ``max_new_tokens``, ``max_length``, a generation config) within ``n_positions``: refused
        before the first step rather than at the step that would pass it."""
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        longest, new = generation_config.max_length, generation_config.max_new_tokens
        if input_ids_length and longest > self.config.n_positions:
            asked = f"max_new_tokens={new}" if new is not None else f"new tokens up to max_length={longest}"
            raise _too_long(input_ids_length, asked, self.config.n_positions)

    @torch.no_grad()
    def generate(self, inputs=None, *args, **kwargs):
        """transformers' ``generate`` with the inputs checked once up front (not at every decode step). In
        eval mode on a CPU, the linear layers' fp32 weights (without FBGEMM: the wide ones, with MKL) are held
        column-major while decoding one row per step, row-major otherwise (``set_weight_layout``); a call that changes the layout pays one copy of
        those weights. ``model.column_major_decoding = False`` turns this off (it costs the time of that copy,
        and memory while it runs: the 124M model's RSS after a one-row generate() ends about where
        transformers' does)."""
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if isinstance(input_ids, torch.Tensor) and input_ids.dtype in (torch.long, torch.int):
            self.check_generation_inputs(input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
        self.layout_for_decoding(self._rows_per_step(input_ids, kwargs))
        with self.transformer._inputs_checked():
            return super().generate(inputs, *args, **kwargs)


class GPT2ScratchForSequenceClassification(GPT2ScratchPreTrainedModel):
    """GPT-2 with a linear ``score`` head on the last real token of each row.

    The pooled token is the last position where ``attention_mask`` is 1, so left and right padding both
    work, even when the pad id equals a token inside the text (such as ``<|endoftext|>``). Without an
    attention_mask, as in transformers' GPT-2: the last token that is not ``config.pad_token_id`` (the
    last position when no pad id is set, or with ``inputs_embeds``).
    """

    def __init__(self, config: GPT2ScratchConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2ScratchModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    @CACHE_ALIAS
    @_with_thread_policy
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        pool = pooled_index(attention_mask, input_ids, inputs_embeds, self.config.pad_token_id)
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            positions_to_keep=1 if pool is None else pool,  # the last block runs its MLP for these only
            token_type_ids=token_type_ids,
            **kwargs,
        )
        pooled = out.last_hidden_state[:, -1]  # (B, C): each row's one kept position
        logits = self.score(pooled)  # (B, num_labels)
        loss = self._loss(logits, labels) if labels is not None else None
        result = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if return_dict is not False else result.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Regression, single-label or multi-label loss, chosen as transformers does."""
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def pooled_index(attention_mask, input_ids, inputs_embeds, pad_token_id) -> torch.Tensor | None:
    """Index (B, 1) of the token a classifier pools in each row: the last 1 of a 2-D ``attention_mask``
    (any padding side); without a mask the last token of ``input_ids`` that is not ``pad_token_id``
    (transformers' rule); None (the last position) when neither applies."""
    tokens = input_ids if input_ids is not None else inputs_embeds
    if tokens is None:
        return None  # the model refuses such a call itself, with its own message
    if attention_mask is not None:
        return last_one(attention_mask[:, -tokens.shape[1] :])
    if input_ids is None or pad_token_id is None:
        return None
    return last_one(input_ids != pad_token_id)


def last_one(mask: torch.Tensor) -> torch.Tensor:
    """Index (B, 1) of the last nonzero entry of each row of ``mask`` (0 where a row has none)."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * (idx + 1)).argmax(-1, keepdim=True)


# Every model class ships its code when saved, however it was imported (this package, or a folder's remote code):
# save_pretrained copies this file and configuration_gpt2scratch.py beside the weights, and ``auto_map`` names
# every Auto class, so the folder opens anywhere with trust_remote_code=True.
AUTO_CLASSES = {
    "AutoModel": GPT2ScratchModel,
    "AutoModelForCausalLM": GPT2ScratchForCausalLM,
    "AutoModelForSequenceClassification": GPT2ScratchForSequenceClassification,
}
AUTO_MAP = {
    "AutoConfig": f"configuration_gpt2scratch.{GPT2ScratchConfig.__name__}",
    **{auto: f"modeling_gpt2scratch.{cls.__name__}" for auto, cls in AUTO_CLASSES.items()},
}
GPT2ScratchConfig.register_for_auto_class()
for _auto, _cls in AUTO_CLASSES.items():
    _cls.register_for_auto_class(_auto)

__all__ = [
    "GPT2ScratchPreTrainedModel",
    "GPT2ScratchModel",
    "GPT2ScratchForCausalLM",
    "GPT2ScratchForSequenceClassification",
]
