"""``autoq bench overlay``: the sweep's figures, its table/JSON/plot output, and its errors."""
from __future__ import annotations

import json

import pytest

from autoq.common.backend import open_backend
from autoq.host.cli import main
from autoq.host.cli.bench_cmd import BenchError, bench_layers, overlay_sweep, parse_bits, render_table
from autoq.overlay.manifest import load_overlay

SHAPES = (
    ("conv", "conv", 16, 16, 3, 1, 1, 1, 8),
    ("dw", "depthwise", 16, 16, 3, 1, 1, 16, 8),
)


@pytest.fixture(scope="module")
def rows_by_backend():
    rows = {}
    for uri in ("model", "emulated"):
        backend = open_backend(uri)
        try:
            rows[uri] = overlay_sweep(backend, bench_layers(SHAPES), [(1, 1), (4, 4), (8, 2)], batch=2)
        finally:
            backend.close()
    return rows


def test_sweep_figures_are_consistent(rows_by_backend):
    rows = rows_by_backend["emulated"]
    assert [(r.layer, r.wbits, r.abits) for r in rows] == [(l, w, a) for l in ("conv", "dw") for w, a in [(1, 1), (4, 4), (8, 2)]]
    for row in rows:
        macs = 16 * (16 // (16 if row.kind == "depthwise" else 1)) * 9 * 64 * 2
        assert row.binary_ops == 2 * macs * row.wbits * row.abits
        assert row.achieved_ops_per_s == pytest.approx(row.binary_ops / row.latency_s)
        assert 0 < row.peak_fraction < 1
        assert row.utilisation[row.bound] == max(row.utilisation.values()) <= 1
    conv = {(r.wbits, r.abits): r for r in rows if r.layer == "conv"}
    assert conv[(4, 4)].achieved_ops_per_s > conv[(1, 1)].achieved_ops_per_s  # more bit-planes keep the array busier


def test_emulated_and_model_agree(rows_by_backend):
    model, emulated = rows_by_backend["model"], rows_by_backend["emulated"]
    assert [r.latency_s for r in model] == pytest.approx([r.latency_s for r in emulated], rel=1e-12)
    assert [r.bound for r in model] == [r.bound for r in emulated]


def test_table_lists_every_row(rows_by_backend):
    text = render_table(rows_by_backend["model"], 6.5536e12)
    assert text.startswith("peak 6553.6 binary GOPS") and len(text.splitlines()) == 3 + 6


def test_cli_json_and_plot(tmp_path, capsys):
    png = tmp_path / "bench.png"
    assert main(["bench", "overlay", "--backend", "model", "--bits", "2/2,8/8", "--json", "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    peak = load_overlay("pynq_z1").peak_binary_ops_per_s
    assert report["source"] == "model" and report["peak_binary_ops_per_s"] == pytest.approx(peak)
    assert len(report["rows"]) == 2 * len(bench_layers())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(BenchError, match="W/A pairs"):
        parse_bits("4-4")
    assert main(["bench", "overlay", "--bits", "4,4"]) == 2
    assert "autoq bench: error: --bits wants W/A pairs" in capsys.readouterr().err
    assert main(["bench", "overlay", "--bits", "9/9"]) == 2
    assert "out of range" in capsys.readouterr().err
