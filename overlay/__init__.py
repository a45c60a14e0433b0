"""Board side: overlay manifest, bit-serial reference engine and schedule, driver, emulated device, sensors, daemon.

Imports on the PYNQ-Z1 with only numpy, pynq and pyserial; keep this file free of imports.
"""
