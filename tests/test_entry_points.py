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
