# Vitis HLS: synthesise the bit-serial engine for one overlay and export it as an IP-XACT core.
#
#   vitis_hls -f hls/scripts/hls_synth.tcl -tclargs <generated dir> <build dir>
#
# <generated dir> is hls/generated/<overlay>/ (written by `autoq hls generate --overlay <overlay>`): its
# build_config.tcl gives the part, clock, top function and VLNV; its engine_config.hpp the array dimensions and
# register offsets. `make -C hls ip OVERLAY=<overlay>` runs this with the right arguments.
if {$argc != 2} {
    puts stderr "usage: vitis_hls -f hls_synth.tcl -tclargs <generated dir> <build dir>"
    exit 2
}
set script_dir [file dirname [file normalize [info script]]]
set src_dir [file normalize [file join $script_dir .. src]]
set gen_dir [file normalize [lindex $argv 0]]
set build_dir [file normalize [lindex $argv 1]]
source [file join $gen_dir build_config.tcl]

file mkdir $build_dir
cd $build_dir
open_project -reset ${AQ_OVERLAY}_hls
set_top $AQ_TOP
set cflags "-std=c++14 -I$src_dir -I$gen_dir"
add_files [file join $src_dir engine.cpp] -cflags $cflags
add_files [file join $src_dir engine.hpp] -cflags $cflags
add_files [file join $gen_dir engine_config.hpp] -cflags $cflags
open_solution -reset solution1 -flow_target vivado
set_part $AQ_PART
create_clock -period $AQ_CLOCK_PERIOD_NS -name default
csynth_design
export_design -format ip_catalog -vendor $AQ_IP_VENDOR -library $AQ_IP_LIBRARY -ipname $AQ_IP_NAME \
    -version $AQ_IP_VERSION -description "autoq bit-serial engine, overlay $AQ_OVERLAY, build $AQ_BUILD_HASH"
exit
