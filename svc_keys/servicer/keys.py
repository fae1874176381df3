"""parley.keys.v1.KeyService over gRPC."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from parley.keys.v1 import keys_pb2, keys_pb2_grpc
from parley_core.auth.caller import current_caller
from parley_core.validation import Check
from svc_keys.domain.keys import KeysHandler
from svc_keys.model import PreKey, PreKeyBundle, SignedPreKey

SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
KEY_BYTES = 32
SIGNATURE_BYTES = 64
PRE_KEYS_PER_CALL = 100


def _check_key(check: Check, field: str, value: bytes) -> None:
    if len(value) != KEY_BYTES:
        check.fail(field, f"must be {KEY_BYTES} bytes, got {len(value)}")


def _check_pre_keys(
    check: Check, field: str, pre_keys: Sequence[keys_pb2.OneTimePreKey], *, required: bool
) -> None:
    if required and not pre_keys:
        check.fail(field, "required: 1-100 keys")
    if len(pre_keys) > PRE_KEYS_PER_CALL:
        check.fail(field, f"at most {PRE_KEYS_PER_CALL} keys per call, got {len(pre_keys)}")
        return
    seen: set[int] = set()
    for i, key in enumerate(pre_keys):
        _check_key(check, f"{field}[{i}].public_key", key.public_key)
        if key.key_id in seen:
            check.fail(f"{field}[{i}].key_id", f"key id {key.key_id} appears twice")
        seen.add(key.key_id)


def _pre_keys(pre_keys: Sequence[keys_pb2.OneTimePreKey]) -> list[PreKey]:
    return [PreKey(key_id=k.key_id, public_key=k.public_key) for k in pre_keys]


def _signed_pre_key_proto(spk: SignedPreKey) -> keys_pb2.SignedPreKey:
    return keys_pb2.SignedPreKey(
        key_id=spk.key_id, public_key=spk.public_key, signature=spk.signature
    )


def bundle_proto(bundle: PreKeyBundle) -> keys_pb2.PreKeyBundle:
    proto = keys_pb2.PreKeyBundle(
        device_id=bundle.device_id,
        identity_key=bundle.identity_key,
        signed_pre_key=_signed_pre_key_proto(bundle.signed_pre_key),
        one_time_pre_key_exhausted=bundle.pre_key is None,
    )
    if bundle.pre_key is not None:
        proto.one_time_pre_key.CopyFrom(
            keys_pb2.OneTimePreKey(
                key_id=bundle.pre_key.key_id, public_key=bundle.pre_key.public_key
            )
        )
    return proto


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, keys: KeysHandler, *, clock: Callable[[], float] = time.time):
        self._keys = keys
        self._clock = clock

    async def PublishKeys(
        self, request: keys_pb2.PublishKeysRequest, context: Any
    ) -> keys_pb2.PublishKeysResponse:
        check = Check()
        _check_key(check, "identity_key", request.identity_key)
        spk = request.signed_pre_key
        if not request.HasField("signed_pre_key"):
            check.fail("signed_pre_key", "required")
        else:
            _check_key(check, "signed_pre_key.public_key", spk.public_key)
            if len(spk.signature) != SIGNATURE_BYTES:
                check.fail(
                    "signed_pre_key.signature",
                    f"must be {SIGNATURE_BYTES} bytes, got {len(spk.signature)}",
                )
        _check_pre_keys(check, "one_time_pre_keys", request.one_time_pre_keys, required=False)
        check.done()
        caller = current_caller()
        count = await self._keys.publish_keys(
            account_id=caller.account_id,
            device_id=caller.device_id,
            identity_key=request.identity_key,
            signed_pre_key=SignedPreKey(
                key_id=spk.key_id, public_key=spk.public_key, signature=spk.signature
            ),
            pre_keys=_pre_keys(request.one_time_pre_keys),
            now=self._clock(),
        )
        return keys_pb2.PublishKeysResponse(pre_key_count=count)

    async def UploadPreKeys(
        self, request: keys_pb2.UploadPreKeysRequest, context: Any
    ) -> keys_pb2.UploadPreKeysResponse:
        check = Check()
        _check_pre_keys(check, "pre_keys", request.pre_keys, required=True)
        check.done()
        count = await self._keys.upload_pre_keys(
            device_id=current_caller().device_id,
            pre_keys=_pre_keys(request.pre_keys),
            now=self._clock(),
        )
        return keys_pb2.UploadPreKeysResponse(pre_key_count=count)

    async def GetPreKeyBundles(
        self, request: keys_pb2.GetPreKeyBundlesRequest, context: Any
    ) -> keys_pb2.GetPreKeyBundlesResponse:
        Check().id("account_id", request.account_id).done()
        bundles = await self._keys.bundles(
            requester_account_id=current_caller().account_id,
            account_id=request.account_id,
            now=self._clock(),
        )
        return keys_pb2.GetPreKeyBundlesResponse(bundles=[bundle_proto(b) for b in bundles])

    async def GetPreKeyCount(
        self, request: keys_pb2.GetPreKeyCountRequest, context: Any
    ) -> keys_pb2.GetPreKeyCountResponse:
        count = await self._keys.pre_key_count(device_id=current_caller().device_id)
        return keys_pb2.GetPreKeyCountResponse(count=count)
