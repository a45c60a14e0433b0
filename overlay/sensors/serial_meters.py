"""External power meters on a serial port (pyserial). PYNQ-Z1 has no current sensing, so this is how its power is read.

Three protocols, each a :class:`~.base.PowerMeter` (one fresh sample per ``read()``), wrapped by the factory in a
:class:`~.base.SampledPowerSensor`:

- :class:`ScpiMeter`: a bench supply or power analyser speaking SCPI over RS-232/USB-CDC. ``*IDN?`` on open, then per
  sample ``MEAS:VOLT?`` + ``MEAS:CURR?`` (mode ``vi``, any SCPI supply), ``MEAS:POW?`` (mode ``power``, e.g. OWON
  SPE/SPM supplies) or ``MEAS:ALL?`` answering ``volts,amps,watts`` (mode ``all``, Rigol DP800, as used by e.g.
  colinoflynn/dp832-gui), with an optional channel argument (``MEAS:VOLT? CH1``). Answers are one ASCII line each.
- :class:`UmMeter`: RDTech UM24C / UM25C / UM34C USB meters (Bluetooth SPP, e.g. ``/dev/rfcomm0``, 9600 baud). The
  byte 0xF0 requests one 130-byte big-endian record: model id at offset 0 (0x0963 UM24C, 0x09C9 UM25C, 0x0D4C
  UM34C), voltage u16 at 2 (UM24C/UM34C 10 mV, UM25C 1 mV), current u16 at 4 (1 mA, UM25C 0.1 mA), power u32 at 6
  (1 mW), temperature u16 at 10 (deg C). UM24C/UM25C records end in 0xFFF1; a UM34C record's last byte is the XOR of
  the bytes at the offsets in ``UM34C_CHECKSUM_OFFSETS``. Layout as in libsigrok's ``src/hardware/rdtech-um``
  (protocol.c/.h) and rdserialtool's ``rdserial/um/__init__.py``.
- :class:`LineMeter`: a streaming text protocol, one reading per line, either ``<watts>`` or ``<volts>,<amps>``
  (an Arduino/INA219 logger or a meter's CSV export piped to a tty).

Every read has a deadline; garbage is skipped by resynchronising on the protocol's framing (line ends, the UM model
id), and what was wrong is named in the error raised when no valid reading arrives in time. Imports pyserial only.
"""
from __future__ import annotations

import math
import struct
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .base import PowerSample, SensorError, check_reading

MAX_WATTS = 10_000.0
MAX_VOLTS = 1_000.0
MAX_AMPS = 100.0


def open_port(device: str, baud: int, poll_s: float = 0.05) -> Any:
    """Open ``device`` (a path or a pyserial URL such as ``socket://host:port``) with a short read timeout."""
    import serial

    try:
        return serial.serial_for_url(device, baudrate=baud, timeout=poll_s, write_timeout=1.0)
    except (serial.SerialException, ValueError, OSError) as exc:
        raise SensorError(f"cannot open serial port {device} at {baud} baud: {exc}") from None


class MeterClosed(SensorError):
    """The meter was closed while a reading was being taken."""


class SerialMeter(ABC):
    """What every serial meter shares: the port, a receive buffer, and a ``close()`` that may be called from
    another thread while ``read()`` waits (the read then stops within one poll of the port)."""

    description = "serial meter"

    def __init__(self, port: Any, device: str, timeout_s: float):
        self.port, self.device, self.timeout_s = port, device, timeout_s
        self._rx = _Receiver(port, device)
        self._reading = threading.Lock()

    def read(self) -> PowerSample:
        with self._reading:
            return self._read()

    @abstractmethod
    def _read(self) -> PowerSample:
        """One sample, within ``timeout_s``."""

    def close(self) -> None:
        self._rx.closed = True
        with self._reading:
            self.port.close()


