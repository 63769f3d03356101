"""Opt-in speed paths, beside the defaults that plain ``from_pretrained`` + ``generate()`` already use.

The model file itself (which travels with the weights) holds the paths every user gets; this module
holds the ones a user asks for, each with outputs equal to the eager path's (tests/test_fast_paths.py), except
the quantized copies:

- ``pad_vocab`` / ``prepare_for_training``: vocabulary rows padded to a multiple of 64 (identical
  logits and loss), ``torch.compile`` of the model where it pays (GPU);
- ``make_optimizer``: AdamW with the fused kernel where torch has one for the device;
- ``reuse_freed_memory``: glibc's malloc told to keep freed memory for the next tensors (process-wide;
  ``finetune --reuse-freed-memory``), so a training step's large buffers are not faulted in afresh;
- ``DECODE_PATHS``: ``generate``-like callables (static KV cache, static cache + ``torch.compile``, and
  ``greedy_loop``: greedy decoding in a loop of its own, its compiled step a CUDA graph on GPU, or on the
  CPU compiled with the weights frozen into it);
- ``quantized_for_cpu``: a copy with int8 or fp16 linear weights for CPU inference (fbgemm kernels;
  outputs close to, not equal to, the fp32 model's: tests/test_quantized.py, benchmarks/bench_quantized.py);
- ``training_flops_per_token``, ``peak_flops``, ``mfu``: nanoGPT's model-FLOPs-utilisation formula
  with the device's real dense bf16 peak.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import platform
import types
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .modeling_gpt2scratch import GPT2ScratchLinear

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
    if head is not None:  # padded in place: the module keeps its class (its forward) and attributes
        if config.tie_word_embeddings:
            head.weight = model.get_input_embeddings().weight
        else:
            head.weight = nn.Parameter(_pad_rows(head.weight.data, rows))
        if head.bias is not None:
            head.bias = nn.Parameter(_pad_rows(head.bias.data, rows))
        head.out_features = rows
    return model


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    out = weight.new_zeros(rows, *weight.shape[1:])
    out[: weight.shape[0]] = weight
    return out


def _padded_embedding(wte: nn.Embedding, rows: int) -> nn.Embedding:
    new = nn.Embedding(rows, wte.embedding_dim, device=wte.weight.device, dtype=wte.weight.dtype)
    new.weight = nn.Parameter(_pad_rows(wte.weight.data, rows))
    return new


def prepare_for_training(
    model: nn.Module, pad_multiple: int | None = None, compile: bool = False, backend: str = "inductor"
) -> nn.Module:
    """The training-speed options in one call: vocabulary padding (default: to 64 rows on GPU, where
    tensor-core shapes pay; none on CPU) and, optionally, ``torch.compile`` (with ``backend``)."""
    if pad_multiple is None:
        pad_multiple = 64 if model.device.type == "cuda" else 1
    if pad_multiple > 1:
        pad_vocab(model, pad_multiple)
    if compile:
        model.forward = torch.compile(model.forward, backend=backend)
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


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory freed tensors give back, for the next ones: no block is
    served by its own ``mmap`` and the heap's free top is never returned to the system.

    By default glibc maps every block over its mmap threshold (128 KB at first, raised by frees up to
    32 MB) on its own and unmaps it on free, and trims the heap's free top, so a training step's logits,
    activations and gradients often arrive as fresh pages that the kernel faults in and zeroes: 250,000 faults and 0.9-1.1 s of system time per 4×128 step of the 124M
    model on the 2-vCPU VM of ``benchmarks/bench_allocator.py``, none with this. Whether that pays
    depends on the threads: there, by median tokens/s, 1.04-1.27× at 2 threads but 0.96-1.00× at 1
    (reused memory is no longer in the cache, as the kernel's freshly zeroed pages were), for 3-11% more
    peak RSS. Hence opt-in: ``finetune --reuse-freed-memory`` calls it on CPU.

    Process-wide and permanent (glibc cannot report its previous settings to restore them): meant for a
    process whose job is to train. Returns whether it was applied: False, changing nothing, where the C
    library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


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


CACHE_LENGTH_MULTIPLE = 256  # greedy_loop's static caches: one compiled step serves many lengths


def greedy_loop(
    model: nn.Module,
    compile: bool | None = None,
    backend: str = "inductor",
    cuda_graph: bool | None = None,
    mode: str | None = None,
    attention: str | None = None,
    frozen: bool | None = None,
) -> Callable:
    """Greedy decoding in a loop of its own, without ``generate()``'s per-step bookkeeping: the prompt goes
    through the model once, then each new token is one decode step (model forward over a static KV cache +
    argmax) that reads the previous token from a fixed buffer and writes the next one there. Nothing waits
    for the device between steps (end-of-text is tracked on the device; the finished length is read once at
    the end), so on a GPU the host queues steps ahead of the kernels.

    ``compile`` (default: on CUDA) runs the step through ``torch.compile(fullgraph=True)`` (fused kernels;
    ``mode`` is passed on, e.g. "max-autotune-no-cudagraphs": this function makes the graph itself);
    ``cuda_graph`` (default: on CUDA) captures that step once as a CUDA graph, so a token costs one graph
    launch instead of ~100 kernel launches and no Python. ``attention``: the attention implementation of the
    decode step (default: ``decode_attention(model)``); the prompt goes through the model's own.

    ``frozen`` (default: on for a step compiled by inductor on the CPU) compiles the step with the weights as
    constants (inductor's ``freezing``) and max-autotune's GEMM kernels, which pack them for the CPU: a second
    copy of the weights in memory and about a minute of compiling for the 124M model, for 1.15x (1 thread)
    and 1.32x (2 threads) the tokens/s of ``generate()`` at batch 1 on a 2-vCPU AVX2 VM, 1.32x and 1.57x on an
    AVX-512 one (results/speed-latest.md). Constants do not follow the
    model, so each call first checks that the weights are the tensors, at the versions, it compiled, and
    compiles again (with a warning) when they are not: after an optimizer step, ``load_state_dict``, or
    ``generate`` holding the weights in another layout for another batch size.

    One cache, buffer and graph is kept per batch size and cache length (``generate.decoders``), reset and
    reused by later calls; compiled, the length is rounded up to ``CACHE_LENGTH_MULTIPLE`` so that one
    compiled step serves many lengths. Same tokens as ``model.generate(..., do_sample=False)`` for unpadded
    prompts, including ``eos_token_id`` / ``pad_token_id`` (from the model's generation config unless
    given). Made for GPUs: on a CPU, eager, it was no faster than ``generate()`` (benchmarks/README.md)."""
    from transformers import StaticCache

    cuda = model.device.type == "cuda"
    graphs = cuda if cuda_graph is None else cuda_graph
    decoders: dict[tuple[int, int], _Decoder] = {}
    attention = attention or decode_attention(model)
    chosen = {"attn_implementation": attention} if attention else {}

    def step(tokens: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        logits = model(input_ids=tokens, cache=cache, use_cache=True, **chosen).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    compiled = compile if compile is not None else cuda
    frozen = compiled and not cuda and backend == "inductor" if frozen is None else frozen
    if frozen and not (compiled and backend == "inductor"):
        raise ValueError("frozen=True freezes weights into inductor's compiled step: pass compile=True too")

    def build_step() -> Callable:
        if not compiled:
            return step
        return torch.compile(_own_code(step) if frozen else step, backend=backend, mode=mode, fullgraph=True)

    compiled_with: list[tuple] = []  # frozen: the weights (storage, version) the step holds as constants

    @torch.no_grad()
    def generate(
        input_ids: torch.Tensor,
        max_new_tokens: int,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        if do_sample:
            raise ValueError(
                "greedy_loop decodes greedily only; for sampling use model.generate(do_sample=True)."
            )
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "greedy_loop decodes unpadded prompts only; for a padded batch use model.generate(...)."
            )
        B, T = input_ids.shape
        total = T + max_new_tokens
        model.check_generation_inputs(input_ids, attention_mask, max_new_tokens=max_new_tokens)
        model.layout_for_decoding(B)
        multiple = CACHE_LENGTH_MULTIPLE if compiled else 1  # uncompiled, a longer cache only costs
        length = min(-(-total // multiple) * multiple, model.config.n_positions)
        eos, pad = _stop_tokens(model, input_ids.device, eos_token_id, pad_token_id)
        tokens = input_ids.new_empty(total, B)  # position-major: each step's (B,) row is contiguous
        tokens[:T] = input_ids.t()
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        if frozen and not _same_weights(model, compiled_with):
            warnings.warn(
                "greedy_loop: the model's weights changed since its decode step was compiled with them as "
                "constants (frozen=True); compiling it again",
                stacklevel=2,
            )
            decoders.clear()  # they hold the old step
            generate.step = build_step()
        with model.transformer._inputs_checked(), _freezing(frozen):
            decoder = decoders.get((B, length))
            if decoder is None:
                cache = StaticCache(config=model.config, max_cache_len=length)
                decoder = decoders[(B, length)] = _Decoder(model, generate.step, cache)
                if graphs:
                    decoder.prefill(input_ids)  # allocates the cache, which the capture needs
                    decoder.capture()
            tokens[T] = decoder.prefill(input_ids)
            for i in range(T, total):
                if eos is not None:  # as generate: pad after a row's end-of-text
                    tokens[i] = torch.where(done, pad, tokens[i])
                    done |= torch.isin(tokens[i], eos)
                    decoder.token.copy_(tokens[i].unsqueeze(-1))
                if i + 1 < total:
                    decoder.advance()
                    tokens[i + 1] = decoder.token.squeeze(-1)
        out = tokens.t()
        return out[:, : _finished_length(done, out, T, eos)].contiguous()

    generate.decoders, generate.step = decoders, build_step()
    return generate


def _own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its compiled graphs per code object, and
    a graph with frozen weights must serve neither another ``greedy_loop`` nor this one once they change."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def _same_weights(model: nn.Module, compiled_with: list[tuple]) -> bool:
    """Whether every parameter and buffer has the storage and version recorded in ``compiled_with`` (what an
    in-place update or a new tensor changes); records them, and answers True, when nothing was recorded."""
    signature = [(t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers())]
    same = not compiled_with or compiled_with == signature
    compiled_with[:] = signature
    return same


def _freezing(frozen: bool):
    """Inductor's freezing and max-autotune (without printing its timing tables) for the compilations
    within, none for ``frozen`` False; the caller's inductor settings are restored afterwards."""
    if not frozen:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(
        freezing=True,
        max_autotune=True,
        autotune_num_choices_displayed=0,
        max_autotune_report_choices_stats=False,
    )


def decode_attention(model: nn.Module) -> str | None:
    """The attention ``greedy_loop``'s decode step uses by default: "eager" (matmul, softmax, matmul, fused
    by inductor) for fp32 weights on CUDA, where SDPA picks its fp32 memory-efficient kernel (~32 µs a call
    for one query on an H200: 1.41x the tokens/s with "eager", benchmarks/results/speed-*-h200-*.json);
    otherwise None, the model's own (in bf16 SDPA's cuDNN kernel was faster than "eager": 1709 vs 1565)."""
    return "eager" if model.device.type == "cuda" and model.dtype == torch.float32 else None


class _Decoder:
    """A static cache and the (B, 1) token buffer a decode step reads and overwrites; ``capture`` records
    that step as a CUDA graph, which ``advance`` then replays."""

    def __init__(self, model: nn.Module, step: Callable, cache) -> None:
        self.model, self.step, self.cache = model, step, cache
        self.token: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache, run the prompt through the model and put its next token in ``token``."""
        self.cache.reset()
        logits = self.model(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=1).logits
        first = logits[:, -1].argmax(-1, keepdim=True)
        if self.token is None:
            self.token = first
        else:
            self.token.copy_(first)
        return first.squeeze(-1)

    def advance(self) -> None:
        """One decode step: ``token`` becomes the next token (the cache moves on by one position)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.token.copy_(self.step(self.token, self.cache))

    def capture(self) -> None:
        """Warm the step up on a side stream (compiling it), then capture one step as a CUDA graph. The
        warm-up moves the cache on; every call starts with ``prefill``, which resets it."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.advance()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.token.copy_(self.step(self.token, self.cache))
        except RuntimeError as err:  # e.g. an op that cannot be captured: decode without the graph
            warnings.warn(
                f"greedy_loop: the decode step could not be captured as a CUDA graph ({err})", stacklevel=3
            )
            return
        self.graph = graph


def _stop_tokens(model, device, eos_token_id, pad_token_id) -> tuple[torch.Tensor | None, torch.Tensor]:
    """End-of-text ids (a 1-D tensor, None for none: also for an empty list) and the pad id, from the
    arguments or the model."""
    config = model.generation_config
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    if eos is None or (not isinstance(eos, int) and len(eos) == 0):
        return None, torch.tensor(0, device=device)
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    return eos, torch.tensor(eos[0].item() if pad is None else pad, device=device)


def _finished_length(done: torch.Tensor, out: torch.Tensor, prompt_len: int, eos) -> int:
    """Length of ``out`` as ``generate`` returns it: up to the step at which every row had ended."""
    if eos is None or not bool(done.all()):
        return out.shape[1]
    first_end = torch.isin(out[:, prompt_len:], eos).int().argmax(-1)  # later positions are pad
    return prompt_len + int(first_end.max()) + 1


# ------------------------------------------------------------------------------------------ CPU weights
QUANTIZED_WEIGHTS = ("int8", "fp16")


def quantized_for_cpu(model: nn.Module, weights: str = "int8", inplace: bool = False) -> nn.Module:
    """A copy of ``model`` for CPU inference whose linear layers (q/k/v, projections, MLP, LM head) hold
    ``weights``: ``"int8"`` (per-output-channel symmetric int8; activations quantized per call to 7 bits)
    or ``"fp16"`` (half-precision storage, fp32 arithmetic), both through fbgemm's dynamic linear kernels
    (``torch.ao.quantization.quantize_dynamic``). ``model`` itself is left as it was, unless ``inplace``:
    then ``model`` itself is converted and returned, with no second fp32 copy in memory meanwhile.

    Outputs differ from the fp32 model's (largest logit difference over 1024 tokens on the 124M shape
    with random weights: 2e-3 for fp16, 0.2 for int8); quality and speed: ``benchmarks/bench_quantized.py``.
    The result is for ``forward``/``generate`` only: it cannot be trained or saved (keep the fp32 model for
    that). torchao's int8 configurations were measured slower than fp32 on AVX2 CPUs, hence fbgemm; torch
    marks these quantization APIs deprecated (its warnings are silenced here), so a torch without them
    gets a ``RuntimeError`` saying so."""
    if weights not in QUANTIZED_WEIGHTS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(QUANTIZED_WEIGHTS)}")
    if hasattr(model, "peft_config"):
        raise ValueError("quantize the base model: merge the adapter first (model.merge_and_unload())")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantized_for_cpu needs the model on the CPU (fbgemm kernels); call model.cpu()")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError(
            "quantized_for_cpu starts from fp32 weights; load the model with dtype=torch.float32"
        )
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm"):
        raise RuntimeError(
            f"quantized_for_cpu needs torch's x86/fbgemm quantized engine (this torch: {engine!r})"
        )
    try:
        from torch.ao.quantization import (
            float16_dynamic_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )
    except ImportError as err:
        raise RuntimeError(f"this torch has no dynamic quantization ({err}); use the fp32 model") from err
    qconfig, dtype = (
        (per_channel_dynamic_qconfig, torch.qint8)
        if weights == "int8"
        else (float16_dynamic_qconfig, torch.float16)
    )
    quantized = model if inplace else copy.deepcopy(model)
    for module in quantized.modules():  # torch's quantizer takes plain nn.Linear layers only (exact type)
        if type(module) is GPT2ScratchLinear:
            module.__class__ = nn.Linear
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*(torchao|deprecated)")
        quantized = quantize_dynamic(quantized, {nn.Linear: qconfig}, dtype=dtype, inplace=True)
    quantized.eval().requires_grad_(False)  # an optimizer over it would train the embeddings alone
    quantized.quantized_weights = weights
    quantized.save_pretrained = _refuse_saving
    return quantized


def _refuse_saving(*args, **kwargs):
    raise RuntimeError(
        "a quantized_for_cpu copy cannot be saved (its weights are packed for fbgemm): save the fp32 model, "
        "and quantize again after loading it"
    )


DECODE_PATHS: dict[str, Callable[[nn.Module], Callable]] = {
    "static": static_cache,
    "static_compiled": static_compiled,
    "greedy_loop": greedy_loop,
    "greedy_loop_frozen": functools.partial(greedy_loop, compile=True, frozen=True),
}
GPU_DECODE_PATHS = ("greedy_loop", "static", "static_compiled")


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
