"""The Vivado flow of the RTL engine (``hls/Makefile``, ``hls/scripts/*.tcl``, ``autoq.hls.vivado``): the Tcl
scripts executed by a real Tcl interpreter with the Vivado commands stubbed, the settings they source, the Makefile.

This checks what can be checked without the tools: the scripts parse and run to the end, take their part, clock,
top module and VLNV from the generated settings, package every engine port into the interfaces the block design
wires, and write the bitstream and .hwh where the Makefile expects them. Whether Vivado accepts every option is
only checked by the ``vivado``-marked test at the end.
"""
import re
import shutil
import subprocess
import sys

import pytest

from autoq.overlay.manifest import ManifestError, bitstreams_dir, load_overlay

pytest.importorskip("amaranth", reason="the build settings are checked against the RTL engine (pip install amaranth)")

from autoq.hls import vivado  # noqa: E402  (imports amaranth)

tkinter = pytest.importorskip("tkinter", reason="running the Tcl scripts needs Python's tkinter (Tcl interpreter)")

STUBS = r"""
set ::calls {}
set ::exit_code {}
proc record {name args} { lappend ::calls [concat [list $name] $args]; return "" }
foreach command {add_files create_project set_property current_project update_ip_catalog create_bd_design
                 apply_bd_automation assign_bd_address validate_bd_design save_bd_design generate_target launch_runs
                 wait_on_run open_run current_fileset} {
    proc $command args "record $command {*}\$args"
}
proc create_bd_cell args { record create_bd_cell {*}$args; return [lindex $args end] }
proc get_board_parts args { return "" }
proc get_bd_intf_pins args { return [lindex $args end] }
proc get_bd_addr_spaces args { return [lindex $args end] }
proc get_bd_addr_segs args { return {ps7/Data/SEG_engine_Reg} }
proc get_files args { return system.bd }
proc make_wrapper args { return system_wrapper.v }
proc get_runs args { return impl_1 }
proc get_timing_paths args { return worst_path }
proc get_property {name object} {
    switch -- $name {
        PROGRESS { return 100% }
        STATUS { return done }
        DIRECTORY { return $::run_dir }
        SLACK { return $::slack }
    }
    error "unexpected get_property $name"
}
proc exit {{code 0}} { set ::exit_code $code; return -code return }
"""


def run_script(script: str, args: list[str], **variables: str) -> tkinter.Tcl:
    tcl = tkinter.Tcl()
    tcl.eval(STUBS)
    for name, value in variables.items():
        tcl.setvar(name, value)
    tcl.setvar("argv", tcl.call("list", *args))
    tcl.setvar("argc", str(len(args)))
    tcl.call("source", str(vivado.hls_dir() / "scripts" / script))
    return tcl


def words(tcl: tkinter.Tcl, value: object) -> tuple[str, ...]:
    return tuple(str(item) for item in tcl.splitlist(value))


def calls(tcl: tkinter.Tcl, name: str) -> list[tuple[str, ...]]:
    """Arguments of every call of the stubbed command ``name``, in order."""
    recorded = [words(tcl, call) for call in tcl.splitlist(tcl.eval("set ::calls"))]
    return [call[1:] for call in recorded if call[0] == name]


def exit_code(tcl: tkinter.Tcl) -> str:
    return tcl.eval("set ::exit_code")


# ---- the engine's IP packaging (rtl_package.tcl) and its block design

RTL_STUBS = r"""
namespace eval ipx {}
foreach command {create_project add_files update_compile_order ipx::package_project ipx::remove_bus_interface
                 ipx::create_xgui_files ipx::update_checksums ipx::check_integrity ipx::save_core close_project} {
    proc $command args "record $command {*}\$args"
}
proc ipx::current_core args { return core }
proc ipx::get_bus_interfaces args { return $::inferred }
proc ipx::add_bus_interface {name core} { record ipx::add_bus_interface $name $core; return bus:$name }
proc ipx::add_port_map {logical bus} { record ipx::add_port_map $logical $bus; return map:$bus:$logical }
proc ipx::add_bus_parameter {name bus} { record ipx::add_bus_parameter $name $bus; return param:$bus:$name }
proc ipx::add_memory_map {name core} { record ipx::add_memory_map $name $core; return mmap:$name }
proc ipx::add_address_block {name map} { record ipx::add_address_block $name $map; return block:$map:$name }
proc ipx::add_address_space {name core} { record ipx::add_address_space $name $core; return space:$name }
rename get_property vivado_get_property
proc get_property {name object} {
    if {$name eq "NAME"} { return $object }
    return [vivado_get_property $name $object]
}
"""


