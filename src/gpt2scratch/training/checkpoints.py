"""The output folder of a run: refusing to clobber one, atomic ``checkpoint-<step>/`` folders, and resuming.

Layout of ``--output-dir``::

    run.json                 {"finished": bool, "step": int} — written last, so a crash leaves "unfinished"
    .run.lock                held (an OS lock, released when the process ends, even killed) by the one run
                             that may write here (:func:`lock_output_dir`); hidden, so never pushed
    training_args.yaml       the resolved options (loadable with ``--config``)
    checkpoint-<step>/       model/ (a model folder, or a PEFT adapter folder naming ``../../base``), state/
                             (Accelerate state), trainer_state.json (step, history, scheduler, options),
                             complete.json (written last)
    base/                    LoRA only: the base model the adapters refer to (by a path relative to them,
                             so the run folder can be moved or copied)
    config.json, model.safetensors, …  the final model (or adapter files), metrics.json, plots, logs

A checkpoint is written into ``.checkpoint-<step>.tmp/``, every file fsynced, renamed to
``checkpoint-<step>/``, then marked complete by ``complete.json`` (the size and SHA-256 of every file in
it). Only marked checkpoints count; ``--resume-from latest`` takes the newest one whose files still match
their marker and names, in a warning, every newer one it skips. Older checkpoints are rotated away
(``--keep-checkpoints``) only once the new one is marked.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from ..io import default_file_modes

RUN_FILE = "run.json"
LOCK_FILE = ".run.lock"
ARGS_FILE = "training_args.yaml"
STATE_FILE = "trainer_state.json"
MARKER = "complete.json"
PREFIX = "checkpoint-"
FAULT_ENV = "GPT2SCRATCH_FAULT"
# Test hook points (GPT2SCRATCH_FAULT=POINT:STEP); see ``injected``.
KILL_POINTS = ("mid_step", "after_temp_write", "after_rename", "before_marker")
FAULTS = (*KILL_POINTS, "nan_loss", "enospc_checkpoint", "enospc_final")

log = logging.getLogger("gpt2scratch.finetune")


def injected(point: str, step: int) -> bool:
    """Test hook for the fault-injection tests: true when ``$GPT2SCRATCH_FAULT`` is ``POINT:STEP``.

    A kill point then SIGKILLs this process; an ``enospc_*`` point raises ``OSError(ENOSPC)``; any other
    point (``nan_loss``) returns True for the caller to act on. Unset (always, outside tests): False.
    """
    if os.environ.get(FAULT_ENV) != f"{point}:{step}":
        return False
    if point in KILL_POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
    if point.startswith("enospc"):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by {FAULT_ENV})")
    return True


def step_of(path: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, else None."""
    tail = path.name[len(PREFIX) :]
    return int(tail) if path.name.startswith(PREFIX) and tail.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike, complete: bool = True) -> list[Path]:
    """``checkpoint-<step>`` folders in ``output_dir``, oldest first: only those marked complete unless
    ``complete=False`` (temporary dot-folders are never listed). Files are not verified here."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and step_of(p) is not None]
    if complete:
        found = [p for p in found if (p / MARKER).is_file()]
    return sorted(found, key=step_of)


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (no marker, a file missing, truncated or altered), or None."""
    folder = Path(checkpoint)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        if marker["step"] != step_of(folder) or not isinstance(files, dict) or STATE_FILE not in files:
            return f"{MARKER} does not describe this checkpoint"
    except FileNotFoundError:
        return f"no {MARKER}: the checkpoint was never completed (interrupted while it was written)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MARKER} is unreadable ({type(e).__name__})"
    for name, expected in files.items():
        path = folder / name
        if not isinstance(expected, dict) or ".." in Path(name).parts or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {expected.get('size')} were written (truncated?)"
        if _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its checksum (altered or corrupted)"
    return None


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint whose files match its marker; each newer one skipped is named in a warning."""
    for folder in reversed(list_checkpoints(output_dir, complete=False)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log.warning("skipping %s: %s", folder, problem)
    return None


def resolve_resume(resume_from: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from: ``latest`` in ``output_dir``, or a given folder; None if not resuming."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(
                f"--resume-from latest: {output_dir} holds no complete checkpoint-<step> folder to resume from."
            )
        return found
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file() or not (path / "state").is_dir():
        raise FileNotFoundError(
            f"--resume-from {path}: not a training checkpoint (expected {STATE_FILE} and state/ inside). "
            "Give a checkpoint-<step> folder of a run, or 'latest'."
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume-from {path}: cannot resume from it: {problem}. Try --resume-from latest.")
    return path


def read_run(output_dir: str | os.PathLike) -> dict | None:
    path = Path(output_dir, RUN_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_run(output_dir: str | os.PathLike, finished: bool, step: int) -> None:
    write_json_durably(Path(output_dir, RUN_FILE), {"finished": finished, "step": step})


def lock_output_dir(output_dir: str | os.PathLike) -> Callable[[], None]:
    """Lock ``output_dir`` (created if missing) for this run, first thing: an OS lock on its ``.run.lock``, so
    a run killed even by SIGKILL leaves no stale lock. Refuses while another live run holds it. Returns the
    function that releases it, which also removes the folder if it was created here and the run left it empty."""
    from filelock import FileLock, Timeout

    folder = Path(output_dir)
    _check_folder(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FileExistsError(
            f"--output-dir {folder} is in use by another run{_lock_holder(folder / LOCK_FILE)}; wait for it to "
            "end or stop it (Ctrl-C saves a checkpoint), or choose another folder."
        ) from None

    def release() -> None:
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()  # while held: a run starting now makes a new lock file
            with contextlib.suppress(OSError):  # not empty any more: that run's folder now
                folder.rmdir()
        lock.release()

    return release


def _lock_holder(lock_file: Path) -> str:
    """`` (process PID)`` holding ``lock_file``, where the OS lists its locks (Linux); else nothing."""
    try:
        st = lock_file.stat()
        where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1] == "FLOCK" and fields[5] == where:
                return f" (process {fields[4]})"
    except (OSError, IndexError, AttributeError):  # no /proc (or os.major) here
        pass
    return ""


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output-dir {folder} is a file; give a folder.")


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, force: bool) -> None:
    """Refuse an output folder that holds something, unless ``force`` or resuming the unfinished run in it
    (checked before any write). Resuming a finished run would retrain its last steps and replace its model."""
    folder = Path(output_dir)
    _check_folder(folder)
    if force or not folder.exists() or not any(p.name != LOCK_FILE for p in folder.iterdir()):
        return
    run = read_run(folder)
    if run and run.get("finished") and resuming:
        raise FileExistsError(
            f"--output-dir {folder} holds a finished run; resuming it would retrain its last steps and replace "
            "its final model: pass --force to do that, or resume into another folder."
        )
    if run and run.get("finished"):
        raise FileExistsError(
            f"--output-dir {folder} holds a finished run; pass --force to replace it or choose another folder."
        )
    if resuming:
        return
    if run or list_checkpoints(folder, complete=False):
        raise FileExistsError(
            f"--output-dir {folder} holds an unfinished run; pass --resume-from latest to continue it, "
            "or --force to start over."
        )
    raise FileExistsError(
        f"--output-dir {folder} is not empty; choose an empty folder or pass --force to replace it."
    )


def clear_output_dir(output_dir: str | os.PathLike) -> None:
    """Empty the folder (``--force`` on a new run), keeping the folder itself and its lock."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name == LOCK_FILE:
            continue
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def temp_checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is renamed into place (the same path on every process)."""
    return Path(output_dir, f".{PREFIX}{step}.tmp")


def finish_checkpoint(output_dir: str | os.PathLike, step: int, trainer_state: dict) -> Path:
    """Main process, once every process has written its part into the temporary folder: add
    ``trainer_state.json``, fsync, rename to ``checkpoint-<step>``, then write the completion marker."""
    out = Path(output_dir)
    tmp, final = temp_checkpoint_dir(out, step), out / f"{PREFIX}{step}"
    _write_json(tmp / STATE_FILE, trainer_state)
    injected("after_temp_write", step)
    default_file_modes(tmp)
    fsync_tree(tmp)
    if final.exists():  # a partial checkpoint of an interrupted earlier attempt at this step
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(out)
    injected("after_rename", step)
    files = {
        p.relative_to(final).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(final.rglob("*"))
        if p.is_file()
    }
    write_json_durably(final / MARKER, {"step": step, "files": files}, hook_step=step)
    return final


def discard_partial(output_dir: str | os.PathLike, step: int) -> None:
    """Remove what an attempt at checkpoint ``step`` left behind (its temporary folder, an unmarked folder)."""
    out = Path(output_dir)
    shutil.rmtree(temp_checkpoint_dir(out, step), ignore_errors=True)
    final = out / f"{PREFIX}{step}"
    if final.is_dir() and not (final / MARKER).is_file():
        shutil.rmtree(final, ignore_errors=True)


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, and leftover temporary folders (main process,
    after the newest checkpoint is marked complete); returns the deleted checkpoints."""
    out = Path(output_dir)
    for tmp in out.glob(f".{PREFIX}*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    complete = list_checkpoints(out)
    old = complete[:-keep] if keep else []
    for folder in old:
        shutil.rmtree(folder)
    return old


def saved_weight_names(state_dir: str | os.PathLike) -> frozenset[str] | None:
    """The tensor names in an Accelerate state's ``model.safetensors`` (read from its header); None without
    one (a ``.bin`` state, or FSDP's sharded folder)."""
    path = Path(state_dir, "model.safetensors")
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return frozenset(f.keys())


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    return json.loads(Path(checkpoint, STATE_FILE).read_text(encoding="utf-8"))


def checkpoint_options(checkpoint: str | os.PathLike) -> tuple[dict | None, str]:
    """The options of the run that wrote ``checkpoint``, and where they were read: its ``trainer_state.json``,
    or (checkpoints of earlier versions) its run folder's ``training_args.yaml``; None when neither has them."""
    import yaml

    folder = Path(checkpoint)
    saved = read_trainer_state(folder).get("training_args")
    if saved is not None:
        return saved, str(folder / STATE_FILE)
    recorded = folder.parent / ARGS_FILE
    if recorded.is_file():
        return yaml.safe_load(recorded.read_text(encoding="utf-8")) or {}, str(recorded)
    return None, str(recorded)


def write_json_durably(path: Path, data: dict, hook_step: int | None = None) -> None:
    """Write ``path`` via a temporary file, fsynced, renamed into place, and the folder fsynced. Interrupted
    (an exception, Ctrl-C), it leaves ``path`` as it was and no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_json(tmp, data)
        if hook_step is not None:
            injected("before_marker", hook_step)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1))
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder (so the names are durable too)."""
    for root, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
