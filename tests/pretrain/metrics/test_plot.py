"""``python -m pretrain plot``: a PNG from metrics.jsonl, one-line errors otherwise."""

from __future__ import annotations

import json
import random
import struct

import pytest

from pretrain.cli import main as cli_main
from pretrain.metrics.plot import _panels, _series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _write_metrics(run, rtd=False, torn=False):
    rng = random.Random(0)
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 41):
        rec = {
            "step": step,
            "loss": 8.0 / step**0.3 + rng.random() * 0.1,
            "mlm_loss": 7.5 / step**0.3,
            "mlm_acc": min(0.6, step / 60),
            "lr": 1e-3 * min(1.0, step / 10),
            "tokens_per_s": 5000 + rng.random() * 100,
        }
        if rtd:
            rec.update(rtd_loss=0.3, rtd_acc=0.9, mfu=0.31)
        if step % 10 == 0:
            rec.update(eval_loss=rec["loss"] + 0.2, eval_mlm_acc=rec["mlm_acc"] - 0.05)
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n" + ('{"step": 41, "lo' if torn else "")
    (run / "metrics.jsonl").write_text(text)


@pytest.mark.parametrize("rtd", [False, True])
def test_plot_writes_png_default_location(tmp_path, capsys, rtd):
    run = tmp_path / "run"
    _write_metrics(run, rtd=rtd, torn=rtd)
    assert cli_main(["plot", str(run)]) == 0
    width, height = _png_size(run / "curves.png")
    assert (width, height) == (1440, 960)  # 12 x 8 inches at 120 dpi
    assert (run / "curves.png").stat().st_size > 20_000  # real curves, not an empty canvas
    out = capsys.readouterr().out
    assert "40 records" in out and ("1 unreadable" in out) == rtd


def test_plot_out_and_dpi(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run)
    out = tmp_path / "figs" / "x.png"
    assert cli_main(["plot", str(run), "--out", str(out), "--dpi", "50"]) == 0
    assert _png_size(out) == (600, 400)
    assert not (run / "curves.png").exists()


def test_plot_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["plot", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.jsonl" in err
    assert cli_main(["plot", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (empty / "metrics.jsonl").write_text('{"step": 1, "lo')
    assert cli_main(["plot", str(empty)]) == 2
    assert "no readable records" in capsys.readouterr().err
    run = tmp_path / "run"
    _write_metrics(run)
    assert cli_main(["plot", str(run), "--out", str(tmp_path / "x.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


def test_panel_selection_and_series():
    keys = ["step", "loss", "mlm_loss", "eval_loss", "mlm_acc", "eval_rtd_acc", "lr", "tokens"]
    panels = _panels(keys)
    assert panels["loss"] == ["loss", "mlm_loss", "eval_loss"]
    assert panels["accuracy"] == ["mlm_acc", "eval_rtd_acc"]
    assert panels["learning rate"] == ["lr"]
    assert panels["tokens/s"] == []
    records = [
        {"step": 2, "loss": 1.0},
        {"step": 1, "loss": float("nan")},
        {"step": 3, "loss": None},
        {"step": 4, "loss": 0.5},
    ]
    assert _series(records, "loss") == ([2, 4], [1.0, 0.5])
