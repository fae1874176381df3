"""Sender-key distribution: envelopes sealed by one device for each device of
a group, stored until the recipient claims them (docs/design/e2ee.md,
"Groups: sender keys"). How each envelope is stored and handed out exactly
once is in ``svc_keys.storage.sender_keys``.

Every method takes ``now`` (Unix seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from parley_core.errors import AlreadyExists, FailedPrecondition, Reason, ResourceExhausted
from parley_core.limits import Limiter, LimitName, Take
from svc_keys.model import NewEnvelope, SenderKeyEnvelope
from svc_keys.storage.accounts import AccountStore
from svc_keys.storage.keys import KeyStore
from svc_keys.storage.notices import KeyNoticePublisher
from svc_keys.storage.sender_keys import SenderKeyStore

# Devices named in a refusal's message: enough to act on, short enough for
# the status details.
_NAMED = 20


def unreachable_recipients(
    envelopes: Sequence[NewEnvelope], *, active: dict[str, str], published: set[str]
) -> list[str]:
    """The recipient devices nobody could open an envelope on: not an active
    device of the account named with it, or without published keys."""
    return [
        e.recipient_device_id
        for e in envelopes
        if active.get(e.recipient_device_id) != e.recipient_account_id
        or e.recipient_device_id not in published
    ]


def over_cap(envelopes: Sequence[NewEnvelope], *, waiting: dict[str, int], cap: int) -> list[str]:
    """Recipient devices that would hold more than ``cap`` unclaimed envelopes."""
    return [
        e.recipient_device_id for e in envelopes if waiting.get(e.recipient_device_id, 0) >= cap
    ]


def _named(device_ids: Sequence[str]) -> str:
    shown = ", ".join(device_ids[:_NAMED])
    more = len(device_ids) - _NAMED
    return shown + (f" and {more} more" if more > 0 else "")


class SenderKeysHandler:
    def __init__(
        self,
        store: SenderKeyStore,
        keys: KeyStore,
        accounts: AccountStore,
        notices: KeyNoticePublisher,
        *,
        limiter: Limiter,
        max_waiting_per_device: int,
    ) -> None:
        self._limiter = limiter
        self._store = store
        self._keys = keys
        self._accounts = accounts
        self._notices = notices
        self._cap = max_waiting_per_device

    async def send(
        self,
        *,
        sender_account_id: str,
        sender_device_id: str,
        request_id: str,
        conversation_id: str,
        envelopes: Sequence[NewEnvelope],
        now: float,
    ) -> int:
        """Store one envelope per recipient device; how many were stored.

        A retry of a request that was stored answers from its record without
        checking or storing again: its recipients may have claimed, been
        revoked or filled up meanwhile, and the first answer still holds."""
        previous = await self._store.stored_request(sender_device_id, request_id)
        if previous is not None:
            if previous.conversation_id != conversation_id:
                raise AlreadyExists("this request_id was already used for another conversation")
            # The first attempt may have stopped before its notices went out.
            await self._notify(conversation_id, envelopes)
            return previous.stored
        # After the replay check: a retry of a stored request is never refused.
        await self._limiter.take(
            Take(LimitName.SENDER_KEYS_PER_DEVICE, sender_account_id, key=sender_device_id),
            now=now,
        )
        device_ids = [e.recipient_device_id for e in envelopes]
        active, published, waiting = await asyncio.gather(
            self._accounts.active_device_accounts(device_ids),
            self._keys.devices_keys(device_ids),
            self._store.waiting_counts(device_ids),
        )
        unreachable = unreachable_recipients(
            envelopes, active=active, published={k.device_id for k in published}
        )
        if unreachable:
            raise FailedPrecondition(
                "no active device with published keys on the account named with it: "
                + _named(unreachable),
                metadata={"devices": ",".join(unreachable[:_NAMED])},
            )
        full = over_cap(envelopes, waiting=waiting, cap=self._cap)
        if full:
            raise ResourceExhausted(
                f"a device holds at most {self._cap} unclaimed sender-key envelopes; "
                f"these hold that many: {_named(full)}",
                reason=Reason.TOO_MANY_ENVELOPES,
            )
        await self._store.store(
            request_id=request_id,
            conversation_id=conversation_id,
            sender_account_id=sender_account_id,
            sender_device_id=sender_device_id,
            envelopes=envelopes,
            now=datetime.fromtimestamp(now, UTC),
        )
        await self._notify(conversation_id, envelopes)
        return len(envelopes)

    async def _notify(self, conversation_id: str, envelopes: Sequence[NewEnvelope]) -> None:
        await self._notices.sender_keys_waiting(
            conversation_id=conversation_id,
            recipients=[(e.recipient_account_id, e.recipient_device_id) for e in envelopes],
        )

    async def claim(
        self, *, device_id: str, page_size: int
    ) -> tuple[list[SenderKeyEnvelope], bool]:
        return await self._store.claim(device_id, limit=page_size)
