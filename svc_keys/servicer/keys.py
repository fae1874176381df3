"""parley.keys.v1.KeyService over gRPC."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from parley.keys.v1 import keys_pb2, keys_pb2_grpc
from parley_core.auth.caller import current_caller
from parley_core.regions import region_forwarded
from parley_core.rpc.convert import timestamp
from parley_core.rpc.interceptor import bearer_token
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_keys.domain.key_routing import KeyRegionRouter
from svc_keys.domain.keys import KeysHandler
from svc_keys.domain.sender_keys import SenderKeysHandler
from svc_keys.model import NewEnvelope, PreKey, PreKeyBundle, SenderKeyEnvelope, SignedPreKey

Answer = TypeVar("Answer")
Method = Callable[[Any, Any, Any], Awaitable[Any]]


def at_callers_home(answer_type: Any) -> Callable[[Method], Method]:
    """The caller's own keys and envelopes live in its home region: a device
    connected to another region is served there, as itself."""

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def served(self: KeyServicer, request: Any, context: Any) -> Any:
            if self._router is not None:
                home = self._router.remote_home(current_caller().account_id)
                if home is not None:
                    return await self._forwarded(
                        home, method.__name__, request, context, answer_type
                    )
            return await method(self, request, context)

        return served

    return decorate


SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
KEY_BYTES = 32
SIGNATURE_BYTES = 64
PRE_KEYS_PER_CALL = 100
DEVICE_KEYS_ACCOUNTS = 256
BUNDLE_DEVICE_IDS = 64
ENVELOPES_PER_CALL = 500
ENVELOPE_BYTES = 65_536
CLAIM_PAGE_DEFAULT = 100
CLAIM_PAGE_MAX = 500


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


def _check_distinct_ids(
    check: Check, field: str, values: Sequence[str], *, minimum: int, maximum: int
) -> None:
    if not minimum <= len(values) <= maximum:
        check.fail(field, f"{minimum}-{maximum} ids, got {len(values)}")
        return
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        check.id(f"{field}[{i}]", value)
        if value in seen:
            # Named by position, not echoed (see check_send_sender_keys).
            check.fail(f"{field}[{i}]", f"the same id as {field}[{seen[value]}]")
        seen.setdefault(value, i)


def check_device_keys_request(request: keys_pb2.GetDeviceKeysRequest) -> Check:
    check = Check()
    _check_distinct_ids(
        check, "account_ids", request.account_ids, minimum=1, maximum=DEVICE_KEYS_ACCOUNTS
    )
    return check


def check_bundles_request(request: keys_pb2.GetPreKeyBundlesRequest) -> Check:
    check = Check().id("account_id", request.account_id)
    if request.device_ids:
        _check_distinct_ids(
            check, "device_ids", request.device_ids, minimum=0, maximum=BUNDLE_DEVICE_IDS
        )
    return check


def check_send_sender_keys(
    request: keys_pb2.SendSenderKeysRequest,
) -> tuple[Check, list[NewEnvelope]]:
    """The wire shape of a send, and its envelopes (only meaningful when the
    check passes)."""
    check = Check().request_id(request.request_id).id("conversation_id", request.conversation_id)
    envelopes = request.envelopes
    if not 1 <= len(envelopes) <= ENVELOPES_PER_CALL:
        check.fail("envelopes", f"1-{ENVELOPES_PER_CALL} envelopes, got {len(envelopes)}")
        return check, []
    seen: dict[str, int] = {}
    for i, envelope in enumerate(envelopes):
        field = f"envelopes[{i}]"
        check.id(f"{field}.recipient_account_id", envelope.recipient_account_id)
        check.id(f"{field}.recipient_device_id", envelope.recipient_device_id)
        if envelope.recipient_device_id in seen:
            # Named by position, not echoed: the id may be any size, and the
            # details travel in trailing metadata that clients cap.
            check.fail(
                f"{field}.recipient_device_id",
                f"the same device as envelopes[{seen[envelope.recipient_device_id]}]",
            )
        seen.setdefault(envelope.recipient_device_id, i)
        check.payload(f"{field}.ciphertext", envelope.ciphertext, max_bytes=ENVELOPE_BYTES)
    return check, [
        NewEnvelope(
            recipient_account_id=e.recipient_account_id,
            recipient_device_id=e.recipient_device_id,
            ciphertext=e.ciphertext,
        )
        for e in envelopes
    ]


def envelope_proto(envelope: SenderKeyEnvelope) -> keys_pb2.SenderKeyEnvelope:
    return keys_pb2.SenderKeyEnvelope(
        envelope_id=envelope.envelope_id,
        conversation_id=envelope.conversation_id,
        sender_account_id=envelope.sender_account_id,
        sender_device_id=envelope.sender_device_id,
        recipient_account_id=envelope.recipient_account_id,
        recipient_device_id=envelope.recipient_device_id,
        ciphertext=envelope.ciphertext,
        create_time=timestamp(envelope.created_at),
    )


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
    def __init__(
        self,
        keys: KeysHandler,
        sender_keys: SenderKeysHandler,
        *,
        router: KeyRegionRouter | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._keys = keys
        self._sender_keys = sender_keys
        self._router = router
        self._clock = clock

    async def _forwarded(
        self, region: str, method: str, request: Any, context: Any, answer_type: type[Answer]
    ) -> Answer:
        assert self._router is not None
        metadata = context.invocation_metadata()
        answer = await self._router.forward(
            region,
            method,
            request.SerializeToString(),
            bearer_token=bearer_token(metadata),
            forwarded=region_forwarded(metadata),
        )
        return answer_type.FromString(answer)  # type: ignore[attr-defined,no-any-return]

    @at_callers_home(keys_pb2.PublishKeysResponse)
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
        rpc = request_context(context, clock=self._clock)
        published = await self._keys.publish_keys(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            identity_key=request.identity_key,
            signed_pre_key=SignedPreKey(
                key_id=spk.key_id, public_key=spk.public_key, signature=spk.signature
            ),
            pre_keys=_pre_keys(request.one_time_pre_keys),
            now=rpc.now,
        )
        return keys_pb2.PublishKeysResponse(
            pre_key_count=published.pre_key_count, identity_changed=published.identity_changed
        )

    @at_callers_home(keys_pb2.UploadPreKeysResponse)
    async def UploadPreKeys(
        self, request: keys_pb2.UploadPreKeysRequest, context: Any
    ) -> keys_pb2.UploadPreKeysResponse:
        check = Check()
        _check_pre_keys(check, "pre_keys", request.pre_keys, required=True)
        check.done()
        rpc = request_context(context, clock=self._clock)
        count = await self._keys.upload_pre_keys(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            pre_keys=_pre_keys(request.pre_keys),
            now=rpc.now,
        )
        return keys_pb2.UploadPreKeysResponse(pre_key_count=count)

    async def GetPreKeyBundles(
        self, request: keys_pb2.GetPreKeyBundlesRequest, context: Any
    ) -> keys_pb2.GetPreKeyBundlesResponse:
        check_bundles_request(request).done()
        home = self._router.remote_home(request.account_id) if self._router else None
        if home is not None:
            return await self._forwarded(
                home, "GetPreKeyBundles", request, context, keys_pb2.GetPreKeyBundlesResponse
            )
        rpc = request_context(context, clock=self._clock)
        bundles = await self._keys.bundles(
            requester_account_id=rpc.account_id,
            account_id=request.account_id,
            device_ids=list(request.device_ids),
            now=rpc.now,
        )
        return keys_pb2.GetPreKeyBundlesResponse(bundles=[bundle_proto(b) for b in bundles])

    @at_callers_home(keys_pb2.GetPreKeyCountResponse)
    async def GetPreKeyCount(
        self, request: keys_pb2.GetPreKeyCountRequest, context: Any
    ) -> keys_pb2.GetPreKeyCountResponse:
        rpc = request_context(context, clock=self._clock)
        count = await self._keys.pre_key_count(device_id=rpc.device_id)
        return keys_pb2.GetPreKeyCountResponse(count=count)

    async def GetDeviceKeys(
        self, request: keys_pb2.GetDeviceKeysRequest, context: Any
    ) -> keys_pb2.GetDeviceKeysResponse:
        check_device_keys_request(request).done()
        groups = self._router.by_home(request.account_ids) if self._router else {}
        remote = {home: ids for home, ids in groups.items() if home is not None}
        local_ids = list(request.account_ids) if not remote else groups.get(None, [])
        found: dict[str, list[keys_pb2.DeviceKey]] = {}
        for d in await self._keys.device_keys(account_ids=local_ids) if local_ids else []:
            found.setdefault(d.account_id, []).append(
                keys_pb2.DeviceKey(
                    account_id=d.account_id, device_id=d.device_id, identity_key=d.identity_key
                )
            )
        for home, ids in remote.items():
            answer = await self._forwarded(
                home,
                "GetDeviceKeys",
                keys_pb2.GetDeviceKeysRequest(account_ids=ids),
                context,
                keys_pb2.GetDeviceKeysResponse,
            )
            for key in answer.devices:
                found.setdefault(key.account_id, []).append(key)
        # Grouped by account in request order, as one region answers.
        seen: set[str] = set()
        devices: list[keys_pb2.DeviceKey] = []
        for account_id in request.account_ids:
            if account_id not in seen:
                seen.add(account_id)
                devices.extend(found.get(account_id, ()))
        return keys_pb2.GetDeviceKeysResponse(devices=devices)

    async def SendSenderKeys(
        self, request: keys_pb2.SendSenderKeysRequest, context: Any
    ) -> keys_pb2.SendSenderKeysResponse:
        check, envelopes = check_send_sender_keys(request)
        check.done()
        # Envelopes wait in their recipient's home region, where it claims them.
        groups = (
            self._router.by_home(e.recipient_account_id for e in request.envelopes)
            if self._router
            else {}
        )
        remote_homes = {home for home in groups if home is not None}
        stored = 0
        for home in sorted(remote_homes):
            part = keys_pb2.SendSenderKeysRequest(
                request_id=request.request_id,
                conversation_id=request.conversation_id,
                envelopes=[
                    e
                    for e in request.envelopes
                    if self._router is not None
                    and self._router.remote_home(e.recipient_account_id) == home
                ],
            )
            answer = await self._forwarded(
                home, "SendSenderKeys", part, context, keys_pb2.SendSenderKeysResponse
            )
            stored += answer.stored
        if remote_homes:
            kept = {e.recipient_account_id for e in request.envelopes} - {
                a for home, ids in groups.items() if home is not None for a in ids
            }
            envelopes = [e for e in envelopes if e.recipient_account_id in kept]
            if not envelopes:
                return keys_pb2.SendSenderKeysResponse(stored=stored)
        rpc = request_context(context, clock=self._clock, request_id=request.request_id)
        stored += await self._sender_keys.send(
            sender_account_id=rpc.account_id,
            sender_device_id=rpc.device_id,
            request_id=rpc.request_id,
            conversation_id=request.conversation_id,
            envelopes=envelopes,
            now=rpc.now,
        )
        return keys_pb2.SendSenderKeysResponse(stored=stored)

    @at_callers_home(keys_pb2.ClaimSenderKeysResponse)
    async def ClaimSenderKeys(
        self, request: keys_pb2.ClaimSenderKeysRequest, context: Any
    ) -> keys_pb2.ClaimSenderKeysResponse:
        check = Check()
        page_size = check.page_size(
            request.page_size, default=CLAIM_PAGE_DEFAULT, maximum=CLAIM_PAGE_MAX
        )
        check.done()
        rpc = request_context(context, clock=self._clock)
        envelopes, more = await self._sender_keys.claim(
            device_id=rpc.device_id, page_size=page_size
        )
        return keys_pb2.ClaimSenderKeysResponse(
            envelopes=[envelope_proto(e) for e in envelopes], more=more
        )
