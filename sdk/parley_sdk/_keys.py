"""Client methods for the end-to-end encryption key directory (public keys only)."""

from __future__ import annotations

from collections.abc import Sequence

from parley.keys.v1 import keys_pb2
from parley_sdk._key_models import OneTimePreKey, PreKeyBundle, SignedPreKey
from parley_sdk._paging import ClientBase

__all__ = ["MAX_PRE_KEYS_PER_CALL", "KeyMethods"]

MAX_PRE_KEYS_PER_CALL = 100
"""The server's limit per PublishKeys/UploadPreKeys call; larger uploads are split."""


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
        return count

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

    async def get_pre_key_bundles(self, account_id: str) -> list[PreKeyBundle]:
        """One bundle per active device of ``account_id`` that has published
        keys (empty if none has). Each one-time prekey is handed out once.

        Rate-limited per requesting account: :class:`ResourceExhaustedError`
        with ``retry_after`` in seconds. :class:`NotFoundError` for an unknown
        account.
        """
        request = keys_pb2.GetPreKeyBundlesRequest(account_id=account_id)
        response = await self._session.unary(self._session.key_directory.GetPreKeyBundles, request)
        return [PreKeyBundle.from_proto(bundle) for bundle in response.bundles]

    async def pre_key_count(self) -> int:
        """How many one-time prekeys this device has left, to know when to refill."""
        response = await self._session.unary(
            self._session.key_directory.GetPreKeyCount, keys_pb2.GetPreKeyCountRequest()
        )
        return int(response.count)

    async def _upload(self, chunk: list[keys_pb2.OneTimePreKey]) -> int:
        request = keys_pb2.UploadPreKeysRequest(pre_keys=chunk)
        response = await self._session.unary(self._session.key_directory.UploadPreKeys, request)
        return int(response.pre_key_count)
