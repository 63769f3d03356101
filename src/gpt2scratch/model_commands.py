"""``gpt2scratch`` subcommands for models: init, generate, info, convert-hf, export-hf."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_overrides(pairs: list[str]) -> dict:
    """``["n_layer=4", "attn_pdrop=0.0"]`` → ``{"n_layer": 4, "attn_pdrop": 0.0}`` (JSON values, else strings)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE pairs, got {pair!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_init(args) -> None:
    import torch

    from .configuration_gpt2scratch import GPT2ScratchConfig
    from .io import save_model_folder
    from .model_card import model_card
    from .modeling_gpt2scratch import GPT2ScratchForCausalLM
    from .tokenizer import default_vocab_dir, load_encoding

    overrides = parse_overrides(args.set or [])
    unknown = sorted(set(overrides) - set(GPT2ScratchConfig().to_dict()))
    if unknown:
        raise ValueError(f"Unknown config field(s) {unknown}; see `gpt2scratch info` for the field names.")
    vocab = args.tokenizer_dir or default_vocab_dir()
    if vocab is None:
        raise FileNotFoundError(
            "No GPT-2 vocabulary found; pass --tokenizer-dir with encoder.json + vocab.bpe."
        )
    encoding = load_encoding(vocab)  # vocab_size and <|endoftext|> follow the tokenizer
    eot = encoding.eot_token
    overrides = {"vocab_size": encoding.n_vocab, "bos_token_id": eot, "eos_token_id": eot, **overrides}
    if overrides["vocab_size"] < encoding.n_vocab:
        raise ValueError(
            f"--set vocab_size={overrides['vocab_size']} is smaller than the tokenizer in {vocab} "
            f"({encoding.n_vocab} tokens); leave vocab_size out to size it from the tokenizer."
        )
    torch.manual_seed(args.seed)
    model = GPT2ScratchForCausalLM(GPT2ScratchConfig.from_preset(args.preset, **overrides))
    source = (
        f"Created by `gpt2scratch init {args.preset}` (seed {args.seed}): randomly initialised with GPT-2's "
        "initialisation, not trained. Train it with `scripts/finetune.py --model FOLDER`."
    )
    card = model_card(model.config, title=f"GPT-2 architecture ({args.preset}), untrained", source=source)
    save_model_folder(model, args.out, vocab, model_card=card, force=args.force)
    print(f"Wrote {args.out}: {args.preset}, {model.num_parameters():,} parameters.")


def cmd_generate(args) -> None:
    """Stream a continuation of ``--prompt``: the prompt keeps its LAST tokens when prompt + new tokens
    exceed the model's context (a warning says how many were dropped); impossible options are errors."""
    import torch
    from transformers import TextStreamer

    from .loading import load_model
    from .tokenizer import encode, hf_tokenizer, load_encoding

    check_sampling(args)
    loaded = load_model(args.model, tokenizer_dir=args.tokenizer_dir)
    model = loaded.model
    if args.weights != "fp32":
        from .fast import quantized_for_cpu

        model = quantized_for_cpu(model, args.weights, inplace=True)  # no second fp32 copy
        print(
            f"gpt2scratch generate: decoding with {args.weights} weights (a quantized copy)", file=sys.stderr
        )
    ids = fit_prompt(
        encode(load_encoding(loaded.tokenizer_dir), args.prompt), args.max_new_tokens, model.config
    )
    ids = torch.tensor([ids])
    streamer = TextStreamer(hf_tokenizer(loaded.tokenizer_dir), skip_prompt=False)
    sample = args.temperature > 0
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        temperature=args.temperature if sample else None,
        top_k=args.top_k if sample else None,
        top_p=args.top_p if sample else None,
        pad_token_id=model.config.eos_token_id,
        streamer=streamer,
    )


def check_sampling(args) -> None:
    """Refuse sampling options that cannot work, before the model is loaded."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}.")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}.")


def fit_prompt(ids: list[int], max_new_tokens: int, config) -> list[int]:
    """The prompt's last tokens that leave room for ``max_new_tokens`` in ``n_positions`` (warning if cut)."""
    context = config.n_positions
    if not ids:
        raise ValueError("The prompt is empty; give some text with --prompt.")
    if max_new_tokens >= context:
        raise ValueError(
            f"--max-new-tokens {max_new_tokens} leaves no room for the prompt: the model's context is "
            f"n_positions={context} tokens; use at most {context - 1}."
        )
    room = context - max_new_tokens
    if len(ids) > room:
        print(
            f"gpt2scratch generate: warning: the prompt has {len(ids)} tokens; with --max-new-tokens "
            f"{max_new_tokens} only its last {room} fit in n_positions={context}, the first {len(ids) - room} "
            "were dropped.",
            file=sys.stderr,
        )
    return ids[-room:]


def cmd_info(args) -> None:
    from .loading import load_model

    loaded = load_model(args.model, tokenizer_dir=args.tokenizer_dir)
    model = loaded.model
    info = {
        "model": str(args.model),
        "kind": loaded.kind,
        "class": type(model).__name__,
        "parameters": model.num_parameters(),
        "dtype": str(next(model.parameters()).dtype),
        "tokenizer_dir": str(loaded.tokenizer_dir),
        "config": model.config.to_diff_dict(),
    }
    print(json.dumps(info, indent=2, default=str))


def cmd_convert_hf(args) -> None:
    from .conversion.hf_gpt2 import convert_hf
    from .conversion.variants import variant_from_args

    variant = variant_from_args(args)
    print(f"Wrote {convert_hf(args.src, args.out, args.tokenizer_dir, args.force, variant, args.drop_wpe)}")


def cmd_export_hf(args) -> None:
    from .conversion.hf_gpt2 import export_hf

    print(f"Wrote {export_hf(args.src, args.out, force=args.force)}")


def register(sub: argparse._SubParsersAction) -> None:
    from .conversion.variants import add_variant_arguments

    p = sub.add_parser("init", help="write a randomly initialised model folder")
    p.add_argument("preset", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or tiny (or 124M ... 1558M)")
    p.add_argument("out", type=Path)
    p.add_argument("--tokenizer-dir", type=Path, help="folder with encoder.json + vocab.bpe")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("generate", help="generate text, printing tokens as they come")
    p.add_argument(
        "model", help="model folder, checkpoint, OpenAI folder, transformers GPT-2 folder or init:PRESET"
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--tokenizer-dir", type=Path)
    p.add_argument(
        "--weights",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp16/int8: decode with a quantized copy of the weights on the CPU (faster, other outputs; "
        "benchmarks/bench_quantized.py)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="describe a model")
    p.add_argument("model")
    p.add_argument("--tokenizer-dir", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert-hf", help="transformers GPT-2 folder → a folder of this package")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--tokenizer-dir", type=Path, help="used when SRC has no tokenizer files")
    p.add_argument("--force", action="store_true")
    add_variant_arguments(p)
    p.set_defaults(func=cmd_convert_hf)

    p = sub.add_parser("export-hf", help="a folder of this package → a plain transformers GPT-2 folder")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_export_hf)
