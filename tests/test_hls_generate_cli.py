"""`autoq hls generate` writes where it is told or into the checkout it runs in, never into the installed package."""
from __future__ import annotations

import pytest

from autoq.hls import codegen
from autoq.host.cli import main
from autoq.overlay.manifest import load_overlay


def package_files() -> dict[str, bytes]:
    folder = codegen.generated_dir("pynq_z1")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_default_is_the_checkout_in_the_current_folder(tmp_path, monkeypatch, capsys):
    before = package_files()
    (tmp_path / "hls").mkdir()
    (tmp_path / "hls" / "Makefile").write_text("# a checkout's hls/Makefile\n")
    monkeypatch.chdir(tmp_path)
    assert main(["hls", "generate"]) == 0
    written = tmp_path / "hls" / "generated" / "pynq_z1"
    assert f"wrote {written / codegen.CONFIG_HEADER}" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in written.iterdir()} == codegen.render_all(load_overlay("pynq_z1"))
    assert main(["hls", "generate", "--check"]) == 0
    assert package_files() == before  # the package's copy (what the drift test checks) is left alone


def test_outside_a_checkout_it_asks_for_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["hls", "generate"]) == 2
    assert f"{tmp_path} is not an autoq-hil checkout (no hls/Makefile there): give the folder to write to with --out DIR" \
        in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert main(["hls", "generate", "--out", "mine"]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == sorted(codegen.render_all(load_overlay("pynq_z1")))


def test_out_that_is_a_file_is_refused_before_rendering(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        main(["hls", "generate", "--out", str(tmp_path / "f" / "sub")])
    assert f"cannot create folder {tmp_path / 'f' / 'sub'}: {tmp_path / 'f'} is a file" in capsys.readouterr().err