def rtl_generated(tmp_path, overlay_name: str = "pynq_z1"):
    """build_config.tcl of an overlay in a temporary folder (what ``make verilog`` writes beside the Verilog)."""
    folder = tmp_path / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / vivado.BUILD_TCL).write_text(vivado.render_build_tcl(load_overlay(overlay_name)))
    return folder


def run_rtl_package(tmp_path, verilog, inferred: str = "s_axil m_axi clk rst"):
    tcl = tkinter.Tcl()
    tcl.eval(STUBS)
    tcl.eval(RTL_STUBS)
    tcl.setvar("inferred", inferred)
    args = [str(rtl_generated(tmp_path)), str(verilog), str(tmp_path / "build")]
    tcl.setvar("argv", tcl.call("list", *args))
    tcl.setvar("argc", str(len(args)))
    tcl.call("source", str(vivado.hls_dir() / "scripts" / "rtl_package.tcl"))
    return tcl


def set_properties(tcl) -> dict[tuple[str, str], str]:
    """(object, property) -> value of every plain ``set_property NAME VALUE OBJECT`` call."""
    return {(c[2], c[0]): c[1] for c in calls(tcl, "set_property") if len(c) == 3 and c[0] != "-dict"}


def test_rtl_package_script_maps_every_engine_port_to_its_interface(tmp_path):
    from autoq.hls.rtl.engine import TOP, signature_of
    from autoq.overlay.regmap import RegisterMap

    overlay = load_overlay("pynq_z1")
    verilog = tmp_path / "bitserial_engine.v"
    verilog.write_text("module bitserial_engine(); endmodule\n")
    tcl = run_rtl_package(tmp_path, verilog)
    assert exit_code(tcl) in ("", "0")
    (project,) = calls(tcl, "create_project")
    assert project[-2:] == ("-part", overlay.part)
    assert calls(tcl, "add_files") == [("-norecurse", str(verilog))]
    assert any(c[:2] == ("top", TOP) for c in calls(tcl, "set_property"))
    (package,) = calls(tcl, "ipx::package_project")
    assert package[package.index("-root_dir") + 1] == str(tmp_path / "build" / "rtl_ip")
    (core_dict,) = [words(tcl, c[1]) for c in calls(tcl, "set_property") if c[0] == "-dict"]
    core = dict(zip(core_dict[::2], core_dict[1::2]))
    assert ":".join(core[k] for k in ("vendor", "library", "name", "version")) == overlay.vlnv
    assert overlay.build_hash in core["description"]
    # the interfaces package_project inferred are dropped, the explicit ones added
    assert calls(tcl, "ipx::remove_bus_interface") == [(name, "core") for name in ("s_axil", "m_axi", "clk", "rst")]
    props = set_properties(tcl)
    interfaces = {c[0] for c in calls(tcl, "ipx::add_bus_interface")}
    assert interfaces == {"s_axi_control", "m_axi_gmem0", "clk", "rst", "interrupt"}
    assert props[("bus:s_axi_control", "interface_mode")] == "slave"
    assert props[("bus:m_axi_gmem0", "interface_mode")] == "master"
    for bus in ("s_axi_control", "m_axi_gmem0"):
        assert props[(f"bus:{bus}", "abstraction_type_vlnv")] == "xilinx.com:interface:aximm_rtl:1.0"
    # every top-level port of the engine is mapped exactly once, to a logical name of its own protocol
    mapped = {props[(f"map:{bus}:{logical}", "physical_name")]: (bus, logical)
              for logical, bus in calls(tcl, "ipx::add_port_map")}
    assert set(mapped) == set(signature_of(overlay).members) | {"clk", "rst"}
    assert len(mapped) == len(calls(tcl, "ipx::add_port_map"))
    for port, (bus, logical) in mapped.items():
        if port.startswith("s_axil_"):
            assert bus == "bus:s_axi_control" and logical == port[len("s_axil_"):].upper()
        elif port.startswith("m_axi_"):
            assert bus == "bus:m_axi_gmem0" and logical == port[len("m_axi_"):].upper()
    assert props[("param:bus:s_axi_control:PROTOCOL", "value")] == "AXI4LITE"
    assert props[("param:bus:m_axi_gmem0:PROTOCOL", "value")] == "AXI3"
    assert props[("param:bus:m_axi_gmem0:DATA_WIDTH", "value")] == "64"
    # clock: the manifest frequency, both AXI interfaces and the reset on it; reset active high
    assert int(props[("param:bus:clk:FREQ_HZ", "value")]) == round(overlay.clock_hz)
    assert props[("param:bus:clk:ASSOCIATED_BUSIF", "value")].split(":") == ["s_axi_control", "m_axi_gmem0"]
    assert props[("param:bus:clk:ASSOCIATED_RESET", "value")] == "rst"
    assert props[("param:bus:rst:POLARITY", "value")] == "ACTIVE_HIGH"
    # the register window covers the register map (at least one 4 KiB page); the master sees 4 GiB
    assert int(props[("block:mmap:s_axi_control:reg0", "range")], 16) == max(RegisterMap.from_overlay(overlay).span, 4096)
    assert props[("bus:s_axi_control", "slave_memory_map_ref")] == "s_axi_control"
    assert props[("space:m_axi_gmem0", "range")] == "4G"
    assert calls(tcl, "ipx::save_core") == [("core",)]


