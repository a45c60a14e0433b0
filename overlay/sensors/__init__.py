"""Power and temperature sensors read on the board (PMBus through pynq, XADC through sysfs, serial power meters)."""
