"""The media bucket's lifecycle rules svc_media owns, as the S3 API spells them.

Two rules, both under ``media/`` (every object svc_media stores):

- tiers: STANDARD -> STANDARD_IA -> GLACIER after the configured days, only
  for objects larger than ``media.tiers.min_object_bytes`` (128 KiB by
  default; ``ObjectSizeGreaterThan``): S3 does not transition smaller objects
  by default, and a thumbnail in Glacier would cost a restore for a few
  kilobytes;
- stale uploads: incomplete multipart uploads are aborted by the store itself
  a day after any upload session could still use them, behind the sweeper.

Rules whose id does not start with ``parley-media-`` are the operator's and
are kept as they are; ours are replaced, so a changed schedule takes effect
at the next start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from svc_media.model import LifecyclePlan

MEDIA_PREFIX = "media/"
OWN_RULE_PREFIX = "parley-media-"
TIERS_RULE = f"{OWN_RULE_PREFIX}tiers"
STALE_UPLOADS_RULE = f"{OWN_RULE_PREFIX}abort-stale-uploads"
INFREQUENT_CLASS = "STANDARD_IA"
ARCHIVE_CLASS = "GLACIER"

Rule = dict[str, Any]


def own_rules(plan: LifecyclePlan) -> list[Rule]:
    rules: list[Rule] = []
    transitions = [
        {"Days": days, "StorageClass": storage_class}
        for days, storage_class in (
            (plan.infrequent_after_days, INFREQUENT_CLASS),
            (plan.archive_after_days, ARCHIVE_CLASS),
        )
        if days
    ]
    if transitions:
        rules.append(
            {
                "ID": TIERS_RULE,
                "Status": "Enabled",
                "Filter": {
                    "And": {
                        "Prefix": MEDIA_PREFIX,
                        "ObjectSizeGreaterThan": plan.min_object_bytes,
                    }
                },
                "Transitions": transitions,
            }
        )
    rules.append(
        {
            "ID": STALE_UPLOADS_RULE,
            "Status": "Enabled",
            "Filter": {"Prefix": MEDIA_PREFIX},
            "AbortIncompleteMultipartUpload": {
                "DaysAfterInitiation": plan.abort_incomplete_after_days
            },
        }
    )
    return rules


def merged_rules(existing: Sequence[Rule], plan: LifecyclePlan) -> list[Rule]:
    """The operator's rules as they are, then ours."""
    foreign = [dict(r) for r in existing if not str(r.get("ID", "")).startswith(OWN_RULE_PREFIX)]
    return [*foreign, *own_rules(plan)]
