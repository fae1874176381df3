"""parley_sdk's key directory methods against the real stack: publishing real
Ed25519/X25519 keys, uploads past the per-call limit, bundles handed out once,
and errors typed as the SDK promises (bad signature, fetch rate limit)."""

from __future__ import annotations

import itertools
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley_dev.stack import LocalStack
from parley_sdk import (
    Client,
    InvalidArgumentError,
    OneTimePreKey,
    PreKeyBundle,
    ResourceExhaustedError,
    SignedPreKey,
)

_key_ids = itertools.count(1)


def x25519() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Identity:
    """A device's identity key and a signed prekey, made as a client would."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def signed_pre_key(self, key_id: int = 1) -> SignedPreKey:
        public = x25519()
        return SignedPreKey(key_id, public, self.private.sign(b"\x05" + public))


def pre_keys(count: int) -> list[OneTimePreKey]:
    first = next(_key_ids) * 1000
    return [OneTimePreKey(first + i, x25519()) for i in range(count)]


async def sign_up(stack: LocalStack, prefix: str) -> Client:
    return await Client.sign_up(
        handle=f"{prefix}_{uuid.uuid4().hex[:8]}",
        device_name="test",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
    )


async def test_publish_upload_fetch_and_counts(stack: LocalStack) -> None:
    alice, bob = await sign_up(stack, "keys_alice"), await sign_up(stack, "keys_bob")
    async with alice, bob:
        identity = Identity()
        signed = identity.signed_pre_key()
        first = pre_keys(3)
        assert (
            await alice.publish_keys(
                identity_key=identity.public, signed_pre_key=signed, one_time_pre_keys=first
            )
            == 3
        )
        # 150 is past the server's 100 per call, so this only passes split in two.
        more = pre_keys(150)
        assert await alice.upload_pre_keys(more) == 153
        assert await alice.pre_key_count() == 153
        # Re-sending keys already held is a no-op, as a retry would be.
        assert await alice.upload_pre_keys(more[:5]) == 153

        [bundle] = await bob.get_pre_key_bundles(alice.account_id)
        assert isinstance(bundle, PreKeyBundle)
        assert bundle.device_id == alice.device_id
        assert bundle.identity_key == identity.public
        assert bundle.signed_pre_key == signed
        assert bundle.one_time_pre_key in first + more
        assert not bundle.exhausted
        assert await alice.pre_key_count() == 152

        [again] = await bob.get_pre_key_bundles(alice.account_id)
        assert again.one_time_pre_key not in (None, bundle.one_time_pre_key)
        assert await alice.pre_key_count() == 151


async def test_a_device_without_prekeys_hands_out_the_signed_prekey_alone(
    stack: LocalStack,
) -> None:
    alice, bob = await sign_up(stack, "keys_alice"), await sign_up(stack, "keys_bob")
    async with alice, bob:
        assert await bob.get_pre_key_bundles(alice.account_id) == []
        identity = Identity()
        assert (
            await alice.publish_keys(
                identity_key=identity.public, signed_pre_key=identity.signed_pre_key()
            )
            == 0
        )
        [bundle] = await bob.get_pre_key_bundles(alice.account_id)
        assert bundle.one_time_pre_key is None
        assert bundle.exhausted


async def test_a_bad_signature_is_an_invalid_argument(stack: LocalStack) -> None:
    alice = await sign_up(stack, "keys_alice")
    async with alice:
        identity = Identity()
        signed = Identity().signed_pre_key()  # signed by some other identity key
        with pytest.raises(InvalidArgumentError):
            await alice.publish_keys(identity_key=identity.public, signed_pre_key=signed)
        public = x25519()
        unprefixed = SignedPreKey(1, public, identity.private.sign(public))
        with pytest.raises(InvalidArgumentError):
            await alice.publish_keys(identity_key=identity.public, signed_pre_key=unprefixed)


async def test_a_rate_limited_requester_learns_when_to_retry(stack: LocalStack) -> None:
    alice, bob = await sign_up(stack, "keys_alice"), await sign_up(stack, "keys_bob")
    async with alice, bob:
        identity = Identity()
        await alice.publish_keys(
            identity_key=identity.public, signed_pre_key=identity.signed_pre_key()
        )
        refused = None
        # The burst is 20 fetches, refilled one per 3 s: 25 in a row cannot all pass.
        for _ in range(25):
            try:
                await bob.get_pre_key_bundles(alice.account_id)
            except ResourceExhaustedError as error:
                refused = error
                break
        assert refused is not None, "25 fetches in a row were all allowed"
        assert refused.retry_after is not None
        assert 0 < refused.retry_after <= 3
