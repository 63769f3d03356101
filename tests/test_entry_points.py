"""``python -m gpt2scratch`` is the same command as the ``gpt2scratch`` script."""

import subprocess
import sys


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2scratch", *args], capture_output=True, text=True, timeout=120
    )


def test_module_lists_the_commands():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    for command in ("init", "generate", "finetune", "convert-openai", "push"):
        assert command in result.stdout


def test_module_reports_a_user_error_as_one_line(tmp_path):
    result = run_module("info", str(tmp_path / "no-such-model"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no-such-model" in result.stderr


def test_version():
    from gpt2scratch import __version__

    result = run_module("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gpt2scratch {__version__}"


def test_no_progress_bars_without_a_terminal(tmp_path, vocab_dir):
    """stderr to a pipe or a log: transformers' loading and saving bars stay out of it (one line each redraw)."""
    init = run_module("init", "tiny", str(tmp_path / "m"), "--tokenizer-dir", str(vocab_dir))
    assert init.returncode == 0, init.stderr
    generate = run_module("generate", str(tmp_path / "m"), "--prompt", "Hi", "--max-new-tokens", "2")
    assert generate.returncode == 0 and generate.stdout.startswith("Hi"), generate.stderr
    assert "Writing model shards" not in init.stderr and "Loading weights" not in generate.stderr