class _Receiver:
    """Bytes from a serial port with deadlines: a buffer filled from whatever the port has, a short wait at a time."""

    def __init__(self, port: Any, device: str):
        self.port, self.device, self.buffer = port, device, bytearray()
        self.closed = False

    def fill(self, deadline: float) -> None:
        """Append at least one byte, or raise :class:`TimeoutError` once ``deadline`` has passed
        (:class:`MeterClosed` as soon as the meter is being closed)."""
        while True:
            if self.closed:
                raise MeterClosed(f"the meter on {self.device} was closed")
            try:
                data = self.port.read(max(1, self.port.in_waiting))
            except OSError as exc:  # pyserial's SerialException is an OSError: unplugged adapter, dropped link
                raise SensorError(f"reading {self.device} failed: {exc}") from None
            if data:
                self.buffer += data
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(self.device)

    def read_line(self, deadline: float, max_len: int) -> bytes | None:
        """The next line without its end (``\\r`` stripped); ``None`` if more than ``max_len`` bytes came without
        a line end (those are dropped, so the next line may start mid-record: the caller resynchronises)."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[: end + 1]
                return None if len(line) > max_len else line
            if len(self.buffer) > max_len:
                self.buffer.clear()
                return None
            self.fill(deadline)

    def discard(self) -> None:
        """Drop everything received so far (buffered here and by the driver)."""
        try:
            self.port.reset_input_buffer()
        except OSError as exc:
            raise SensorError(f"resetting {self.device} failed: {exc}") from None
        self.buffer.clear()

    def send(self, data: bytes) -> None:
        """Write ``data`` after dropping stale input, so what comes next answers it."""
        self.discard()
        try:
            self.port.write(data)
        except OSError as exc:
            raise SensorError(f"writing to {self.device} failed: {exc}") from None


def _number(text: str, what: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise SensorError(f"{what}: {text.strip()[:40]!r} is not a number") from None


# ---------------------------------------------------------------------------------------------------------- SCPI
SCPI_MODES = {
    "vi": ("MEAS:VOLT?", "MEAS:CURR?"),
    "power": ("MEAS:POW?",),
    "all": ("MEAS:ALL?",),
}
SCPI_EOLS = {"lf": b"\n", "crlf": b"\r\n"}


class NoAnswer(SensorError):
    """The instrument said nothing in time (asking again would only double the wait)."""


class ScpiMeter(SerialMeter):
    """A SCPI instrument on a serial port: identified by ``*IDN?``, sampled by measurement queries (see module doc)."""

    max_line = 256

    def __init__(self, port: Any, device: str, mode: str = "vi", channel: str = "", eol: str = "lf",
                 timeout_s: float = 1.0):
        if mode not in SCPI_MODES:
            raise SensorError(f"SCPI mode must be one of {sorted(SCPI_MODES)}, got {mode!r}")
        if eol not in SCPI_EOLS:
            raise SensorError(f"SCPI line end must be one of {sorted(SCPI_EOLS)}, got {eol!r}")
        if channel and not channel.replace("_", "").isalnum():
            raise SensorError(f"SCPI channel must be a plain word such as CH1, got {channel!r}")
        super().__init__(port, device, timeout_s)
        self.mode, self.eol = mode, SCPI_EOLS[eol]
        self.queries = tuple(f"{q} {channel}" if channel else q for q in SCPI_MODES[mode])
        self.identity = self.query("*IDN?")
        if not self.identity:
            raise SensorError(f"the instrument on {device} answered *IDN? with an empty line: is it a SCPI device?")
        self.description = f"SCPI {self.identity} on {device} ({' + '.join(self.queries)})"

    def query(self, command: str) -> str:
        """Send ``command`` and return its one-line answer; stale input is dropped first, so an answer that came
        late to an earlier query cannot be taken for this one."""
        self._rx.send(command.encode("ascii") + self.eol)
        try:
            line = self._rx.read_line(time.monotonic() + self.timeout_s, self.max_line)
        except TimeoutError:
            raise NoAnswer(
                f"no answer to {command!r} from {self.device} within {self.timeout_s:g} s "
                f"(check the port, baud rate and the instrument's remote interface)"
            ) from None
        if line is None:
            raise SensorError(f"answer to {command!r} from {self.device} is longer than {self.max_line} bytes")
        try:
            return line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise SensorError(f"answer to {command!r} from {self.device} is not text: {line[:40]!r}") from None

    def values(self, command: str, count: int) -> list[float]:
        """``count`` comma-separated numbers answered to ``command``; a garbled answer is asked again once."""
        problem = ""
        for _attempt in range(2):
            try:
                fields = self.query(command).split(",")
                if len(fields) < count:
                    raise SensorError(f"expected {count} comma-separated values, got {len(fields)}")
                return [_number(f, command) for f in fields[:count]]
            except (NoAnswer, MeterClosed):
                raise
            except SensorError as exc:
                problem = str(exc)
        raise SensorError(f"SCPI instrument on {self.device}: bad answer to {command!r} twice: {problem}")

    def _read(self) -> PowerSample:
        if self.mode == "vi":
            (volts,), (amps,) = self.values(self.queries[0], 1), self.values(self.queries[1], 1)
            return _checked(PowerSample.from_volts_amps(volts, amps), self.device)
        if self.mode == "power":
            return _checked(PowerSample(self.values(self.queries[0], 1)[0]), self.device)
        volts, amps, watts = self.values(self.queries[0], 3)
        return _checked(PowerSample(watts, volts, amps), self.device)


def _checked(sample: PowerSample, device: str) -> PowerSample:
    check_reading(sample.watts, f"power from {device}", -MAX_WATTS, MAX_WATTS)
    if not math.isnan(sample.volts):
        check_reading(sample.volts, f"voltage from {device}", -MAX_VOLTS, MAX_VOLTS)
    if not math.isnan(sample.amps):
        check_reading(sample.amps, f"current from {device}", -MAX_AMPS, MAX_AMPS)
    return sample


# ------------------------------------------------------------------------------------------------- RDTech UMxxC
UM_RECORD_LEN = 130
UM_POLL = b"\xf0"
UM_END_MARK = 0xFFF1
UM_ANSWER_S = 0.3  # latency before a record starts (Bluetooth included), on top of its transfer time
UM_MAX_RATE_HZ = 5.0  # records per second at best (HARDWARE_NOTES.md; libsigrok rdtech-um polls at that pace)
UM_NOMINAL_VOLTS, UM_NOMINAL_AMPS = 5.0, 1.0  # the load at which ``UmModel.resolution_w`` is stated
UM_RETRY_PAUSE_S = 0.05  # after a bad record: let the rest of a garbled burst arrive before dropping the input
UM34C_CHECKSUM_OFFSETS = (1, 3, 7, 9, 15, 17, 19, 23, 31, 39, 41, 45, 49, 53, 55, 57, 59, 63, 67, 69, 73, 79, 83, 89,
                          97, 99, 109, 111, 113, 119, 121, 127)


@dataclass(frozen=True)
class UmModel:
    name: str
    model_id: int
    volts_per_lsb: float
    amps_per_lsb: float
    xor_checksum: bool  # UM34C: XOR checksum in the last byte; UM24C/UM25C: fixed end mark 0xFFF1

    @property
    def resolution_w(self) -> float:
        """Power step of volts x amps at a 5 V, 1 A USB load: one current LSB at 5 V plus one voltage LSB at 1 A."""
        return UM_NOMINAL_VOLTS * self.amps_per_lsb + UM_NOMINAL_AMPS * self.volts_per_lsb


UM_MODELS = {
    m.name: m
    for m in (
        UmModel("UM24C", 0x0963, 0.01, 0.001, False),
        UmModel("UM25C", 0x09C9, 0.001, 0.0001, False),
        UmModel("UM34C", 0x0D4C, 0.01, 0.001, True),
    )
}
_UM_BY_ID = {m.model_id: m for m in UM_MODELS.values()}


def um34c_checksum(record: bytes) -> int:
    value = 0
    for offset in UM34C_CHECKSUM_OFFSETS:
        value ^= record[offset]
    return value


def decode_um_record(record: bytes, model: UmModel) -> PowerSample:
    """Volts, amps (and their product) from one 130-byte record, after its framing and checksum are checked."""
    if len(record) != UM_RECORD_LEN:
        raise SensorError(f"{model.name} record has {len(record)} bytes, expected {UM_RECORD_LEN}")
    model_id, raw_volts, raw_amps = struct.unpack_from(">HHH", record, 0)
    if model_id != model.model_id:
        raise SensorError(
            f"record starts with model id 0x{model_id:04x}, expected {model.name} (0x{model.model_id:04x})")
    if model.xor_checksum:
        if record[-1] != um34c_checksum(record):
            raise SensorError(f"{model.name} record checksum 0x{record[-1]:02x} != 0x{um34c_checksum(record):02x}")
    elif struct.unpack_from(">H", record, UM_RECORD_LEN - 2)[0] != UM_END_MARK:
        raise SensorError(f"{model.name} record does not end in 0x{UM_END_MARK:04X} (got {record[-2:].hex()})")
    return PowerSample.from_volts_amps(raw_volts * model.volts_per_lsb, raw_amps * model.amps_per_lsb)


class UmMeter(SerialMeter):
    """An RDTech UM24C/UM25C/UM34C polled with 0xF0 (see module doc). ``model=None`` takes the model the meter
    reports in its first record."""

    def __init__(self, port: Any, device: str, model: str | None = None, timeout_s: float = 2.0):
        if model is not None and model.upper() not in UM_MODELS:
            raise SensorError(f"unknown RDTech meter {model!r}: expected one of {sorted(UM_MODELS)}")
        super().__init__(port, device, timeout_s)
        transfer_s = UM_RECORD_LEN * 10 / getattr(port, "baudrate", 9600)  # 10 bits a byte: 135 ms at 9600 baud
        self.answer_s = min(timeout_s, UM_ANSWER_S + transfer_s)
        self.model = UM_MODELS[model.upper()] if model else None
        self.bad_records = 0
        self.max_rate_hz = UM_MAX_RATE_HZ
        self.read()
        assert self.model is not None  # read() sets it from the first record
        self.resolution_w = self.model.resolution_w
        self.description = f"RDTech {self.model.name} on {device}"

    def _read(self) -> PowerSample:
        """Poll; on garbage, a bad checksum or no answer within ``answer_s``, let the line settle, drop the input
        and poll again, until ``timeout_s`` has passed."""
        deadline = time.monotonic() + self.timeout_s
        problem = "no answer"
        while True:
            self._rx.send(UM_POLL)
            try:
                return self._receive(min(deadline, time.monotonic() + self.answer_s))
            except MeterClosed:
                raise
            except SensorError as exc:
                self.bad_records += 1
                problem = str(exc)
                time.sleep(max(0.0, min(UM_RETRY_PAUSE_S, deadline - time.monotonic())))
            except TimeoutError:
                pass
            if time.monotonic() >= deadline:
                name = self.model.name if self.model else "RDTech UM meter"
                raise SensorError(f"no valid {name} record from {self.device} within {self.timeout_s:g} s "
                                  f"(last problem: {problem})")

    def _receive(self, deadline: float) -> PowerSample:
        ids = [self.model.model_id] if self.model else list(_UM_BY_ID)
        marks = [struct.pack(">H", i) for i in ids]
        while True:
            starts = [s for s in (self._rx.buffer.find(m) for m in marks) if s >= 0]
            if starts:
                start = min(starts)
                del self._rx.buffer[:start]  # resynchronise: skip bytes before the model id
                if len(self._rx.buffer) >= UM_RECORD_LEN:
                    record = bytes(self._rx.buffer[:UM_RECORD_LEN])
                    model = self.model or _UM_BY_ID[struct.unpack_from(">H", record)[0]]
                    sample = _checked(decode_um_record(record, model), self.device)
                    self.model = model
                    return sample
            elif len(self._rx.buffer) > UM_RECORD_LEN:
                raise SensorError(f"{len(self._rx.buffer)} bytes without a model id: not an RDTech UM meter answer")
            self._rx.fill(deadline)


# ----------------------------------------------------------------------------------------------- line protocol
def parse_line(line: bytes) -> PowerSample:
    """``<watts>`` or ``<volts>,<amps>``; anything else is a :class:`SensorError` naming the line."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise SensorError(f"line {line[:40]!r} is not text") from None
    fields = text.split(",")
    if len(fields) == 1:
        sample = PowerSample(_number(fields[0], "watts"))
    elif len(fields) == 2:
        sample = PowerSample.from_volts_amps(_number(fields[0], "volts"), _number(fields[1], "amps"))
    else:
        raise SensorError(f"line {text[:40]!r} has {len(fields)} fields; expected '<watts>' or '<volts>,<amps>'")
    return _checked(sample, "line")


class LineMeter(SerialMeter):
    """A meter that streams one reading per line. The first line after opening (or after an overlong run of bytes
    with no line end) is dropped, as it may be the tail of a reading sent earlier; bad lines are counted and
    skipped."""

    max_line = 128

    def __init__(self, port: Any, device: str, timeout_s: float = 2.0):
        super().__init__(port, device, timeout_s)
        self.description = f"line-protocol meter on {device}"
        self.bad_lines = 0
        self._rx.discard()
        self._synced = False

    def _read(self) -> PowerSample:
        deadline = time.monotonic() + self.timeout_s
        problem = ""
        while True:
            try:
                line = self._rx.read_line(deadline, self.max_line)
            except TimeoutError:
                raise SensorError(f"no valid reading line from {self.device} within {self.timeout_s:g} s"
                                  + (f" (last bad line: {problem})" if problem else "")) from None
            if line is None:
                self.bad_lines += 1
                problem = f"more than {self.max_line} bytes without a line end"
                self._synced = False
                continue
            if not self._synced:
                self._synced = True
                continue
            try:
                return parse_line(line)
            except SensorError as exc:
                self.bad_lines += 1
                problem = str(exc)
