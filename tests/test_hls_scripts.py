"""The vendor Tcl scripts, executed by a real Tcl interpreter with the Vitis HLS / Vivado commands stubbed.

This checks what can be checked without the tools: the scripts parse and run to the end, take their part, clock,
top function and VLNV from the generated settings, wire the block design as described, and write the bitstream
and .hwh where the Makefile expects them. Whether the tools accept every option is only checked by the
``vivado``-marked test in test_hls_codegen.py.
"""
import pytest

from autoq.hls import codegen
from autoq.overlay.manifest import load_overlay

tkinter = pytest.importorskip("tkinter", reason="running the Tcl scripts needs Python's tkinter (Tcl interpreter)")

STUBS = r"""
set ::calls {}
set ::exit_code {}
proc record {name args} { lappend ::calls [concat [list $name] $args]; return "" }
foreach command {open_project set_top add_files open_solution set_part create_clock csynth_design export_design
                 create_project set_property current_project update_ip_catalog create_bd_design apply_bd_automation
                 assign_bd_address validate_bd_design save_bd_design generate_target launch_runs wait_on_run open_run
                 current_fileset cd} {
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
    tcl.call("source", str(codegen.hls_dir() / "scripts" / script))
    return tcl


def words(tcl: tkinter.Tcl, value: object) -> tuple[str, ...]:
    return tuple(str(item) for item in tcl.splitlist(value))


def calls(tcl: tkinter.Tcl, name: str) -> list[tuple[str, ...]]:
    """Arguments of every call of the stubbed command ``name``, in order."""
    recorded = [words(tcl, call) for call in tcl.splitlist(tcl.eval("set ::calls"))]
    return [call[1:] for call in recorded if call[0] == name]


def exit_code(tcl: tkinter.Tcl) -> str:
    return tcl.eval("set ::exit_code")


def test_hls_synthesis_script_uses_the_generated_settings(tmp_path):
    overlay = load_overlay("pynq_z1")
    generated = codegen.generated_dir("pynq_z1")
    tcl = run_script("hls_synth.tcl", [str(generated), str(tmp_path / "build")])
    assert exit_code(tcl) in ("", "0")
    assert calls(tcl, "set_part") == [(overlay.part,)]
    assert calls(tcl, "set_top") == [(codegen.TOP_FUNCTION,)]
    assert calls(tcl, "create_clock") == [("-period", "5", "-name", "default")]
    sources = [c[0] for c in calls(tcl, "add_files")]
    assert str(codegen.hls_dir() / "src" / "engine.cpp") in sources
    assert str(generated / codegen.CONFIG_HEADER) in sources
    assert all(f"-I{generated}" in c[-1] for c in calls(tcl, "add_files"))
    (export,) = calls(tcl, "export_design")
    options = dict(zip(export[::2], export[1::2]))
    vlnv = ":".join(options[f"-{key}"] for key in ("vendor", "library", "ipname", "version"))
    assert vlnv == overlay.vlnv and options["-format"] == "ip_catalog"
    assert calls(tcl, "csynth_design") == [()]


def test_block_design_script_wires_the_engine_and_writes_bit_and_hwh(tmp_path):
    overlay = load_overlay("pynq_z1")
    build, out, run_dir = tmp_path / "build", tmp_path / "out", tmp_path / "runs" / "impl_1"
    run_dir.mkdir(parents=True)
    (run_dir / "system_wrapper.bit").write_bytes(b"bitstream")
    handoff = build / "vivado" / "pynq_z1_bd.gen" / "sources_1" / "bd" / "system" / "hw_handoff"
    handoff.mkdir(parents=True)
    (handoff / "system.hwh").write_text("<hwh/>")
    args = [str(codegen.generated_dir("pynq_z1")), str(tmp_path / "ip"), str(build), str(out)]
    tcl = run_script("block_design.tcl", args, run_dir=str(run_dir), slack="0.25")
    assert exit_code(tcl) in ("", "0")
    assert (out / "pynq_z1.bit").read_bytes() == b"bitstream" and (out / "pynq_z1.hwh").read_text() == "<hwh/>"
    (project,) = calls(tcl, "create_project")
    assert project[-2:] == ("-part", overlay.part)
    cells = {c[-1]: c[c.index("-vlnv") + 1] for c in calls(tcl, "create_bd_cell")}
    assert cells["engine"] == overlay.vlnv and cells["ps7"].startswith("xilinx.com:ip:processing_system7:")
    (ps_dict,) = [words(tcl, c[1]) for c in calls(tcl, "set_property") if c[0] == "-dict"]
    ps_settings = dict(zip(ps_dict[::2], ps_dict[1::2]))
    assert ps_settings["CONFIG.PCW_USE_S_AXI_HP0"] == "1" and ps_settings["CONFIG.PCW_USE_M_AXI_GP0"] == "1"
    assert float(ps_settings["CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ"]) == overlay.clock_mhz
    automation = " ".join(" ".join(c) for c in calls(tcl, "apply_bd_automation"))
    assert "/ps7/M_AXI_GP0" in automation and "engine/s_axi_control" in automation
    assert "/engine/m_axi_gmem0" in automation and "/ps7/S_AXI_HP0" in automation
    assert ("range", "0x1000", "ps7/Data/SEG_engine_Reg") in calls(tcl, "set_property")


def test_block_design_script_refuses_a_design_that_misses_timing(tmp_path):
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    args = [str(codegen.generated_dir("pynq_z1")), str(tmp_path / "ip"), str(tmp_path / "build"), str(tmp_path / "out")]
    tcl = run_script("block_design.tcl", args, run_dir=str(run_dir), slack="-0.4")
    assert exit_code(tcl) == "1"
    assert not (tmp_path / "out").exists()
