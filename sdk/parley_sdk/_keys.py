"""Client methods for the end-to-end encryption key directory (public keys only)."""

from __future__ import annotations

from collections.abc import Sequence

from parley.keys.v1 import keys_pb2
from parley_sdk._key_models import (
    DeviceKey,
    OneTimePreKey,
    PreKeyBundle,
    SenderKeyEnvelope,
    SignedPreKey,
)
from parley_sdk._paging import ClientBase
from parley_sdk.retry import new_request_id

__all__ = [
    "MAX_DEVICE_KEY_ACCOUNTS",
    "MAX_PRE_KEYS_PER_CALL",
    "MAX_SENDER_KEYS_PER_CALL",
    "KeyMethods",
]

MAX_PRE_KEYS_PER_CALL = 100
"""The server's limit per PublishKeys/UploadPreKeys call; larger uploads are split."""

MAX_SENDER_KEYS_PER_CALL = 500
"""The server's limit per SendSenderKeys call; more envelopes are sent in several calls."""

MAX_DEVICE_KEY_ACCOUNTS = 256
"""The server's limit of accounts per GetDeviceKeys call; more are asked in several calls."""


def _chunks(pre_keys: Sequence[OneTimePreKey]) -> list[list[keys_pb2.OneTimePreKey]]:
    protos = [key.to_proto() for key in pre_keys]
    return [
        protos[start : start + MAX_PRE_KEYS_PER_CALL]
        for start in range(0, len(protos), MAX_PRE_KEYS_PER_CALL)
    ]


