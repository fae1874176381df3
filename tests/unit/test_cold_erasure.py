"""svc_message's erasure rewrites each conversation's archived chunks before
the conversation counts as erased, within a bounded number of rounds per call."""

from __future__ import annotations

from typing import Any

from svc_message.domain.erasure import COLD_REWRITE_ROUNDS, AccountErasure
from svc_message.model import ERASED


class _Archive:
    def __init__(self, rounds_with_work: int) -> None:
        self.left = rounds_with_work
        self.calls: list[list[str]] = []
        self.transforms: list[Any] = []

    async def rewrite_weeks_with(self, transform: Any, *, conversation_ids: list[str]) -> int:
        self.calls.append(list(conversation_ids))
        self.transforms.append(transform)
        if self.left:
            self.left -= 1
            return 3
        return 0


def _erasure(archive: _Archive | None) -> AccountErasure:
    return AccountErasure(None, None, None, None, None, archive=archive)  # type: ignore[arg-type]


async def test_chunks_are_rewritten_until_a_round_finds_none() -> None:
    archive = _Archive(rounds_with_work=2)
    assert await _erasure(archive)._erase_cold("c1", "alice")
    assert archive.calls == [["c1"]] * 3
    # The transform tombstones what alice sent and names her ERASED.
    row = {"sender_id": "alice", "body": b"secret", "kind": 1, "seq": 4, "reactions": {}}
    assert archive.transforms[0](row)
    assert row["body"] == b"" and row["sender_id"] == ERASED


async def test_a_call_gives_up_after_its_rounds_and_is_made_again() -> None:
    archive = _Archive(rounds_with_work=COLD_REWRITE_ROUNDS + 1)
    assert not await _erasure(archive)._erase_cold("c1", "alice")
    assert len(archive.calls) == COLD_REWRITE_ROUNDS
    assert await _erasure(archive)._erase_cold("c1", "alice")


async def test_without_an_archive_there_is_nothing_cold() -> None:
    assert await _erasure(None)._erase_cold("c1", "alice")
