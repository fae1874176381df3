"""Tiers against real stores: the archived-object contract svc_media's download
check relies on (moto, the one local server that implements it: an object in
GLACIER is reported as such by HEAD and cannot be read until restored), the
lifecycle rules svc_media puts on the bucket (moto keeps them; the request
that went on the wire carries the size filter moto drops), and SeaweedFS,
which refuses transitions: svc_media says so once and keeps the rule for
stale uploads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from parley_dev.stack import MEDIA, LocalStack
from svc_media.domain.downloads import needs_restore
from svc_media.domain.tiers import install
from svc_media.model import LifecyclePlan, RestoreStart
from svc_media.storage.lifecycle import STALE_UPLOADS_RULE, TIERS_RULE
from svc_media.storage.objects import S3Objects
from tests.moto_server import MotoS3

KEY = "media/ab/archived"
NOW = 1_900_000_000.0


def client(moto: MotoS3) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name=moto.settings.region,
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


async def test_an_archived_object_needs_a_restore_before_it_downloads(moto_s3: MotoS3) -> None:
    s3 = client(moto_s3)
    bucket = moto_s3.settings.bucket
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"sealed!", StorageClass="GLACIER")
    s3.put_object(Bucket=bucket, Key="media/cd/plain", Body=b"open")
    objects = await S3Objects.open(moto_s3.settings, timeout_seconds=5)
    try:
        info = await objects.head(KEY)
        assert info is not None and info.storage_class == "GLACIER"
        assert needs_restore(info, now=NOW)
        with pytest.raises(ClientError) as refused:
            s3.get_object(Bucket=bucket, Key=KEY)
        assert refused.value.response["Error"]["Code"] == "InvalidObjectState"

        assert await objects.restore(KEY, days=1, tier="Standard") == RestoreStart.STARTED
        info = await objects.head(KEY)
        assert info is not None and not info.restoring and info.restored_until is not None
        assert not needs_restore(info, now=info.restored_until - 1), info
        # Past the copy's expiry it is archived again.
        assert needs_restore(info, now=info.restored_until)
        assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == b"sealed!"
        # Asked again, the store extends the copy it has.
        assert await objects.restore(KEY, days=2, tier="Standard") == RestoreStart.ALREADY_RESTORED

        # A standard object has nothing to restore (a 403 that is no outage).
        assert await objects.restore("media/cd/plain", days=1, tier="Standard") == (
            RestoreStart.NOT_ARCHIVED
        )
        assert await objects.restore("media/ef/gone", days=1, tier="Bulk") == RestoreStart.MISSING
        assert objects.available
    finally:
        await objects.close()


async def test_the_lifecycle_rules_keep_the_operators_and_tier_objects_above_128_kib(
    moto_s3: MotoS3,
) -> None:
    s3 = client(moto_s3)
    bucket = moto_s3.settings.bucket
    theirs = {
        "ID": "logs-expire",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 7},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]})
    objects = await S3Objects.open(moto_s3.settings, timeout_seconds=5)
    wire: list[bytes] = []

    def sent(request: Any, **_: Any) -> None:
        wire.append(bytes(request.body or b""))

    objects._client.meta.events.register("before-send.s3.PutBucketLifecycleConfiguration", sent)
    try:
        plan = LifecyclePlan(30, 120, 2)
        with capture_logs() as logs:
            assert await install(objects, plan) == plan
        assert not [e for e in logs if e["event"] == "media_tiers_unsupported"]
        stored = {rule["ID"]: rule for rule in await objects.lifecycle_rules()}
        assert set(stored) == {"logs-expire", TIERS_RULE, STALE_UPLOADS_RULE}
        assert stored["logs-expire"]["Expiration"] == {"Days": 7}
        assert stored[TIERS_RULE]["Transitions"] == [
            {"Days": 30, "StorageClass": "STANDARD_IA"},
            {"Days": 120, "StorageClass": "GLACIER"},
        ]
        assert stored[TIERS_RULE]["Filter"]["And"]["Prefix"] == "media/"
        assert stored[STALE_UPLOADS_RULE]["AbortIncompleteMultipartUpload"] == {
            "DaysAfterInitiation": 2
        }
        # moto keeps no size filter, so the request itself is checked.
        (body,) = wire
        assert b"<ObjectSizeGreaterThan>131072</ObjectSizeGreaterThan>" in body
        assert body.count(b"<Transition>") == 2
    finally:
        await objects.close()


async def test_seaweedfs_refuses_transitions_and_keeps_the_stale_upload_rule(
    media_stack: LocalStack,
) -> None:
    # The stack's svc_media met the same refusal at start and said so once.
    log = Path(media_stack.logs_dir / f"{MEDIA}.log").read_text()
    assert log.count("media_tiers_unsupported") == 1, log[-2000:]
    objects = await S3Objects.open(media_stack.settings.s3, timeout_seconds=5)
    try:
        with capture_logs() as logs:
            in_force = await install(objects, LifecyclePlan(30, 90, 3))
        assert in_force == LifecyclePlan(0, 0, 3)
        (warning,) = [e for e in logs if e["event"] == "media_tiers_unsupported"]
        assert warning["log_level"] == "warning" and "STANDARD" in warning["detail"]
        rules = await objects.lifecycle_rules()
        assert [r["ID"] for r in rules] == [STALE_UPLOADS_RULE]
        assert rules[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}
        # The same rules again: nothing is written.
        assert not await objects.install_lifecycle(in_force)
        # Back to what the stack's own svc_media put (the default session: 2 days).
        assert await objects.install_lifecycle(LifecyclePlan(0, 0, 2))
        assert objects.available
    finally:
        await objects.close()
