"""The live path end to end: ``autoq search`` against ``autoq board serve --emulate`` over loopback TCP, recorded
and replayed; and ``--record FILE`` on the other commands that measure (``autoq cost``, ``autoq bench overlay``),
whose traces ``--backend replay:FILE`` serves again."""
from __future__ import annotations

import json
import select
import signal
import subprocess
import sys

import pytest

from autoq.host.cli import main
from autoq.host.search.checkpoint import CHECKPOINT_NAME, load_checkpoint
from autoq.host.traces import TraceStore

from test_search_cli import _restore_threads  # noqa: F401 - autouse: give torch its thread count back after `autoq search`

AUTOQ = [sys.executable, "-c", "import sys; from autoq.host.cli import main; sys.exit(main(sys.argv[1:]))"]
RESULT_FILES = ("summary.md", "episodes.csv", "best_plans.json", "best_reward.plan.json", "pareto_latency.csv",
                "pareto_energy.csv", "pareto_latency.png", "bits_heatmap.png", "final/final.json", "final/model.onnx")


@pytest.fixture(scope="module")
def board_uri():
    """``autoq board serve --emulate`` on a free loopback port, as a separate process; SIGTERM must stop it cleanly."""
    serve = subprocess.Popen([*AUTOQ, "board", "serve", "--emulate", "--tcp", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([serve.stdout], [], [], 60)
        banner = serve.stdout.readline() if ready else ""  # printed once it listens
        assert "serving overlay" in banner, f"daemon did not start: {banner!r} {serve.stderr.read() if serve.poll() is not None else ''}"
        port = int(banner.split("tcp 127.0.0.1:")[1].split()[0].rstrip(";,"))
        yield f"tcp://127.0.0.1:{port}"
    finally:
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=30)
    assert serve.returncode == 0 and out.rstrip().endswith("autoq board: stopped"), err
    assert "Traceback" not in err, err


def search(*argv: str) -> int:
    return main(["search", "--no-progress", "--model", "digits", "--agent", "autoq", "--episodes", "2", "--seed", "3", "--final-finetune-steps", "2", *argv])


def recorded(path) -> list[tuple]:
    """Every record of a trace in order: what was measured and what came back."""
    with TraceStore(path, mode="r") as store:
        return [(r.network.hash, r.plan.hash, r.batch, r.measurement.latency_s, r.measurement.energy_j,
                 [layer.cycles for layer in r.measurement.layers], r.measurement.provenance.source) for r in store]


def episodes(out) -> list[tuple]:
    return [(r.episode, r.plan, r.accuracy, r.reward, r.measurement.latency_s, r.measurement.energy_j,
             r.measurement.provenance.source) for r in load_checkpoint(out / CHECKPOINT_NAME)["history"]]


def test_search_against_the_board_daemon_over_tcp_records_and_replays(board_uri, tmp_path, capsys):
    live_out, trace = tmp_path / "live", tmp_path / "live.sqlite"
    assert search("--backend", board_uri, "--out", str(live_out), "--record", str(trace)) == 0
    assert "autoq: 2 episodes; best plan" in capsys.readouterr().out
    for name in RESULT_FILES:
        assert (live_out / name).is_file(), name
    assert f"| backend | {board_uri}" in (live_out / "summary.md").read_text()
    live = episodes(live_out)
    assert [e[0] for e in live] == [0, 1] and {e[-1] for e in live} == {"emulated"}

    # Every measurement the search made came from the daemon's emulated device and is in the trace.
    records = recorded(trace)
    assert {r[-1] for r in records} == {"emulated"}
    assert {(e[1].hash, e[4], e[5]) for e in live} <= {(r[1], r[3], r[4]) for r in records}
    with TraceStore(trace, mode="r") as store:
        assert {r.backend_uri for r in store} == {board_uri}
        assert [(b.uri, b.source) for b in store.backends()] == [(board_uri, "emulated")]

    # Replaying the trace re-runs the same search: the same measurements asked for in the same order (recorded
    # again to compare), the same episodes; only the source says where the costs came from.
    replay_out, rerecorded = tmp_path / "replay", tmp_path / "replayed.sqlite"
    assert search("--backend", f"replay:{trace}", "--out", str(replay_out), "--record", str(rerecorded)) == 0
    assert [r[:-1] for r in recorded(rerecorded)] == [r[:-1] for r in records]
    assert {r[-1] for r in recorded(rerecorded)} == {"replay"}
    assert [e[:-1] for e in episodes(replay_out)] == [e[:-1] for e in live]
    assert (replay_out / "best_reward.plan.json").read_text() == (live_out / "best_reward.plan.json").read_text()


def cost_json(capsys, *argv: str) -> dict:
    assert main(["cost", "digits", "--uniform", "4/3", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cost_record_on_a_remote_board_then_replay_prints_the_same_totals(board_uri, tmp_path, capsys):
    trace = tmp_path / "cost.sqlite"
    live = cost_json(capsys, "--backend", board_uri, "--record", str(trace))
    assert cost_json(capsys, "--backend", board_uri, "--batch", "2", "--record", str(trace))["batch"] == 2
    with TraceStore(trace, mode="r") as store:
        rows = list(store)
    assert [(r.plan.hash, r.batch, r.measurement.provenance.source, r.backend_uri) for r in rows] == [
        (live["plan_hash"], 1, "emulated", board_uri), (live["plan_hash"], 2, "emulated", board_uri)]
    assert rows[0].measurement.latency_s * 1e3 == live["totals"]["latency_ms"]
    replayed = cost_json(capsys, "--backend", f"replay:{trace}")
    assert replayed["provenance"]["source"] == "replay" and replayed["backend"]["source"] == "replay"
    assert replayed["totals"] == live["totals"] and replayed["layers"] == live["layers"]
    assert main(["cost", "digits", "--uniform", "4/3", "--backend", f"replay:{trace}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-1] == f"total: latency {live['totals']['latency_ms']:.4f} ms, energy {live['totals']['energy_mj']:.4f} mJ, " \
                        f"power {live['totals']['avg_power_w']:.3f} W (idle {live['totals']['idle_power_w']:.3f} W)"


def test_cost_record_appends_across_backends_and_refuses_its_own_replay(tmp_path, capsys):
    trace = tmp_path / "cost.sqlite"
    model = cost_json(capsys, "--record", str(trace))
    emulated = cost_json(capsys, "--backend", "emulated", "--record", str(trace))
    with TraceStore(trace, mode="r") as store:
        assert [r.measurement.provenance.source for r in store] == ["model", "emulated"]
        assert sorted(b.source for b in store.backends()) == ["emulated", "model"]
    # the same key recorded twice: a fresh replay serves the first record (a replayed search would see both in turn)
    replayed = cost_json(capsys, "--backend", f"replay:{trace}")
    assert replayed["totals"] == model["totals"] != emulated["totals"]
    assert main(["cost", "digits", "--uniform", "4/3", "--backend", f"replay:{trace}", "--record", str(trace)]) == 2
    assert "would append to the trace" in capsys.readouterr().err


def test_bench_overlay_record_then_replay_gives_the_same_sweep(tmp_path, capsys):
    from autoq.host.cli.bench_cmd import bench_layers

    trace = tmp_path / "bench.sqlite"
    argv = ["bench", "overlay", "--bits", "2/2,8/4", "--json"]
    assert main([*argv, "--backend", "emulated", "--record", str(trace)]) == 0
    live = json.loads(capsys.readouterr().out)
    with TraceStore(trace, mode="r") as store:
        rows = list(store)
    assert len(rows) == 2 * len(bench_layers()) == len(live["rows"])
    assert {r.measurement.provenance.source for r in rows} == {"emulated"}
    assert [(r.network.name, r.measurement.latency_s) for r in rows] == [(row["layer"], row["latency_s"]) for row in live["rows"]]
    assert main([*argv, "--backend", f"replay:{trace}"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["source"] == "replay" and replayed["rows"] == live["rows"]
