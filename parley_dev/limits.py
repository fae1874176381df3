"""Abuse limits for stacks whose own load is not abuse: the benchmark's
(``parley bench --start``) and the test suites' shared stacks.

Every limit keeps being taken (so its cost is in every figure), but with a
burst and a rate no load of ours reaches: a refusal there would be the
benchmark measuring its own limits. Stacks that test the limits themselves
set their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from parley_core.limits import LimitName

# A billion at once, a billion a minute (16 million a second): never reached,
# and an idle bucket still expires about a second after its last take.
UNREACHED = {"burst": 1_000_000_000, "per_minute": 1_000_000_000}


def unreached_limits(*, keep: Iterable[LimitName] = ()) -> dict[str, Any]:
    """The ``limits`` section giving every named limit but ``keep`` the UNREACHED rate."""
    kept = set(keep)
    return {name.value: dict(UNREACHED) for name in LimitName if name not in kept}
