"""The auth matrix of the media services.

Every MediaService RPC against every bad credential (no token, malformed,
tampered, forged, expired, revoked): UNAUTHENTICATED with the matching reason.
MediaAdminService takes only an operator credential and MediaReferenceService
only the service credential: an account's valid token, the other privileged
credential or any bad one is UNAUTHENTICATED there. Another user's valid
token reaches nothing of the victim's: PERMISSION_DENIED for the victim's
media (the same answer as for media that does not exist), NOT_FOUND for the
victim's upload sessions, and only the caller's own quota.

svc_message's internal service is played by a stand-in (tests/media_world.py)
until svc_message serves it, so the victim's readers are known here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import media_pb2_grpc as mgrpc
from parley.media.v1 import references_pb2 as rpb
from parley.media.v1 import references_pb2_grpc as rgrpc
from parley_core.auth.tokens import TokenIssuer, load_private_key, write_key_pair
from parley_dev.stack import LocalStack
from tests.chaos.auth_calls import refused
from tests.helpers import TEST_LIMITS, Metadata, auth
from tests.media_world import Blob, MessageStandIn, error_info, send
from tests.refusals import until_revoked
from tests.users import Device, link_device, rid, sign_up

pytestmark = pytest.mark.chaos

Call = Callable[[Metadata], Awaitable[Any]]
MEDIA_RPCS = {m.name for m in mpb.DESCRIPTOR.services_by_name["MediaService"].methods}
ADMIN_RPCS = {m.name for m in mpb.DESCRIPTOR.services_by_name["MediaAdminService"].methods}
REFERENCE_RPCS = {m.name for m in rpb.DESCRIPTOR.services_by_name["MediaReferenceService"].methods}


@dataclass
class Victim:
    alice: Device
    laptop: Device  # alice's second device, revoked
    blob: Blob
    media_id: str
    upload_id: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def media_auth(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[LocalStack, MessageStandIn]]:
    stand_in = MessageStandIn()
    await stand_in.start()
    stack = LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("media_auth")),
        shutdown_grace_seconds=2.0,
        extra_config={**TEST_LIMITS, "media": {"message_target": stand_in.target}},
    )
    try:
        async with stack:
            yield stack, stand_in
    finally:
        await stand_in.stop()


def media_calls(media: mgrpc.MediaServiceStub, v: Victim) -> dict[str, Call]:
    """Every MediaService RPC, aimed at the victim's media and upload."""
    media_id, upload_id = v.media_id, v.upload_id
    return {
        "CreateUpload": lambda md: media.CreateUpload(v.blob.request(), metadata=md),
        "GetUpload": lambda md: media.GetUpload(
            mpb.GetUploadRequest(upload_id=upload_id), metadata=md
        ),
        "CompleteUpload": lambda md: media.CompleteUpload(
            mpb.CompleteUploadRequest(upload_id=upload_id), metadata=md
        ),
        "AbortUpload": lambda md: media.AbortUpload(
            mpb.AbortUploadRequest(upload_id=upload_id), metadata=md
        ),
        "GetDownload": lambda md: media.GetDownload(
            mpb.GetDownloadRequest(media_id=media_id), metadata=md
        ),
        "RestoreMedia": lambda md: media.RestoreMedia(
            mpb.RestoreMediaRequest(media_id=media_id, days=1), metadata=md
        ),
        "GetRestore": lambda md: media.GetRestore(
            mpb.GetRestoreRequest(media_id=media_id), metadata=md
        ),
        "GetQuota": lambda md: media.GetQuota(mpb.GetQuotaRequest(), metadata=md),
    }


def privileged_calls(
    admin: mgrpc.MediaAdminServiceStub, references: rgrpc.MediaReferenceServiceStub, v: Victim
) -> dict[str, Call]:
    sha = v.blob.sha256
    return {
        "QuarantineMedia": lambda md: admin.QuarantineMedia(
            mpb.QuarantineMediaRequest(sha256=sha, reason="intruder"), metadata=md
        ),
        "LiftQuarantine": lambda md: admin.LiftQuarantine(
            mpb.LiftQuarantineRequest(sha256=sha, reason="intruder"), metadata=md
        ),
        "ListAuditEvents": lambda md: admin.ListAuditEvents(
            mpb.ListAuditEventsRequest(), metadata=md
        ),
        "ReserveReferences": lambda md: references.ReserveReferences(
            rpb.ReserveReferencesRequest(
                account_id=v.alice.account_id, conversation_id=rid(), media_ids=[v.media_id]
            ),
            metadata=md,
        ),
        "ReleaseReferences": lambda md: references.ReleaseReferences(
            rpb.ReleaseReferencesRequest(media_ids=[v.media_id]), metadata=md
        ),
        # Aimed at the victim: a credential that passed would erase her uploads.
        "EraseUploader": lambda md: references.EraseUploader(
            rpb.EraseUploaderRequest(account_id=v.alice.account_id), metadata=md
        ),
    }


async def victim_world(
    stack: LocalStack, keys: kgrpc.AccountServiceStub, media: mgrpc.MediaServiceStub
) -> Victim:
    alice = await sign_up(keys)
    laptop = await link_device(keys, alice)
    blob = Blob.random(3000)
    created = await media.CreateUpload(blob.request(), metadata=alice.md)
    assert (await send(created.upload.put, blob.data)).status_code == 200
    stored = await media.CompleteUpload(
        mpb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=alice.md
    )
    pending = await media.CreateUpload(Blob.random(10).request(), metadata=alice.md)
    return Victim(alice, laptop, blob, stored.media_id, pending.upload.upload_id)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stubs(
    media_auth: tuple[LocalStack, MessageStandIn],
) -> AsyncIterator[tuple[kgrpc.AccountServiceStub, mgrpc.MediaServiceStub, Any, Any]]:
    stack, _ = media_auth
    keys_channel = grpc.aio.insecure_channel(stack.keys_target)
    media_channel = grpc.aio.insecure_channel(stack.media_target)
    yield (
        kgrpc.AccountServiceStub(keys_channel),
        mgrpc.MediaServiceStub(media_channel),
        mgrpc.MediaAdminServiceStub(media_channel),
        rgrpc.MediaReferenceServiceStub(media_channel),
    )
    await keys_channel.close()
    await media_channel.close()


