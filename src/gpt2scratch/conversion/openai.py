"""OpenAI's original GPT-2 release (TensorFlow checkpoint + ``hparams.json`` + vocabulary) → this package.

OpenAI's folder (``124M`` … ``1558M``) holds ``checkpoint``, ``hparams.json``, ``encoder.json``,
``vocab.bpe`` and ``model.ckpt.{index,data-00000-of-00001,meta}``. The checkpoint is read by
:mod:`.tf_bundle` (no TensorFlow); its variables map one to one onto this package's weights:

=====================================  ==========================================================
OpenAI variable                         this package (``GPT2ScratchForCausalLM``)
=====================================  ==========================================================
``model/wte`` [V, E]                    ``transformer.wte.weight`` (and the tied ``lm_head.weight``)
``model/wpe`` [P, E]                    ``transformer.wpe.weight``
``model/h{i}/ln_{1,2}/{g,b}``           ``transformer.h.{i}.ln_{1,2}.{weight,bias}``
``model/h{i}/attn/c_attn/w`` [1,E,3E]   ``transformer.h.{i}.attn.c_attn.weight`` [3E, E] (transposed)
``model/h{i}/{attn,mlp}/c_*/{w,b}``     ``transformer.h.{i}.{attn,mlp}.c_*.{weight,bias}`` (w transposed)
``model/ln_f/{g,b}``                    ``transformer.ln_f.{weight,bias}``
=====================================  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..configuration_gpt2scratch import GPT2ScratchConfig
from ..model_card import meta_model, model_card
from ..modeling_gpt2scratch import GPT2ScratchForCausalLM
from .tf_bundle import CheckpointError, TFCheckpoint, checkpoint_prefix
from .variants import add_variant_arguments, to_variant, variant_from_args

HPARAM_KEYS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
TOKENIZER_FILES = ("encoder.json", "vocab.bpe")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYER_NAMES = {  # OpenAI's name inside block h{i} → ours inside transformer.h.{i}
    "ln_1/g": "ln_1.weight",
    "ln_1/b": "ln_1.bias",
    "attn/c_attn/w": "attn.c_attn.weight",
    "attn/c_attn/b": "attn.c_attn.bias",
    "attn/c_proj/w": "attn.c_proj.weight",
    "attn/c_proj/b": "attn.c_proj.bias",
    "ln_2/g": "ln_2.weight",
    "ln_2/b": "ln_2.bias",
    "mlp/c_fc/w": "mlp.c_fc.weight",
    "mlp/c_fc/b": "mlp.c_fc.bias",
    "mlp/c_proj/w": "mlp.c_proj.weight",
    "mlp/c_proj/b": "mlp.c_proj.bias",
}
GLOBAL_NAMES = {
    "model/wte": "transformer.wte.weight",
    "model/wpe": "transformer.wpe.weight",
    "model/ln_f/g": "transformer.ln_f.weight",
    "model/ln_f/b": "transformer.ln_f.bias",
}


# --- finding the files -------------------------------------------------------------------------------


def find_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """The checkpoint prefix inside ``ckpt_dir``: the file name of the ``checkpoint`` file's
    ``model_checkpoint_path`` (it holds whatever absolute path the writing machine had), else the
    folder's single ``*.index``."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder: give the folder holding OpenAI's checkpoint files."
        )
    state = folder / "checkpoint"
    if state.is_file():
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
        if match:
            name = match.group(1).replace("\\", "/").rstrip("/").split("/")[-1]
            return folder / name
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) != 1:
        found = ", ".join(p.name for p in indexes) or "none"
        raise CheckpointError(
            f"{folder}: cannot tell which checkpoint to read (no usable 'checkpoint' file; .index files: "
            f"{found}); keep exactly one model.ckpt.index there or a 'checkpoint' file naming it."
        )
    return checkpoint_prefix(indexes[0])


def read_hparams(ckpt_dir: str | os.PathLike) -> dict:
    """``hparams.json`` of the folder, checked to hold GPT-2's five integer hyper-parameters."""
    path = Path(ckpt_dir) / "hparams.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: OpenAI's release has it beside the checkpoint.")
    try:
        hparams = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(hparams, dict):
        raise ValueError(f"{path} should hold a JSON object with keys {list(HPARAM_KEYS)}.")
    bad = [k for k in HPARAM_KEYS if not isinstance(hparams.get(k), int) or hparams[k] <= 0]
    if bad:
        raise ValueError(f"{path}: {bad} must be positive integers (expected keys {list(HPARAM_KEYS)}).")
    return hparams


