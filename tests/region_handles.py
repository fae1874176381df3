"""Handles whose registrar is a chosen region, for the two-region tests: the
registrar is picked by rendezvous hashing over the registrar regions
(parley_core.regions.RegionMap.handle_registrar), so a test draws fresh
handles until one lands where it needs it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from svc_keys.domain.handles import handle_key
from tests.users import unique_handle


def handle_registered_in(region: str, registrars: Sequence[str], *, prefix: str = "user") -> str:
    for _ in range(64):
        handle = unique_handle(prefix)
        key = handle_key(handle)
        won = max(registrars, key=lambda r: hashlib.sha256(f"{key}\x00{r}".encode()).digest())
        if won == region:
            return handle
    raise AssertionError(f"no handle registered in {region} in 64 tries")
