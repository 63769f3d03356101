"""``gpt2scratch`` subcommands for models: init, generate, chat, info, convert-hf, export-hf."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
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


SAMPLE_SEPARATOR = "-" * 15  # printed between the texts of --num-samples


def cmd_generate(args) -> None:
    """Stream a continuation of ``--prompt``, or with ``--instruction`` only the response to it: the prompt
    keeps its LAST tokens when prompt + new tokens exceed the model's context (a warning says how many were
    dropped); impossible options are errors."""
    check_sampling(args)
    text = prompt_text(args)
    generator = Generator.load(args, "generate")
    for i in range(args.num_samples):
        if i:
            print(SAMPLE_SEPARATOR, flush=True)
        generator.stream(text, response_only=args.instruction is not None)


def cmd_chat(args) -> None:
    """Read instructions from stdin, one per line, and stream the model's response to each (the Alpaca template
    of ``generate --instruction``), with the model loaded once; ends at end of input, ``exit`` or ``quit``. At a
    terminal, Ctrl-C stops the response being printed and asks for the next instruction."""
    from .training.data import format_prompt

    check_sampling(args)
    generator = Generator.load(args, "chat")
    interactive = sys.stdin.isatty()
    if interactive:
        print("Instructions, one per line (Ctrl-D or 'exit' ends):", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return
        if not line.strip():
            continue
        try:
            generator.stream(format_prompt(line.strip()), response_only=True)
        except KeyboardInterrupt:  # at a terminal, Ctrl-C stops this response, not the session
            if not interactive:
                raise
            print("\n(stopped)", file=sys.stderr)


@dataclass
class Generator:
    """A language model loaded for ``generate``/``chat`` with its tokenizer and sampling options."""

    model: object
    encoding: object
    tokenizer: object
    args: object
    command: str

    @classmethod
    def load(cls, args, command: str) -> Generator:
        """The model of ``args.model`` on ``--device`` (a quantized copy with ``--weights``), torch's random
        generator seeded with ``--seed`` if given."""
        import torch

        from .tokenizer import hf_tokenizer, load_encoding

        device = generation_device(args.device, args.weights)
        loaded = load_language_model(args.model, args.tokenizer_dir, command=command, device=device)
        model = loaded.model
        check_room(args.max_new_tokens, model.config)
        if args.seed is not None:
            torch.manual_seed(args.seed)
        if args.weights != "fp32":
            from .fast import quantized_for_cpu

            model = quantized_for_cpu(model, args.weights, inplace=True)  # no second fp32 copy
            print(
                f"gpt2scratch {command}: decoding with {args.weights} weights (a quantized copy)",
                file=sys.stderr,
            )
        tokenizer_dir = loaded.tokenizer_dir
        return cls(model, load_encoding(tokenizer_dir), hf_tokenizer(tokenizer_dir), args, command)

    def stream(self, text: str, response_only: bool) -> None:
        """Print the model's continuation of ``text`` as it comes (only the new text when ``response_only``,
        as the model card's instruction example decodes it)."""
        import torch
        from transformers import TextStreamer

        from .tokenizer import encode

        args, model = self.args, self.model
        ids = fit_prompt(encode(self.encoding, text), args.max_new_tokens, model.config, self.command)
        ids = torch.tensor([ids], device=model.device)
        sample = args.temperature > 0
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=args.max_new_tokens,
            do_sample=sample,
            temperature=args.temperature if sample else None,
            top_k=args.top_k if sample else None,
            top_p=args.top_p if sample else None,
            repetition_penalty=args.repetition_penalty,
            stop_strings=args.stop,
            tokenizer=self.tokenizer if args.stop else None,  # transformers matches stop strings through it
            pad_token_id=model.config.eos_token_id,
            streamer=TextStreamer(
                self.tokenizer, skip_prompt=response_only, skip_special_tokens=response_only
            ),
        )


