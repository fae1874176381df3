"""Storage tiers: the bucket's lifecycle rules, set when svc_media starts.

Objects move STANDARD -> STANDARD_IA -> GLACIER on the configured schedule
(config validation keeps it to what S3 can run: STANDARD_IA from day 30,
GLACIER from day 90 and 30 days after STANDARD_IA); the store moves them,
svc_media only states the rules. A store that refuses transitions (SeaweedFS
answers 501, and no local server runs them) gets the other rule alone, and
svc_media says so once: such a stack simply has no tiers. A store that does
not answer at start is asked again until it does.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from parley_core.config import MediaServiceSettings
from parley_core.errors import Unavailable
from svc_media.model import LifecyclePlan, StoreRefused, TransitionsUnsupported
from svc_media.ports import ObjectStore

log = structlog.get_logger(__name__)

DAY_SECONDS = 86400
# Seconds between attempts while the store does not answer at start.
RETRY_SECONDS = 30.0


def lifecycle_plan(config: MediaServiceSettings) -> LifecyclePlan:
    # A day past the longest an upload session lasts: the sweeper aborts what
    # a session left behind, the store's rule catches what the sweeper missed.
    session_days = math.ceil(config.upload_session_seconds / DAY_SECONDS)
    return LifecyclePlan(
        infrequent_after_days=config.tiers.infrequent_after_days,
        archive_after_days=config.tiers.archive_after_days,
        abort_incomplete_after_days=session_days + 1,
        min_object_bytes=config.tiers.min_object_bytes,
    )


async def install(objects: ObjectStore, plan: LifecyclePlan) -> LifecyclePlan:
    """Set the rules; the plan in force (without transitions when the store
    refuses them). Unavailable when the store does not answer."""
    try:
        changed = await objects.install_lifecycle(plan)
    except TransitionsUnsupported as exc:
        log.warning(
            "media_tiers_unsupported",
            detail=(
                "the object store refuses lifecycle transitions: media stays in STANDARD "
                "(expected with SeaweedFS; a production store must run them)"
            ),
            answer=str(exc),
            infrequent_after_days=plan.infrequent_after_days,
            archive_after_days=plan.archive_after_days,
        )
        plan = plan.without_transitions()
        changed = await objects.install_lifecycle(plan)
    log.info(
        "media_lifecycle_rules",
        changed=changed,
        infrequent_after_days=plan.infrequent_after_days,
        archive_after_days=plan.archive_after_days,
        abort_incomplete_after_days=plan.abort_incomplete_after_days,
    )
    return plan


async def install_until_done(
    objects: ObjectStore, plan: LifecyclePlan, *, retry_seconds: float = RETRY_SECONDS
) -> LifecyclePlan | None:
    """``install``, again every ``retry_seconds`` while the store does not
    answer; None when it refuses the rules (logged: media works without them)."""
    while True:
        try:
            return await install(objects, plan)
        except Unavailable:
            log.info("media_lifecycle_deferred", retry_seconds=retry_seconds)
        except StoreRefused as exc:
            log.error(
                "media_lifecycle_refused",
                detail="the object store refused the bucket's lifecycle rules: no tiers",
                code=exc.code,
                status=exc.status,
            )
            return None
        except Exception:
            # Media works without the rules; the start must not fail on them.
            log.exception("media_lifecycle_failed")
            return None
        await asyncio.sleep(retry_seconds)


# Classes a GET needs a restore for, or may (Intelligent-Tiering's archive tiers).
RESTORE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "INTELLIGENT_TIERING"})
# Seconds between reads of the bucket's rules after the start: an operator's
# rule added later is seen this soon (S3 runs lifecycle once a day).
RULES_RECHECK_SECONDS = 600.0


def archive_after_days(rules: Sequence[Mapping[str, Any]]) -> float:
    """The fewest days after upload any enabled rule may move an object to a
    class a GET needs a restore for; inf when no rule does. A transition on a
    date (not after days) counts as day 0; filters are not looked at (an
    operator's rule may cover media/)."""
    earliest = math.inf
    for rule in rules:
        if rule.get("Status") != "Enabled":
            continue
        for transition in rule.get("Transitions") or ():
            if transition.get("StorageClass") in RESTORE_CLASSES:
                earliest = min(earliest, float(transition.get("Days", 0)))
    return earliest


class ArchiveHorizon:
    """When objects may have been archived, from the bucket's rules as last
    read: a download HEADs the object (to refuse an archived one with
    MEDIA_ARCHIVED) only when it may be; before the rules are read, always."""

    def __init__(self) -> None:
        self.days: float | None = None

    def may_be_archived(self, *, created_at: float, now: float) -> bool:
        if self.days is None:
            return True
        # S3 moves an object at a midnight UTC after it is that many days
        # old, never sooner: a day of margin covers any clock difference.
        return now - created_at >= (self.days - 1) * DAY_SECONDS


async def keep_tiers(
    objects: ObjectStore,
    plan: LifecyclePlan,
    horizon: ArchiveHorizon,
    *,
    recheck_seconds: float = RULES_RECHECK_SECONDS,
) -> None:
    """Install the rules (``install_until_done``), then keep ``horizon`` to
    the bucket's rules, read again every ``recheck_seconds``."""
    await install_until_done(objects, plan)
    while True:
        try:
            horizon.days = archive_after_days(await objects.lifecycle_rules())
        except Exception as exc:
            # Kept as last read: a store that does not answer serves no downloads anyway.
            log.info("media_lifecycle_read_failed", error=repr(exc))
        await asyncio.sleep(recheck_seconds)
