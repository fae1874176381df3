"""End-to-end encryption bound to the client's calls: keys, sending, decrypting, notices.

The crypto core (:mod:`parley_sdk.e2ee`) never touches the network; this
module fetches what it needs (device keys, bundles, members, sender-key
envelopes) and puts its output on the wire (docs/design/e2ee.md). Group
sender keys are in :mod:`parley_sdk._secure_groups`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC

from google.protobuf.message import DecodeError

from parley.e2ee.v1 import e2ee_pb2
from parley.message.v1 import messages_pb2
from parley_sdk._e2ee_models import DecryptedMessage, KeyNoticeEvent, KeyNoticeKind
from parley_sdk._key_models import DeviceKey, OneTimePreKey, PreKeyBundle, SignedPreKey
from parley_sdk._media_models import Attachment
from parley_sdk._search_index import IndexedMessage, SearchIndex
from parley_sdk._secure_calls import EncryptionCalls
from parley_sdk._secure_groups import GroupKeys
from parley_sdk._server_search import ServerSearch
from parley_sdk.e2ee import (
    Crypto,
    DecryptionError,
    DeviceAddress,
    DeviceStore,
    HistoryEntry,
    InvalidBundleError,
    PublicKeys,
    PublicPreKey,
    PublicSignedPreKey,
    RemoteBundle,
)
from parley_sdk.e2ee.content import parse_content, text_content
from parley_sdk.errors import ParleyError, RateLimitedError
from parley_sdk.models import (
    ConversationType,
    Direction,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    MessageType,
    StreamEvent,
    SystemMessageEvent,
)
from parley_sdk.retry import new_request_id

__all__ = [
    "E2EE",
    "PRE_KEY_LOW_WATER",
    "PRE_KEY_TARGET",
    "SIGNED_PRE_KEY_MAX_AGE",
    "SIGNED_PRE_KEY_SINCE",
    "NoRecipientDevicesError",
    "indexed_message",
]

PRE_KEY_LOW_WATER = 20
"""Below this many one-time prekeys on the server, the device uploads more."""
PRE_KEY_TARGET = 100
"""How many one-time prekeys a device keeps on the server after topping up."""

_MAX_BUNDLE_DEVICES = 64
# A send waits out a short bundle rate limit rather than fail; longer ones surface.
_BUNDLE_RETRIES = 3
_MAX_BUNDLE_WAIT = 15.0
_PUBLISHED_IDENTITY = "e2ee.published_identity"
SIGNED_PRE_KEY_SINCE = "e2ee.signed_pre_key_since"
SIGNED_PRE_KEY_MAX_AGE = 7 * 24 * 3600.0
"""Seconds after which connecting replaces the signed prekey (as Signal clients
do every few days), bounding what a stolen signed prekey exposes; the
previous one keeps answering starts already under way."""

log = logging.getLogger(__name__)


class NoRecipientDevicesError(ValueError):
    """No device of the conversation's other members has published keys, so a
    message could be read by nobody; it was not sent."""


def _sent_at(message: messages_pb2.Message) -> float:
    return message.create_time.ToDatetime(tzinfo=UTC).timestamp()


def history_key(message_id: str, body: bytes, *, edited: bool) -> str:
    """Where a message's plaintext is kept: under its id, and an edit's under the
    id and its body (the edited body replaced the original on the server)."""
    if not edited:
        return message_id
    return f"{message_id}#edit-{hashlib.sha256(body).hexdigest()[:32]}"


def indexed_message(message: messages_pb2.Message, text: str) -> IndexedMessage:
    """What the search index keeps of a message this device read."""
    return IndexedMessage(
        conversation_id=message.conversation_id,
        message_id=message.message_id,
        seq=message.seq,
        sender_account_id=message.sender_account_id,
        sender_device_id=message.sender_device_id,
        sent_at=_sent_at(message),
        text=text,
    )


def read_content(content: bytes) -> tuple[str, Attachment | None]:
    """The text of a serialized Content (a file's caption) and the file it
    carries, if any; DecryptionError when it holds neither."""
    parsed = parse_content(content)
    kind = parsed.WhichOneof("kind")
    if kind == "text":
        return parsed.text.text, None
    if kind == "attachment":
        return parsed.attachment.caption, Attachment.from_proto(parsed.attachment)
    raise DecryptionError("the message carries no text")


def remote_bundle(account_id: str, bundle: PreKeyBundle) -> RemoteBundle:
    one_time = bundle.one_time_pre_key
    return RemoteBundle(
        address=DeviceAddress(account_id, bundle.device_id),
        identity_key=bundle.identity_key,
        signed_pre_key=PublicSignedPreKey(
            bundle.signed_pre_key.key_id,
            bundle.signed_pre_key.public_key,
            bundle.signed_pre_key.signature,
        ),
        one_time_pre_key=None
        if one_time is None
        else PublicPreKey(one_time.key_id, one_time.public_key),
    )


class E2EE:
    """One device's end-to-end encryption, driven by the client it belongs to."""

    def __init__(self, client: EncryptionCalls, store: DeviceStore, *, owns_store: bool) -> None:
        self.me = DeviceAddress(client.account_id, client.device_id)
        self.store = store
        self.crypto = Crypto(store, self.me)
        self._client = client
        self._owns_store = owns_store
        self._send_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._decrypt_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._replenish_lock = asyncio.Lock()
        # Direct conversations never change members, and no conversation its type.
        self._kinds: dict[str, tuple[ConversationType, tuple[str, ...]]] = {}
        self.server = ServerSearch(self, client)
        self.groups = GroupKeys(self, client, search_keys=self.server.accept_key)
        self.search = SearchIndex(store)

    def close(self) -> None:
        if self._owns_store:
            self._owns_store = False
            self.store.close()

    # -- own keys -------------------------------------------------------------

    async def ensure_keys(self) -> bool:
        """Publishes this device's keys if the directory lacks them, else tops up
        prekeys; returns whether the server had another identity key for it."""
        crypto = self.crypto
        if not crypto.has_identity():
            return await self._publish(crypto.create_identity(pre_keys=PRE_KEY_TARGET))
        if self.store.get_setting(_PUBLISHED_IDENTITY) != crypto.identity_key().hex():
            # Created but never published (a crash in between): publish it now.
            current = crypto.public_keys()
            fresh = crypto.new_pre_keys(PRE_KEY_TARGET)
            return await self._publish(dataclasses.replace(current, one_time_pre_keys=fresh))
        await self.rotate_signed_pre_key_if_old(now=time.time())
        await self.replenish()
        return False

    async def rotate_signed_pre_key_if_old(self, *, now: float) -> bool:
        """Publishes a new signed prekey when the current one is older than
        SIGNED_PRE_KEY_MAX_AGE; returns whether it did."""
        since = self.store.get_setting(SIGNED_PRE_KEY_SINCE)
        if since is None:
            # A store from before rotation was tracked: count from now.
            self.store.set_setting(SIGNED_PRE_KEY_SINCE, repr(now))
            return False
        if now - float(since) < SIGNED_PRE_KEY_MAX_AGE:
            return False
        self.crypto.rotate_signed_pre_key()
        await self._publish(self.crypto.public_keys())
        self.store.set_setting(SIGNED_PRE_KEY_SINCE, repr(now))
        return True

    async def _publish(self, keys: PublicKeys) -> bool:
        signed = keys.signed_pre_key
        one_time = [OneTimePreKey(k.key_id, k.public_key) for k in keys.one_time_pre_keys]
        _, changed = await self._client._publish_keys(
            identity_key=keys.identity_key,
            signed_pre_key=SignedPreKey(signed.key_id, signed.public_key, signed.signature),
            one_time_pre_keys=one_time,
        )
        self.store.set_setting(_PUBLISHED_IDENTITY, keys.identity_key.hex())
        if self.store.get_setting(SIGNED_PRE_KEY_SINCE) is None:
            self.store.set_setting(SIGNED_PRE_KEY_SINCE, repr(time.time()))
        return changed

    async def replenish(self) -> int:
        """Uploads prekeys up to the target when the server holds fewer than the
        low-water mark; returns how many it holds."""
        async with self._replenish_lock:
            count = await self._client.pre_key_count()
            if count >= PRE_KEY_LOW_WATER:
                return count
            fresh = self.crypto.new_pre_keys(PRE_KEY_TARGET - count)
            return await self._client.upload_pre_keys(
                [OneTimePreKey(k.key_id, k.public_key) for k in fresh]
            )

    # -- whom to encrypt for ------------------------------------------------------

    async def device_keys(self, account_ids: Sequence[str]) -> list[DeviceKey]:
        """The devices of these accounts as the directory lists them; sessions
        with devices it no longer lists (revoked) are dropped."""
        listed = await self._client.get_device_keys(account_ids)
        current = {(d.account_id, d.device_id) for d in listed}
        for account_id in dict.fromkeys(account_ids):
            for device_id in self.crypto.sessions_with(account_id):
                if (account_id, device_id) not in current:
                    self.crypto.forget_device(DeviceAddress(account_id, device_id))
        return listed

    async def sealable(
        self, listed: Sequence[DeviceKey], wanted: Sequence[DeviceAddress]
    ) -> tuple[list[DeviceAddress], dict[DeviceAddress, RemoteBundle]]:
        """Of ``wanted``, those this device can encrypt for now, and the bundles
        to start sessions with those that have none or a new identity key."""
        keys = {DeviceAddress(d.account_id, d.device_id): d.identity_key for d in listed}
        on_record: dict[str, dict[str, bytes]] = {}
        ready: set[DeviceAddress] = set()
        missing: defaultdict[str, list[str]] = defaultdict(list)
        for address in wanted:
            if address.account_id not in on_record:
                on_record[address.account_id] = self.crypto.sessions_with(address.account_id)
            known = on_record[address.account_id].get(address.device_id)
            if known is not None and known == keys.get(address):
                ready.add(address)
            else:
                missing[address.account_id].append(address.device_id)
        bundles: dict[DeviceAddress, RemoteBundle] = {}
        for account_id, device_ids in missing.items():
            for start in range(0, len(device_ids), _MAX_BUNDLE_DEVICES):
                for bundle in await self._bundles(
                    account_id, device_ids[start : start + _MAX_BUNDLE_DEVICES]
                ):
                    converted = remote_bundle(account_id, bundle)
                    bundles[converted.address] = converted
        # A device revoked between the two calls has no bundle: it is skipped.
        return [a for a in wanted if a in ready or a in bundles], bundles

    async def _bundles(self, account_id: str, device_ids: list[str]) -> list[PreKeyBundle]:
        for attempt in range(_BUNDLE_RETRIES + 1):
            try:
                return await self._client.get_pre_key_bundles(account_id, device_ids=device_ids)
            except RateLimitedError as error:
                wait = error.retry_after
                if attempt == _BUNDLE_RETRIES or wait is None or wait > _MAX_BUNDLE_WAIT:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def seal_pairwise(
        self, content: bytes, listed: Sequence[DeviceKey], wanted: Sequence[DeviceAddress]
    ) -> list[tuple[DeviceAddress, bytes]]:
        """``content`` encrypted for each device of ``wanted`` it can be, as
        (device, serialized DeviceCopy)."""
        recipients, bundles = await self.sealable(listed, wanted)
        while True:
            try:
                copies = await self.crypto.encrypt_pairwise(content, recipients, bundles)
            except InvalidBundleError as error:
                if error.address not in recipients:
                    raise
                # One device's broken bundle must not silence the conversation.
                log.warning("skipping a device: %s", error)
                recipients = [r for r in recipients if r != error.address]
                bundles.pop(error.address, None)
                continue
            return list(zip(recipients, copies, strict=True))

    # -- sending ------------------------------------------------------------------

    async def conversation(self, conversation_id: str) -> tuple[ConversationType, tuple[str, ...]]:
        known = self._kinds.get(conversation_id)
        if known is None:
            view = await self._client.get_conversation(conversation_id)
            kind = ConversationType(view.conversation.type)
            known = (kind, tuple(view.conversation.member_account_ids))
            self._kinds[conversation_id] = known
        return known

    async def send_text(
        self, conversation_id: str, text: str, *, reply_to_message_id: str, forwarded: bool
    ) -> DecryptedMessage:
        message = await self.send_content(
            conversation_id,
            text_content(text),
            type=MessageType.TEXT,
            reply_to_message_id=reply_to_message_id,
            forwarded=forwarded,
            request_id=new_request_id(),
        )
        return DecryptedMessage(message, text)

    async def send_content(
        self,
        conversation_id: str,
        content: bytes,
        *,
        type: MessageType,
        reply_to_message_id: str = "",
        forwarded: bool = False,
        media_ids: Sequence[str] = (),
        request_id: str,
    ) -> messages_pb2.Message:
        """Sends a serialized Content encrypted as the conversation's kind wants
        (the body of every message this device sends)."""
        # One send at a time per conversation, so ratchets and sender-key
        # iterations advance in the order the messages are stored.
        async with self._send_locks[conversation_id]:
            body = await self._body(conversation_id, content)
            message = await self._client.send_message(
                conversation_id,
                body,
                type=type,
                reply_to_message_id=reply_to_message_id,
                forwarded=forwarded,
                media_ids=media_ids,
                request_id=request_id,
            )
            # This device holds no copy of its own message: keep the plaintext.
            self.store.remember_plaintext(
                message_id=message.message_id,
                conversation_id=conversation_id,
                sender=self.me,
                content=content,
                sent_at=_sent_at(message),
            )
        try:
            text, _ = read_content(content)
        except DecryptionError:
            return message
        self._index(message, text)
        await self.server.index(message, text)
        return message

    async def edit_text(
        self, conversation_id: str, message_id: str, text: str
    ) -> messages_pb2.MessageEdited:
        content = text_content(text)
        async with self._send_locks[conversation_id]:
            body = await self._body(conversation_id, content)
            edit = await self._client.edit_message(
                conversation_id, message_id, body, request_id=new_request_id()
            )
            self.store.remember_plaintext(
                message_id=history_key(message_id, body, edited=True),
                conversation_id=conversation_id,
                sender=self.me,
                content=content,
                sent_at=edit.edit_time.ToDatetime(tzinfo=UTC).timestamp(),
            )
        # Only a message new to the index takes the edit's time as its place.
        edited = messages_pb2.Message(
            conversation_id=conversation_id,
            message_id=message_id,
            seq=edit.seq,
            sender_account_id=self.me.account_id,
            sender_device_id=self.me.device_id,
            create_time=edit.edit_time,
        )
        self._index(edited, text)
        await self.server.index(edited, text)
        return edit

    async def _body(self, conversation_id: str, content: bytes) -> bytes:
        """A serialized Envelope carrying ``content`` as the conversation's kind wants."""
        kind, members = await self.conversation(conversation_id)
        if kind is ConversationType.GROUP:
            return await self.groups.group_body(conversation_id, content)
        if kind is ConversationType.CHANNEL:
            return e2ee_pb2.Envelope(public=parse_content(content)).SerializeToString()
        return await self._direct_body(members, content)

    async def _direct_body(self, members: Sequence[str], content: bytes) -> bytes:
        accounts = list(dict.fromkeys([*members, self.me.account_id]))
        listed = await self.device_keys(accounts)
        wanted = [
            DeviceAddress(d.account_id, d.device_id)
            for d in listed
            if (d.account_id, d.device_id) != (self.me.account_id, self.me.device_id)
        ]
        sealed = await self.seal_pairwise(content, listed, wanted)
        if not any(address.account_id != self.me.account_id for address, _ in sealed):
            others = [m for m in members if m != self.me.account_id]
            if others:
                raise NoRecipientDevicesError(
                    "no device of the other member has published encryption keys"
                )
        copies = [e2ee_pb2.DeviceCopy.FromString(copy) for _, copy in sealed]
        envelope = e2ee_pb2.Envelope(pairwise=e2ee_pb2.PairwiseMessage(copies=copies))
        return envelope.SerializeToString()

    # -- reading ------------------------------------------------------------------

    async def decrypt(self, message: messages_pb2.Message) -> DecryptedMessage:
        """Never raises for bad input: ``error`` says why there is no text. What it
        reads goes into the search index; a message deleted for everyone leaves it."""
        decrypted = await self.decrypt_unindexed(message)
        if message.deleted:
            self.unindex([message.message_id])
        elif decrypted.text is not None:
            self._index(message, decrypted.text)
        return decrypted

    async def decrypt_unindexed(self, message: messages_pb2.Message) -> DecryptedMessage:
        """:meth:`decrypt` without touching the search index (a backfill indexes
        a page at a time)."""
        if message.type == messages_pb2.MESSAGE_TYPE_SYSTEM or message.deleted:
            return DecryptedMessage(message, None)
        async with self._decrypt_locks[message.conversation_id]:
            try:
                text, attachment = read_content(await self._plaintext(message))
                return DecryptedMessage(message, text, attachment=attachment)
            except DecryptionError as error:
                return DecryptedMessage(message, None, str(error) or "cannot decrypt")
            except ParleyError as error:
                return DecryptedMessage(message, None, f"could not fetch keys: {error}")
            except (DecodeError, ValueError, KeyError) as error:
                log.warning("message %s cannot be read: %r", message.message_id, error)
                return DecryptedMessage(message, None, f"malformed message: {error}")

    async def _plaintext(self, message: messages_pb2.Message) -> bytes:
        key = history_key(message.message_id, message.body, edited=message.edited)
        cached = self.store.recall_plaintext(key)
        sender = DeviceAddress(message.sender_account_id, message.sender_device_id)
        if cached is None and sender == self.me:
            # Our own message may come back on the stream before its send has
            # returned and stored the plaintext (this device holds no copy of it).
            async with self._send_locks[message.conversation_id]:
                cached = self.store.recall_plaintext(key)
        if cached is not None:
            return cached
        if not message.body:
            raise DecryptionError("the message has no body")
        try:
            envelope = e2ee_pb2.Envelope.FromString(message.body)
        except DecodeError:
            raise DecryptionError("not an end-to-end encrypted message") from None
        senders = self._senders(message)
        # Message keys work once: the plaintext is stored with the key's use (one
        # transaction), so it reads again after a restart.
        entry = HistoryEntry(key, message.conversation_id, _sent_at(message))
        kind = envelope.WhichOneof("content")
        if kind == "public":
            return envelope.public.SerializeToString()
        if kind == "pairwise":
            return await self._open_pairwise(senders, envelope.pairwise, entry)
        if kind == "group":
            return await self.groups.open(
                message.conversation_id, senders, envelope.group.SerializeToString(), entry
            )
        raise DecryptionError("not an end-to-end encrypted message")

    def _index(self, message: messages_pb2.Message, text: str) -> None:
        # The index is derived from what the store holds and a backfill repairs
        # it, so a failure here must not fail a send or a read.
        try:
            self.search.index(indexed_message(message, text))
        except sqlite3.Error as error:
            log.warning("could not index message %s: %s", message.message_id, error)

    def unindex(self, message_ids: Sequence[str]) -> None:
        """Takes messages out of the search index; a failure is logged, not raised."""
        try:
            self.search.remove(message_ids)
        except sqlite3.Error as error:
            log.warning("could not take messages out of the index: %s", error)

    def _senders(self, message: messages_pb2.Message) -> list[DeviceAddress]:
        """The devices that may have encrypted the body: the sender's, and for an
        edit (which any device of the account may make) the account's others."""
        sender = DeviceAddress(message.sender_account_id, message.sender_device_id)
        if not message.edited:
            return [sender]
        others = self.crypto.sessions_with(message.sender_account_id)
        return [sender] + [
            DeviceAddress(message.sender_account_id, d) for d in others if d != sender.device_id
        ]

    async def _open_pairwise(
        self,
        senders: Sequence[DeviceAddress],
        pairwise: e2ee_pb2.PairwiseMessage,
        entry: HistoryEntry,
    ) -> bytes:
        for copy in pairwise.copies:
            if (copy.account_id, copy.device_id) == (self.me.account_id, self.me.device_id):
                failure = DecryptionError("no session opens this copy")
                for sender in senders:
                    try:
                        return await self.crypto.decrypt_pairwise(
                            sender, copy.SerializeToString(), remember=entry
                        )
                    except DecryptionError as error:
                        failure = error
                raise failure
        raise DecryptionError("not encrypted for this device")

    async def read_history(
        self, conversation_id: str, *, page_size: int | None
    ) -> AsyncIterator[DecryptedMessage]:
        async for message in self._client.list_messages(
            conversation_id, direction=Direction.BACKWARD, page_size=page_size
        ):
            yield await self.decrypt(message)

    # -- the delivery stream --------------------------------------------------------

    async def prepare(self, event: StreamEvent) -> StreamEvent:
        """Decrypts a message, or acts on a key notice, before the consumer sees it."""
        if isinstance(event, MessageEvent):
            decrypted = await self.decrypt(event.message)
            return dataclasses.replace(
                event,
                text=decrypted.text,
                decryption_error=decrypted.error,
                attachment=decrypted.attachment,
            )
        if isinstance(event, MessageEditedEvent):
            return await self._prepare_edit(event)
        if isinstance(event, MessageDeletedEvent):
            # For everyone, or for this account on another of its devices.
            self.unindex([event.deletion.message_id])
        if isinstance(event, SystemMessageEvent):
            self.groups.on_system_message(event)
            await self.server.on_system_message(event)
        elif isinstance(event, KeyNoticeEvent):
            await self._on_notice(event)
        return event

    async def _prepare_edit(self, event: MessageEditedEvent) -> MessageEditedEvent:
        edit = event.edit
        # The edit does not name the device that made it: decrypt it as part of
        # its message, which names the sender.
        try:
            message = await anext(
                aiter(
                    self._client.list_messages(
                        edit.conversation_id,
                        direction=Direction.FORWARD,
                        start_seq=edit.seq,
                        page_size=1,
                    )
                ),
                None,
            )
        except ParleyError as error:
            return dataclasses.replace(event, decryption_error=f"could not fetch it: {error}")
        if message is None or message.message_id != edit.message_id:
            return dataclasses.replace(event, decryption_error="the message is gone")
        edited = messages_pb2.Message()
        edited.CopyFrom(message)
        edited.body, edited.edited = edit.body, True
        decrypted = await self.decrypt(edited)
        return dataclasses.replace(event, text=decrypted.text, decryption_error=decrypted.error)

    async def _on_notice(self, notice: KeyNoticeEvent) -> None:
        if notice.device_id and notice.device_id != self.me.device_id:
            return
        try:
            if notice.kind is KeyNoticeKind.PRE_KEYS_LOW:
                await self.replenish()
            elif notice.kind is KeyNoticeKind.GROUP_REKEY:
                self.groups.on_departure(
                    notice.conversation_id, notice.account_ids, from_notice=True
                )
            elif notice.kind is KeyNoticeKind.SENDER_KEYS_WAITING:
                await self.groups.claim()
        except ParleyError as error:
            # The stream goes on: prekeys are asked for again on the next stream
            # start, and sender keys are claimed when a message needs them.
            log.warning("could not act on key notice %s: %s", notice.kind.name, error)
