"""The client calls end-to-end encryption makes, as a protocol.

:class:`parley_sdk.Client` provides them; encryption (:mod:`parley_sdk._secure`,
:mod:`parley_sdk._secure_groups`) depends on this protocol rather than on the
client class, since the client is built on top of encryption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from parley.search.v1 import search_pb2
from parley_sdk._key_models import (
    DeviceKey,
    OneTimePreKey,
    PreKeyBundle,
    SenderKeyEnvelope,
    SignedPreKey,
)
from parley_sdk._paging import Pager
from parley_sdk.models import (
    ConversationView,
    Direction,
    Member,
    Message,
    MessageEdited,
    MessageType,
)

__all__ = ["EncryptionCalls"]


class EncryptionCalls(Protocol):
    """The key directory, message, membership and blind-index calls of one
    signed-in device."""

    @property
    def account_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    async def _publish_keys(
        self,
        *,
        identity_key: bytes,
        signed_pre_key: SignedPreKey,
        one_time_pre_keys: Sequence[OneTimePreKey],
    ) -> tuple[int, bool]: ...

    async def pre_key_count(self) -> int: ...

    async def upload_pre_keys(self, pre_keys: Sequence[OneTimePreKey]) -> int: ...

    async def get_device_keys(self, account_ids: Sequence[str]) -> list[DeviceKey]: ...

    async def get_pre_key_bundles(
        self, account_id: str, *, device_ids: Sequence[str] = ()
    ) -> list[PreKeyBundle]: ...

    async def send_sender_keys(
        self, conversation_id: str, envelopes: Sequence[SenderKeyEnvelope]
    ) -> int: ...

    async def _claim_sender_keys_page(
        self, page_size: int = 100
    ) -> tuple[list[SenderKeyEnvelope], bool]: ...

    async def get_conversation(self, conversation_id: str) -> ConversationView: ...

    def list_members(
        self, conversation_id: str, *, page_size: int | None = None
    ) -> Pager[Member]: ...

    async def send_message(
        self,
        conversation_id: str,
        body: bytes,
        *,
        type: MessageType = MessageType.TEXT,
        reply_to_message_id: str = "",
        forwarded: bool = False,
        media_ids: Sequence[str] = (),
        request_id: str | None = None,
    ) -> Message: ...

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        body: bytes,
        *,
        request_id: str | None = None,
    ) -> MessageEdited: ...

    def list_messages(
        self,
        conversation_id: str,
        *,
        direction: Direction = Direction.BACKWARD,
        start_seq: int = 0,
        page_size: int | None = None,
    ) -> Pager[Message]: ...

    async def _search_settings(self) -> search_pb2.SearchSettings: ...

    async def _index_message(
        self, request: search_pb2.IndexMessageRequest
    ) -> search_pb2.IndexMessageResponse: ...

    async def _remove_message(self, conversation_id: str, message_id: str) -> None: ...

    async def _search_blind(
        self, request: search_pb2.SearchRequest
    ) -> search_pb2.SearchResponse: ...
