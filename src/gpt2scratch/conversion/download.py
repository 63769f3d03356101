"""Resumable downloads, and OpenAI's GPT-2 checkpoint files fetched with them.

:func:`download_file` writes into ``DEST.part``, resumes a dropped transfer with an HTTP ``Range``
request from the bytes already on disk, falls back to the next URL when one is missing or
unreachable, checks the size, and renames ``DEST.part`` to ``DEST`` only once it is complete, so
``DEST`` is either absent or whole. :func:`download_openai` fetches the seven files of one released
size. Standard library only (``urllib``), plus tqdm for the progress bar.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from ..cli import CommandError
from ..configuration_gpt2scratch import OPENAI_SIZES

# OpenAI's public bucket: ``{OPENAI_BASE_URL}/{124M|355M|774M|1558M}/{file}``.
OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
# A backup copy of the same files under the same layout, the mirror that the "Build a Large Language
# Model (From Scratch)" book's download script (rasbt/LLMs-from-scratch, gpt_download.py) falls back to.
BACKUP_BASE_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
OPENAI_FILES = (
    "checkpoint",
    "hparams.json",
    "encoder.json",
    "vocab.bpe",
    "model.ckpt.index",
    "model.ckpt.meta",
    "model.ckpt.data-00000-of-00001",
)
CHUNK = 1 << 20
TIMEOUT_S = 60
RETRY_DELAY_S = 0.5  # doubled after each attempt that brought no new bytes
USER_AGENT = "gpt2scratch-downloader (python-urllib)"
GONE = (404, 410)
TRANSIENT = (408, 425, 429, 500, 502, 503, 504)
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Errors that end one attempt part-way; the next attempt resumes from the bytes on disk.
MID_TRANSFER = (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


class DownloadError(CommandError, OSError):
    """A file could not be downloaded from any of its locations: a user error (exit 2, one line), since the
    fix is theirs: the network, the URL, or a local copy of the file."""

    exit_code = 2


class SizeMismatchError(DownloadError, ValueError):
    """The server's file (or the finished download) has another size than expected."""


class _Unavailable(Exception):
    """This URL cannot serve the file (missing, refused, or gave up): try the next one."""


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    expected_size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    hint: str = "Check the network or the URL, then run again",
) -> Path:
    """Download the file at the first working URL of ``urls`` to ``dest``; return ``dest``.

    A URL answering 404/410 (or another client error), or that cannot be reached, is skipped for the
    next. A transfer that breaks off is resumed with ``Range: bytes=N-`` from the ``N`` bytes already
    in ``dest.part``; ``retries`` bounds the consecutive attempts that bring no new bytes. The size is
    checked against the server's Content-Length and ``expected_size``. A ``dest`` that already has
    the right size is kept without downloading it again. On failure, :class:`DownloadError` says what
    was tried, then ``hint`` (what the user can do instead, e.g. which option takes a local copy); folders
    it created are removed unless they keep partial bytes to resume from.
    """
    if not urls:
        raise ValueError(f"No URL given to download {dest}.")
    dest = Path(dest)
    if _already_complete(urls, dest, expected_size):
        return dest
    with _new_folders_removed_on_error(dest.parent):
        return _download_to(urls, dest, expected_size, progress, retries, hint)


def _download_to(
    urls: Sequence[str], dest: Path, expected_size: int | None, progress: bool, retries: int, hint: str
) -> Path:
    """:func:`download_file` once ``dest.parent`` exists: try each URL in turn, ``DEST.part`` → ``DEST``."""
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        try:
            _download_from(url, part, dest, expected_size, progress, retries)
        except _Unavailable as e:
            failures.append(f"{url}: {e}")
            continue
        os.replace(part, dest)
        return dest
    if part.exists() and not _size_on_disk(part):
        part.unlink()
    kept = f" The {_size_on_disk(part)} bytes in {part} are kept and resumed." if part.exists() else ""
    raise DownloadError(
        f"Could not download {dest.name} to {dest}: every location failed: {'; '.join(failures)}. "
        f"{hint.rstrip('.')}.{kept}"
    )


@contextmanager
def _new_folders_removed_on_error(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and missing parents); if the body fails, remove those it created that are empty,
    so a failed download leaves nothing behind but partial files worth resuming."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except OSError:  # not empty (a .part to resume), or already gone
                break
        raise


