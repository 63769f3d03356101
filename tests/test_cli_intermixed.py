"""Options anywhere among a subcommand's positionals (``classify MODEL --batch-size 4 TEXT...``), with
each subcommand's own usage in ``--help`` and errors. Parsing only: no model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2scratch.cli import build_parser


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "M", "--batch-size", "4", "one", "two"],
        ["classify", "M", "one", "--batch-size", "4", "two"],
        ["classify", "--batch-size", "4", "M", "one", "two"],
        ["classify", "M", "one", "two", "--batch-size", "4"],
    ],
)
def test_classify_takes_options_between_its_texts(argv):
    args = parse(*argv)
    assert (args.model, args.texts, args.batch_size) == ("M", ["one", "two"], 4)


def test_train_tokenizer_takes_options_between_its_files():
    args = parse("train-tokenizer", "a.txt", "--vocab-size", "300", "b.txt", "out", "--force")
    assert (args.files, args.out, args.vocab_size, args.force) == (
        [Path("a.txt"), Path("b.txt")],
        Path("out"),
        300,
        True,
    )


def test_double_dash_still_ends_the_options():
    args = parse("classify", "M", "--batch-size", "2", "--", "--not-an-option", "-x")
    assert (args.texts, args.batch_size) == (["--not-an-option", "-x"], 2)


def test_generate_options_around_the_model():
    args = parse("generate", "--max-new-tokens", "3", "M", "--prompt", "hi")
    assert (args.model, args.prompt, args.max_new_tokens) == ("M", "hi", 3)


def test_help_and_errors_name_the_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        parse("classify", "--help")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gpt2scratch classify") and "--batch-size" in out and "TEXT" in out
    with pytest.raises(SystemExit) as done:
        parse("classify", "M", "--batch-size", "x", "one")
    err = capsys.readouterr().err
    assert done.value.code == 2 and "usage: gpt2scratch classify" in err
    assert "argument --batch-size: invalid int value: 'x'" in err
    with pytest.raises(SystemExit):
        parse("classify", "M", "one", "--no-such-option")
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("generate", "M")
    assert "one of the arguments --prompt --prompt-file --instruction is required" in capsys.readouterr().err


def test_every_subcommand_parses_intermixed_and_shows_its_help(capsys):
    """No subcommand has an argument that intermixed parsing refuses (a REMAINDER positional, say)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"classify", "generate", "finetune", "train-tokenizer"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: gpt2scratch {name}")
