"""Lossless weight exchange with transformers' own GPT-2 (``GPT2LMHeadModel`` / ``GPT2Model``).

transformers' GPT-2 stores its linear layers as ``Conv1D`` (in × out); this package uses ``nn.Linear``
(out × in). Converting transposes those four matrices per block and renames nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..configuration_gpt2scratch import GPT2ScratchConfig
from ..io import atomic_folder, save_model_folder
from ..model_card import model_card
from ..modeling_gpt2scratch import GPT2ScratchForCausalLM
from ..tokenizer import save_tokenizer
from .variants import to_variant

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BARE_MODEL_KEYS = {"wte", "wpe", "h", "ln_f"}  # a GPT2Model state dict has no "transformer." prefix
VOCAB_KEYS = ("transformer.wte.weight", "lm_head.weight")
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
        raise ValueError(
            f"This GPT-2 config uses options this package does not implement: {unsupported or ['scale_attn_weights=False']}."
        )
    return GPT2ScratchConfig(**{f: getattr(hf_config, f) for f in CONFIG_FIELDS})


def state_dict_from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers GPT-2 state dict (``GPT2LMHeadModel`` or bare ``GPT2Model``) → ours (``ForCausalLM``)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old causal-mask buffers, not weights
        key = f"transformer.{name}" if name.split(".")[0] in BARE_MODEL_KEYS else name
        out[key] = tensor
    out = _transpose_conv1d(out)
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``ForCausalLM`` state dict → transformers ``GPT2LMHeadModel`` keys and layout."""
    return _transpose_conv1d(dict(state))


def from_hf_model(hf_model, variant: dict | None = None, drop_wpe: bool = False) -> GPT2ScratchForCausalLM:
    """A transformers ``GPT2LMHeadModel`` (or ``GPT2Model``) → this package's causal LM, same numbers; or, given
    ``variant`` fields (e.g. ``{"n_kv_head": 4}``), that architecture variant (:mod:`.variants`)."""
    config, state = to_variant(state_dict_from_hf(hf_model.state_dict()), config_from_hf(hf_model.config),
                               variant or {}, drop_wpe)  # fmt: skip
    model = GPT2ScratchForCausalLM(config)
    model.load_state_dict(state, strict=True)
    return model


def to_hf_model(model: GPT2ScratchForCausalLM):
    """This package's causal LM → a plain transformers ``GPT2LMHeadModel`` (no remote code needed)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = model.config
    variant = {f: getattr(config, f) for f in ("position_embedding_type", "n_kv_head", "sliding_window")}
    if variant != {"position_embedding_type": "learned", "n_kv_head": config.n_head, "sliding_window": None}:
        raise ValueError(
            f"transformers' GPT-2 has learned positions, multi-head attention and no sliding window; this model "
            f"has {variant}, so it cannot be exported as GPT2LMHeadModel."
        )
    if not (config.bias and config.qkv_bias) or not config.tie_word_embeddings:
        raise ValueError(
            "transformers' GPT-2 always has biases and a tied head; this model has "
            f"bias={config.bias}, qkv_bias={config.qkv_bias}, tie_word_embeddings={config.tie_word_embeddings}, "
            "so it cannot be exported as GPT2LMHeadModel."
        )
    hf = GPT2LMHeadModel(GPT2Config(**{f: getattr(config, f) for f in CONFIG_FIELDS}))
    state = {k: v[: config.vocab_size] if k in VOCAB_KEYS else v for k, v in model.state_dict().items()}
    hf.load_state_dict(state_dict_to_hf(state), strict=True)
    return hf


def hf_vocab_dir(src: Path, workdir: Path) -> Path | None:
    """A folder with vocab.json + merges.txt for the tokenizer of transformers folder ``src``
    (``vocab.json`` + ``merges.txt`` directly, else extracted from ``tokenizer.json``), or None."""
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        return src
    if not (src / "tokenizer.json").is_file():
        return None
    bpe = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (workdir / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False), encoding="utf-8")
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return workdir


def convert_hf(
    src: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer_dir=None,
    force: bool = False,
    variant: dict | None = None,
    drop_wpe: bool = False,
) -> Path:
    """A transformers GPT-2 folder → a model folder of this package (tokenizer from ``src``, else
    ``tokenizer_dir``), optionally as an architecture variant (see :func:`from_hf_model`)."""
    from transformers import GPT2LMHeadModel

    src = local_folder(src, "hf-gpt2")
    model = from_hf_model(GPT2LMHeadModel.from_pretrained(src), variant, drop_wpe)
    with tempfile.TemporaryDirectory() as work:
        vocab = hf_vocab_dir(src, Path(work)) or tokenizer_dir
        if vocab is None:
            raise FileNotFoundError(
                f"{src} has no tokenizer (tokenizer.json or vocab.json + merges.txt); pass --tokenizer-dir."
            )
        source = f"Converted by `gpt2scratch convert-hf` from transformers' GPT-2 folder `{src.name}/`" + (
            f", as the variant {variant}." if variant else " (same weights, same logits)."
        )
        card = model_card(
            model.config, title="GPT-2, converted from transformers' GPT2LMHeadModel", source=source
        )
        return save_model_folder(model, out, vocab, model_card=card, force=force)


def export_hf(src: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> Path:
    """A model folder of this package (or a training checkpoint) → a folder plain
    ``GPT2LMHeadModel.from_pretrained`` loads."""
    from ..loading import weights_read

    src = local_folder(src, "folder", "checkpoint")
    architectures = json.loads((src / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    if any(name != GPT2ScratchForCausalLM.__name__ for name in architectures):
        raise ValueError(
            f"{src} holds a {', '.join(architectures)}: export-hf writes a language model (GPT2LMHeadModel) and "
            "would drop its head; export a causal-LM folder."
        )
    with weights_read(src):
        model = GPT2ScratchForCausalLM.from_pretrained(src)
    hf = to_hf_model(model)
    with atomic_folder(out, force=force) as tmp:
        hf.save_pretrained(tmp)
        save_tokenizer(src, tmp, model_max_length=model.config.n_positions)
    return Path(out)


KINDS = {  # loading.resolve_folder's kinds, as a user knows them
    "folder": "a gpt2scratch model folder (config.json model_type 'gpt2scratch')",
    "checkpoint": "a gpt2scratch training checkpoint (config.json model_type 'gpt2scratch')",
    "adapter": "a PEFT adapter folder (adapter_config.json)",
    "hf-gpt2": "a transformers GPT-2 folder (config.json model_type 'gpt2')",
    "openai": "an OpenAI checkpoint folder (hparams.json; convert it with convert-openai)",
}


def local_folder(src: str | os.PathLike, *kinds: str) -> Path:
    """The folder holding ``src``'s config, found as every MODEL argument is (``loading.resolve_folder``:
    local paths only, never the Hub), refused with a one-line reason unless it is one of ``kinds``."""
    from ..hub import REPO_ID
    from ..loading import resolve_folder

    wanted = " or ".join(KINDS[k].split(" (")[0] for k in kinds)
    if not Path(src).exists():
        hub = (
            f"; a Hub repository id is not downloaded here: fetch it first (hf download {src} --local-dir DIR)"
            if REPO_ID.match(str(src))
            else ""
        )
        raise FileNotFoundError(f"{src} does not exist: give {wanted}{hub}.")
    folder, kind = resolve_folder(src)
    if kind not in kinds:
        raise ValueError(f"{src} is {KINDS[kind]}, not {wanted}.")
    return folder
