"""Downloads: a short-lived presigned GET for those who may read the media.

Order of checks: the media must exist and the caller may read it (else
PERMISSION_DENIED, the same for both, so ids cannot be probed); only then the
rate limit, the quarantine and the storage tier, so outsiders learn nothing
about either and spend no budget.
"""

from __future__ import annotations

from parley_core.limits import Limiter, LimitName, Take
from svc_media.domain.access import AccessCheck
from svc_media.domain.policy import MediaPolicy, access_denied, archived, quarantined
from svc_media.model import Grant, MediaRecord, MediaState, MediaStats, ObjectInfo, Tier
from svc_media.ports import MediaDocs, ObjectStore, Quarantine

# Storage classes S3 must restore before a GET works.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


def needs_restore(media: MediaRecord, info: ObjectInfo) -> bool:
    """The tiers hook: whether a GET of this object would fail until restored.

    An object in an archive class is downloadable only while a restored copy
    exists (``x-amz-restore: ongoing-request="false", expiry-date=...``). The
    tiers work keeps ``media.tier`` and the restore records; this reads the
    store's own answer, which is what a GET will meet."""
    if info.storage_class not in ARCHIVE_CLASSES and media.tier != Tier.ARCHIVE:
        return False
    restore = info.restore or ""
    return 'ongoing-request="false"' not in restore


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
    ) -> None:
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

    async def grant(self, *, account_id: str, media_id: str, now: float) -> Grant:
        media = await self.readable_media(account_id=account_id, media_id=media_id)
        await self._limits.take(Take(LimitName.MEDIA_DOWNLOAD_PER_ACCOUNT, account_id), now=now)
        if await self._quarantine.get(media.sha256) is not None:
            raise quarantined()
        self._objects.ensure_available()
        info = await self._objects.head(media.object_key)
        if info is None:
            # The document outlived its object (removed by hand): nothing to give.
            raise access_denied()
        if needs_restore(media, info):
            raise archived()
        get = self._objects.presign_get(
            media.object_key, expires_in=self._policy.get_url_seconds, now=now
        )
        self._stats.downloads_granted += 1
        self._stats.bytes_granted += media.size
        return Grant(media=media, get=get)
