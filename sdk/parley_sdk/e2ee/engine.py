"""The device's encryption engine: own keys, pairwise sessions (X3DH + Double
Ratchet) and group sender keys. Network-free; persistence is the DeviceStore.

Every state change is committed before its result leaves the engine: a
ciphertext is returned only after the ratchet step that made it is saved, and a
decryption commits the new state (and, if asked, the plaintext) together.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import xeddsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from doubleratchet import (
    AuthenticationFailedException,
    DecryptionFailedException,
    DoSProtectionException,
    DuplicateMessageException,
    EncryptedMessage,
    Header,
)
from google.protobuf.message import DecodeError
from x3dh import Bundle, KeyAgreementException
from x3dh import Header as X3dhHeader
from x3dh.pre_key_pair import PreKeyPair

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk.e2ee._ratchet import (
    CURVE25519_PREFIX,
    KEY_SIZE,
    X3dhState,
    accept_ratchet,
    dump_ratchet,
    dump_x3dh_state,
    load_ratchet,
    load_x3dh_state,
    new_x3dh_state,
    pairwise_associated_data,
    start_ratchet,
)
from parley_sdk.e2ee._sender_keys import SenderKeys
from parley_sdk.e2ee.errors import DecryptionError, InvalidBundleError, UntrustedIdentityError
from parley_sdk.e2ee.keys import (
    DeviceAddress,
    PublicKeys,
    PublicPreKey,
    PublicSignedPreKey,
    RemoteBundle,
)
from parley_sdk.e2ee.store import (
    CURRENT,
    PREVIOUS,
    DeviceStore,
    IdentityRecord,
    SessionRecord,
)

__all__ = ["Crypto", "HistoryEntry"]

_SIGNATURE_SIZE = 64
_MAX_PRE_KEYS_PER_CALL = 10_000
# What the libraries raise for input that does not decrypt; their messages are
# never passed on (some quote headers).
_CRYPTO_FAILURES = (
    AuthenticationFailedException,
    DecryptionFailedException,
    DoSProtectionException,
    DuplicateMessageException,
    KeyAgreementException,
    xeddsa.XEdDSAException,
    ValueError,
)


def _check_bundle(bundle: RemoteBundle) -> None:
    signed = bundle.signed_pre_key
    one_time = bundle.one_time_pre_key
    if (
        len(bundle.identity_key) != KEY_SIZE
        or len(signed.public_key) != KEY_SIZE
        or len(signed.signature) != _SIGNATURE_SIZE
        or (one_time is not None and len(one_time.public_key) != KEY_SIZE)
    ):
        raise InvalidBundleError(bundle.address, "keys of the wrong size")
    try:
        # The very check svc_keys makes (docs/design/e2ee.md).
        Ed25519PublicKey.from_public_bytes(bundle.identity_key).verify(
            signed.signature, CURVE25519_PREFIX + signed.public_key
        )
    except (InvalidSignature, ValueError):
        raise InvalidBundleError(bundle.address, "signed prekey does not verify") from None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """Where a decrypted message belongs, so its plaintext is stored in the same
    transaction as the ratchet step that consumed its key (see ``decrypt_pairwise``)."""

    message_id: str
    conversation_id: str
    sent_at: float


class Crypto:
    """One device's end-to-end encryption.

    ``accept_new_identities`` (default True): a session start from a known device
    with another identity key (a re-install) replaces the session. With False,
    ``decrypt_pairwise`` raises UntrustedIdentityError instead and the caller
    decides (``forget_device`` and retry accepts it).
    """

    def __init__(
        self, store: DeviceStore, me: DeviceAddress, *, accept_new_identities: bool = True
    ) -> None:
        self._store = store
        self._me = me
        self._accept_new_identities = accept_new_identities
        self._locks: dict[DeviceAddress, asyncio.Lock] = {}
        self._state: X3dhState | None = None
        self._identity_key: bytes | None = None
        self._groups = SenderKeys(store, me)

    @property
    def me(self) -> DeviceAddress:
        return self._me

    # --- own keys

    def has_identity(self) -> bool:
        return self._store.load_identity() is not None

    def create_identity(self, *, pre_keys: int = 100) -> PublicKeys:
        """A new identity, signed prekey and ``pre_keys`` one-time prekeys, all persisted.
        ValueError if the store already holds an identity (that would orphan every session)."""
        if self.has_identity():
            raise ValueError("this store already holds an identity")
        state = new_x3dh_state()
        with self._store.transaction():
            signed_id = self._store.allocate_ids("signed_pre_key", 1)
            self._store.save_identity(IdentityRecord(dump_x3dh_state(state), signed_id, None))
            one_time = self._generate_pre_keys(pre_keys)
        self._state, self._identity_key = state, None
        return PublicKeys(self.identity_key(), self._signed_pre_key(), one_time)

    def public_keys(self) -> PublicKeys:
        return PublicKeys(self.identity_key(), self._signed_pre_key(), [])

    def new_pre_keys(self, count: int) -> list[PublicPreKey]:
        self._identity()
        with self._store.transaction():
            return self._generate_pre_keys(count)

    def identity_key(self) -> bytes:
        """The 32-byte Ed25519 identity public key."""
        if self._identity_key is None:
            self._identity_key = self._x3dh().bundle.identity_key
        return self._identity_key

    def pre_key_count(self) -> int:
        """One-time prekeys still held privately (used ones are deleted)."""
        return self._store.pre_key_count()

    def rotate_signed_pre_key(self) -> PublicSignedPreKey:
        """A new signed prekey (publish it with PublishKeys); the previous one keeps
        working for starts already under way until the next rotation."""
        state = self._x3dh()
        record = self._identity()
        state.rotate_signed_pre_key()
        with self._store.transaction():
            new_id = self._store.allocate_ids("signed_pre_key", 1)
            self._store.save_identity(
                IdentityRecord(dump_x3dh_state(state), new_id, record.signed_pre_key_id)
            )
        return self._signed_pre_key()

    def _identity(self) -> IdentityRecord:
        record = self._store.load_identity()
        if record is None:
            raise RuntimeError("no identity yet: call create_identity first")
        return record

    def _x3dh(self) -> X3dhState:
        if self._state is None:
            self._state = load_x3dh_state(self._identity().x3dh_state)
        return self._state

    def _signed_pre_key(self) -> PublicSignedPreKey:
        bundle = self._x3dh().bundle
        return PublicSignedPreKey(
            self._identity().signed_pre_key_id, bundle.signed_pre_key, bundle.signed_pre_key_sig
        )

    def _generate_pre_keys(self, count: int) -> list[PublicPreKey]:
        if not 0 <= count <= _MAX_PRE_KEYS_PER_CALL:
            raise ValueError(f"count must be 0-{_MAX_PRE_KEYS_PER_CALL}")
        if count == 0:
            return []
        first = self._store.allocate_ids("pre_key", count)
        pairs = [PreKeyPair(secrets.token_bytes(KEY_SIZE)) for _ in range(count)]
        rows = [(first + i, pair.pub, pair.priv) for i, pair in enumerate(pairs)]
        self._store.add_pre_keys(rows)
        return [PublicPreKey(key_id, public) for key_id, public, _ in rows]

    # --- pairwise sessions

    def sessions_with(self, account_id: str) -> dict[str, bytes]:
        """device_id -> identity key of the current session with that device."""
        return self._store.session_identities(account_id)

    def forget_device(self, address: DeviceAddress) -> None:
        self._store.delete_sessions(address)

    def _lock(self, peer: DeviceAddress) -> asyncio.Lock:
        return self._locks.setdefault(peer, asyncio.Lock())

    async def encrypt_pairwise(
        self,
        content: bytes,
        recipients: Sequence[DeviceAddress],
        bundles: Mapping[DeviceAddress, RemoteBundle],
    ) -> list[bytes]:
        """One serialized DeviceCopy per recipient, in order. KeyError (before any
        encryption) for recipients with neither a session nor a bundle; a bundle
        with another identity key than the session's replaces the session."""
        if self._me in recipients:
            raise ValueError("a device does not encrypt to itself")
        missing = [
            r
            for r in recipients
            if r not in bundles and self._store.load_session(r, CURRENT) is None
        ]
        if missing:
            raise KeyError(f"no session and no bundle for {len(missing)} device(s): {missing}")
        for recipient in recipients:
            bundle = bundles.get(recipient)
            if bundle is not None:
                if bundle.address != recipient:
                    raise ValueError("bundle filed under another device's address")
                # Refused before anything is encrypted, so no ratchet moves for nothing.
                _check_bundle(bundle)
        copies: list[bytes] = []
        for recipient in recipients:
            async with self._lock(recipient):
                copies.append(await self._encrypt_one(content, recipient, bundles.get(recipient)))
        return copies

    async def _encrypt_one(
        self, content: bytes, peer: DeviceAddress, bundle: RemoteBundle | None
    ) -> bytes:
        session = self._store.load_session(peer, CURRENT)
        if session is None or (bundle is not None and bundle.identity_key != session.identity_key):
            if bundle is None:  # the session was forgotten meanwhile
                raise KeyError(f"no session and no bundle for {peer}")
            record, message = await self._start_session(content, bundle)
            with self._store.transaction():
                if session is not None:
                    # Kept for late messages from the replaced install.
                    self._store.save_session(peer, PREVIOUS, session)
                self._store.save_session(peer, CURRENT, record)
        else:
            ratchet = load_ratchet(session.ratchet)
            associated = pairwise_associated_data(
                self._me, self.identity_key(), peer, session.identity_key
            )
            message = await ratchet.encrypt_message(content, associated)
            record = SessionRecord(
                session.identity_key,
                dump_ratchet(ratchet),
                session.start_ephemeral,
                session.pending_start,
            )
            self._store.save_session(peer, CURRENT, record)
        copy = e2ee_pb2.DeviceCopy(
            account_id=peer.account_id,
            device_id=peer.device_id,
            header=e2ee_pb2.RatchetHeader(
                ratchet_public_key=message.header.ratchet_pub,
                previous_chain_length=message.header.previous_sending_chain_length,
                message_number=message.header.sending_chain_length,
            ),
            ciphertext=message.ciphertext,
        )
        if record.pending_start is not None:
            copy.start.ParseFromString(record.pending_start)
        return copy.SerializeToString()

    async def _start_session(
        self, content: bytes, bundle: RemoteBundle
    ) -> tuple[SessionRecord, EncryptedMessage]:
        peer = bundle.address
        signed = bundle.signed_pre_key
        one_time = bundle.one_time_pre_key
        x3dh_bundle = Bundle(
            identity_key=bundle.identity_key,
            signed_pre_key=signed.public_key,
            signed_pre_key_sig=signed.signature,
            pre_keys=frozenset() if one_time is None else frozenset({one_time.public_key}),
        )
        try:
            shared_secret, _, header = await self._x3dh().get_shared_secret_active(
                x3dh_bundle, require_pre_key=False
            )
        except _CRYPTO_FAILURES:
            raise InvalidBundleError(peer, "signed prekey does not verify") from None
        associated = pairwise_associated_data(
            self._me, self.identity_key(), peer, bundle.identity_key
        )
        ratchet, message = await start_ratchet(
            shared_secret, signed.public_key, content, associated
        )
        start = e2ee_pb2.SessionStart(
            identity_key=header.identity_key,
            ephemeral_key=header.ephemeral_key,
            signed_pre_key=header.signed_pre_key,
            one_time_pre_key=header.pre_key or b"",
        )
        record = SessionRecord(
            bundle.identity_key,
            dump_ratchet(ratchet),
            header.ephemeral_key,
            start.SerializeToString(),
        )
        return record, message

    async def decrypt_pairwise(
        self, sender: DeviceAddress, copy: bytes, *, remember: HistoryEntry | None = None
    ) -> bytes:
        """The serialized Content of a DeviceCopy addressed to this device.

        ``remember``: also store the plaintext under that message in the same
        transaction as the ratchet step (so a crash cannot lose a message whose
        key is already used)."""
        try:
            parsed = e2ee_pb2.DeviceCopy.FromString(copy)
        except DecodeError:
            raise DecryptionError("not a DeviceCopy") from None
        if DeviceAddress(parsed.account_id, parsed.device_id) != self._me:
            raise DecryptionError("copy is addressed to another device")
        if len(parsed.header.ratchet_public_key) != KEY_SIZE:
            raise DecryptionError("malformed ratchet header")
        message = EncryptedMessage(
            header=Header(
                ratchet_pub=parsed.header.ratchet_public_key,
                previous_sending_chain_length=parsed.header.previous_chain_length,
                sending_chain_length=parsed.header.message_number,
            ),
            ciphertext=parsed.ciphertext,
        )
        async with self._lock(sender):
            current = self._store.load_session(sender, CURRENT)
            previous = self._store.load_session(sender, PREVIOUS)
            if parsed.HasField("start"):
                ephemeral = parsed.start.ephemeral_key
                # A start already processed arrives again on every copy until we answer.
                if current is not None and current.start_ephemeral == ephemeral:
                    return await self._decrypt_in(
                        sender, CURRENT, current, previous, message, remember
                    )
                if previous is not None and previous.start_ephemeral == ephemeral:
                    return await self._decrypt_in(
                        sender, PREVIOUS, previous, current, message, remember
                    )
                if self._store.start_seen(ephemeral):
                    raise DecryptionError("session start was used before")
                return await self._accept_start(sender, parsed.start, message, current, remember)
            for slot, session, other in (
                (CURRENT, current, previous),
                (PREVIOUS, previous, current),
            ):
                if session is None:
                    continue
                try:
                    return await self._decrypt_in(sender, slot, session, other, message, remember)
                except DecryptionError:
                    continue
            raise DecryptionError("no session with the sending device opens this copy")

    async def _decrypt_in(
        self,
        sender: DeviceAddress,
        slot: int,
        session: SessionRecord,
        other: SessionRecord | None,
        message: EncryptedMessage,
        remember: HistoryEntry | None,
    ) -> bytes:
        ratchet = load_ratchet(session.ratchet)
        associated = pairwise_associated_data(
            sender, session.identity_key, self._me, self.identity_key()
        )
        try:
            plaintext = await ratchet.decrypt_message(message, associated)
        except _CRYPTO_FAILURES:
            raise DecryptionError("copy does not decrypt in the session") from None
        # The peer answered in this session, so it has the start: stop attaching it.
        updated = SessionRecord(
            session.identity_key, dump_ratchet(ratchet), session.start_ephemeral, None
        )
        with self._store.transaction():
            if (
                slot == PREVIOUS
                and other is not None
                and other.identity_key == session.identity_key
            ):
                # Both devices started a session at once: follow the one the peer
                # uses. Never for another identity (a late message from a replaced
                # install must not bring the old install back).
                self._store.save_session(sender, PREVIOUS, other)
                self._store.save_session(sender, CURRENT, updated)
            else:
                self._store.save_session(sender, slot, updated)
            self._remember(sender, plaintext, remember)
        return plaintext

    async def _accept_start(
        self,
        sender: DeviceAddress,
        start: e2ee_pb2.SessionStart,
        message: EncryptedMessage,
        current: SessionRecord | None,
        remember: HistoryEntry | None,
    ) -> bytes:
        if (
            len(start.identity_key) != KEY_SIZE
            or len(start.ephemeral_key) != KEY_SIZE
            or len(start.signed_pre_key) != KEY_SIZE
            or len(start.one_time_pre_key) not in (0, KEY_SIZE)
        ):
            raise DecryptionError("malformed session start")
        if (
            current is not None
            and current.identity_key != start.identity_key
            and not self._accept_new_identities
        ):
            raise UntrustedIdentityError(sender, start.identity_key)
        pre_key: bytes | None = None
        if start.one_time_pre_key:
            pre_key = self._store.pre_key_private(start.one_time_pre_key)
            if pre_key is None:
                raise DecryptionError("session start names a one-time prekey this device lacks")
        state = load_x3dh_state(self._identity().x3dh_state, pre_key=pre_key)
        header = X3dhHeader(
            identity_key=start.identity_key,
            ephemeral_key=start.ephemeral_key,
            signed_pre_key=start.signed_pre_key,
            pre_key=start.one_time_pre_key or None,
        )
        associated = pairwise_associated_data(
            sender, start.identity_key, self._me, self.identity_key()
        )
        try:
            shared_secret, _, signed_pre_key = await state.get_shared_secret_passive(
                header, require_pre_key=False
            )
            ratchet, plaintext = await accept_ratchet(
                shared_secret, signed_pre_key.priv, message, associated
            )
        except _CRYPTO_FAILURES:
            raise DecryptionError("session start does not decrypt") from None
        record = SessionRecord(start.identity_key, dump_ratchet(ratchet), start.ephemeral_key, None)
        with self._store.transaction():
            if current is not None:
                self._store.save_session(sender, PREVIOUS, current)
            self._store.save_session(sender, CURRENT, record)
            if start.one_time_pre_key:
                self._store.delete_pre_key(start.one_time_pre_key)
            self._store.mark_start_seen(start.ephemeral_key)
            self._remember(sender, plaintext, remember)
        return plaintext

    def _remember(
        self, sender: DeviceAddress, content: bytes, remember: HistoryEntry | None
    ) -> None:
        if remember is not None:
            self._store.remember_plaintext(
                message_id=remember.message_id,
                conversation_id=remember.conversation_id,
                sender=sender,
                content=content,
                sent_at=remember.sent_at,
            )

    # --- sender keys (groups)

    def own_sender_key(self, conversation_id: str) -> tuple[int, bytes]:
        """(epoch, serialized SenderKeyDistribution at the current iteration);
        creates epoch 1 (or the next epoch after a rotation) if needed."""
        return self._groups.own_sender_key(conversation_id)

    def rotate_sender_key(self, conversation_id: str) -> None:
        self._groups.rotate_sender_key(conversation_id)

    def undistributed(
        self, conversation_id: str, devices: Sequence[DeviceAddress]
    ) -> list[DeviceAddress]:
        return self._groups.undistributed(conversation_id, devices)

    def mark_distributed(
        self, conversation_id: str, devices: Sequence[DeviceAddress], *, epoch: int | None = None
    ) -> None:
        """``epoch``: the one own_sender_key returned for what was sent; if the key was
        rotated in between, nothing is marked (the new epoch still has to go out)."""
        self._groups.mark_distributed(conversation_id, devices, epoch=epoch)

    def encrypt_group(self, conversation_id: str, content: bytes) -> bytes:
        return self._groups.encrypt_group(conversation_id, content)

    def accept_sender_key(self, sender: DeviceAddress, distribution: bytes) -> None:
        """ValueError for a malformed distribution."""
        self._groups.accept_sender_key(sender, distribution)

    def decrypt_group(
        self,
        conversation_id: str,
        sender: DeviceAddress,
        message: bytes,
        *,
        remember: HistoryEntry | None = None,
    ) -> bytes:
        with self._store.transaction():
            plaintext = self._groups.decrypt_group(conversation_id, sender, message)
            self._remember(sender, plaintext, remember)
        return plaintext
