"""The in-memory server of tests/sdk_search_fakes.py with what the blind index
calls: roles and join points, system messages for membership and search
changes, and a SearchService that keeps postings and answers AND queries.

The fake SearchService checks the exact request shape like the real one but
does not filter by membership: a test then shows that the keys alone keep a
removed member from matching later messages.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from parley.message.v1 import messages_pb2 as pb
from parley.search.v1 import search_pb2
from parley_sdk import DeviceStore, Role
from parley_sdk._secure import E2EE
from tests.sdk_search_fakes import SearchFakeClient, SearchFakeServer

SETTINGS = search_pb2.SearchSettings(
    groups_per_query=4,
    tokens_per_group=4,
    min_token_bytes=4,
    max_token_bytes=32,
    max_tokens_per_message=256,
)


class BlindFakeServer(SearchFakeServer):
    def __init__(self, settings: search_pb2.SearchSettings = SETTINGS) -> None:
        super().__init__()
        self.settings = settings
        self.server_search: dict[str, bool] = defaultdict(bool)
        self.roles: dict[tuple[str, str], int] = {}
        self.joined: dict[tuple[str, str], int] = {}
        # message id -> (conversation, key id, tokens)
        self.postings: dict[str, tuple[str, bytes, frozenset[bytes]]] = {}
        self.index_calls: list[search_pb2.IndexMessageRequest] = []
        self.search_calls: list[search_pb2.SearchRequest] = []
        self.responses: list[search_pb2.SearchResponse] = []

    def group(self, owner: str, members: Sequence[str]) -> str:
        conversation_id = self.conversation(pb.CONVERSATION_TYPE_GROUP, [owner, *members])
        self.roles[(conversation_id, owner)] = int(Role.OWNER)
        self.system(conversation_id, pb.SystemEvent.ACTION_CREATED, owner, list(members))
        for account in [owner, *members]:
            self.joined[(conversation_id, account)] = 1
        return conversation_id

    def system(
        self, conversation_id: str, action: int, actor: str, targets: Sequence[str], **extra: Any
    ) -> pb.Message:
        log = self.messages[conversation_id]
        message = pb.Message(
            message_id=str(uuid.uuid4()),
            conversation_id=conversation_id,
            seq=len(log) + 1,
            sender_account_id=actor,
            type=pb.MESSAGE_TYPE_SYSTEM,
            system=pb.SystemEvent(
                action=action,  # type: ignore[arg-type]
                actor_account_id=actor,
                target_account_ids=list(targets),
                **extra,
            ),
        )
        message.create_time.FromSeconds(next(self._seconds))
        log.append(message)
        return message

    def set_server_search(self, conversation_id: str, actor: str, enabled: bool) -> int:
        self.server_search[conversation_id] = enabled
        if not enabled:
            for message_id, (cid, _, _) in list(self.postings.items()):
                if cid == conversation_id:
                    del self.postings[message_id]
        event = self.system(
            conversation_id,
            pb.SystemEvent.ACTION_SEARCH_CHANGED,
            actor,
            [],
            server_search=enabled,
        )
        return event.seq

    def add_member(self, conversation_id: str, actor: str, account: str) -> int:
        self.conversations[conversation_id][1].append(account)
        event = self.system(conversation_id, pb.SystemEvent.ACTION_MEMBERS_ADDED, actor, [account])
        self.joined[(conversation_id, account)] = event.seq
        return event.seq

    def remove_member(self, conversation_id: str, actor: str, account: str) -> int:
        self.conversations[conversation_id][1].remove(account)
        action = pb.SystemEvent.ACTION_MEMBER_REMOVED
        if actor == account:
            action = pb.SystemEvent.ACTION_MEMBER_LEFT
        return self.system(conversation_id, action, actor, [account]).seq

    def sent_at(self, message_id: str) -> tuple[int, str, str, int]:
        for conversation_id, log in self.messages.items():
            for message in log:
                if message.message_id == message_id:
                    return message.create_time.seconds, message_id, conversation_id, message.seq
        raise KeyError(message_id)

    def search(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        settings = self.settings
        if len(request.groups) != settings.groups_per_query or any(
            len(g.tokens) != settings.tokens_per_group or len(g.key_id) != 16
            for g in request.groups
        ):
            raise ValueError("request of another shape")
        hits = []
        for index, group in enumerate(request.groups):
            wanted = set(group.tokens)
            for message_id, (cid, key_id, tokens) in self.postings.items():
                if (cid, key_id) == (group.conversation_id, group.key_id) and wanted <= tokens:
                    hits.append((*self.sent_at(message_id), index))
        hits.sort(key=lambda h: (h[0], h[1]), reverse=True)
        bound = hashlib.sha256(b"".join(g.SerializeToString() for g in request.groups)).hexdigest()[
            :12
        ]
        start = 0
        if request.page_token:
            token_bound, _, offset = request.page_token.partition(":")
            if token_bound != bound:
                raise ValueError("page token of another query")
            start = int(offset)
        size = request.page_size or 20
        page = hits[start : start + size]
        response = search_pb2.SearchResponse(
            next_page_token=f"{bound}:{start + size}" if start + size < len(hits) else ""
        )
        for seconds, message_id, cid, seq, index in page:
            hit = response.hits.add(
                group_index=index, conversation_id=cid, message_id=message_id, seq=seq
            )
            hit.send_time.FromSeconds(seconds)
        return response


class BlindFakeClient(SearchFakeClient):
    server: BlindFakeServer

    def _view(self, conversation_id: str) -> pb.ConversationView:
        view = super()._view(conversation_id)
        view.conversation.server_search = self.server.server_search[conversation_id]
        return view

    async def list_members(
        self, conversation_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[pb.Member]:
        self._log("list_members", conversation_id)
        for account_id in self.server.conversations[conversation_id][1]:
            yield pb.Member(
                account_id=account_id,
                role=self.server.roles.get((conversation_id, account_id), int(Role.MEMBER)),  # type: ignore[arg-type]
                joined_seq=self.server.joined.get((conversation_id, account_id), 1),
            )

    async def _search_settings(self) -> search_pb2.SearchSettings:
        return self.server.settings

    async def _index_message(
        self, request: search_pb2.IndexMessageRequest
    ) -> search_pb2.IndexMessageResponse:
        self._log("index_message", request)
        server = self.server
        if not server.server_search[request.conversation_id]:
            raise AssertionError("indexed while server search is off")
        server.index_calls.append(request)
        server.postings[request.message_id] = (
            request.conversation_id,
            request.key_id,
            frozenset(request.tokens),
        )
        return search_pb2.IndexMessageResponse(posting_count=len(request.tokens))

    async def _remove_message(self, conversation_id: str, message_id: str) -> None:
        self._log("remove_message", message_id)
        self.server.postings.pop(message_id, None)

    async def _search_blind(self, request: search_pb2.SearchRequest) -> search_pb2.SearchResponse:
        copy = search_pb2.SearchRequest()
        copy.CopyFrom(request)
        self.server.search_calls.append(copy)
        response = self.server.search(request)
        self.server.responses.append(response)
        return response


async def blind_device(
    server: BlindFakeServer, account_id: str, device_id: str, store: Any = ":memory:"
) -> E2EE:
    """An encrypted device with published keys on the fake server."""
    client: Any = BlindFakeClient(server, account_id, device_id)
    e2ee = E2EE(client, DeviceStore.open(store), owns_store=True)
    await e2ee.ensure_keys()
    return e2ee
