"""svc_message's answers about media across regions.

A media object lives in its uploader's home region, but the messages naming
it live in their conversation's owner region and its replicas, which need
not include the object's region (a forward into a conversation with nobody
homed there). So who may read an id, and whether any message still names
it, is asked of this region's svc_message first and then of every other
region's: an account's own home region holds a replica (or the owner's
copy) of every conversation it is a member of, so some region answers for
it. An access check lets in only on a region's yes; one a region could not
answer is UNAVAILABLE (retry) rather than a wrong refusal. Counts for the
collector need every region's answer: a region that does not answer leaves
the ids uncounted, never read as zero.

A restore-ready notice is published by this region's svc_message and, for a
requester homed elsewhere, by its home region's too: a device mostly keeps
its stream at home, and the notice is live only (a device connected to a
third region polls GetRestore, as one without a stream does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from svc_media.model import Requester
from svc_media.ports import DeviceNotices, MessagePeer


class RegionalMessages:
    """Implements ports.MessagePeer over this region's and the peers' svc_message."""

    def __init__(self, local: MessagePeer, peers: Callable[[], Mapping[str, MessagePeer]]) -> None:
        self._local = local
        self._peers = peers

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        readable = await self._local.readable(account_id, media_ids)
        missing = [m for m in media_ids if m not in readable]
        peers = self._peers()
        if not missing or not peers:
            return readable
        answers = await asyncio.gather(
            *(peer.readable(account_id, missing) for peer in peers.values()),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for answer in answers:
            if isinstance(answer, BaseException):
                failure = answer
                continue
            readable |= answer & set(missing)
        if failure is not None and not readable >= set(media_ids):
            raise failure
        return readable

    async def references(self, media_ids: Sequence[str]) -> Mapping[str, int]:
        peers = list(self._peers().values())
        answers = await asyncio.gather(
            self._local.references(media_ids), *(peer.references(media_ids) for peer in peers)
        )
        counts = dict.fromkeys(media_ids, 0)
        for answer in answers:
            for media_id in media_ids:
                counts[media_id] += int(answer[media_id])
        return counts


class RegionalNotices:
    """Implements ports.DeviceNotices here and at the requester's home region."""

    def __init__(
        self,
        local: DeviceNotices,
        peers: Callable[[], Mapping[str, DeviceNotices]],
        home_of: Callable[[str], str],
    ) -> None:
        self._local = local
        self._peers = peers
        self._home_of = home_of

    async def restore_ready(
        self, requester: Requester, *, media_id: str, expires_at: float
    ) -> None:
        await self._local.restore_ready(requester, media_id=media_id, expires_at=expires_at)
        home = self._peers().get(self._home_of(requester.account_id))
        if home is not None:
            # Unavailable there: the device is told again on the next pass
            # (here too: at least once, as within a region).
            await home.restore_ready(requester, media_id=media_id, expires_at=expires_at)
