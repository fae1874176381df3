"""An in-memory stand-in for the key directory and message log, behind the client
methods the SDK's encryption layer calls, so E2EE flows run without servers."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    DeviceKey,
    DeviceStore,
    Direction,
    MessageType,
    OneTimePreKey,
    PreKeyBundle,
    SenderKeyEnvelope,
    SignedPreKey,
)
from parley_sdk._secure import E2EE


@dataclass
class PublishedDevice:
    identity_key: bytes
    signed_pre_key: SignedPreKey
    one_time: list[OneTimePreKey] = field(default_factory=list)


class FakeServer:
    def __init__(self) -> None:
        self.devices: dict[str, dict[str, PublishedDevice]] = defaultdict(dict)
        self.conversations: dict[str, tuple[int, list[str]]] = {}
        self.messages: dict[str, list[pb.Message]] = defaultdict(list)
        self.envelopes: dict[tuple[str, str], list[SenderKeyEnvelope]] = defaultdict(list)
        self.calls: list[tuple[str, str, Any]] = []
        self.sends: dict[str, pb.Message] = {}
        self._seconds = itertools.count(1_700_000_000)

    def conversation(self, kind: int, members: Sequence[str]) -> str:
        conversation_id = str(uuid.uuid4())
        self.conversations[conversation_id] = (kind, list(members))
        return conversation_id

    def calls_to(self, name: str, device: str | None = None) -> list[Any]:
        return [args for n, d, args in self.calls if n == name and device in (None, d)]


class FakeClient:
    """The slice of :class:`parley_sdk.Client` that the encryption layer uses."""

    def __init__(self, server: FakeServer, account_id: str, device_id: str) -> None:
        self.server = server
        self.account_id = account_id
        self.device_id = device_id

    def _log(self, name: str, args: Any) -> None:
        self.server.calls.append((name, self.device_id, args))

    async def _publish_keys(
        self,
        *,
        identity_key: bytes,
        signed_pre_key: SignedPreKey,
        one_time_pre_keys: Sequence[OneTimePreKey],
    ) -> tuple[int, bool]:
        self._log("publish", identity_key)
        devices = self.server.devices[self.account_id]
        old = devices.get(self.device_id)
        changed = old is not None and old.identity_key != identity_key
        kept = old.one_time if old is not None and not changed else []
        devices[self.device_id] = PublishedDevice(
            identity_key, signed_pre_key, kept + list(one_time_pre_keys)
        )
        return len(devices[self.device_id].one_time), changed

    async def pre_key_count(self) -> int:
        return len(self.server.devices[self.account_id][self.device_id].one_time)

    async def upload_pre_keys(self, pre_keys: Sequence[OneTimePreKey]) -> int:
        self._log("upload", len(pre_keys))
        held = self.server.devices[self.account_id][self.device_id].one_time
        held += pre_keys
        return len(held)

    async def get_device_keys(self, account_ids: Sequence[str]) -> list[DeviceKey]:
        return [
            DeviceKey(account_id, device_id, device.identity_key)
            for account_id in dict.fromkeys(account_ids)
            for device_id, device in sorted(self.server.devices.get(account_id, {}).items())
        ]

    async def get_pre_key_bundles(
        self, account_id: str, *, device_ids: Sequence[str] = ()
    ) -> list[PreKeyBundle]:
        self._log("bundles", (account_id, tuple(device_ids)))
        bundles = []
        for device_id, device in sorted(self.server.devices.get(account_id, {}).items()):
            if device_ids and device_id not in device_ids:
                continue
            one_time = device.one_time.pop(0) if device.one_time else None
            bundles.append(
                PreKeyBundle(
                    device_id, device.identity_key, device.signed_pre_key, one_time, not one_time
                )
            )
        return bundles

    async def send_sender_keys(
        self, conversation_id: str, envelopes: Sequence[SenderKeyEnvelope]
    ) -> int:
        self._log(
            "send_sender_keys", [(e.recipient_account_id, e.recipient_device_id) for e in envelopes]
        )
        for envelope in envelopes:
            self.server.envelopes[
                (envelope.recipient_account_id, envelope.recipient_device_id)
            ].append(
                SenderKeyEnvelope(
                    envelope.recipient_account_id,
                    envelope.recipient_device_id,
                    envelope.ciphertext,
                    conversation_id=conversation_id,
                    sender_account_id=self.account_id,
                    sender_device_id=self.device_id,
                    envelope_id=str(uuid.uuid4()),
                )
            )
        return len(envelopes)

    async def _claim_sender_keys_page(
        self, page_size: int = 100
    ) -> tuple[list[SenderKeyEnvelope], bool]:
        waiting = self.server.envelopes[(self.account_id, self.device_id)]
        page, waiting[:] = waiting[:page_size], waiting[page_size:]
        return page, bool(waiting)

    async def get_conversation(self, conversation_id: str) -> pb.ConversationView:
        kind, members = self.server.conversations[conversation_id]
        return pb.ConversationView(
            conversation=pb.Conversation(
                conversation_id=conversation_id,
                type=kind,  # type: ignore[arg-type]
                member_account_ids=members,
            )
        )

    async def list_members(self, conversation_id: str) -> AsyncIterator[pb.Member]:
        self._log("list_members", conversation_id)
        for account_id in self.server.conversations[conversation_id][1]:
            yield pb.Member(account_id=account_id)

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
    ) -> pb.Message:
        log = self.server.messages[conversation_id]
        if request_id is not None and request_id in self.server.sends:
            return self.server.sends[request_id]  # AIP-155: a retry gets the first answer
        message = pb.Message(
            message_id=str(uuid.uuid4()),
            conversation_id=conversation_id,
            seq=len(log) + 1,
            sender_account_id=self.account_id,
            sender_device_id=self.device_id,
            type=int(type),  # type: ignore[arg-type]
            body=body,
            reply_to_message_id=reply_to_message_id,
            forwarded=forwarded,
            media_ids=list(dict.fromkeys(media_ids)),
        )
        message.create_time.FromSeconds(next(self.server._seconds))
        log.append(message)
        if request_id is not None:
            self.server.sends[request_id] = message
        return message

    async def edit_message(
        self, conversation_id: str, message_id: str, body: bytes, *, request_id: str | None = None
    ) -> pb.MessageEdited:
        [message] = [m for m in self.server.messages[conversation_id] if m.message_id == message_id]
        message.body, message.edited = body, True
        message.edit_time.FromSeconds(next(self.server._seconds))
        edit = pb.MessageEdited(
            conversation_id=conversation_id, message_id=message_id, seq=message.seq, body=body
        )
        edit.edit_time.CopyFrom(message.edit_time)
        return edit

    async def list_messages(
        self,
        conversation_id: str,
        *,
        direction: Direction = Direction.BACKWARD,
        start_seq: int = 0,
        page_size: int | None = None,
    ) -> AsyncIterator[pb.Message]:
        log = list(self.server.messages[conversation_id])
        if direction is Direction.FORWARD:
            chosen = [m for m in log if m.seq >= (start_seq or 1)]
        else:
            chosen = [m for m in reversed(log) if not start_seq or m.seq <= start_seq]
        for message in chosen:
            copy = pb.Message()
            copy.CopyFrom(message)
            yield copy


def device(server: FakeServer, account_id: str, device_id: str, store: Any = ":memory:") -> E2EE:
    """An encrypted device on the fake server (keys not yet published)."""
    client: Any = FakeClient(server, account_id, device_id)
    return E2EE(client, DeviceStore.open(store), owns_store=True)
