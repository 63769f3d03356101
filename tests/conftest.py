"""Shared test fixtures: the real data in ../shared/data, tiny configs, isolated subprocesses."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data, or where GPT2SCRATCH_DATA says (a copy carried to a machine that has no ../shared, as the GPU
# machine, benchmarks/run_on_gpu.sh)
SHARED_DATA = Path(os.environ.get("GPT2SCRATCH_DATA") or REPO.parent / "shared" / "data")


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing, and CI always has ../shared/data")
        pytest.skip(f"{path} not found: the real data folder ../shared/data is not on this machine")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: skips where it is missing, fails under CI=true."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def small_vocab(tmp_path_factory, shared_data) -> Path:
    """A 300-token byte-level BPE (encoder.json + vocab.bpe): it fits the fixtures' n_vocab (300, 500), as the
    converter requires; GPT-2's own 50257-token vocabulary does not."""
    from gpt2scratch.tokenizer_training import read_texts, train_tokenizer

    texts = read_texts([shared_data / "corpora" / "the-verdict.txt"])
    return train_tokenizer(texts, 300, tmp_path_factory.mktemp("bpe") / "bpe300")


@pytest.fixture(scope="session")
def vocab_dir(shared_data) -> Path:
    """The official GPT-2 vocabulary files (encoder.json, vocab.bpe)."""
    return _need(shared_data / "gpt2_vocab")


@pytest.fixture
def benchmark_script(monkeypatch):
    """Import ``benchmarks/<name>.py`` by name, with its folder on ``sys.path`` as when it runs as a script
    (so that it finds its siblings)."""
    import importlib

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module


@pytest.fixture
def tiny_config():
    from gpt2scratch import GPT2ScratchConfig

    return GPT2ScratchConfig.from_preset("tiny", vocab_size=50257)


def run_isolated(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that cannot import gpt2scratch (as on a user's machine
    where the package is not installed)."""
    prelude = (
        "import sys\n"
        f"sys.path = [p for p in sys.path if p not in ('', {str(REPO / 'src')!r})]\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('gpt2scratch') is None, 'gpt2scratch is importable'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``gpt2scratch ARGS...`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2scratch.cli", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture
def transformers_log():
    """The messages transformers logs (its handler writes to the stderr of its first import, not capsys')."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def training_forkserver(test_module: str):
    """A multiprocessing context whose runs are forked from a server that has imported torch, the training
    code and ``test_module`` (the children's targets) once."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "gpt2scratch.training.loop", "datasets", "accelerate", test_module])
    return ctx


def output_into(log: str) -> None:
    """In a forked child: its stdout and stderr into the file ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate's process-wide state is reset after every test: a run refused in this process after its
    ``Accelerator`` was made would otherwise leave a single-process state that later in-process runs, and the
    processes a later test forks (``debug_launcher``), inherit."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
