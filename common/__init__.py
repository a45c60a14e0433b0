"""Types and seams shared by the workstation and the board.

Nothing under ``autoq.common`` imports torch or pynq: the PYNQ-Z1 imports these
modules with only numpy and pyserial installed.
"""
