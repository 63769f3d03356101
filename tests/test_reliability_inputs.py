"""Bad input never crashes a command: ``generate`` with an over-long prompt (documented left-truncation,
with a warning), ``--max-new-tokens`` beyond the context or an empty prompt (exit 2); the documented exit
codes (``cli.EXIT_CODES``, listed in the README) for user errors, a full disk and Ctrl-C."""

from __future__ import annotations

import errno
import re

import pytest
from conftest import REPO

from gpt2scratch import cli
from gpt2scratch.cli import EXIT_CODES, exit_code


@pytest.fixture
def generate(capsys, vocab_dir):
    """``gpt2scratch generate init:tiny ...`` in this process (n_positions=128); (exit code, stdout, stderr)."""

    def run(*args: str):
        capsys.readouterr()
        code = cli.main(["generate", "init:tiny", "--tokenizer-dir", str(vocab_dir), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_over_long_prompt_keeps_its_last_tokens_with_a_warning(generate):
    prompt = " ".join(f"w{i}" for i in range(150))  # 300 tokens > 128
    code, out, err = generate("--prompt", prompt, "--max-new-tokens", "8")
    assert code == 0, err
    assert "only its last 120 fit in n_positions=128" in err and "first 180 were dropped" in err
    assert out.startswith(" w90 w91")  # the streamed prompt is the kept tail
    assert prompt.endswith(out.split("w149")[0] + "w149")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "hi", "--max-new-tokens", "128"], "use at most 127"),
        (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--prompt", ""], "The prompt is empty"),
        (["--prompt", "hi", "--temperature", "-1"], "--temperature must be a number >= 0"),
        (["--prompt", "hi", "--temperature", "nan"], "--temperature must be a number >= 0"),
        (["--prompt", "hi", "--temperature", "inf"], "--temperature must be a number >= 0"),
        (["--prompt", "hi", "--temperature", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--prompt", "hi", "--temperature", "1", "--top-k", "0"], "--top-k must be at least 1"),
        (["--prompt", "hi", "--repetition-penalty", "0"], "--repetition-penalty must be a number > 0"),
        (["--prompt", "hi", "--repetition-penalty", "nan"], "--repetition-penalty must be a number > 0"),
    ],
)
def test_impossible_generate_options_exit_2(generate, args, message):
    code, out, err = generate(*args)
    assert code == 2 and message in err and "Traceback" not in err


def test_exit_codes_of_errors():
    assert exit_code(FileNotFoundError("x")) == 2 and exit_code(ValueError("x")) == 2
    assert exit_code(OSError(errno.ENOSPC, "No space left on device")) == 4
    assert exit_code(OSError(errno.EIO, "I/O error")) is None  # not the user's to fix: traceback, exit 1
    assert exit_code(RuntimeError("bug")) is None


def test_full_disk_and_ctrl_c_print_one_line(monkeypatch, capsys, vocab_dir):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def interrupted(args):
        raise KeyboardInterrupt

    for func, code in ((full, 4), (interrupted, 130)):
        monkeypatch.setattr("gpt2scratch.model_commands.cmd_info", func)
        assert cli.main(["info", "init:tiny"]) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gpt2scratch info: error:")


def test_reader_that_closes_the_pipe_early_stops_the_command_quietly():
    """``gpt2scratch info M | head -1``: no BrokenPipeError traceback, the exit code of a pipe closed early."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2scratch", "info", "init:tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the command prints
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert err == ""


def test_readme_lists_every_exit_code():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = {int(c) for c in re.findall(r"^\| `(\d+)` \|", readme, re.M)}
    assert listed == set(EXIT_CODES)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_folders_written_atomically_get_the_mode_mkdir_gives(tmp_path, umask, mode):
    """``init``, ``convert-*``, ``export-hf``, ``train-tokenizer`` and runs' ``base/`` are built in a temporary
    folder and renamed: the result must be as readable as ``mkdir`` would make it, not private (0o700)."""
    import os
    import stat

    import torch
    from safetensors.torch import save_file

    from gpt2scratch.io import atomic_folder

    old = os.umask(umask)
    try:
        with atomic_folder(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
            save_file({"w": torch.zeros(2)}, tmp / "model.safetensors")  # safetensors makes it 0o600
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == mode
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "model" / name).stat().st_mode) == mode & 0o666
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
