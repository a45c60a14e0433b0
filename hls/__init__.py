"""The overlay's hardware: the RTL engine (``rtl``), its Verilator simulation (``rtlsim``), Yosys synthesis
(``synth``) and the Vivado flow's inputs (``vivado``; the Makefile and ``scripts/`` are package data)."""