def generation_device(name: str, weights: str):
    """``--device`` for ``generate`` and ``chat``: a quantized copy (``--weights fp16/int8``) decodes on the CPU
    only, so ``auto`` means the CPU there."""
    from .loading import resolve_device

    if weights == "fp32":
        return resolve_device(name)
    device = resolve_device("cpu" if name == "auto" else name)
    if device.type != "cpu":
        raise ValueError(
            f"--weights {weights} decodes on the CPU only; drop --device {name} or use --weights fp32."
        )
    return device


def prompt_text(args) -> str:
    """``--prompt`` as given, or ``--instruction`` (and ``--input``) in the Alpaca template that instruction
    fine-tuning trains on, ending where the model's response starts."""
    if args.instruction is None:
        if args.input is not None:
            raise ValueError("--input fills the Alpaca template's input field: use it with --instruction.")
        if args.prompt_file is not None:
            from .training.commands import read_text

            return read_text(args.prompt_file, "--prompt-file")
        return args.prompt
    if not args.instruction.strip():
        raise ValueError('--instruction is empty; give the task, e.g. --instruction "Summarise the text."')
    from .training.data import format_prompt  # light: torch and the tokenizer, no [train] extra

    return format_prompt(args.instruction, args.input or "")


def load_language_model(spec: str, tokenizer_dir=None, command: str = "generate", device=None):
    """``load_model`` as a causal LM (``generate``, ``evaluate --task lm``). A classifier (folder, checkpoint
    or adapter) loads as the classifier it is, so transformers reports no unused ``score`` head, and runs as
    its backbone under the LM head tied to its token embeddings (GPT-2's LM head is ``wte``); a one-line note
    says so."""
    from dataclasses import replace

    from .loading import load_model

    found = model_spec(spec)
    if found.architecture != CLASSIFIER:
        return load_model(spec, tokenizer_dir=tokenizer_dir, device=device)
    if not found.config.tie_word_embeddings:
        raise ValueError(
            f"{spec} is a classifier with untied embeddings (tie_word_embeddings=false): it has no "
            "language-model head. Use the model it was fine-tuned from."
        )
    loaded = load_model(spec, task="classification", tokenizer_dir=tokenizer_dir, device=device)
    print(
        f"gpt2scratch {command}: note: {spec} is a sequence classifier; using its backbone with the "
        "LM head tied to its token embeddings (its score head is not used).",
        file=sys.stderr,
    )
    return replace(loaded, model=backbone_lm(loaded.model))


def backbone_lm(classifier):
    """A causal LM on ``classifier``'s own transformer (shared, not copied), its head tied to the token
    embeddings; the rest is built on the meta device, so nothing is allocated or initialised."""
    from .model_card import meta_model
    from .modeling_gpt2scratch import GPT2ScratchForCausalLM

    lm = meta_model(GPT2ScratchForCausalLM, classifier.config)
    lm.transformer = classifier.transformer
    lm.tie_weights()
    return lm.eval()


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``generate`` and ``chat`` share: length, sampling, tokenizer, weights and device."""
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        help="divide the scores of tokens already in the text by this (> 1 repeats less; greedy too)",
    )
    parser.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop once the new text contains TEXT (repeat for several; it is printed)",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tokenizer-dir", type=Path)
    parser.add_argument(
        "--weights",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp16/int8: decode with a quantized copy of the weights on the CPU (faster, other outputs; "
        "benchmarks/bench_quantized.py)",
    )
    add_device_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (default: a CUDA GPU if there is one, else Apple's MPS, else the "
        "CPU), cpu, cuda, cuda:N or mps",
    )


def check_sampling(args) -> None:
    """Refuse sampling options that cannot work, before the model is loaded."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}.")
    if args.num_samples > 1 and args.temperature == 0:
        raise ValueError(
            f"--num-samples {args.num_samples} with --temperature 0 (greedy) would print the same text "
            f"{args.num_samples} times; sample with --temperature > 0 (e.g. 0.8)."
        )
    if not args.temperature >= 0 or math.isinf(args.temperature):
        raise ValueError(f"--temperature must be a number >= 0 (0 = greedy), got {args.temperature}.")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}.")
    if args.stop and not all(args.stop):
        raise ValueError("--stop needs a non-empty TEXT.")
    penalty = args.repetition_penalty
    if penalty is not None and not (penalty > 0 and math.isfinite(penalty)):
        raise ValueError(f"--repetition-penalty must be a number > 0 (1 = none), got {penalty}.")


