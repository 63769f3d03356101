"""download_file / download_openai / `gpt2scratch download-openai` against a local 127.0.0.1 server."""

from __future__ import annotations

import random
import socket

import pytest
from conftest import run_cli
from http_fixtures import http_server

from gpt2scratch import cli
from gpt2scratch.conversion.download import (
    OPENAI_FILES,
    DownloadError,
    SizeMismatchError,
    download_file,
    download_openai,
    openai_size_name,
)

BIG = 3 * (1 << 20) + 12345  # several read chunks


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _openai_files(size: str = "124M", prefix: str = "/gpt-2/models") -> dict[str, bytes]:
    """Fixture contents for the seven files of one size (the data shard the largest)."""
    return {
        f"{prefix}/{size}/{name}": _bytes(BIG if name.startswith("model.ckpt.data") else 1000 + i, seed=i)
        for i, name in enumerate(OPENAI_FILES)
    }


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gets(url) -> list[tuple[str, str | None]]:
    return [(path, rng) for method, path, rng in url.requests if method == "GET"]


def test_download_file_fetches_exact_bytes_and_leaves_no_part(tmp_path):
    data = _bytes(BIG, seed=1)
    with http_server({"/f.bin": data}) as url:
        out = download_file([url + "/f.bin"], tmp_path / "sub" / "f.bin", progress=False)
    assert out == tmp_path / "sub" / "f.bin"
    assert out.read_bytes() == data
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert _gets(url) == [("/f.bin", None)]


