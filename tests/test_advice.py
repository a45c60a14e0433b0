"""Settings that run but do nothing: a budget the widest plan meets, --episodes for agents that set their own count."""
from __future__ import annotations

import warnings

import pytest

from autoq.host.advice import SettingWarning, warn_ignored_episodes, warn_unconstraining_budget
from autoq.host.cli import main
from autoq.host.search.rewards import BudgetSpec, CostPoint, RewardSetting

WIDEST, NARROWEST = CostPoint(4e-3, 1.2e-3), CostPoint(1e-3, 0.3e-3)


def objective(metric: str, text: str):
    return RewardSetting.resource_constrained(BudgetSpec.parse(metric, text)).resolve(WIDEST, NARROWEST, 0.9, "2 bits")


@pytest.mark.parametrize("metric, text, warns", [
    ("energy", "5mJ", True), ("energy", "1.2mJ", True), ("energy", "1mJ", False), ("latency", "1x", True),
    ("latency", "1.5x", True), ("latency", "0.4x", False), ("latency", "3ms", False),
])
def test_budget_at_or_above_the_widest_plan_warns(metric, text, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_unconstraining_budget(objective(metric, text), "8 bits") is warns
    assert [type(w.message) for w in caught] == ([SettingWarning] if warns else [])
    if warns:
        assert "does not constrain the search: the widest plan (8 bits) costs" in str(caught[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not warn_unconstraining_budget(RewardSetting.accuracy_guaranteed().resolve(WIDEST, NARROWEST, 0.9, "x"), "8 bits")
    assert not caught


def test_episodes_given_to_agents_that_set_their_own_count_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_ignored_episodes("greedy", 200, 2, 8) and warn_ignored_episodes("uniform", 200, 2, 8)
        assert not warn_ignored_episodes("uniform", None, 2, 8)  # not given: the default is no request
        assert not warn_ignored_episodes("autoq", 200, 2, 8) and not warn_ignored_episodes("random", 5, 2, 8)
    assert [str(w.message) for w in caught] == [
        "--agent greedy allocates its plan in one episode: --episodes 200 has no effect",
        "--agent uniform tries each uniform 2..8-bit plan once (at most 49 episodes) and stops: --episodes 200 only "
        "caps that, it does not make the search run longer",
    ]


def test_search_cli_prints_both_warnings(tmp_path, capsys, one_torch_thread):
    """`--energy-budget 5mJ` on the digits task: above the 8-bit plan's energy, so it says so."""
    assert main(["search", "--model", "digits", "--agent", "greedy", "--episodes", "5", "--energy-budget", "5mJ", "--final-finetune-steps",
                 "0", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "autoq search: warning: --agent greedy allocates its plan in one episode: --episodes 5 has no effect" in err
    assert "autoq search: warning: the energy budget 5 mJ (energy <= 5 mJ) does not constrain the search" in err
