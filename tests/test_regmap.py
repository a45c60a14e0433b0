import json

import pytest

from autoq.overlay.manifest import ManifestError, OverlayConfig
from autoq.overlay.regmap import ARGS_BASE, MAGIC, SLOT_BYTES, RegisterMap


def config(**changes) -> OverlayConfig:
    base = OverlayConfig(
        name="test", dm=8, dn=8, dk=64, clock_mhz=100.0, lhs_mem_words=1024, rhs_mem_words=1024,
        result_mem_words=64, dram_ports=1, dram_width_bits=64, max_bits=8, acc_bits=32, regmap_version=2,
        vlnv="autoq:rtl:bitserial_engine:2.0", part="xc7z020clg400-1",
    )
    return base.with_changes(**changes) if changes else base


def test_vitis_hls_control_block_and_fixed_header():
    regmap = RegisterMap.from_overlay(config())
    assert [(r.name, r.offset) for r in regmap.section("control")] == [("control", 0), ("gie", 4), ("ier", 8), ("isr", 12)]
    # magic, version and command sit at the same place in every layout so any build can be identified
    assert [(r.name, r.offset) for r in regmap.section("header")] == [
        ("magic", 0x10), ("regmap_version", 0x18), ("command", 0x20), ("status", 0x28)
    ]


def test_slots_are_contiguous_aligned_and_disjoint():
    regmap = RegisterMap.from_overlay(config())
    args = regmap.registers[4:]
    assert args[0].offset == ARGS_BASE
    for prev, cur in zip(args, args[1:]):
        assert cur.offset == prev.offset + SLOT_BYTES[prev.width]
    words = [w for r in regmap for w in r.word_offsets]
    assert len(words) == len(set(words)) and all(w % 4 == 0 for w in words)
    assert max(words) < regmap.span and regmap.span & (regmap.span - 1) == 0


def test_covers_descriptor_buffers_counters_and_id():
    regmap = RegisterMap.from_overlay(config())
    for name in ("groups", "c_in", "c_out", "kh", "kw", "stride_h", "stride_w", "pad_h", "pad_w", "in_h", "in_w",
                 "out_h", "out_w", "batch", "abits", "num_tiles"):
        assert regmap[name].section == "descriptor" and regmap[name].access == "rw"
    for name in ("weights_addr", "activations_addr", "results_addr", "tiles_addr"):
        assert regmap[name].width == 64 and regmap[name].section == "buffers"
    for name in ("cycles_fetch", "cycles_execute", "cycles_result", "cycles_total", "stall_fetch", "stall_execute",
                 "stall_result"):
        assert regmap[name].section == "counters" and regmap[name].access == "ro" and regmap[name].width == 64
    reported = {r.name for r in regmap if r.section in ("header", "id") and r.access == "ro"}
    assert reported - {"status"} == set(regmap.id_values)


def test_same_manifest_same_map_and_id_values_follow_the_manifest():
    a, b = RegisterMap.from_overlay(config()), RegisterMap.from_overlay(config())
    assert a == b
    wide = RegisterMap.from_overlay(config(dm=16, max_bits=4))
    assert wide.registers == a.registers
    assert (wide.id_values["dm"], wide.id_values["max_bits"]) == (16, 4)
    assert wide.id_values["magic"] == MAGIC and wide.version == 2
    cfg = config()
    words = (a.id_values["build_hash_lo"], a.id_values["build_hash_hi"])
    assert f"{words[0] | words[1] << 32:016x}" == cfg.build_hash


def test_unknown_version_and_bad_values_are_named():
    with pytest.raises(ManifestError, match="regmap_version 7"):
        RegisterMap.from_overlay(config(regmap_version=7))
    regmap = RegisterMap.from_overlay(config())
    with pytest.raises(KeyError, match="no register 'nope'"):
        regmap["nope"]
    with pytest.raises(ValueError, match="does not fit"):
        regmap["abits"].split(1 << 32)


def test_the_retired_hls_engines_v1_is_refused_by_name(tmp_path):
    """Register map v1 was the HLS engine's: a manifest (or a trace's stored overlay) saying it is refused."""
    with pytest.raises(ManifestError, match="register map v1 was the retired HLS engine's.*rebuild with"):
        config(regmap_version=1)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**config().to_dict(), "regmap_version": 1, "build_hash": ""}))
    with pytest.raises(ManifestError, match="overlay 'test': register map v1 was the retired HLS engine's"):
        OverlayConfig.load(path)


def test_split_join_and_word_offsets_of_64_bit_registers():
    regmap = RegisterMap.from_overlay(config())
    reg = regmap["weights_addr"]
    value = 0x1_2345_6789
    assert reg.split(value) == (0x23456789, 0x1)
    assert reg.join(reg.split(value)) == value
    assert reg.word_offsets == (reg.offset, reg.offset + 4)
    assert regmap["abits"].word_offsets == (regmap.offset("abits"),)