def test_rtl_package_script_refuses_a_missing_verilog_file(tmp_path):
    tcl = run_rtl_package(tmp_path, tmp_path / "absent.v")
    assert exit_code(tcl) == "2"
    assert calls(tcl, "ipx::package_project") == []


def test_block_design_script_wires_the_packaged_engine_and_writes_bit_and_hwh(tmp_path):
    """block_design.tcl: the interfaces it connects are the ones rtl_package.tcl creates."""
    overlay = load_overlay("pynq_z1")
    verilog = tmp_path / "bitserial_engine.v"
    verilog.write_text("module bitserial_engine(); endmodule\n")
    packaged = {c[0] for c in calls(run_rtl_package(tmp_path, verilog), "ipx::add_bus_interface")}
    build, out, run_dir = tmp_path / "build", tmp_path / "out", tmp_path / "runs" / "impl_1"
    run_dir.mkdir(parents=True)
    (run_dir / "system_wrapper.bit").write_bytes(b"rtl bitstream")
    handoff = build / "vivado" / f"{overlay.name}_bd.gen" / "sources_1" / "bd" / "system" / "hw_handoff"
    handoff.mkdir(parents=True)
    (handoff / "system.hwh").write_text("<hwh/>")
    args = [str(rtl_generated(tmp_path)), str(build / "rtl_ip"), str(build), str(out)]
    tcl = run_script("block_design.tcl", args, run_dir=str(run_dir), slack="0.0")
    assert exit_code(tcl) in ("", "0")
    assert (out / f"{overlay.name}.bit").read_bytes() == b"rtl bitstream"
    assert (out / f"{overlay.name}.hwh").read_text() == "<hwh/>"
    (project,) = calls(tcl, "create_project")
    assert project[-2:] == ("-part", overlay.part)
    assert any(c[0] == "ip_repo_paths" and words(tcl, c[1]) == (str(build / "rtl_ip"),)
               for c in calls(tcl, "set_property"))
    cells = {c[-1]: c[c.index("-vlnv") + 1] for c in calls(tcl, "create_bd_cell")}
    assert cells["engine"] == overlay.vlnv and cells["ps7"].startswith("xilinx.com:ip:processing_system7:")
    (ps_dict,) = [words(tcl, c[1]) for c in calls(tcl, "set_property") if c[0] == "-dict"]
    ps_settings = dict(zip(ps_dict[::2], ps_dict[1::2]))
    assert float(ps_settings["CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ"]) == overlay.clock_mhz
    assert ps_settings["CONFIG.PCW_S_AXI_HP0_DATA_WIDTH"] == "64"
    assert ps_settings["CONFIG.PCW_USE_S_AXI_HP0"] == "1" and ps_settings["CONFIG.PCW_USE_M_AXI_GP0"] == "1"
    automation = " ".join(" ".join(c) for c in calls(tcl, "apply_bd_automation"))
    assert "/ps7/M_AXI_GP0" in automation and "/ps7/S_AXI_HP0" in automation
    connected = set(re.findall(r"engine/(\w+)", automation))
    assert connected == {"s_axi_control", "m_axi_gmem0"} and connected <= packaged
    assert ("range", "0x1000", "ps7/Data/SEG_engine_Reg") in calls(tcl, "set_property")


def test_block_design_script_refuses_a_build_that_misses_timing(tmp_path):
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    args = [str(rtl_generated(tmp_path)), str(tmp_path / "ip"), str(tmp_path / "build"), str(tmp_path / "out")]
    tcl = run_script("block_design.tcl", args, run_dir=str(run_dir), slack="-0.001")
    assert exit_code(tcl) == "1"
    assert not (tmp_path / "out").exists()


# ---- the settings, the Makefile, the whole flow

