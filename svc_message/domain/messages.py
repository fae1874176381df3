"""Messages as a member sees them: sending (checks, then the pipeline) and history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from parley_core.errors import InvalidArgument
from svc_message.domain import roles
from svc_message.domain.conversations import ConversationsHandler, visible_window
from svc_message.domain.limits import FeedLimits, send_takes
from svc_message.domain.media import MediaReservations
from svc_message.domain.sending import Committed, Draft, SendPipeline
from svc_message.model import NEWEST, Change, ChangeKind, Message, Page
from svc_message.ports import EventCodec
from svc_message.storage.messages import MessageStore
from svc_message.storage.recent import RecentCache

__all__ = ["NEWEST", "MessagesHandler"]

_UNSET = datetime.fromtimestamp(0, UTC)


class MessagesHandler:
    def __init__(
        self,
        conversations: ConversationsHandler,
        messages: MessageStore,
        recent: RecentCache,
        pipeline: SendPipeline,
        codec: EventCodec,
        limits: FeedLimits,
        media: MediaReservations,
    ) -> None:
        self._limits = limits
        self._media = media
        self._conversations = conversations
        self._messages = messages
        self._recent = recent
        self._pipeline = pipeline
        self._codec = codec

    async def send(
        self,
        *,
        account_id: str,
        device_id: str,
        conversation_id: str,
        request_id: str,
        type: int,
        body: bytes,
        reply_to_message_id: str,
        now: float,
        forwarded: bool = False,
        media_ids: Sequence[str] = (),
    ) -> Committed:
        """``media_ids``: distinct, as validated by the transport."""
        membership = await self._conversations.require_member(conversation_id, account_id)
        roles.require_poster(membership.conversation.type, membership.role)
        if reply_to_message_id:
            original = await self._messages.by_id(reply_to_message_id)
            if (
                original is None
                or original.conversation_id != conversation_id
                or original.seq < membership.joined_seq
            ):
                raise InvalidArgument.field(
                    "reply_to_message_id", "must name a message of this conversation"
                )
        # After every check of the request: bad input stays INVALID_ARGUMENT.
        await self._limits.change(
            *send_takes(
                account_id=account_id,
                device_id=device_id,
                conversation_id=conversation_id,
                conversation_type=membership.conversation.type,
            ),
            conversation_id=conversation_id,
            account_id=account_id,
            request_id=request_id,
            now=now,
        )
        if media_ids:
            # Here, where the send is handled (the conversation's owner, after
            # any forward): one reservation per attempt that gets this far.
            await self._media.reserve(
                account_id=account_id,
                conversation_id=conversation_id,
                media_ids=media_ids,
                request_id=request_id,
            )
        message = Message(
            message_id="",
            conversation_id=conversation_id,
            seq=0,
            sender_account_id=account_id,
            sender_device_id=device_id,
            type=type,
            body=body,
            reply_to_message_id=reply_to_message_id,
            created_at=_UNSET,
            request_id=request_id,
            forwarded=forwarded,
            media_ids=tuple(media_ids),
        )
        template = Change(
            kind=ChangeKind.MESSAGE,
            conversation_id=conversation_id,
            version=0,
            change_id="",
            account_id=account_id,
            created_at=_UNSET,
            message=message,
            request_id=request_id,
        )
        return await self._pipeline.submit(
            Draft(conversation=membership.conversation, template=template)
        )

    async def page(
        self,
        *,
        account_id: str,
        conversation_id: str,
        start_seq: int,
        forward: bool,
        limit: int,
    ) -> Page:
        """History from start_seq (inclusive; 0 = the newest for backward
        reads), within what the caller may see, without what it deleted for
        itself."""
        membership = await self._conversations.require_reader(conversation_id, account_id)
        floor, ceiling = visible_window(membership)
        if not forward and ceiling and (start_seq == 0 or start_seq > ceiling):
            start_seq = ceiling
        if forward and start_seq < floor:
            start_seq = floor
        if (ceiling and forward and start_seq > ceiling) or (not forward and 0 < start_seq < floor):
            return Page(wire=[], next_start=None)
        cached = await self._recent.read(
            conversation_id,
            start_seq=start_seq,
            forward=forward,
            limit=limit,
            account_id=account_id,
        )
        if cached is not None and not cached.filtered:
            seqs = (
                range(cached.lo, cached.hi + 1) if forward else range(cached.hi, cached.lo - 1, -1)
            )
            blobs = [
                blob
                for seq, blob in zip(seqs, cached.blobs, strict=True)
                if seq >= floor and (not ceiling or seq <= ceiling)
            ]
            end = min(cached.last, ceiling) if ceiling else cached.last
            if forward:
                next_start = cached.hi + 1 if cached.hi < end else None
            else:
                next_start = cached.lo - 1 if cached.lo > max(floor, 1) else None
            return Page(wire=blobs, next_start=next_start)

        newest_first = not forward and start_seq == 0
        first = NEWEST if newest_first else start_seq
        items = await self._messages.page(
            conversation_id,
            start_seq=first,
            forward=forward,
            limit=limit + 1,
            floor_seq=floor,
            ceiling_seq=ceiling,
        )
        hiders = {a for m in items for a in m.hidden_for}
        # Encoded once: the same entries fill the cache and make the response.
        entries = [self._codec.history_entry(self._codec.message(m)) for m in items]
        await self._recent.fill(
            conversation_id,
            [(m.seq, m.state_version, entry) for m, entry in zip(items, entries, strict=True)],
            includes_newest=newest_first,
            hiders=hiders,
        )
        next_start = items[limit].seq if len(items) > limit else None
        wire = [
            entry
            for m, entry in zip(items[:limit], entries, strict=False)
            if account_id not in m.hidden_for
        ]
        return Page(wire=wire, next_start=next_start)
