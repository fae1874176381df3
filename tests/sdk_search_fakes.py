"""The in-memory message log of tests/sdk_e2ee_fakes.py, with what a search
backfill also calls: the inbox (with each conversation's last seq), deletes
for everyone (tombstones) and for one account (left out of its history)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from parley.message.v1 import messages_pb2 as pb
from parley_sdk import ArchiveFilter, DeviceStore, Direction
from parley_sdk._secure import E2EE
from tests.sdk_e2ee_fakes import FakeClient, FakeServer


class SearchFakeServer(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.hidden: defaultdict[str, set[str]] = defaultdict(set)
        self.pages_served = 0

    def delete_for_everyone(self, conversation_id: str, message_id: str) -> pb.Message:
        [message] = [m for m in self.messages[conversation_id] if m.message_id == message_id]
        message.body, message.deleted = b"", True
        return message

    def delete_for(self, account_id: str, message_id: str) -> None:
        self.hidden[account_id].add(message_id)


class SearchFakeClient(FakeClient):
    server: SearchFakeServer

    def _view(self, conversation_id: str) -> pb.ConversationView:
        kind, members = self.server.conversations[conversation_id]
        log = self.server.messages[conversation_id]
        return pb.ConversationView(
            conversation=pb.Conversation(
                conversation_id=conversation_id,
                type=kind,  # type: ignore[arg-type]
                member_account_ids=members,
                last_seq=log[-1].seq if log else 0,
            )
        )

    async def get_conversation(self, conversation_id: str) -> pb.ConversationView:
        return self._view(conversation_id)

    async def list_conversations(
        self, *, archive_filter: ArchiveFilter = ArchiveFilter.ACTIVE, page_size: int | None = None
    ) -> AsyncIterator[pb.ConversationView]:
        for conversation_id, (_, members) in list(self.server.conversations.items()):
            if self.account_id in members:
                yield self._view(conversation_id)

    async def list_messages(
        self,
        conversation_id: str,
        *,
        direction: Direction = Direction.BACKWARD,
        start_seq: int = 0,
        page_size: int | None = None,
    ) -> AsyncIterator[pb.Message]:
        hidden = self.server.hidden[self.account_id]
        served = 0
        async for message in super().list_messages(
            conversation_id, direction=direction, start_seq=start_seq, page_size=page_size
        ):
            if message.message_id in hidden:
                continue
            if served % (page_size or 50) == 0:
                self.server.pages_served += 1
            served += 1
            yield message


def search_device(
    server: SearchFakeServer, account_id: str, device_id: str, store: Any = ":memory:"
) -> E2EE:
    """An encrypted device on the fake server (keys not yet published)."""
    client: Any = SearchFakeClient(server, account_id, device_id)
    return E2EE(client, DeviceStore.open(store), owns_store=True)


async def online(
    server: SearchFakeServer, account_id: str, device_id: str, store: Any = ":memory:"
) -> E2EE:
    e2ee = search_device(server, account_id, device_id, store)
    await e2ee.ensure_keys()
    return e2ee
