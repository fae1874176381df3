"""The limit matrix's cases for the server blind index
(tests/chaos/test_limit_matrix.py): SetServerSearch, IndexMessage,
RemoveMessage and Search, each called with fresh valid requests until its
limit refuses it. One message is indexed and removed again and again (each
call a new request), so the set-up spends no send budget beyond one send."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from typing import Any

from parley.message.v1 import messages_pb2 as mpb
from parley.search.v1 import search_pb2 as spb
from tests.chaos.limit_cases import Case, group_admin
from tests.chaos.limit_lab import Lab, Probe, own
from tests.helpers import Metadata
from tests.search_world import Epoch, Query, request
from tests.users import Device, rid


async def set_server_search(lab: Lab) -> Probe:
    # Alternating values: every call is a change, so every call spends.
    values = itertools.cycle((True, False))

    def change(group: str, member: Device, md: Metadata) -> Awaitable[Any]:
        return lab.messages.SetServerSearch(
            mpb.SetServerSearchRequest(
                request_id=rid(), conversation_id=group, enabled=next(values)
            ),
            metadata=md,
        )

    return await group_admin(lab, change)


async def searchable(lab: Lab) -> tuple[Device, str, str]:
    """An account, its direct conversation with server search on, and a
    message it sent there."""
    sender, peer = await lab.accounts_(2)
    conversation = await lab.direct(sender, peer)
    await lab.messages.SetServerSearch(
        mpb.SetServerSearchRequest(request_id=rid(), conversation_id=conversation, enabled=True),
        metadata=peer.md,
    )
    return sender, conversation, (await lab.send(sender, conversation)).message_id


async def index_message(lab: Lab) -> Probe:
    sender, conversation, message_id = await searchable(lab)
    epoch = Epoch()

    def request_(key_id: bytes) -> spb.IndexMessageRequest:
        return spb.IndexMessageRequest(
            request_id=rid(),
            conversation_id=conversation,
            message_id=message_id,
            key_id=key_id,
            tokens=epoch.tokens(["limited"]),
        )

    async def call(md: Metadata | None) -> Any:
        return await lab.search.IndexMessage(request_(epoch.key_id), metadata=own(sender, md))

    async def invalid(md: Metadata | None) -> Any:
        return await lab.search.IndexMessage(request_(b"short"), metadata=own(sender, md))

    return Probe(sender, call, invalid=invalid)


async def remove_message(lab: Lab) -> Probe:
    sender, conversation, message_id = await searchable(lab)

    async def call(md: Metadata | None) -> Any:
        return await lab.search.RemoveMessage(
            spb.RemoveMessageRequest(conversation_id=conversation, message_id=message_id),
            metadata=own(sender, md),
        )

    async def invalid(md: Metadata | None) -> Any:
        return await lab.search.RemoveMessage(
            spb.RemoveMessageRequest(conversation_id=conversation, message_id="no id"),
            metadata=own(sender, md),
        )

    return Probe(sender, call, invalid=invalid)


async def search(lab: Lab) -> Probe:
    sender, conversation, _ = await searchable(lab)
    query = [Query(conversation, Epoch(), ("limited",))]

    async def call(md: Metadata | None) -> Any:
        return await lab.search.Search(request(query), metadata=own(sender, md))

    async def invalid(md: Metadata | None) -> Any:
        return await lab.search.Search(request(query, page_size=-1), metadata=own(sender, md))

    return Probe(sender, call, invalid=invalid)


SEARCH_CASES: dict[tuple[str, str], Case] = {
    ("group_admin_per_account", "SetServerSearch"): set_server_search,
    ("search_index_per_account", "IndexMessage"): index_message,
    ("search_index_per_account", "RemoveMessage"): remove_message,
    ("search_query_per_account", "Search"): search,
}
