"""``autoq search`` with the analytic model backend: on the quick digits task (results, final export, record, resume,
bad input) and once as it runs by default, on Fashion-MNIST."""
import json

import pytest

from autoq.common.plan import QuantPlan
from autoq.host.cli import main
from autoq.host.search.checkpoint import CHECKPOINT_NAME, load_checkpoint
from autoq.host.traces import TraceStore


@pytest.fixture(autouse=True)
def _restore_threads(one_torch_thread):
    """`autoq search` sets torch to one thread for the process; give the rest of the session its setting back
    (test_live_search imports this fixture too)."""
    yield


def autoq(*argv):
    """``autoq search`` on the quick digits task (the default task is fashion: see the last test)."""
    return main(["search", "--no-progress", "--model", "digits", *argv])


def test_short_search_writes_results_records_every_measurement_and_resumes(tmp_path, capsys):
    out, trace = tmp_path / "run", tmp_path / "trace.sqlite"
    assert autoq("--agent", "random", "--episodes", "2", "--seed", "1", "--latency-budget", "0.4x",
                 "--final-finetune-steps", "3", "--out", str(out), "--record", str(trace)) == 0
    printed = capsys.readouterr().out
    assert "random: 2 episodes; best plan" in printed and str(out) in printed
    assert "final plan: test accuracy" in printed and "after 3 fine-tune steps" in printed
    assert "on 225 val images (scored every episode)" in printed and "on val (225, selected it)" in printed
    assert "on test (225)" in printed
    for name in ("summary.md", "best_reward.plan.json", "pareto_latency.csv", "pareto_energy.png", "bits_heatmap.png", "episodes.csv",
                 "final/plan.json", "final/model.onnx", "final/final.json"):
        assert (out / name).is_file(), name
    best = QuantPlan.load(out / "best_reward.plan.json")
    final = json.loads((out / "final" / "final.json").read_text())
    assert QuantPlan.load(out / "final" / "plan.json") == best and final["plan_hash"] == best.hash and final["finetune_steps"] == 3
    assert not (out / "final" / "hls4ml").exists()  # only with --hls4ml
    summary = (out / "summary.md").read_text()
    assert "resource-constrained: latency <= 0.4x the max-bit plan" in summary and "| backend | model" in summary
    assert "## Final plan: fine-tuned 3 steps; the " in summary and f"the {final['exported']} model exported" in summary
    assert f"**{final['accuracy_after_finetune']:.4f} after**" in summary and "`final/model.onnx`" in summary
    assert_selected_on_val_and_reported_on_test(out, best, final, summary)
    twin = json.loads((out / "summary.json").read_text())
    assert twin["selected"]["plan_hash"] == best.hash and twin["final"] == final and twin["agent"] == "random"
    assert twin["splits"] == {"val_subset": 225, "val": 225, "test": 225} and twin["episode_split"] == "val_subset"
    assert (out / "sensitivity.npz").is_file() and twin["sensitivity"] == "fisher"
    payload = load_checkpoint(out / CHECKPOINT_NAME)
    assert payload["next_episode"] == 2 and best in [r.plan for r in payload["history"]]
    with TraceStore(trace, mode="r") as store:
        # the reference plans, every budget-enforcement probe and every episode's plan: nothing measured is missing
        assert len(store) >= 2 + 2
        recorded = {r.plan.hash for r in store}
    assert {r.plan.hash for r in payload["history"]} <= recorded
    # Resume of a finished search: nothing to do, same results, the finished export reused; changing its settings is refused.
    exported = (out / "final" / "model.onnx").stat().st_mtime_ns
    assert autoq("--resume", "--out", str(out)) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["next_episode"] == 2
    assert (out / "final" / "model.onnx").stat().st_mtime_ns == exported
    assert json.loads((out / "final" / "final.json").read_text()) == final
    # Asking for the hls4ml project on a finished search exports again, with it.
    assert autoq("--resume", "--out", str(out), "--hls4ml") == 0
    with_hls = json.loads((out / "final" / "final.json").read_text())
    assert (out / "final" / "hls4ml").is_dir() and with_hls["hls4ml"] and with_hls["accuracy_after_finetune"] == final["accuracy_after_finetune"]
    assert "hls4ml: `final/hls4ml`" in (out / "summary.md").read_text()
    assert autoq("--resume", "--out", str(out), "--episodes", "1") == 2
    assert "the search stored in" in capsys.readouterr().err  # --episodes can extend a search, not shorten it
    assert autoq("--resume", "--out", str(out), "--seed", "7") == 2
    assert "drop seed=7 (stored: 1)" in capsys.readouterr().err
    assert autoq("--out", str(out)) == 2
    assert "already holds a search: pass --resume" in capsys.readouterr().err


