"""The ``gpt2scratch`` command: each subcommand is a thin call into the package.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, adding its subcommands with
``set_defaults(func=...)``; heavy imports happen inside the command functions so ``--help`` is fast.

Exit codes (``EXIT_CODES``; the README lists them): every failure a user can act on prints one line on
stderr, no traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

COMMAND_MODULES = (
    "gpt2scratch.model_commands",  # init, generate, chat, info, convert-hf, export-hf
    "gpt2scratch.conversion.openai",  # convert-openai
    "gpt2scratch.conversion.download",  # download-openai
    "gpt2scratch.conversion.torch_checkpoints",  # convert-torch
    "gpt2scratch.training.cli",  # finetune
    "gpt2scratch.training.commands",  # classify, evaluate
    "gpt2scratch.hub",  # push
    "gpt2scratch.tokenizer_training",  # train-tokenizer
)
# Errors a user can act on: printed as one line, exit code 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, KeyError)
EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (a bug: a traceback is printed)",
    2: "bad input: an option, file or folder that cannot work, or a download or Hub request that failed "
    "(the message names it and what to do)",
    3: "training stopped: non-finite loss or gradients (--on-nonfinite stop); the last good checkpoint is kept",
    4: "no space left on device: the partial write was removed, the previous checkpoint or file is intact",
    130: "interrupted (SIGINT, Ctrl-C); finetune saved a checkpoint first: resume with --resume-from latest",
    141: "stdout's reader closed the pipe early (e.g. `| head`); nothing more is printed",
    143: "terminated (SIGTERM); finetune saved a checkpoint first: resume with --resume-from latest",
}


class CommandError(Exception):
    """A failure with its own exit code from ``EXIT_CODES``; its message is printed as one line."""

    exit_code = 1


class DiskFullError(CommandError):
    """ENOSPC (or a quota) while writing; raised after the partial write was removed."""

    exit_code = 4


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: its options may come anywhere among its positionals (``classify MODEL
    --batch-size 4 TEXT...``), as ``parse_intermixed_args`` allows. argparse parses a subcommand through
    its parser's ``parse_known_args``, so that is where intermixed parsing is switched on."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # the two passes of parse_known_intermixed_args (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2scratch", description="GPT-2 from scratch, as a Hugging Face model."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpt2scratch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
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
    if not live_terminal():  # progress bars would be redrawn line after line into a log
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading and saving weights
        disable_progress_bars()  # Hub uploads (push, --push-to-hub)
    return run_reporting(args.command, lambda: args.func(args))


def live_terminal() -> bool:
    """Whether a progress bar redraws in place: stderr is a terminal, or a Jupyter kernel runs (tqdm's widget).
    Elsewhere (a log file, a pipe, a batch job) it would write every redraw into the log."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def run_reporting(command: str, call) -> int:
    """``call()``'s return value as an exit status; an error a user can act on becomes one line on stderr and
    its ``EXIT_CODES`` code (a bug keeps its traceback). Shared by ``gpt2scratch`` and ``scripts/finetune.py``."""
    try:
        code = int(call() or 0)
        sys.stdout.flush()  # a reader that stopped early (``| head``) shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:
        return _fail(command, "interrupted.", 130)
    except Exception as e:
        code = exit_code(e)
        if code is None:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        if code == 4 and not isinstance(e, CommandError):
            message = f"no space left on device ({e}); free some space and run again."
        return _fail(command, message, code)


def exit_code(error: BaseException) -> int | None:
    """The ``EXIT_CODES`` code of an error a user can act on; None for a bug (shown with its traceback)."""
    if isinstance(error, CommandError):
        return error.exit_code
    if is_disk_full(error):
        return 4
    return 2 if isinstance(error, USER_ERRORS) else None


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``gpt2scratch info M | head -1``): stop quietly, as a program killed by
    SIGPIPE would; stdout goes to /dev/null so that Python's exit flush has nowhere to fail."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _fail(command: str, message, code: int) -> int:
    print(f"gpt2scratch {command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    # python -m gpt2scratch.cli: call the package's module, whose error classes the commands raise
    from gpt2scratch.cli import main as package_main

    sys.exit(package_main())
