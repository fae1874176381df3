"""References from messages (svc_message calls these with the service credential).

Reserve comes before a send that names media commits: each media must be
ready, not quarantined, and the sender's own upload or readable through a
message already (a forward). It bumps the media's touch counter and moves its
next garbage-collection check a grace period ahead, so the media cannot be
collected between this call and the send's commit: a collection that counted
references before the send committed finds the counter changed and backs off;
one that already marked the media collecting makes this call fail, and the
client uploads again.

svc_message's ``readable_media_ids`` come from the conversation's owner
region, which may not hold the message that lets the sender read an id (with
regions, that message may live only where the sender and the object are):
an id it left out is asked of ``messages`` (every region's svc_message)
before it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from svc_media.domain.policy import MediaPolicy, media_not_found, quarantined
from svc_media.model import MediaState, MediaStats
from svc_media.ports import MediaDocs, MessagePeer, Quarantine


class ReferenceHandler:
    def __init__(
        self,
        *,
        media: MediaDocs,
        quarantine: Quarantine,
        policy: MediaPolicy,
        stats: MediaStats,
        messages: MessagePeer | None = None,
    ) -> None:
        self._messages = messages
        self._media = media
        self._quarantine = quarantine
        self._policy = policy
        self._stats = stats

    async def reserve(
        self,
        *,
        account_id: str,
        media_ids: Sequence[str],
        readable_media_ids: Sequence[str],
        now: float,
    ) -> None:
        records = await self._media.get_many(media_ids)
        readable = set(readable_media_ids)
        for media_id in media_ids:
            record = records.get(media_id)
            if record is None or record.state != MediaState.READY:
                raise media_not_found(media_id)
        unproven = [
            m for m in media_ids if account_id not in records[m].uploaders and m not in readable
        ]
        if unproven and self._messages is not None:
            readable |= await self._messages.readable(account_id, unproven)
        for media_id in unproven:
            if media_id not in readable:
                raise media_not_found(media_id)
        banned = await self._quarantine.any_of([records[m].sha256 for m in media_ids])
        if banned:
            raise quarantined()
        grace = self._policy.grace_seconds
        for media_id in media_ids:
            if not await self._media.reserve(media_id, check_at=now + grace, backoff=grace):
                raise media_not_found(media_id)
        self._stats.reserves += 1
        self._stats.reserved_ids += len(media_ids)

    async def release(self, *, media_ids: Sequence[str], now: float) -> None:
        grace = self._policy.grace_seconds
        await self._media.release(media_ids, check_at=now + grace, backoff=grace)
        self._stats.releases += len(media_ids)
