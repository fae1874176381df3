"""The glacier tier of the history archive: objects whose newest week ended
longer ago than the cold window go to a glacier storage class, where a read
needs a restore first.

How they get there (``archive.glacier_transition``):

- ``lifecycle`` (production): a bucket lifecycle rule moves objects under
  the archive's prefix ``cold - hot window`` days after they were written
  (storage/archive_lifecycle.py). The store moves them, so the archiver only
  learns the class: objects due by their weeks are HEADed (each at most once
  a day) and the manifest records those the store reports archived; a read
  that meets an archived object records it too. A store that refuses
  transitions (SeaweedFS: 501) has no glacier tier: nothing is HEADed.
- ``copy`` (stores without lifecycle transitions; tests against moto): the
  archiver copies each due object onto itself with the storage class, then
  records it.

Either way the manifest's ``tier`` is what reads check: a chunk in glacier is
FAILED_PRECONDITION ``HISTORY_ARCHIVED`` for every read of history (pages,
replays, lookups by id), and its media stay referenced through the manifest.
Whoever must read one anyway (a rewrite, an export) asks for a restored
copy (``unreadable``) and reads it once the store reports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from parley_core.errors import Unavailable
from svc_message.model.archive import Tier
from svc_message.storage.archive import ArchiveLedger, ArchiveObjects, TransitionsUnsupported
from svc_message.storage.archive_format import iso_week
from svc_message.storage.archive_lifecycle import glacier_rule

log = structlog.get_logger(__name__)

# Seconds before an object due by its weeks that the store had not yet moved
# is HEADed again (lifecycle transitions run about daily).
RECHECK_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class GlacierPolicy:
    cold_window_seconds: float
    """0: no glacier tier."""
    transition: str
    """``lifecycle`` or ``copy``."""
    storage_class: str
    lifecycle_days: int
    restore_tier: str
    restore_days: int
    objects_per_pass: int = 1000


class Glacier:
    def __init__(
        self, ledger: ArchiveLedger, objects: ArchiveObjects, policy: GlacierPolicy
    ) -> None:
        self._ledger = ledger
        self._objects = objects
        self._policy = policy
        # None until the bucket's rule is in place (or the store refused it).
        self._transitions: bool | None = None

    @property
    def enabled(self) -> bool:
        return self._policy.cold_window_seconds > 0

    async def ensure_lifecycle(self) -> bool | None:
        """Our lifecycle rule on the bucket (removed when the tier is off or
        copies are used); whether the store runs transitions."""
        if self._transitions is not None:
            return self._transitions
        policy = self._policy
        rule = (
            glacier_rule(
                prefix=self._objects.prefix,
                days=policy.lifecycle_days,
                storage_class=policy.storage_class,
            )
            if self.enabled and policy.transition == "lifecycle"
            else None
        )
        try:
            await self._objects.install_lifecycle(rule)
            self._transitions = rule is not None
        except TransitionsUnsupported as exc:
            log.warning("history_glacier_unsupported", store_answer=str(exc))
            self._transitions = False
        except Unavailable as exc:
            # Asked again next pass; moves and copies do not wait for it.
            log.warning("history_lifecycle_unavailable", error=exc.message)
            return None
        return self._transitions

    async def run(self, now: float) -> int:
        """Record (and in ``copy`` mode make) the objects due for glacier;
        returns how many moved to the glacier tier."""
        # Also takes our rule off the bucket when the tier is off or copies
        # are used.
        transitions = await self.ensure_lifecycle()
        if not self.enabled:
            return 0
        policy = self._policy
        lifecycle = policy.transition == "lifecycle"
        if lifecycle and not transitions:
            return 0
        before = iso_week(datetime.fromtimestamp(now - policy.cold_window_seconds, UTC))
        keys = await self._ledger.due_for_glacier(
            before,
            limit=policy.objects_per_pass,
            checked_before=now - RECHECK_SECONDS if lifecycle else None,
        )
        moved = 0
        for key in keys:
            if lifecycle:
                if not (await self._objects.head(key)).archived:
                    await self._ledger.checked(key, now)
                    continue
            else:
                await self._objects.freeze(key, policy.storage_class)
            await self._ledger.set_tier(key, Tier.GLACIER)
            moved += 1
        if moved:
            log.info("history_objects_to_glacier", count=moved)
        return moved

    async def unreadable(self, keys: Iterable[str], now: float) -> set[str]:
        """Of these glacier objects, those without a readable restored copy
        yet; a restore is asked for each that has none running."""
        waiting: set[str] = set()
        for key in sorted(set(keys)):
            state = await self._objects.head(key)
            if state.readable(now):
                continue
            if not state.restoring:
                await self._objects.restore(
                    key, days=self._policy.restore_days, tier=self._policy.restore_tier
                )
            waiting.add(key)
        return waiting
