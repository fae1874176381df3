"""The bucket lifecycle rule that moves archive objects to the glacier class.

One rule, ``parley-history-glacier``, filtered to the archive's prefix: the
store moves an object to the glacier class ``cold_window_days -
hot_window_days`` days after it was written (an object is written once its
newest week has left the hot window, so its history is then about a cold
window old). ``ObjectSizeGreaterThan`` 0 overrides S3's default of leaving
objects of 128 KiB or less where they are: the last object of a pass may be
small and is as old as the others.

Rules whose id does not start with ``parley-history-`` (the operator's,
svc_media's ``parley-media-*``) are kept as they are, as svc_media keeps ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

OWN_RULE_PREFIX = "parley-history-"
GLACIER_RULE = f"{OWN_RULE_PREFIX}glacier"

Rule = dict[str, Any]


def transition_days(*, cold_window_days: float, hot_window_days: float) -> int:
    """Days after an object is written that it goes to glacier (whole days,
    at least one: S3 counts days)."""
    return max(1, math.ceil(cold_window_days - hot_window_days))


def glacier_rule(*, prefix: str, days: int, storage_class: str) -> Rule:
    return {
        "ID": GLACIER_RULE,
        "Status": "Enabled",
        "Filter": {"And": {"Prefix": prefix, "ObjectSizeGreaterThan": 0}},
        "Transitions": [{"Days": days, "StorageClass": storage_class}],
    }


def merged_rules(existing: Sequence[Rule], rule: Rule | None) -> list[Rule]:
    """Every rule not ours as it is, then ours (none: glacier off)."""
    foreign = [dict(r) for r in existing if not str(r.get("ID", "")).startswith(OWN_RULE_PREFIX)]
    return [*foreign, *([rule] if rule is not None else [])]