def test_build_settings_come_from_the_manifest_and_cover_what_the_scripts_use():
    overlay = load_overlay("pynq_z1")
    settings = dict(re.findall(r"^set (\w+) \{(.*)\}$", vivado.render_build_tcl(overlay), re.M))
    assert settings["AQ_PART"] == overlay.part == "xc7z020clg400-1" and settings["AQ_BUILD_HASH"] == overlay.build_hash
    assert settings["AQ_VLNV"] == overlay.vlnv == "autoq:rtl:bitserial_engine:2.0"
    assert ":".join(settings[f"AQ_IP_{p}"] for p in ("VENDOR", "LIBRARY", "NAME", "VERSION")) == overlay.vlnv
    assert float(settings["AQ_CLOCK_PERIOD_NS"]) == pytest.approx(1000 / overlay.clock_mhz)
    assert settings["AQ_TOP"] == "bitserial_engine"
    scripts = [(vivado.hls_dir() / "scripts" / name).read_text() for name in ("rtl_package.tcl", "block_design.tcl")]
    for script in scripts:
        assert "source [file join $gen_dir build_config.tcl]" in script
    used = set(re.findall(r"\$(AQ_\w+)", "".join(scripts)))
    assert used <= set(settings), f"scripts use settings the generator does not write: {used - set(settings)}"


@pytest.mark.parametrize("changes, reason", [({"vlnv": "just-a-name"}, "vendor:library:name:version"),
                                             ({"dram_width_bits": 128}, "64-bit AXI3"),
                                             ({"regmap_version": 3}, "register map v2")])
def test_unbuildable_manifests_are_refused_with_the_reason(changes, reason):
    with pytest.raises(ManifestError, match=reason):
        vivado.render_build_tcl(load_overlay("rtl_small").with_changes(**changes))


def test_the_build_inputs_command_writes_settings_and_verilog(tmp_path):
    done = subprocess.run([sys.executable, "-m", "autoq.hls.vivado", "rtl_small", str(tmp_path / "build")],
                          capture_output=True, text=True, check=True)
    overlay = load_overlay("rtl_small")
    assert (tmp_path / "build" / vivado.BUILD_TCL).read_text() == vivado.render_build_tcl(overlay)
    assert "module bitserial_engine(" in (tmp_path / "build" / vivado.VERILOG).read_text()
    assert done.stdout.count("wrote ") == 2
    bad = subprocess.run([sys.executable, "-m", "autoq.hls.vivado", "nope", str(tmp_path / "other")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no overlay named 'nope'" in bad.stderr and not (tmp_path / "other").exists()


@pytest.mark.parametrize("target", ["bitstream", "rtl-bitstream", ""])
def test_make_dry_run_writes_verilog_then_packages_it_then_builds_the_bitstream(tmp_path, target):
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    build = tmp_path / "build"
    out = subprocess.run(["make", "-n", "-C", str(vivado.hls_dir()), *([target] if target else []), "OVERLAY=pynq_z1",
                          f"BUILD_DIR={build}"], capture_output=True, text=True, check=True).stdout
    manifest = str(bitstreams_dir() / "pynq_z1" / "manifest.json")
    steps = [f"-m autoq.hls.vivado {manifest} {build}",
             f"rtl_package.tcl -tclargs {build} {build / 'bitserial_engine.v'} {build}",
             f"block_design.tcl -tclargs {build} {build / 'rtl_ip'} {build} {bitstreams_dir() / 'pynq_z1'}",
             "sha256sum pynq_z1.bit pynq_z1.hwh manifest.json > checksums.sha256.tmp"]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions) if p == -1]
    assert positions == sorted(positions)


@pytest.mark.vivado
def test_vendor_flow_builds_a_verified_bitstream(tmp_path):
    """The full flow: Verilog, IP packaging, Vivado block design and implementation, checksums."""
    out = tmp_path / "pynq_z1"
    subprocess.run(["make", "-C", str(vivado.hls_dir()), "bitstream", "OVERLAY=pynq_z1", f"OUT_DIR={out}",
                    f"BUILD_DIR={tmp_path / 'build'}"], check=True, timeout=4 * 3600)
    for name in ("pynq_z1.bit", "pynq_z1.hwh", "manifest.json", "checksums.sha256"):
        assert (out / name).is_file()
    from autoq.overlay.board import BitstreamRegistry

    build = BitstreamRegistry(tmp_path).resolve("pynq_z1")
    assert build.bitstream and build.hwh
    assert load_overlay("pynq_z1").vlnv in (out / "pynq_z1.hwh").read_text()