def assert_selected_on_val_and_reported_on_test(out, best, final, summary):
    """The search picked ``best`` by val accuracy; the summary and final.json report test accuracy, on other images."""
    import csv

    from autoq.host.evaluate import Evaluator
    from autoq.host.tasks import load_task

    task = load_task("digits")
    val_images = {tuple(row) for row in task.val.x.flatten(1).tolist()}
    assert not any(tuple(row) in val_images for row in task.test.x.flatten(1).tolist()), "val and test share images"
    evaluator = Evaluator.for_task(task)
    selected = [r for r in csv.DictReader(open(out / "episodes.csv")) if r["plan_hash"] == best.hash]
    on_val, on_test = evaluator.accuracy(best), evaluator.accuracy(best, split="test")
    assert float(selected[0]["accuracy"]) == on_val  # digits' val split is smaller than the subset: all of it is scored
    assert f"val (225 images) accuracy (selected it among the 2 best re-scored there): {on_val:.4f}" in summary
    assert f"**test accuracy: {on_test:.4f}** on test (225 images)" in summary
    assert final["accuracy_split"] == "test" and final["accuracy_before_finetune"] == on_test
    assert f"test (225 images) accuracy: {on_test:.4f} before the fine-tune" in summary


def test_a_finished_search_is_extended_by_resume_with_more_episodes(tmp_path, capsys):
    """The random agent's schedule does not depend on the budget: 2 episodes extended to 4 equal 4 at once."""
    args = ["--agent", "random", "--seed", "5", "--final-finetune-steps", "0"]
    assert autoq(*args, "--episodes", "4", "--out", str(tmp_path / "straight")) == 0
    assert autoq(*args, "--episodes", "2", "--out", str(tmp_path / "extended")) == 0
    assert autoq("--resume", "--episodes", "4", "--out", str(tmp_path / "extended")) == 0
    assert "random: 4 episodes" in capsys.readouterr().out.splitlines()[-3]
    for name in ("episodes.csv", "best_reward.plan.json", "pareto_latency.csv", "final/plan.json"):
        assert (tmp_path / "extended" / name).read_text() == (tmp_path / "straight" / name).read_text(), name
    assert "4 of 4 (extended from 2 to 4 episodes at episode 2)" in (tmp_path / "extended" / "summary.md").read_text()
    assert load_checkpoint(tmp_path / "extended" / CHECKPOINT_NAME)["next_episode"] == 4


