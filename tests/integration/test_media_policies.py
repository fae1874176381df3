"""svc_media's policies on a real stack: quotas, quarantine and its audit log,
the privileged services' credentials, reference checks and metrics (the
session's media stack, tests/integration/conftest.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from parley.media.v1 import media_pb2 as mpb
from parley.media.v1 import references_pb2 as rpb
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.media_stack import (
    DAILY_QUOTA,
    STORED_QUOTA,
    failure,
    service_md,
    upload,
    users,
)
from tests.media_world import (
    MIB,
    Blob,
    error_info,
    operator,
)
from tests.users import rid

pytestmark = pytest.mark.slow

# -- quotas ---------------------------------------------------------------------------


async def test_quotas_refuse_with_the_limit_and_the_usage(media_stubs: Any) -> None:
    _, media, _, _ = media_stubs
    keeper, starter = await users(media_stubs, 2)
    for _ in range(2):
        await upload(media, keeper, Blob.random(6 * MIB))
    error = await failure(media.CreateUpload(Blob.random(6 * MIB).request(), metadata=keeper.md))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info.reason == "ERROR_REASON_QUOTA_EXCEEDED"
    assert dict(info.metadata) == {
        "quota": "stored_bytes",
        "limit_bytes": str(STORED_QUOTA),
        "used_bytes": str(12 * MIB),
    }
    for _ in range(3):
        await media.CreateUpload(Blob.random(7 * MIB).request(), metadata=starter.md)
    error = await failure(media.CreateUpload(Blob.random(7 * MIB).request(), metadata=starter.md))
    assert dict(error_info(error).metadata) == {
        "quota": "daily_upload_bytes",
        "limit_bytes": str(DAILY_QUOTA),
        "used_bytes": str(21 * MIB),
    }
    quota = await media.GetQuota(mpb.GetQuotaRequest(), metadata=keeper.md)
    assert (quota.uploaded_today_bytes, quota.stored_bytes) == (12 * MIB, 12 * MIB)
    assert (quota.daily_upload_limit_bytes, quota.stored_limit_bytes) == (DAILY_QUOTA, STORED_QUOTA)


# -- quarantine and credentials ---------------------------------------------------------


async def test_quarantine_blocks_downloads_and_new_references_and_is_audited(
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, admin, references = media_stubs
    alice, bob = await users(media_stubs, 2)
    blob = Blob.random(5000)
    stored = await upload(media, alice, blob)
    ops = operator(media_stack.operator_token)
    entry = await admin.QuarantineMedia(
        mpb.QuarantineMediaRequest(sha256=blob.sha256, reason="reported abuse"), metadata=ops
    )
    assert (entry.operator, entry.reason) == ("local", "reported abuse")
    again = await admin.QuarantineMedia(
        mpb.QuarantineMediaRequest(sha256=blob.sha256, reason="twice"), metadata=ops
    )
    assert again.reason == "reported abuse", "idempotent: the first entry stands"

    error = await failure(
        media.GetDownload(mpb.GetDownloadRequest(media_id=stored.media_id), metadata=alice.md)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "ERROR_REASON_MEDIA_QUARANTINED"
    error = await failure(
        references.ReserveReferences(
            rpb.ReserveReferencesRequest(
                account_id=alice.account_id, conversation_id=rid(), media_ids=[stored.media_id]
            ),
            metadata=service_md(media_stack),
        )
    )
    assert error_info(error).reason == "ERROR_REASON_MEDIA_QUARANTINED"
    error = await failure(media.CreateUpload(blob.request(), metadata=bob.md))
    assert error_info(error).reason == "ERROR_REASON_MEDIA_QUARANTINED"

    await admin.LiftQuarantine(
        mpb.LiftQuarantineRequest(sha256=blob.sha256, reason="appeal upheld"), metadata=ops
    )
    await media.GetDownload(mpb.GetDownloadRequest(media_id=stored.media_id), metadata=alice.md)
    events = await admin.ListAuditEvents(mpb.ListAuditEventsRequest(page_size=1), metadata=ops)
    assert [(e.action, e.reason, e.operator) for e in events.events] == [
        (mpb.AuditEvent.ACTION_LIFT_QUARANTINE, "appeal upheld", "local")
    ]
    older = await admin.ListAuditEvents(
        mpb.ListAuditEventsRequest(page_size=1, page_token=events.next_page_token), metadata=ops
    )
    assert [(e.action, e.sha256) for e in older.events] == [
        (mpb.AuditEvent.ACTION_QUARANTINE, blob.sha256)
    ]


async def test_privileged_services_refuse_user_tokens(
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, _, admin, references = media_stubs
    (alice,) = await users(media_stubs, 1)
    for md in (alice.md, service_md(media_stack), ()):
        error = await failure(admin.ListAuditEvents(mpb.ListAuditEventsRequest(), metadata=md))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for md in (alice.md, operator(media_stack.operator_token)):
        error = await failure(
            references.ReleaseReferences(
                rpb.ReleaseReferencesRequest(media_ids=[Blob.random(5).media_id]), metadata=md
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reserve_refuses_media_the_sender_may_not_use(
    media_stack: LocalStack, media_stubs: Any
) -> None:
    _, media, _, references = media_stubs
    alice, mallory = await users(media_stubs, 2)
    stored = await upload(media, alice, Blob.random(700))
    for account, media_ids in (
        (mallory.account_id, [stored.media_id]),
        (alice.account_id, [stored.media_id, Blob.random(3).media_id]),
    ):
        error = await failure(
            references.ReserveReferences(
                rpb.ReserveReferencesRequest(
                    account_id=account, conversation_id=rid(), media_ids=media_ids
                ),
                metadata=service_md(media_stack),
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(error).reason == "ERROR_REASON_MEDIA_NOT_FOUND"


async def test_media_metrics_are_exported(media_stack: LocalStack, media_stubs: Any) -> None:
    for name in (
        "parley_media_uploaded_bytes_total",
        "parley_media_download_granted_bytes_total",
        "parley_media_objects",
        "parley_media_stored_bytes",
        "parley_media_references_per_object",
        "parley_media_gc_lag_seconds",
        "parley_media_orphans_collected_total",
        "parley_media_quota_refusals_total",
        "parley_media_restore_queue",
        "parley_media_store_available",
    ):
        await metric(media_stack.media_metrics_url, name)
    assert await metric(media_stack.media_metrics_url, "parley_media_store_available") == 1
