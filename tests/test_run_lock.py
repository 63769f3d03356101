"""One live run per output folder: a run or a resume into a folder that another live run holds (a process
holding its lock, or a real run) exits 2 naming that process, having written nothing, on every process of a
multi-process run; a holder killed with SIGKILL leaves no stale lock; the lock file counts for nothing in
the folder checks, the checkpoint listing or what is pushed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import output_into, training_forkserver
from test_finetune import SMALL, one_thread  # noqa: F401 (one_thread: autouse)
from test_run_lifecycle import finetune, snapshot, three_step_run

from gpt2scratch.cli import main as cli_main
from gpt2scratch.training.checkpoints import LOCK_FILE, list_checkpoints

pytestmark = pytest.mark.xdist_group("run_lock")


@pytest.fixture(scope="module")
def options(shared_data, vocab_dir, tmp_path_factory) -> list[str]:
    return three_step_run(shared_data, vocab_dir, tmp_path_factory)


@contextmanager
def lock_held(folder: Path):
    """Another process holding ``folder``'s run lock, as a live run does; SIGKILLed at the end of the block."""
    code = "import sys, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(timeout=0); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder / LOCK_FILE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def in_use(out: Path, pid: int) -> str:
    return f"--output-dir {out} is in use by another run (process {pid})"


def test_run_into_a_folder_in_use_is_refused_and_writes_nothing(options, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with lock_held(out) as holder:
        before = snapshot(out)
        assert finetune(out, *options) == 2
        err = capsys.readouterr().err
        assert in_use(out, holder.pid) in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert snapshot(out) == before
    # the holder was SIGKILLed: no stale lock, and a folder holding only the lock file counts as empty
    assert finetune(out, *options) == 0
    assert json.loads((out / "run.json").read_text()) == {"finished": True, "step": 3}


# ----------------------------------------------------------------------------------------- a live run


def _finetune_main(argv: list[str], log: str) -> None:
    """Target of a forked child: ``gpt2scratch finetune ARGV``, its output into ``log``."""
    output_into(log)
    sys.exit(cli_main(["finetune", *argv]))


def text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


@pytest.fixture(scope="module")
def forkserver():
    return training_forkserver("test_run_lock")


def test_live_run_holds_its_folder_until_killed(forkserver, options, tmp_path, capsys):
    out, endless = tmp_path / "live", [*options, "--max-steps", "100000"]
    assert finetune(out, *endless, "--stop-after", "2") == 0  # checkpoint-2, then resumed by a live run
    log = tmp_path / "live.log"
    argv = ["--output-dir", str(out), *SMALL, *endless, "--resume-from", "latest"]
    live = forkserver.Process(target=_finetune_main, args=(argv, str(log)))
    live.start()
    deadline = time.monotonic() + 120
    while "Global batch" not in text(log):  # it is training
        assert live.is_alive() and time.monotonic() < deadline, text(log)[-3000:]
        time.sleep(0.05)
    assert finetune(out, *options, "--resume-from", "latest") == 2  # would train 1 step and finish
    assert finetune(out, *options, "--force") == 2  # --force does not clear a live run's folder either
    err = capsys.readouterr().err
    assert err.count(in_use(out, live.pid)) == 2, err
    os.kill(live.pid, signal.SIGKILL)
    live.join()
    assert finetune(out, *endless, "--resume-from", "latest", "--stop-after", "1") == 0  # nothing to train
    assert json.loads((out / "run.json").read_text()) == {"finished": False, "step": 2}


# ----------------------------------------------------------------------------------------- several processes


def _rank_attempt(argv: list[str], record: str) -> None:
    """One process of a 2-process launch: ``finetune ARGV``; what it raised is written to ``record.RANK``."""
    from accelerate.state import PartialState

    from gpt2scratch.training.args import parse_args
    from gpt2scratch.training.loop import run

    signal.alarm(120)  # a process left waiting for the other is killed rather than hanging the test
    try:
        run(parse_args(argv))
        outcome = "trained"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    Path(f"{record}.{PartialState().process_index}").write_text(outcome)


def test_every_process_stops_when_the_main_process_finds_the_folder_in_use(options, tmp_path):
    from accelerate import debug_launcher

    out, record = tmp_path / "run", str(tmp_path / "outcome")
    out.mkdir()
    with lock_held(out) as holder:
        before = snapshot(out)
        debug_launcher(
            _rank_attempt, args=(["--output-dir", str(out), *SMALL, *options], record), num_processes=2
        )
        assert snapshot(out) == before
    assert Path(f"{record}.0").read_text().startswith(f"FileExistsError: {in_use(out, holder.pid)}")
    assert Path(f"{record}.1").read_text() == (
        f"FileExistsError: --output-dir {out}: refused by the main process (see its message)."
    )


# ----------------------------------------------------------------------------------------- the lock file


def test_lock_file_is_left_out_of_listings_and_pushes(options, tmp_path):
    from gpt2scratch.hub import files_to_upload
    from gpt2scratch.loading import load_model

    out = tmp_path / "run"
    assert finetune(out, *options, "--save-every", "2") == 0
    assert (out / LOCK_FILE).is_file()  # kept: unlinking a lock file that another run may have opened races
    assert Path(LOCK_FILE) not in files_to_upload(out)
    assert [p.name for p in list_checkpoints(out, complete=False)] == ["checkpoint-2"]
    assert not list((out / "checkpoint-2").rglob(LOCK_FILE))
    assert load_model(out, task="classification").kind == "folder"
