"""Every output path a command takes is checked when the arguments are parsed, before any work, with the path named."""
from __future__ import annotations

import pytest

from autoq.host.cli import main

MISSING = "absent/out.x"  # a file in a folder that does not exist (relative to the test's folder)
FILE = "a-file"  # exists, as a file


@pytest.mark.parametrize("argv, message", [
    (["bench", "overlay", "--plot", MISSING], "argument --plot: cannot write absent/out.x: folder absent does not exist"),
    (["bench", "overlay", "--record", MISSING], "argument --record: cannot write absent/out.x: folder absent does not exist"),
    (["cost", "digits", "--uniform", "4/4", "--record", MISSING], "argument --record: cannot write absent/out.x"),
    (["calibrate", "m.csv", "-o", MISSING], "argument -o/--output: cannot write absent/out.x: folder absent does not exist"),
    (["calibrate", "m.csv", "-o", "."], "argument -o/--output: . is a folder; give a file path"),
    (["trace", "t.sqlite", "--export", "csv", "-o", MISSING], "argument -o/--output: cannot write absent/out.x"),
    (["export", "--plan", "p.json", "--onnx", MISSING], "argument --onnx: cannot write absent/out.x: folder absent does not exist"),
    (["export", "--plan", "p.json", "--hls4ml", FILE], "argument --hls4ml: a-file is a file; give a folder"),
    (["search", "--out", f"{FILE}/run"], "argument --out: cannot create folder a-file/run: a-file is a file"),
    (["search", "--record", MISSING], "argument --record: cannot write absent/out.x"),
])
def test_bad_output_paths_are_usage_errors_naming_the_path(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / FILE).write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]  # nothing was made


def test_stdout_and_new_folders_are_fine(tmp_path, monkeypatch, capsys):
    from autoq.host.cli import build_parser

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["trace", "t.sqlite", "--export", "csv", "-o", "-"])
    assert args.output == "-"
    assert build_parser().parse_args(["search", "--out", "runs/deep/new"]).out == "runs/deep/new"
    assert not (tmp_path / "runs").exists()  # created by the search itself, not by parsing
