"""The rates of the named limits, from the ``limits`` section of the config."""

from __future__ import annotations

from parley_core.config import LimitRate, LimitsSettings
from parley_core.limits.buckets import Rate
from parley_core.limits.names import LimitName


def rates_from_settings(settings: LimitsSettings) -> dict[LimitName, Rate]:
    """Every named limit's rate (each name is a key of the section)."""
    rates: dict[LimitName, Rate] = {}
    for name in LimitName:
        configured = getattr(settings, name.value)
        assert isinstance(configured, LimitRate)
        rates[name] = Rate(burst=configured.burst, per_minute=configured.per_minute)
    return rates