def check_room(max_new_tokens: int, config) -> None:
    """Refuse a ``--max-new-tokens`` that leaves no room for a prompt in ``n_positions``."""
    if max_new_tokens >= config.n_positions:
        raise ValueError(
            f"--max-new-tokens {max_new_tokens} leaves no room for the prompt: the model's context is "
            f"n_positions={config.n_positions} tokens; use at most {config.n_positions - 1}."
        )


def fit_prompt(ids: list[int], max_new_tokens: int, config, command: str = "generate") -> list[int]:
    """The prompt's last tokens that leave room for ``max_new_tokens`` in ``n_positions`` (warning if cut)."""
    context = config.n_positions
    if not ids:
        raise ValueError("The prompt is empty; give some text with --prompt (or --prompt-file).")
    check_room(max_new_tokens, config)
    room = context - max_new_tokens
    if len(ids) > room:
        print(
            f"gpt2scratch {command}: warning: the prompt has {len(ids)} tokens; with --max-new-tokens "
            f"{max_new_tokens} only its last {room} fit in n_positions={context}, the first {len(ids) - room} "
            "were dropped.",
            file=sys.stderr,
        )
    return ids[-room:]


def cmd_info(args) -> None:
    print(json.dumps(describe_model(args.model, args.tokenizer_dir), indent=2, default=str))


CAUSAL_LM, CLASSIFIER = "GPT2ScratchForCausalLM", "GPT2ScratchForSequenceClassification"


@dataclass
class ModelSpec:
    """What a MODEL argument names, read from its config files alone (no weights, no tokenizer)."""

    kind: str  # as loading.resolve_folder says: folder, adapter, checkpoint, hf-gpt2, openai, init
    folder: Path | None  # the folder holding the config (None for init:PRESET)
    config: object  # the GPT2ScratchConfig of the model it loads as (an adapter's: its base's)
    architecture: str  # the class it loads as: CAUSAL_LM, or CLASSIFIER when it has a trained head
    adapter: dict | None = None  # an adapter's adapter_config.json
    adapter_dir: Path | None = None  # the folder holding it


def model_spec(spec: str | os.PathLike) -> ModelSpec:
    """Read what ``spec`` is without loading it: its kind, config and own architecture
    (``config.architectures``; for an adapter, its task type), so commands can check it first."""
    from .configuration_gpt2scratch import GPT2ScratchConfig
    from .loading import resolve_folder

    if str(spec).startswith("init:"):
        return ModelSpec("init", None, GPT2ScratchConfig.from_preset(str(spec)[5:]), CAUSAL_LM)
    folder, kind = resolve_folder(spec)
    if (folder / "adapter_config.json").exists():  # kind "adapter", or a LoRA run's checkpoint
        return _adapter_spec(folder, kind)
    if kind == "hf-gpt2":
        from transformers import GPT2Config

        from .conversion.hf_gpt2 import config_from_hf

        return ModelSpec(kind, folder, config_from_hf(GPT2Config.from_pretrained(folder)), CAUSAL_LM)
    if kind == "openai":
        from .conversion.openai import config_from_hparams, read_hparams

        return ModelSpec(kind, folder, config_from_hparams(read_hparams(folder)), CAUSAL_LM)
    config = GPT2ScratchConfig.from_pretrained(folder)
    return ModelSpec(
        kind, folder, config, CLASSIFIER if CLASSIFIER in (config.architectures or []) else CAUSAL_LM
    )


