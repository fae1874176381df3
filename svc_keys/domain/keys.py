"""The key directory: publishing a device's public keys and handing out
prekey bundles (X3DH; the byte contract is in docs/design/e2ee.md).

Every method takes ``now`` (Unix seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from parley_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    Unauthenticated,
)
from parley_core.limits import Limiter, LimitName, Take
from parley_core.storage.key_notices import PRE_KEY_LOW_WATER, IdentityChanges, PreKeyLows
from svc_keys.model import (
    DeviceIdentity,
    DeviceKeys,
    PreKey,
    PreKeyBundle,
    PreKeyConflict,
    SignedPreKey,
)
from svc_keys.storage.accounts import AccountStore
from svc_keys.storage.keys import KeyStore
from svc_keys.storage.notices import KeyNoticePublisher
from svc_keys.storage.sender_keys import SenderKeyStore

# Curve25519 keys are signed in the 33-byte encoding with this type prefix.
CURVE25519_PREFIX = b"\x05"
# Devices per account are capped far below this; it only bounds one read.
_DEVICES_READ = 64


def signature_valid(identity_key: bytes, signed_pre_key: SignedPreKey) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(identity_key).verify(
            signed_pre_key.signature, CURVE25519_PREFIX + signed_pre_key.public_key
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


@dataclass(frozen=True, slots=True)
class Published:
    pre_key_count: int
    identity_changed: bool


class KeysHandler:
    def __init__(
        self,
        keys: KeyStore,
        accounts: AccountStore,
        limiter: Limiter,
        *,
        pre_key_lows: PreKeyLows,
        identity_changes: IdentityChanges,
        notices: KeyNoticePublisher,
        sender_keys: SenderKeyStore,
        max_pre_keys: int,
    ) -> None:
        self._keys = keys
        self._accounts = accounts
        self._limiter = limiter
        self._lows = pre_key_lows
        self._identity_changes = identity_changes
        self._notices = notices
        self._sender_keys = sender_keys
        self._max_pre_keys = max_pre_keys
        # Bundles handed out, by whether a one-time prekey was left to put in
        # (otherwise the session starts from the signed prekey alone).
        self.bundles_with_pre_key = 0
        self.bundles_signed_only = 0

    @staticmethod
    def _upload(account_id: str, device_id: str) -> Take:
        return Take(LimitName.KEY_UPLOAD_PER_DEVICE, account_id, key=device_id)

    async def _add_pre_keys(
        self, device_id: str, pre_keys: Sequence[PreKey], *, field: str, now: float
    ) -> int:
        if pre_keys:
            held = await self._keys.count_pre_keys(device_id)
            # Re-sent keys (a retry) do not count against the cap.
            already = await self._keys.existing_pre_key_ids(device_id, [k.key_id for k in pre_keys])
            new = [k for k in pre_keys if k.key_id not in already]
            if held + len(new) > self._max_pre_keys:
                raise ResourceExhausted(
                    f"a device may hold at most {self._max_pre_keys} one-time prekeys; "
                    f"it holds {held}, so at most {max(0, self._max_pre_keys - held)} more fit",
                    reason=Reason.TOO_MANY_PRE_KEYS,
                )
            try:
                await self._keys.add_pre_keys(
                    device_id, pre_keys, now=datetime.fromtimestamp(now, UTC)
                )
            except PreKeyConflict as exc:
                raise InvalidArgument.field(
                    field, f"key ids already uploaded with a different key: {exc.key_ids}"
                ) from None
        return await self._keys.count_pre_keys(device_id)

    async def _still_active(self, device_id: str) -> None:
        """Called after writing keys. RevokeDevice marks the device revoked
        before deleting its keys, so a write racing with it is seen by one of
        the two: either the deletion finds the keys or this finds the mark."""
        device = await self._accounts.device_by_id(device_id)
        if device is None or device.revoked_at is not None:
            await self._keys.delete_device(device_id)
            raise Unauthenticated("this device was signed out", reason=Reason.TOKEN_REVOKED)

    async def publish_keys(
        self,
        *,
        account_id: str,
        device_id: str,
        identity_key: bytes,
        signed_pre_key: SignedPreKey,
        pre_keys: Sequence[PreKey],
        now: float,
    ) -> Published:
        """Set the device's keys; the one-time prekeys it holds, and whether
        this replaced another identity key (then the prekeys and sender-key
        envelopes of the old identity are deleted).

        The change is recorded (for svc_message to announce) before the
        answer, at least once: the device document carries a pending mark from
        the replacing write until the record is in, so a publish that stopped
        in between is finished by its retry, which otherwise sees its own key
        and records nothing. A retry racing its still-running first attempt
        may record the change twice."""
        if not signature_valid(identity_key, signed_pre_key):
            raise InvalidArgument.field(
                "signed_pre_key.signature",
                "not a valid Ed25519 signature by identity_key over 0x05 || public_key",
            )
        await self._limiter.take(self._upload(account_id, device_id), now=now)
        previous = await self._keys.device_keys(device_id)
        changed = previous is not None and (
            previous.identity_key != identity_key or previous.identity_change_pending
        )
        await self._keys.set_device_keys(
            DeviceKeys(
                device_id=device_id,
                account_id=account_id,
                identity_key=identity_key,
                signed_pre_key=signed_pre_key,
                updated_at=_at(now),
                identity_change_pending=changed,
            )
        )
        try:
            if changed:
                # What the old install left is useless to the new one: its
                # one-time prekeys would start sessions nobody can finish (and
                # their ids collide with the new install's), and envelopes
                # sealed for it cannot be opened. Done before the record, so a
                # retry after a crash (the pending mark is still set) redoes it.
                await self._keys.delete_pre_keys(device_id)
                await self._sender_keys.delete_for_device(device_id)
                await self._identity_changes.record(
                    account_id=account_id, device_id=device_id, now=_at(now)
                )
                await self._keys.identity_change_recorded(device_id, identity_key)
            count = await self._add_pre_keys(
                device_id, pre_keys, field="one_time_pre_keys", now=now
            )
        finally:
            await self._still_active(device_id)
        await self._lows.record(
            account_id=account_id, device_id=device_id, count=count, now=_at(now)
        )
        return Published(pre_key_count=count, identity_changed=changed)

    async def upload_pre_keys(
        self, *, account_id: str, device_id: str, pre_keys: Sequence[PreKey], now: float
    ) -> int:
        if await self._keys.device_keys(device_id) is None:
            raise FailedPrecondition("publish the device's keys (PublishKeys) before prekeys")
        await self._limiter.take(self._upload(account_id, device_id), now=now)
        try:
            count = await self._add_pre_keys(device_id, pre_keys, field="pre_keys", now=now)
        finally:
            await self._still_active(device_id)
        await self._lows.record(
            account_id=account_id, device_id=device_id, count=count, now=_at(now)
        )
        return count

    async def pre_key_count(self, *, device_id: str) -> int:
        return await self._keys.count_pre_keys(device_id)

    async def bundles(
        self,
        *,
        requester_account_id: str,
        account_id: str,
        device_ids: Sequence[str] = (),
        now: float,
    ) -> list[PreKeyBundle]:
        """One bundle per active device with keys (only ``device_ids`` when
        given), each consuming one one-time prekey if any is left."""
        # Both buckets or neither: a refused fetch spends nothing.
        await self._limiter.take(
            Take(LimitName.BUNDLE_FETCH_PER_TARGET, requester_account_id, key=account_id),
            Take(LimitName.BUNDLE_FETCH_PER_REQUESTER, requester_account_id),
            now=now,
        )
        if await self._accounts.account_by_id(account_id) is None:
            raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
        # Only active devices: keys of a device revoked a moment ago may not be
        # deleted yet.
        devices = await self._accounts.list_devices(
            account_id, after_device_id=None, limit=_DEVICES_READ
        )
        wanted = [d.device_id for d in devices]
        if device_ids:
            named = set(device_ids)
            wanted = [d for d in wanted if d in named]
        if not wanted:
            return []
        published = await self._keys.devices_keys(wanted)
        bundles = []
        for keys in published:
            if keys.account_id != account_id:
                continue
            pre_key = await self._keys.take_pre_key(keys.device_id)
            if pre_key is not None:
                self.bundles_with_pre_key += 1
                await self._after_pre_key_taken(account_id, keys.device_id, now=now)
            else:
                self.bundles_signed_only += 1
            bundles.append(
                PreKeyBundle(
                    device_id=keys.device_id,
                    identity_key=keys.identity_key,
                    signed_pre_key=keys.signed_pre_key,
                    pre_key=pre_key,
                )
            )
        return bundles

    async def _after_pre_key_taken(self, account_id: str, device_id: str, *, now: float) -> None:
        """Below the low-water mark: remember it for streams that open later
        and tell the streams open now (best effort; the record makes good a
        lost notice)."""
        # Counting stops at the mark: that is all the comparison needs.
        count = await self._keys.count_pre_keys(device_id, up_to=PRE_KEY_LOW_WATER)
        if count >= PRE_KEY_LOW_WATER:
            return
        await self._lows.record(
            account_id=account_id, device_id=device_id, count=count, now=_at(now)
        )
        await self._notices.pre_keys_low(account_id=account_id, device_id=device_id, count=count)

    async def device_keys(self, *, account_ids: Sequence[str]) -> list[DeviceIdentity]:
        """Identity keys of the active devices of the accounts that published
        keys: grouped by account in the order asked, devices by id."""
        active, published = await asyncio.gather(
            self._accounts.active_devices_of(account_ids), self._keys.accounts_keys(account_ids)
        )
        order = {account_id: i for i, account_id in enumerate(account_ids)}
        listed = [
            DeviceIdentity(
                account_id=k.account_id, device_id=k.device_id, identity_key=k.identity_key
            )
            for k in published
            if k.device_id in active and k.account_id in order
        ]
        listed.sort(key=lambda d: (order[d.account_id], d.device_id))
        return listed

    async def forget_device(self, device_id: str) -> None:
        await self._keys.delete_device(device_id)
        await self._lows.forget(device_id)
        await self._sender_keys.delete_for_device(device_id)
