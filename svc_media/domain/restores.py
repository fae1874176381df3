"""Restores of archived media: RestoreMedia, GetRestore, and the poller that
carries each restore to its end.

A restore is a record per media (queued -> restoring -> ready -> expired)
naming the devices that asked for it. RestoreMedia records it, then asks
the store for a copy (S3 RestoreObject; a store that does not answer leaves
it queued for the poller); a second request while it is queued, running or
ready answers the same restore, adding its device to those told. The poller
(every process, every ``restore_poll_seconds``) claims due records one
process each: it starts queued ones, HEADs running ones until the store
reports the copy (``x-amz-restore: ongoing-request="false", expiry-date``),
then tells each requesting device through svc_message's NotifyDevice
(MediaNotice KIND_RESTORE_READY with the expiry), retrying those svc_message
did not take, and marks the restore expired when its copy's expiry passes.
A device is told at least once: a process that dies between the notice and
recording it tells that device again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from parley_core.config import MediaTierSettings
from parley_core.errors import InvalidArgument, Reason, ResourceExhausted, Unavailable
from parley_core.limits import Limiter, LimitName, Take
from svc_media.domain.downloads import ARCHIVE_CLASSES, DownloadHandler, needs_restore
from svc_media.domain.policy import access_denied, archived, quarantined
from svc_media.model import (
    MediaRecord,
    MediaStats,
    ObjectInfo,
    Requester,
    RestoreRecord,
    RestoreStart,
    RestoreState,
    RestoreView,
)
from svc_media.ports import DeviceNotices, ObjectStore, Quarantine, Restores

log = structlog.get_logger(__name__)

MIN_DAYS = 1
MAX_DAYS = 30


@dataclass(frozen=True, slots=True)
class RestorePolicy:
    tier: str
    poll_seconds: float
    batch: int
    max_active_per_account: int = 20

    @classmethod
    def from_settings(cls, tiers: MediaTierSettings) -> RestorePolicy:
        return cls(
            tier=tiers.restore_tier,
            poll_seconds=float(tiers.restore_poll_seconds),
            batch=tiers.restore_batch,
            max_active_per_account=tiers.max_active_restores_per_account,
        )


def too_many_restores(cap: int, active: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"at most {cap} restores may be queued or running for one account at once "
        f"({active} are): ask again when one is ready",
        reason=Reason.QUOTA_EXCEEDED,
        metadata={"quota": "active_restores", "limit": str(cap), "used": str(active)},
    )


def restore_days(days: int) -> int:
    """The request's days (0: 1); INVALID_ARGUMENT naming ``days`` outside 1-30."""
    if days == 0:
        return MIN_DAYS
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise InvalidArgument.field("days", f"must be {MIN_DAYS} to {MAX_DAYS} (0: {MIN_DAYS})")
    return days


def view_of(record: RestoreRecord, *, now: float) -> RestoreView:
    state = record.state
    # The poller marks it soon; the answer must not wait for that.
    if state == RestoreState.READY and record.expires_at <= now:
        state = RestoreState.EXPIRED
    return RestoreView(
        media_id=record.media_id,
        state=state,
        requested_at=record.requested_at,
        ready_at=record.ready_at,
        expires_at=record.expires_at,
    )


