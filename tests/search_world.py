"""What the SDK does for the server blind index, done by hand for the
tests: an epoch key per conversation, tokens = truncated HMAC-SHA256 of a
term, and queries of the deployment's fixed shape (real tokens repeated up
to a group's size, decoy groups of random ids and tokens)."""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.search.v1 import search_pb2 as spb
from parley.search.v1 import search_pb2_grpc as sgrpc
from tests.users import Device, rid

TOKEN_BYTES = 8
# Query shape of the default settings.
GROUPS, TOKENS = 4, 4
PAGES_AT_MOST = 1000


@dataclass(frozen=True)
class Epoch:
    key: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"parley-search-key-id" + self.key).digest()[:16]

    def token(self, term: str) -> bytes:
        return hmac.new(self.key, term.encode(), hashlib.sha256).digest()[:TOKEN_BYTES]

    def tokens(self, terms: Sequence[str]) -> list[bytes]:
        return list(dict.fromkeys(self.token(t) for t in terms))


@dataclass(frozen=True)
class Query:
    conversation_id: str
    epoch: Epoch
    terms: tuple[str, ...]


def decoy_group() -> spb.TokenGroup:
    return spb.TokenGroup(
        conversation_id=str(uuid.uuid4()),
        key_id=os.urandom(16),
        tokens=[os.urandom(TOKEN_BYTES) for _ in range(TOKENS)],
    )


def real_group(query: Query) -> spb.TokenGroup:
    tokens = query.epoch.tokens(query.terms)
    padded = [tokens[i % len(tokens)] for i in range(TOKENS)]
    return spb.TokenGroup(
        conversation_id=query.conversation_id, key_id=query.epoch.key_id, tokens=padded
    )


def request(queries: Sequence[Query], *, page_size: int = 0) -> spb.SearchRequest:
    groups = [real_group(q) for q in queries]
    groups += [decoy_group() for _ in range(GROUPS - len(groups))]
    return spb.SearchRequest(groups=groups, page_size=page_size)


async def index(
    search: sgrpc.SearchServiceStub,
    device: Device,
    conversation_id: str,
    message_id: str,
    epoch: Epoch,
    terms: Sequence[str],
) -> int:
    reply = await search.IndexMessage(
        spb.IndexMessageRequest(
            request_id=rid(),
            conversation_id=conversation_id,
            message_id=message_id,
            key_id=epoch.key_id,
            tokens=epoch.tokens(terms),
        ),
        metadata=device.md,
    )
    return reply.posting_count


async def hits(
    search: sgrpc.SearchServiceStub,
    device: Device,
    queries: Sequence[Query],
    *,
    page_size: int = 0,
) -> list[str]:
    """Every hit's message id, newest first, following page tokens."""
    base = request(queries, page_size=page_size)
    found: list[str] = []
    token = ""
    for _ in range(PAGES_AT_MOST):
        page = spb.SearchRequest()
        page.CopyFrom(base)
        page.page_token = token
        reply = await search.Search(page, metadata=device.md)
        found.extend(h.message_id for h in reply.hits)
        token = reply.next_page_token
        if not token:
            return found
    raise AssertionError("search did not end")


async def set_search(
    messages: mgrpc.MessageServiceStub, device: Device, conversation_id: str, enabled: bool
) -> mpb.ConversationView:
    return await messages.SetServerSearch(
        mpb.SetServerSearchRequest(
            request_id=rid(), conversation_id=conversation_id, enabled=enabled
        ),
        metadata=device.md,
    )


async def send_opaque(
    messages: mgrpc.MessageServiceStub, device: Device, conversation_id: str
) -> mpb.Message:
    """A message whose body is random bytes (ciphertext, as far as the
    server can tell): the terms indexed with it appear nowhere in it."""
    reply = await messages.SendMessage(
        mpb.SendMessageRequest(
            request_id=rid(),
            conversation_id=conversation_id,
            type=mpb.MESSAGE_TYPE_TEXT,
            body=os.urandom(48),
        ),
        metadata=device.md,
    )
    return reply.message
