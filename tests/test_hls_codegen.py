"""Manifest -> HLS config header / Tcl settings: no drift, offsets from the register map, scripts that agree."""
import re
import shutil
import subprocess

import pytest

from autoq.hls import codegen
from autoq.host.cli import main
from autoq.overlay.manifest import ManifestError, OverlayConfig, bitstreams_dir, load_overlay
from autoq.overlay.regmap import RegisterMap
from autoq.overlay.schedule import ScheduleError, ScheduleParams

# The HLS C++ engine speaks register map v1; v2 overlays are built from the RTL (hls/rtl), which has no generated C++.
MANIFESTS = [p for p in sorted(bitstreams_dir().glob("*/manifest.json")) if OverlayConfig.load(p).regmap_version == 1]
SCRIPTS = codegen.hls_dir() / "scripts"


def macro_body(header: str, name: str) -> list[str]:
    """The lines of a multi-line ``#define name`` (continuations stripped)."""
    match = re.search(rf"^#define {re.escape(name)} \\\n((?:.*\\\n)*.*)$", header, re.M)
    assert match, f"no macro {name}"
    return [line.strip().rstrip("\\").strip() for line in match.group(1).splitlines()]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.parent.name)
def test_generated_files_match_a_fresh_rendering(manifest):
    """Fails when a manifest changed without `autoq hls generate` (or the generated files were edited)."""
    overlay = OverlayConfig.load(manifest)
    folder = codegen.generated_dir(overlay.name)
    for name, text in codegen.render_all(overlay).items():
        assert (folder / name).exists(), f"{folder / name} is missing: run `autoq hls generate --overlay {overlay.name}`"
        assert (folder / name).read_text() == text, f"{folder / name} drifted from {manifest}: run `autoq hls generate`"


