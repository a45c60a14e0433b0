# Vivado: package the RTL engine's Verilog (autoq.hls.rtl, top bitserial_engine) as an IP-XACT core that
# block_design.tcl instantiates.
#
#   vivado -mode batch -source hls/scripts/rtl_package.tcl -tclargs <generated dir> <verilog file> <build dir>
#
# <generated dir> holds build_config.tcl (`python -m autoq.hls.vivado <manifest> <dir>`, with the Verilog): part,
# clock, top, VLNV, control span. Writes the core to <build dir>/rtl_ip (the <ip repo> of block_design.tcl).
# `make -C hls bitstream OVERLAY=<overlay>` runs this with the right arguments.
#
# Interfaces (port names: hls/rtl/__init__.py): s_axi_control, an AXI4-Lite slave on the s_axil_* ports with one
# address block of the register map's span; m_axi_gmem0, an AXI3 master on the m_axi_* ports (32-bit addresses,
# 64-bit data, 4 GiB address space); clk (FREQ_HZ = manifest clock) associated with both and with rst
# (synchronous, active high); interrupt (level, active high). The names match what block_design.tcl connects.
if {$argc != 3} {
    puts stderr "usage: vivado -mode batch -source rtl_package.tcl -tclargs <generated dir> <verilog file> <build dir>"
    exit 2
}
set gen_dir [file normalize [lindex $argv 0]]
set verilog [file normalize [lindex $argv 1]]
set build_dir [file normalize [lindex $argv 2]]
source [file join $gen_dir build_config.tcl]
if {![file exists $verilog]} {
    puts stderr "no Verilog at $verilog: write it first (make -C hls verilog OVERLAY=$AQ_OVERLAY)"
    exit 2
}
set ip_dir [file join $build_dir rtl_ip]
set slave s_axi_control
set master m_axi_gmem0

create_project -force ${AQ_OVERLAY}_rtl_ip [file join $build_dir rtl_ip_project] -part $AQ_PART
add_files -norecurse $verilog
set_property top $AQ_TOP [current_fileset]
update_compile_order -fileset sources_1
ipx::package_project -root_dir $ip_dir -vendor $AQ_IP_VENDOR -library $AQ_IP_LIBRARY -taxonomy /UserIP \
    -import_files -set_current true
set core [ipx::current_core]
set_property -dict [list vendor $AQ_IP_VENDOR library $AQ_IP_LIBRARY name $AQ_IP_NAME version $AQ_IP_VERSION \
    display_name "autoq bit-serial engine ($AQ_OVERLAY)" \
    description "autoq RTL bit-serial engine, overlay $AQ_OVERLAY, build $AQ_BUILD_HASH"] $core

# Whatever package_project inferred is replaced by the explicit interfaces below (stable names for the block design).
foreach bus [ipx::get_bus_interfaces -of_objects $core] {
    ipx::remove_bus_interface [get_property NAME $bus] $core
}

# Map logical AXI signal names to physical ports: {LOGICAL physical ...}
proc add_axi {core name mode prefix signals} {
    set bus [ipx::add_bus_interface $name $core]
    set_property abstraction_type_vlnv xilinx.com:interface:aximm_rtl:1.0 $bus
    set_property bus_type_vlnv xilinx.com:interface:aximm:1.0 $bus
    set_property interface_mode $mode $bus
    foreach logical $signals {
        set map [ipx::add_port_map [string toupper $logical] $bus]
        set_property physical_name ${prefix}_$logical $map
    }
    return $bus
}
set lite_signals {awaddr awvalid awready wdata wstrb wvalid wready bresp bvalid bready
                  araddr arvalid arready rdata rresp rvalid rready}
set full_signals {arid araddr arlen arsize arburst arvalid arready rid rdata rresp rlast rvalid rready
                  awid awaddr awlen awsize awburst awvalid awready wid wdata wstrb wlast wvalid wready
                  bid bresp bvalid bready}
set lite [add_axi $core $slave slave s_axil $lite_signals]
set full [add_axi $core $master master m_axi $full_signals]
set_property value AXI4LITE [ipx::add_bus_parameter PROTOCOL $lite]
set_property value AXI3 [ipx::add_bus_parameter PROTOCOL $full]
set_property value 64 [ipx::add_bus_parameter DATA_WIDTH $full]

# The slave's registers: one address block of the register map's span.
set memory_map [ipx::add_memory_map $slave $core]
set_property slave_memory_map_ref $slave $lite
set block [ipx::add_address_block reg0 $memory_map]
set_property range $AQ_CONTROL_SPAN $block
set_property width 32 $block
# The master's address space: the whole 32-bit DDR window.
set space [ipx::add_address_space $master $core]
set_property master_address_space_ref $master $full
set_property range 4G $space
set_property width 64 $space

# Clock, reset, interrupt, and which interfaces run on the clock.
set clk [ipx::add_bus_interface clk $core]
set_property abstraction_type_vlnv xilinx.com:signal:clock_rtl:1.0 $clk
set_property bus_type_vlnv xilinx.com:signal:clock:1.0 $clk
set_property interface_mode slave $clk
set_property physical_name clk [ipx::add_port_map CLK $clk]
set rst [ipx::add_bus_interface rst $core]
set_property abstraction_type_vlnv xilinx.com:signal:reset_rtl:1.0 $rst
set_property bus_type_vlnv xilinx.com:signal:reset:1.0 $rst
set_property interface_mode slave $rst
set_property physical_name rst [ipx::add_port_map RST $rst]
set_property value ACTIVE_HIGH [ipx::add_bus_parameter POLARITY $rst]
set irq [ipx::add_bus_interface interrupt $core]
set_property abstraction_type_vlnv xilinx.com:signal:interrupt_rtl:1.0 $irq
set_property bus_type_vlnv xilinx.com:signal:interrupt:1.0 $irq
set_property interface_mode master $irq
set_property physical_name interrupt [ipx::add_port_map INTERRUPT $irq]
set_property value LEVEL_HIGH [ipx::add_bus_parameter SENSITIVITY $irq]
set_property value ${slave}:${master} [ipx::add_bus_parameter ASSOCIATED_BUSIF $clk]
set_property value rst [ipx::add_bus_parameter ASSOCIATED_RESET $clk]
set_property value [expr {round($AQ_CLOCK_MHZ * 1e6)}] [ipx::add_bus_parameter FREQ_HZ $clk]

ipx::create_xgui_files $core
ipx::update_checksums $core
if {[catch {ipx::check_integrity $core} message]} {
    puts stderr "IP packaging of $AQ_TOP failed the integrity check: $message"
    exit 1
}
ipx::save_core $core
close_project
puts "packaged $AQ_VLNV from $verilog into $ip_dir"
exit
