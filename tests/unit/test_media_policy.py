"""The pure rules of svc_media: parts, sizes, backoff, the archive hook, media
ids, and the media and s3 config sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley_core.config import ConfigError, MediaServiceSettings, settings_from_tree
from parley_core.errors import InvalidArgument
from svc_media.domain.downloads import needs_restore, tier_of
from svc_media.domain.policy import (
    MIN_BACKOFF_SECONDS,
    MediaPolicy,
    quota_exceeded,
    utc_day,
)
from svc_media.model import (
    ContentClass,
    ObjectInfo,
    Tier,
    UploadSession,
    UploadState,
    digest,
    is_media_id,
    media_id_of,
)

MIB = 1 << 20
POLICY = MediaPolicy.from_settings(MediaServiceSettings())


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.violations[0].field


def test_small_uploads_are_one_put_and_take_no_parts() -> None:
    assert POLICY.part_size_for(8 * MIB, 0, 0) == 0
    with pytest.raises(InvalidArgument) as error:
        POLICY.part_size_for(1000, 5 * MIB, 1)
    assert field_of(error) == "part_size"


def test_large_uploads_need_one_hash_per_part_of_an_allowed_size() -> None:
    assert POLICY.part_size_for(8 * MIB + 1, 0, 2) == 8 * MIB
    assert POLICY.part_size_for(12 * MIB, 5 * MIB, 3) == 5 * MIB
    with pytest.raises(InvalidArgument) as error:
        POLICY.part_size_for(12 * MIB, 5 * MIB, 2)
    assert field_of(error) == "part_sha256s"
    for bad in (4 * MIB, 65 * MIB):
        with pytest.raises(InvalidArgument) as error:
            POLICY.part_size_for(100 * MIB, bad, 10)
        assert field_of(error) == "part_size"
    with pytest.raises(InvalidArgument) as error:
        POLICY.part_size_for(2 << 40, 64 * MIB, 1)
    assert "parts" in error.value.violations[0].description


def test_thumbnails_have_their_own_size_limit() -> None:
    POLICY.check_size(64 << 10, ContentClass.THUMBNAIL)
    with pytest.raises(InvalidArgument):
        POLICY.check_size((64 << 10) + 1, ContentClass.THUMBNAIL)
    POLICY.check_size(1 << 30, ContentClass.VIDEO)
    with pytest.raises(InvalidArgument):
        POLICY.check_size((2 << 30) + 1, ContentClass.VIDEO)


def test_referenced_media_is_checked_at_doubling_intervals_up_to_the_cap() -> None:
    waits = [POLICY.grace_seconds]
    for _ in range(10):
        waits.append(POLICY.next_backoff(waits[-1]))
    assert waits[:4] == [86400, 2 * 86400, 4 * 86400, 8 * 86400]
    assert max(waits) == 30 * 86400
    no_grace = MediaPolicy.from_settings(MediaServiceSettings(gc_grace_seconds=0))
    assert no_grace.next_backoff(0) == MIN_BACKOFF_SECONDS


def test_media_ids_are_the_hex_sha256_of_the_ciphertext() -> None:
    sha = digest(b"ciphertext")
    assert media_id_of(sha) == sha.hex() and is_media_id(sha.hex())
    for bad in ("", sha.hex().upper(), sha.hex()[:-1], "z" * 64):
        assert not is_media_id(bad)


def test_the_archive_hook_reads_the_stores_storage_class_and_restore_state() -> None:
    now = 1_900_000_000.0
    assert not needs_restore(ObjectInfo(1, None, "STANDARD"), now=now)
    assert not needs_restore(ObjectInfo(1, None, "STANDARD_IA"), now=now)
    assert needs_restore(ObjectInfo(1, None, "GLACIER"), now=now)
    assert needs_restore(ObjectInfo(1, None, "GLACIER", restoring=True), now=now)
    restored = ObjectInfo(1, None, "DEEP_ARCHIVE", restored_until=now + 60)
    assert not needs_restore(restored, now=now)
    # Past the copy's expiry it is archived again, whatever the store still says.
    assert needs_restore(restored, now=now + 60)
    assert tier_of("GLACIER") == tier_of("DEEP_ARCHIVE") == Tier.ARCHIVE
    assert tier_of("STANDARD_IA") == Tier.INFREQUENT
    assert tier_of("STANDARD") == tier_of("") == Tier.STANDARD


def test_a_retry_must_repeat_the_request() -> None:
    session = UploadSession(
        upload_id="u",
        account_id="a",
        request_id="r",
        media_id="m",
        sha256=b"s" * 32,
        size=10,
        content_class=ContentClass.IMAGE,
        object_key="k",
        created_at=0,
        expires_at=1,
        state=UploadState.PENDING,
    )
    same = {
        "size": 10,
        "sha256": b"s" * 32,
        "content_class": ContentClass.IMAGE,
        "part_size": 0,
        "part_sha256s": (),
    }
    assert session.same_request(**same)  # type: ignore[arg-type]
    assert not session.same_request(**{**same, "size": 11})  # type: ignore[arg-type]


def test_quota_refusals_carry_the_quota_the_limit_and_the_usage() -> None:
    error = quota_exceeded("stored_bytes", limit=100, used=90)
    assert error.metadata == {"quota": "stored_bytes", "limit_bytes": "100", "used_bytes": "90"}
    assert str(error.reason) == "ERROR_REASON_QUOTA_EXCEEDED"
    assert utc_day(0) == "1970-01-01"


def test_the_s3_section_takes_credentials_from_files_only_and_in_pairs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        settings_from_tree({"s3": {"access_key_id_file": str(tmp_path / "id")}}, {})
    with pytest.raises(ConfigError, match="endpoint_url"):
        settings_from_tree({"s3": {"endpoint_url": "s3.example"}}, {})
    with pytest.raises(ConfigError, match="s3"):
        settings_from_tree({"s3": {"secret_access_key": "inline"}}, {})
    settings = settings_from_tree({"s3": {"endpoint_url": "http://127.0.0.1:9333/"}}, {})
    assert settings.s3.endpoint_url == "http://127.0.0.1:9333"


def test_the_media_section_keeps_urls_short_and_parts_in_order() -> None:
    with pytest.raises(ConfigError, match="get_url_seconds"):
        settings_from_tree({"media": {"get_url_seconds": 301}}, {})
    with pytest.raises(ConfigError, match="default_part_bytes"):
        settings_from_tree({"media": {"default_part_bytes": 100 * MIB}}, {})
    assert MediaServiceSettings().server.port == 7104
