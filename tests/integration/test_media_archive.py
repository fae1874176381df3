"""The archived-object contract svc_media's download check relies on, against
moto (the one local server that implements it): an object in GLACIER is
reported as such by HEAD and cannot be read until restored; once restored it
can. The tiers work builds RestoreMedia and GetRestore on this."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from svc_media.domain.downloads import needs_restore
from svc_media.model import ContentClass, MediaRecord, MediaState
from svc_media.storage.objects import S3Objects
from tests.moto_server import MotoS3

KEY = "media/ab/archived"


def client(moto: MotoS3) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name=moto.settings.region,
        endpoint_url=moto.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


def record() -> MediaRecord:
    return MediaRecord(
        media_id="ab" * 32,
        sha256=b"\xab" * 32,
        size=7,
        content_class=ContentClass.DOCUMENT,
        object_key=KEY,
        created_at=0,
        state=MediaState.READY,
        uploaders=("a",),
        touch=0,
        next_check_at=0,
        check_backoff_seconds=0,
    )


async def test_an_archived_object_needs_a_restore_before_it_downloads(moto_s3: MotoS3) -> None:
    s3 = client(moto_s3)
    bucket = moto_s3.settings.bucket
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"sealed!", StorageClass="GLACIER")
    objects = await S3Objects.open(moto_s3.settings, timeout_seconds=5)
    try:
        info = await objects.head(KEY)
        assert info is not None and info.storage_class == "GLACIER"
        assert needs_restore(record(), info)
        with pytest.raises(ClientError) as refused:
            s3.get_object(Bucket=bucket, Key=KEY)
        assert refused.value.response["Error"]["Code"] == "InvalidObjectState"

        s3.restore_object(Bucket=bucket, Key=KEY, RestoreRequest={"Days": 1})
        info = await objects.head(KEY)
        assert info is not None and not needs_restore(record(), info), info
        assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == b"sealed!"
    finally:
        await objects.close()
