"""Group sender keys on the wire: who gets this device's key, and taking others' keys.

Each device encrypts group messages under its own sender key (one epoch at a
time). Before a send, member devices that lack the current epoch get it
sealed pairwise through SendSenderKeys. When members leave, the device starts
a new epoch, so departed members cannot read what follows. Received keys are
claimed from the server and kept only when their sender is a member. The same
envelopes carry conversations' search keys (the server blind index,
:mod:`parley_sdk._server_search`), also kept only from members.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk._key_models import DeviceKey, SenderKeyEnvelope
from parley_sdk._secure_calls import EncryptionCalls
from parley_sdk.e2ee import (
    Crypto,
    DecryptionError,
    DeviceAddress,
    DeviceStore,
    HistoryEntry,
    MissingSenderKeyError,
)
from parley_sdk.e2ee.content import parse_content, sender_key_content
from parley_sdk.errors import ParleyError
from parley_sdk.models import SystemAction, SystemMessageEvent

__all__ = ["MEMBERS_CACHE_SECONDS", "GroupKeys", "PairwiseSealer"]

MEMBERS_CACHE_SECONDS = 30.0
"""How long a group's member list is reused without asking the server again.
Membership system messages and re-key notices drop it sooner."""

_CLAIM_PAGE = 100

log = logging.getLogger(__name__)


def _members_key(conversation_id: str) -> str:
    return f"e2ee.group_members.{conversation_id}"


def _redistribute_key(conversation_id: str) -> str:
    return f"e2ee.redistribute.{conversation_id}"


class PairwiseSealer(Protocol):
    """The device's pairwise encryption (:class:`parley_sdk._secure.E2EE`), which
    hands its sender keys to other devices."""

    me: DeviceAddress
    store: DeviceStore
    crypto: Crypto

    async def device_keys(self, account_ids: Sequence[str]) -> list[DeviceKey]: ...

    async def seal_pairwise(
        self, content: bytes, listed: Sequence[DeviceKey], wanted: Sequence[DeviceAddress]
    ) -> list[tuple[DeviceAddress, bytes]]: ...


class GroupKeys:
    """Sender keys of one device across its groups."""

    def __init__(
        self,
        owner: PairwiseSealer,
        client: EncryptionCalls,
        *,
        search_keys: Callable[[DeviceAddress, e2ee_pb2.SearchKey], bool] | None = None,
    ) -> None:
        self._owner = owner
        self._client = client
        # Where a conversation's search key (a kind of envelope) is kept.
        self._search_keys = search_keys
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._claim_lock = asyncio.Lock()

    # -- members ------------------------------------------------------------------

    async def members(self, conversation_id: str, *, refresh: bool = False) -> frozenset[str]:
        """The group's member accounts. Departures found on the way (missed while
        no stream was open) start a new sender key first."""
        cached = self._cache.get(conversation_id)
        if cached and not refresh and time.monotonic() - cached[0] < MEMBERS_CACHE_SECONDS:
            return cached[1]
        members = self._client.list_members(conversation_id)
        current = frozenset([m.account_id async for m in members])
        known = self._known(conversation_id)
        if known is not None and known - current:
            self._owner.crypto.rotate_sender_key(conversation_id)
        self._persist(conversation_id, current)
        self._cache[conversation_id] = (time.monotonic(), current)
        return current

    def forget_members(self, conversation_id: str) -> None:
        """Drops the cached member list: the next use asks the server."""
        self._cache.pop(conversation_id, None)

    def _known(self, conversation_id: str) -> frozenset[str] | None:
        """The members as of this device's last look, across restarts."""
        saved = self._owner.store.get_setting(_members_key(conversation_id))
        return None if saved is None else frozenset(json.loads(saved))

    def _persist(self, conversation_id: str, members: Iterable[str]) -> None:
        self._owner.store.set_setting(_members_key(conversation_id), json.dumps(sorted(members)))

    def on_departure(
        self, conversation_id: str, departed: Iterable[str], *, from_notice: bool
    ) -> None:
        """Members left: start a new sender key, once per departure (the notice
        and the system message both report it, and both replay after a restart)."""
        self._cache.pop(conversation_id, None)
        gone = set(departed)
        known = self._known(conversation_id)
        if known is None:
            # This device never sent there, so no key of it is out; a new epoch is free.
            if from_notice:
                self._owner.crypto.rotate_sender_key(conversation_id)
            return
        if gone & known:
            self._owner.crypto.rotate_sender_key(conversation_id)
            self._persist(conversation_id, known - gone)

    def on_system_message(self, event: SystemMessageEvent) -> None:
        action = event.action
        conversation_id = event.conversation_id
        if action is SystemAction.MEMBER_REMOVED:
            self.on_departure(conversation_id, event.target_account_ids, from_notice=False)
        elif action is SystemAction.MEMBER_LEFT:
            self.on_departure(conversation_id, [event.actor_account_id], from_notice=False)
        elif action in (SystemAction.MEMBERS_ADDED, SystemAction.CREATED, SystemAction.SUBSCRIBED):
            self.forget_members(conversation_id)
        elif action is SystemAction.IDENTITY_CHANGED:
            device = DeviceAddress(event.actor_account_id, event.device_id)
            if device != self._owner.me and self._known(conversation_id) is not None:
                # The re-installed device lost our sender key with its old data.
                self._mark_redistribute(conversation_id, [device])

    def _redistribute(self, conversation_id: str) -> set[DeviceAddress]:
        saved = self._owner.store.get_setting(_redistribute_key(conversation_id))
        return {DeviceAddress(a, d) for a, d in json.loads(saved or "[]")}

    def _mark_redistribute(self, conversation_id: str, devices: Iterable[DeviceAddress]) -> None:
        pending = self._redistribute(conversation_id) | set(devices)
        self._owner.store.set_setting(
            _redistribute_key(conversation_id),
            json.dumps(sorted([d.account_id, d.device_id] for d in pending)),
        )

    # -- sending ------------------------------------------------------------------

    async def group_body(self, conversation_id: str, content: bytes) -> bytes:
        """A serialized Envelope with ``content`` under this device's sender key,
        after giving the key to member devices that lack it."""
        owner, crypto, me = self._owner, self._owner.crypto, self._owner.me
        members = await self.members(conversation_id)
        listed = await owner.device_keys(sorted(members))
        devices = [
            DeviceAddress(d.account_id, d.device_id)
            for d in listed
            if (d.account_id, d.device_id) != (me.account_id, me.device_id)
        ]
        # A device with a new identity key (re-installed) lost the key we gave it.
        changed = []
        for account_id in members:
            on_record = crypto.sessions_with(account_id)
            for device in listed:
                known = on_record.get(device.device_id)
                if device.account_id == account_id and known not in (None, device.identity_key):
                    changed.append(DeviceAddress(account_id, device.device_id))
        again = self._redistribute(conversation_id) & set(devices)
        pending = list(
            dict.fromkeys([*crypto.undistributed(conversation_id, devices), *changed, *again])
        )
        epoch, distribution = crypto.own_sender_key(conversation_id)
        if pending:
            sealed = await owner.seal_pairwise(sender_key_content(distribution), listed, pending)
            if sealed:
                await self._client.send_sender_keys(
                    conversation_id,
                    [SenderKeyEnvelope(a.account_id, a.device_id, copy) for a, copy in sealed],
                )
                crypto.mark_distributed(
                    conversation_id, [address for address, _ in sealed], epoch=epoch
                )
            if again:
                self._owner.store.set_setting(_redistribute_key(conversation_id), "[]")
        if crypto.own_sender_key(conversation_id)[0] != epoch:
            # A re-key notice rotated the key while it was being given out:
            # give out the new one (to the remaining members only) instead.
            return await self.group_body(conversation_id, content)
        message = crypto.encrypt_group(conversation_id, content)
        envelope = e2ee_pb2.Envelope(group=e2ee_pb2.GroupMessage.FromString(message))
        return envelope.SerializeToString()

    # -- receiving ------------------------------------------------------------------

    async def open(
        self,
        conversation_id: str,
        senders: Sequence[DeviceAddress],
        message: bytes,
        entry: HistoryEntry,
    ) -> bytes:
        """The Content of a group message from one of ``senders`` (most likely
        first), claiming sender keys if it needs one."""
        try:
            return self._open(conversation_id, senders, message, entry)
        except MissingSenderKeyError:
            await self.claim()
            return self._open(conversation_id, senders, message, entry)

    def _open(
        self,
        conversation_id: str,
        senders: Sequence[DeviceAddress],
        message: bytes,
        entry: HistoryEntry,
    ) -> bytes:
        missing: MissingSenderKeyError | None = None
        failure: DecryptionError = DecryptionError("no sender key opens this message")
        for sender in senders:
            try:
                return self._owner.crypto.decrypt_group(
                    conversation_id, sender, message, remember=entry
                )
            except MissingSenderKeyError as error:
                missing = missing or error
            except DecryptionError as error:
                failure = error
        raise missing or failure

    async def claim(self) -> int:
        """Claims every sender-key envelope waiting for this device and keeps the
        keys of group members; returns how many were kept."""
        async with self._claim_lock:
            accepted = 0
            while True:
                page, more = await self._client._claim_sender_keys_page(_CLAIM_PAGE)
                for envelope in page:
                    accepted += await self._accept(envelope)
                if not more or not page:
                    return accepted

    async def _accept(self, envelope: SenderKeyEnvelope) -> bool:
        sender = DeviceAddress(envelope.sender_account_id, envelope.sender_device_id)
        try:
            content = parse_content(
                await self._owner.crypto.decrypt_pairwise(sender, envelope.ciphertext)
            )
        except (DecryptionError, ValueError) as error:
            log.warning("dropped a sender-key envelope from %s: %s", sender, error)
            return False
        kind = content.WhichOneof("kind")
        distribution = content.sender_key
        # A search key (server blind index) travels the same way as a sender key.
        named = content.search_key.conversation_id if kind == "search_key" else None
        if kind == "sender_key":
            named = distribution.conversation_id
        if named != envelope.conversation_id:
            log.warning("dropped a sender-key envelope from %s: not a key for its group", sender)
            return False
        try:
            members = await self.members(envelope.conversation_id)
            if sender.account_id not in members:
                # Perhaps added since the list was cached.
                members = await self.members(envelope.conversation_id, refresh=True)
        except ParleyError as error:
            log.warning("dropped a sender key for %s: %s", envelope.conversation_id, error)
            return False
        if sender.account_id not in members:
            log.warning("dropped a sender key from non-member %s", sender)
            return False
        if kind == "search_key":
            if self._search_keys is None:
                return False
            return self._search_keys(sender, content.search_key)
        self._owner.crypto.accept_sender_key(sender, distribution.SerializeToString())
        return True