class RestoreHandler:
    def __init__(
        self,
        *,
        downloads: DownloadHandler,
        restores: Restores,
        quarantine: Quarantine,
        objects: ObjectStore,
        notices: DeviceNotices,
        limits: Limiter,
        policy: RestorePolicy,
        stats: MediaStats,
    ) -> None:
        self._limits = limits
        self._downloads = downloads
        self._restores = restores
        self._quarantine = quarantine
        self._objects = objects
        self._notices = notices
        self._policy = policy
        self._stats = stats

    # -- RPCs -----------------------------------------------------------------------------

    async def request(
        self, *, account_id: str, device_id: str, media_id: str, days: int, now: float
    ) -> RestoreView:
        """RestoreMedia: idempotent while a restore is queued, running or ready.

        Outsiders are refused before the rate limit (they spend nothing and
        learn nothing); an account is refused one more queued or running
        restore beyond its cap, the one it already asked for excepted."""
        days = restore_days(days)
        media = await self._downloads.readable_media(account_id=account_id, media_id=media_id)
        await self._limits.take(Take(LimitName.MEDIA_RESTORE_PER_ACCOUNT, account_id), now=now)
        if await self._quarantine.get(media.sha256) is not None:
            raise quarantined()
        info = await self._archived_object(media)
        if info is None:
            return RestoreView(media.media_id, RestoreState.NOT_ARCHIVED)
        current = await self._restores.get(media.media_id)
        ready = current is not None and current.state == RestoreState.READY
        if (
            ready
            and current is not None
            and (current.expires_at <= now or needs_restore(info, now=now))
        ):
            # Its copy is gone: a new restore replaces the record.
            await self._restores.expire(media.media_id, now=now)
            ready = False
        if not ready:
            # A readable copy is answered as it is: nothing new to cap.
            await self._check_cap(account_id, media.media_id)
        record = await self._restores.open(
            RestoreRecord(
                media_id=media.media_id,
                object_key=media.object_key,
                state=RestoreState.QUEUED,
                days=days,
                requested_at=now,
                ready_at=0.0,
                expires_at=0.0,
                # The poller retries a start the store did not take.
                next_poll_at=now + self._policy.poll_seconds,
                requesters=(Requester(account_id, device_id),),
            )
        )
        if record.state == RestoreState.QUEUED:
            try:
                started = await self._start(record, now=now)
            except Unavailable:
                # Queued: the poller starts it once the store answers.
                log.info("media_restore_queued", media_id=media.media_id)
            else:
                if started is None:
                    return RestoreView(media.media_id, RestoreState.NOT_ARCHIVED)
                record = started
        return view_of(record, now=now)

    async def _check_cap(self, account_id: str, media_id: str) -> None:
        """Refuse the account one more active restore beyond its cap. Two
        requests at once may both pass at the cap's edge: the cap bounds
        cost, it is not a lock."""
        cap = self._policy.max_active_per_account
        if await self._restores.asked_by(media_id, account_id):
            return
        active = await self._restores.active_of(account_id, limit=cap)
        if active >= cap:
            self._stats.restore_refusals += 1
            raise too_many_restores(cap, active)

    async def status(self, *, account_id: str, media_id: str, now: float) -> RestoreView:
        """GetRestore: the restore's state, NOT_ARCHIVED, or MEDIA_ARCHIVED when
        the object is archived and nobody asked for a restore."""
        media = await self._downloads.readable_media(account_id=account_id, media_id=media_id)
        record = await self._restores.get(media.media_id)
        if record is not None:
            return view_of(record, now=now)
        info = await self._archived_object(media)
        if info is None:
            return RestoreView(media.media_id, RestoreState.NOT_ARCHIVED)
        if not needs_restore(info, now=now) and info.restored_until is not None:
            # Restored by someone else than svc_media (an operator): say so.
            return RestoreView(media.media_id, RestoreState.READY, expires_at=info.restored_until)
        raise archived()

    async def _archived_object(self, media: MediaRecord) -> ObjectInfo | None:
        """The object's HEAD when it is in an archive class, None when it is not."""
        self._objects.ensure_available()
        info = await self._objects.head(media.object_key)
        if info is None:
            raise access_denied()
        await self._downloads.note_tier(media, info)
        return info if info.storage_class in ARCHIVE_CLASSES else None

    # -- the store's side -----------------------------------------------------------------

    async def _start(self, record: RestoreRecord, *, now: float) -> RestoreRecord | None:
        """Ask the store for a copy; the record as it then stands, or None when
        there is nothing to restore (the record is dropped)."""
        answer = await self._objects.restore(
            record.object_key, days=record.days, tier=self._policy.tier
        )
        if answer in (RestoreStart.NOT_ARCHIVED, RestoreStart.MISSING):
            await self._restores.drop(record.media_id)
            return None
        if answer == RestoreStart.STARTED:
            self._stats.restores_started += 1
        log.info("media_restore_started", media_id=record.media_id, answer=answer.value)
        # A copy that exists already is found at once by the next pass.
        wait = 0.0 if answer == RestoreStart.ALREADY_RESTORED else self._policy.poll_seconds
        await self._restores.started(record.media_id, next_poll_at=now + wait)
        return await self._restores.get(record.media_id) or record

    # -- the poller -------------------------------------------------------------------------

    async def poll(self, *, now: float) -> int:
        """One pass over the due restores; how many it handled."""
        claimed = await self._restores.claim_due(
            now=now, limit=self._policy.batch, until=now + self._policy.poll_seconds
        )
        for record in claimed:
            try:
                await self._advance(record, now=now)
            except Unavailable as exc:
                # Claimed until the next pass: it is retried then.
                log.info("media_restore_deferred", media_id=record.media_id, reason=exc.message)
        self._stats.restore_queue = await self._restores.queue_length()
        return len(claimed)

    async def _advance(self, record: RestoreRecord, *, now: float) -> None:
        if record.state == RestoreState.QUEUED:
            await self._start(record, now=now)
        elif record.state == RestoreState.RESTORING:
            await self._check_store(record, now=now)
        elif record.state == RestoreState.READY:
            await self._ready(record, now=now)

    async def _check_store(self, record: RestoreRecord, *, now: float) -> None:
        info = await self._objects.head(record.object_key)
        if info is None or info.storage_class not in ARCHIVE_CLASSES:
            # Collected, or moved out of the archive: nothing left to restore.
            await self._restores.drop(record.media_id)
            return
        if info.restoring:
            return
        if info.restored_until is None or info.restored_until <= now:
            # The store has no restore of it (lost, or its copy already gone): again.
            await self._restores.requeue(record.media_id, next_poll_at=now)
            return
        ready = await self._restores.ready(
            record.media_id, ready_at=now, expires_at=info.restored_until, next_poll_at=now
        )
        if ready is not None:
            self._stats.restores_ready += 1
            log.info("media_restore_ready", media_id=record.media_id)
            await self._ready(ready, now=now)

    async def _ready(self, record: RestoreRecord, *, now: float) -> None:
        if record.expires_at <= now:
            await self._restores.expire(record.media_id, now=now)
            return
        pending = False
        for requester in record.unnotified():
            try:
                await self._notices.restore_ready(
                    requester, media_id=record.media_id, expires_at=record.expires_at
                )
            except Unavailable:
                pending = True
                continue
            await self._restores.notified(record.media_id, requester)
            self._stats.restore_notices += 1
        # Told everyone: the next look is at the expiry. Else retry next pass.
        next_poll = now + self._policy.poll_seconds if pending else record.expires_at
        await self._restores.settle(record.media_id, next_poll_at=next_poll)


class RestorePoller:
    """Each process's periodic pass over the restores."""

    def __init__(
        self,
        handler: RestoreHandler,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._handler = handler
        self._interval = interval_seconds
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                await self._handler.poll(now=self._clock())
            except Unavailable as exc:
                log.info("media_restore_poll_deferred", reason=exc.message)
            except Exception:
                log.exception("media_restore_poll_failed")
            await asyncio.sleep(self._interval)