def test_generate_check_cli_reports_drift(tmp_path, capsys):
    assert main(["hls", "generate", "--output", str(tmp_path)]) == 0
    assert main(["hls", "generate", "--output", str(tmp_path), "--check"]) == 0
    header = tmp_path / codegen.CONFIG_HEADER
    header.write_text(header.read_text().replace("static const unsigned DM = 8;", "static const unsigned DM = 16;"))
    assert main(["hls", "generate", "--output", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().out


def test_header_pins_every_register_to_the_python_map():
    overlay = load_overlay("pynq_z1")
    header = codegen.render_config_header(overlay)
    regmap = RegisterMap.from_overlay(overlay)
    ports = [reg for reg in regmap if reg.section != "control"]
    pinned = dict(re.findall(r"s_axilite port=(\w+) offset=(0x[0-9a-f]+)", header))
    assert {name: int(offset, 16) for name, offset in pinned.items()} == {reg.name: reg.offset for reg in ports}
    assert [line.split()[-1] for line in macro_body(header, "AQ_TOP_PARAMS")] == [r.name + "," for r in ports[:-1]] + [ports[-1].name]
    for reg in regmap:
        assert f"#define AQ_REG_{reg.name.upper()} {reg.offset:#x}\n" in header
    for name, value in regmap.id_values.items():
        assert f"constexpr unsigned {name.upper()} = {value:#010x}u;" in header
    for name in ("DM", "DN", "DK", "MAX_BITS", "LHS_MEM_WORDS", "RHS_MEM_WORDS"):
        assert f"    static const unsigned {name} = {getattr(overlay, name.lower())};" in header
    assert f"constexpr double DRAM_EFFICIENCY = {ScheduleParams().dram_efficiency!r};" in header


def test_unbuildable_manifests_are_refused_with_the_reason():
    base = load_overlay("pynq_z1")
    for changes, reason in (({"dk": 96}, "multiple of the 64-bit"), ({"acc_bits": 24}, "32-bit results"),
                            ({"dram_width_bits": 128}, "64-bit DDR words"), ({"vlnv": "just-a-name"}, "vendor:library")):
        with pytest.raises(ManifestError, match=reason):
            codegen.render_all(base.with_changes(**changes))
    with pytest.raises(ScheduleError, match="per_image_convs"):
        codegen.render_config_header(base, ScheduleParams(per_image_convs=True))


def test_build_settings_and_scripts_agree_with_the_manifest():
    overlay = load_overlay("pynq_z1")
    settings = dict(re.findall(r"^set (\w+) \{(.*)\}$", codegen.render_build_tcl(overlay), re.M))
    assert settings["AQ_PART"] == overlay.part == "xc7z020clg400-1"
    assert settings["AQ_VLNV"] == overlay.vlnv
    assert ":".join(settings[f"AQ_IP_{p}"] for p in ("VENDOR", "LIBRARY", "NAME", "VERSION")) == overlay.vlnv
    assert float(settings["AQ_CLOCK_PERIOD_NS"]) == pytest.approx(1000 / overlay.clock_mhz)
    assert settings["AQ_TOP"] == codegen.TOP_FUNCTION
    assert f"void {codegen.TOP_FUNCTION}(AQ_TOP_PARAMS)" in (codegen.hls_dir() / "src" / "engine.cpp").read_text()
    synth = (SCRIPTS / "hls_synth.tcl").read_text()
    design = (SCRIPTS / "block_design.tcl").read_text()
    for script in (synth, design):
        assert "source [file join $gen_dir build_config.tcl]" in script
    used = set(re.findall(r"\$(AQ_\w+)", synth + design))
    assert used <= set(settings), f"scripts use settings the generator does not write: {used - set(settings)}"
    assert {"AQ_PART", "AQ_CLOCK_PERIOD_NS", "AQ_TOP", "AQ_IP_VENDOR", "AQ_IP_LIBRARY", "AQ_IP_NAME", "AQ_IP_VERSION"} <= set(re.findall(r"\$(AQ_\w+)", synth))
    assert {"AQ_PART", "AQ_VLNV", "AQ_CLOCK_MHZ", "AQ_DRAM_PORTS"} <= set(re.findall(r"\$(AQ_\w+)", design))
    assert "engine_config.hpp" in synth and "engine.cpp" in synth
    makefile = (codegen.hls_dir() / "Makefile").read_text()
    for needed in ("scripts/hls_synth.tcl", "scripts/block_design.tcl", "sha256sum $(OVERLAY).bit $(OVERLAY).hwh manifest.json",
                   "checksums.sha256", "--check"):
        assert needed in makefile


def test_make_dry_run_wires_generated_config_and_output_folder():
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-C", str(codegen.hls_dir()), "bitstream", "OVERLAY=pynq_z1"],
                         capture_output=True, text=True, check=True).stdout
    generated = codegen.generated_dir("pynq_z1")
    assert f"hls_synth.tcl -tclargs {generated} " in out
    assert f"block_design.tcl -tclargs {generated} " in out and str(bitstreams_dir() / "pynq_z1") in out


@pytest.mark.vivado
def test_vendor_flow_builds_a_verified_bitstream(tmp_path):
    """The full flow: Vitis HLS synthesis, Vivado block design and implementation, checksums."""
    out = tmp_path / "pynq_z1"
    subprocess.run(["make", "-C", str(codegen.hls_dir()), "bitstream", "OVERLAY=pynq_z1", f"OUT_DIR={out}",
                    f"BUILD_DIR={tmp_path / 'build'}"], check=True, timeout=4 * 3600)
    for name in ("pynq_z1.bit", "pynq_z1.hwh", "manifest.json", "checksums.sha256"):
        assert (out / name).is_file()
    from autoq.overlay.board import BitstreamRegistry

    build = BitstreamRegistry(tmp_path).resolve("pynq_z1")
    assert build.bitstream and build.hwh
    hwh = (out / "pynq_z1.hwh").read_text()
    assert load_overlay("pynq_z1").vlnv in hwh
