"""The output folder of a run: refusing to clobber one, atomic ``checkpoint-<step>/`` folders, and resuming.

Layout of ``--output-dir``::

    run.json                 {"finished": bool, "step": int} — written last, so a crash leaves "unfinished"
    training_args.yaml       the resolved options
    checkpoint-<step>/       model/ (a model folder, or a PEFT adapter folder), state/ (Accelerate state),
                             trainer_state.json (step, history)
    base/                    LoRA only: the base model the adapters refer to
    config.json, model.safetensors, …  the final model (or adapter files), metrics.json, plots, logs
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temporary folders start with a dot and are skipped)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit() and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_resume(resume_from: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from: ``latest`` in ``output_dir``, or a given folder; None if not resuming."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume-from latest: {output_dir} holds no complete checkpoint-<step> folder to resume from."
            )
        return found[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file() or not (path / "state").is_dir():
        raise FileNotFoundError(
            f"--resume-from {path}: not a training checkpoint (expected {STATE_FILE} and state/ inside). "
            "Give a checkpoint-<step> folder of a run, or 'latest'."
        )
    return path


def read_run(output_dir: str | os.PathLike) -> dict | None:
    path = Path(output_dir, RUN_FILE)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_run(output_dir: str | os.PathLike, finished: bool, step: int) -> None:
    _write_json_atomic(Path(output_dir, RUN_FILE), {"finished": finished, "step": step})


def check_output_dir(output_dir: str | os.PathLike, resuming: bool, force: bool) -> None:
    """Refuse an output folder that holds something, unless resuming in it or ``force`` (checked before any write)."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output-dir {folder} is a file; give a folder.")
    if resuming or force or not folder.exists() or not any(folder.iterdir()):
        return
    run = read_run(folder)
    if run and run.get("finished"):
        raise FileExistsError(
            f"--output-dir {folder} holds a finished run; pass --force to replace it or choose another folder."
        )
    if run or list_checkpoints(folder):
        raise FileExistsError(
            f"--output-dir {folder} holds an unfinished run; pass --resume-from latest to continue it, "
            "or --force to start over."
        )
    raise FileExistsError(
        f"--output-dir {folder} is not empty; choose an empty folder or pass --force to replace it."
    )


def clear_output_dir(output_dir: str | os.PathLike) -> None:
    """Empty the folder (``--force`` on a new run), keeping the folder itself."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def temp_checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is renamed into place (the same path on every process)."""
    return Path(output_dir, f".{PREFIX}{step}.tmp")


def finish_checkpoint(output_dir: str | os.PathLike, step: int, trainer_state: dict) -> Path:
    """Write ``trainer_state.json`` into the temporary folder and rename it to ``checkpoint-<step>`` (main process)."""
    tmp = temp_checkpoint_dir(output_dir, step)
    _write_json_atomic(tmp / STATE_FILE, trainer_state)
    final = Path(output_dir, f"{PREFIX}{step}")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def read_trainer_state(checkpoint: str | os.PathLike) -> dict:
    return json.loads(Path(checkpoint, STATE_FILE).read_text(encoding="utf-8"))


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)
