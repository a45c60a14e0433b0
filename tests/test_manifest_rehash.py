"""``autoq hls rehash`` (``calibration_params.rehash_build``): an edited manifest gets its build hash back, and its
default calibration follows it; the bundled builds are consistent."""
from __future__ import annotations

import json
import shutil

import pytest

from autoq.host.cli import main
from autoq.overlay.calibration_params import CalibrationParams, rehash_build
from autoq.overlay.manifest import OverlayConfig, bitstreams_dir


@pytest.fixture
def build(tmp_path):
    folder = tmp_path / "pynq_z1"
    shutil.copytree(bitstreams_dir() / "pynq_z1", folder)
    return folder


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in bitstreams_dir().glob("*/manifest.json")))
def test_bundled_builds_are_hashed_and_their_calibrations_follow(folder):
    overlay = OverlayConfig.load(bitstreams_dir() / folder / "manifest.json")  # verifies the build hash
    calibration = CalibrationParams.load(bitstreams_dir() / folder / "calibration.json")
    assert overlay.name == folder and overlay.regmap_version == 2
    assert calibration.overlay_build_hash == overlay.build_hash


def test_rehash_with_changes_writes_manifest_and_calibration(build, capsys):
    before = CalibrationParams.load(build / "calibration.json")
    dk = OverlayConfig.load(build / "manifest.json").dk
    assert main(["hls", "rehash", "--overlay", str(build), "--set", "dm=4", "--set", "dn=4"]) == 0
    overlay = OverlayConfig.load(build / "manifest.json")
    calibration = CalibrationParams.load(build / "calibration.json")
    assert (overlay.dm, overlay.dn, overlay.dk) == (4, 4, dk) and overlay.build_hash == overlay.structural_hash()
    assert calibration.overlay_build_hash == overlay.build_hash
    assert calibration.with_changes(overlay_build_hash=before.overlay_build_hash) == before  # parameters kept
    out = capsys.readouterr().out
    assert f"build_hash {before.overlay_build_hash} -> {overlay.build_hash}" in out and "parameters kept" in out


def test_rehash_after_a_hand_edit(build):
    manifest = build / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dk": 256', '"dk": 128'))
    done = rehash_build(build)
    assert OverlayConfig.load(manifest) == done.overlay and done.overlay.dk == 128
    assert done.calibration is not None and done.calibration.overlay_build_hash == done.overlay.build_hash
    assert rehash_build(build).overlay == done.overlay  # idempotent


def test_rehash_refuses_a_built_overlay_and_a_foreign_calibration(build, capsys):
    (build / "pynq_z1.bit").write_bytes(b"bitstream")
    assert main(["hls", "rehash", "--overlay", str(build / "manifest.json")]) == 2
    assert "has a bitstream" in capsys.readouterr().err
    (build / "pynq_z1.bit").unlink()
    calibration = build / "calibration.json"
    calibration.write_text(json.dumps({**json.loads(calibration.read_text()), "overlay_build_hash": "0123456789abcdef"}))
    assert main(["hls", "rehash", "--overlay", str(build)]) == 2
    assert "was made for build 0123456789abcdef" in capsys.readouterr().err
