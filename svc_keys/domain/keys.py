"""The key directory: publishing a device's public keys and handing out
prekey bundles (X3DH; the byte contract is in docs/design/e2ee.md).

Every method takes ``now`` (Unix seconds)."""

from __future__ import annotations

from collections.abc import Sequence
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
from svc_keys.model import DeviceKeys, PreKey, PreKeyBundle, SignedPreKey
from svc_keys.storage.accounts import AccountStore
from svc_keys.storage.keys import KeyStore, PreKeyConflict
from svc_keys.storage.ratelimit import BundleRateLimiter

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


class KeysHandler:
    def __init__(
        self,
        keys: KeyStore,
        accounts: AccountStore,
        limiter: BundleRateLimiter,
        *,
        max_pre_keys: int,
    ) -> None:
        self._keys = keys
        self._accounts = accounts
        self._limiter = limiter
        self._max_pre_keys = max_pre_keys

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
    ) -> int:
        """Set the device's keys; the number of one-time prekeys it holds."""
        if not signature_valid(identity_key, signed_pre_key):
            raise InvalidArgument.field(
                "signed_pre_key.signature",
                "not a valid Ed25519 signature by identity_key over 0x05 || public_key",
            )
        await self._keys.set_device_keys(
            DeviceKeys(
                device_id=device_id,
                account_id=account_id,
                identity_key=identity_key,
                signed_pre_key=signed_pre_key,
                updated_at=datetime.fromtimestamp(now, UTC),
            )
        )
        try:
            return await self._add_pre_keys(device_id, pre_keys, field="one_time_pre_keys", now=now)
        finally:
            await self._still_active(device_id)

    async def upload_pre_keys(
        self, *, device_id: str, pre_keys: Sequence[PreKey], now: float
    ) -> int:
        if await self._keys.device_keys(device_id) is None:
            raise FailedPrecondition("publish the device's keys (PublishKeys) before prekeys")
        try:
            return await self._add_pre_keys(device_id, pre_keys, field="pre_keys", now=now)
        finally:
            await self._still_active(device_id)

    async def pre_key_count(self, *, device_id: str) -> int:
        return await self._keys.count_pre_keys(device_id)

    async def bundles(
        self, *, requester_account_id: str, account_id: str, now: float
    ) -> list[PreKeyBundle]:
        wait = await self._limiter.take(requester_account_id, now_ms=int(now * 1000))
        if wait is not None:
            raise ResourceExhausted(
                "too many prekey bundle fetches; retry later",
                reason=Reason.RATE_LIMITED,
                retry_after_seconds=max(wait, 0.001),
            )
        if await self._accounts.account_by_id(account_id) is None:
            raise NotFound("account not found", reason=Reason.ACCOUNT_NOT_FOUND)
        # Only active devices: keys of a device revoked a moment ago may not be
        # deleted yet.
        devices = await self._accounts.list_devices(
            account_id, after_device_id=None, limit=_DEVICES_READ
        )
        published = await self._keys.devices_keys([d.device_id for d in devices])
        bundles = []
        for keys in published:
            if keys.account_id != account_id:
                continue
            bundles.append(
                PreKeyBundle(
                    device_id=keys.device_id,
                    identity_key=keys.identity_key,
                    signed_pre_key=keys.signed_pre_key,
                    pre_key=await self._keys.take_pre_key(keys.device_id),
                )
            )
        return bundles

    async def forget_device(self, device_id: str) -> None:
        await self._keys.delete_device(device_id)
