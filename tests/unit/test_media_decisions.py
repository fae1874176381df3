"""Kept download decisions and the quota refusal order: pure logic."""

from __future__ import annotations

from svc_media.domain.decisions import DownloadDecisions
from svc_media.model import ContentClass, MediaRecord, MediaState, digest, media_id_of
from svc_media.storage.usage import DAILY, STORED, refusal


def record(n: int, uploaders: tuple[str, ...] = ("alice",)) -> MediaRecord:
    sha = digest(str(n).encode())
    return MediaRecord(
        media_id=media_id_of(sha),
        sha256=sha,
        size=10,
        content_class=ContentClass.DOCUMENT,
        object_key=f"k{n}",
        created_at=0.0,
        state=MediaState.READY,
        uploaders=uploaders,
        touch=0,
        next_check_at=0.0,
        check_backoff_seconds=0.0,
    )


def test_an_uploaders_decision_is_kept_until_its_ttl() -> None:
    decisions = DownloadDecisions(ttl=30)
    media = record(1)
    decisions.keep("alice", media, now=100.0)
    assert decisions.get("alice", media.media_id, now=129.9) == media
    assert decisions.get("bob", media.media_id, now=101.0) is None
    assert decisions.get("alice", media.media_id, now=130.0) is None
    assert len(decisions) == 0, "an expired decision is dropped when met"


def test_only_uploaders_are_kept_and_a_zero_ttl_keeps_nothing() -> None:
    decisions = DownloadDecisions(ttl=30)
    # Access through a message is asked of svc_message every time.
    decisions.keep("bob", record(1), now=0.0)
    assert len(decisions) == 0
    off = DownloadDecisions(ttl=0)
    off.keep("alice", record(1), now=0.0)
    assert len(off) == 0


def test_the_oldest_decisions_go_first_and_forget_all_clears() -> None:
    decisions = DownloadDecisions(ttl=30, capacity=2)
    first, second, third = record(1), record(2), record(3)
    for media in (first, second, third):
        decisions.keep("alice", media, now=0.0)
    assert len(decisions) == 2
    assert decisions.get("alice", first.media_id, now=1.0) is None
    assert decisions.get("alice", third.media_id, now=1.0) == third
    decisions.forget_all()
    assert decisions.get("alice", third.media_id, now=1.0) is None


def test_the_stored_quota_is_named_before_the_daily_one() -> None:
    assert refusal(0, 0, 10, daily_limit=10, stored_limit=10) is None
    assert refusal(1, 0, 10, daily_limit=10, stored_limit=100) == DAILY
    assert refusal(0, 1, 10, daily_limit=100, stored_limit=10) == STORED
    assert refusal(1, 1, 10, daily_limit=10, stored_limit=10) == STORED