def _adapter_spec(folder: Path, kind: str) -> ModelSpec:
    """A PEFT adapter folder: its base model's config (the base ``load_model`` loads); a classifier when
    trained for SEQ_CLS."""
    from .configuration_gpt2scratch import GPT2ScratchConfig
    from .loading import adapter_base_folder

    adapter = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = adapter_base_folder(folder)
    architecture = CLASSIFIER if adapter.get("task_type") == "SEQ_CLS" else CAUSAL_LM
    return ModelSpec(kind, base, GPT2ScratchConfig.from_pretrained(base), architecture, adapter, folder)


def describe_model(spec: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None) -> dict:
    """``gpt2scratch info``: what ``spec`` is, as the class it loads as, counted on the meta device (no
    weights read, so any size describes at once); the tokenizer folder is reported when there is one. An
    adapter counts as its base (the size of the merged model it loads as), its own trained parameters apart."""
    from .model_card import meta_model
    from .modeling_gpt2scratch import GPT2ScratchForCausalLM, GPT2ScratchForSequenceClassification

    found = model_spec(spec)
    cls = GPT2ScratchForSequenceClassification if found.architecture == CLASSIFIER else GPT2ScratchForCausalLM
    config = found.config
    info = {
        "model": str(spec),
        "kind": found.kind,
        "class": found.architecture,
        "parameters": sum(p.numel() for p in meta_model(cls, config).parameters()),
        "dtype": str(getattr(config, "dtype", None) or "float32").removeprefix("torch."),
        "tokenizer_dir": _vocab_dir([tokenizer_dir, *_vocab_candidates(spec, found)]),
        "config": config.to_diff_dict(),
    }
    if found.adapter is not None:
        keys = ("peft_type", "task_type", "r", "lora_alpha", "target_modules", "modules_to_save")
        info["adapter"] = {k: found.adapter.get(k) for k in keys} | {
            "base_model": str(found.folder),
            "parameters": adapter_parameters(found.adapter_dir),
        }
    return info


def adapter_parameters(folder: Path) -> int | None:
    """The parameters an adapter trains and saves (its LoRA matrices, and modules saved whole such as a
    classifier's ``score``), counted from its safetensors header alone; None without that file."""
    from safetensors import SafetensorError, safe_open

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    except SafetensorError as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); save the adapter again."
        ) from None


def _vocab_candidates(spec, found: ModelSpec) -> list:
    """Where ``load_model`` looks for the vocabulary after ``--tokenizer-dir``."""
    from .tokenizer import default_vocab_dir

    return [default_vocab_dir()] if found.kind == "init" else [spec, found.folder]


def _vocab_dir(candidates: list) -> str | None:
    """The first candidate folder holding GPT-2 vocabulary files, or None (describing needs none)."""
    from .tokenizer import find_vocab_files

    for folder in filter(None, candidates):
        try:
            find_vocab_files(folder)
        except FileNotFoundError:
            continue
        return str(folder)
    return None


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
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="text to continue")
    text.add_argument(
        "--prompt-file", metavar="FILE", help="continue the text of a UTF-8 file (- reads stdin)"
    )
    text.add_argument(
        "--instruction",
        metavar="TEXT",
        help="prompt an instruction-tuned model with the Alpaca template its fine-tuning used, and print "
        "only its response",
    )
    p.add_argument("--input", metavar="TEXT", help="with --instruction: the template's optional input field")
    p.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="sample this many continuations of the same prompt, one after another (needs --temperature > 0)",
    )
    add_sampling_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "chat",
        help="answer instructions typed one per line, with the model loaded once",
        description="Read instructions from stdin, one per line, and print the model's response to each in "
        "the Alpaca template that finetune --task instruction trains on (as generate --instruction does). "
        "Each instruction stands alone: the template has no earlier turns. Ctrl-D, exit or quit ends.",
    )
    p.add_argument(
        "model", help="an instruction-tuned model: run folder, checkpoint, adapter or model folder"
    )
    add_sampling_arguments(p)
    p.set_defaults(func=cmd_chat, num_samples=1)

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
