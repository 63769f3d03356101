"""The ``gpt2scratch`` command: each subcommand is a thin call into the package.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, adding its subcommands with
``set_defaults(func=...)``; heavy imports happen inside the command functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "gpt2scratch.model_commands",  # init, generate, info, convert-hf, export-hf
    "gpt2scratch.conversion.openai",  # convert-openai
    "gpt2scratch.conversion.download",  # download-openai
    "gpt2scratch.conversion.torch_checkpoints",  # convert-torch
    "gpt2scratch.training.cli",  # finetune
    "gpt2scratch.training.commands",  # classify, evaluate
    "gpt2scratch.hub",  # push
)
# Errors a user can act on: printed as one line, exit code 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2scratch", description="GPT-2 from scratch, as a Hugging Face model."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that capability is not part of this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"gpt2scratch {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
