"""Pure parts of the key directory: the signed-prekey contract and the
bundle-fetch limits (per target and per requester, both or neither)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley_core.errors import NotFound, ResourceExhausted, Unauthenticated
from parley_core.limits import InProcessBuckets, Limiter, LimitName, Rate
from svc_keys.domain.keys import KeysHandler, signature_valid
from svc_keys.model import Device, SignedPreKey


def _raw(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def test_signature_contract_is_ed25519_over_prefixed_key() -> None:
    identity = Ed25519PrivateKey.generate()
    identity_pub = _raw(identity.public_key())
    spk = _raw(X25519PrivateKey.generate().public_key())
    good = SignedPreKey(1, spk, identity.sign(b"\x05" + spk))
    assert signature_valid(identity_pub, good)
    assert not signature_valid(identity_pub, SignedPreKey(1, spk, identity.sign(spk)))
    other = _raw(Ed25519PrivateKey.generate().public_key())
    assert not signature_valid(other, good)
    assert not signature_valid(identity_pub[:31], good)
    assert not signature_valid(identity_pub, SignedPreKey(1, spk, good.signature[:63]))


def limiter(per_target: Rate, per_requester: Rate) -> Limiter:
    rates = {name: Rate(1000, 1000) for name in LimitName}
    rates[LimitName.BUNDLE_FETCH_PER_TARGET] = per_target
    rates[LimitName.BUNDLE_FETCH_PER_REQUESTER] = per_requester
    return Limiter(InProcessBuckets(), rates, names=list(LimitName))


class _NoAccount:
    async def account_by_id(self, account_id: str) -> None:
        return None


async def test_one_requester_is_limited_per_target_and_overall() -> None:
    """Draining one user is held to the tight per-target rate, while fetches
    across many targets (starting a big group) use the requester's own bucket;
    a refused fetch takes no token from either."""
    handler = KeysHandler(
        None,  # type: ignore[arg-type]
        _NoAccount(),  # type: ignore[arg-type]
        limiter(Rate(2, 60), Rate(5, 60)),
        pre_key_lows=None,  # type: ignore[arg-type]
        identity_changes=None,  # type: ignore[arg-type]
        notices=None,  # type: ignore[arg-type]
        sender_keys=None,  # type: ignore[arg-type]
        max_pre_keys=1000,
    )

    async def fetch(requester: str, target: str, now: float) -> str:
        try:
            await handler.bundles(requester_account_id=requester, account_id=target, now=now)
        except ResourceExhausted as refused:
            return refused.metadata["limit"]
        except NotFound:
            return "allowed"  # past the limit: the (absent) account was looked up
        raise AssertionError("unreachable")

    per_target, per_requester = "bundle_fetch_per_target", "bundle_fetch_per_requester"
    assert [await fetch("a", "t1", 0) for _ in range(3)] == ["allowed", "allowed", per_target]
    assert [await fetch("a", f"t{i}", 0) for i in range(2, 5)] == ["allowed"] * 3
    # The requester's bucket is empty now (2 + 3 taken); others are unaffected.
    assert await fetch("a", "t9", 0) == per_requester
    assert await fetch("b", "t1", 0) == "allowed"
    # After a second both buckets have a token again; the refused tries took none.
    assert await fetch("a", "t1", 1.0) == "allowed"


class _Keys:
    """Just enough of KeyStore for the publish path."""

    def __init__(self) -> None:
        self.stored: dict[str, object] = {}

    async def device_keys(self, device_id: str) -> Any:
        return self.stored.get(device_id)

    async def set_device_keys(self, keys: Any) -> None:
        self.stored[keys.device_id] = keys

    async def count_pre_keys(self, device_id: str) -> int:
        return 0

    async def delete_device(self, device_id: str) -> None:
        self.stored.pop(device_id, None)


class _Lows:
    async def record(self, **_: Any) -> None:
        pass


class _Accounts:
    def __init__(self, revoked: bool) -> None:
        self.revoked = revoked

    async def device_by_id(self, device_id: str) -> Device:
        at = datetime(2026, 1, 1, tzinfo=UTC)
        return Device(device_id, "acc", "phone", 1, at, revoked_at=at if self.revoked else None)


@pytest.mark.parametrize("revoked", [False, True])
async def test_keys_published_by_a_device_revoked_meanwhile_are_removed(revoked: bool) -> None:
    """RevokeDevice may delete the keys just before a racing publish writes
    them; the publish then sees the revocation and removes them itself."""
    identity = Ed25519PrivateKey.generate()
    spk = _raw(X25519PrivateKey.generate().public_key())
    keys = _Keys()
    handler = KeysHandler(
        keys,  # type: ignore[arg-type]
        _Accounts(revoked),  # type: ignore[arg-type]
        limiter(Rate(1, 1), Rate(1, 1)),
        pre_key_lows=_Lows(),  # type: ignore[arg-type]
        identity_changes=None,  # type: ignore[arg-type]
        notices=None,  # type: ignore[arg-type]
        sender_keys=None,  # type: ignore[arg-type]
        max_pre_keys=1000,
    )

    async def publish() -> int:
        published = await handler.publish_keys(
            account_id="acc",
            device_id="dev",
            identity_key=_raw(identity.public_key()),
            signed_pre_key=SignedPreKey(1, spk, identity.sign(b"\x05" + spk)),
            pre_keys=[],
            now=1.0,
        )
        return published.pre_key_count

    if revoked:
        with pytest.raises(Unauthenticated):
            await publish()
        assert keys.stored == {}
    else:
        assert await publish() == 0
        assert list(keys.stored) == ["dev"]
