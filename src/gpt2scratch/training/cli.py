"""``gpt2scratch finetune``: the same options as ``scripts/finetune.py`` (see ``training/args.py``)."""

from __future__ import annotations


def register(subparsers) -> None:
    from .args import add_arguments

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune or train a model (classification, instruction, lm)",
        description="Fine-tune or train a gpt2scratch model; run under `accelerate launch` for several processes.",
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_finetune)


def cmd_finetune(ns) -> int:
    from .args import from_namespace
    from .loop import run

    run(from_namespace(ns))
    return 0
