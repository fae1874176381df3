"""Media references, svc_message's side.

A message names the media its encrypted attachment pointers refer to
(``media_ids``); svc_media keeps the objects and, to decide about them, asks
svc_message what only the messages know:

- who may read a media id: an account that may read some message naming it
  (a member of its conversation, the message within the member's history
  window, not deleted for everyone, not deleted by that account for itself);
  the same rule ListMessages applies, so a removed member keeps what it saw
  until its removal and an outsider gets nothing;
- how many messages still name an id, for its garbage collector.

Before a send that names media commits, the ids are reserved at svc_media:
each must be usable by the sender (its own upload, or readable through
another message: a forward), and each one's collection is put off. Deletes
for everyone release them. A send without media never calls svc_media, so
messaging keeps working while media is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence

import structlog

from parley_core.errors import ParleyError, Reason, Unavailable
from svc_message.domain.conversations import ConversationsHandler, Membership, visible_window
from svc_message.model.broadcast import Broadcast
from svc_message.model.media import MediaNotice, MediaReference
from svc_message.ports import EventCodec, MediaReferences, Publisher
from svc_message.storage.messages import MessageStore

log = structlog.get_logger(__name__)

# Messages naming the ids looked at per access check. A media id forwarded
# into more conversations than this is checked against the first ones found:
# beyond them an account may be refused wrongly, never let in wrongly (the
# uploader itself is always let in, by svc_media).
SCAN_LIMIT = 10_000
# Releases waiting for svc_media at once; more are dropped (logged), since
# the garbage collector re-checks every media id periodically anyway.
MAX_PENDING_RELEASES = 256
# How long stopping waits for releases still in flight.
RELEASE_DRAIN_SECONDS = 2.0


def within_window(membership: Membership, seq: int) -> bool:
    """Whether the member may read the history item at ``seq``."""
    floor, ceiling = visible_window(membership)
    return seq >= floor and (not ceiling or seq <= ceiling)


def readable_media(
    account_id: str,
    references: Iterable[MediaReference],
    memberships: Mapping[str, Membership | None],
) -> set[str]:
    """The media ids the account may read through these messages, given its
    memberships in their conversations (absent or None: never a member)."""
    readable: set[str] = set()
    for reference in references:
        membership = memberships.get(reference.conversation_id)
        if membership is None or account_id in reference.hidden_for:
            continue
        if within_window(membership, reference.seq):
            readable.update(reference.media_ids)
    return readable


def distinct(media_ids: Iterable[str]) -> list[str]:
    """The ids once each, in their first order."""
    return list(dict.fromkeys(media_ids))


class MediaAccess:
    """What svc_media asks about the messages naming a media id."""

    def __init__(
        self,
        messages: MessageStore,
        conversations: ConversationsHandler,
        *,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self._messages = messages
        self._conversations = conversations
        self._scan_limit = scan_limit

    async def readable(self, account_id: str, media_ids: Sequence[str]) -> set[str]:
        """The ids the account may read through some message naming them."""
        wanted = set(media_ids)
        readable: set[str] = set()
        if not wanted:
            return readable
        memberships: dict[str, Membership | None] = {}
        batches = self._messages.media_references(list(wanted), limit=self._scan_limit)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                # Only messages that could still add an id are worth a look.
                useful = [r for r in batch if not readable.issuperset(r.media_ids)]
                unknown = {r.conversation_id for r in useful} - memberships.keys()
                if unknown:
                    found = await self._conversations.memberships(account_id, unknown)
                    memberships.update({c: found.get(c) for c in unknown})
                readable |= readable_media(account_id, useful, memberships)
                if readable >= wanted:
                    break
        return readable

    async def counts(self, media_ids: Sequence[str]) -> dict[str, int]:
        """Per id asked, the messages not deleted for everyone naming it."""
        found = await self._messages.media_reference_counts(distinct(media_ids))
        return {media_id: found.get(media_id, 0) for media_id in media_ids}


class MediaReservations:
    """The send and delete paths' calls to svc_media."""

    def __init__(
        self,
        access: MediaAccess,
        references: MediaReferences,
        messages: MessageStore,
        *,
        max_pending_releases: int = MAX_PENDING_RELEASES,
    ) -> None:
        self._access = access
        self._references = references
        self._messages = messages
        self._max_pending = max_pending_releases
        self._releases: set[asyncio.Task[None]] = set()
        self.reserved = 0
        self.refused = 0
        self.release_failures = 0

    async def reserve(
        self,
        *,
        account_id: str,
        conversation_id: str,
        media_ids: Sequence[str],
        request_id: str,
    ) -> None:
        """Reserve the media a send names, before it commits. A retry of a
        send that already committed passes whatever svc_media says now (the
        media may have been quarantined or released since): its answer is
        the message the first attempt stored. Like the rate limits, the
        request id is looked up on refusals only."""
        readable = await self._access.readable(account_id, media_ids)
        try:
            await self._references.reserve(
                account_id=account_id,
                conversation_id=conversation_id,
                media_ids=media_ids,
                readable_media_ids=[m for m in media_ids if m in readable],
            )
        except ParleyError:
            if request_id and (
                await self._messages.by_request(conversation_id, account_id, request_id) is not None
            ):
                return
            self.refused += 1
            raise
        self.reserved += 1

    def release_later(self, media_ids: Sequence[str]) -> None:
        """Tell svc_media, behind the delete's answer, that a message naming
        these ids was deleted for everyone. Best effort: a release that fails
        is logged and dropped, because svc_media's garbage collector checks
        every media id again periodically and counts the references itself
        (CountMediaReferences); a lost release only delays a collection."""
        if not media_ids:
            return
        if len(self._releases) >= self._max_pending:
            self.release_failures += 1
            log.warning("media_release_dropped", media=len(media_ids), reason="too many pending")
            return
        task = asyncio.get_running_loop().create_task(self._release(tuple(media_ids)))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, media_ids: tuple[str, ...]) -> None:
        try:
            await self._references.release(media_ids)
        except Exception as exc:
            self.release_failures += 1
            log.warning("media_release_failed", media=len(media_ids), error=str(exc))

    async def drain(self, timeout: float = RELEASE_DRAIN_SECONDS) -> None:
        """Give releases in flight a moment to finish, then drop the rest."""
        pending = list(self._releases)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


class MediaNotices:
    """Notices from svc_media to one device's live stream."""

    def __init__(self, publisher: Publisher, codec: EventCodec) -> None:
        self._publisher = publisher
        self._codec = codec

    async def notify(self, *, account_id: str, device_id: str, notice: MediaNotice) -> None:
        """Published on the account's channel; only that device's stream shows
        it. A device without a live stream misses it (it polls instead)."""
        envelope = self._codec.media_notice(device_id, notice)
        taken = await self._publisher.publish(
            [Broadcast(self._codec.encode(envelope), accounts=(account_id,))]
        )
        if not taken:
            raise Unavailable(
                "the delivery bus did not take the notice; retry",
                reason=Reason.DEPENDENCY_UNAVAILABLE,
                retry_after_seconds=1.0,
            )
