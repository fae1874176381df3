"""Region names as ``parley up --regions`` and the regions harness take them.

Apart from parley_dev.regions so the CLI can check its arguments without
importing the stack (and with it pymongo, redis and grpc).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_REGIONS = 9
# They name directories and appear in topology documents and metric labels.
_REGION_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def parse_region_names(text: str) -> list[str]:
    """``eu,us`` -> ["eu", "us"]; ValueError naming the fault."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    check_region_names(names)
    return names


def check_region_names(names: Sequence[str]) -> None:
    if not names:
        raise ValueError("name at least one region")
    if len(names) > MAX_REGIONS:
        raise ValueError(f"at most {MAX_REGIONS} regions")
    if len(set(names)) != len(names):
        raise ValueError(f"region names repeat: {list(names)}")
    bad = [n for n in names if not _REGION_NAME.match(n)]
    if bad:
        raise ValueError(f"region names are lower-case letters, digits and '-': {bad}")