def test_download_openai_fetches_the_seven_files_by_preset_name(tmp_path):
    files = _openai_files("124M")
    with http_server(files) as url:
        folder = download_openai("gpt2", tmp_path / "124M", base_url=url + "/gpt-2/models", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(OPENAI_FILES)
    for path, data in files.items():
        assert (folder / path.rsplit("/", 1)[1]).read_bytes() == data
    assert {path for path, _ in _gets(url)} == set(files)


def test_dropped_connection_resumes_with_range(tmp_path):
    files = _openai_files("355M")
    shard = "/gpt-2/models/355M/model.ckpt.data-00000-of-00001"
    cut = 1_500_001
    with http_server(files, drop_after={shard: cut}) as url:
        download_openai("355M", tmp_path, base_url=url + "/gpt-2/models", progress=False)
    assert [rng for path, rng in _gets(url) if path == shard] == [None, f"bytes={cut}-"]
    assert (tmp_path / "model.ckpt.data-00000-of-00001").read_bytes() == files[shard]


def test_retries_bound_attempts_without_progress(tmp_path):
    data = _bytes(5000, seed=9)
    files = {"/a/f": data, "/b/f": data}
    with http_server(files, drop_after={"/a/f": 0}) as url:  # headers, then nothing
        download_file([url + "/a/f", url + "/b/f"], tmp_path / "once", progress=False, retries=1)
        assert _gets(url) == [("/a/f", None), ("/a/f", None)]  # retried the same URL
    with http_server(files, drop_after={"/a/f": 0}) as url:
        download_file([url + "/a/f", url + "/b/f"], tmp_path / "never", progress=False, retries=0)
        assert _gets(url) == [("/a/f", None), ("/b/f", None)]  # no retry left: the next URL
    assert (tmp_path / "once").read_bytes() == data == (tmp_path / "never").read_bytes()


def test_primary_404_falls_back_to_backup(tmp_path):
    files = _openai_files("124M")
    with http_server(files) as url:
        download_openai(
            "124M", tmp_path, base_url=url + "/missing", backup_url=url + "/gpt-2/models", progress=False
        )
    for path, data in files.items():
        assert (tmp_path / path.rsplit("/", 1)[1]).read_bytes() == data
    gets = [path for path, _ in _gets(url)]
    assert gets[:2] == ["/missing/124M/checkpoint", "/gpt-2/models/124M/checkpoint"]
    assert len(gets) == 2 * len(OPENAI_FILES)


def test_unreachable_primary_falls_back_to_backup(tmp_path):
    data = _bytes(5000, seed=2)
    with http_server({"/f": data}) as url:
        download_file([f"http://127.0.0.1:{_closed_port()}/f", url + "/f"], tmp_path / "f", progress=False)
    assert (tmp_path / "f").read_bytes() == data


def test_size_mismatch_is_a_clear_error_and_leaves_no_file(tmp_path):
    data = _bytes(5000, seed=3)
    dest = tmp_path / "hparams.json"
    with http_server({"/hparams.json": data}) as url:
        with pytest.raises(SizeMismatchError) as err:
            download_file([url + "/hparams.json"], dest, expected_size=len(data) + 1, progress=False)
    message = str(err.value)
    assert url + "/hparams.json" in message and "hparams.json" in message
    assert f"{len(data)} bytes" in message and f"{len(data) + 1} were expected" in message
    assert isinstance(err.value, ValueError)
    assert not dest.exists() and not (tmp_path / "hparams.json.part").exists()


def test_complete_file_is_not_downloaded_again(tmp_path):
    data = _bytes(5000, seed=4)
    dest = tmp_path / "f"
    dest.write_bytes(data)
    with http_server({"/f": data}) as url:
        download_file([url + "/f"], dest, expected_size=len(data), progress=False)
        assert url.requests == []  # the expected size alone settles it
        download_file([url + "/f"], dest, progress=False)
        assert url.requests == [("HEAD", "/f", None)]  # the server's Content-Length settles it


def test_finished_download_openai_runs_again_offline(tmp_path, capsys):
    """Files that were downloaded whole are kept when no server can say their size."""
    files = _openai_files("124M", prefix="/models")
    dest = tmp_path / "124M"
    with http_server(files) as url:
        assert (
            cli.main(["download-openai", "124M", str(dest), "--base-url", url + "/models", "--no-progress"])
            == 0
        )
    offline = f"http://127.0.0.1:{_closed_port()}/models"
    assert cli.main(["download-openai", "124M", str(dest), "--base-url", offline, "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    assert {f"/models/124M/{p.name}": p.read_bytes() for p in dest.iterdir()} == files


def test_file_of_wrong_size_is_replaced(tmp_path):
    data = _bytes(5000, seed=5)
    dest = tmp_path / "f"
    dest.write_bytes(b"old and short")
    with http_server({"/f": data}) as url:
        download_file([url + "/f"], dest, progress=False)
    assert dest.read_bytes() == data


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    data = _bytes(BIG, seed=6)
    (tmp_path / "f.part").write_bytes(data[:777])
    with http_server({"/f": data}) as url:
        download_file([url + "/f"], tmp_path / "f", progress=False)
    assert _gets(url) == [("/f", "bytes=777-")]
    assert (tmp_path / "f").read_bytes() == data


def test_partial_file_longer_than_the_remote_restarts(tmp_path):
    data = _bytes(4000, seed=7)
    (tmp_path / "f.part").write_bytes(_bytes(4100, seed=8))
    with http_server({"/f": data}) as url:
        download_file([url + "/f"], tmp_path / "f", progress=False)
    assert _gets(url) == [("/f", "bytes=4100-"), ("/f", None)]  # 416, then from the start
    assert (tmp_path / "f").read_bytes() == data


def test_every_location_failing_names_each_url(tmp_path):
    with http_server({}) as url:
        with pytest.raises(DownloadError) as err:
            download_file([url + "/a/f", url + "/b/f"], tmp_path / "f", progress=False)
    message = str(err.value)
    assert f"{url}/a/f: HTTP 404" in message and f"{url}/b/f: HTTP 404" in message
    assert not (tmp_path / "f").exists()


def test_unknown_size_is_refused():
    assert openai_size_name("gpt2-xl") == "1558M"
    with pytest.raises(ValueError, match="124M, 355M"):
        openai_size_name("7B")


def test_cli_download_openai(tmp_path):
    files = _openai_files("774M")
    with http_server(files) as url:
        done = run_cli("download-openai", "774M", str(tmp_path / "gpt2"), "--base-url", url + "/gpt-2/models")
    assert done.returncode == 0, done.stderr
    assert "convert-openai" in done.stdout
    assert done.stderr == ""  # stderr is a pipe here: no progress bar redrawn into it
    for path, data in files.items():
        assert (tmp_path / "gpt2" / path.rsplit("/", 1)[1]).read_bytes() == data


def test_cli_download_failure_is_one_line_error(tmp_path, capsys):
    with http_server({}) as url:
        code = cli.main(
            ["download-openai", "gpt2-large", str(tmp_path / "none"), "--base-url", url + "/nowhere"]
        )
    err = capsys.readouterr().err
    assert code == 2
    assert "download-openai: error: Could not download checkpoint" in err
    assert "/nowhere/774M/checkpoint: HTTP 404" in err
    assert "Traceback" not in err


def test_offline_download_openai_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    dest = tmp_path / "models" / "124M"
    base = f"http://127.0.0.1:{_closed_port()}"
    code = cli.main(["download-openai", "124M", str(dest), "--base-url", base, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "Could not download checkpoint" in err and "convert-openai" in err and "--base-url" in err
    assert not (tmp_path / "models").exists()


def test_failed_download_with_progress_prints_only_the_error(tmp_path, capsys):
    """No progress bar before a server has answered: unreachable or missing, the error is the only line."""
    base = f"http://127.0.0.1:{_closed_port()}"
    code = cli.main(["download-openai", "124M", str(tmp_path / "a"), "--base-url", base])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("gpt2scratch download-openai: error:"), err
    with http_server({}) as url:
        code = cli.main(["download-openai", "124M", str(tmp_path / "b"), "--base-url", url + "/nowhere"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("gpt2scratch download-openai: error:"), err


def test_progress_bar_shows_the_file_once_it_arrives(tmp_path, capsys):
    data = _bytes(1000, seed=3)
    with http_server({"/f.bin": data}) as url:
        download_file([url + "/f.bin"], tmp_path / "f.bin")
    assert "f.bin: 100%" in capsys.readouterr().err


def test_offline_sms_download_in_finetune_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """Every command reports a failed download the way download-openai does (DownloadError is a user error)."""
    from gpt2scratch.training import data

    monkeypatch.setenv("GPT2SCRATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SMS_URLS", (f"http://127.0.0.1:{_closed_port()}/sms.zip",))
    code = cli.main(["finetune", "--dataset", "uci:sms_spam", "--output-dir", str(tmp_path / "run")])
    last = capsys.readouterr().err.splitlines()[-1]  # after the run's own log lines
    assert code == 2 and last.startswith(
        "gpt2scratch finetune: error: Could not download sms_spam_collection.zip"
    )
    assert "--train-file PATH/SMSSpamCollection" in last
    assert not (tmp_path / "cache").exists()