def check_tokenizer_files(ckpt_dir: str | os.PathLike) -> None:
    for name in TOKENIZER_FILES:
        if not (Path(ckpt_dir) / name).is_file():
            raise FileNotFoundError(
                f"{Path(ckpt_dir) / name} is missing: the model folder's tokenizer is built from the "
                f"checkpoint folder's own {' and '.join(TOKENIZER_FILES)}; copy them there from OpenAI's release."
            )


def check_tokenizer_fits(ckpt_dir: str | os.PathLike, n_vocab: int) -> None:
    """Refuse a tokenizer with more tokens than the checkpoint's embedding has rows: its larger ids would
    index past ``wte`` the first time they occur (the model folder would look fine until then)."""
    from ..tokenizer import load_encoding

    tokens = load_encoding(ckpt_dir).n_vocab
    if tokens > n_vocab:
        raise ValueError(
            f"The tokenizer in {ckpt_dir} (encoder.json + vocab.bpe) has {tokens} tokens, but "
            f"{Path(ckpt_dir) / 'hparams.json'} gives the checkpoint n_vocab={n_vocab}: ids {n_vocab}..{tokens - 1} "
            f"would fall outside the model's vocabulary. Put the vocabulary this checkpoint was trained with "
            f"(at most {n_vocab} tokens) beside it; nothing was written."
        )


# --- mapping -----------------------------------------------------------------------------------------


def config_from_hparams(hparams: dict) -> GPT2ScratchConfig:
    """This package's config for OpenAI's ``hparams.json`` (the end-of-text id only if it is in the vocab)."""
    eos = 50256 if hparams["n_vocab"] > 50256 else None
    if hparams["n_embd"] % hparams["n_head"]:
        raise ValueError(
            f"hparams.json: n_embd ({hparams['n_embd']}) is not divisible by n_head ({hparams['n_head']})."
        )
    return GPT2ScratchConfig(
        vocab_size=hparams["n_vocab"],
        n_positions=hparams["n_ctx"],
        n_embd=hparams["n_embd"],
        n_head=hparams["n_head"],
        n_layer=hparams["n_layer"],
        bos_token_id=eos,
        eos_token_id=eos,
    )


