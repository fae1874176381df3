"""A blind index hit made into a result, or dropped: the decrypted text must match.

Tokens are short (docs/design/search.md, "Token length"), so another word
may share one; the hit names a message, and only its text decides. The text
comes from this device's own index when it holds the message (every message
it sent, read or saw edited is there, newest text), else the message is
fetched and decrypted (which indexes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from parley.message.v1 import messages_pb2
from parley_sdk._blind_query import text_matches
from parley_sdk._e2ee_models import DecryptedMessage
from parley_sdk._paging import Pager
from parley_sdk._search_index import SearchIndex, SearchResult
from parley_sdk.models import Direction
from parley_sdk.search_text import Query, highlight_spans, snippet

__all__ = ["Hit", "HitReader", "MessageLister", "verified_result"]


@dataclass(frozen=True, slots=True)
class Hit:
    """A message the server named, newest first by (sent_us, message_id)."""

    sent_us: int
    message_id: str
    conversation_id: str
    seq: int


class HitReader(Protocol):
    search: SearchIndex

    async def decrypt(self, message: messages_pb2.Message) -> DecryptedMessage: ...


class MessageLister(Protocol):
    def list_messages(
        self,
        conversation_id: str,
        *,
        direction: Direction = Direction.BACKWARD,
        start_seq: int = 0,
        page_size: int | None = None,
    ) -> Pager[messages_pb2.Message]: ...


async def _fetched_text(
    hit: Hit, reader: HitReader, lister: MessageLister
) -> tuple[str, str, str] | None:
    """(text, sender account, sender device) of the hit's message, decrypted now."""
    pager = lister.list_messages(
        hit.conversation_id, direction=Direction.FORWARD, start_seq=hit.seq, page_size=1
    )
    message = await anext(aiter(pager), None)
    if message is None or message.message_id != hit.message_id or message.deleted:
        return None
    decrypted = await reader.decrypt(message)
    if decrypted.text is None:
        return None
    return decrypted.text, message.sender_account_id, message.sender_device_id


async def verified_result(
    hit: Hit,
    query: Query,
    reader: HitReader,
    lister: MessageLister,
    *,
    marks: tuple[str, str],
) -> SearchResult | None:
    """The hit as a result when its message's text matches ``query``; None for
    a false positive, a message of another conversation, or one this device
    cannot read."""
    stored = reader.search.document(hit.message_id)
    if stored is not None and stored.conversation_id == hit.conversation_id:
        text, account, device = stored.text, stored.sender_account_id, stored.sender_device_id
    else:
        fetched = await _fetched_text(hit, reader, lister)
        if fetched is None:
            return None
        text, account, device = fetched
    if not text_matches(text, query):
        return None
    spans = highlight_spans(text, query)
    return SearchResult(
        conversation_id=hit.conversation_id,
        message_id=hit.message_id,
        seq=hit.seq,
        sender_account_id=account,
        sender_device_id=device,
        sent_at=datetime.fromtimestamp(hit.sent_us / 1_000_000, UTC),
        text=text,
        snippet=snippet(text, spans, marks=marks),
        highlights=tuple(spans),
    )