def test_a_search_failing_before_its_first_checkpoint_removes_what_it_created(tmp_path, capsys):
    out, trace = tmp_path / "new" / "run", tmp_path / "trace.sqlite"
    assert autoq("--latency-budget", "0.05x", "--out", str(out), "--record", str(trace)) == 2
    assert "cannot be met" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no empty folder, history or trace left behind
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert autoq("--latency-budget", "0.05x", "--out", str(kept / "run")) == 2
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_impossible_budget_is_refused_before_searching(tmp_path, capsys):
    assert autoq("--latency-budget", "0.05x", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoq search: error: latency budget") and "cannot be met" in err and "at 2 bits" in err
    assert not (tmp_path / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "no checkpoint to resume at"),
    (["--latency-budget", "fast"], "cannot read latency budget 'fast'"),
    (["--energy-budget", "3ms"], "cannot read energy budget '3ms'"),
    (["--accuracy-guaranteed", "--psi-acc", "0"], "psi_acc > 0"),
    (["--psi-latency", "0.3"], "add --accuracy-guaranteed"),
    (["--min-bits", "9"], "min_bits <= max_bits"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, argv, message):
    assert autoq(*argv, "--out", str(tmp_path / "none")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_conflicting_options_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        autoq("--latency-budget", "0.5x", "--accuracy-guaranteed")
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_search_killed_with_sigkill_resumes_to_the_same_results(tmp_path):
    """The real thing: `autoq search` on digits, SIGKILLed from outside while it runs, then `--resume`."""
    import signal
    import subprocess
    import sys
    import time

    args = ["--model", "digits", "--agent", "autoq", "--episodes", "8", "--seed", "2", "--final-finetune-steps", "3"]
    reference_trace, trace = tmp_path / "reference.sqlite", tmp_path / "killed.sqlite"
    assert main(["search", "--no-progress", *args, "--out", str(tmp_path / "reference"), "--record", str(reference_trace)]) == 0
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from autoq.host.cli import main; sys.exit(main())",
                             "search", "--no-progress", *args, "--out", str(killed_out), "--record", str(trace)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = killed_out / CHECKPOINT_NAME
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
    assert 0 < load_checkpoint(checkpoint)["next_episode"] < 8
    with TraceStore(trace, mode="r") as store:
        before_resume = [(r.plan.hash, r.measurement.latency_s) for r in store]
    assert autoq("--resume", "--out", str(killed_out), "--record", str(trace)) == 0
    with TraceStore(trace, mode="r") as store, TraceStore(reference_trace, mode="r") as reference:
        after = [(r.plan.hash, r.measurement.latency_s) for r in store]
        assert after[: len(before_resume)] == before_resume  # what the killed run recorded is all still there
        assert {r.plan.hash for r in reference} <= {h for h, _ in after}  # and every measurement of the full run is
    for name in ("episodes.csv", "best_reward.plan.json", "pareto_latency.csv", "final/plan.json"):
        assert (killed_out / name).read_text() == (tmp_path / "reference" / name).read_text(), name
    final, reference_final = (json.loads((folder / "final" / "final.json").read_text()) for folder in (killed_out, tmp_path / "reference"))
    assert {k: v for k, v in final.items() if k not in ("onnx", "hls4ml")} == {k: v for k, v in reference_final.items() if k not in ("onnx", "hls4ml")}


def test_the_default_search_runs_fashion_scores_episodes_on_a_val_subset_and_selects_on_all_of_val(tmp_path, capsys):
    """`autoq search` as a fresh user runs it (its default task, agent and budget), cut to a few episodes."""
    out = tmp_path / "run"
    assert main(["search", "--no-progress", "--episodes", "3", "--final-finetune-steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "autoq: 3 episodes; best plan (episode" in printed
    assert "on 2,000 val images (scored every episode)" in printed and "on val (5,000, selected it)" in printed
    assert "on test (5,000)" in printed
    twin = json.loads((out / "summary.json").read_text())
    assert twin["task"] == "fashion" and twin["agent"] == "autoq" and twin["episodes"] == 3
    assert twin["splits"] == {"val_subset": 2000, "val": 5000, "test": 5000} and twin["episode_split"] == "val_subset"
    selected = twin["selected"]
    assert selected["episode"] >= twin["warmup_episodes"]  # never a warm-up episode
    assert selected["val_subset_accuracy"] != selected["val_accuracy"] or selected["val_subset_kl"] != selected["val_kl"]
    assert [c["episode"] for c in twin["candidates"]] and selected["episode"] in [c["episode"] for c in twin["candidates"]]
    summary = (out / "summary.md").read_text()
    assert ("| held-out images | val_subset 2,000 (a seeded subset of val: scores every episode), val 5,000 "
            "(re-scores the best: selects), test 5,000 (reports) |") in summary
    assert "**test accuracy: " in summary and "** on test (5,000 images)" in summary
