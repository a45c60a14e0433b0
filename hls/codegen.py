"""Manifest -> HLS build inputs: the C++ config header and the Tcl settings of one overlay build.

The overlay manifest is the one source of truth: this module renders from it (and from the ``RegisterMap`` that
``autoq.overlay.regmap`` derives from it) the array dimensions, buffer depths, ID-block values, register offsets
and the ``s_axilite ... offset=`` interface pragmas the engine's top function expands, plus the part, clock and
VLNV the synthesis and block-design scripts use. ``hls/generated/<overlay>/`` holds the rendered files of each
overlay in ``bitstreams/``; a test fails when they drift from a fresh rendering. Files are written only where the
caller says (``write_generated``), never into the installed package: ``autoq hls generate`` writes into the
checkout it is run from (``checkout_generated_dir``), which is what ``make -C hls`` reads.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import NamedTuple

from autoq.common.errors import AutoQError
from autoq.common.fileio import atomic_write_text
from autoq.overlay import regmap as rm
from autoq.overlay.bitserial import WORD_BITS
from autoq.overlay.layout import ROW_TILE_HEADER_WORDS, check_overlay
from autoq.overlay.manifest import ManifestError, OverlayConfig
from autoq.overlay.regmap import Register, RegisterMap
from autoq.overlay.schedule import ScheduleError, ScheduleParams

CONFIG_HEADER = "engine_config.hpp"
BUILD_TCL = "build_config.tcl"
TOP_FUNCTION = "bitserial_engine"
RESULT_BITS = 32  # results land in DDR as int32
BUFFER_TYPES = {  # C++ element type of each DDR buffer the engine masters (types defined in hls/src/engine.hpp)
    "weights_addr": "const aq::word_t*",
    "activations_addr": "const aq::word_t*",
    "results_addr": "aq::result_t*",
    "tiles_addr": "const aq::table_t*",
}
# ScheduleParams fields the engine charges (all but per_image_convs, which it does not support).
TIMING_FIELDS = ("dram_efficiency", "result_efficiency", "layer_overhead_cycles", "tile_overhead_cycles",
                 "pass_overhead_cycles")


def check_timing(params: ScheduleParams) -> None:
    """The engine runs a batch as one product (``per_image_convs`` off) and counts the stage-total model
    (``pipeline`` off: that is the RTL engine's); every other parameter it charges."""
    if params.per_image_convs:
        raise ScheduleError("the HLS engine runs a batch as one product: per_image_convs must be false")
    if params.pipeline:
        raise ScheduleError("the HLS engine counts the stage-total model: pipeline must be false (the RTL's timing)")


class Vlnv(NamedTuple):
    vendor: str
    library: str
    name: str
    version: str


def parse_vlnv(cfg: OverlayConfig) -> Vlnv:
    parts = cfg.vlnv.split(":")
    if len(parts) != 4 or not all(parts):
        raise ManifestError(f"overlay {cfg.name!r}: vlnv {cfg.vlnv!r} is not vendor:library:name:version")
    return Vlnv(*parts)


def hls_dir() -> Path:
    """The installed ``hls/`` folder (``autoq.hls``)."""
    return Path(str(resources.files("autoq.hls")))


def generated_dir(overlay_name: str) -> Path:
    """Where the installed package keeps the generated files of an overlay (committed for every overlay in
    ``bitstreams/``; read-only for ``autoq hls generate``)."""
    return hls_dir() / "generated" / overlay_name


class OutputError(AutoQError, ValueError):
    """No folder to write the generated files to."""


def checkout_generated_dir(overlay_name: str, cwd: Path | None = None) -> Path:
    """``hls/generated/<overlay>`` of the checkout in ``cwd`` (a folder holding ``hls/Makefile``, which reads it);
    refuses elsewhere, so that nothing is written into an installed package."""
    root = Path.cwd() if cwd is None else Path(cwd)
    if not (root / "hls" / "Makefile").is_file():
        raise OutputError(f"{root} is not an autoq-hil checkout (no hls/Makefile there): give the folder to write to "
                          "with --out DIR, or run from the checkout whose `make -C hls` should use the files")
    return root / "hls" / "generated" / overlay_name


def _check_buildable(cfg: OverlayConfig) -> None:
    if cfg.dram_width_bits != WORD_BITS:
        raise ManifestError(f"overlay {cfg.name!r}: the engine moves {WORD_BITS}-bit DDR words, "
                            f"manifest says dram_width_bits={cfg.dram_width_bits}")
    check_overlay(cfg)
    if cfg.acc_bits != RESULT_BITS:
        raise ManifestError(f"overlay {cfg.name!r}: the engine writes {RESULT_BITS}-bit results, "
                            f"manifest says acc_bits={cfg.acc_bits}")


def _pragma(text: str) -> str:
    return f'_Pragma("HLS INTERFACE {text}")'


def _interface_pragmas(regmap: RegisterMap, dram_ports: int) -> list[str]:
    lines = [_pragma("s_axilite port=return bundle=control")]
    buffers = [r.name for r in regmap.section("buffers")]
    for reg in regmap:
        if reg.section == "control":
            continue
        if reg.section == "buffers":
            bundle = f"gmem{buffers.index(reg.name) % dram_ports}"
            lines.append(_pragma(f"m_axi port={reg.name} offset=slave bundle={bundle} max_widen_bitwidth={WORD_BITS}"))
        lines.append(_pragma(f"s_axilite port={reg.name} offset={reg.offset:#x} bundle=control"))
    return lines


def _define(name: str, value: str) -> str:
    return f"#define {name} {value}"


def _macro(name: str, items: list[str], separator: str = "") -> list[str]:
    """A multi-line ``#define`` whose body is ``items`` joined by ``separator``."""
    body = [f"    {item}{separator if i < len(items) - 1 else ''}" for i, item in enumerate(items)]
    return [f"#define {name} \\"] + [line + " \\" for line in body[:-1]] + body[-1:]


def _port_type(reg: Register) -> str:
    if reg.section == "buffers":
        if reg.name not in BUFFER_TYPES:
            raise ManifestError(f"register {reg.name!r} is a DDR buffer the HLS engine has no element type for")
        return BUFFER_TYPES[reg.name]
    return f"ap_uint<{reg.width}>" + ("*" if reg.access == "ro" else "")


def _field_type(reg: Register) -> str:
    """Type of a struct member holding the register: outputs by value, inputs and buffers as passed."""
    return _port_type(reg).rstrip("*") if reg.access == "ro" else _port_type(reg)


def _ports(regmap: RegisterMap) -> list[Register]:
    return [reg for reg in regmap if reg.section != "control"]


def render_config_header(cfg: OverlayConfig, params: ScheduleParams = ScheduleParams()) -> str:
    """The C++ header ``hls/src/engine.hpp`` includes, for the overlay described by ``cfg``.

    ``params`` are the schedule parameters the engine's cycle counters charge (the C-sim test bench may override
    them to compare with ``schedule.layer_cycles`` under any parameters).
    """
    _check_buildable(cfg)
    check_timing(params)
    regmap = RegisterMap.from_overlay(cfg)
    constants = {
        "DM": cfg.dm, "DN": cfg.dn, "DK": cfg.dk, "MAX_BITS": cfg.max_bits, "ACC_BITS": cfg.acc_bits,
        "LHS_MEM_WORDS": cfg.lhs_mem_words, "RHS_MEM_WORDS": cfg.rhs_mem_words,
        "RESULT_MEM_WORDS": cfg.result_mem_words, "DRAM_PORTS": cfg.dram_ports, "DRAM_WIDTH_BITS": cfg.dram_width_bits,
        "WORD_BITS": WORD_BITS, "RESULT_BITS": RESULT_BITS,
    }
    layout = {
        "CMD_IDENTIFY": rm.CMD_IDENTIFY, "CMD_RUN": rm.CMD_RUN,
        **{f"STATUS_{status.name}": int(status) for status in rm.Status},
        "ROW_TILE_HEADER_WORDS": ROW_TILE_HEADER_WORDS,
    }
    ports = _ports(regmap)
    lines = [
        f"// Generated by autoq.hls.codegen from overlay manifest {cfg.name!r} (build {cfg.build_hash}). Do not edit:",
        f"// run `autoq hls generate --overlay {cfg.name}` after changing bitstreams/{cfg.name}/manifest.json.",
        "#pragma once",
        "",
        "namespace aq {",
        "// The overlay's structure: the parameter of the engine template (aq::Engine<aq::Config>).",
        "struct Config {",
        *(f"    static const unsigned {name} = {value};" for name, value in constants.items()),
        "};",
        "",
        "// Command, status and tile-table encodings (autoq.overlay.regmap, autoq.overlay.layout).",
        "namespace layout {",
        *(f"constexpr unsigned {name} = {value:#x}u;" for name, value in layout.items()),
        "}  // namespace layout",
        "",
        "// Schedule parameters the cycle counters charge (autoq.overlay.schedule.ScheduleParams).",
        "namespace timing {",
        *(f"constexpr double {name.upper()} = {float(getattr(params, name))!r};" for name in TIMING_FIELDS),
        "}  // namespace timing",
        "",
        f"// Values the read-only ID block reports (register map version {regmap.version}).",
        "namespace id {",
        *(f"constexpr unsigned {name.upper()} = {value:#010x}u;" for name, value in regmap.id_values.items()),
        "}  // namespace id",
        "}  // namespace aq",
        "",
        "// The schedule parameters, by name and in declaration order.",
        *_macro("AQ_TIMING_FIELDS(X)", [f"X({name})" for name in TIMING_FIELDS]),
        *_macro("AQ_TIMING_DEFAULTS", [f"aq::timing::{name.upper()}" for name in TIMING_FIELDS], ","),
        "",
        "// AXI-Lite register offsets (autoq.overlay.regmap); 64-bit registers: low word first.",
        *(_define(f"AQ_REG_{reg.name.upper()}", f"{reg.offset:#x}") for reg in regmap),
        _define("AQ_REG_SPAN", f"{regmap.span:#x}"),
        "",
        "// Ports of the top function, one per register, in register-map order.",
        *_macro("AQ_TOP_PARAMS", [f"{_port_type(reg)} {reg.name}" for reg in ports], ","),
        "// Fields of a struct with one member per port, and the arguments for AQ_TOP_PARAMS from it.",
        *_macro("AQ_TOP_FIELDS", [f"{_field_type(reg)} {reg.name};" for reg in ports]),
        *_macro("AQ_TOP_ARGS(r)", [("&" if reg.access == "ro" else "") + f"(r).{reg.name}" for reg in ports], ","),
        "// X-macros over the registers a master writes (scalars), and those the engine writes.",
        *_macro("AQ_WRITABLE_SCALARS(X)", [f"X({r.name})" for r in ports if r.access != "ro" and r.section != "buffers"]),
        *_macro("AQ_READABLE_OUTPUTS(X)", [f"X({reg.name})" for reg in ports if reg.access == "ro"]),
        "",
        "// The engine fills the read-only ID block on every run.",
        *_macro("AQ_WRITE_ID_BLOCK", [f"*{name} = aq::id::{name.upper()};" for name in regmap.id_values]),
        "",
        "// Interface pragmas of the top function, offsets pinned to the register map.",
        *_macro("AQ_INTERFACE_PRAGMAS", _interface_pragmas(regmap, cfg.dram_ports)),
        "",
    ]
    return "\n".join(lines)


def render_build_tcl(cfg: OverlayConfig) -> str:
    """Tcl variables the synthesis and block-design scripts ``source``."""
    _check_buildable(cfg)
    vlnv = parse_vlnv(cfg)
    regmap = RegisterMap.from_overlay(cfg)
    settings = {
        "AQ_OVERLAY": cfg.name,
        "AQ_BUILD_HASH": cfg.build_hash,
        "AQ_PART": cfg.part,
        "AQ_CLOCK_MHZ": f"{cfg.clock_mhz!r}",
        "AQ_CLOCK_PERIOD_NS": f"{1000.0 / cfg.clock_mhz:.6g}",
        "AQ_TOP": TOP_FUNCTION,
        "AQ_VLNV": cfg.vlnv,
        "AQ_IP_VENDOR": vlnv.vendor,
        "AQ_IP_LIBRARY": vlnv.library,
        "AQ_IP_NAME": vlnv.name,
        "AQ_IP_VERSION": vlnv.version,
        "AQ_DRAM_PORTS": str(cfg.dram_ports),
        "AQ_CONTROL_SPAN": f"{max(regmap.span, 0x1000):#x}",
    }
    lines = [f"# Generated by autoq.hls.codegen from overlay manifest {cfg.name!r}. Do not edit."]
    lines += [f"set {name} {{{value}}}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def render_all(cfg: OverlayConfig) -> dict[str, str]:
    """File name -> contents of everything generated for ``cfg``."""
    return {CONFIG_HEADER: render_config_header(cfg), BUILD_TCL: render_build_tcl(cfg)}


def write_generated(cfg: OverlayConfig, directory: Path) -> list[Path]:
    """Write the generated files of ``cfg`` into ``directory`` (created), crash-safe; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_all(cfg).items():
        path = directory / filename
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
        written.append(path)
    return written