def variable_map(hparams: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """OpenAI variable name → (our weight name, the shape ``hparams`` implies for the variable)."""
    E, V, P = hparams["n_embd"], hparams["n_vocab"], hparams["n_ctx"]
    layer_shapes = {
        "ln_1/g": (E,), "ln_1/b": (E,), "ln_2/g": (E,), "ln_2/b": (E,),
        "attn/c_attn/w": (1, E, 3 * E), "attn/c_attn/b": (3 * E,),
        "attn/c_proj/w": (1, E, E), "attn/c_proj/b": (E,),
        "mlp/c_fc/w": (1, E, 4 * E), "mlp/c_fc/b": (4 * E,),
        "mlp/c_proj/w": (1, 4 * E, E), "mlp/c_proj/b": (E,),
    }  # fmt: skip
    shapes = {"model/wte": (V, E), "model/wpe": (P, E), "model/ln_f/g": (E,), "model/ln_f/b": (E,)}
    mapping = {name: (ours, shapes[name]) for name, ours in GLOBAL_NAMES.items()}
    for i in range(hparams["n_layer"]):
        for theirs, ours in LAYER_NAMES.items():
            mapping[f"model/h{i}/{theirs}"] = (f"transformer.h.{i}.{ours}", layer_shapes[theirs])
    return mapping


def check_variables(ckpt: TFCheckpoint, mapping: dict, hparams_path: Path) -> None:
    """Every expected variable present with the shape hparams.json implies, and nothing left over."""
    missing = [name for name in mapping if name not in ckpt]
    if missing:
        raise CheckpointError(
            f"{ckpt.index_path}: missing GPT-2 variable(s) {missing[:5]} ({len(missing)} in all); does "
            f"{hparams_path} (n_layer, shapes) belong to this checkpoint?"
        )
    unused = [name for name in ckpt.names() if name not in mapping]
    if unused:
        raise CheckpointError(
            f"{ckpt.index_path}: variable(s) {unused[:5]} ({len(unused)} in all) are not part of GPT-2 as "
            f"{hparams_path} describes it (n_layer too small?)."
        )
    for name, (_, shape) in mapping.items():
        info = ckpt.info(name)
        if info.shape != shape:
            raise CheckpointError(
                f"{hparams_path} disagrees with the checkpoint: tensor {name!r} in {ckpt.index_path} has shape "
                f"{list(info.shape)}, but the hparams imply {list(shape)}; fix hparams.json or use the "
                "checkpoint it belongs to."
            )
        if info.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise CheckpointError(
                f"{ckpt.index_path}: tensor {name!r} has dtype {info.dtype}, not a float type."
            )


def to_torch(array: np.ndarray, tf_dtype: str) -> torch.Tensor:
    """A torch view of a (read-only, memory-mapped) array; bfloat16 bits become ``torch.bfloat16``."""
    with warnings.catch_warnings():  # the view is only ever read
        warnings.filterwarnings("ignore", message=".*not writable.*")
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if tf_dtype == "bfloat16" else tensor


def load_weight(
    ckpt: TFCheckpoint, name: str, dtype: torch.dtype, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """One variable as a contiguous tensor of ``dtype``, Conv1D matrices [1, in, out] → Linear [out, in].

    Without ``scratch`` the result is a fresh copy: the memory-mapped source pages are released when this
    returns. With it (a flat tensor of ``dtype``, at least as large), the result is valid until the next
    call: the mapped bytes themselves when they need no change, else the start of ``scratch`` filled."""
    source = to_torch(ckpt.read(name), ckpt.info(name).dtype)
    if source.dim() == 3:
        source = source[0].t()  # (out, in)
    if scratch is None:
        return torch.empty(source.shape, dtype=dtype).copy_(source)
    if source.dtype == dtype and source.is_contiguous():
        return source
    return scratch[: source.numel()].view(source.shape).copy_(source)


def state_dict_from_checkpoint(
    ckpt: TFCheckpoint, hparams: dict, hparams_path: Path, dtype: torch.dtype
) -> dict:
    """Our ``ForCausalLM`` state dict (``lm_head.weight`` tied to ``wte``) from an OpenAI checkpoint."""
    mapping = variable_map(hparams)
    check_variables(ckpt, mapping, hparams_path)
    state = {ours: load_weight(ckpt, name, dtype) for name, (ours, _) in mapping.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def empty_model(config: GPT2ScratchConfig, dtype: torch.dtype = torch.float32) -> GPT2ScratchForCausalLM:
    """The model on the meta device (no memory, no time spent on random init), weights typed ``dtype``."""
    return meta_model(GPT2ScratchForCausalLM, config).to(dtype)


def check_names(names, expected) -> None:
    if set(names) != set(expected):
        raise ValueError(f"converted weights do not match the model: missing {sorted(set(expected) - set(names))}, "
                         f"unexpected {sorted(set(names) - set(expected))}")  # fmt: skip


def build_model(config: GPT2ScratchConfig, state: dict) -> GPT2ScratchForCausalLM:
    """The model holding exactly ``state``."""
    model = empty_model(config)
    check_names(state, model.state_dict())
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    unset = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:
        raise ValueError(f"model weights left unset by the conversion: {unset}")
    return model.eval()


def from_openai_checkpoint(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    variant: dict | None = None,
    drop_wpe: bool = False,
) -> GPT2ScratchForCausalLM:
    """A ``GPT2ScratchForCausalLM`` holding OpenAI's checkpoint in folder ``path`` (or its ``model.ckpt``
    prefix / ``.index`` file, with ``hparams.json`` beside it), in memory, weights cast to ``dtype``; given
    ``variant`` fields (e.g. ``{"n_kv_head": 4}``), as that architecture variant (:mod:`.variants`)."""
    ckpt, hparams, hparams_path = open_openai_checkpoint(path)
    state = state_dict_from_checkpoint(ckpt, hparams, hparams_path, dtype)
    config, state = to_variant(state, config_from_hparams(hparams), variant or {}, drop_wpe)
    return build_model(config, state)


def open_openai_checkpoint(path: str | os.PathLike) -> tuple[TFCheckpoint, dict, Path]:
    """(checkpoint, hparams, hparams.json's path) for a folder or a ``model.ckpt`` prefix / ``.index`` file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    prefix = find_checkpoint(folder) if path.is_dir() else checkpoint_prefix(path)
    return TFCheckpoint(prefix), read_hparams(folder), folder / "hparams.json"


# --- the model folder --------------------------------------------------------------------------------


def card(ckpt_dir: Path, model: GPT2ScratchForCausalLM, dtype: str) -> str:
    """README.md of the converted folder (:func:`gpt2scratch.model_card.model_card`)."""
    source = f"""Converted by `gpt2scratch convert-openai` from `{ckpt_dir.name}/`, OpenAI's original release layout
(`hparams.json`, `model.ckpt.*`, `encoder.json`, `vocab.bpe`), read without TensorFlow. Every checkpoint
variable was mapped and every weight set; weights are stored as {dtype}. The tokenizer is the checkpoint's
own `encoder.json` / `vocab.bpe` (also saved as `vocab.json` / `merges.txt`).

OpenAI released the GPT-2 weights under a modified MIT license (https://github.com/openai/gpt-2); the model
card of the original model: https://github.com/openai/gpt-2/blob/master/model_card.md"""
    return model_card(
        model.config, title="GPT-2, converted from OpenAI's TensorFlow checkpoint", source=source
    )


def convert_openai(
    ckpt_dir: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    force: bool = False,
    variant: dict | None = None,
    drop_wpe: bool = False,
) -> Path:
    """Convert OpenAI's checkpoint folder ``ckpt_dir`` into a complete model folder ``out`` (atomic: a
    failure leaves no ``out``, an existing ``out`` is replaced only with ``force``), optionally as an
    architecture variant (see :func:`from_openai_checkpoint`).

    The folder is the one ``save_pretrained`` writes for :func:`from_openai_checkpoint`'s model, but the
    weights are streamed: each variable is read (memory-mapped, CRC-checked), transposed or cast into one
    reused buffer where needed, and written to ``model.safetensors`` before the next one is read."""
    from ..io import check_new_folder, save_model_folder

    ckpt_dir, out = Path(ckpt_dir), Path(out)
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {list(TORCH_DTYPES)}.")
    check_new_folder(out, force)
    find_checkpoint(ckpt_dir)
    check_tokenizer_files(ckpt_dir)
    ckpt, hparams, hparams_path = open_openai_checkpoint(ckpt_dir)
    model, weight = streamed_conversion(ckpt, hparams, hparams_path, TORCH_DTYPES[dtype], variant, drop_wpe)
    check_tokenizer_fits(ckpt_dir, hparams["n_vocab"])
    card_text = card(ckpt_dir, model, dtype)
    return save_model_folder(
        model, out, ckpt_dir, model_card=card_text, force=force, weights=weight, fork=True
    )


def streamed_conversion(
    ckpt: TFCheckpoint,
    hparams: dict,
    hparams_path: Path,
    dtype: torch.dtype,
    variant: dict | None,
    drop_wpe: bool,
) -> tuple[GPT2ScratchForCausalLM, Callable[[str], torch.Tensor]]:
    """:func:`from_openai_checkpoint`'s model left on the meta device, and a function giving each weight it
    saves by name, read from ``ckpt`` when asked; checked like the in-memory conversion, before any data is read."""
    from ..io import saved_weights

    mapping = variable_map(hparams)
    check_variables(ckpt, mapping, hparams_path)
    theirs = {ours: name for name, (ours, _) in mapping.items()}
    gpt2, fields = config_from_hparams(hparams), variant or {}
    model = empty_model(gpt2, dtype)
    check_names(theirs, saved_weights(model))
    if fields:  # the variant's config and weights, on the meta device
        state = model.state_dict()
        config, state = to_variant({ours: state[ours] for ours in theirs}, gpt2, fields, drop_wpe)
        model = empty_model(config, dtype)
        check_names(state, saved_weights(model))
    scratch = torch.empty(max(math.prod(shape) for _, shape in mapping.values()), dtype=dtype)

    def weight(ours: str) -> torch.Tensor:
        tensor = load_weight(ckpt, theirs[ours], dtype, scratch)
        return to_variant({ours: tensor}, gpt2, fields, drop_wpe)[1][ours]

    return model, weight


def _run(args: argparse.Namespace) -> None:
    variant = variant_from_args(args)
    out = convert_openai(args.ckpt_dir, args.out, args.dtype, args.force, variant, args.drop_wpe)
    print(f"Wrote {out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-openai",
        help="OpenAI's TensorFlow GPT-2 checkpoint folder → a model folder (no TensorFlow needed)",
        description="Convert OpenAI's original GPT-2 release (hparams.json, model.ckpt.*, encoder.json, "
        "vocab.bpe) into a complete model folder of this package.",
    )
    p.add_argument("ckpt_dir", type=Path, help="folder with OpenAI's checkpoint files (e.g. models/124M)")
    p.add_argument("out", type=Path, help="model folder to write (created atomically)")
    p.add_argument("--dtype", choices=list(TORCH_DTYPES), default="float32", help="weight dtype to store")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    add_variant_arguments(p)
    p.set_defaults(func=_run)
