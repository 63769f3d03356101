"""Import GPT-2-shaped PyTorch checkpoints that people trained or fine-tuned themselves.

Two layouts are recognised:

* "Build a Large Language Model (From Scratch)" ``GPTModel`` state dicts: ``tok_emb``, ``pos_emb``,
  ``trf_blocks.N.att.W_query/W_key/W_value`` (separate ``nn.Linear``, with or without bias),
  ``att.out_proj``, ``ff.layers.0/2``, ``norm1/norm2/final_norm.scale/shift``, ``out_head``; bare or
  inside ``{"model_state_dict": ...}``. The three q/k/v matrices are stacked into ``c_attn``.
* nanoGPT ``ckpt.pt`` files: ``{"model_args": {...}, "model": state_dict}``, whose keys already are
  GPT-2's own (``transformer.wte`` … ``lm_head``), with ``bias`` on or off.

Files are opened with ``torch.load(weights_only=True)`` only: a checkpoint that carries code is
refused, never run. Every tensor of the file must find its place and every weight of the model must
be set; anything else is an error naming the tensor.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..configuration_gpt2scratch import PRESETS, GPT2ScratchConfig

if TYPE_CHECKING:
    from ..modeling_gpt2scratch import GPT2ScratchForCausalLM

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DataParallel / DDP
IGNORED_SUFFIXES = (".att.mask", ".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights
LLMS_TOP = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "final_norm.scale": "transformer.ln_f.weight",
    "final_norm.shift": "transformer.ln_f.bias",
    "out_head.weight": "lm_head.weight",
}
LLMS_BLOCK = {
    "att.out_proj.weight": "attn.c_proj.weight",
    "att.out_proj.bias": "attn.c_proj.bias",
    "ff.layers.0.weight": "mlp.c_fc.weight",
    "ff.layers.0.bias": "mlp.c_fc.bias",
    "ff.layers.2.weight": "mlp.c_proj.weight",
    "ff.layers.2.bias": "mlp.c_proj.bias",
    "norm1.scale": "ln_1.weight",
    "norm1.shift": "ln_1.bias",
    "norm2.scale": "ln_2.weight",
    "norm2.shift": "ln_2.bias",
}
QKV = ("W_query", "W_key", "W_value")
NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
LLMS = "LLMs-from-scratch GPTModel"
NANOGPT = "nanoGPT"
ACTIVATIONS = ("gelu", "gelu_new")
# "LLMs from scratch" uses GPT-2's tanh GELU; nanoGPT's model.py uses nn.GELU() (exact, erf) since 2023.
DEFAULT_ACTIVATION = {LLMS: "gelu_new", NANOGPT: "gelu"}


class _Source:
    """A checkpoint's tensors, remembering which ones were used."""

    def __init__(self, state: dict[str, torch.Tensor], path: Path, layout: str):
        self.state, self.path, self.layout = state, path, layout
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ValueError(
                f"{self.path}: tensor {key!r} is missing; a {self.layout} checkpoint of this shape has it. "
                "The file is incomplete or comes from a different architecture."
            )
        self.used.add(key)
        return self.state[key]

    def check_all_used(self) -> None:
        left = [k for k in self.state if k not in self.used and not k.endswith(IGNORED_SUFFIXES)]
        if left:
            shown = ", ".join(f"{k} {tuple(self.state[k].shape)}" for k in left[:6])
            more = f" and {len(left) - 6} more" if len(left) > 6 else ""
            raise ValueError(
                f"{self.path}: unexpected tensors for a {self.layout} checkpoint: {shown}{more}. GPT-2 has no "
                "place for them; this importer only reads the plain GPT-2 architecture."
            )


