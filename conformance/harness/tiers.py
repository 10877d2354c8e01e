"""Which opt-in tiers (``levels.OPT_IN_TIERS``: soak, huge) a session runs.

Opt-in tests take long or need much memory, so a run leaves them out unless asked for:

    CONFORMANCE_TIERS=soak python -m conformance run --np 2,3       # also the soak tier
    CONFORMANCE_TIERS=all  ...                                      # every opt-in tier
    python -m conformance run --np 2 -m huge                        # a -m naming the tier

The environment variable reaches every rank (mpiexec passes it), so every rank deselects the
same tests and the ranks stay in step.
"""

from __future__ import annotations

import os
import re

import pytest

from conformance.harness import levels

ENV_VAR = "CONFORMANCE_TIERS"


def requested(config: pytest.Config) -> set[str]:
    """The opt-in tiers asked for by ``CONFORMANCE_TIERS`` or named (not negated) in ``-m``."""
    names = {part.strip() for part in os.environ.get(ENV_VAR, "").split(",") if part.strip()}
    if "all" in names:
        names |= set(levels.OPT_IN_TIERS)
    unknown = names - set(levels.OPT_IN_TIERS) - {"all"}
    if unknown:
        raise pytest.UsageError(
            f"{ENV_VAR} names unknown opt-in tiers {sorted(unknown)}; "
            f"known: {', '.join(levels.OPT_IN_TIERS)}, all"
        )
    expression = str(config.getoption("markexpr", "") or "")
    for tier in levels.OPT_IN_TIERS:
        if re.search(rf"(?<!not )\b{tier}\b", expression):
            names.add(tier)
    return names & set(levels.OPT_IN_TIERS)


def deselect_opt_in(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the items of opt-in tiers that were not asked for (reported as deselected)."""
    wanted = requested(config)
    left_out = set(levels.OPT_IN_TIERS) - wanted
    dropped = [item for item in items if levels.tier_of(item) in left_out]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        kept = {id(item) for item in items} - {id(item) for item in dropped}
        items[:] = [item for item in items if id(item) in kept]
