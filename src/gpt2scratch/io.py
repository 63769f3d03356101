"""Model folders: write one atomically (weights, config, code, tokenizer, generation config, card).

Weights go through ``save_pretrained`` from a model in memory, or are streamed into ``model.safetensors``
one tensor at a time (:func:`write_safetensors`) by converters that read a large checkpoint piecewise.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME

from .tokenizer import save_tokenizer

# safetensors' dtype codes, in the order its serializer ranks them: a file holds the highest rank first,
# then the next, each group sorted by name (checked against safetensors.torch.save_file by the tests).
SAFETENSORS_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32",
    torch.complex64: "C64", torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64",
}  # fmt: skip
WEIGHTS_METADATA = {"format": "pt"}  # what save_pretrained stores in model.safetensors' header
Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]  # tensor name → (dtype, shape)
WRITE_CHUNK = 1 << 20  # bytes per write call: much faster than one 150 MB write on the benchmark's Linux VM


def check_new_folder(out: str | os.PathLike, force: bool = False) -> None:
    """Refuse an existing ``out`` unless ``force``: called before slow work, and by :func:`atomic_folder`."""
    if Path(out).exists() and not force:
        raise FileExistsError(
            f"{out} already exists; choose another output folder or pass --force to replace it."
        )


@contextmanager
def atomic_folder(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it vanishes.

    An existing ``out`` is refused unless ``force`` (and then replaced only once the new one is complete).
    """
    out = Path(out)
    check_new_folder(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    default_file_modes(tmp)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, given the mode ``mkdir`` gives (0o777 less the umask) instead of
    0o700, which would leave every finished model folder private."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~current_umask())
    return path


def default_file_modes(folder: Path) -> None:
    """Give every file under ``folder`` the mode ``open()`` gives (0o666 less the umask): safetensors writes its
    files 0o600, which would leave the weights of a shared model folder unreadable to the rest of a group."""
    mode = 0o666 & ~current_umask()
    for root, _, names in os.walk(folder):
        for name in names:
            os.chmod(os.path.join(root, name), mode)


def current_umask() -> int:
    """The process's umask (from /proc on Linux; elsewhere set and restored at once)."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1], 8) for line in status.splitlines() if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


# --- streamed safetensors ----------------------------------------------------------------------------


def safetensors_header(layout: Layout, metadata: dict[str, str] | None = None) -> tuple[bytes, list[str]]:
    """The bytes that open a safetensors file of tensors ``layout`` (length prefix, JSON header padded to
    8 bytes) and the order their data follows in, both as ``safetensors.torch.save_file`` makes them.

    safetensors (0.8) can only serialize tensors that are all in memory at once; this lets a file be
    written one tensor at a time. Byte-identical to the library's output for one ``metadata`` key or none
    (the library orders several keys at random)."""
    unknown = {str(dtype) for dtype, _ in layout.values() if dtype not in SAFETENSORS_DTYPES}
    if unknown:
        raise ValueError(f"dtype(s) {sorted(unknown)} cannot be stored in safetensors by this writer.")
    if "__metadata__" in layout:
        raise ValueError(
            "a tensor cannot be named '__metadata__' in safetensors (the header's metadata key)."
        )
    rank = list(SAFETENSORS_DTYPES)
    order = sorted(layout, key=lambda name: (-rank.index(layout[name][0]), name))
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name in order:
        dtype, shape = layout[name]
        end = offset + math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def write_safetensors(
    path: str | os.PathLike,
    layout: Layout,
    tensor: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write the safetensors file ``path`` of tensors ``layout``, asking ``tensor(name)`` for each in file
    order and writing its bytes (in ``WRITE_CHUNK`` calls) before asking for the next, so only one tensor
    need be in memory (``tensor`` may reuse a buffer or return a memory-mapped one). The file equals
    ``save_file`` of the same tensors."""
    header, order = safetensors_header(layout, metadata)
    with open(path, "wb") as f:
        f.write(header)
        for name in order:
            value = tensor(name)
            dtype, shape = layout[name]
            if value.dtype != dtype or tuple(value.shape) != shape or not value.is_contiguous():
                raise ValueError(
                    f"{path}: tensor {name!r} came as {value.dtype} {list(value.shape)}"
                    f"{'' if value.is_contiguous() else ' (not contiguous)'}; the header says {dtype} {list(shape)}."
                )
            data = value.reshape(-1).view(torch.uint8).numpy()
            for start in range(0, data.size, WRITE_CHUNK):
                f.write(data[start : start + WRITE_CHUNK])


def saved_weights(model: PreTrainedModel) -> Layout:
    """Name → (dtype, shape) of the tensors ``model.save_pretrained`` stores: its state dict less the tied
    copies (``lm_head.weight`` when tied to ``wte``), found by transformers' own rule. Works on the meta device."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    return {name: (t.dtype, tuple(t.shape)) for name, t in state.items()}


# --- model folders -----------------------------------------------------------------------------------


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the block (they are a process-wide switch)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def write_model_folder(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    model_card: str | None = None,
    weights: Callable[[str], torch.Tensor] | None = None,
    fork: bool = False,
) -> None:
    """Write a complete model folder into ``folder`` (which must exist): safetensors weights,
    ``config.json`` with ``auto_map``, the two code files, generation config, tokenizer files, and a
    model card ``README.md`` when one is given.

    ``weights``, when given, supplies each tensor of :func:`saved_weights` by name (as :func:`write_safetensors`
    asks for it) instead of ``model``'s own, which may then be on the meta device: the folder is the one
    ``save_pretrained`` would write for a model holding those tensors.

    The tokenizer files are written meanwhile by :func:`tokenizer_writer` (``fork``: see there); everything
    else that runs Python (config, code files, the weights' layout) is done before it starts."""
    if weights is not None:
        with quiet_progress_bars():  # its "Writing model shards" bar would count 0 shards
            model.save_pretrained(folder, state_dict={})  # config, generation config, code
        layout = saved_weights(model)
    with tokenizer_writer(fork) as pool:
        tokenizer = pool.submit(save_tokenizer, tokenizer_dir, folder, model.config.n_positions)
        if weights is None:
            model.save_pretrained(folder)
        else:
            write_safetensors(Path(folder, SAFE_WEIGHTS_NAME), layout, weights, WEIGHTS_METADATA)
        tokenizer.result()
    if model_card is not None:
        Path(folder, "README.md").write_text(model_card, encoding="utf-8")


def tokenizer_writer(fork: bool) -> Executor:
    """Where :func:`write_model_folder` builds and writes the tokenizer files beside the weights: a thread,
    or with ``fork`` on Linux a forked child process.

    Building GPT-2's tokenizer holds the GIL for most of its ≈ 0.3 s, so in a thread it mostly takes turns
    with the weights' loop; a child process runs truly beside it (measured: 124M conversion ≈ 1.0 s → 0.8 s,
    ``benchmarks/results/convert_openai-*.md``). Forking suits short-lived converting processes (the
    ``convert-*`` commands), not a training process that may hold accelerators or many threads. A daemonic
    process (e.g. a ``multiprocessing.Pool`` worker) may not have children: it uses the thread."""
    if fork and sys.platform == "linux" and not multiprocessing.current_process().daemon:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(1, thread_name_prefix="save_tokenizer")


def save_model_folder(
    model: PreTrainedModel,
    out: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    model_card: str | None = None,
    force: bool = False,
    weights: Callable[[str], torch.Tensor] | None = None,
    fork: bool = False,
) -> Path:
    """:func:`write_model_folder` into ``out`` atomically: a failure leaves no partial folder behind."""
    with atomic_folder(out, force=force) as tmp:
        write_model_folder(model, tmp, tokenizer_dir, model_card, weights, fork)
    return Path(out)
