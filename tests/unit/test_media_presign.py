"""svc_media's own SigV4 presigning gives botocore's URLs, and downloads HEAD
only objects the bucket's rules may have archived."""

from __future__ import annotations

import base64
import datetime
import math
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import botocore.session
import pytest
from botocore.config import Config

from svc_media.domain.tiers import DAY_SECONDS, ArchiveHorizon, archive_after_days
from svc_media.storage.presign import PROBE_KEY, Endpoint, Signer

NOW = 1_796_659_200.25
CHECKSUM = base64.b64encode(bytes(range(32))).decode()


def botocore_client(endpoint: str, style: str) -> Any:
    return botocore.session.get_session().create_client(
        "s3",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            request_checksum_calculation="when_required",
        ),
    )


def parts(url: str) -> tuple[str, str, str, list[tuple[str, str]]]:
    split = urlsplit(url)
    return split.scheme, split.netloc, split.path, sorted(parse_qsl(split.query))


# (botocore operation and params, our method, query params, signed headers)
CASES = [
    (
        "put_object",
        {"Key": "media/ab/a b+c~/x", "ContentLength": 1 << 20, "ChecksumSHA256": CHECKSUM},
        "PUT",
        {},
        {"content-length": str(1 << 20), "x-amz-checksum-sha256": CHECKSUM},
    ),
    (
        "upload_part",
        {
            "Key": "media/ab/abc/u",
            "UploadId": "id/with=odd+chars",
            "PartNumber": 2,
            "ContentLength": 5,
            "ChecksumSHA256": CHECKSUM,
        },
        "PUT",
        {"uploadId": "id/with=odd+chars", "partNumber": "2"},
        {"content-length": "5", "x-amz-checksum-sha256": CHECKSUM},
    ),
    ("get_object", {"Key": "media/ab/abc/u"}, "GET", {}, {}),
    (
        "head_object",
        {"Key": "media/ab/abc/u", "ChecksumMode": "ENABLED"},
        "HEAD",
        {},
        {"x-amz-checksum-mode": "ENABLED"},
    ),
]


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:8333", "https://s3.example.com", "http://localhost:80"]
)
@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize(("operation", "params", "method", "query", "headers"), CASES)
def test_urls_are_the_ones_botocore_signs(
    endpoint: str,
    style: str,
    operation: str,
    params: dict[str, Any],
    method: str,
    query: dict[str, str],
    headers: dict[str, str],
) -> None:
    client = botocore_client(endpoint, style)
    at = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=at):
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": "bucket", "Key": PROBE_KEY}, ExpiresIn=1
        )
        expected = client.generate_presigned_url(
            operation, Params={"Bucket": "bucket", **params}, ExpiresIn=300
        )
    signer = Signer(
        Endpoint.from_probe(probe),
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region="eu-west-1",
    )
    ours = signer.presign(
        method, params["Key"], expires_in=300, now=NOW, params=query, headers=headers
    )
    assert parts(ours) == parts(expected)


def test_a_new_day_signs_with_that_days_key() -> None:
    signer = Signer(
        Endpoint("http", "127.0.0.1:1", "/b"), access_key="a", secret_key="s", region="r"
    )
    today = signer.presign("GET", "k", expires_in=60, now=NOW)
    tomorrow = signer.presign("GET", "k", expires_in=60, now=NOW + DAY_SECONDS)

    def credential_day(url: str) -> str:
        return dict(parse_qsl(urlsplit(url).query))["X-Amz-Credential"].split("/")[1]

    assert (credential_day(today), credential_day(tomorrow)) == ("20261207", "20261208")
    # The key of the day is derived again: a URL of the first day still matches.
    assert signer.presign("GET", "k", expires_in=60, now=NOW) == today


def test_a_probe_url_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected"):
        Endpoint.from_probe("http://127.0.0.1:1/bucket/other-key?X=1")


def rule(*transitions: dict[str, Any], status: str = "Enabled") -> dict[str, Any]:
    return {"ID": "r", "Status": status, "Transitions": list(transitions)}


def test_archive_days_are_the_earliest_archive_transition_of_any_enabled_rule() -> None:
    assert archive_after_days([]) == math.inf
    # STANDARD_IA reads at once: no restore needed.
    assert archive_after_days([rule({"Days": 30, "StorageClass": "STANDARD_IA"})]) == math.inf
    ours = rule(
        {"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 120, "StorageClass": "GLACIER"}
    )
    assert archive_after_days([ours]) == 120
    operators = rule({"Days": 7, "StorageClass": "DEEP_ARCHIVE"})
    assert archive_after_days([ours, operators]) == 7
    assert (
        archive_after_days([ours, rule({"Days": 1, "StorageClass": "GLACIER"}, status="Disabled")])
        == 120
    )
    # A transition on a date may already have happened.
    assert (
        archive_after_days([rule({"Date": "2026-01-01T00:00:00Z", "StorageClass": "GLACIER"})]) == 0
    )
    assert archive_after_days([rule({"Days": 40, "StorageClass": "INTELLIGENT_TIERING"})]) == 40
    assert (
        archive_after_days([{"ID": "x", "Status": "Enabled", "Expiration": {"Days": 3}}])
        == math.inf
    )


def test_downloads_head_only_what_may_be_archived() -> None:
    horizon = ArchiveHorizon()
    # Rules not read yet: every download asks the store.
    assert horizon.may_be_archived(created_at=NOW, now=NOW)
    horizon.days = math.inf
    assert not horizon.may_be_archived(created_at=0, now=NOW)
    horizon.days = 90
    assert not horizon.may_be_archived(created_at=NOW - 88 * DAY_SECONDS, now=NOW)
    # A day early: S3 moves objects at a midnight after the day, clocks differ.
    assert horizon.may_be_archived(created_at=NOW - 89 * DAY_SECONDS, now=NOW)
    horizon.days = 0
    assert horizon.may_be_archived(created_at=NOW, now=NOW)