async def test_bad_credentials_are_refused_by_every_media_rpc(
    media_auth: tuple[LocalStack, MessageStandIn], stubs: Any, tmp_path: Path
) -> None:
    stack, _ = media_auth
    keys, media, admin, references = stubs
    v = await victim_world(stack, keys, media)
    issuer = TokenIssuer(load_private_key(stack.private_key_path), ttl_seconds=60)
    expired = issuer.issue(
        account_id=v.alice.account_id, device_id=v.alice.device_id, now=time.time() - 120
    ).token
    write_key_pair(tmp_path / "evil.pem", tmp_path / "evil.pub.pem")
    forged = (
        TokenIssuer(load_private_key(tmp_path / "evil.pem"), ttl_seconds=600)
        .issue(account_id=v.alice.account_id, device_id=v.alice.device_id, now=time.time())
        .token
    )
    header, payload, signature = v.alice.access_token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    await keys.RevokeDevice(
        kpb.RevokeDeviceRequest(request_id=rid(), device_id=v.laptop.device_id),
        metadata=v.alice.md,
    )
    cases: list[tuple[str, Metadata, str]] = [
        ("no token", (), "ERROR_REASON_TOKEN_INVALID"),
        ("empty bearer", (("authorization", "Bearer "),), "ERROR_REASON_TOKEN_INVALID"),
        ("basic scheme", (("authorization", "Basic YWxpY2U6eA=="),), "ERROR_REASON_TOKEN_INVALID"),
        ("not a jwt", auth("not.a.jwt"), "ERROR_REASON_TOKEN_INVALID"),
        ("huge", auth("a" * 6000), "ERROR_REASON_TOKEN_INVALID"),
        ("bad signature", auth(f"{header}.{payload}.{flipped}"), "ERROR_REASON_TOKEN_INVALID"),
        ("unknown key", auth(forged), "ERROR_REASON_TOKEN_INVALID"),
        ("expired", auth(expired), "ERROR_REASON_TOKEN_EXPIRED"),
        ("revoked", v.laptop.md, "ERROR_REASON_TOKEN_REVOKED"),
        ("operator credential", auth(stack.operator_token), "ERROR_REASON_TOKEN_INVALID"),
        ("service credential", auth(stack.service_token), "ERROR_REASON_TOKEN_INVALID"),
    ]
    calls = media_calls(media, v)
    assert set(calls) == MEDIA_RPCS, "the matrix misses a media RPC"
    await until_revoked(lambda: calls["GetQuota"](v.laptop.md), service="svc_media")
    for name, md, reason in cases:
        for rpc, call in calls.items():
            error = await refused(call(md))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)
            assert error_info(error).reason == reason, (name, rpc)

    # The privileged services: only their own credential.
    privileged = privileged_calls(admin, references, v)
    assert set(privileged) == ADMIN_RPCS | REFERENCE_RPCS
    for name, md, _reason in [*cases, ("an account's valid token", v.alice.md, "")]:
        for rpc, call in privileged.items():
            if (rpc in ADMIN_RPCS and name == "operator credential") or (
                rpc in REFERENCE_RPCS and name == "service credential"
            ):
                continue
            error = await refused(call(md))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rpc, error)

    # Nothing above changed the victim's media.
    download = await media.GetDownload(
        mpb.GetDownloadRequest(media_id=v.media_id), metadata=v.alice.md
    )
    assert (await send(download.get)).content == v.blob.data
    await media.GetUpload(mpb.GetUploadRequest(upload_id=v.upload_id), metadata=v.alice.md)


async def test_another_users_token_reaches_nothing_of_the_victims_media(
    media_auth: tuple[LocalStack, MessageStandIn], stubs: Any
) -> None:
    stack, stand_in = media_auth
    keys, media, _, _ = stubs
    v = await victim_world(stack, keys, media)
    mallory = await sign_up(keys)
    calls = media_calls(media, v)
    for rpc in ("GetDownload", "RestoreMedia", "GetRestore"):
        error = await refused(calls[rpc](mallory.md))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, error)
        assert error_info(error).reason == "ERROR_REASON_MEDIA_ACCESS_DENIED", rpc
    for rpc in ("GetUpload", "CompleteUpload", "AbortUpload"):
        error = await refused(calls[rpc](mallory.md))
        assert error.code() == grpc.StatusCode.NOT_FOUND, (rpc, error)
        assert error_info(error).reason == "ERROR_REASON_UPLOAD_NOT_FOUND", rpc
    # The victim's ciphertext: mallory is not told it is stored.
    created = await calls["CreateUpload"](mallory.md)
    assert created.WhichOneof("result") == "upload"
    quota = await calls["GetQuota"](mallory.md)
    assert quota.stored_bytes == 0
    # Once a message mallory may read names it, it is hers to download.
    stand_in.grant(mallory.account_id, v.media_id)
    await calls["GetDownload"](mallory.md)
    await media.GetUpload(mpb.GetUploadRequest(upload_id=v.upload_id), metadata=v.alice.md)
