"""Warnings about settings that run but do not do what they seem to: a budget that the widest plan already meets,
``--episodes`` given to an agent that decides its own episode count.

They are ``SettingWarning``s (``warnings.warn``): the ``autoq`` CLI prints them as ``autoq CMD: warning: ...`` on
stderr; library callers can filter or escalate them like any warning. A warning, never a refusal.
"""
from __future__ import annotations

import warnings

from autoq.host.search.rewards import Objective, format_cost


class SettingWarning(UserWarning):
    """A setting is accepted but has no effect, or not the one its name suggests."""


def warn_unconstraining_budget(objective: Objective, widest_label: str) -> bool:
    """Warn when the budget is at or above the cost of the widest plan (``objective.reference``): then every plan
    fits and the budget constrains nothing. Returns whether it warned."""
    budget = objective.setting.budget
    if budget is None or objective.limit is None:
        return False
    widest = objective.reference.get(budget.metric)
    if objective.limit < widest:
        return False
    warnings.warn(SettingWarning(
        f"the {budget.metric} budget {format_cost(budget.metric, objective.limit)} ({budget}) does not constrain the "
        f"search: the widest plan ({widest_label}) costs {format_cost(budget.metric, widest)}, so every plan fits; "
        f"give a budget below it (e.g. a fraction such as 0.5x)"), stacklevel=2)
    return True


def warn_ignored_episodes(agent: str, episodes: int | None, min_bits: int, max_bits: int) -> bool:
    """Warn when ``--episodes`` was given explicitly (``episodes`` not None) to an agent that sets its own count:
    ``greedy`` allocates in one episode, ``uniform`` tries each uniform plan once and stops. Returns whether it warned."""
    if episodes is None:
        return False
    if agent == "greedy":
        what = f"allocates its plan in one episode: --episodes {episodes} has no effect"
    elif agent == "uniform":
        plans = (max_bits - min_bits + 1) ** 2
        what = (f"tries each uniform {min_bits}..{max_bits}-bit plan once (at most {plans} episodes) and stops: "
                f"--episodes {episodes} only caps that, it does not make the search run longer")
    else:
        return False
    warnings.warn(SettingWarning(f"--agent {agent} {what}"), stacklevel=2)
    return True