def load_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` with errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _weights_only_detail(str(e))
        if "Unsupported global" in detail:
            raise ValueError(
                f"{path} was refused: it stores Python objects other than tensors ({detail}), and this importer "
                "only loads checkpoints with torch.load(weights_only=True), never running code from a file. If you "
                "trust the file, load it in your own code and save just its weights, e.g. "
                "torch.save(model.state_dict(), 'weights.pt')."
            ) from e
        raise ValueError(f"{path} is not a PyTorch checkpoint that can be loaded safely ({detail}).") from e
    except OSError:
        raise
    # torch.load fails on foreign bytes with many exception types (RuntimeError, KeyError, EOFError...).
    except Exception as e:
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (torch.save file): {detail}") from e


def _weights_only_detail(message: str) -> str:
    """The line of torch's weights_only error that names the cause."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", message, re.S)
    detail = m.group(1) if m else message.splitlines()[0]
    return " ".join(detail.split())[:300]


def _strip_wrappers(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """Keys without ``_orig_mod.`` / ``module.`` prefixes; every value must be a tensor."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict."
            )
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        out[name] = value
    return out


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _identify(obj: object, path: Path) -> tuple[str, _Source, dict | None]:
    """(layout, tensors, nanoGPT model_args or None) of a loaded checkpoint."""
    if isinstance(obj, dict) and "model_args" in obj and "model" in obj:
        return NANOGPT, _Source(_strip_wrappers(obj["model"], path), path, NANOGPT), dict(obj["model_args"])
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if _is_state_dict(obj):
        state = _strip_wrappers(obj, path)
        if "tok_emb.weight" in state:
            return LLMS, _Source(state, path, LLMS), None
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f'{path}: not a checkpoint layout this importer knows (found {keys}). Expected an "LLMs from scratch" '
        "GPTModel state dict (tok_emb.weight, trf_blocks.0.att.W_query.weight, ...), bare or inside "
        '{"model_state_dict": ...}, or a nanoGPT ckpt.pt with "model_args" and "model".'
    )


def _heads_for(n_embd: int, n_head: int | None, path: Path) -> int:
    """``n_head`` as given, else the head count of the OpenAI size with this width."""
    if n_head is not None:
        return n_head
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        if PRESETS[name]["n_embd"] == n_embd:
            return PRESETS[name]["n_head"]
    raise ValueError(
        f"{path}: the number of attention heads is not stored in this checkpoint and n_embd={n_embd} matches "
        "no GPT-2 size (768/12, 1024/16, 1280/20, 1600/25 heads). Pass it with --n-head N (n_head=N)."
    )


def _block_count(source: _Source) -> int:
    found = {int(m.group(1)) for k in source.state if (m := re.match(r"trf_blocks\.(\d+)\.", k))}
    if not found or found != set(range(len(found))):
        raise ValueError(f"{source.path}: transformer blocks are not numbered 0..N-1: found {sorted(found)}.")
    return len(found)


def _common_fields(vocab_size: int, tied: bool, activation: str) -> dict:
    special = 50256 if vocab_size > 50256 else None  # GPT-2's <|endoftext|>, where the vocabulary has it
    return dict(
        vocab_size=vocab_size,
        activation_function=activation,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=special,
        eos_token_id=special,
    )


def _llms_config(source: _Source, n_head: int | None, activation: str) -> GPT2ScratchConfig:
    """Config read from the tensor shapes of an "LLMs from scratch" state dict."""
    vocab_size, n_embd = source.take("tok_emb.weight").shape
    head = source.take("out_head.weight")
    if head.shape != (vocab_size, n_embd):
        raise ValueError(
            f"{source.path}: out_head.weight has shape {tuple(head.shape)}, not ({vocab_size}, {n_embd}) like "
            "tok_emb.weight: this is a classifier head, not a language-model head; only language models are imported."
        )
    inner = source.take("trf_blocks.0.ff.layers.0.weight").shape[0]
    return GPT2ScratchConfig(
        n_positions=source.take("pos_emb.weight").shape[0],
        n_embd=n_embd,
        n_layer=_block_count(source),
        n_head=_heads_for(n_embd, n_head, source.path),
        n_inner=inner if inner != 4 * n_embd else None,
        qkv_bias="trf_blocks.0.att.W_query.bias" in source,
        bias=True,
        **_common_fields(vocab_size, torch.equal(head, source.state["tok_emb.weight"]), activation),
    )


def _llms_state(source: _Source, n_layer: int, qkv_bias: bool) -> dict[str, torch.Tensor]:
    """This package's state dict from an "LLMs from scratch" one (q/k/v stacked into ``c_attn``)."""
    out = {ours: source.take(theirs) for theirs, ours in LLMS_TOP.items()}
    for i in range(n_layer):
        src, dst = f"trf_blocks.{i}.", f"transformer.h.{i}."
        out.update({dst + ours: source.take(src + theirs) for theirs, ours in LLMS_BLOCK.items()})
        qkv = [source.take(f"{src}att.{w}.weight") for w in QKV]  # 3 x (E, E)
        out[dst + "attn.c_attn.weight"] = torch.cat(qkv)  # (3E, E): q, k, v rows, as c_attn splits them
        if qkv_bias:
            out[dst + "attn.c_attn.bias"] = torch.cat([source.take(f"{src}att.{w}.bias") for w in QKV])
    return out


def _nanogpt_config(args: dict, source: _Source, n_head: int | None, activation: str) -> GPT2ScratchConfig:
    """Config from a nanoGPT checkpoint's ``model_args``."""
    missing = [k for k in NANOGPT_ARGS if args.get(k) is None]
    if missing:
        raise ValueError(f"{source.path}: model_args lacks {missing}; found {sorted(args)}.")
    if n_head is not None and n_head != args["n_head"]:
        raise ValueError(
            f"{source.path}: --n-head {n_head} contradicts the checkpoint's model_args n_head={args['n_head']}."
        )
    bias = bool(args.get("bias", True))
    dropout = float(args.get("dropout", 0.0))
    wte, head = source.take("transformer.wte.weight"), source.take("lm_head.weight")
    tied = wte.shape == head.shape and torch.equal(wte, head)
    return GPT2ScratchConfig(
        n_positions=args["block_size"],
        n_embd=args["n_embd"],
        n_layer=args["n_layer"],
        n_head=args["n_head"],
        qkv_bias=bias,
        bias=bias,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        **_common_fields(args["vocab_size"], tied, activation),
    )


def _load_weights(model, state: dict[str, torch.Tensor], source: _Source) -> None:
    """Copy ``state`` into ``model`` after checking that names and shapes match exactly."""
    expected = model.state_dict()
    for key, target in expected.items():
        tensor = state.get(key)
        if tensor is None:
            tensor = source.take(key)  # nanoGPT keys are ours: raises the "missing" error
            state[key] = tensor
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"{source.path}: tensor for {key} has shape {tuple(tensor.shape)}, but the configuration read from "
                f"the checkpoint (n_embd={model.config.n_embd}, n_layer={model.config.n_layer}, vocab_size="
                f"{model.config.vocab_size}, n_positions={model.config.n_positions}) needs {tuple(target.shape)}."
            )
    source.check_all_used()
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


def from_torch_checkpoint(
    path: str | os.PathLike, n_head: int | None = None, activation: str | None = None
) -> GPT2ScratchForCausalLM:
    """A :class:`GPT2ScratchForCausalLM` (float32, eval mode) holding the weights of a PyTorch checkpoint.

    ``n_head`` is needed for "LLMs from scratch" state dicts whose width is not one of GPT-2's sizes
    (the head count is not stored in them). ``activation`` (``gelu`` or ``gelu_new``) overrides the
    layout's GELU: nanoGPT checkpoints written before 2023 used the tanh form, ``gelu_new``.
    """
    return _import(Path(path), n_head, activation)[0]


def _import(path: Path, n_head: int | None, activation: str | None) -> tuple[GPT2ScratchForCausalLM, str]:
    """(model, layout name) for the checkpoint at ``path``."""
    from ..modeling_gpt2scratch import GPT2ScratchForCausalLM

    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
    layout, source, args = _identify(load_checkpoint(path), path)
    activation = activation or DEFAULT_ACTIVATION[layout]
    if layout == NANOGPT:
        config, state = _nanogpt_config(args, source, n_head, activation), {}
    else:
        config = _llms_config(source, n_head, activation)
        state = _llms_state(source, config.n_layer, config.qkv_bias)
    model = GPT2ScratchForCausalLM(config)
    _load_weights(model, state, source)
    return model.eval(), layout


def _tokenizer_folder(tokenizer_dir: str | os.PathLike | None) -> Path:
    """The vocabulary folder to ship with the model: the one given, else the default one."""
    from ..tokenizer import default_vocab_dir, find_vocab_files

    folder = Path(tokenizer_dir) if tokenizer_dir is not None else default_vocab_dir()
    if folder is None:
        raise ValueError(
            "No tokenizer files: pass --tokenizer-dir DIR with encoder.json + vocab.bpe (or vocab.json + "
            "merges.txt), e.g. the folder of an OpenAI GPT-2 download, or set GPT2SCRATCH_VOCAB_DIR."
        )
    find_vocab_files(folder)
    return folder


def _fit_vocab(config: GPT2ScratchConfig, tokenizer_dir: Path) -> None:
    """Match the vocabulary to the tokenizer shipped with the model.

    A tokenizer with more tokens than embedding rows is refused. Spare rows beyond the tokenizer's
    tokens (nanoGPT pads GPT-2's 50257 to 50304, a multiple of 64) stay in the weights as padding
    (``pad_vocab_size_multiple``), so the model never produces ids the tokenizer cannot decode.
    """
    from ..tokenizer import find_vocab_files

    encoder, _ = find_vocab_files(tokenizer_dir)
    n_tokens = len(json.loads(encoder.read_text(encoding="utf-8")))
    rows = config.padded_vocab_size
    if rows < n_tokens:
        raise ValueError(
            f"The checkpoint's vocabulary has {rows} rows but the tokenizer in {tokenizer_dir} has "
            f"{n_tokens} tokens. Pass --tokenizer-dir with the tokenizer this model was trained with."
        )
    if rows > n_tokens:
        multiple = _pad_multiple(n_tokens, rows)
        config.vocab_size, config.pad_vocab_size_multiple = n_tokens, multiple


def _pad_multiple(n_tokens: int, rows: int) -> int:
    """The smallest power of two that rounds ``n_tokens`` up to ``rows``, else ``rows`` itself."""
    for k in range(rows.bit_length() + 1):
        m = 2**k
        if -(-n_tokens // m) * m == rows:
            return m
    return rows


def _model_card(src: Path, layout: str, config: GPT2ScratchConfig) -> str:
    from ..model_card import model_card

    source = (
        f"Converted from the {layout} checkpoint `{src.name}` with `gpt2scratch convert-torch` "
        f"(qkv_bias={config.qkv_bias}, bias={config.bias}, activation {config.activation_function}, "
        f"tied embeddings {config.tie_word_embeddings})."
    )
    return model_card(config, title=f"{src.stem} (GPT-2 architecture)", source=source)


def convert_torch(
    src: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    n_head: int | None = None,
    force: bool = False,
    activation: str | None = None,
) -> Path:
    """Convert a PyTorch checkpoint (see :func:`from_torch_checkpoint`) into a model folder ``out``.

    The folder (safetensors, config, code, tokenizer, generation config, model card) is written
    atomically; an existing ``out`` is replaced only with ``force``.
    """
    from ..io import check_new_folder, save_model_folder

    src, out = Path(src), Path(out)
    check_new_folder(out, force)
    tokenizer_dir = _tokenizer_folder(tokenizer_dir)
    model, layout = _import(src, n_head, activation)
    _fit_vocab(model.config, tokenizer_dir)
    card = _model_card(src, layout, model.config)
    return save_model_folder(model, out, tokenizer_dir, model_card=card, force=force)


def _cmd_convert_torch(args) -> int:
    out = convert_torch(
        args.src, args.out, tokenizer_dir=args.tokenizer_dir, n_head=args.n_head, force=args.force,
        activation=args.activation,
    )  # fmt: skip
    print(f"Wrote {out}")
    return 0


def register(subparsers) -> None:
    """Add ``convert-torch SRC OUT [--tokenizer-dir DIR] [--n-head N] [--force]``."""
    p = subparsers.add_parser(
        "convert-torch",
        help='convert an "LLMs from scratch" GPTModel or nanoGPT checkpoint into a model folder',
        description='Convert a PyTorch checkpoint ("LLMs from scratch" GPTModel state dict, bare or inside '
        '{"model_state_dict": ...}; or nanoGPT ckpt.pt) into a model folder. Loaded with '
        "torch.load(weights_only=True): files that carry code are refused.",
    )
    p.add_argument("src", metavar="SRC", help="the .pt / .pth checkpoint file")
    p.add_argument("out", metavar="OUT", help="model folder to write")
    p.add_argument(
        "--tokenizer-dir",
        metavar="DIR",
        help="folder with encoder.json + vocab.bpe (default: $GPT2SCRATCH_VOCAB_DIR, else ../shared/data/gpt2_vocab)",
    )
    p.add_argument(
        "--n-head", type=int, metavar="N", help="attention heads (needed when n_embd is not a GPT-2 size)"
    )
    p.add_argument(
        "--activation", choices=ACTIVATIONS, help="override the GELU form (nanoGPT before 2023: gelu_new)"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_convert_torch)