def _already_complete(urls: Sequence[str], dest: Path, expected_size: int | None) -> bool:
    """Whether ``dest`` exists with the size expected or announced by the first server that answers; with no
    size to compare (offline, or no server gives one) a file under its final name is complete, since a
    download only gets that name once whole (``DEST.part`` → ``DEST``)."""
    if not dest.is_file():
        return False
    want = expected_size if expected_size is not None else _remote_size(urls)
    return want is None or dest.stat().st_size == want


def _remote_size(urls: Sequence[str]) -> int | None:
    """Content-Length from a HEAD request to the first URL that answers one, else None."""
    for url in urls:
        try:
            with urllib.request.urlopen(_request(url, method="HEAD"), timeout=TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None:
                    return int(length)
        except (urllib.error.URLError, *MID_TRANSFER, ValueError):
            continue
    return None


def _request(url: str, start: int = 0, method: str = "GET") -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.Request(url, headers=headers, method=method)


def _download_from(
    url: str, part: Path, dest: Path, expected_size: int | None, progress: bool, retries: int
) -> None:
    """Fill ``part`` from ``url``, resuming after breaks; raise :class:`_Unavailable` to move on."""
    failures = 0
    with closing(_Progress(dest.name, progress)) as bar:
        while True:
            before = _size_on_disk(part)
            try:
                if _attempt(url, part, dest, expected_size, bar):
                    return
                reason = "the connection closed before the end of the file"
            except urllib.error.HTTPError as e:
                reason = _http_failure(e, part)
            except urllib.error.URLError as e:
                raise _Unavailable(f"cannot connect ({e.reason})") from e
            except MID_TRANSFER as e:
                reason = f"the transfer broke off ({type(e).__name__}: {e})"
            failures = 0 if _size_on_disk(part) > before else failures + 1
            if failures > retries:
                raise _Unavailable(f"gave up after {retries} retries without progress; last: {reason}")
            time.sleep(RETRY_DELAY_S * (2 ** (failures - 1)) if failures else 0)


class _Progress:
    """The progress bar of one download, opened at the first response: a URL that never answers (offline,
    missing) prints no empty bar before its error."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.bar = name, enabled, None

    def restart(self, total: int | None, done: int) -> None:
        """A response arrived: the bar shows ``done`` of ``total`` bytes."""
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                desc=self.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not self.enabled
            )
        self.bar.reset(total=total)
        self.bar.update(done)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _attempt(url: str, part: Path, dest: Path, expected_size: int | None, bar: _Progress) -> bool:
    """One GET from the bytes already in ``part`` onwards; True once ``part`` holds the whole file."""
    have = _size_on_disk(part)
    with urllib.request.urlopen(_request(url, have), timeout=TIMEOUT_S) as resp:
        start, total = _span_of(resp, have)
        _check_size(total, expected_size, url, dest, part, what="the server announces")
        bar.restart(total, start)
        with open(part, "ab" if start else "wb") as f:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = _size_on_disk(part)
    if total is not None and size < total:
        return False
    _check_size(size, expected_size if total is None else total, url, dest, part, what="the download has")
    return True


def _span_of(resp, have: int) -> tuple[int, int | None]:
    """(offset this response starts at, full file size or None) for a 200 or 206 answer."""
    if resp.status == 206:
        m = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != have:
            raise http.client.HTTPException(
                f"the server answered Range bytes={have}- with Content-Range {resp.headers.get('Content-Range')!r}"
            )
        return have, None if m.group(3) == "*" else int(m.group(3))
    length = resp.headers.get("Content-Length")
    return 0, int(length) if length is not None else None  # a 200 restarts from the first byte


def _check_size(size: int | None, expected: int | None, url: str, dest: Path, part: Path, what: str) -> None:
    if size is None or expected is None or size == expected:
        return
    part.unlink(missing_ok=True)
    raise SizeMismatchError(
        f"Size mismatch for {dest.name} from {url}: {what} {size} bytes, but {expected} were expected. "
        f"Nothing was written to {dest}. Check that the URL points at the right file."
    )


def _http_failure(e: urllib.error.HTTPError, part: Path) -> str:
    """The retry reason for a transient HTTP error; raise :class:`_Unavailable` for the others."""
    e.close()
    if e.code == 416:  # our Range starts past the end: the partial file is not a prefix of this one
        part.unlink(missing_ok=True)
        return "HTTP 416 (range not satisfiable); restarting from the first byte"
    if e.code in TRANSIENT:
        return f"HTTP {e.code} {e.reason}"
    label = "not found" if e.code in GONE else e.reason
    raise _Unavailable(f"HTTP {e.code} ({label})") from e


def _size_on_disk(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def openai_size_name(size: str) -> str:
    """OpenAI's folder name (``124M`` … ``1558M``) for a size or preset name (``gpt2`` … ``gpt2-xl``)."""
    by_preset = {preset: name for name, preset in OPENAI_SIZES.items()}
    if size in OPENAI_SIZES:
        return size
    if size in by_preset:
        return by_preset[size]
    choices = ", ".join([*OPENAI_SIZES, *by_preset])
    raise ValueError(f"Unknown GPT-2 size {size!r}; choose one of: {choices}.")


def openai_file_urls(
    size: str, file: str, base_url: str | None = None, backup_url: str | None = None
) -> list[str]:
    """The URLs to try, in order, for one file of OpenAI's release.

    ``base_url`` replaces OpenAI's bucket; the backup mirror (:data:`BACKUP_BASE_URL`) is tried after
    it only when ``base_url`` is not given, unless ``backup_url`` names one explicitly.
    """
    name = openai_size_name(size)
    if backup_url is None and base_url is None:
        backup_url = BACKUP_BASE_URL
    bases = [base_url or OPENAI_BASE_URL, *([backup_url] if backup_url else [])]
    return [f"{base.rstrip('/')}/{name}/{file}" for base in bases]


def download_openai(
    size: str,
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    backup_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch OpenAI's seven GPT-2 files for ``size`` into ``dest_dir``; return ``dest_dir``.

    ``size`` is ``124M``, ``355M``, ``774M``, ``1558M`` or a preset name (``gpt2``, ``gpt2-medium``,
    ``gpt2-large``, ``gpt2-xl``). Files come from OpenAI's public bucket
    (``https://openaipublic.blob.core.windows.net/gpt-2/models/<size>/<file>``), with
    :data:`BACKUP_BASE_URL` (same layout) as the backup; ``base_url`` / ``backup_url`` replace them
    (a mirror, or a local server). Each file is resumable and size-checked (see :func:`download_file`);
    files already complete are skipped, so an interrupted run can simply be started again.
    """
    name = openai_size_name(size)
    dest_dir = Path(dest_dir)
    hint = (
        "Check the network, or give a mirror with --base-url / --backup-url, then run again (complete files "
        f"are kept); with the {name} files already on disk, skip this step and pass their folder to "
        "`gpt2scratch convert-openai FOLDER OUT`"
    )
    with _new_folders_removed_on_error(dest_dir):
        for file in OPENAI_FILES:
            urls = openai_file_urls(name, file, base_url, backup_url)
            download_file(urls, dest_dir / file, progress=progress, hint=hint)
    return dest_dir


def _cmd_download_openai(args) -> int:
    from ..cli import live_terminal

    progress = not args.no_progress and live_terminal()  # a bar redrawn into a log file would fill it
    folder = download_openai(
        args.size, args.dir, base_url=args.base_url, backup_url=args.backup_url, progress=progress
    )
    total = sum((folder / f).stat().st_size for f in OPENAI_FILES)
    print(f"GPT-2 {openai_size_name(args.size)}: {len(OPENAI_FILES)} files, {total / 1e6:.1f} MB in {folder}")
    print(f"Next: gpt2scratch convert-openai {folder} OUT")
    return 0


def register(subparsers) -> None:
    """Add ``download-openai SIZE DIR [--base-url URL] [--backup-url URL]``."""
    p = subparsers.add_parser(
        "download-openai",
        help="download OpenAI's GPT-2 checkpoint files (resumable)",
        description="Download OpenAI's original GPT-2 release for one size (7 files) into DIR. "
        "Interrupted downloads resume where they stopped; complete files are not fetched again.",
    )
    p.add_argument(
        "size", metavar="SIZE", help="124M, 355M, 774M, 1558M, or gpt2, gpt2-medium, gpt2-large, gpt2-xl"
    )
    p.add_argument("dir", metavar="DIR", help="folder to put the files in (created if missing)")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help=f"where the size folders live instead of OpenAI's bucket (default {OPENAI_BASE_URL}); "
        "files are fetched from URL/SIZE/FILE",
    )
    p.add_argument(
        "--backup-url",
        metavar="URL",
        help=f"tried when the first location fails (default {BACKUP_BASE_URL}, only without --base-url)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (none either without a terminal)"
    )
    p.set_defaults(func=_cmd_download_openai)
