"""Training plots: the files written, their formats, and the points drawn in them."""

from __future__ import annotations

import struct

import pytest

from gpt2scratch.training import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """Record, for each figure saved, its file stem and the (label, xs, ys) of every line in it."""
    seen: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    original = plots._save_figure

    def spy(fig, stem):
        (ax,) = fig.axes
        seen[stem.name] = [
            (line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
        ]
        return original(fig, stem)

    monkeypatch.setattr(plots, "_save_figure", spy)
    return seen


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def _assert_pdf(path):
    data = path.read_bytes()
    assert data[:5] == b"%PDF-", f"{path} is not a PDF"
    assert b"%%EOF" in data[-64:], f"{path} is truncated"


def test_loss_and_accuracy_plots_hold_every_point(tmp_path, drawn):
    history = {
        "train_loss": [(step, 5.0 - 0.1 * step) for step in range(1, 41)],
        "val_loss": [(30, 3.5), (10, 4.5), (20, 3.8)],  # out of order on purpose
        "train_accuracy": [(10, 0.6), (20, 0.7), (30, 0.9)],
        "val_accuracy": [(10, 0.5), (20, 0.8), (30, 0.85)],
    }
    written = plots.save_plots(history, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["accuracy-plot.pdf", "accuracy-plot.png", "loss-plot.pdf", "loss-plot.png"]
    for path in written:
        assert path.parent == tmp_path / "plots" and path.stat().st_size > 1000
        if path.suffix == ".png":
            width, height = _png_size(path)
            assert width > 300 and height > 200
        else:
            _assert_pdf(path)

    loss_lines = {label: (xs, ys) for label, xs, ys in drawn["loss-plot"]}
    assert set(loss_lines) == {"Training loss", "Validation loss"}
    assert loss_lines["Training loss"] == (
        [s for s, _ in history["train_loss"]],
        [v for _, v in history["train_loss"]],
    )
    assert loss_lines["Validation loss"] == ([10, 20, 30], [4.5, 3.8, 3.5])  # sorted by step
    acc_lines = {label: (xs, ys) for label, xs, ys in drawn["accuracy-plot"]}
    assert acc_lines["Validation accuracy"] == ([10, 20, 30], [0.5, 0.8, 0.85])
    assert acc_lines["Training accuracy"] == ([10, 20, 30], [0.6, 0.7, 0.9])


def test_only_the_series_present_are_drawn(tmp_path, drawn):
    written = plots.save_plots({"val_loss": [(5, 2.0), (10, 1.5)], "train_accuracy": []}, tmp_path)
    assert sorted(p.name for p in written) == ["loss-plot.pdf", "loss-plot.png"]
    assert not (tmp_path / "accuracy-plot.png").exists()
    assert drawn == {"loss-plot": [("Validation loss", [5, 10], [2.0, 1.5])]}


def test_no_series_writes_nothing(tmp_path):
    assert plots.save_plots({}, tmp_path / "empty") == []
    assert list((tmp_path / "empty").iterdir()) == []


def test_save_plots_accepts_a_string_folder_and_overwrites(tmp_path):
    out = str(tmp_path / "run")
    first = plots.save_plots({"train_loss": [(1, 3.0), (2, 2.0)]}, out)
    small = first[0].stat().st_size
    second = plots.save_plots({"train_loss": [(i, 3.0 / i) for i in range(1, 200)]}, out)
    assert [p.name for p in second] == [p.name for p in first]
    assert second[0].stat().st_size != small  # the file was rewritten with the new curve
