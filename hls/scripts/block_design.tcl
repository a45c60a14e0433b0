# Vivado: the PYNQ-Z1 block design around the engine IP, implemented to a bitstream and a .hwh.
#
#   vivado -mode batch -source hls/scripts/block_design.tcl -tclargs <generated dir> <ip repo> <build dir> <out dir>
#
# <generated dir> holds build_config.tcl (python -m autoq.hls.vivado), <ip repo> the engine core rtl_package.tcl
# packaged (<build dir>/rtl_ip). Writes <out dir>/<overlay>.bit and <out dir>/<overlay>.hwh.
# `make -C hls bitstream OVERLAY=<overlay>` runs this with the right arguments.
#
# Design: Zynq-7000 PS (DDR, FCLK_CLK0 at the manifest clock, M_AXI_GP0 master, one S_AXI_HP port per engine DRAM
# port), the engine, AXI SmartConnects (GP0 -> engine control; engine m_axi_gmem<i> -> HP<i>), a processor system
# reset on FCLK_CLK0, and an address map with the engine's control registers in the GP0 window.
if {$argc != 4} {
    puts stderr "usage: vivado -mode batch -source block_design.tcl -tclargs <generated dir> <ip repo> <build dir> <out dir>"
    exit 2
}
set gen_dir [file normalize [lindex $argv 0]]
set ip_repo [file normalize [lindex $argv 1]]
set build_dir [file normalize [lindex $argv 2]]
set out_dir [file normalize [lindex $argv 3]]
source [file join $gen_dir build_config.tcl]

create_project -force ${AQ_OVERLAY}_bd [file join $build_dir vivado] -part $AQ_PART
# The Digilent PYNQ-Z1 board files give the PS its DDR and MIO presets; without them the DDR part is set below.
set board [lindex [get_board_parts -quiet -latest_file_version {*pynq-z1*}] 0]
if {$board ne ""} {
    set_property board_part $board [current_project]
}
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog
create_bd_design system

set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7:5.5 ps7]
apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
    -config [list make_external {FIXED_IO, DDR} apply_board_preset [expr {$board ne "" ? 1 : 0}] Master Disable Slave Disable] $ps
set ps_config [list CONFIG.PCW_USE_M_AXI_GP0 1 CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $AQ_CLOCK_MHZ]
for {set port 0} {$port < $AQ_DRAM_PORTS} {incr port} {
    lappend ps_config CONFIG.PCW_USE_S_AXI_HP${port} 1 CONFIG.PCW_S_AXI_HP${port}_DATA_WIDTH 64
}
if {$board eq ""} {
    lappend ps_config CONFIG.PCW_UIPARAM_DDR_PARTNO {MT41K256M16 RE-125} CONFIG.PCW_UIPARAM_DDR_BUS_WIDTH {16 Bit} \
        CONFIG.PCW_CRYSTAL_PERIPHERAL_FREQMHZ 50
}
set_property -dict $ps_config $ps

set engine [create_bd_cell -type ip -vlnv $AQ_VLNV engine]
apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
    -config {Master /ps7/M_AXI_GP0 Clk_master Auto Clk_slave Auto Clk_xbar Auto intc_ip {New AXI SmartConnect}} \
    [get_bd_intf_pins engine/s_axi_control]
for {set port 0} {$port < $AQ_DRAM_PORTS} {incr port} {
    apply_bd_automation -rule xilinx.com:bd_rule:axi4 \
        -config [list Master /engine/m_axi_gmem${port} Slave /ps7/S_AXI_HP${port} Clk_master Auto Clk_slave Auto Clk_xbar Auto intc_ip {New AXI SmartConnect}] \
        [get_bd_intf_pins ps7/S_AXI_HP${port}]
}
assign_bd_address
foreach segment [get_bd_addr_segs -of_objects [get_bd_addr_spaces ps7/Data] -filter {NAME =~ "*engine*"}] {
    set_property range $AQ_CONTROL_SPAN $segment
}
validate_bd_design
save_bd_design

set bd_file [get_files system.bd]
generate_target all $bd_file
add_files -norecurse [make_wrapper -files $bd_file -top]
set_property top system_wrapper [current_fileset]
launch_runs impl_1 -to_step write_bitstream -jobs 4
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    puts stderr "implementation did not finish: [get_property STATUS [get_runs impl_1]]"
    exit 1
}
open_run impl_1
set slack [get_property SLACK [get_timing_paths -max_paths 1 -nworst 1 -setup]]
if {$slack < 0} {
    puts stderr "timing not met at $AQ_CLOCK_MHZ MHz (worst setup slack $slack ns): lower clock_mhz in the manifest"
    exit 1
}

file mkdir $out_dir
set run_dir [get_property DIRECTORY [get_runs impl_1]]
file copy -force [file join $run_dir system_wrapper.bit] [file join $out_dir ${AQ_OVERLAY}.bit]
set hwh [lindex [glob -nocomplain [file join $build_dir vivado ${AQ_OVERLAY}_bd.gen sources_1 bd system hw_handoff system.hwh] \
                                   [file join $build_dir vivado ${AQ_OVERLAY}_bd.srcs sources_1 bd system hw_handoff system.hwh]] 0]
if {$hwh eq ""} {
    puts stderr "no system.hwh was generated"
    exit 1
}
file copy -force $hwh [file join $out_dir ${AQ_OVERLAY}.hwh]
puts "wrote [file join $out_dir ${AQ_OVERLAY}.bit] and [file join $out_dir ${AQ_OVERLAY}.hwh]"
exit