class KeyMethods(ClientBase):
    """This device's X3DH keys in the server's key directory (docs/design/e2ee.md).

    The server stores public keys only and checks the signed prekey's
    signature. Every call is safe to retry: republishing sets the same keys and
    re-uploading a prekey id with the same key is a no-op.
    """

    async def publish_keys(
        self,
        *,
        identity_key: bytes,
        signed_pre_key: SignedPreKey,
        one_time_pre_keys: Sequence[OneTimePreKey] = (),
    ) -> int:
        """Sets or replaces this device's identity key (32-byte Ed25519 public
        key) and signed prekey, and uploads ``one_time_pre_keys``; returns how
        many one-time prekeys the device now holds.

        More than 100 one-time prekeys are sent as further uploads after the
        publish. Raises :class:`InvalidArgumentError` for a bad signature and
        :class:`TooManyPreKeysError` past the per-device cap.
        """
        count, _ = await self._publish_keys(
            identity_key=identity_key,
            signed_pre_key=signed_pre_key,
            one_time_pre_keys=one_time_pre_keys,
        )
        return count

    async def _publish_keys(
        self,
        *,
        identity_key: bytes,
        signed_pre_key: SignedPreKey,
        one_time_pre_keys: Sequence[OneTimePreKey],
    ) -> tuple[int, bool]:
        """(prekeys held, whether the device had published another identity key)."""
        first, *rest = _chunks(one_time_pre_keys) or [[]]
        request = keys_pb2.PublishKeysRequest(
            identity_key=identity_key,
            signed_pre_key=signed_pre_key.to_proto(),
            one_time_pre_keys=first,
        )
        response = await self._session.unary(self._session.key_directory.PublishKeys, request)
        count = int(response.pre_key_count)
        for chunk in rest:
            count = await self._upload(chunk)
        return count, bool(response.identity_changed)

    async def upload_pre_keys(self, pre_keys: Sequence[OneTimePreKey]) -> int:
        """Adds one-time prekeys for this device, in calls of at most 100;
        returns how many it now holds (with no keys, just asks for the count).

        Needs :meth:`publish_keys` first (:class:`FailedPreconditionError`).
        Key ids must be unique per device: the same id with another key is
        :class:`InvalidArgumentError`. Past the per-device cap,
        :class:`TooManyPreKeysError`; earlier chunks stay uploaded.
        """
        chunks = _chunks(pre_keys)
        if not chunks:
            return await self.pre_key_count()
        count = 0
        for chunk in chunks:
            count = await self._upload(chunk)
        return count

    async def get_pre_key_bundles(
        self, account_id: str, *, device_ids: Sequence[str] = ()
    ) -> list[PreKeyBundle]:
        """One bundle per active device of ``account_id`` that has published
        keys (empty if none has). Each one-time prekey is handed out once.

        ``device_ids`` (at most 64) limits the answer to those devices, so no
        other device's prekey is consumed; ids that are not active devices
        with keys are left out.

        Rate-limited per requesting account: :class:`ResourceExhaustedError`
        with ``retry_after`` in seconds. :class:`NotFoundError` for an unknown
        account.
        """
        request = keys_pb2.GetPreKeyBundlesRequest(
            account_id=account_id, device_ids=list(device_ids)
        )
        response = await self._session.unary(self._session.key_directory.GetPreKeyBundles, request)
        return [PreKeyBundle.from_proto(bundle) for bundle in response.bundles]

    async def pre_key_count(self) -> int:
        """How many one-time prekeys this device has left, to know when to refill."""
        response = await self._session.unary(
            self._session.key_directory.GetPreKeyCount, keys_pb2.GetPreKeyCountRequest()
        )
        return int(response.count)

    async def get_device_keys(self, account_ids: Sequence[str]) -> list[DeviceKey]:
        """The identity keys of the active devices (that published keys) of these
        accounts, grouped by account in the given order. Unknown accounts are
        left out. Consumes no prekey, so call it before every encryption."""
        distinct = list(dict.fromkeys(account_ids))
        found: list[DeviceKey] = []
        for start in range(0, len(distinct), MAX_DEVICE_KEY_ACCOUNTS):
            request = keys_pb2.GetDeviceKeysRequest(
                account_ids=distinct[start : start + MAX_DEVICE_KEY_ACCOUNTS]
            )
            response = await self._session.unary(self._session.key_directory.GetDeviceKeys, request)
            found += [DeviceKey.from_proto(device) for device in response.devices]
        return found

    async def send_sender_keys(
        self, conversation_id: str, envelopes: Sequence[SenderKeyEnvelope]
    ) -> int:
        """Stores sender-key envelopes (each already sealed for its recipient
        device) for a group, in calls of at most 500; returns how many were stored.

        Each call has its own request_id, reused on its retries, so a retried
        call is applied once. Envelopes for devices without keys are refused
        (:class:`FailedPreconditionError`); earlier calls stay applied.
        """
        stored = 0
        for start in range(0, len(envelopes), MAX_SENDER_KEYS_PER_CALL):
            request = keys_pb2.SendSenderKeysRequest(
                request_id=new_request_id(),
                conversation_id=conversation_id,
                envelopes=[
                    e.to_proto() for e in envelopes[start : start + MAX_SENDER_KEYS_PER_CALL]
                ],
            )
            send = self._session.key_directory.SendSenderKeys
            response = await self._session.unary(send, request)
            stored += int(response.stored)
        return stored

    async def claim_sender_keys(self, *, page_size: int = 100) -> list[SenderKeyEnvelope]:
        """Takes every sender-key envelope waiting for this device, oldest first.

        The server deletes what it hands out, so open and keep them (an
        encrypted client does this by itself when it needs a sender key).
        """
        claimed: list[SenderKeyEnvelope] = []
        while True:
            page, more = await self._claim_sender_keys_page(page_size)
            claimed += page
            if not more or not page:
                return claimed

    async def _claim_sender_keys_page(
        self, page_size: int = 100
    ) -> tuple[list[SenderKeyEnvelope], bool]:
        request = keys_pb2.ClaimSenderKeysRequest(page_size=page_size)
        response = await self._session.unary(self._session.key_directory.ClaimSenderKeys, request)
        return [SenderKeyEnvelope.from_proto(e) for e in response.envelopes], bool(response.more)

    async def _upload(self, chunk: list[keys_pb2.OneTimePreKey]) -> int:
        request = keys_pb2.UploadPreKeysRequest(pre_keys=chunk)
        response = await self._session.unary(self._session.key_directory.UploadPreKeys, request)
        return int(response.pre_key_count)
