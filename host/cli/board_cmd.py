"""``autoq board serve`` (on the board, or ``--emulate`` / ``--rtlsim`` anywhere) and ``autoq board info URI``."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from autoq.host.cli._board_keygen import register_keygen

DEFAULT_TCP = "127.0.0.1:7700"


def register(subparsers: argparse._SubParsersAction) -> None:
    board = subparsers.add_parser("board", help="serve the overlay to hosts, or query a board")
    commands = board.add_subparsers(dest="board_command", required=True, metavar="ACTION")

    serve = commands.add_parser("serve", help="answer measurement requests on TCP and/or a serial link")
    device = serve.add_mutually_exclusive_group()
    device.add_argument("--emulate", action="store_true", help="use the emulated device instead of the FPGA (any machine)")
    device.add_argument("--rtlsim", action="store_true",
                        help="use the cycle-accurate Verilator simulation of the RTL engine (needs verilator, amaranth; "
                             "default overlay rtl_small)")
    serve.add_argument("--rtlsim-memory", metavar="QUERY", default=None,
                       help="HP-port model of --rtlsim, e.g. 'read_latency=40&write_latency=30&outstanding=8&bandwidth=8'")
    serve.add_argument("--tcp", metavar="HOST:PORT", help=f"listen on TCP (default {DEFAULT_TCP} when no --serial)")
    serve.add_argument("--serial", metavar="DEVICE", help="serve on a serial port, e.g. /dev/ttyPS1")
    serve.add_argument("--baud", type=int, default=115200, help="serial baud rate (default 115200)")
    serve.add_argument("--key-file", metavar="FILE", help="shared HMAC key; required to listen beyond loopback")
    serve.add_argument("--overlay", default=None,
                       help="overlay to load from the board's bitstreams/ (default pynq_z1; rtl_small with --rtlsim)")
    serve.add_argument("--meter", action="append", default=[], metavar="SPEC",
                       help="power meter to read while measuring (repeatable; the board has none of its own on PYNQ-Z1): "
                            "um25c:/dev/rfcomm0, scpi:/dev/ttyUSB0?mode=vi|power|all, line:/dev/ttyACM0, "
                            "pmbus[?rails=A,B]; see autoq.overlay.sensors.factory")
    serve.add_argument("--delay-ms", type=float, default=0.0, metavar="MS",
                       help="with --emulate or --rtlsim: hold the engine this much longer for every measurement (a slow "
                            "board, e.g. to try a pool of boards)")
    serve.add_argument("--busy-wait", type=float, default=60.0, metavar="S",
                       help="how long a request waits for the engine before a 'busy' answer (default 60)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every link and bad request")
    serve.set_defaults(handler=serve_handler)

    info = commands.add_parser("info", help="print a board's manifest, sensors and protocol version")
    info.add_argument("uri", help="tcp://HOST:PORT[?key=FILE], serial:///dev/X?baud=N, emulated or rtlsim")
    info.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    info.set_defaults(handler=info_handler)
    register_keygen(commands)


def _host_port(text: str) -> tuple[str, int]:
    from autoq.overlay.daemon import DaemonError

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise DaemonError(f"--tcp wants HOST:PORT with a port in 0..65535, got {text!r}")
    return host.strip("[]"), int(port)


def serve_handler(args: argparse.Namespace) -> int:
    import logging

    from autoq.overlay.board import open_board
    from autoq.overlay.daemon import Daemon, DaemonError
    from autoq.overlay.manifest import DEFAULT_OVERLAY
    from autoq.overlay.protocol import ProtocolError, load_key
    from autoq.overlay.sensors.base import close_sensors
    from autoq.overlay.sensors.factory import power_sensors_from_specs

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="autoq board: %(message)s")
    try:
        key = load_key(args.key_file) if args.key_file else None
    except ProtocolError as exc:
        raise DaemonError(str(exc)) from None
    tcp = args.tcp or (None if args.serial else DEFAULT_TCP)
    if tcp:  # refuse before touching the hardware
        host, port = _host_port(tcp)
    if args.meter and args.emulate:
        raise DaemonError("--meter reads a real board's power; the emulated device has its own power model")
    if args.meter and args.rtlsim:
        raise DaemonError("--meter reads a real board's power; the RTL simulation has no power to read")
    if args.delay_ms and not (args.emulate or args.rtlsim):
        raise DaemonError("--delay-ms slows an emulated or simulated board down; add --emulate or --rtlsim")
    if not 0 <= args.delay_ms <= 3_600_000:
        raise DaemonError(f"--delay-ms must be in 0..3600000, got {args.delay_ms:g}")
    if args.rtlsim_memory is not None and not args.rtlsim:
        raise DaemonError("--rtlsim-memory sets the HP-port model of --rtlsim; add --rtlsim")
    if args.rtlsim:
        from autoq.hls.rtlsim.board import DEFAULT_RTL_OVERLAY, rtlsim_board
        from autoq.hls.rtlsim.memory import HPPortModel

        memory = HPPortModel.from_query(args.rtlsim_memory or "")  # refuse bad settings before building anything
    sensors = power_sensors_from_specs(args.meter)
    try:
        if args.rtlsim:
            board = rtlsim_board(args.overlay or DEFAULT_RTL_OVERLAY, memory)
        else:
            board = open_board(emulate=args.emulate, overlay=args.overlay or DEFAULT_OVERLAY, sensors=sensors)
    except BaseException:
        close_sensors(sensors)
        raise
    daemon = Daemon(board, key=key, busy_wait_s=args.busy_wait, measure_delay_s=args.delay_ms / 1000)
    links = []
    serial_port = None
    try:
        if tcp:
            bound = daemon.listen_tcp(host, port)
            links.append(f"tcp {bound[0]}:{bound[1]}")
        if args.serial:
            serial_port = _open_serial(args.serial, args.baud)
            daemon.attach_serial(serial_port)
            links.append(f"serial {args.serial} at {args.baud} baud")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: daemon.stop())
        info = board.info()
        print(
            f"autoq board: serving overlay {info['overlay']['name']} ({info['source']}) on {', '.join(links)}"
            + ("; HMAC key required" if key else ""),
            flush=True,
        )
        while not daemon.wait(timeout=1.0):
            pass
    finally:
        daemon.shutdown()
        if serial_port is not None:
            serial_port.close()
        board.close()
        close_sensors(sensors)
    print("autoq board: stopped", flush=True)
    return 0


def _open_serial(device: str, baud: int) -> Any:
    import serial

    from autoq.overlay.daemon import POLL_S, DaemonError

    try:
        return serial.serial_for_url(device, baudrate=baud, timeout=POLL_S)
    except (serial.SerialException, ValueError) as exc:
        raise DaemonError(f"cannot open serial port {device}: {exc}") from None


def info_handler(args: argparse.Namespace) -> int:
    from autoq.common.backend import open_backend
    from autoq.common.errors import BackendError

    backend = open_backend(args.uri)
    try:
        if not hasattr(backend, "info"):
            raise BackendError(f"{args.uri!r} is not a board: use tcp://, serial://, emulated or rtlsim")
        info = backend.info()
    finally:
        backend.close()
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
        return 0
    overlay = info["overlay"]
    print(f"board:            {info['board_id']} ({info['source']})")
    print(f"protocol version: {info['protocol_version']}")
    print(f"overlay:          {overlay['name']}  build {overlay['build_hash']}  vlnv {overlay['vlnv']}")
    print(f"array:            {overlay['dm']} x {overlay['dn']} x {overlay['dk']} at {overlay['clock_mhz']:g} MHz, "
          f"max {overlay['max_bits']} bits, part {overlay['part']}")
    print(f"overlays:         {', '.join(info['overlays']) or '-'}")
    print(f"measures:         {', '.join(info['measures'])}")
    sensors = info["sensors"]
    print(f"sensors:          {len(sensors)}")
    for sensor in sensors:
        print(f"  - {sensor['name']}: {sensor['kind']}")
    return 0
