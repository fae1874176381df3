"""Downloads: a short-lived presigned GET for those who may read the media.

Order of checks: the media must exist and the caller may read it (else
PERMISSION_DENIED, the same for both, so ids cannot be probed); only then the
rate limit, the quarantine and the storage tier, so outsiders learn nothing
about either and spend no budget.

The media document and the quarantine entry are read side by side (the
media id is the ciphertext hash the quarantine is keyed by); the object is
HEADed only when the bucket's rules may have archived it by now
(``ArchiveHorizon``): a download of anything younger is one indexed read, a
rate-limit call and a URL signed in memory. Such a download of an object
removed by hand gets a URL that answers 404, as a URL handed out just before
the removal would. An uploader's decision is kept for a short time
(``DownloadDecisions``): its repeated download reads nothing at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from parley_core.limits import Limiter, LimitName, Take
from svc_media.domain.access import AccessCheck
from svc_media.domain.decisions import DownloadDecisions
from svc_media.domain.policy import MediaPolicy, access_denied, archived, quarantined
from svc_media.domain.tiers import ArchiveHorizon
from svc_media.model import (
    Grant,
    MediaRecord,
    MediaState,
    MediaStats,
    ObjectInfo,
    Tier,
    sha256_of_media_id,
)
from svc_media.ports import MediaDocs, ObjectStore, Quarantine

# Storage classes S3 must restore before a GET works.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# Classes a GET reads at once but that bill retrieval: the infrequent tier.
INFREQUENT_CLASSES = frozenset({"STANDARD_IA", "ONEZONE_IA", "GLACIER_IR", "INTELLIGENT_TIERING"})


def tier_of(storage_class: str) -> Tier:
    if storage_class in ARCHIVE_CLASSES:
        return Tier.ARCHIVE
    if storage_class in INFREQUENT_CLASSES:
        return Tier.INFREQUENT
    return Tier.STANDARD


def needs_restore(info: ObjectInfo, *, now: float) -> bool:
    """Whether a GET of this object fails until it is restored: it is in an
    archive class and no restored copy is readable now (none was made, one
    is still being made, or its expiry has passed; S3 removes an expired
    copy some time after its expiry, and a download started then could fail
    half-way)."""
    if info.storage_class not in ARCHIVE_CLASSES:
        return False
    return info.restoring or info.restored_until is None or info.restored_until <= now


class DownloadHandler:
    def __init__(
        self,
        *,
        media: MediaDocs,
        quarantine: Quarantine,
        objects: ObjectStore,
        access: AccessCheck,
        limits: Limiter,
        policy: MediaPolicy,
        stats: MediaStats,
        horizon: ArchiveHorizon | None = None,
        decisions: DownloadDecisions | None = None,
    ) -> None:
        self._horizon = horizon or ArchiveHorizon()
        self._decisions = decisions or DownloadDecisions(ttl=0)
        self._media = media
        self._quarantine = quarantine
        self._objects = objects
        self._access = access
        self._limits = limits
        self._policy = policy
        self._stats = stats

    async def readable_media(self, *, account_id: str, media_id: str) -> MediaRecord:
        """The media if the caller may read it; PERMISSION_DENIED otherwise."""
        media = await self._media.get(media_id)
        if media is None or media.state != MediaState.READY:
            raise access_denied()
        if not await self._access.may_read(account_id, media):
            raise access_denied()
        return media

    async def _decide(self, account_id: str, media_id: str, *, now: float) -> MediaRecord:
        """The media after the access, rate and quarantine checks."""
        media, banned = await asyncio.gather(
            self._media.get(media_id), self._quarantine.get(sha256_of_media_id(media_id))
        )
        if media is None or media.state != MediaState.READY:
            raise access_denied()
        if not await self._access.may_read(account_id, media):
            raise access_denied()
        await self._limits.take(Take(LimitName.MEDIA_DOWNLOAD_PER_ACCOUNT, account_id), now=now)
        if banned is not None:
            raise quarantined()
        return media

    async def note_tier(self, media: MediaRecord, info: ObjectInfo) -> MediaRecord:
        """The media with the tier the store reports, recorded when it moved."""
        tier = tier_of(info.storage_class)
        if tier == media.tier:
            return media
        await self._media.set_tier(media.media_id, tier)
        return replace(media, tier=tier)

    async def _head(self, key: str) -> ObjectInfo | None:
        self._objects.ensure_available()
        return await self._objects.head(key)

    async def grant(self, *, account_id: str, media_id: str, now: float) -> Grant:
        media = self._decisions.get(account_id, media_id, now=now)
        kept = media is not None
        if media is None:
            media = await self._decide(account_id, media_id, now=now)
        else:
            await self._limits.take(Take(LimitName.MEDIA_DOWNLOAD_PER_ACCOUNT, account_id), now=now)
        self._objects.ensure_available()
        if self._horizon.may_be_archived(created_at=media.created_at, now=now):
            info = await self._head(media.object_key)
            if info is None:
                # The document outlived its object (removed by hand): nothing to give.
                raise access_denied()
            media = await self.note_tier(media, info)
            if needs_restore(info, now=now):
                raise archived()
        get = self._objects.presign_get(
            media.object_key, expires_in=self._policy.get_url_seconds, now=now
        )
        if not kept:
            # Only a download granted in full is kept (not one the store's
            # outage or an archive class refused).
            self._decisions.keep(account_id, media, now=now)
        self._stats.downloads_granted += 1
        self._stats.bytes_granted += media.size
        return Grant(media=media, get=get)
